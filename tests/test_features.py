"""Known-answer tests of the feature families and of the whole analysis."""

from __future__ import annotations

import io
import math
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
from _audio import noise, silence, tone, voice, vowel
from pydantic import ValidationError

from grv_batch.features import (
    FEATURE_COLUMNS,
    AnalysisParams,
    FeatureParams,
    analyze_file,
    analyze_window,
    feature_columns,
    iter_windows,
)
from grv_batch.features.formants import formant_features, formant_tracks
from grv_batch.features.mel128 import mel128
from grv_batch.features.pitch import yin
from grv_batch.stages.decode import DecodeError
from grv_batch.stages.segment import SegmentParams

SR = 16000


def _frames(dur_s: float, hop: int = 160) -> np.ndarray:
    return np.arange(10, int(dur_s * SR / hop) - 10)


# --- pitch --------------------------------------------------------------------------------------


@pytest.mark.parametrize("f0", [120.0, 220.0])
def test_yin_tone_known_answer(f0: float) -> None:
    hz, aper = yin(tone(f0, 1.0), SR, 160, _frames(1.0))
    assert np.isfinite(hz).all() and (aper < 0.1).all()
    assert np.median(hz) == pytest.approx(f0, abs=0.5)
    assert np.abs(hz - f0).max() < 2.0  # no octave errors anywhere


@pytest.mark.parametrize("f0", [120.0, 220.0])
def test_pitch_of_tone_and_vowel_through_analysis(f0: float) -> None:
    for y in (tone(f0, 2.0), vowel(f0, 2.0)):
        f = analyze_window(y, SR).features
        assert f["f0_p50"] == pytest.approx(f0, abs=1.5)
        assert f0 - 2 < f["f0_p10"] <= f["f0_p90"] < f0 + 2
        assert f["voiced_share"] > 0.9 and f["f0_std_st"] < 0.2


def test_yin_noise_is_unvoiced() -> None:
    hz, _ = yin(noise(1.0, amp=0.3), SR, 160, _frames(1.0))
    assert np.isnan(hz).mean() > 0.9


# --- formants -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "formants", [(700.0, 1220.0, 2600.0), (300.0, 2300.0, 3000.0), (500.0, 900.0, 2500.0)]
)
def test_formants_of_synthetic_vowel(formants: tuple[float, float, float]) -> None:
    y = vowel(120.0, 1.0, formants=formants)
    f, b = formant_tracks(y, SR, 160, _frames(1.0))
    feats = formant_features(f, b)
    for i, target in enumerate(formants, start=1):
        assert feats[f"f{i}_hz"] == pytest.approx(target, rel=0.1)
    assert feats["f2_f1_ratio"] == pytest.approx(formants[1] / formants[0], rel=0.15)
    assert feats["formant_dispersion_hz"] == pytest.approx((formants[2] - formants[0]) / 2, rel=0.15)


def test_formants_through_analysis() -> None:
    f = analyze_window(vowel(120.0, 2.0), SR).features
    assert f["f1_hz"] == pytest.approx(700, rel=0.1)
    assert f["f2_hz"] == pytest.approx(1220, rel=0.1)
    assert f["f3_hz"] == pytest.approx(2600, rel=0.1)
    assert 0 < f["f1_bw_hz"] < 300 and f["vtl_cm"] == pytest.approx(35000 / (2 * 950), rel=0.15)


def test_formant_features_without_frames_are_nan() -> None:
    f, b = formant_tracks(tone(100, 0.5), SR, 160, np.array([], dtype=int))
    assert f.shape == (0, 3)
    assert all(math.isnan(v) for v in formant_features(f, b).values())


# --- mel128 -------------------------------------------------------------------------------------


# librosa.load asks audioread for its backends, which imports the stdlib aifc/sunau (deprecated)
@pytest.mark.filterwarnings("ignore:'(aifc|sunau|audioop)' is deprecated:DeprecationWarning")
@pytest.mark.parametrize(("sr", "channels"), [(44100, 2), (16000, 1), (22050, 1)])
def test_mel128_equals_original_recipe(tmp_path: Path, sr: int, channels: int) -> None:
    y = voice(2.0, sr=sr, seed=sr)
    data = np.stack([y, 0.5 * y], axis=1) if channels == 2 else y
    path = tmp_path / "clip.wav"
    sf.write(path, data, sr, subtype="PCM_16")
    ref_y, ref_sr = librosa.load(path)
    ref = librosa.feature.melspectrogram(y=ref_y, sr=ref_sr, n_fft=2048, hop_length=512).mean(axis=1)
    got = np.asarray(analyze_file(path).features["mel128"])
    assert got.shape == (128,)
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-9)


