"""Models: the shipped bundle, hash check, Keras safe-mode loading, member registry, ensemble.

    from grv_batch.models import load_ensemble, ModelParams
    ens = load_ensemble()                       # verified by sha256, cached per process
    win = ens.predict_windows(features_df, logmels)
    row = ens.combine_file(win, speech_s=speech_per_window, params=ModelParams())
"""

from grv_batch.models.bundle import SHIPPED_BUNDLE, BundleError, verify_bundle, write_bundle
from grv_batch.models.ensemble import LABELS, REASONS, Ensemble, ModelParams, clear_cache, load_ensemble
from grv_batch.models.members import REGISTRY as MEMBER_KINDS

__all__ = [
    "SHIPPED_BUNDLE", "BundleError", "Ensemble", "LABELS", "MEMBER_KINDS", "ModelParams", "REASONS",
    "clear_cache", "load_ensemble", "verify_bundle", "write_bundle",
]
