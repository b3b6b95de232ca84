"""Report figures, drawn with matplotlib's Agg canvas and embedded as base64 PNG.

pyplot is never imported: figures are built from :class:`matplotlib.figure.Figure` on an explicit
``FigureCanvasAgg``, so the report neither needs nor changes a global backend.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ._metrics import N_BINS

_DPI = 80
_COLORS = ["#3366aa", "#dd7733", "#229955", "#aa3344", "#7755aa", "#887733", "#cc5599", "#448899"]
THRESHOLDS = np.round(np.linspace(0.5, 1.0, 51), 3)


def _figure(width: float, height: float) -> Figure:
    # no layout engine: constrained layout drew every figure twice and measured every tick label,
    # most of the report's time; the figures place their axes with fixed margins instead
    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _margins(fig: Figure, *, left: float, bottom: float, top: float, right: float = 0.15,
             wspace: float = 0.0, hspace: float = 0.0) -> None:
    """Place the subplots with margins and gaps given in inches."""
    w, h = fig.get_size_inches()
    nrows, ncols = fig.axes[0].get_subplotspec().get_gridspec().get_geometry() if fig.axes else (1, 1)
    axes_w = (w - left - right - wspace * (ncols - 1)) / ncols
    axes_h = (h - top - bottom - hspace * (nrows - 1)) / nrows
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h,
                        wspace=wspace / axes_w, hspace=hspace / axes_h)


def _text_width_in(labels: list[str], size: float) -> float:
    """Width in inches of the widest of ``labels`` at font ``size`` (points)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    props, measure = FontProperties(size=size), TextToPath()
    widths = [measure.get_text_width_height_descent(t, props, ismath=False)[0] for t in labels]
    return max(widths, default=0.0) / 72.0


