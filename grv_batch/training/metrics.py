"""Evaluation metrics (decision rule: p_male > 0.5)."""

from __future__ import annotations

import numpy as np


def ece(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of P(male), equal-width bins (as in the report)."""
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() * abs(y[m].mean() - p[m].mean())
    return float(total / max(len(y), 1))


def binary_metrics(y, p) -> dict:
    y = np.asarray(y, dtype=float)
    p = np.clip(np.asarray(p, dtype=float), 1e-7, 1 - 1e-7)
    pred = p > 0.5
    return {
        "n": int(len(y)),
        "accuracy": float((pred == (y > 0.5)).mean()) if len(y) else float("nan"),
        "recall_female": float((~pred[y < 0.5]).mean()) if (y < 0.5).any() else float("nan"),
        "recall_male": float(pred[y > 0.5].mean()) if (y > 0.5).any() else float("nan"),
        "ece": ece(y, p),
        "log_loss": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))),
    }


def wilson_lower_bound(correct: float, n: float, *, confidence: float = 0.95) -> float:
    """One-sided Wilson score lower bound on a proportion (``correct`` of ``n``); 0 when ``n`` is 0.

    Parameters
    ----------
    correct, n : float
        Successes and trials.
    confidence : float
        One-sided confidence level, e.g. 0.95 (z = 1.645).
    """
    from scipy.stats import norm

    if n <= 0:
        return 0.0
    z, phat = float(norm.ppf(confidence)), correct / n
    centre = phat + z * z / (2 * n)
    spread = z * np.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n))
    return float((centre - spread) / (1 + z * z / n))


def coverage_curve(y, p, thresholds=(0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)) -> list[dict]:
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    conf = np.maximum(p, 1 - p)
    out = []
    for t in thresholds:
        m = conf >= t
        acc = float(((p[m] > 0.5) == (y[m] > 0.5)).mean()) if m.any() else float("nan")
        out.append({"threshold": t, "coverage": float(m.mean()), "accuracy_confident": acc})
    return out


def markdown_table(rows: list[dict], floatfmt: str = ".4f") -> str:
    """A GitHub markdown table from a list of dicts (no tabulate dependency)."""
    if not rows:
        return ""
    cols = list(rows[0].keys())
    for r in rows[1:]:
        cols += [c for c in r if c not in cols]

    def fmt(v):
        if isinstance(v, float):
            return format(v, floatfmt)
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
