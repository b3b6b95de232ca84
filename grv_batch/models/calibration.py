"""Probability calibration stored as plain JSON numbers (Platt scaling or isotonic regression)."""

from __future__ import annotations

import numpy as np

_EPS = 1e-6


def sigmoid(z):
    z = np.asarray(z, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def logit(p):
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def apply(cal: dict | None, z: np.ndarray) -> np.ndarray:
    """Map raw logits ``z`` to calibrated logits according to ``cal`` (a JSON dict)."""
    z = np.asarray(z, dtype=np.float64)
    if not cal or cal.get("type", "identity") == "identity":
        return z
    kind = cal["type"]
    if kind == "platt":
        return float(cal["a"]) * z + float(cal["b"])
    if kind == "isotonic":
        x = np.asarray(cal["x"], dtype=np.float64)
        y = np.asarray(cal["y"], dtype=np.float64)
        return logit(np.interp(z, x, y))
    raise ValueError(f"unknown calibration type {kind!r}")


def fit_platt(z: np.ndarray, y: np.ndarray) -> dict:
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1e4, max_iter=1000)
    lr.fit(np.asarray(z, dtype=np.float64).reshape(-1, 1), np.asarray(y).astype(int))
    return {"type": "platt", "a": float(lr.coef_[0, 0]), "b": float(lr.intercept_[0])}


def fit_isotonic(z: np.ndarray, y: np.ndarray) -> dict:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.005, y_max=0.995, out_of_bounds="clip")
    iso.fit(np.asarray(z, dtype=np.float64), np.asarray(y, dtype=np.float64))
    return {"type": "isotonic", "x": [float(v) for v in iso.X_thresholds_],
            "y": [float(v) for v in iso.y_thresholds_]}
