"""MFCC and delta-MFCC statistics over speech frames."""

from __future__ import annotations

import numpy as np
import scipy.fft

from grv_batch.features.spectral import mel_filterbank

__all__ = ["mfcc_columns", "mfcc_features"]


def mfcc_columns(n_mfcc: int = 20) -> tuple[str, ...]:
    """Column names ``mfcc_XX_mean``, ``mfcc_XX_std``, ``dmfcc_XX_mean``, ``dmfcc_XX_std``, XX from 01."""
    cols: list[str] = []
    for prefix in ("mfcc", "dmfcc"):
        for stat in ("mean", "std"):
            cols += [f"{prefix}_{i:02d}_{stat}" for i in range(1, n_mfcc + 1)]
    return tuple(cols)


def _delta(x: np.ndarray, width: int) -> np.ndarray:
    """``librosa.feature.delta(x, width=width, axis=-1, mode="interp")`` without its overheads.

    That is a Savitzky-Golay first derivative of order 1: inside, the correlation with
    ``(j - h) / sum((j - h)**2)`` for ``j = 0 .. width - 1``, ``h = width // 2``; in the ``h`` edge
    frames, the slope of the least-squares line through the first (last) ``width`` frames, which is
    the same sum centred on frame ``h`` (``n - 1 - h``). Equal to librosa's to float rounding.

    Parameters
    ----------
    x : np.ndarray
        Shape ``(d, n)`` with ``n >= width``; ``width`` odd, >= 3.
    """
    h = width // 2
    kernel = np.arange(-h, h + 1, dtype=np.float64)
    kernel /= np.sum(kernel**2)
    inner = np.lib.stride_tricks.sliding_window_view(x, width, axis=-1) @ kernel.astype(x.dtype)
    return np.concatenate(
        [np.repeat(inner[:, :1], h, axis=1), inner, np.repeat(inner[:, -1:], h, axis=1)], axis=1
    )


def mfcc_features(
    power: np.ndarray,
    sr: int,
    n_fft: int,
    frames: np.ndarray,
    n_mfcc: int = 20,
    n_mels: int = 40,
    delta_width: int = 9,
) -> dict[str, float]:
    """Mean and standard deviation of MFCCs and their deltas over selected frames.

    Parameters
    ----------
    power : np.ndarray
        Shape ``(n_fft // 2 + 1, n_frames)`` power STFT of the whole window (deltas need context).
    frames : np.ndarray
        Indices of the frames to pool (speech frames), shape ``(k,)``.

    Returns
    -------
    dict
        :func:`mfcc_columns`; NaN when ``k == 0``.
    """
    cols = mfcc_columns(n_mfcc)
    if frames.size == 0:
        return dict.fromkeys(cols, float("nan"))
    mel = mel_filterbank(sr, n_fft, n_mels, 0.0, sr / 2.0) @ power
    # dB with a fixed floor (not relative to the window's max) so values compare across windows
    log_mel = 10.0 * np.log10(np.maximum(mel, 1e-10))
    mfcc = scipy.fft.dct(log_mel, axis=0, type=2, norm="ortho")[:n_mfcc]
    n_frames = mfcc.shape[1]
    width = min(delta_width, n_frames if n_frames % 2 else n_frames - 1)
    if width >= 3:
        delta = _delta(mfcc, width)
    else:
        delta = np.zeros_like(mfcc)
    m, d = mfcc[:, frames], delta[:, frames]
    values = np.concatenate([m.mean(axis=1), m.std(axis=1), d.mean(axis=1), d.std(axis=1)])
    return dict(zip(cols, map(float, values), strict=True))
