"""Audio-domain augmentation for robustness: noise, telephone band, lossy codecs, reverberation,
gain, small speed (pitch+tempo) changes, pitch shifts that keep the formants. Every function is
pure given its ``rng``.

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
VARIANTS = ("clean", "telephone", "telephone2", "wild", "perturb", "mobile")
#: The opt-in variants that move the voice's pitch with the WORLD vocoder (``pyworld``, the
#: ``train`` extra).
PITCH_VARIANTS = ("pitch", "pitch_call", "pitch_cross")
#: Every variant :func:`make_variant` knows.
VARIANT_NAMES = VARIANTS + PITCH_VARIANTS


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


def drop_frames(y: np.ndarray, frame_len: int, rng) -> None:
    """Packet loss, in place: each frame of ``frame_len`` samples (20 ms) is zeroed with a
    probability drawn from 1-5%."""
    for i in np.flatnonzero(rng.random(len(y) // frame_len) < rng.uniform(0.01, 0.05)):
        y[i * frame_len:(i + 1) * frame_len] = 0.0


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
    if rng.random() < 0.3:
        drop_frames(y, 160, rng)
    names, probs = zip(*TELEPHONE_CODECS)
    codec = names[rng.choice(len(names), p=np.array(probs) / sum(probs))]
    buf = _encode(y, 8000, "WAV", codec)
    z, _ = sf.read(buf, dtype="float64")
    return _encode(z, 8000, "WAV", "PCM_16")


#: codecs of mobile and internet calls (FFmpeg's encoders through PyAV): encoder, container,
#: sample rate, bit rates (bit/s) and draw probability. AMR-NB is the GSM/UMTS voice codec at its
#: eight modes; Opus is the VoIP codec, wideband and narrowband.
MOBILE_CODECS = (
    ("libopencore_amrnb", "amr", 8000, (4750, 5150, 5900, 6700, 7400, 7950, 10200, 12200), 0.6),
    ("libopus", "ogg", 16000, (6000, 8000, 12000, 16000), 0.25),
    ("libopus", "ogg", 8000, (6000, 8000, 10000), 0.15),
)


def ffmpeg_roundtrip(x: np.ndarray, sr: int, codec: str, container: str, bit_rate: int) -> np.ndarray:
    """Mono ``x`` (at ``sr``, peak below 1) encoded with an FFmpeg encoder and decoded back.

    Returns
    -------
    np.ndarray
        Shape about ``(len(x),)`` (codecs add a few ms of delay), float64 at ``sr``.
    """
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=sr, layout="mono")
        stream.bit_rate = int(bit_rate)
        frame = av.AudioFrame.from_ndarray(
            np.round(np.clip(x, -1.0, 1.0) * 32767).astype(np.int16)[None, :], format="s16", layout="mono")
        frame.sample_rate = sr
        for packet in (*stream.encode(frame), *stream.encode(None)):
            out.mux(packet)
    buf.seek(0)
    with av.open(buf, "r") as inp:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
        parts = [f.to_ndarray().reshape(-1) for frame in inp.decode(audio=0)
                 for f in resampler.resample(frame)]
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


def mobile_codec(x, sr, rng) -> io.BytesIO:
    """Mobile or internet call: the caller's background noise (half the clips, 10-35 dB SNR), a
    handset's band (low 100-300 Hz; high 3400-3700 Hz for narrowband codecs), random level, 20 ms
    frame losses in 20% of clips, then a real codec round trip (:data:`MOBILE_CODECS`: AMR-NB at
    4.75-12.2 kbit/s, Opus at 6-16 kbit/s), delivered as 16-bit WAV at the codec's rate."""
    probs = np.array([c[-1] for c in MOBILE_CODECS])
    codec, container, rate, bit_rates, _ = MOBILE_CODECS[rng.choice(len(MOBILE_CODECS), p=probs / probs.sum())]
    y = soxr.resample(x, sr, rate) if sr != rate else np.asarray(x, dtype=np.float64)
    if rng.random() < 0.5:
        y = add_noise(y, rate, rng.uniform(10, 35), ["pink", "speech", "brown", "hum"][rng.integers(4)], rng)
    hi = rng.uniform(3400, 3700) if rate == 8000 else 7000.0
    sos = signal.butter(int(rng.integers(2, 5)), [rng.uniform(100, 300), hi], btype="bandpass",
                        fs=rate, output="sos")
    y = signal.sosfilt(sos, y)
    y = y * 10 ** (rng.uniform(-24, -3) / 20) / max(np.max(np.abs(y)), 1e-9)
    if rng.random() < 0.2:
        drop_frames(y, rate // 50, rng)
    z = ffmpeg_roundtrip(y, rate, codec, container, int(rng.choice(bit_rates)))
    return _encode(z, rate, "WAV", "PCM_16")


def speed(x, sr, factor):
    """Play ``factor`` times faster: pitch and tempo change together (resampling)."""
    return soxr.resample(x, sr * factor, sr)


def shift_pitch_keep_formants(x, sr, semitones):
    """F0 moved by ``semitones``, spectral envelope (formants) and aperiodicity kept.

    WORLD vocoder analysis and resynthesis (``pyworld``: DIO + StoneMask F0, CheapTrick envelope,
    D4C aperiodicity, 5 ms frames). The vocal tract stays the speaker's, so the label stays honest
    while the pitch moves towards the other gender's range: a raised (angry, happy) male voice or a
    low (sad) female one. ``x``: (n,) float; returns (about n,) float64.
    """
    import pyworld  # training-only dependency (the ``train`` extra)

    x = np.ascontiguousarray(x, dtype=np.float64)
    f0, t = pyworld.dio(x, sr, frame_period=5.0)
    f0 = pyworld.stonemask(x, f0, t, sr)
    envelope = pyworld.cheaptrick(x, f0, t, sr)
    aperiodicity = pyworld.d4c(x, f0, t, sr)
    return pyworld.synthesize(f0 * 2.0 ** (semitones / 12.0), envelope, aperiodicity, sr, 5.0)


def _pitch_shifted(x, sr, rng, sign: float | None = None) -> np.ndarray:
    """``x`` with F0 moved 2-5 semitones, up (``sign`` 1), down (-1) or either (None, drawn)."""
    if sign is None:
        sign = rng.choice([-1.0, 1.0])
    return shift_pitch_keep_formants(x, sr, sign * rng.uniform(2.0, 5.0))


def _codec_sometimes_then_level(y, sr, rng, p_codec: float, min_db: float) -> io.BytesIO:
    """With probability ``p_codec`` a lossy codec round trip, then a peak level drawn from
    ``min_db``..0 dB of full scale; as a 16-bit WAV file object."""
    if rng.random() < p_codec:
        y, sr = codec_roundtrip(y * 0.3 / max(np.max(np.abs(y)), 1e-9), sr, rng)
    return _encode(y * 10 ** (rng.uniform(min_db, 0) / 20) / max(np.max(np.abs(y)), 1e-9), sr, "WAV", "PCM_16")


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


def make_variant(x: np.ndarray, sr: int, variant: str, rng: np.random.Generator, *,
                 gender: str | None = None) -> io.BytesIO:
    """Encoded audio (file object) of one augmentation variant of mono ``x``; ``gender`` (the
    clip's label) is needed by ``pitch_cross`` only."""
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
        return _codec_sometimes_then_level(y, sr, rng, 0.5, -35.0)
    if variant == "pitch":
        # 2-5 semitones up or down with the formants kept, sometimes a codec, any gain
        return _codec_sometimes_then_level(_pitch_shifted(x, sr, rng), sr, rng, 0.3, -30.0)
    if variant == "pitch_cross":
        # 2-5 semitones towards the other sex's range only (men up, women down): the raised
        # voices of angry or happy men and the low ones of sad women, with their own formants
        if gender not in ("female", "male"):
            raise ValueError(f"the pitch_cross variant needs the clip's gender, got {gender!r}")
        y = _pitch_shifted(x, sr, rng, 1.0 if gender == "male" else -1.0)
        return _codec_sometimes_then_level(y, sr, rng, 0.3, -30.0)
    if variant == "pitch_call":
        # the pitch shift above, then one of the three call channels: a raised or lowered voice
        # heard through a telephone, where the formants above 3.4 kHz are gone as well
        return make_variant(_pitch_shifted(x, sr, rng), sr, ("telephone", "telephone2", "mobile")[rng.integers(3)], rng)
    if variant == "telephone2":
        return telephone_codec(x, sr, rng)
    if variant == "mobile":
        return mobile_codec(x, sr, rng)
    raise ValueError(f"unknown variant {variant!r}")
