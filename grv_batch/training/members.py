"""Fitting the audio-trained members (voice_profile, frames) on cached window features."""

from __future__ import annotations

import numpy as np
import pandas as pd

from grv_batch.features.quality import QUALITY_COLUMNS
from grv_batch.models.members import CROP_FRAMES, CROP_HOP, member_logits

#: bump when a fitting recipe changes (invalidates cached out-of-fold logits)
VERSION = 2

#: voice statistics used by ``voice_profile`` (recording-quality columns are left out on purpose:
#: they describe the channel, not the voice, and would let the model learn corpus shortcuts)
EXCLUDED_PROFILE_COLUMNS = QUALITY_COLUMNS


def profile_columns() -> list[str]:
    from grv_batch.features import FEATURE_COLUMNS

    return [c for c in FEATURE_COLUMNS if c not in EXCLUDED_PROFILE_COLUMNS]


def speaker_weights(rows: pd.DataFrame) -> np.ndarray:
    """1/sqrt(clips of the speaker): many-clip speakers (EmoDB) count more, but not linearly."""
    n = rows.groupby("speaker_id")["speaker_id"].transform("size").to_numpy(dtype=float)
    w = 1.0 / np.sqrt(n)
    return w / w.mean()


#: voice_profile is a bag of this many MLPs (different seeds), averaged inside one Keras model
VP_BAG = 3


def fit_voice_profile(rows: pd.DataFrame, y: np.ndarray, *, seed: int = 0, epochs: int = 80, bag: int | None = None):
    import keras

    from grv_batch.training.architectures import voice_profile_model

    cols = profile_columns()
    X = rows[cols].to_numpy(dtype=np.float64)
    mean = np.nanmean(X, axis=0)
    std = np.nanstd(X, axis=0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    std = np.where(np.isfinite(std) & (std > 1e-9), std, 1.0)
    config = {"feature_columns": cols, "mean": [float(v) for v in mean], "std": [float(v) for v in std],
              "max_missing": 0.5}
    from grv_batch.models.members import REGISTRY

    Z, keep, _ = REGISTRY["voice_profile"].prepare(rows.reset_index(drop=True), None, config)
    bag = VP_BAG if bag is None else bag
    subs = []
    for b in range(bag):
        model = voice_profile_model(len(cols), seed=seed * 101 + b)
        model.name = f"voice_profile_{b}"
        steps = int(np.ceil(len(keep) / 64)) * epochs
        model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(2e-3, steps, alpha=0.05)),
                      loss=keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.05))
        model.fit(Z, y[keep].astype(np.float32), sample_weight=speaker_weights(rows.iloc[keep]), batch_size=64,
                  epochs=epochs, verbose=0, shuffle=True)
        subs.append(model)
    if bag == 1:
        return subs[0], config
    inp = keras.Input((len(cols),), name="profile")
    out = keras.layers.Average(name="bag_mean")([m(inp) for m in subs])
    return keras.Model(inp, out, name="voice_profile"), config


def _norm_logmels(logmels: list) -> list:
    out = []
    for m in logmels:
        m = np.asarray(m, dtype=np.float32)
        out.append((m - m.mean()).astype(np.float16) if m.ndim == 2 and m.shape[1] >= 10 else None)
    return out


def _random_crop(m: np.ndarray, rng: np.random.Generator, crop: int) -> np.ndarray:
    T = m.shape[1]
    if T <= crop:
        out = np.full((m.shape[0], crop), m.min(), dtype=np.float32)
        off = (crop - T) // 2
        out[:, off:off + T] = m
    else:
        s = int(rng.integers(0, T - crop + 1))
        out = m[:, s:s + crop].astype(np.float32)
    # SpecAugment-style masking (one band block, one time block)
    fw = int(rng.integers(0, 9))
    if fw:
        f0 = int(rng.integers(0, out.shape[0] - fw))
        out[f0:f0 + fw] = 0.0
    tw = int(rng.integers(0, 41))
    if tw:
        t0 = int(rng.integers(0, crop - tw))
        out[:, t0:t0 + tw] = 0.0
    return out


def fit_frames(rows: pd.DataFrame, logmels: list, y: np.ndarray, *, seed: int = 0, epochs: int = 40,
               crops_per_row: int = 1, width: int = 12, time_pool: int = 2):
    import keras

    from grv_batch.training.architectures import frames_model

    rng = np.random.default_rng(seed)
    norm = _norm_logmels(logmels)
    ok = np.array([m is not None for m in norm])
    idx = np.nonzero(ok)[0]
    w = speaker_weights(rows)[idx]
    model = frames_model(64, CROP_FRAMES, seed=seed, width=width, time_pool=time_pool)
    n_per_epoch = len(idx) * crops_per_row
    steps = int(np.ceil(n_per_epoch / 32)) * epochs
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(2e-3, steps, alpha=0.05)),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.05))
    for _ in range(epochs):
        sel = np.repeat(idx, crops_per_row)
        Xb = np.stack([_random_crop(norm[i], rng, CROP_FRAMES) for i in sel])[..., None]
        model.fit(Xb, y[sel].astype(np.float32), sample_weight=np.repeat(w, crops_per_row), batch_size=32,
                  epochs=1, verbose=0, shuffle=True)
    config = {"n_mels": 64, "crop_frames": CROP_FRAMES, "crop_hop": CROP_HOP}
    return model, config


def predict_member(kind: str, model, config: dict, rows: pd.DataFrame, logmels: list) -> np.ndarray:
    return member_logits(kind, model, rows.reset_index(drop=True), logmels, config, batch_size=256)
