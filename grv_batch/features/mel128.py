"""The original project's feature: 128-band mean mel power, exactly its recipe.

Recipe (``librosa.load`` defaults + ``melspectrogram`` defaults): decode, mix to mono, resample to
22,050 Hz with ``soxr_hq``, no denoise or normalisation, power mel spectrogram with ``n_fft=2048``,
``hop_length=512``, 128 mels, mean over frames. Each window returns its mean *and* frame count so the
file-level vector is the exact frame-weighted mean (identical to the recipe for one-window files).
"""

from __future__ import annotations

import warnings

import librosa
import numpy as np

__all__ = ["MEL128_SR", "mel128"]

MEL128_SR = 22050


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
        # the exact call librosa.load(path) makes (res_type="soxr_hq", fix=True)
        y = librosa.resample(y, orig_sr=sr, target_sr=MEL128_SR, res_type="soxr_hq")
    with warnings.catch_warnings():
        # librosa warns when a clip is shorter than n_fft; the recipe pads it, which is what we want
        warnings.filterwarnings("ignore", message="n_fft=.* is too large", category=UserWarning)
        spec = librosa.feature.melspectrogram(y=y, sr=MEL128_SR, n_fft=2048, hop_length=512)
    return spec.mean(axis=1).astype(np.float32), int(spec.shape[1])
