"""Member registry: how each kind of member turns pipeline outputs into model inputs.

A bundle names each member's *kind*; only kinds registered here can be loaded (no importable paths
are ever read from a bundle). Every member's Keras model outputs one raw logit for P(male).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from grv_batch.models.melspace import log_mel_normalised

#: frames member: log-mel crop length (frames at 100 frames/s) and hop between crops
CROP_FRAMES = 300
CROP_HOP = 150


@dataclass(frozen=True)
class MemberKind:
    name: str
    #: (features, logmels, config, speech) -> (inputs, group, weight) where ``group[i]`` is the
    #: window row of input i (several crops per window for ``frames``) and ``weight[i]`` its share
    #: in that row's logit (None: equal shares); rows without usable input are absent
    prepare: Callable[[pd.DataFrame, list, dict, list | None],
                      tuple[np.ndarray, np.ndarray, np.ndarray | None]]


def _prepare_mel(features: pd.DataFrame, logmels: list, config: dict, speech: list | None = None):
    if "mel128" not in features.columns or len(features) == 0:
        return np.zeros((0, 128), np.float32), np.zeros(0, int), None
    rows, mats = [], []
    for i, v in enumerate(features["mel128"].to_numpy()):
        if v is None:
            continue
        a = np.asarray(v, dtype=np.float64).reshape(-1)
        if a.shape != (128,) or not np.isfinite(a).all() or a.sum() <= 0:
            continue
        rows.append(i)
        mats.append(a)
    if not rows:
        return np.zeros((0, 128), np.float32), np.zeros(0, int), None
    return (log_mel_normalised(np.stack(mats), config.get("n_bands"), config.get("floor_db")),
            np.asarray(rows), None)


def _prepare_profile(features: pd.DataFrame, logmels: list, config: dict, speech: list | None = None):
    cols = config["feature_columns"]
    mean = np.asarray(config["mean"], dtype=np.float64)
    std = np.asarray(config["std"], dtype=np.float64)
    # absent columns become NaN; numeric frames convert in one step, others column by column
    sub = features.reindex(columns=cols)
    try:
        X = sub.to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError):
        X = np.column_stack([pd.to_numeric(sub[c], errors="coerce").to_numpy(dtype=np.float64)
                             for c in cols]) if cols else np.zeros((len(sub), 0))
    missing = np.isnan(X).mean(axis=1)
    keep = np.nonzero(missing <= float(config.get("max_missing", 0.5)))[0]
    X = X[keep]
    X = np.where(np.isfinite(X), X, mean)          # impute the training mean -> 0 after scaling
    Z = np.clip((X - mean) / std, -8, 8)
    return Z.astype(np.float32), keep, None


def _crop_starts(n_frames: int, crop: int, hop: int) -> list[int]:
    starts = list(range(0, n_frames - crop + 1, hop))
    if starts[-1] != n_frames - crop:
        starts.append(n_frames - crop)
    return starts


def crops(logmel: np.ndarray, crop: int = CROP_FRAMES, hop: int = CROP_HOP) -> list[np.ndarray]:
    """Fixed-length crops of one (64, T) log-mel; short inputs are padded with their minimum."""
    m = np.asarray(logmel, dtype=np.float32)
    if m.ndim != 2 or m.shape[1] < 10 or not np.isfinite(m).all():
        return []
    m = m - m.mean()                                   # gain invariance
    T = m.shape[1]
    if T <= crop:
        out = np.full((m.shape[0], crop), m.min(), dtype=np.float32)
        off = (crop - T) // 2
        out[:, off:off + T] = m
        return [out]
    return [m[:, s:s + crop] for s in _crop_starts(T, crop, hop)]


def crop_speech_shares(speech: np.ndarray, crop: int = CROP_FRAMES, hop: int = CROP_HOP) -> np.ndarray:
    """Share of speech frames in each of :func:`crops`' crops, shape ``(n_crops,)``.

    ``speech`` is the window's speech mask on the log-mel frames, shape ``(T,)``. A window up to
    one crop long has one crop (share 1: its weight does not matter).
    """
    mask = np.asarray(speech, dtype=bool)
    T = mask.size
    if T <= crop:
        return np.ones(1)
    counts = np.concatenate([[0], np.cumsum(mask)])
    starts = np.asarray(_crop_starts(T, crop, hop))
    return (counts[starts + crop] - counts[starts]) / crop


def _prepare_frames(features: pd.DataFrame, logmels: list, config: dict, speech: list | None = None):
    crop = int(config.get("crop_frames", CROP_FRAMES))
    hop = int(config.get("crop_hop", CROP_HOP))
    bands = int(config.get("n_mels", 64))
    out, group, weight = [], [], []
    for i, lm in enumerate(logmels or []):
        if lm is None or np.asarray(lm).shape[0] != bands:
            continue
        window_crops = crops(lm, crop, hop)
        mask = None if speech is None else speech[i]
        if mask is not None and np.asarray(mask).shape == (np.asarray(lm).shape[1],):
            # a crop counts by its share of speech: the network was trained on speech, and its
            # answer on pauses and silence (it leans male there) is no evidence
            shares = crop_speech_shares(mask, crop, hop)[: len(window_crops)]
        else:
            shares = np.ones(len(window_crops))
        out.extend(window_crops)
        group.extend([i] * len(window_crops))
        weight.extend(shares)
    if not out:
        return np.zeros((0, bands, crop, 1), np.float32), np.zeros(0, int), None
    return np.stack(out)[..., None], np.asarray(group), np.asarray(weight, dtype=np.float64)


REGISTRY: dict[str, MemberKind] = {
    "cv_mel": MemberKind("cv_mel", _prepare_mel),
    "voice_profile": MemberKind("voice_profile", _prepare_profile),
    "frames": MemberKind("frames", _prepare_frames),
}


def predict_rows(model, X: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """``model`` applied to the rows of ``X``, shape ``(n,)`` float64.

    ``model.predict`` builds a tf.data pipeline and may retrace its graph on every call, which
    costs more than the arithmetic for the few hundred rows a task predicts at once. Direct
    ``predict_on_batch`` calls on chunks padded to a power-of-two size reuse a handful of traced
    graphs for the whole life of the worker.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    out = np.empty(len(X), np.float64)
    for start in range(0, len(X), batch_size):
        chunk = X[start:start + batch_size]
        size = max(8, 1 << (len(chunk) - 1).bit_length())
        if size > len(chunk):
            pad = np.zeros((size - len(chunk), *chunk.shape[1:]), chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        raw = np.asarray(model.predict_on_batch(chunk), dtype=np.float64).reshape(-1)
        out[start:start + batch_size] = raw[:min(batch_size, len(X) - start)]
    return out


def member_logits(kind: str, model, features: pd.DataFrame, logmels: list, config: dict,
                  batch_size: int = 256, speech: list | None = None) -> np.ndarray:
    """Raw logits per window row (NaN where the member had no usable input).

    ``speech``: per row, the speech mask on the row's log-mel frames (or None); a ``frames``
    window's logit is then the mean over its crops weighted by their share of speech (a plain mean
    where no crop has any, or without masks).
    """
    if kind not in REGISTRY:
        raise ValueError(f"unknown member kind {kind!r}; known: {sorted(REGISTRY)}")
    n = len(features)
    X, group, weight = REGISTRY[kind].prepare(features, logmels, config, speech)
    z = np.full(n, np.nan)
    if len(group) == 0:
        return z
    raw = predict_rows(model, X, batch_size=batch_size)
    cnt = np.bincount(group, minlength=n)
    mean = np.bincount(group, weights=raw, minlength=n) / np.maximum(cnt, 1)
    if weight is not None:
        wsum = np.bincount(group, weights=weight, minlength=n)
        weighted = np.bincount(group, weights=weight * raw, minlength=n) / np.where(wsum > 0, wsum, 1)
        mean = np.where(wsum > 0, weighted, mean)
    ok = cnt > 0
    z[ok] = mean[ok]
    return z