def test_mel128_frame_weighted_pooling(tmp_path: Path) -> None:
    y = voice(25.0, seed=5)
    path = tmp_path / "clip.wav"
    sf.write(path, y, SR, subtype="FLOAT")
    params = AnalysisParams(segment=SegmentParams(window_s=10.0, min_tail_s=0.0))
    fa = analyze_file(path, params)
    assert len(fa.windows) == 3
    w = np.array([win.mel128_frames for win in fa.windows], float)
    expected = (w[:, None] * np.stack([win.mel128 for win in fa.windows])).sum(0) / w.sum()
    np.testing.assert_allclose(fa.features["mel128"], expected, rtol=1e-6)
    whole, _ = mel128(y, SR)  # windows only differ from the whole-file recipe at their edges
    np.testing.assert_allclose(fa.features["mel128"], whole, rtol=0.05, atol=1e-5 * whole.max())


# --- whole analysis -----------------------------------------------------------------------------


def test_feature_columns_stable() -> None:
    assert FEATURE_COLUMNS == feature_columns(20)
    assert len(FEATURE_COLUMNS) == len(set(FEATURE_COLUMNS)) == 24 + 80
    assert FEATURE_COLUMNS[:5] == ("speech_s", "speech_ratio", "snr_db", "clipping_share",
                                   "bandwidth_hz")
    assert "mfcc_01_mean" in FEATURE_COLUMNS and "dmfcc_20_std" in FEATURE_COLUMNS
    assert {"f0_p10", "f0_p50", "f0_p90", "f0_std_st", "voiced_share"} <= set(FEATURE_COLUMNS)


