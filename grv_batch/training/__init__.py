"""Training the shipped ensemble: ``grv-batch train`` (see docs/models.md)."""

from grv_batch.training.augment import VARIANT_NAMES, VARIANTS
from grv_batch.training.train import train_bundle

__all__ = ["VARIANTS", "VARIANT_NAMES", "train_bundle"]
