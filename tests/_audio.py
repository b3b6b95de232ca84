"""Synthetic test audio: tones, source-filter vowels with known formants, noise.

Tests make their own audio (never ../shared) so every expected value is known by construction.
"""

from __future__ import annotations

import numpy as np
import scipy.signal


def tone(freq: float, dur_s: float, sr: int = 16000, amp: float = 0.5) -> np.ndarray:
    """Sine of ``freq`` Hz, shape ``(round(dur_s * sr),)`` float32."""
    t = np.arange(int(round(dur_s * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def silence(dur_s: float, sr: int = 16000) -> np.ndarray:
    """Digital silence, shape ``(round(dur_s * sr),)`` float32."""
    return np.zeros(int(round(dur_s * sr)), np.float32)


def noise(dur_s: float, sr: int = 16000, amp: float = 0.01, seed: int = 0) -> np.ndarray:
    """White Gaussian noise with standard deviation ``amp``, float32."""
    rng = np.random.default_rng(seed)
    return (amp * rng.standard_normal(int(round(dur_s * sr)))).astype(np.float32)


def vowel(
    f0: float,
    dur_s: float,
    sr: int = 16000,
    formants: tuple[float, ...] = (700.0, 1220.0, 2600.0),
    bandwidths: tuple[float, ...] = (80.0, 90.0, 120.0),
    amp: float = 0.5,
    vibrato_st: float = 0.0,
) -> np.ndarray:
    """Source-filter vowel: glottal pulse train at ``f0`` through two-pole formant resonators.

    The source is a train of unit impulses smoothed by a one-pole low-pass (about -6 dB/octave, a
    crude glottal tilt); each formant is a resonator with the given centre frequency and bandwidth.
    ``vibrato_st`` adds a 5 Hz sinusoidal pitch modulation of that many semitones peak.
    Returns shape ``(round(dur_s * sr),)`` float32 with peak ``amp``.
    """
    n = int(round(dur_s * sr))
    t = np.arange(n) / sr
    inst_f0 = f0 * 2 ** (vibrato_st * np.sin(2 * np.pi * 5.0 * t) / 12.0)
    phase = np.cumsum(inst_f0) / sr
    src = np.zeros(n)
    src[np.flatnonzero(np.diff(np.floor(phase), prepend=-1.0) > 0)] = 1.0
    src = scipy.signal.lfilter([1.0], [1.0, -0.9], src)
    y = src
    for f, bw in zip(formants, bandwidths, strict=True):
        r = np.exp(-np.pi * bw / sr)
        a = [1.0, -2 * r * np.cos(2 * np.pi * f / sr), r * r]
        y = scipy.signal.lfilter([sum(a)], a, y)  # unity gain at DC
    y = y - y.mean()
    return (amp * y / np.max(np.abs(y))).astype(np.float32)


def voice(dur_s: float, sr: int = 16000, f0: float = 120.0, seed: int = 0) -> np.ndarray:
    """A 'speaker': vowels of ~0.4 s separated by ~0.15 s pauses over faint noise, float32."""
    rng = np.random.default_rng(seed)
    vowels = [(700, 1220, 2600), (300, 2300, 3000), (500, 900, 2500), (400, 1900, 2600)]
    out = []
    total = 0
    n = int(round(dur_s * sr))
    while total < n:
        fm = vowels[rng.integers(len(vowels))]
        seg = vowel(f0 * (1 + 0.05 * rng.standard_normal()), 0.4, sr, fm, vibrato_st=0.5)
        out += [seg, np.zeros(int(0.15 * sr), np.float32)]
        total += seg.size + int(0.15 * sr)
    y = np.concatenate(out)[:n]
    return (y + noise(dur_s, sr, amp=0.002, seed=seed)[:n]).astype(np.float32)


def write_av(path, data: np.ndarray, sr: int, codec: str = "aac") -> None:
    """Encode ``data`` (``(n,)`` or ``(n, channels)`` float) with PyAV (FFmpeg), e.g. AAC in an
    ``.m4a`` or Opus in a ``.webm``; the container follows the file name."""
    import av

    data = np.asarray(data, dtype=np.float32)
    data = data[:, None] if data.ndim == 1 else data
    layout = "mono" if data.shape[1] == 1 else "stereo"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=sr)
        stream.layout = layout
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data.T), format="fltp", layout=layout)
        frame.sample_rate = sr
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
