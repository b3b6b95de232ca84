"""Energy-based speech activity with an adaptive noise floor.

Frames are centred on multiples of the hop (like ``librosa.stft(center=True)``), so frame ``i`` of
the mask lines up with frame ``i`` of every STFT with the same hop: ``n_frames = 1 + n // hop``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pydantic import Field, model_validator

from grv_batch._params import Params

__all__ = [
    "DIGITAL_SILENCE_DB", "SpeechActivity", "SpeechParams", "frame_levels", "live_frames",
    "speech_activity",
]

_FLOOR_DB = -120.0  # energy of digital silence is clamped here instead of -inf

#: Frames (or blocks) whose variance is at or below this level, in dB re full scale, are digital
#: silence: constant to within float rounding (zero padding, a codec's silence suppression, the
#: constant that DC removal leaves of zeros). Judged on the audio before denoising and
#: normalisation, where even a quiet 24-bit recording's background is far above it (a real
#: room at +-1 LSB of 16 bits is about -95 dB and is noise, not silence). Digital silence is not
#: the recording's background, so noise-floor estimates leave it out: padding a file with zeros
#: must not change what counts as its noise.
DIGITAL_SILENCE_DB = -120.0
# with fewer live frames than this (input silent throughout) the estimates use every frame
_MIN_LIVE_FRAMES = 10


class SpeechParams(Params):
    """Parameters of speech activity detection.

    Attributes
    ----------
    frame_ms, hop_ms : float
        Analysis frame length and hop in milliseconds.
    noise_percentile : float
        Percentile of frame energies (dB) taken as the noise floor.
    margin_db : float
        A frame is speech when its energy exceeds the noise floor by this much ...
    abs_floor_dbfs : float
        ... and exceeds this absolute level (so digital silence and hiss are never speech).
    fill_gap_s : float
        Non-speech gaps shorter than this between speech frames are filled (hangover).
    min_run_s : float
        Speech runs shorter than this are dropped (clicks, pops).
    min_speech_s : float
        Windows with less detected speech than this are treated as having none: their
        speech-based features are NaN.
    noise_min_speech_ratio, noise_max_level_range_db, noise_max_voiced_share : float
        A window detected as speech over at least ``noise_min_speech_ratio`` of its frames, whose
        frame energies span less than ``noise_max_level_range_db`` (no pauses) and of which less
        than ``noise_max_voiced_share`` are voiced, is steady noise (room tone, hiss, hum) and is
        treated as having no speech. Energy alone cannot tell steady noise from a steady voice
        once the window is normalised; speech is never that even and that unvoiced. Applied by
        :func:`grv_batch.features.analyze_window`, which has the voicing; a voiced share of 0
        turns it off.
    """

    frame_ms: float = Field(25.0, gt=1.0, le=200.0)
    hop_ms: float = Field(10.0, gt=1.0, le=100.0)
    noise_percentile: float = Field(10.0, ge=0.0, le=50.0)
    margin_db: float = Field(6.0, ge=0.0, le=60.0)
    abs_floor_dbfs: float = Field(-55.0, le=0.0, ge=-120.0)
    fill_gap_s: float = Field(0.2, ge=0.0, le=5.0)
    min_run_s: float = Field(0.1, ge=0.0, le=5.0)
    min_speech_s: float = Field(0.5, ge=0.0)
    noise_min_speech_ratio: float = Field(0.9, ge=0.0, le=1.0)
    noise_max_level_range_db: float = Field(15.0, ge=0.0)
    noise_max_voiced_share: float = Field(0.01, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _hop_le_frame(self) -> SpeechParams:
        if self.hop_ms > self.frame_ms:
            raise ValueError("hop_ms must not exceed frame_ms")
        return self


@dataclass(frozen=True)
class SpeechActivity:
    """Result of :func:`speech_activity`.

    Attributes
    ----------
    mask : np.ndarray
        Shape ``(n_frames,)`` bool, True for speech; ``n_frames = 1 + n // hop``.
    hop_s : float
        Frame hop in seconds.
    speech_s : float
        Seconds of speech (``mask.sum() * hop_s``, at most the duration of the audio).
    speech_ratio : float
        Share of frames that are speech, in [0, 1].
    level_range_db : float
        99th minus 10th percentile of the frame energies: a few dB for steady noise, tens of dB
        for speech with its pauses.
    """

    mask: np.ndarray
    hop_s: float
    speech_s: float
    speech_ratio: float
    level_range_db: float = float("nan")

    def without_speech(self) -> SpeechActivity:
        """The same frames, none of them speech."""
        return SpeechActivity(mask=np.zeros_like(self.mask), hop_s=self.hop_s, speech_s=0.0,
                              speech_ratio=0.0, level_range_db=self.level_range_db)


def live_frames(variance: np.ndarray, *, guard: int = 0) -> np.ndarray:
    """Which frames are not digital silence (variance above :data:`DIGITAL_SILENCE_DB`).

    Parameters
    ----------
    variance : np.ndarray
        Shape ``(n_frames,)``, each frame's variance (mean square about its own mean).
    guard : int
        Frames this close to digital silence are not live either: they straddle its edge and
        hold the start or end of whatever follows or precedes it, not the background.

    Returns
    -------
    np.ndarray
        Shape ``(n_frames,)`` bool; all True when fewer than 10 frames are live, so that input
        silent throughout keeps statistics over all of its frames.
    """
    silent = variance <= 10 ** (DIGITAL_SILENCE_DB / 10)
    if guard > 0 and silent.any():
        silent = np.convolve(silent, np.ones(2 * guard + 1), mode="same") > 0
    live = ~silent
    return live if np.count_nonzero(live) >= _MIN_LIVE_FRAMES else np.ones_like(live)


def frame_levels(audio: np.ndarray, frame: int, hop: int, *,
                 guard: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean-square energy in dBFS of centred frames, and which frames are not digital silence.

    Parameters
    ----------
    audio : np.ndarray
        Shape ``(n,)``.
    frame, hop : int
        Frame length and hop in samples.
    guard : int
        Passed to :func:`live_frames`.

    Returns
    -------
    energy_db : np.ndarray
        Shape ``(1 + n // hop,)`` float64, clamped below at -120 dB.
    live : np.ndarray
        Shape ``(1 + n // hop,)`` bool, from :func:`live_frames`.
    """
    n = audio.size
    n_frames = 1 + n // hop
    half = frame // 2
    # Frames start every hop at -frame/2 and span whole blocks of g samples: sums of x and x^2 per
    # block, then running sums over blocks give every frame's energy and variance without
    # materialising frames (a running sum over samples took 16-30x longer; float64 because the
    # variance is a difference of two such sums).
    g = math.gcd(math.gcd(hop, half), frame)
    padded = half + n + frame
    x = np.zeros(padded + (-padded) % g)
    x[half : half + n] = audio
    blocks = x.reshape(-1, g)
    csum_sq = np.concatenate([[0.0], np.cumsum(np.einsum("ij,ij->i", blocks, blocks))])
    csum = np.concatenate([[0.0], np.cumsum(blocks.sum(axis=1))])
    starts, width = np.arange(n_frames) * (hop // g), frame // g
    energy = (csum_sq[starts + width] - csum_sq[starts]) / frame
    mean = (csum[starts + width] - csum[starts]) / frame
    energy_db = 10.0 * np.log10(np.maximum(energy, 10 ** (_FLOOR_DB / 10)))
    return energy_db, live_frames(energy - mean * mean, guard=guard)


def _runs(mask: np.ndarray, value: bool) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) indices of runs of ``value`` in ``mask``."""
    m = np.concatenate([[False], mask == value, [False]]).astype(np.int8)
    d = np.diff(m)
    return np.flatnonzero(d == 1), np.flatnonzero(d == -1)


def speech_activity(audio: np.ndarray, sr: int, params: SpeechParams | None = None, *,
                    reference: np.ndarray | None = None) -> SpeechActivity:
    """Detect speech frames from energy.

    Parameters
    ----------
    audio : np.ndarray
        Shape ``(n,)``, mono, ideally denoised and normalised.
    sr : int
        Sample rate in Hz.
    params : SpeechParams, optional
    reference : np.ndarray, optional
        Shape ``(n,)``: the same audio before denoising and normalisation, on which digital
        silence is judged (gating and gain change how constant a stretch looks). Default: ``audio``.

    Returns
    -------
    SpeechActivity
    """
    params = params or SpeechParams()
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono, shape (n,), got {audio.shape}")
    frame = max(int(round(params.frame_ms * sr / 1000)), 1)
    hop = max(int(round(params.hop_ms * sr / 1000)), 1)
    hop_s = hop / sr
    db, live = frame_levels(audio, frame, hop)
    if reference is not None:
        if reference.shape != audio.shape:
            raise ValueError(f"reference must have the shape of audio {audio.shape}, "
                             f"got {reference.shape}")
        live = frame_levels(np.asarray(reference, dtype=np.float32), frame, hop)[1]
    floor = float(np.percentile(db[live], params.noise_percentile))
    top = float(np.percentile(db[live], 99.0))
    # Adaptive threshold, but never above "top - margin": a signal without pauses (a steady vowel)
    # has its floor at its own level and would otherwise have no speech at all.
    thr = min(floor + params.margin_db, top - params.margin_db)
    thr = max(thr, params.abs_floor_dbfs)
    mask = db > thr
    gap = int(round(params.fill_gap_s / hop_s))
    if gap > 0 and mask.any():
        starts, ends = _runs(mask, False)
        for s, e in zip(starts, ends, strict=True):
            # only interior gaps: leading/trailing non-speech stays non-speech
            if s > 0 and e < mask.size and e - s <= gap:
                mask[s:e] = True
    # never digital silence (silence suppression between words, a constant left by DC removal):
    # its frames would enter every speech-frame feature
    mask &= live
    min_run = int(round(params.min_run_s / hop_s))
    if min_run > 0 and mask.any():
        starts, ends = _runs(mask, True)
        for s, e in zip(starts, ends, strict=True):
            if e - s < min_run:
                mask[s:e] = False
    n_speech = int(mask.sum())
    return SpeechActivity(
        mask=mask,
        hop_s=hop_s,
        # centred frames overhang the ends: never more speech than there is audio
        speech_s=min(n_speech * hop_s, audio.size / sr),
        speech_ratio=n_speech / mask.size,
        level_range_db=top - floor,
    )