def to_img(fig: Figure, alt: str) -> str:
    """``<img>`` tag with the figure as an inline base64 PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def bars(table: pd.DataFrame, metrics: list[str], order: list[str], overall: dict[str, float]) -> Figure:
    """Horizontal bars per group with interval whiskers, one panel per metric.

    Groups too small to compare are drawn hollow and grey; the dashed line is the overall value.
    """
    n_groups = len(order)
    fig = _figure(3.3 * len(metrics), 0.9 + 0.32 * n_groups)
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    ypos = np.arange(n_groups)[::-1]
    for ax, metric in zip(axes, metrics):
        sub = table[table["metric"] == metric].set_index("group").reindex(order)
        v = sub["value"].to_numpy(dtype=float)
        lo = sub["ci_low"].to_numpy(dtype=float)
        hi = sub["ci_high"].to_numpy(dtype=float)
        small = sub["small"].fillna(True).to_numpy(dtype=bool)
        colors = np.where(small, "#ffffff", "#3366aa")
        edges = np.where(small, "#999999", "#3366aa")
        ax.barh(ypos, np.nan_to_num(v), color=colors, edgecolor=edges, height=0.7)
        err = np.vstack([np.nan_to_num(v - lo), np.nan_to_num(hi - v)])
        ok = ~np.isnan(lo)
        if ok.any():
            ax.errorbar(v[ok], ypos[ok], xerr=err[:, ok], fmt="none", ecolor="#222222", capsize=3, lw=1)
        if metric in overall and not np.isnan(overall[metric]):
            ax.axvline(overall[metric], color="#aa3344", ls="--", lw=1)
        ax.set_title(metric, fontsize=10)
        top = np.nanmax(np.concatenate([hi[ok], v[~np.isnan(v)], [0.0]])) if len(v) else 1.0
        ax.set_xlim(0, 1.0 if top <= 1.0 else top * 1.05)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelsize=8)
    labels = [_short(g) for g in order]
    axes[0].set_yticks(ypos, labels)
    _margins(fig, left=1.05 * _text_width_in(labels, 8) + 0.25, bottom=0.4, top=0.3, right=0.2, wspace=0.25)
    return fig


def _short(text: str, width: int = 28) -> str:
    """A group name as a plot label: shortened, with ``$`` escaped (matplotlib would read
    ``$...$`` as mathtext: ``$10k-$20k`` garbled, ``a$\\foo$b`` an exception), and a leading ``_``
    kept visible (matplotlib leaves a label that starts with ``_`` out of the legend)."""
    text = str(text)
    text = text if len(text) <= width else text[: width - 1] + "…"
    text = text.replace("$", r"\$")
    return "\u200b" + text if text.startswith("_") else text


def reliability_points(p: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    """Mean predicted P(male) and observed share male per equal-width bin (empty bins dropped)."""
    p = np.clip(p, 0, 1)
    b = np.minimum((p * N_BINS).astype(int), N_BINS - 1)
    df = pd.DataFrame({"bin": b, "p": p, "y": y.astype(float)})
    agg = df.groupby("bin").agg(mean_p=("p", "mean"), share_male=("y", "mean"), n=("p", "size"))
    return agg.reset_index()


def reliability(
    curves: list[tuple[str, np.ndarray, np.ndarray]], *, histogram: bool, min_count: int = 1
) -> Figure:
    """Reliability diagram: one line per curve, the diagonal is perfect calibration.

    Bins holding fewer than ``min_count`` files of a curve are not drawn for that curve.
    """
    fig = _figure(5.2 if histogram else 4.6, 4.6 if histogram else 3.8)
    if histogram:
        ax, axh = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    else:
        ax, axh = fig.subplots(1, 1), None
    ax.plot([0, 1], [0, 1], color="#999999", ls=":", lw=1, label="perfect")
    for i, (name, p, y) in enumerate(curves):
        pts = reliability_points(p, y)
        pts = pts[pts["n"] >= min_count]
        color = _COLORS[i % len(_COLORS)]
        ax.plot(pts["mean_p"], pts["share_male"], "-o", color=color, ms=3, lw=1.3, label=_short(name, 22))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("observed share male", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", frameon=False)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=8)
    if axh is not None:
        p_all = np.concatenate([c[1] for c in curves]) if curves else np.array([])
        axh.hist(p_all, bins=np.linspace(0, 1, N_BINS + 1), color="#3366aa", alpha=0.8)
        axh.set_ylabel("files", fontsize=9)
        axh.set_xlabel("predicted P(male)", fontsize=9)
        axh.tick_params(labelsize=8)
    else:
        ax.set_xlabel("predicted P(male)", fontsize=9)
    _margins(fig, left=0.75, bottom=0.5, top=0.1, hspace=0.1)
    return fig


def threshold_table(confidence: np.ndarray, correct: np.ndarray | None) -> pd.DataFrame:
    """Coverage (of all files) and accuracy among kept files for every confidence threshold.

    ``correct``: 1.0 / 0.0 per file, NaN for a file without ground truth (it counts in coverage,
    not in accuracy); None when no file has ground truth.
    """
    conf = np.nan_to_num(confidence)
    right = None if correct is None else np.asarray(correct, dtype=float)
    known = None if right is None else ~np.isnan(right)
    rows = []
    for t in THRESHOLDS:
        keep = conf >= t
        cov = float(keep.mean()) if len(conf) else np.nan
        judged = None if known is None else keep & known
        acc = float(right[judged].mean()) if judged is not None and judged.any() else np.nan
        rows.append((t, cov, acc))
    return pd.DataFrame(rows, columns=["threshold", "coverage", "accuracy"])


def threshold_curves(curves: list[tuple[str, np.ndarray, np.ndarray | None]], *, combined: bool) -> Figure:
    """Accuracy among kept files and coverage as the confidence threshold rises.

    ``combined`` draws one curve pair on a single axes (overall); otherwise two panels with one
    line per group.
    """
    with_acc = any(c[2] is not None for c in curves)
    if combined:
        fig = _figure(5.2, 3.6)
        ax = fig.subplots(1, 1)
        name, conf, correct = curves[0]
        tt = threshold_table(conf, correct)
        ax.plot(tt["threshold"], tt["coverage"], color="#dd7733", lw=1.8, label="coverage (share kept)")
        if with_acc:
            ax.plot(tt["threshold"], tt["accuracy"], color="#3366aa", lw=1.8, label="accuracy of kept files")
        ax.set_xlabel("confidence threshold", fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False, loc="lower left")
        ax.tick_params(labelsize=8)
        _margins(fig, left=0.45, bottom=0.5, top=0.1)
        return fig
    panels = ["accuracy", "coverage"] if with_acc else ["coverage"]
    fig = _figure(4.4 * len(panels), 3.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for i, (name, conf, correct) in enumerate(curves):
        tt = threshold_table(conf, correct)
        for ax, col in zip(axes, panels):
            ax.plot(tt["threshold"], tt[col], color=_COLORS[i % len(_COLORS)], lw=1.4, label=_short(name, 22))
    for ax, col in zip(axes, panels):
        ax.set_title("accuracy of kept files" if col == "accuracy" else "coverage (share kept)", fontsize=10)
        ax.set_xlabel("confidence threshold", fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    axes[-1].legend(fontsize=7, frameon=False, loc="lower left")
    _margins(fig, left=0.45, bottom=0.5, top=0.3, wspace=0.45)
    return fig
