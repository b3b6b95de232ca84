"""Per-window and per-file audio analysis: composes every stage and feature family.

Per window (``segment.window_s`` of the source, bounded memory for any file length)::

    decode -> resample (16 kHz) -> DC removal -> denoise -> normalise -> speech activity -> features on speech
       \\-> mel128 on the raw decoded window (original recipe, 22.05 kHz, no processing)

File-level values pool the windows: speech-duration-weighted means (exact for one window),
``speech_s`` summed, ``speech_ratio`` and ``clipping_share`` by duration, ``mel128`` frame-weighted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from pydantic import Field

from grv_batch._params import Params
from grv_batch.features.formants import FORMANT_COLUMNS, formant_features, formant_tracks
from grv_batch.features.mel128 import mel128
from grv_batch.features.mfcc import mfcc_columns, mfcc_features
from grv_batch.features.params import FeatureParams
from grv_batch.features.pitch import PITCH_COLUMNS, pitch_features, yin
from grv_batch.features.quality import QUALITY_COLUMNS, quality_features
from grv_batch.features.spectral import (
    SPECTRAL_COLUMNS,
    mel_filterbank,
    power_spectrogram,
    spectral_features,
)
from grv_batch.stages import segment as _segment
from grv_batch.stages.decode import AudioInfo, DecodeParams, Source, iter_blocks, probe
from grv_batch.stages.denoise import DenoiseParams, denoise
from grv_batch.stages.normalize import NormalizeParams, normalize
from grv_batch.stages.resample import ResampleParams, resample
from grv_batch.stages.segment import SegmentParams
from grv_batch.stages.speech import SpeechActivity, SpeechParams, speech_activity

__all__ = [
    "FEATURE_COLUMNS",
    "AnalysisParams",
    "FileAnalysis",
    "WindowAnalysis",
    "analyze_file",
    "analyze_window",
    "feature_columns",
    "iter_windows",
    "pool_windows",
]

LOGMEL_BANDS = 64
LOGMEL_FMIN, LOGMEL_FMAX = 50.0, 8000.0


def feature_columns(n_mfcc: int = 20) -> tuple[str, ...]:
    """The scalar feature columns, in their stable order, for ``n_mfcc`` coefficients."""
    return QUALITY_COLUMNS + PITCH_COLUMNS + FORMANT_COLUMNS + SPECTRAL_COLUMNS + mfcc_columns(n_mfcc)


#: Scalar columns of the ``features`` table with default parameters (see docs/features.md).
FEATURE_COLUMNS: tuple[str, ...] = feature_columns(20)


class AnalysisParams(Params):
    """Every audio stage's parameters, composed (the ``[audio]`` part of a job spec)."""

    decode: DecodeParams = Field(default_factory=DecodeParams)
    resample: ResampleParams = Field(default_factory=ResampleParams)
    denoise: DenoiseParams = Field(default_factory=DenoiseParams)
    normalize: NormalizeParams = Field(default_factory=NormalizeParams)
    speech: SpeechParams = Field(default_factory=SpeechParams)
    segment: SegmentParams = Field(default_factory=SegmentParams)
    features: FeatureParams = Field(default_factory=FeatureParams)


@dataclass
class WindowAnalysis:
    """Analysis of one window of a source.

    Attributes
    ----------
    start_s, duration_s : float
        Position and length of the window in the source, seconds.
    speech_s : float
        Seconds of detected speech.
    features : dict[str, float]
        Scalar features, keys :func:`feature_columns` (NaN where not measurable).
    mel128 : np.ndarray
        Shape ``(128,)`` float32 mean mel power (original recipe).
    mel128_frames : int
        Number of frames behind ``mel128`` (its weight when pooling).
    logmel : np.ndarray or None
        Shape ``(64, n_frames)`` float32 log-mel of the processed 16 kHz audio, all frames.
    speech_mask : np.ndarray or None
        Shape ``(n_frames,)`` bool: the ``logmel`` frames whose features describe speech (none
        when the window has too little speech or only steady noise).
    """

    start_s: float
    duration_s: float
    speech_s: float
    features: dict[str, float]
    mel128: np.ndarray
    logmel: np.ndarray | None
    mel128_frames: int = 0
    speech_mask: np.ndarray | None = None


