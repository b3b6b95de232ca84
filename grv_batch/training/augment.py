"""Audio-domain augmentation for robustness: noise, telephone band, lossy codecs, reverberation,
gain, small speed (pitch+tempo) changes. Every function is pure given its ``rng``.

Each *variant* turns one clip into encoded audio bytes (a file object) that goes through the same
``grv_batch.features.iter_windows`` as inference, so training sees exactly the inference features.
"""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf
import soxr
from scipy import signal

#: The variants the shipped bundle is trained on (and ``grv-batch train``'s default).
VARIANTS = ("clean", "telephone", "telephone2", "wild", "perturb")
#: Every variant :func:`make_variant` knows.
VARIANT_NAMES = VARIANTS


def _rms(x):
    return float(np.sqrt(np.mean(np.square(x), dtype=np.float64)) + 1e-12)


def coloured_noise(n: int, sr: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(n)
    if kind == "white":
        return white
    spec = np.fft.rfft(white)
    f = np.maximum(np.fft.rfftfreq(n, 1 / sr), 20.0)
    if kind == "pink":
        spec /= np.sqrt(f)
    elif kind == "brown":
        spec /= f
    elif kind == "speech":            # speech-shaped, long-term average speech spectrum-like
        spec *= np.sqrt(1.0 / (1.0 + (f / 800.0) ** 2) * (f / (f + 150.0)))
    elif kind == "hum":
        spec *= np.exp(-f / 300.0)
    else:
        raise ValueError(kind)
    return np.fft.irfft(spec, n)


def add_noise(x, sr, snr_db, kind, rng):
    noise = coloured_noise(len(x), sr, kind, rng)
    return x + noise * (_rms(x) / _rms(noise)) * 10 ** (-snr_db / 20)


def reverb(x, sr, rt60, rng, wet=0.5):
    n = int(sr * rt60)
    t = np.arange(n) / sr
    rir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    rir[0] = 1.0 / wet
    y = signal.fftconvolve(x, rir)[: len(x)]
    return y * (_rms(x) / _rms(y))


def telephone_band(x, sr, rng=None, lo=300.0, hi=3400.0):
    """Resample to 8 kHz and band-limit to lo..hi Hz; returns (audio, 8000)."""
    y = soxr.resample(x, sr, 8000) if sr != 8000 else x
    sos = signal.butter(6, [lo, hi], btype="bandpass", fs=8000, output="sos")
    return signal.sosfilt(sos, y), 8000


# real narrowband telephone codecs that libsndfile writes in WAV, with their draw probabilities
TELEPHONE_CODECS = (("GSM610", 0.35), ("G721_32", 0.2), ("ALAW", 0.15), ("ULAW", 0.1),
                    ("NMS_ADPCM_24", 0.1), ("IMA_ADPCM", 0.1))


def telephone_codec(x, sr, rng) -> io.BytesIO:
    """Second telephone variant: random band edges (low 200-400 Hz, high 3000-3600 Hz, filter
    order 4-8) at 8 kHz, light line noise (30-45 dB SNR), random level, 20 ms packet-loss dropouts
    in 30% of clips, then a real codec round trip (GSM 6.10 full rate, G.721 / IMA / NMS ADPCM,
    A-law, mu-law), delivered as 8 kHz 16-bit WAV."""
    y = soxr.resample(x, sr, 8000) if sr != 8000 else x
    lo, hi = rng.uniform(200, 400), rng.uniform(3000, 3600)
    sos = signal.butter(int(rng.integers(2, 5)), [lo, hi], btype="bandpass", fs=8000, output="sos")
    y = signal.sosfilt(sos, y)
    y = add_noise(y, 8000, rng.uniform(30, 45), ["white", "pink", "hum"][rng.integers(3)], rng)
    y = y * 10 ** (rng.uniform(-24, -1) / 20) / max(np.max(np.abs(y)), 1e-9)
    if rng.random() < 0.3:                      # packet loss: 20 ms frames zeroed
        frames = len(y) // 160
        lost = rng.random(frames) < rng.uniform(0.01, 0.05)
        for i in np.flatnonzero(lost):
            y[i * 160:(i + 1) * 160] = 0.0
    names, probs = zip(*TELEPHONE_CODECS)
    codec = names[rng.choice(len(names), p=np.array(probs) / sum(probs))]
    buf = _encode(y, 8000, "WAV", codec)
    z, _ = sf.read(buf, dtype="float64")
    return _encode(z, 8000, "WAV", "PCM_16")


def speed(x, sr, factor):
    """Play ``factor`` times faster: pitch and tempo change together (resampling)."""
    return soxr.resample(x, sr * factor, sr)


def _encode(x, sr, fmt, subtype=None) -> io.BytesIO:
    peak = np.max(np.abs(x)) if len(x) else 0.0
    if peak > 0.99:
        x = x * (0.99 / peak)
    buf = io.BytesIO()
    sf.write(buf, x.astype(np.float32), sr, format=fmt, subtype=subtype)
    buf.seek(0)
    return buf


def codec_roundtrip(x, sr, rng) -> tuple[np.ndarray, int]:
    """Lossy codec: MP3 or OGG/Vorbis (soundfile), decoded back."""
    fmt = "MP3" if rng.random() < 0.5 else "OGG"
    if fmt == "MP3" and sr not in (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000):
        x, sr = soxr.resample(x, sr, 16000), 16000
    buf = _encode(x, sr, fmt, "MPEG_LAYER_III" if fmt == "MP3" else "VORBIS")
    y, sr2 = sf.read(buf, dtype="float64")
    return y, sr2


def make_variant(x: np.ndarray, sr: int, variant: str, rng: np.random.Generator) -> io.BytesIO:
    """Encoded audio (file object) of one augmentation variant of mono ``x``."""
    x = np.asarray(x, dtype=np.float64)
    if variant == "clean":
        return _encode(x, sr, "WAV", "PCM_16")
    if variant == "telephone":
        # G.711 mu-law at 8 kHz, 300-3400 Hz, light line noise
        y, sr8 = telephone_band(x, sr, rng)
        y = add_noise(y, sr8, rng.uniform(25, 40), "white", rng)
        y *= 10 ** (rng.uniform(-20, 0) / 20) * 0.5 / max(np.max(np.abs(y)), 1e-9)
        return _encode(y, sr8, "WAV", "ULAW")
    if variant == "wild":
        # far-field / consumer recording: reverberation, background noise, lossy codec
        y = reverb(x, sr, rng.uniform(0.2, 0.8), rng, wet=rng.uniform(0.3, 0.7)) if rng.random() < 0.7 else x
        y = add_noise(y, sr, rng.choice([0.0, 5.0, 10.0, 15.0, 20.0]) + rng.uniform(0, 3),
                      ["white", "pink", "brown", "speech", "hum"][rng.integers(5)], rng)
        y, sr2 = codec_roundtrip(y * 0.3 / max(np.max(np.abs(y)), 1e-9), sr, rng)
        return _encode(y * 10 ** (rng.uniform(-30, 0) / 20), sr2, "WAV", "PCM_16")
    if variant == "perturb":
        # small pitch/tempo change, gain, mild noise, sometimes a codec
        y = speed(x, sr, rng.uniform(0.94, 1.06))
        if rng.random() < 0.5:
            y = add_noise(y, sr, rng.uniform(15, 30), "pink", rng)
        if rng.random() < 0.5:
            y, sr = codec_roundtrip(y * 0.3 / max(np.max(np.abs(y)), 1e-9), sr, rng)
        return _encode(y * 10 ** (rng.uniform(-35, 0) / 20) / max(np.max(np.abs(y)), 1e-9), sr, "WAV", "PCM_16")
    if variant == "telephone2":
        return telephone_codec(x, sr, rng)
    raise ValueError(f"unknown variant {variant!r}")
