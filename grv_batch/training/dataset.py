"""Dataset building from ../shared/data: per-(clip, variant) feature extraction with a disk cache.

Features come from :func:`grv_batch.features.iter_windows`, exactly as at inference.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd


#: bump when feature extraction or an augmentation variant changes its numbers while the analysis
#: parameters stay the same: cached features, and the members memoised from them, are keyed by it
FEATURES_VERSION = 1


def signature(*parts) -> str:
    """12 hex digits naming ``parts`` (anything JSON can write, else its ``str``): cache keys."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


@functools.cache
def feature_signature() -> str:
    """Names what cached features are: the feature columns (the arrays are stored in their order),
    the analysis parameters they were computed with, and :data:`FEATURES_VERSION`."""
    from grv_batch.features import FEATURE_COLUMNS, AnalysisParams

    return signature(list(FEATURE_COLUMNS), AnalysisParams().model_dump(mode="json"), FEATURES_VERSION)[:8]


def _key(path: str, variant: str, seed: int) -> str:
    return hashlib.sha1(f"{path}|{variant}|{seed}".encode()).hexdigest()[:16]


def _cache_file(cache, path: str, variant: str, seed: int) -> Path:
    """Where one (clip, variant) is cached: its folder is named by :func:`feature_signature`, so a
    cache of other columns or other analysis parameters is never misread."""
    return Path(cache) / f"{variant}-{feature_signature()}" / f"{_key(path, variant, seed)}.npz"


def _extract_one(args) -> str | None:
    path, root, variant, seed, cache, gender = args
    out = _cache_file(cache, path, variant, seed)
    if out.exists():
        return None
    import soundfile as sf

    from grv_batch.features import FEATURE_COLUMNS, AnalysisParams, iter_windows
    from grv_batch.training.augment import make_variant

    rng = np.random.default_rng(int(_key(path, variant, seed), 16) % (2**32))
    try:
        x, sr = sf.read(str(Path(root) / path), dtype="float64", always_2d=True)
        src = make_variant(x.mean(axis=1), sr, variant, rng, gender=gender)
        wins = list(iter_windows(src, AnalysisParams()))
    except Exception as exc:  # noqa: BLE001 - recorded, not fatal
        return f"{path} [{variant}]: {exc}"
    arrays = {
        "meta": np.array(json.dumps({"path": path, "variant": variant,
                                     "start_s": [w.start_s for w in wins],
                                     "duration_s": [w.duration_s for w in wins],
                                     "speech_s": [w.speech_s for w in wins]})),
        "features": np.array([[w.features.get(c, np.nan) for c in FEATURE_COLUMNS] for w in wins], dtype=np.float64),
        "mel128": np.array([w.mel128 for w in wins], dtype=np.float32).reshape(len(wins), 128),
    }
    for i, w in enumerate(wins):
        arrays[f"logmel_{i}"] = (w.logmel if w.logmel is not None else np.zeros((64, 0))).astype(np.float16)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, out)
    return None


def extract(metadata: pd.DataFrame, data_root, cache, variants, *, seed: int = 0, workers: int = 2) -> list[str]:
    """Fill the cache for every (clip, variant); returns error messages (failed clips are skipped)."""
    genders = metadata["gender"] if "gender" in metadata else [None] * len(metadata)
    jobs = [(p, str(data_root), v, seed, str(cache), g) for v in variants
            for p, g in zip(metadata["path"], genders, strict=True)]
    errors = []
    if workers <= 1:
        for j in jobs:
            e = _extract_one(j)
            if e:
                errors.append(e)
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
            for e in ex.map(_extract_one, jobs, chunksize=4):
                if e:
                    errors.append(e)
    return errors


def load_windows(metadata: pd.DataFrame, cache, variant: str, *, seed: int = 0):
    """Window rows for one variant: (DataFrame with metadata + features + mel128, list of logmels)."""
    from grv_batch.features import FEATURE_COLUMNS

    rows, logmels = [], []
    for _, r in metadata.iterrows():
        f = _cache_file(cache, r["path"], variant, seed)
        if not f.exists():
            continue
        z = np.load(f, allow_pickle=False)
        meta = json.loads(str(z["meta"]))
        feats = z["features"]
        for i in range(len(meta["start_s"])):
            d = {k: r[k] for k in metadata.columns}
            d.update({"variant": variant, "window": i, "start_s": meta["start_s"][i],
                      "window_duration_s": meta["duration_s"][i], "win_speech_s": meta["speech_s"][i]})
            d.update(dict(zip(FEATURE_COLUMNS, feats[i])))
            d["mel128"] = z["mel128"][i]
            rows.append(d)
            logmels.append(z[f"logmel_{i}"].astype(np.float32))
    return pd.DataFrame(rows), logmels
