"""The original project's feature: 128-band mean mel power, exactly its recipe.

Recipe (``librosa.load`` defaults + ``melspectrogram`` defaults): decode, mix to mono, resample to
22,050 Hz with ``soxr_hq``, no denoise or normalisation, power mel spectrogram with ``n_fft=2048``,
``hop_length=512``, 128 mels, mean over frames. Each window returns its mean *and* frame count so the
file-level vector is the exact frame-weighted mean (identical to the recipe for one-window files).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import soxr

from grv_batch.features.spectral import mean_power_spectrum, mel_filterbank

__all__ = ["MEL128_SR", "mel128"]

MEL128_SR = 22050


@lru_cache(maxsize=1)
def _mel_basis() -> np.ndarray:
    """melspectrogram's default filterbank at 22,050 Hz, shape ``(128, 1025)``."""
    return mel_filterbank(MEL128_SR, 2048, 128, 0.0, MEL128_SR / 2).astype(np.float64)


def mel128(audio: np.ndarray, sr: int) -> tuple[np.ndarray, int]:
    """Mean mel power of the raw (decoded, mono) audio by the original recipe.

    Parameters
    ----------
    audio : np.ndarray
        Shape ``(n,)`` raw mono audio at the native rate ``sr`` (not denoised or normalised).
    sr : int
        Native sample rate in Hz.

    Returns
    -------
    mean : np.ndarray
        Shape ``(128,)`` float32 mean mel power over frames.
    n_frames : int
        Number of STFT frames averaged (``1 + n22 // 512``).
    """
    y = np.asarray(audio, dtype=np.float32)
    if sr != MEL128_SR:
        # what librosa.load(path) does (librosa.resample, res_type="soxr_hq", fix=True), called
        # directly: the same samples, without importing librosa.core.audio (seconds per worker)
        n_out = int(np.ceil(y.size * MEL128_SR / sr))
        y = soxr.resample(y, sr, MEL128_SR, quality="soxr_hq")
        y = np.pad(y, (0, max(n_out - y.size, 0)))[:n_out].astype(np.float32, copy=False)
    # melspectrogram's own STFT settings (center=True, constant padding, Hann), see power_spectrogram
    power, n_frames = mean_power_spectrum(y, 2048, 512)
    # mean_t(M @ S) == M @ mean_t(S): one matrix-vector product instead of a mel matrix per frame
    # (same value as melspectrogram(...).mean(axis=1) up to float rounding, ~1e-6 relative)
    mean = _mel_basis() @ power
    return mean.astype(np.float32), n_frames
