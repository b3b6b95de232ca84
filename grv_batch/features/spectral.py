"""Shared STFT and spectral-shape features (centroid, bandwidth, roll-off, flatness)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import numpy as np

__all__ = [
    "SPECTRAL_COLUMNS",
    "mean_power_spectrum",
    "mel_filterbank",
    "power_spectrogram",
    "spectral_features",
]

SPECTRAL_COLUMNS: tuple[str, ...] = (
    "spectral_centroid_hz",
    "spectral_bandwidth_hz",
    "spectral_rolloff_hz",
    "spectral_flatness",
)


@lru_cache(maxsize=8)
def _hann_periodic(n_fft: int) -> np.ndarray:
    """librosa's default STFT window (``scipy.signal.get_window("hann", n_fft)``), float32."""
    import scipy.signal

    window = scipy.signal.get_window("hann", n_fft).astype(np.float32)
    window.setflags(write=False)
    return window


#: frames per FFT call: frames, spectra and powers then stay in the CPU cache, which a whole
#: window's do not (about 2x faster for the same transforms)
_STFT_CHUNK = 64


def _power_chunks(y: np.ndarray, n_fft: int, hop_length: int) -> Iterator[tuple[int, np.ndarray]]:
    """Power spectra of librosa's centred, zero-padded Hann frames, ``_STFT_CHUNK`` at a time.

    Yields ``(first_frame, power)`` with ``power`` of shape ``(k, n_fft // 2 + 1)`` float32; there are
    ``1 + len(y) // hop_length`` frames in all.
    """
    import scipy.fft

    y = np.asarray(y, dtype=np.float32)
    n_frames = 1 + y.size // hop_length
    half = n_fft // 2
    padded = np.zeros(y.size + 2 * half + n_fft, np.float32)  # room for the last frame's tail
    padded[half : half + y.size] = y
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[: n_frames * hop_length : hop_length]
    window = _hann_periodic(n_fft)
    buf = np.empty((min(_STFT_CHUNK, n_frames), n_fft), np.float32)
    for i in range(0, n_frames, _STFT_CHUNK):
        windowed = np.multiply(frames[i : i + _STFT_CHUNK], window, out=buf[: min(_STFT_CHUNK, n_frames - i)])
        spec = scipy.fft.rfft(windowed, axis=-1, overwrite_x=True)
        power = spec.real**2
        power += spec.imag**2
        yield i, power


def power_spectrogram(y: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """``np.abs(librosa.stft(y, n_fft, hop_length, center=True, pad_mode="constant")) ** 2``.

    The same frames, window and transform, without librosa's per-call overheads and in float32
    throughout (librosa multiplies by a float64 window, then stores complex64): the values agree
    to float32 rounding (~1e-6 relative), at about a third of the cost.

    Parameters
    ----------
    y : np.ndarray
        Shape ``(n,)``; any length (shorter than ``n_fft`` is zero-padded by the centring).

    Returns
    -------
    np.ndarray
        Shape ``(n_fft // 2 + 1, 1 + n // hop_length)`` float32, C-contiguous.
    """
    out = np.empty((n_fft // 2 + 1, 1 + np.size(y) // hop_length), np.float32)
    for i, power in _power_chunks(y, n_fft, hop_length):
        out[:, i : i + power.shape[0]] = power.T
    return out


def mean_power_spectrum(y: np.ndarray, n_fft: int, hop_length: int) -> tuple[np.ndarray, int]:
    """``power_spectrogram(y, n_fft, hop_length).mean(axis=1, dtype=np.float64)`` and its number of
    frames, without holding the spectrogram.

    Returns
    -------
    mean : np.ndarray
        Shape ``(n_fft // 2 + 1,)`` float64.
    n_frames : int
    """
    total = np.zeros(n_fft // 2 + 1)
    n_frames = 0
    for _, power in _power_chunks(y, n_fft, hop_length):
        total += power.sum(axis=0, dtype=np.float64)
        n_frames += power.shape[0]
    return total / n_frames, n_frames


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, ``htk=False``): linear to 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / (200.0 / 3)
    log_region = hz >= 1000.0
    return np.where(log_region, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), mel)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), mel * (200.0 / 3))


@lru_cache(maxsize=16)
def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Slaney-normalised triangular mel filterbank, shape ``(n_mels, n_fft // 2 + 1)`` float32.

    The same matrix as ``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin,
    fmax=fmax)`` (its defaults: Slaney scale and area normalisation), computed here because importing
    ``librosa.filters`` compiles numba code, close to a second in every worker process.
    """
    fmax = min(fmax, sr / 2)
    fft_hz = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    edges_hz = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges_hz)
    ramps = np.subtract.outer(edges_hz, fft_hz)
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    # float32 before the area normalisation, in librosa's order of operations: bit-identical
    fb = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    fb *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]  # equal area per band
    fb.setflags(write=False)
    return fb


def spectral_features(power: np.ndarray, sr: int, n_fft: int) -> dict[str, float]:
    """Mean spectral shape over the given frames.

    Parameters
    ----------
    power : np.ndarray
        Shape ``(n_fft // 2 + 1, k)`` power spectra of the frames to describe (speech frames).

    Returns
    -------
    dict
        :data:`SPECTRAL_COLUMNS`; NaN when ``k == 0``. Definitions follow librosa: centroid and
        bandwidth are magnitude-weighted, roll-off at 85 % of magnitude, flatness on power.
    """
    if power.shape[1] == 0:
        return dict.fromkeys(SPECTRAL_COLUMNS, float("nan"))
    # float32 and matrix-vector products: this runs on every speech frame of every window
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr).astype(np.float32)
    mag = np.sqrt(power, dtype=np.float32)
    total = np.maximum(mag.sum(axis=0, dtype=np.float64), 1e-12)
    centroid = (freqs @ mag) / total
    # sum (f - c)^2 m = sum f^2 m - 2 c sum f m + c^2 sum m
    second = (freqs.astype(np.float64) ** 2).astype(np.float32) @ mag / total
    bandwidth = np.sqrt(np.maximum(second - centroid**2, 0.0))
    cum = np.cumsum(mag, axis=0)
    rolloff = freqs[np.argmax(cum >= 0.85 * cum[-1], axis=0)]
    p = np.maximum(power, np.float32(1e-10))
    flatness = np.exp(np.mean(np.log(p), axis=0)) / np.mean(p, axis=0)
    return {
        "spectral_centroid_hz": float(centroid.mean()),
        "spectral_bandwidth_hz": float(bandwidth.mean()),
        "spectral_rolloff_hz": float(rolloff.mean()),
        "spectral_flatness": float(flatness.mean()),
    }
