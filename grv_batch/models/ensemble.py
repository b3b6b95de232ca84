"""The ensemble: verified loading, batched window prediction, per-file combination."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field

from grv_batch._params import Params
from grv_batch.models import calibration as cal
from grv_batch.models.bundle import ENSEMBLE_JSON, MANIFEST, SHIPPED_BUNDLE, BundleError, sha256_file, verify_bundle
from grv_batch.models.members import REGISTRY, member_logits

LABELS = ("female", "male", "uncertain")
REASONS = ("too_little_speech", "low_confidence", "members_disagree")


def combine_logits(Z: np.ndarray, weights: np.ndarray, bias: float, calibration: dict | None, *,
                   stacked: bool = True) -> np.ndarray:
    """The ensemble's log-odds from calibrated member log-odds, row by row.

    Parameters
    ----------
    Z : np.ndarray
        Shape ``(n, m)`` calibrated member logits, NaN where a member had no input.
    weights, bias, calibration
        The fitted stack: ``weights`` shape ``(m,)``.
    stacked : bool
        False for a subset of the bundle's members: no row uses the fitted stack.

    Returns
    -------
    np.ndarray
        Shape ``(n,)``. Rows with every member: the stack and its calibration. Other rows: the
        members they have, averaged with weights ``|w|`` (the stack's bias and calibration were
        fitted on all members), or equally where those weights are all zero; NaN where no member
        had input. Decided row by row, so a window's answer does not depend on which other
        windows share its predict call.
    """
    finite = np.isfinite(Z)
    Zf = np.where(finite, Z, 0.0)
    W = finite * np.abs(weights)[None, :]
    den = W.sum(axis=1)
    # a member the stack gives no weight still answers when it is the only one with input
    W = np.where((den > 0)[:, None], W, finite.astype(np.float64))
    den = W.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(den > 0, (W * Zf).sum(axis=1) / den, np.nan)
    complete = finite.all(axis=1) if stacked else np.zeros(len(Z), bool)
    if complete.any():
        z[complete] = cal.apply(calibration, Zf[complete] @ weights + bias)
    return z


class ModelParams(Params):
    """Which bundle and members to use, and when a file is labelled ``uncertain``."""

    #: bundle folder; None -> the bundle shipped inside the package
    bundle: str | None = None
    #: subset of member names to use (None -> all members of the bundle)
    members: list[str] | None = None
    #: minimum calibrated confidence max(p, 1-p) for a female/male label; None -> the bundle's
    #: recommended value (chosen by cross-validation), else 0.8
    confidence_threshold: float | None = Field(None, ge=0.5, le=1.0)
    #: files with less detected speech than this (seconds) are uncertain (too_little_speech)
    min_speech_s: float = Field(1.0, ge=0.0)
    #: max allowed spread (max - min) of member probabilities when they point to different labels;
    #: above it the file is uncertain (members_disagree). None -> the bundle's value, else 0.6
    disagreement: float | None = Field(None, ge=0.0, le=1.0)
    #: batch size for Keras predict
    batch_size: int = Field(32, ge=1, le=65536)


def _logit(p):
    return cal.logit(p)


class Ensemble:
    """A loaded, verified bundle. Use :func:`load_ensemble` rather than constructing directly."""

    def __init__(self, root: Path, manifest: dict, spec: dict, models: dict, members: list[str],
                 params: ModelParams):
        self.root = root
        self.manifest = manifest
        self.spec = spec
        self._models = models
        self.members: list[str] = list(members)
        self.params = params
        thr = spec.get("thresholds", {})
        self.confidence_threshold = float(
            params.confidence_threshold if params.confidence_threshold is not None
            else thr.get("confidence_threshold", 0.8))
        self.disagreement = float(params.disagreement if params.disagreement is not None
                                  else thr.get("disagreement", 0.6))
        self._lock = threading.Lock()

    @property
    def identity(self) -> dict:
        return {
            "name": self.manifest.get("name"),
            "version": self.manifest.get("version"),
            "created": self.manifest.get("created"),
            "members": list(self.members),
            "manifest_sha256": sha256_file(self.root / MANIFEST),
            "files": dict(self.manifest["files"]),
        }

    # ------------------------------------------------------------------------------------------
    def _combine_logits(self, Z: np.ndarray) -> np.ndarray:
        """Calibrated member logits (n, m) -> calibrated ensemble logit (n,), NaN-tolerant."""
        comb = self.spec["combiner"]
        w_all = comb.get("weights", {})
        w = np.array([float(w_all.get(m, 1.0)) for m in self.members])
        full = set(self.members) == set(self.spec["members"])
        return combine_logits(Z, w, float(comb.get("bias", 0.0)), comb.get("calibration"), stacked=full)

    def predict_windows(self, features: pd.DataFrame, logmels: list | None = None,
                        speech: list | None = None) -> pd.DataFrame:
        """One row per window: ``p_male_<member>`` (calibrated) and ``p_male``.

        ``features`` has the FEATURE_COLUMNS and a ``mel128`` column (arrays of 128); ``logmels``
        is one (64, n_frames) array (or None) per row; ``speech`` optionally one boolean
        (n_frames,) speech mask per row (``WindowAnalysis.speech_mask``), so that the ``frames``
        member weighs its crops by their speech. One batched predict per member per call.
        """
        n = len(features)
        features = features.reset_index(drop=True)
        if logmels is None:
            logmels = [None] * n
        if len(logmels) != n:
            raise ValueError(f"got {n} feature rows but {len(logmels)} logmels")
        if speech is not None and len(speech) != n:
            raise ValueError(f"got {n} feature rows but {len(speech)} speech masks")
        Z = np.full((n, len(self.members)), np.nan)
        with self._lock:  # Keras models are shared by threads of a worker
            for j, m in enumerate(self.members):
                mspec = self.spec["members"][m]
                z = member_logits(mspec["kind"], self._models[m], features, logmels, mspec.get("config", {}),
                                  batch_size=self.params.batch_size, speech=speech)
                Z[:, j] = cal.apply(mspec.get("calibration"), z)
        out = pd.DataFrame({f"p_male_{m}": cal.sigmoid(Z[:, j]) for j, m in enumerate(self.members)})
        out["p_male"] = cal.sigmoid(self._combine_logits(Z)) if n else np.zeros(0)
        return out

    # ------------------------------------------------------------------------------------------
    def combine_file(self, window_preds, *, speech_s, params: ModelParams | None = None) -> dict:
        """Pool the windows of one recording into the file's prediction.

        Log-odds of every window are averaged, weighted by its seconds of speech times its
        confidence; the same pooling gives each ``p_male_<member>``.

        Parameters
        ----------
        window_preds : pandas.DataFrame or Mapping[str, np.ndarray]
            :meth:`predict_windows` rows of this file's windows (a mapping of columns is cheaper
            when called once per file).
        speech_s : array-like
            Shape ``(n_windows,)``, seconds of speech per window.
        """
        params = params or self.params
        thr = float(params.confidence_threshold if params.confidence_threshold is not None else self.confidence_threshold)
        dis = float(params.disagreement if params.disagreement is not None else self.disagreement)
        speech = np.nan_to_num(np.asarray(speech_s, dtype=np.float64).reshape(-1), nan=0.0)
        speech = np.maximum(speech, 0.0)
        cols = [f"p_male_{m}" for m in self.members]
        columns = {c: np.asarray(window_preds[c], dtype=np.float64)
                   for c in [*cols, "p_male"] if c in window_preds}  # other columns are ignored
        n_windows = len(next(iter(columns.values()))) if columns else 0
        if len(speech) != n_windows:
            raise ValueError(f"speech_s has {len(speech)} values for {n_windows} windows")
        row: dict = {}

        total_speech = float(speech.sum())

        def pool(p: np.ndarray, *, unweighted_if_silent: bool) -> float:
            p = np.asarray(p, dtype=np.float64)
            ok = np.isfinite(p)
            if not ok.any():
                return float("nan")
            w = speech[ok] * np.maximum(p[ok], 1 - p[ok])
            if w.sum() <= 0:
                if not unweighted_if_silent:
                    return float("nan")
                w = np.ones(ok.sum())
            return float(cal.sigmoid(np.sum(w * _logit(p[ok])) / w.sum()))

        # a member's column says what it answered, also for a file without speech
        for c in cols:
            row[c] = (pool(columns[c], unweighted_if_silent=total_speech <= 0)
                      if c in columns else float("nan"))
        # without any speech the networks still answer, but from silence or noise: no evidence.
        # So too when the file has speech but only its windows without speech have an answer.
        p = pool(columns["p_male"], unweighted_if_silent=False) if n_windows else float("nan")
        if not np.isfinite(p):
            p = 0.5
        row["p_male"] = p
        row["confidence"] = float(max(p, 1 - p))
        member_p = np.array([[row[c] for c in cols]], dtype=np.float64)
        # no windows at all is too little speech whatever min_speech_s is
        label, reason = decide(np.array([p]), member_p, np.array([total_speech if n_windows else -np.inf]),
                               confidence_threshold=thr, disagreement=dis, min_speech_s=params.min_speech_s)
        row["label"] = str(label[0])
        row["reason"] = reason[0]
        return row


def decide(p_male, member_p, speech_s, *, confidence_threshold: float, disagreement: float,
           min_speech_s: float) -> tuple[np.ndarray, np.ndarray]:
    """The ``label`` and ``reason`` of each file, from its pooled probabilities.

    The one rule used at inference (:meth:`Ensemble.combine_file`) and when training measures
    coverage and chooses the operating point, so the two cannot drift apart.

    Parameters
    ----------
    p_male : array-like
        Shape ``(n,)``, the ensemble's calibrated probability.
    member_p : array-like
        Shape ``(n, n_members)``, each member's calibrated probability (NaN: no output).
    speech_s : array-like
        Shape ``(n,)``, seconds of detected speech.

    Returns
    -------
    label : numpy.ndarray
        Shape ``(n,)``, ``female``, ``male`` or ``uncertain``.
    reason : numpy.ndarray
        Shape ``(n,)``, object: ``too_little_speech``, ``members_disagree``, ``low_confidence``
        (checked in this order) or None.
    """
    p = np.asarray(p_male, dtype=np.float64).reshape(-1)
    P = np.asarray(member_p, dtype=np.float64).reshape(len(p), -1)
    speech = np.nan_to_num(np.asarray(speech_s, dtype=np.float64).reshape(-1), nan=0.0)
    finite = np.isfinite(P)
    with np.errstate(invalid="ignore"):
        # members take opposite sides (only finite outputs count) and their spread is large
        split = (finite.sum(axis=1) > 1) & ((P > 0.5) & finite).any(axis=1) & ((P <= 0.5) & finite).any(axis=1)
        spread = np.where(finite.any(axis=1),
                          np.nanmax(np.where(finite, P, -np.inf), axis=1) - np.nanmin(np.where(finite, P, np.inf), axis=1),
                          0.0)
    short = speech < min_speech_s
    disagree = ~short & split & (spread > disagreement)
    # written so that a NaN p_male (no answer) is low confidence, never a label
    low = ~short & ~disagree & ~(np.maximum(p, 1 - p) >= confidence_threshold)
    label = np.where(p > 0.5, "male", "female").astype(object)
    label[short | disagree | low] = "uncertain"
    reason = np.full(len(p), None, dtype=object)
    reason[short], reason[disagree], reason[low] = "too_little_speech", "members_disagree", "low_confidence"
    return label, reason


_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


def _not_a_retracing_notice(record: logging.LogRecord) -> bool:
    return "triggered tf.function retracing" not in str(record.msg)


def _load_models(root: Path, spec: dict, members: list[str]) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    # predict batches are padded to a few power-of-two sizes, each traced once; TensorFlow warns
    # about "excessive retracing" after five, on the user's console, with advice for its own users
    logging.getLogger("tensorflow").addFilter(_not_a_retracing_notice)
    models = {}
    for m in members:
        path = root / spec["members"][m]["file"]
        if path.suffix != ".keras":
            # safe mode only covers the Keras v3 format: Keras loads HDF5 (.h5) without it
            raise BundleError(f"member {m!r}: {path.name} is not a .keras file; bundles hold only "
                              f"Keras v3 files, which load in safe mode")
        models[m] = keras.saving.load_model(path, compile=False, safe_mode=True)
    return models


def load_ensemble(bundle: str | os.PathLike | None = None, *, params: ModelParams | None = None) -> Ensemble:
    """Load (once per process) and verify a bundle. ``bundle`` overrides ``params.bundle``.

    Every file's sha256 is checked against ``manifest.json`` before anything is loaded; a
    mismatch raises :class:`BundleError`. Keras models are loaded with ``safe_mode=True``.
    """
    params = params or ModelParams()
    root = Path(bundle or params.bundle or SHIPPED_BUNDLE).expanduser().resolve()
    manifest = verify_bundle(root)           # raises before any model is deserialised
    key = (str(root), sha256_file(root / MANIFEST), params.model_dump_json())
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        spec = json.loads((root / ENSEMBLE_JSON).read_text())
        listed = set(manifest["files"])
        available = list(spec.get("members", {}))
        members = list(params.members) if params.members is not None else available
        if not members:
            raise BundleError("no ensemble members selected")
        for m in members:
            if m not in spec.get("members", {}):
                raise BundleError(f"bundle {manifest.get('name')!r} has no member {m!r}; it has {available}")
            kind = spec["members"][m].get("kind")
            if kind not in REGISTRY:
                raise BundleError(f"member {m!r} has unknown kind {kind!r}")
            if spec["members"][m].get("file") not in listed:
                raise BundleError(f"member file {spec['members'][m].get('file')!r} is not covered by the manifest")
        ens = Ensemble(root, manifest, spec, _load_models(root, spec, members), members, params)
        _CACHE[key] = ens
        return ens


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()
