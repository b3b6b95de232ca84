"""Recording-quality measures: SNR estimate, clipping, amount of speech."""

from __future__ import annotations

import numpy as np

from grv_batch.stages.speech import SpeechActivity, frame_levels

__all__ = ["QUALITY_COLUMNS", "bandwidth_hz", "clipping_share", "quality_features", "snr_db"]

QUALITY_COLUMNS: tuple[str, ...] = ("speech_s", "speech_ratio", "snr_db", "clipping_share",
                                    "bandwidth_hz")

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
        ``10 log10(E_speech / E_noise)`` clipped to at most 100 dB. The noise is the mean of the
        non-speech frames that are not digital silence (``stages.speech.live_frames``); when the pauses
        are digital silence (fewer than 10 such frames, 10 non-speech frames or more), the cap;
        with fewer than 10 non-speech frames, the 10th percentile of all frames. NaN without
        speech.
    """
    mask = activity.mask
    if not mask.any():
        return float("nan")
    hop = max(int(round(activity.hop_s * sr)), 1)
    frame = max(int(round(frame_s * sr)), 1)
    # frames that straddle the edge of digital silence hold the start or end of speech
    energy_db, live = frame_levels(audio, frame, hop, guard=-(-frame // hop))
    energy, live = 10 ** (energy_db[: mask.size] / 10), live[: mask.size]
    m = mask[: energy.size]
    speech = energy[m].mean()
    # digital silence (padding, silence suppression) is not the noise being measured
    noise_frames = energy[~m & live]
    if noise_frames.size < _MIN_NOISE_FRAMES <= np.count_nonzero(~m):
        return _SNR_MAX_DB  # the pauses are digital silence: no noise to measure
    noise = (noise_frames.mean() if noise_frames.size >= _MIN_NOISE_FRAMES
             else np.percentile(energy, 10))
    if noise <= 0:
        return _SNR_MAX_DB
    return float(min(10 * np.log10(max(speech, 1e-30) / noise), _SNR_MAX_DB))


def bandwidth_hz(
    speech_spectrum: np.ndarray, sr: int, *, drop_db: float = 40.0,
    ref_band_hz: tuple[float, float] = (300.0, 3000.0), smooth_hz: float = 250.0,
) -> float:
    """Effective bandwidth of the recording: the highest frequency at which the long-term speech
    spectrum is within ``drop_db`` of its median level in the telephone band.

    Narrowband (telephone) audio stays narrowband when stored at 16 kHz or more, so the sample rate
    cannot tell; its spectrum can: above the channel's cut-off (3.4-4 kHz for telephone codecs)
    it falls 45 dB or more below the speech band, while wideband speech stays within 30 dB up
    to 7-8 kHz (measured on the clips of ``../shared/data`` and their telephone variants,
    ``docs/features.md``).

    Parameters
    ----------
    speech_spectrum : np.ndarray
        Shape ``(n_fft // 2 + 1,)``, mean power over speech frames of a one-sided spectrogram
        at ``sr``.
    sr : int
        Sample rate in Hz; the result is at most ``sr / 2``.

    Returns
    -------
    float
        Hz, NaN for an empty or all-zero spectrum.
    """
    spec = np.asarray(speech_spectrum, dtype=np.float64).reshape(-1)
    if spec.size < 2 or not np.isfinite(spec).all() or spec.max() <= 0:
        return float("nan")
    freqs = np.linspace(0.0, sr / 2, spec.size)
    half = int(round(smooth_hz / freqs[1] / 2))
    # local mean power (edge-padded moving average): the gaps between the harmonics of a voice do
    # not count as missing band, as they would if dB levels were averaged
    smooth = np.convolve(np.pad(spec, half, mode="edge"), np.full(2 * half + 1, 1 / (2 * half + 1)),
                         mode="valid")
    level = 10 * np.log10(np.maximum(smooth, smooth.max() * 1e-15))
    ref_band = (freqs >= ref_band_hz[0]) & (freqs <= ref_band_hz[1])
    if not ref_band.any():
        return float("nan")
    within = np.flatnonzero((level >= np.median(level[ref_band]) - drop_db) & (freqs >= ref_band_hz[0]))
    return float(freqs[within[-1]]) if within.size else float("nan")


def quality_features(
    raw: np.ndarray, audio: np.ndarray, sr: int, activity: SpeechActivity,
    speech_spectrum: np.ndarray | None = None,
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
    speech_spectrum : np.ndarray, optional
        Shape ``(n_fft // 2 + 1,)``, mean power over the speech frames of the processed audio's
        spectrogram at ``sr`` (for :func:`bandwidth_hz`); None gives NaN.
    """
    return {
        "speech_s": float(activity.speech_s),
        "speech_ratio": float(activity.speech_ratio),
        "snr_db": snr_db(audio, sr, activity),
        "clipping_share": clipping_share(raw),
        "bandwidth_hz": bandwidth_hz(speech_spectrum, sr) if speech_spectrum is not None else float("nan"),
    }
