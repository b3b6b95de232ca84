"""Formants F1-F3 by LPC (autocorrelation method), vectorised over frames.

Levinson-Durbin runs over all frames at once (loop over the order only); the LPC polynomial roots
come from batched eigenvalues of companion matrices. Audio is resampled to twice ``formant_max_hz``
first, as Praat does, so the model order is spent on the formant range.
"""

from __future__ import annotations

import numpy as np
import scipy.fft
import soxr
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["FORMANT_COLUMNS", "formant_features", "formant_tracks", "lpc"]

FORMANT_COLUMNS: tuple[str, ...] = (
    "f1_hz",
    "f2_hz",
    "f3_hz",
    "f1_bw_hz",
    "f2_bw_hz",
    "f3_bw_hz",
    "f2_f1_ratio",
    "f3_f2_ratio",
    "formant_dispersion_hz",
    "vtl_cm",
)

_SPEED_OF_SOUND_CM_S = 35000.0  # warm moist air in the vocal tract


def lpc(frames: np.ndarray, order: int) -> np.ndarray:
    """LPC coefficients of windowed frames by the autocorrelation method.

    Parameters
    ----------
    frames : np.ndarray
        Shape ``(k, n)`` windowed frames.
    order : int

    Returns
    -------
    np.ndarray
        Shape ``(k, order + 1)``, ``a[:, 0] == 1`` (prediction-error filter ``A(z)``).
    """
    k, n = frames.shape
    nfft = scipy.fft.next_fast_len(2 * n, real=True)
    spec = scipy.fft.rfft(frames, nfft, axis=1)
    r = scipy.fft.irfft(np.abs(spec) ** 2, nfft, axis=1)[:, : order + 1]
    r[:, 0] *= 1.0 + 1e-9  # white-noise correction keeps the recursion stable
    r[:, 0] += 1e-12
    a = np.zeros((k, order + 1))
    a[:, 0] = 1.0
    err = r[:, 0].copy()
    for i in range(1, order + 1):
        # acc = sum_{j<i} a_j r_{i-j}  (a_0 = 1)
        acc = np.einsum("kj,kj->k", a[:, :i], r[:, i:0:-1])
        refl = -acc / err
        a[:, 1:i] = a[:, 1:i] + refl[:, None] * a[:, i - 1 : 0 : -1]
        a[:, i] = refl
        err = np.maximum(err * (1.0 - refl**2), 1e-12)
    return a


def formant_tracks(
    y: np.ndarray,
    sr: int,
    hop_length: int,
    frames: np.ndarray,
    max_hz: float = 5500.0,
    order: int = 12,
    frame_ms: float = 25.0,
    max_bw_hz: float = 600.0,
) -> tuple[np.ndarray, np.ndarray]:
    """F1-F3 and their bandwidths for frames centred on ``frames * hop_length / sr`` seconds.

    Parameters
    ----------
    y : np.ndarray
        Shape ``(n,)`` mono signal at ``sr``.
    frames : np.ndarray
        Shape ``(k,)`` frame indices on the ``hop_length`` grid (e.g. voiced frames).

    Returns
    -------
    freqs, bws : np.ndarray
        Each shape ``(k, 3)`` Hz; NaN where fewer than three formants were found.
    """
    frames = np.asarray(frames, dtype=np.int64)
    k = frames.size
    if k == 0:
        return np.full((0, 3), np.nan), np.full((0, 3), np.nan)
    fs = int(round(2 * max_hz))
    # LQ is ample here: LPC only needs the band below max_hz, and this runs on every window
    z = soxr.resample(np.asarray(y, dtype=np.float32), sr, fs, quality="LQ") if fs != sr else y
    z = np.asarray(z, dtype=np.float64)
    # pre-emphasis from 50 Hz (as Praat): flattens the glottal tilt so LPC fits F2/F3 too
    z = np.append(z[0], z[1:] - np.exp(-2 * np.pi * 50.0 / fs) * z[:-1])
    n = int(round(frame_ms * fs / 1000))
    zpad = np.pad(z, (n // 2, n))
    centres = np.round(frames * hop_length * fs / sr).astype(np.int64)
    centres = np.clip(centres, 0, z.size)
    x = sliding_window_view(zpad, n)[centres] * np.hamming(n)
    a = lpc(x, order)
    # roots of z^p + a1 z^(p-1) + ... + ap: eigenvalues of the companion matrices
    comp = np.zeros((k, order, order))
    comp[:, 0, :] = -a[:, 1:]
    comp[:, np.arange(1, order), np.arange(order - 1)] = 1.0
    roots = np.linalg.eigvals(comp)
    freq = np.angle(roots) * fs / (2 * np.pi)
    bw = -np.log(np.maximum(np.abs(roots), 1e-12)) * fs / np.pi
    ok = (freq > 90.0) & (freq < fs / 2 - 50.0) & (bw > 0) & (bw < max_bw_hz)
    freq = np.where(ok, freq, np.inf)
    order_idx = np.argsort(freq, axis=1)[:, :3]
    f = np.take_along_axis(freq, order_idx, axis=1)
    b = np.take_along_axis(bw, order_idx, axis=1)
    valid = np.isfinite(f)
    return np.where(valid, f, np.nan), np.where(valid, b, np.nan)


def _nanmedian(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else float("nan")


def formant_features(freqs: np.ndarray, bws: np.ndarray) -> dict[str, float]:
    """Median formants, bandwidths, ratios and vocal-tract-length measures.

    Parameters
    ----------
    freqs, bws : np.ndarray
        Shape ``(k, 3)`` from :func:`formant_tracks`.

    Returns
    -------
    dict
        :data:`FORMANT_COLUMNS`. ``formant_dispersion_hz`` is the median of ``(F3 - F1) / 2`` (mean
        spacing of adjacent formants); ``vtl_cm`` is the uniform-tube length ``c / (2 * dispersion)``.
        NaN where no frame has the needed formants.
    """
    f1, f2, f3 = (_nanmedian(freqs[:, i]) for i in range(3))
    ratios = freqs[:, 1] / freqs[:, 0], freqs[:, 2] / freqs[:, 1]
    dispersion = _nanmedian((freqs[:, 2] - freqs[:, 0]) / 2.0)
    return {
        "f1_hz": f1,
        "f2_hz": f2,
        "f3_hz": f3,
        "f1_bw_hz": _nanmedian(bws[:, 0]),
        "f2_bw_hz": _nanmedian(bws[:, 1]),
        "f3_bw_hz": _nanmedian(bws[:, 2]),
        "f2_f1_ratio": _nanmedian(ratios[0]),
        "f3_f2_ratio": _nanmedian(ratios[1]),
        "formant_dispersion_hz": dispersion,
        "vtl_cm": _SPEED_OF_SOUND_CM_S / (2.0 * dispersion) if dispersion > 0 else float("nan"),
    }
