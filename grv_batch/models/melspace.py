"""Mel-domain helpers shared by training and inference of the ``cv_mel`` member.

``mel128`` is the time-mean of librosa's 128-band mel *power* spectrogram at 22,050 Hz
(``n_fft=2048``, ``hop_length=512``), the Common Voice recipe. Everything here works on that
representation, so the same code prepares inputs at training and at inference time.
"""

from __future__ import annotations

import numpy as np

SR = 22050
N_MELS = 128
#: centre frequency (Hz) of each of the 128 mel bands (Slaney mel scale, fmax = sr / 2)
_EDGES = None


def band_centres() -> np.ndarray:
    """Centre frequency of each mel band in Hz (no librosa import needed at inference)."""
    global _EDGES
    if _EDGES is None:
        # librosa.mel_frequencies(n_mels=130, fmax=11025, htk=False), computed in closed form
        f_sp = 200.0 / 3
        min_log_hz = 1000.0
        min_log_mel = min_log_hz / f_sp
        logstep = np.log(6.4) / 27.0

        def hz_to_mel(f):
            f = np.asarray(f, dtype=float)
            return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-9) / min_log_hz) / logstep, f / f_sp)

        def mel_to_hz(m):
            m = np.asarray(m, dtype=float)
            return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)

        mels = np.linspace(hz_to_mel(0.0), hz_to_mel(SR / 2), N_MELS + 2)
        _EDGES = mel_to_hz(mels)
    return _EDGES[1:-1].copy()


def log_mel_normalised(mel: np.ndarray, n_bands: int | None = None, floor_db: float | None = None) -> np.ndarray:
    """Gain-invariant representation: log10 mel power minus its mean over bands.

    ``n_bands`` keeps the lowest bands only (115 bands = up to 7.6 kHz, so 16 kHz sources and
    full-band sources look alike). The floor is relative to the clip's own power (-60 dB below the
    mean by default, or ``floor_db`` below the strongest band), so multiplying the audio by any
    gain leaves the result unchanged (up to float rounding), and empty bands (telephone,
    band-limited codecs) all sit at the same floor.
    """
    x = np.asarray(mel, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if n_bands is not None:
        x = x[:, :n_bands]
    x = np.nan_to_num(np.maximum(x, 0.0), nan=0.0, posinf=0.0)
    if floor_db is None:
        floor = 1e-6 * x.mean(axis=1, keepdims=True) + 1e-30
        lx = np.log10(x + floor)
    else:
        top = x.max(axis=1, keepdims=True) + 1e-30
        lx = np.log10(np.maximum(x, top * 10 ** (-floor_db / 10)))
    lx -= lx.mean(axis=1, keepdims=True)
    return lx.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# augmentation in the mel power domain (power adds, so noise and channel effects are exact in
# expectation for time-averaged spectra)


def noise_spectrum(kind: str, f: np.ndarray) -> np.ndarray:
    f = np.maximum(f, 20.0)
    if kind == "white":
        s = np.ones_like(f)
    elif kind == "pink":
        s = 1000.0 / f
    elif kind == "brown":
        s = (1000.0 / f) ** 2
    elif kind == "babble":  # speech-shaped: peak ~500 Hz, -12 dB/oct above 1 kHz
        s = 1.0 / (1.0 + (f / 800.0) ** 2) * (f / (f + 150.0))
    elif kind == "hum":  # low-frequency machinery
        s = np.exp(-f / 250.0) + 1e-3
    else:
        raise ValueError(kind)
    return s / s.mean()


def telephone(mel: np.ndarray, f: np.ndarray, *, atten_db: float = 40.0, floor_snr_db: float = 35.0,
              lo: float = 300.0, hi: float = 3400.0) -> np.ndarray:
    """Narrowband telephone channel: attenuate outside lo..hi Hz (smooth skirts), add a floor."""
    g_lo = 1.0 / (1.0 + (lo / np.maximum(f, 1.0)) ** 8)
    g_hi = 1.0 / (1.0 + (f / hi) ** 12)
    g = np.maximum(g_lo * g_hi, 10 ** (-atten_db / 10))
    out = mel * g
    p = out.mean(axis=-1, keepdims=True)
    return out + p * 10 ** (-floor_snr_db / 10) * noise_spectrum("white", f)


def lowpass(mel: np.ndarray, f: np.ndarray, cutoff: float, atten_db: float = 60.0) -> np.ndarray:
    g = np.maximum(1.0 / (1.0 + (f / cutoff) ** 24), 10 ** (-atten_db / 10))
    return mel * g


def add_noise(mel: np.ndarray, f: np.ndarray, snr_db: float, kind: str) -> np.ndarray:
    p = mel.mean(axis=-1, keepdims=True)
    return mel + p * 10 ** (-snr_db / 10) * noise_spectrum(kind, f)


def tilt(mel: np.ndarray, f: np.ndarray, db_per_octave: float) -> np.ndarray:
    return mel * (np.maximum(f, 50.0) / 1000.0) ** (db_per_octave / (10 * np.log10(2)))


def augment_batch(mel: np.ndarray, rng: np.random.Generator, telephone_p: float = 0.2) -> np.ndarray:
    """Random channel/noise/gain perturbations of a batch of mel128 power vectors."""
    f = band_centres()
    out = np.array(mel, dtype=np.float64, copy=True)
    n = len(out)
    kinds = ["white", "pink", "brown", "babble", "hum"]
    for i in range(n):
        x = out[i]
        if rng.random() < 0.5:
            x = tilt(x, f, rng.uniform(-3.0, 3.0))
        if rng.random() < 0.4:
            x = add_noise(x, f, rng.choice([0.0, 5.0, 10.0, 15.0, 20.0, 30.0]) + rng.uniform(-2, 2),
                          kinds[rng.integers(len(kinds))])
        r = rng.random()
        if r < telephone_p:
            x = telephone(x, f, atten_db=rng.uniform(30, 90), floor_snr_db=rng.uniform(20, 60),
                          lo=rng.uniform(200, 400), hi=rng.uniform(3000, 3800))
            if rng.random() < 0.5:             # 8 kHz sampling: nothing at all above 4 kHz
                x = lowpass(x, f, 3900.0, atten_db=120.0)
        elif r < telephone_p + 0.15:
            x = lowpass(x, f, rng.choice([4000.0, 5500.0, 7000.0, 8000.0]), atten_db=rng.uniform(40, 120))
        out[i] = x * 10 ** rng.uniform(-4, 4)  # gain: +-40 dB of power
    return out.astype(np.float32)
