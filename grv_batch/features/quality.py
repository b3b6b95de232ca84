"""Recording-quality measures: SNR estimate, clipping, amount of speech."""

from __future__ import annotations

import numpy as np

from grv_batch.stages.speech import SpeechActivity, frame_energy_db

__all__ = ["QUALITY_COLUMNS", "clipping_share", "quality_features", "snr_db"]

QUALITY_COLUMNS: tuple[str, ...] = ("speech_s", "speech_ratio", "snr_db", "clipping_share")

_SNR_MAX_DB = 100.0  # noise-free (synthetic) audio would otherwise give +inf
_MIN_NOISE_FRAMES = 10


def clipping_share(raw: np.ndarray, level: float = 0.999) -> float:
    """Share of raw samples at full scale (``|x| >= level``), shape ``(n,)`` input, in [0, 1]."""
    return float(np.count_nonzero(np.abs(raw) >= level) / raw.size) if raw.size else float("nan")


def snr_db(audio: np.ndarray, sr: int, activity: SpeechActivity, frame_s: float = 0.025) -> float:
    """Speech-to-noise energy ratio in dB, from frame energies split by the speech mask.

    Parameters
    ----------
    audio : np.ndarray
        Shape ``(n,)`` audio *before* denoising (denoising would hide the noise being measured).
    activity : SpeechActivity
        Mask on a grid with hop ``activity.hop_s`` over the same audio.

    Returns
    -------
    float
        ``10 log10(E_speech / E_noise)`` clipped to at most 100 dB. With fewer than 10 non-speech
        frames the noise energy is the 10th percentile of all frames. NaN without speech.
    """
    mask = activity.mask
    if not mask.any():
        return float("nan")
    hop = max(int(round(activity.hop_s * sr)), 1)
    energy = 10 ** (frame_energy_db(audio, max(int(round(frame_s * sr)), 1), hop) / 10)
    energy = energy[: mask.size]
    m = mask[: energy.size]
    speech = energy[m].mean()
    noise_frames = energy[~m]
    noise = noise_frames.mean() if noise_frames.size >= _MIN_NOISE_FRAMES else np.percentile(energy, 10)
    if noise <= 0:
        return _SNR_MAX_DB
    return float(min(10 * np.log10(max(speech, 1e-30) / noise), _SNR_MAX_DB))


def quality_features(
    raw: np.ndarray, audio: np.ndarray, sr: int, activity: SpeechActivity
) -> dict[str, float]:
    """:data:`QUALITY_COLUMNS` for one window.

    Parameters
    ----------
    raw : np.ndarray
        Shape ``(n_raw,)`` decoded samples at the native rate (clipping is judged there).
    audio : np.ndarray
        Shape ``(n,)`` resampled, not yet denoised audio at ``sr`` (for the SNR).
    activity : SpeechActivity
        Speech activity of the processed audio.
    """
    return {
        "speech_s": float(activity.speech_s),
        "speech_ratio": float(activity.speech_ratio),
        "snr_db": snr_db(audio, sr, activity),
        "clipping_share": clipping_share(raw),
    }
