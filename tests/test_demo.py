"""Tests of the synthetic demo corpus (grv_batch.demo)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from grv_batch.demo import METADATA_COLUMNS, make_demo_corpus

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default corpus, generated once for the module (it is what users get)."""
    return make_demo_corpus(tmp_path_factory.mktemp("demo"))


def _rows(meta: Path) -> list[dict[str, str]]:
    with open(meta, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _audio_files(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.suffix in AUDIO_SUFFIXES
    }


def _median_f0(audio: np.ndarray, sr: int) -> float:
    """Median F0 in Hz of the clearly voiced 40 ms frames, by normalised autocorrelation.

    Deliberately independent of the project's pitch tracker: the test checks the corpus, not
    the pipeline.
    """
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    frame, hop = int(0.04 * sr), int(0.01 * sr)
    lag_min, lag_max = int(sr / 400), int(sr / 60)
    frames = np.lib.stride_tricks.sliding_window_view(audio, frame)[::hop]
    frames = frames - frames.mean(axis=1, keepdims=True)
    energy = (frames**2).sum(axis=1)
    # Only frames within 20 dB of the loudest: pauses and noise carry no pitch.
    frames = frames[energy > 0.01 * energy.max()]
    window = np.hanning(frame)
    spec = np.fft.rfft(frames * window, n=2 * frame, axis=1)
    ac = np.fft.irfft(np.abs(spec) ** 2, axis=1)[:, : lag_max + 1]
    ac /= ac[:, :1] + 1e-12
    # Divide out the window's own autocorrelation (Boersma 1993), which otherwise makes long
    # lags (low voices) look less periodic than short ones.
    wac = np.fft.irfft(np.abs(np.fft.rfft(window, n=2 * frame)) ** 2)[: lag_max + 1]
    ac /= wac / wac[0]
    lags = lag_min + np.argmax(ac[:, lag_min : lag_max + 1], axis=1)
    strength = ac[np.arange(len(ac)), lags]
    voiced = strength > 0.5
    assert voiced.sum() >= 10, "too few voiced frames to estimate F0"
    return float(np.median(sr / lags[voiced]))


def test_metadata_matches_files_one_to_one(corpus: Path) -> None:
    root = corpus.parent
    rows = _rows(corpus)
    assert corpus.name == "metadata.csv"
    assert tuple(rows[0].keys()) == METADATA_COLUMNS
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) == 24 * 3
    assert set(paths) == _audio_files(root)
    assert {r["gender"] for r in rows} == {"female", "male"}
    assert {r["condition"] for r in rows} == {"clean", "noisy", "telephone"}
    assert {r["pitch_band"] for r in rows} <= {"low", "mid", "high"}
    assert all(r["age_group"] for r in rows)
    # Files are nested per speaker (and deeper for telephone clips).
    assert all(p.split("/")[0] == r["speaker_id"] for p, r in zip(paths, rows))
    assert any(p.count("/") >= 2 for p in paths)
    # Gender and the per-speaker columns are constant per speaker.
    per_speaker: dict[str, set[tuple[str, str, str]]] = {}
    for r in rows:
        per_speaker.setdefault(r["speaker_id"], set()).add(
            (r["gender"], r["pitch_band"], r["age_group"])
        )
    assert len(per_speaker) == 24
    assert all(len(v) == 1 for v in per_speaker.values())


def test_every_file_decodes_with_expected_format(corpus: Path) -> None:
    root = corpus.parent
    seen = set()
    for r in _rows(corpus):
        audio, sr = sf.read(root / r["path"], always_2d=True)
        info = sf.info(root / r["path"])
        seen.add((info.format, sr, audio.shape[1]))
        assert 2.0 <= audio.shape[0] / sr <= 6.0 + 1e-3, r["path"]
        assert np.isfinite(audio).all()
        peak = np.abs(audio).max()
        assert 0.1 < peak <= 1.0, r["path"]
        if r["condition"] == "telephone":
            assert (info.format, sr) == ("WAV", 8000)
    # Mixed formats and rates, and exactly one stereo file (48 kHz WAV).
    assert {("WAV", 16000, 1), ("FLAC", 44100, 1), ("OGG", 22050, 1), ("WAV", 8000, 1)} <= seen
    stereo = [k for k in seen if k[2] == 2]
    assert stereo == [("WAV", 48000, 2)]


def test_stereo_file_has_two_correlated_channels(corpus: Path) -> None:
    root = corpus.parent
    stereo = [r for r in _rows(corpus) if sf.info(root / r["path"]).channels == 2]
    assert len(stereo) == 1
    audio, sr = sf.read(root / stereo[0]["path"])
    assert sr == 48000 and audio.shape[1] == 2
    left, right = audio[:, 0], audio[:, 1]
    assert not np.allclose(left, right)
    # Same voice, slightly delayed on the right: strongly correlated at a small lag.
    lag = int(round(3e-4 * sr))
    assert np.corrcoef(left[:-lag], right[lag:])[0, 1] > 0.9


def test_female_voices_have_higher_f0(corpus: Path) -> None:
    root = corpus.parent
    f0 = {"female": [], "male": []}
    for r in _rows(corpus):
        if r["condition"] == "telephone":
            continue  # the fundamental is filtered out below 300 Hz; not a fair F0 test
        audio, sr = sf.read(root / r["path"])
        f0[r["gender"]].append(_median_f0(audio, sr))
    female, male = np.median(f0["female"]), np.median(f0["male"])
    assert 160 < female < 260
    assert 85 < male < 160
    assert female > male * 1.3
    # A few overlapping speakers exist by design: not every female clip is above every male.
    assert min(f0["female"]) < max(f0["male"]) * 1.15


def test_telephone_clips_are_band_limited(corpus: Path) -> None:
    root = corpus.parent
    r = next(r for r in _rows(corpus) if r["condition"] == "telephone")
    audio, sr = sf.read(root / r["path"])
    power = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(audio.size, 1 / sr)
    in_band = power[(freqs >= 300) & (freqs <= 3400)].sum()
    assert in_band / power.sum() > 0.95


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = make_demo_corpus(tmp_path / "a", n_speakers=4, clips_per_speaker=3, seed=7)
    b = make_demo_corpus(tmp_path / "b", n_speakers=4, clips_per_speaker=3, seed=7)
    c = make_demo_corpus(tmp_path / "c", n_speakers=4, clips_per_speaker=3, seed=8)
    assert a.read_bytes() == b.read_bytes()
    rows = _rows(a)
    assert len(rows) == 12
    differs = False
    for r in rows:
        xa, sra = sf.read(a.parent / r["path"])
        xb, srb = sf.read(b.parent / r["path"])
        assert sra == srb
        # Decoded samples are identical; OGG bytes are not (libsndfile's random stream serial).
        np.testing.assert_array_equal(xa, xb)
        if r["path"].endswith((".wav", ".flac")):
            assert (a.parent / r["path"]).read_bytes() == (b.parent / r["path"]).read_bytes()
        xc_path = c.parent / r["path"]
        if xc_path.exists():
            xc, _ = sf.read(xc_path)
            differs |= xc.shape != xa.shape or not np.array_equal(xc, xa)
    assert differs, "a different seed should give different audio"


def test_rejects_unusable_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_speakers"):
        make_demo_corpus(tmp_path, n_speakers=1)
    with pytest.raises(ValueError, match="clips_per_speaker"):
        make_demo_corpus(tmp_path, clips_per_speaker=0)
