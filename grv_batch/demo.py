"""Synthetic labelled demo corpus of source-filter voices.

The demo corpus lets anyone run the whole pipeline (discovery, decoding of several formats and
rates, metadata join, per-speaker aggregation, fairness report) without downloading a real
data set, and gives the tests a corpus whose ground truth is known by construction.

Each voice is a classic source-filter model:

* **source**: a Rosenberg glottal pulse train whose period follows a speaker-specific
  fundamental frequency (F0) with an intonation contour (phrase declination, word accents,
  final fall or rise), cycle-to-cycle jitter and shimmer, and breathiness (aspiration noise
  gated by the glottal opening);
* **filter**: a cascade of five second-order formant resonators whose centre frequencies scale
  with a speaker-specific vocal-tract length, moving smoothly between vowel targets;
* **radiation**: a first difference (lip radiation is close to a differentiator).

Clips are phrases of a few "words" (vowel sequences with fricative and plosive consonants and
short pauses between words), so they contain voiced, unvoiced and silent parts like speech.
Each clip is then put through one recording condition (clean, noisy, telephone) and written in
a mix of formats, sample rates and channel counts.

Only numpy and scipy are used; everything is derived from one seed, so the same call always
produces the same audio and the same ``metadata.csv``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import butter, lfilter, resample_poly, sosfilt

__all__ = ["make_demo_corpus", "METADATA_COLUMNS"]

#: Columns of the ``metadata.csv`` written by :func:`make_demo_corpus`, in order.
METADATA_COLUMNS = ("path", "speaker_id", "gender", "condition", "pitch_band", "age_group")

# All voices are synthesised at this rate and then resampled to the rate of their output file.
# 22.05 kHz keeps every formant (F5 of a short female tract stays below 5.5 kHz) and the
# fricative noise band below Nyquist while keeping synthesis cheap.
_SYNTH_SR = 22050
# Formant trajectories are updated every 5 ms, the classic Klatt-synthesiser frame rate: fast
# enough for smooth transitions, slow enough that the blockwise filtering stays cheap.
_HOP = _SYNTH_SR // 200

# Adult male vowel formants F1-F3 in Hz (Peterson & Barney 1952 averages). Female and other
# speakers are obtained by scaling with vocal-tract length, which is the physical reason
# women's formants are higher, rather than by a separate table.
_VOWELS: dict[str, tuple[float, float, float]] = {
    "i": (270.0, 2290.0, 3010.0),
    "I": (390.0, 1990.0, 2550.0),
    "E": (530.0, 1840.0, 2480.0),
    "ae": (660.0, 1720.0, 2410.0),
    "A": (730.0, 1090.0, 2440.0),
    "O": (570.0, 840.0, 2410.0),
    "U": (440.0, 1020.0, 2240.0),
    "u": (300.0, 870.0, 2240.0),
    "V": (640.0, 1190.0, 2390.0),
    "3": (490.0, 1350.0, 1690.0),
}
_VOWEL_NAMES = tuple(_VOWELS)
# F4 and F5 vary little between vowels; fixed values for a 17.5 cm reference tract.
_F45 = (3500.0, 4500.0)
_REFERENCE_VTL_CM = 17.5
# Formant bandwidths in Hz (typical measured values); wider for higher formants.
_BANDWIDTHS = np.array([70.0, 100.0, 140.0, 250.0, 300.0])

# Pitch bands used as a fairness grouping: they are where gender recognisers usually fail
# (low-pitched women, high-pitched men), independent of the gender label itself.
_PITCH_BANDS = ((0.0, 135.0, "low"), (135.0, 185.0, "mid"), (185.0, np.inf, "high"))
_AGE_GROUPS = ("18-29", "30-49", "50-69")


@dataclass(frozen=True)
class _Speaker:
    """Everything that stays constant for one synthetic speaker."""

    speaker_id: str
    gender: str
    age_group: str
    f0_hz: float  # median F0 of the speaker
    vtl_cm: float  # vocal-tract length; formants scale with 1 / vtl
    jitter: float  # relative cycle-to-cycle period perturbation (std)
    shimmer: float  # relative cycle-to-cycle amplitude perturbation (std)
    breathiness: float  # aspiration noise level relative to the voiced source
    open_quotient: float  # share of the glottal cycle the folds are open
    rate: float  # speaking-rate factor (>1 is faster)


@dataclass(frozen=True)
class _Format:
    """How one clip is written: extension, rate, channels, libsndfile format and subtype."""

    ext: str
    sample_rate: int
    channels: int
    format: str
    subtype: str


# The mix of containers and rates the pipeline has to cope with in real corpora.
_WAV16 = _Format("wav", 16000, 1, "WAV", "PCM_16")
_FLAC44 = _Format("flac", 44100, 1, "FLAC", "PCM_16")
_OGG22 = _Format("ogg", 22050, 1, "OGG", "VORBIS")
_WAV48_STEREO = _Format("wav", 48000, 2, "WAV", "PCM_16")
# Telephone audio is narrow-band 8 kHz and mu-law companded on the wire (G.711).
_WAV8_ULAW = _Format("wav", 8000, 1, "WAV", "ULAW")
_CONDITIONS = ("clean", "noisy", "telephone")


def make_demo_corpus(
    out_dir: str | Path,
    *,
    n_speakers: int = 24,
    clips_per_speaker: int = 3,
    seed: int = 0,
) -> Path:
    """Synthesise a small labelled corpus of source-filter voices.

    Speakers alternate female / male (``spk00`` is female). Female speakers get a median F0 of
    about 165-255 Hz and a vocal tract about 15-20 % shorter than male speakers (85-155 Hz),
    so their formants are higher; about one speaker in eight is an overlapping case (a
    low-pitched woman or a high-pitched man). Each clip is 2-6 s of a phrase of vowel
    sequences with consonants and pauses, under one of three conditions (cycled per speaker
    so every speaker with three or more clips has each):

    ``clean``
        written as WAV 16 kHz, FLAC 44.1 kHz or OGG Vorbis 22.05 kHz (cycled over the corpus);
        the first clean clip is a stereo WAV at 48 kHz instead.
    ``noisy``
        pink, low-frequency ("car") or hum-and-hiss noise added at 5-20 dB SNR, same formats.
    ``telephone``
        band-limited to 300-3400 Hz at 8 kHz and written as mu-law WAV in a ``phone/`` subfolder.

    Parameters
    ----------
    out_dir : str or Path
        Folder to write into; created if missing. Files of the corpus are overwritten, other
        files in it are left alone.
    n_speakers : int, default 24
        Number of speakers (at least 2, so both genders are present).
    clips_per_speaker : int, default 3
        Number of clips per speaker (at least 1).
    seed : int, default 0
        Seed of everything random; the same arguments give the same audio and metadata.

    Returns
    -------
    Path
        Path of ``metadata.csv`` in `out_dir`: one row per audio file, columns ``path``
        (relative to `out_dir`, ``/``-separated), ``speaker_id``, ``gender`` (``female`` /
        ``male``), ``condition`` (``clean`` / ``noisy`` / ``telephone``), ``pitch_band``
        (``low`` / ``mid`` / ``high``, from the speaker's median F0) and ``age_group``.

    Raises
    ------
    ValueError
        If `n_speakers` < 2 or `clips_per_speaker` < 1.

    Notes
    -----
    The default corpus (72 clips, about 5 minutes of audio) takes about a second to generate.
    Decoded audio is bit-identical between runs; OGG files are not byte-identical because
    libsndfile gives every Ogg stream a random serial number.

    Examples
    --------
    >>> meta = make_demo_corpus("demo-corpus", n_speakers=4, clips_per_speaker=2)  # doctest: +SKIP
    >>> meta.name  # doctest: +SKIP
    'metadata.csv'
    """
    if n_speakers < 2:
        raise ValueError(f"n_speakers must be at least 2, got {n_speakers}")
    if clips_per_speaker < 1:
        raise ValueError(f"clips_per_speaker must be at least 1, got {clips_per_speaker}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    speakers = _make_speakers(n_speakers, seed)
    rows: list[dict[str, str]] = []
    plain_formats = (_WAV16, _FLAC44, _OGG22)
    # Formats cycle separately per condition, so clean and noisy clips each come in every
    # format and format is not a proxy for condition.
    n_by_condition = {c: 0 for c in _CONDITIONS}
    stereo_done = False
    for s, spk in enumerate(speakers):
        for k in range(clips_per_speaker):
            # A separate stream per clip: a clip's audio does not depend on how many clips
            # came before it, so changing clips_per_speaker keeps the earlier clips.
            rng = np.random.default_rng([seed, s, k])
            condition = _CONDITIONS[(s + k) % len(_CONDITIONS)]
            if condition == "telephone":
                fmt = _WAV8_ULAW
                rel = f"{spk.speaker_id}/phone/clip{k + 1}.{fmt.ext}"
            else:
                if condition == "clean" and not stereo_done:
                    fmt, stereo_done = _WAV48_STEREO, True
                else:
                    fmt = plain_formats[n_by_condition[condition] % len(plain_formats)]
                    n_by_condition[condition] += 1
                rel = f"{spk.speaker_id}/clip{k + 1}.{fmt.ext}"

            voice, active = _synth_clip(spk, rng)
            audio = _apply_condition(voice, active, condition, fmt, rng)
            path = out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, audio, fmt.sample_rate, subtype=fmt.subtype, format=fmt.format)
            rows.append(
                {
                    "path": rel,
                    "speaker_id": spk.speaker_id,
                    "gender": spk.gender,
                    "condition": condition,
                    "pitch_band": _pitch_band(spk.f0_hz),
                    "age_group": spk.age_group,
                }
            )

    meta_path = out / "metadata.csv"
    rows.sort(key=lambda r: r["path"])
    # newline="" and an explicit terminator: identical bytes on every platform.
    with open(meta_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=METADATA_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return meta_path


# --------------------------------------------------------------------------------------------
# speakers


def _pitch_band(f0_hz: float) -> str:
    for lo, hi, name in _PITCH_BANDS:
        if lo <= f0_hz < hi:
            return name
    raise AssertionError(f"no pitch band for {f0_hz}")  # pragma: no cover


def _make_speakers(n_speakers: int, seed: int) -> list[_Speaker]:
    rng = np.random.default_rng([seed, 1_000_003])
    width = max(2, len(str(n_speakers - 1)))
    # About one speaker in eight overlaps the other gender's pitch range: these are the
    # cases a pitch-only classifier gets wrong and the fairness report should surface.
    n_overlap = max(1, round(n_speakers / 8))
    overlapping = set(rng.choice(n_speakers, size=n_overlap, replace=False).tolist())
    speakers = []
    for s in range(n_speakers):
        gender = "female" if s % 2 == 0 else "male"
        age_i = int(rng.integers(len(_AGE_GROUPS)))
        if gender == "female":
            f0 = rng.uniform(150.0, 165.0) if s in overlapping else rng.uniform(165.0, 255.0)
            # Female tracts average ~14.5-15.5 cm against ~17-18.5 cm for men: formants
            # come out 15-20 % higher.
            vtl = rng.uniform(14.4, 15.6)
            breathiness = rng.uniform(0.08, 0.2)  # incomplete closure is more common
            open_quotient = rng.uniform(0.55, 0.7)
        else:
            f0 = rng.uniform(155.0, 175.0) if s in overlapping else rng.uniform(85.0, 155.0)
            vtl = rng.uniform(16.8, 18.6)
            breathiness = rng.uniform(0.03, 0.1)
            open_quotient = rng.uniform(0.45, 0.6)
        # Ageing lowers women's F0 and raises men's, and makes voices less stable.
        f0 *= 1.0 + (-0.04 if gender == "female" else 0.04) * age_i
        speakers.append(
            _Speaker(
                speaker_id=f"spk{s:0{width}d}",
                gender=gender,
                age_group=_AGE_GROUPS[age_i],
                f0_hz=float(f0),
                vtl_cm=float(vtl),
                jitter=float(rng.uniform(0.004, 0.01) * (1.0 + 0.5 * age_i)),
                shimmer=float(rng.uniform(0.03, 0.06) * (1.0 + 0.4 * age_i)),
                breathiness=float(breathiness * (1.0 + 0.3 * age_i)),
                open_quotient=float(open_quotient),
                rate=float(rng.uniform(0.85, 1.2)),
            )
        )
    return speakers


# --------------------------------------------------------------------------------------------
# articulation: a frame-rate score of what the voice does


@dataclass
class _Score:
    """Per-frame (5 ms) control tracks of one clip."""

    voice: np.ndarray  # voiced source amplitude
    frication: dict[str, np.ndarray]  # amplitude of each fricative noise colour
    formants: np.ndarray  # (5, n_frames) centre frequencies in Hz
    f0: np.ndarray  # F0 contour in Hz (defined everywhere, used where voiced)


def _plan_clip(spk: _Speaker, rng: np.random.Generator) -> _Score:
    frame_s = _HOP / _SYNTH_SR
    duration = rng.uniform(2.0, 6.0)
    n = int(round(duration / frame_s))
    voice = np.zeros(n)
    fric = {"s": np.zeros(n), "sh": np.zeros(n), "f": np.zeros(n), "burst": np.zeros(n)}
    ftarget = np.zeros((5, n))
    accents = np.zeros(n)
    scale = _REFERENCE_VTL_CM / spk.vtl_cm

    def frames(seconds: float) -> int:
        return max(1, int(round(seconds / spk.rate / frame_s)))

    def set_vowel(a: int, b: int, name: str) -> None:
        f1, f2, f3 = _VOWELS[name]
        # Small per-token variation: no two renditions of a vowel are identical.
        jiggle = rng.normal(1.0, 0.03, 5)
        ftarget[:, a:b] = (np.array([f1, f2, f3, *_F45]) * scale * jiggle)[:, None]

    # Leading and trailing silence, then words until the clip is full.
    t = int(round(rng.uniform(0.1, 0.4) / frame_s))
    end = n - int(round(rng.uniform(0.15, 0.4) / frame_s))
    first = True
    while t < end - frames(0.3):
        if not first:
            t += frames(rng.uniform(0.08, 0.3))  # pause between words
        first = False
        stressed = int(rng.integers(0, 3))
        for syl in range(int(rng.integers(1, 4))):
            if t >= end - frames(0.15):
                break
            onset = rng.choice(["", "", "s", "sh", "f", "p", "h"])
            if onset in ("s", "sh", "f"):
                d = frames(rng.uniform(0.06, 0.12))
                fric[onset][t : t + d] = {"s": 0.5, "sh": 0.6, "f": 0.25}[onset]
                t += d
            elif onset == "p":
                t += frames(rng.uniform(0.04, 0.08))  # closure: silence
                fric["burst"][t : t + 2] = 0.8  # release burst, ~10 ms
                t += 2
            vowel = _VOWEL_NAMES[int(rng.integers(len(_VOWEL_NAMES)))]
            d = frames(rng.uniform(0.09, 0.25) * (1.4 if syl == stressed else 1.0))
            d = min(d, end - t)
            if d <= 0:
                break
            set_vowel(t, t + d, vowel)
            # 'h' is aspiration through the tract of the following vowel: model it as a
            # breathy, weak start of the vowel.
            voice[t : t + d] = rng.uniform(0.7, 1.0) * (0.6 if onset == "h" else 1.0)
            if syl == stressed:
                accents[t : t + d] = rng.uniform(0.06, 0.15)
            t += d

    # Formants are undefined in silences: hold the neighbouring target, so the tract does
    # not sweep audibly into a vowel from 0 Hz.
    defined = ftarget[0] > 0
    if not defined.any():  # pragma: no cover - a clip always has at least one vowel
        ftarget[:] = (np.array([*_VOWELS["V"], *_F45]) * scale)[:, None]
    else:
        idx = np.arange(n)
        for i in range(5):
            ftarget[i] = np.interp(idx, idx[defined], ftarget[i, defined])
    # Coarticulation: smoothing the step targets over ~50 ms gives formant transitions.
    formants = np.vstack([_smooth(row, 10) for row in ftarget])
    # Onsets/offsets of voicing ramp over ~20 ms instead of clicking.
    voice = _smooth(voice, 4)
    for key in fric:
        fric[key] = _smooth(fric[key], 2 if key != "burst" else 1)

    # Intonation: declination over the phrase, accent bumps on stressed syllables, and a
    # final fall (statement) or rise (question), plus slow random drift.
    pos = np.linspace(0.0, 1.0, n)
    decl = 1.12 - 0.22 * pos
    final = np.where(pos > 0.8, (pos - 0.8) / 0.2, 0.0)
    final *= -0.12 if rng.random() < 0.8 else 0.25
    drift = _smooth(rng.normal(0.0, 0.04, n), 40) * 6
    f0 = spk.f0_hz * decl * (1.0 + _smooth(accents, 16) + final + drift)
    return _Score(voice=voice, frication=fric, formants=formants, f0=f0)


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Moving average of `x` over `width` frames, same length, edges held."""
    if width <= 1:
        return x.copy()
    kernel = np.hanning(width + 2)[1:-1]
    kernel /= kernel.sum()
    padded = np.pad(x, (width, width), mode="edge")
    return np.convolve(padded, kernel, mode="same")[width:-width]


# --------------------------------------------------------------------------------------------
# synthesis


def _synth_clip(spk: _Speaker, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Render one clip at `_SYNTH_SR`; returns the audio and its speech-activity mask."""
    score = _plan_clip(spk, rng)
    n_frames = score.voice.size
    n = n_frames * _HOP
    frame_pos = (np.arange(n_frames) + 0.5) * _HOP
    pos = np.arange(n)

    def up(track: np.ndarray) -> np.ndarray:
        return np.interp(pos, frame_pos, track)

    voice_amp = up(score.voice)
    f0 = up(score.f0)

    # Glottal source. The phase integrates F0; one cycle per unit of phase. Jitter and shimmer
    # are per cycle, so the cycle index comes from a first, unperturbed pass.
    phase0 = np.cumsum(f0) / _SYNTH_SR
    n_cycles = int(phase0[-1]) + 2
    jitter = 1.0 + rng.normal(0.0, spk.jitter, n_cycles)
    phase = np.cumsum(f0 * jitter[phase0.astype(np.int64)]) / _SYNTH_SR
    cycle = phase.astype(np.int64)
    frac = phase - cycle
    shimmer = np.clip(1.0 + rng.normal(0.0, spk.shimmer, n_cycles + 2), 0.5, 1.5)
    flow = _rosenberg(frac, spk.open_quotient) * shimmer[cycle] * voice_amp
    # Lip radiation is close to a differentiator (+6 dB/oct). The whole chain is linear, so it
    # is applied to the source (giving the glottal flow derivative, as in the LF model) rather
    # than after the tract; that lets the aspiration noise below be added at a known ratio.
    dflow = np.diff(flow, prepend=0.0)
    # Breathiness: turbulent noise while the folds are open, so it is pitch-synchronous. Its
    # level is set against the voiced source's so `breathiness` is a noise-to-harmonics
    # amplitude ratio (0.1 ~ 20 dB HNR, a normal voice).
    gate = flow / (np.max(flow) + 1e-12)
    aspiration = rng.standard_normal(n) * gate
    voicing = voice_amp > 0.05
    if voicing.any():
        ratio = np.std(dflow[voicing]) / (np.std(aspiration[voicing]) + 1e-12)
        aspiration *= spk.breathiness * ratio
    source = dflow + aspiration

    # Vocal tract: cascade of time-varying resonators. Each resonator keeps its filter state
    # across coefficient changes, so formant movements do not click.
    voiced = _formant_cascade(source, score.formants, spk)

    # Frication: fixed noise colours shaped by their envelopes, added at the lips.
    noise = rng.standard_normal(n)
    unvoiced = np.zeros(n)
    bands = {"s": (4000, 9000), "sh": (2200, 6000), "f": (1200, 9500), "burst": (500, 6000)}
    for key, (lo, hi) in bands.items():
        env = score.frication[key]
        if env.any():
            unvoiced += sosfilt(_butter_sos(2, (lo, hi), "bandpass", _SYNTH_SR), noise) * up(env)

    voiced /= np.max(np.abs(voiced)) + 1e-12
    out = voiced + 0.25 * unvoiced
    active = (voice_amp > 0.05) | (up(sum(score.frication.values())) > 0.05)
    return out, active


def _rosenberg(frac: np.ndarray, open_quotient: float) -> np.ndarray:
    """Rosenberg (1971) glottal flow pulse evaluated at cycle phase `frac` in [0, 1)."""
    # Opening takes about 2/3 of the open phase, closing the rest; closing is faster, which
    # is what gives voiced speech its strong harmonics.
    tp = open_quotient * 0.66
    tn = open_quotient - tp
    g = np.zeros_like(frac)
    rising = frac < tp
    g[rising] = 0.5 * (1.0 - np.cos(np.pi * frac[rising] / tp))
    falling = (frac >= tp) & (frac < tp + tn)
    g[falling] = np.cos(0.5 * np.pi * (frac[falling] - tp) / tn)
    return g


def _formant_cascade(x: np.ndarray, formants: np.ndarray, spk: _Speaker) -> np.ndarray:
    """Filter `x` through five resonators whose frequencies may change every frame."""
    n_frames = formants.shape[1]
    # Shorter tracts have slightly wider bandwidths in Hz (losses scale with frequency).
    bw = _BANDWIDTHS * (_REFERENCE_VTL_CM / spk.vtl_cm) ** 0.5
    r = np.exp(-np.pi * bw / _SYNTH_SR)[:, None]
    theta = 2.0 * np.pi * np.minimum(formants, 0.45 * _SYNTH_SR) / _SYNTH_SR
    a1 = -2.0 * r * np.cos(theta)
    a2 = np.broadcast_to(r * r, a1.shape)
    gain = 1.0 + a1 + a2  # unity gain at DC, so the cascade keeps the source's tilt
    y = x
    for i in range(5):
        state = np.zeros(2)
        out = np.empty_like(y)
        for a, b in _runs(formants[i]):
            sl = slice(a * _HOP, b * _HOP)
            out[sl], state = lfilter(gain[i, a : a + 1], [1.0, a1[i, a], a2[i, a]], y[sl], zi=state)
        y = out
    return y


def _runs(track: np.ndarray, tolerance: float = 0.01) -> list[tuple[int, int]]:
    """Split a formant track into runs of frames within `tolerance` of the run's first value.

    Filtering a whole run with one coefficient set is what keeps synthesis fast (one lfilter
    call per run instead of per 5 ms frame); a 1 % frequency step is below the ~3 % a
    listener or a feature extractor can resolve, and steady vowels and pauses become one run.
    """
    runs = []
    start = 0
    anchor = track[0]
    for f in range(1, track.size):
        if abs(track[f] - anchor) > tolerance * anchor:
            runs.append((start, f))
            start, anchor = f, track[f]
    runs.append((start, track.size))
    return runs


# --------------------------------------------------------------------------------------------
# recording conditions and output


def _apply_condition(
    voice: np.ndarray,
    active: np.ndarray,
    condition: str,
    fmt: _Format,
    rng: np.random.Generator,
) -> np.ndarray:
    """Apply the recording condition and return float32 audio shaped for `fmt`."""
    if condition == "noisy":
        speech_power = np.mean(voice[active] ** 2) if active.any() else np.mean(voice**2)
        noise = _noise(voice.size, rng)
        snr_db = rng.uniform(5.0, 20.0)
        noise *= np.sqrt(speech_power / (np.mean(noise**2) * 10 ** (snr_db / 10)))
        voice = voice + noise
    audio = _resample(voice, _SYNTH_SR, fmt.sample_rate)
    if condition == "telephone":
        # Handset and line: the 300-3400 Hz voice band, a little line hiss.
        audio = sosfilt(_butter_sos(4, (300, 3400), "bandpass", fmt.sample_rate), audio)
        audio += rng.normal(0.0, 10 ** (-45 / 20) * np.std(audio), audio.size)
    # Recording levels differ between clips; peak between -12 and -3 dBFS.
    audio *= 10 ** (rng.uniform(-12.0, -3.0) / 20) / (np.max(np.abs(audio)) + 1e-12)
    if fmt.channels == 2:
        # Two microphones: the right one a little further away (0.3 ms later, quieter), with
        # its own self-noise, so the channels are correlated but not identical.
        delay = int(round(3e-4 * fmt.sample_rate))
        right = 0.8 * np.concatenate([np.zeros(delay), audio[: audio.size - delay]])
        right += rng.normal(0.0, 1e-4, audio.size)
        audio = np.stack([audio, right], axis=1)
    return audio.astype(np.float32)


def _noise(n: int, rng: np.random.Generator) -> np.ndarray:
    kind = rng.choice(["pink", "car", "hum"])
    white = rng.standard_normal(n)
    if kind == "pink":
        # Kellet/Voss-style 1/f approximation (Paul Kellet's economy filter).
        b = [0.049922035, -0.095993537, 0.050612699, -0.004408786]
        a = [1.0, -2.494956002, 2.017265875, -0.522189400]
        return lfilter(b, a, white)
    if kind == "car":
        # Engine and road noise: most energy below a few hundred hertz.
        return sosfilt(_butter_sos(2, 300, "lowpass", _SYNTH_SR), white) + 0.05 * white
    # Mains hum with harmonics plus broadband hiss.
    t = np.arange(n) / _SYNTH_SR
    mains = rng.choice([50.0, 60.0])
    hum = np.zeros(n)
    for h in (1, 2, 3, 5):
        hum += np.sin(2 * np.pi * mains * h * t + rng.uniform(0, 2 * np.pi)) / h
    return hum + 0.5 * white


@lru_cache(maxsize=None)
def _butter_sos(order: int, cutoff: float | tuple[float, float], btype: str, fs: int) -> np.ndarray:
    # Cached: the same handful of filters is designed for every clip otherwise.
    return butter(order, cutoff, btype=btype, fs=fs, output="sos")


def _resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    if sr_in == sr_out:
        return x.copy()
    g = np.gcd(sr_in, sr_out)
    return resample_poly(x, sr_out // g, sr_in // g)
