"""Training the shipped ensemble: ``grv-batch train`` (see docs/models.md)."""

from grv_batch.training.augment import VARIANT_NAMES, VARIANTS

__all__ = ["VARIANTS", "VARIANT_NAMES", "train_bundle"]


def __getattr__(name: str):
    # imported on first use: the package is imported for VARIANTS by code that never trains
    if name == "train_bundle":
        from grv_batch.training.train import train_bundle

        return train_bundle
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