def test_analyze_file_single_window(tmp_path: Path) -> None:
    y = voice(6.0, sr=22050, f0=200.0, seed=2)
    path = tmp_path / "v.flac"
    sf.write(path, y, 22050, format="FLAC")
    with open(path, "rb") as fh:
        fa = analyze_file(fh)
    assert fa.info.sample_rate == 22050 and fa.info.duration_s == pytest.approx(6.0)
    assert len(fa.windows) == 1
    w = fa.windows[0]
    assert set(w.features) == set(FEATURE_COLUMNS)
    assert w.logmel is not None and w.logmel.dtype == np.float32
    assert w.logmel.shape == (64, 1 + 6 * SR // 160)
    assert w.mel128.shape == (128,) and w.mel128.dtype == np.float32
    # single window: the file row is exactly the window's values
    for c in FEATURE_COLUMNS:
        assert fa.features[c] == pytest.approx(w.features[c], nan_ok=True)
    f = fa.features
    assert f["f0_p50"] == pytest.approx(200, rel=0.08)
    assert 4.0 < f["speech_s"] <= 6.0 and f["snr_db"] > 20 and f["clipping_share"] == 0
    finite = [c for c in FEATURE_COLUMNS if not math.isfinite(f[c])]
    assert finite == []


def test_a_dc_offset_changes_neither_denoising_nor_the_speech_measures() -> None:
    """A DC offset filled the quiet blocks that denoising learns the noise from: the stage then
    did nothing, the SNR read 0 dB and every pause counted as speech."""
    y = voice(6.0, SR, f0=120.0) * np.float32(0.3 / 0.5)
    clean = analyze_window(y, SR).features
    offset = analyze_window(y + np.float32(0.5), SR).features
    assert offset["snr_db"] == pytest.approx(clean["snr_db"], abs=0.5)
    assert offset["speech_s"] == pytest.approx(clean["speech_s"], abs=0.05)
    assert offset["f0_p50"] == pytest.approx(clean["f0_p50"], abs=1.0)


def test_silence_gives_nan_features_not_errors() -> None:
    w = analyze_window(silence(3.0), SR)
    assert w.speech_s == 0 and w.features["speech_ratio"] == 0
    for c in ("f0_p50", "f1_hz", "mfcc_01_mean", "spectral_centroid_hz", "snr_db"):
        assert math.isnan(w.features[c])
    assert np.isfinite(w.logmel).all() and np.isfinite(w.mel128).all()


def test_too_little_speech_gives_nan_features() -> None:
    y = np.concatenate([silence(1.0), tone(150, 0.3), silence(1.0)])
    w = analyze_window(y, SR)
    assert 0.2 < w.speech_s < 0.5 and w.features["speech_s"] == w.speech_s
    assert math.isnan(w.features["f0_p50"]) and math.isnan(w.features["mfcc_01_mean"])


def test_unvoiced_speech_gives_nan_pitch() -> None:
    y = np.concatenate([silence(0.5), noise(2.0, amp=0.3), silence(0.5)])
    f = analyze_window(y, SR).features
    assert f["speech_s"] > 1.5
    assert math.isnan(f["f0_p50"]) and math.isnan(f["f1_hz"]) and f["voiced_share"] < 0.1
    assert math.isfinite(f["mfcc_01_mean"])


@pytest.mark.parametrize("kind", ["white", "brown", "hum"])
@pytest.mark.parametrize("level_dbfs", [-60.0, -20.0])
def test_steady_noise_window_has_no_speech(kind: str, level_dbfs: float) -> None:
    """Room tone before an interview: normalisation lifts it to full scale and energy alone
    takes it for speech; nearly no voiced frame says it is not."""
    rng = np.random.default_rng(0)
    n = 30 * SR
    if kind == "white":
        y = rng.standard_normal(n)
    elif kind == "brown":
        y = np.cumsum(rng.standard_normal(n))
        y -= np.convolve(y, np.ones(801) / 801, mode="same")  # no drift, still brown below 20 Hz
    else:  # mains hum with its harmonics, plus a little hiss
        t = np.arange(n) / SR
        y = sum(np.sin(2 * np.pi * 50 * k * t) / k for k in (1, 2, 3)) + 0.01 * rng.standard_normal(n)
    y = (y / np.sqrt(np.mean(y**2)) * 10 ** (level_dbfs / 20)).astype(np.float32)
    w = analyze_window(y, SR)
    assert w.speech_s == 0 and w.features["speech_ratio"] == 0
    assert math.isnan(w.features["f0_p50"]) and math.isnan(w.features["mfcc_01_mean"])


def test_steady_vowel_without_pauses_is_still_speech() -> None:
    w = analyze_window(vowel(120.0, 3.0, SR), SR)
    assert w.speech_s > 2.5 and abs(w.features["f0_p50"] - 120.0) < 3.0


def test_clipping_share() -> None:
    y = np.clip(tone(150, 2.0, amp=2.0), -1, 1)
    assert analyze_window(y, SR).features["clipping_share"] > 0.3
    assert analyze_window(tone(150, 2.0), SR).features["clipping_share"] == 0


def test_long_file_multiple_windows_pooled(tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    with sf.SoundFile(path, "w", 8000, 1, subtype="PCM_16") as f:
        for i in range(20):  # 10 minutes: 30 s blocks, voice only in the first minute
            f.write(voice(30.0, sr=8000, seed=i) if i < 2 else silence(30.0, sr=8000))
    params = AnalysisParams(features=FeatureParams(logmel=False))
    windows = list(iter_windows(path, params))
    assert [w.start_s for w in windows] == [30.0 * i for i in range(20)]
    assert all(w.logmel is None for w in windows)
    fa = analyze_file(path, params)
    assert fa.info.duration_s == pytest.approx(600.0)
    speech = np.array([w.speech_s for w in fa.windows])
    assert speech[:2].min() > 20 and speech[2:].max() == 0
    assert fa.features["speech_s"] == pytest.approx(speech.sum())
    assert fa.features["speech_ratio"] == pytest.approx(speech.sum() / 600, rel=0.01)
    expected = np.average([w.features["f0_p50"] for w in fa.windows[:2]], weights=speech[:2])
    assert fa.features["f0_p50"] == pytest.approx(expected)


def test_bad_input_raises_decode_error() -> None:
    with pytest.raises(DecodeError, match="empty file"):
        analyze_file(io.BytesIO(b""))
    with pytest.raises(DecodeError, match="not a readable audio file"):
        analyze_file(io.BytesIO(b"RIFF nonsense" * 10))


def test_params_validation() -> None:
    with pytest.raises(ValidationError):
        FeatureParams(f0_min_hz=300, f0_max_hz=200)
    with pytest.raises(ValidationError):
        AnalysisParams(features={"n_mfcc": 20, "bogus": 1})
    p = AnalysisParams.model_validate({"resample": {"quality": "VHQ"}, "denoise": {"enabled": False}})
    assert p.resample.quality == "VHQ" and not p.denoise.enabled and p.features.n_mfcc == 20
    with pytest.raises(ValueError):
        analyze_window(np.zeros((2, 100), np.float32), SR)


def test_spectral_shape_matches_librosa() -> None:
    from grv_batch.features.spectral import power_spectrogram, spectral_features

    power = power_spectrogram(voice(3.0, seed=7), 512, 160)
    got = spectral_features(power, SR, 512)
    mag = np.sqrt(power)
    assert got["spectral_centroid_hz"] == pytest.approx(
        librosa.feature.spectral_centroid(S=mag, sr=SR, n_fft=512).mean(), rel=1e-4
    )
    assert got["spectral_bandwidth_hz"] == pytest.approx(
        librosa.feature.spectral_bandwidth(S=mag, sr=SR, n_fft=512).mean(), rel=1e-4
    )
    assert got["spectral_rolloff_hz"] == pytest.approx(
        librosa.feature.spectral_rolloff(S=mag, sr=SR, n_fft=512).mean(), rel=1e-4
    )
    flatness = librosa.feature.spectral_flatness(S=mag).mean()
    assert got["spectral_flatness"] == pytest.approx(flatness, rel=1e-3)


@pytest.mark.parametrize("n", [1, 10, 300, 5000])
@pytest.mark.parametrize("sr", [8000, 44100])
def test_tiny_windows_do_not_fail(n: int, sr: int) -> None:
    w = analyze_window(noise(n / sr, sr=sr, amp=0.1), sr)
    assert w.duration_s == pytest.approx(n / sr)
    assert w.logmel.shape[0] == 64 and w.mel128_frames >= 1 and np.isfinite(w.mel128).all()


@pytest.mark.parametrize("n", [100, 511, 512, 16000, 16161])
@pytest.mark.parametrize(("n_fft", "hop"), [(512, 160), (2048, 512)])
def test_power_spectrogram_equals_librosa(n: int, n_fft: int, hop: int) -> None:
    from grv_batch.features.spectral import power_spectrogram

    y = noise(n / 16000, amp=0.3, seed=n)[:n]
    padded = np.pad(y, (0, max(n_fft - n, 0)))  # librosa warns below one frame; zeros change nothing
    expected = np.abs(librosa.stft(padded, n_fft=n_fft, hop_length=hop, pad_mode="constant")) ** 2
    got = power_spectrogram(y, n_fft, hop)
    assert got.shape == (n_fft // 2 + 1, 1 + n // hop) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected[:, : got.shape[1]], rtol=2e-4, atol=1e-6 * expected.max())


@pytest.mark.parametrize(("n", "width"), [(3, 3), (9, 3), (9, 9), (10, 5), (10, 9), (301, 3), (301, 9)])
def test_delta_equals_librosa(n: int, width: int) -> None:
    from grv_batch.features.mfcc import _delta

    x = np.random.default_rng(n).standard_normal((20, n)).astype(np.float32) * 30
    expected = librosa.feature.delta(x, width=width, axis=-1, mode="interp")
    np.testing.assert_allclose(_delta(x, width), expected, rtol=0, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize(
    "args", [(16000, 512, 64, 50.0, 8000.0), (16000, 512, 40, 0.0, 8000.0), (22050, 2048, 128, 0.0, 11025.0)]
)
def test_mel_filterbank_is_librosas(args: tuple) -> None:
    from grv_batch.features.spectral import mel_filterbank

    sr, n_fft, n_mels, fmin, fmax = args
    expected = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    np.testing.assert_array_equal(mel_filterbank(*args), expected)


def test_channel_choice_through_analysis(tmp_path: Path) -> None:
    from grv_batch.stages.decode import DecodeParams

    path = tmp_path / "two_talkers.wav"
    sf.write(path, np.stack([vowel(120.0, 2.0), vowel(220.0, 2.0)], axis=1), SR)
    for channel, f0 in ((0, 120.0), (1, 220.0)):
        params = AnalysisParams(decode=DecodeParams(channel=channel))
        assert analyze_file(path, params).features["f0_p50"] == pytest.approx(f0, abs=1.5)


def test_bandwidth_is_where_the_spectrum_ends_whatever_the_sample_rate():
    import soxr
    from scipy import signal

    from grv_batch.features.quality import bandwidth_hz
    from grv_batch.features.spectral import power_spectrogram

    rng = np.random.default_rng(0)

    def measured(y: np.ndarray) -> float:
        return bandwidth_hz(power_spectrogram(y.astype(np.float32), 512, 160).mean(axis=1), 16000)

    wideband = rng.standard_normal(3 * 16000)
    assert measured(wideband) == 8000.0                                   # up to Nyquist
    telephone = soxr.resample(rng.standard_normal(3 * 8000), 8000, 16000)  # 8 kHz stored at 16 kHz
    assert 3800.0 <= measured(telephone) <= 4100.0
    b, a = signal.butter(8, 5000, fs=16000)                               # -40 dB by ~6.2 kHz
    assert 5000.0 < measured(signal.lfilter(b, a, wideband)) < 6500.0
    assert math.isnan(bandwidth_hz(np.zeros(257), 16000))
    # through the whole analysis: the same voice is narrowband from an 8 kHz source only
    for sr, low, high in ((8000, 3000.0, 4500.0), (44100, 7000.0, 8000.0)):
        y = voice(3.0, sr=sr, f0=150.0)
        assert low <= analyze_window(y, sr).features["bandwidth_hz"] <= high