@dataclass
class FileAnalysis:
    """Analysis of a whole source: header info, windows, and the pooled ``features`` row."""

    info: AudioInfo
    windows: list[WindowAnalysis]
    features: dict[str, float | list[float]]


def _mask_on_grid(activity: SpeechActivity, hop_s: float, n_frames: int) -> np.ndarray:
    """Speech mask resampled to another frame grid (identity when the hops match)."""
    mask = activity.mask
    if abs(activity.hop_s - hop_s) < 1e-12 and mask.size == n_frames:
        return mask
    idx = np.clip(np.round(np.arange(n_frames) * hop_s / activity.hop_s).astype(int), 0, mask.size - 1)
    return mask[idx]


def _is_steady_noise(activity: SpeechActivity, f0: np.ndarray, params: SpeechParams) -> bool:
    """Speech over (nearly) the whole window at an even level yet (nearly) never voiced: see
    ``SpeechParams``."""
    if (f0.size == 0 or activity.speech_ratio < params.noise_min_speech_ratio
            or not activity.level_range_db < params.noise_max_level_range_db):
        return False
    return float(np.isfinite(f0).mean()) < params.noise_max_voiced_share


def analyze_window(
    audio: np.ndarray, sr: int, params: AnalysisParams | None = None, start_s: float = 0.0
) -> WindowAnalysis:
    """Run every stage and feature family on one window of decoded audio.

    Parameters
    ----------
    audio : np.ndarray
        Shape ``(n,)`` raw mono audio at its native rate (as yielded by ``iter_blocks``).
    sr : int
        Native sample rate in Hz.
    params : AnalysisParams, optional
    start_s : float
        Start of the window in the source (only recorded).

    Returns
    -------
    WindowAnalysis
    """
    params = params or AnalysisParams()
    fp = params.features
    raw = np.asarray(audio, dtype=np.float32)
    if raw.ndim != 1 or raw.size == 0:
        raise ValueError(f"audio must be a non-empty mono array, shape (n,), got {raw.shape}")
    y_rs, sr16 = resample(raw, sr, params.resample)
    if params.normalize.remove_dc and y_rs.size:
        # before denoising and the SNR, not only in the normalise stage: a DC offset fills the
        # quiet blocks that denoising learns the noise from, which then finds none and does nothing
        y_rs = y_rs - np.float32(y_rs.mean(dtype=np.float64))
    y = denoise(y_rs, sr16, params.denoise)
    y = normalize(y, sr16, params.normalize)
    activity = speech_activity(y, sr16, params.speech, reference=y_rs)

    power = power_spectrogram(y, fp.n_fft, fp.hop_length)
    n_frames = power.shape[1]
    hop_s = fp.hop_length / sr16
    speech = np.flatnonzero(_mask_on_grid(activity, hop_s, n_frames))
    if activity.speech_s < params.speech.min_speech_s:
        speech = speech[:0]  # too little speech to describe: speech features are NaN

    pitch_frames = speech[:: fp.pitch_step]
    f0, _ = yin(
        y, sr16, fp.hop_length, pitch_frames, fp.f0_min_hz, fp.f0_max_hz, fp.voicing_threshold
    )
    if _is_steady_noise(activity, f0, params.speech):
        activity = activity.without_speech()
        speech, pitch_frames, f0 = speech[:0], pitch_frames[:0], f0[:0]

    sel = power[:, speech]
    feats: dict[str, float] = quality_features(raw, y_rs, sr16, activity,
                                               sel.mean(axis=1) if speech.size else None)
    feats.update(spectral_features(sel, sr16, fp.n_fft))
    feats.update(pitch_features(f0, pitch_frames.size, fp.min_voiced_frames))
    voiced = pitch_frames[np.isfinite(f0)]
    if voiced.size < fp.min_voiced_frames:
        voiced = voiced[:0]
    if voiced.size > fp.max_formant_frames:
        voiced = voiced[np.linspace(0, voiced.size - 1, fp.max_formant_frames).astype(int)]
    freqs, bws = formant_tracks(
        y, sr16, fp.hop_length, voiced, fp.formant_max_hz, fp.lpc_order,
        fp.formant_frame_ms, fp.max_formant_bw_hz,
    )  # fmt: skip
    feats.update(formant_features(freqs, bws))
    feats.update(
        mfcc_features(power, sr16, fp.n_fft, speech, fp.n_mfcc, fp.n_mfcc_mels, fp.delta_width)
    )

    logmel = speech_mask = None
    if fp.logmel:
        fb = mel_filterbank(sr16, fp.n_fft, LOGMEL_BANDS, LOGMEL_FMIN, LOGMEL_FMAX)
        logmel = np.log(fb @ power + 1e-6).astype(np.float32)
        speech_mask = np.zeros(n_frames, bool)
        speech_mask[speech] = True
    if fp.mel128:
        m128, m128_frames = mel128(raw, sr)
    else:
        m128, m128_frames = np.full(128, np.nan, np.float32), 0
    return WindowAnalysis(
        start_s=float(start_s),
        duration_s=raw.size / sr,
        speech_s=float(activity.speech_s),
        features={c: float(feats[c]) for c in feature_columns(fp.n_mfcc)},
        mel128=m128,
        logmel=logmel,
        mel128_frames=m128_frames,
        speech_mask=speech_mask,
    )


