"""DC removal and peak or loudness (RMS) normalisation."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from grv_batch._params import Params

__all__ = ["NormalizeParams", "normalize"]

# Below this level (about -140 dBFS) a signal is treated as silence and left unscaled.
_EPS = 1e-7


class NormalizeParams(Params):
    """Parameters of the normalise stage.

    Attributes
    ----------
    remove_dc : bool
        Subtract the mean first.
    method : {"peak", "loudness", "none"}
        ``peak`` scales the absolute peak to ``peak_dbfs``; ``loudness`` scales the RMS of the
        non-silent 100 ms blocks to ``loudness_dbfs`` (never pushing the peak above 0 dBFS).
    peak_dbfs, loudness_dbfs : float
        Targets in dB relative to full scale (<= 0).
    """

    remove_dc: bool = True
    method: Literal["peak", "loudness", "none"] = "peak"
    peak_dbfs: float = Field(-1.0, le=0.0, ge=-60.0)
    loudness_dbfs: float = Field(-23.0, le=0.0, ge=-70.0)


def _gated_rms(audio: np.ndarray, sr: int) -> float:
    """RMS over 100 ms blocks above -70 dBFS (a crude EBU-style gate so pauses do not count)."""
    n = max(int(0.1 * sr), 1)
    m = audio.size // n
    if m == 0:
        return float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
    ms = np.mean(audio[: m * n].astype(np.float64).reshape(m, n) ** 2, axis=1)
    gated = ms[ms > 1e-7]
    return float(np.sqrt(gated.mean())) if gated.size else 0.0


def normalize(audio: np.ndarray, sr: int, params: NormalizeParams | None = None) -> np.ndarray:
    """Remove DC and normalise the level.

    Parameters
    ----------
    audio : np.ndarray
        Shape ``(n,)``, mono.
    sr : int
        Sample rate in Hz.
    params : NormalizeParams, optional

    Returns
    -------
    np.ndarray
        Shape ``(n,)`` float32, a new array. Silent input stays silent.
    """
    params = params or NormalizeParams()
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono, shape (n,), got {audio.shape}")
    out = audio.astype(np.float32, copy=True)
    if out.size == 0:
        return out
    if params.remove_dc:
        out -= np.float32(out.mean(dtype=np.float64))
    peak = float(np.max(np.abs(out)))
    if params.method == "none" or peak < _EPS:
        return out
    if params.method == "peak":
        gain = 10 ** (params.peak_dbfs / 20) / peak
    else:
        rms = _gated_rms(out, sr)
        if rms < _EPS:
            return out
        # Cap the gain so loudness normalisation never clips.
        gain = min(10 ** (params.loudness_dbfs / 20) / rms, 1.0 / peak)
    out *= np.float32(gain)
    return out
