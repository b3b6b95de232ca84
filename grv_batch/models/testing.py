"""A tiny, valid bundle with untrained models, for tests of code that needs an ensemble quickly."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_PROFILE_COLUMNS = ["f0_median_hz", "f0_iqr_hz", "spectral_centroid_hz"]


def make_tiny_bundle(out: str | os.PathLike, *, members: tuple[str, ...] = ("cv_mel", "voice_profile", "frames"),
                     profile_columns: list[str] | None = None, n_frames: int = 300,
                     thresholds: dict | None = None, combiner: dict | None = None) -> Path:
    """Write a bundle of untrained (random) members to ``out`` and return its path.

    ``combiner`` replaces the default stacking (equal weights summing to 1, no bias, identity
    calibration: the same as the fallback mean, so tests of the difference pass their own)."""
    from grv_batch.models.bundle import write_bundle
    from grv_batch.training import architectures as arch

    cols = list(profile_columns or DEFAULT_PROFILE_COLUMNS)
    spec = {}
    if "cv_mel" in members:
        spec["cv_mel"] = {"kind": "cv_mel", "model": arch.cv_mel_model(None), "config": {}}
    if "voice_profile" in members:
        spec["voice_profile"] = {"kind": "voice_profile", "model": arch.voice_profile_model(len(cols), width=8),
                                 "config": {"feature_columns": cols, "mean": [0.0] * len(cols),
                                            "std": [1.0] * len(cols)}}
    if "frames" in members:
        spec["frames"] = {"kind": "frames", "model": arch.frames_model(64, n_frames, width=4),
                          "config": {"n_mels": 64, "crop_frames": n_frames, "crop_hop": n_frames // 2}}
    for m in spec.values():
        m["calibration"] = {"type": "platt", "a": 1.0, "b": 0.0}
    combiner = combiner or {"weights": {m: 1.0 / len(spec) for m in spec}, "bias": 0.0,
                            "calibration": {"type": "identity"}}
    return write_bundle(out, name="tiny-test", version="0", members=spec, combiner=combiner,
                        thresholds=thresholds or {"confidence_threshold": 0.8, "disagreement": 0.6},
                        model_card={"note": "untrained test bundle"}, model_card_md="# tiny test bundle\n")