def iter_windows(source: Source, params: AnalysisParams | None = None, *,
                 info: AudioInfo | None = None) -> Iterator[WindowAnalysis]:
    """Analyse ``source`` window by window; memory is bounded by one window whatever the length.

    Parameters
    ----------
    source : str, os.PathLike or binary file object
    params : AnalysisParams, optional
    info : AudioInfo, optional
        The source's :func:`probe` result when the caller has it (saves opening the file again).

    Yields
    ------
    WindowAnalysis

    Raises
    ------
    DecodeError
        Unusable audio (possibly after some windows were yielded, e.g. truncation).
    """
    params = params or AnalysisParams()
    sr = (info or probe(source)).sample_rate
    blocks = iter_blocks(source, params.decode)
    for start_s, window in _segment.iter_windows(blocks, sr, params.segment):
        yield analyze_window(window, sr, params, start_s)


def pool_windows(windows: list[WindowAnalysis]) -> dict[str, float | list[float]]:
    """The file's ``features`` row from its windows.

    Speech-duration-weighted mean of each column over windows where it is finite (exact for one
    window); ``speech_s`` is summed; ``speech_ratio`` and ``clipping_share`` are duration-weighted;
    ``mel128`` (list of 128 floats) is the frame-weighted mean.
    """
    if not windows:
        raise ValueError("no windows to pool")
    cols = list(windows[0].features)
    table = np.array([[w.features[c] for c in cols] for w in windows], dtype=np.float64)
    speech = np.array([w.speech_s for w in windows], dtype=np.float64)
    dur = np.array([w.duration_s for w in windows], dtype=np.float64)
    # every column at once: weights per column (speech seconds, or duration for two of them),
    # zero where the value is not finite; the same sums np.average makes per column
    by_duration = np.array([c in ("speech_ratio", "clipping_share") for c in cols])
    weights = np.where(by_duration[None, :], dur[:, None], speech[:, None])
    ok = np.isfinite(table) & (weights > 0)
    w = np.where(ok, weights, 0.0)
    num = np.multiply(np.where(ok, table, 0.0), w).sum(axis=0)
    den = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = np.where(ok.any(axis=0), num / np.where(den > 0, den, 1.0), np.nan)
    out: dict[str, float | list[float]] = dict(zip(cols, pooled.tolist(), strict=True))
    if "speech_s" in out:
        out["speech_s"] = float(speech.sum())
    frames = np.array([w.mel128_frames for w in windows], dtype=np.float64)
    mels = np.stack([w.mel128 for w in windows]).astype(np.float64)
    if frames.sum() > 0:
        out["mel128"] = [float(v) for v in (frames @ mels) / frames.sum()]
    else:
        out["mel128"] = [float("nan")] * 128
    return out


def analyze_file(source: Source, params: AnalysisParams | None = None) -> FileAnalysis:
    """Analyse a whole source: :func:`iter_windows` plus pooling.

    Returns
    -------
    FileAnalysis
        ``info.frames`` / ``info.duration_s`` are the decoded amounts (MP3 headers can be estimates).
    """
    params = params or AnalysisParams()
    info = probe(source)
    windows = list(iter_windows(source, params, info=info))
    duration = float(sum(w.duration_s for w in windows))
    info = dataclasses.replace(
        info, frames=int(round(duration * info.sample_rate)), duration_s=duration
    )
    return FileAnalysis(info=info, windows=windows, features=pool_windows(windows))
