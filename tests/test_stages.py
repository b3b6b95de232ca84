"""Tests of the audio stages: decode, resample, denoise, normalise, speech activity, segment."""

from __future__ import annotations

import io
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from _audio import noise, silence, tone, voice, vowel
from pydantic import ValidationError

from grv_batch.stages.decode import DecodeError, DecodeParams, iter_blocks, probe
from grv_batch.stages.denoise import DenoiseParams, denoise
from grv_batch.stages.normalize import NormalizeParams, normalize
from grv_batch.stages.resample import ResampleParams, StreamResampler, iter_resampled, resample
from grv_batch.stages.segment import SegmentParams, iter_windows
from grv_batch.stages.speech import DIGITAL_SILENCE_DB, SpeechParams, speech_activity

SR = 16000


def _read_all(source, **kw) -> np.ndarray:
    return np.concatenate(list(iter_blocks(source, DecodeParams(**kw))))


# --- decode -------------------------------------------------------------------------------------


def test_stereo_mixdown_halves_one_sided_tone(tmp_path: Path) -> None:
    left = tone(440, 1.0, amp=0.5)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, np.zeros_like(left)], axis=1), SR, subtype="FLOAT")
    info = probe(path)
    assert (info.channels, info.sample_rate, info.frames) == (2, SR, left.size)
    assert info.format == "WAV" and info.duration_s == pytest.approx(1.0)
    y = _read_all(path)
    assert y.dtype == np.float32 and y.ndim == 1
    np.testing.assert_allclose(y, left / 2, atol=1e-7)


def test_stereo_in_opposite_phase_is_not_cancelled(tmp_path: Path) -> None:
    """One channel wired in opposite phase: the mean would be silence; the mix is the voice."""
    x = np.concatenate([silence(0.5), voice(2.5)])
    path = tmp_path / "inverted.wav"
    sf.write(path, np.stack([x, -x], axis=1), SR, subtype="FLOAT")
    np.testing.assert_allclose(_read_all(path), x, atol=1e-7)
    # an ordinary stereo pair (uncorrelated noise in one channel) keeps the mean
    other = noise(3.0, amp=0.05, seed=9)
    sf.write(path, np.stack([x, other], axis=1), SR, subtype="FLOAT")
    np.testing.assert_allclose(_read_all(path), (x + other) / 2, atol=1e-7)
    # inverted for its first 3 s only (a jingle): the speech after it is not lost
    left = np.concatenate([x, voice(3.0, seed=4)])
    right = np.concatenate([-x, voice(3.0, seed=4)])
    sf.write(path, np.stack([left, right], axis=1), SR, subtype="FLOAT")
    np.testing.assert_allclose(_read_all(path), left, atol=1e-7)


def test_blocks_are_bounded_and_complete(tmp_path: Path) -> None:
    x = noise(2.5, amp=0.1)
    path = tmp_path / "n.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    blocks = list(iter_blocks(path, DecodeParams(block_s=1.0)))
    assert [b.size for b in blocks] == [SR, SR, SR // 2]
    np.testing.assert_array_equal(np.concatenate(blocks), x)


def test_int_samples_and_file_object(tmp_path: Path) -> None:
    x = tone(300, 0.5, amp=0.25)
    path = tmp_path / "int.wav"
    sf.write(path, x, SR, subtype="PCM_16")
    with open(path, "rb") as fh:
        info = probe(fh)
        y = _read_all(fh)  # probe must not leave the file object at the end
    assert info.subtype == "PCM_16"
    np.testing.assert_allclose(y, x, atol=1 / 2**15)
    y2 = _read_all(io.BytesIO(path.read_bytes()))
    np.testing.assert_array_equal(y, y2)


@pytest.mark.parametrize(
    ("fmt", "subtype", "ext", "atol"),
    [
        ("FLAC", "PCM_16", "flac", 1e-4),
        ("AIFF", "PCM_24", "aiff", 1e-6),
        ("NIST", "PCM_16", "sph", 1e-4),
        ("OGG", "VORBIS", "ogg", None),
        ("MP3", "MPEG_LAYER_III", "mp3", None),
    ],
)
def test_format_round_trips(tmp_path: Path, fmt: str, subtype: str, ext: str, atol) -> None:
    x = tone(440, 1.0, sr=SR, amp=0.5)
    path = tmp_path / f"t.{ext}"
    sf.write(path, x, SR, format=fmt, subtype=subtype)
    info = probe(path)
    # MP3 is decoded by FFmpeg (test_mp3_read_in_pieces_is_the_whole_file_decode)
    assert info.format == (f"FFMPEG:{fmt}" if ext == "mp3" else fmt) and info.sample_rate == SR
    y = _read_all(path)
    if atol is not None:  # lossless
        np.testing.assert_allclose(y, x, atol=atol)
    else:  # lossy codecs add delay/padding: compare level and frequency instead
        assert abs(y.size - x.size) < 0.2 * SR
        assert np.sqrt(np.mean(y**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.15)
        spec = np.abs(np.fft.rfft(y[SR // 10 : SR // 10 + 8000]))
        assert np.fft.rfftfreq(8000, 1 / SR)[np.argmax(spec)] == pytest.approx(440, abs=4)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(DecodeError, match=r"empty file \(0 bytes\)"):
        probe(path)
    with pytest.raises(DecodeError, match="empty file"):
        list(iter_blocks(io.BytesIO(b"")))


def test_text_named_wav(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 20)
    with pytest.raises(DecodeError, match="not a readable audio file: "):
        probe(path)
    with pytest.raises(DecodeError, match="not a readable audio file"):
        list(iter_blocks(path))


def test_wav_whose_writer_never_filled_in_its_sizes_is_read_to_the_end(tmp_path: Path) -> None:
    """A recorder stopped hard leaves the data chunk's size at 0: libsndfile then reports no
    samples, FFmpeg reads what is there."""
    y = (0.3 * np.sin(2 * np.pi * 220 * np.arange(2 * SR) / SR)).astype(np.float32)
    path = tmp_path / "unfinished.wav"
    sf.write(path, y, SR, subtype="PCM_16")
    raw = bytearray(path.read_bytes())
    at = raw.index(b"data") + 4
    raw[at:at + 4] = (0).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    decoded = np.concatenate(list(iter_blocks(path)))
    assert decoded.size == y.size
    np.testing.assert_allclose(decoded, y, atol=1e-4)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="file not found"):
        probe(tmp_path / "nope.wav")


def test_header_only_wav(tmp_path: Path) -> None:
    path = tmp_path / "header.wav"
    sf.write(path, np.zeros(0, np.float32), SR, subtype="PCM_16")
    assert path.stat().st_size > 0
    with pytest.raises(DecodeError, match=r"no audio samples \(header only\)"):
        probe(path)
    with pytest.raises(DecodeError, match="header only"):
        list(iter_blocks(path))


def test_truncated_flac(tmp_path: Path) -> None:
    path = tmp_path / "cut.flac"
    sf.write(path, noise(5.0, amp=0.3), SR, format="FLAC")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DecodeError, match="truncated or corrupt audio after"):
        list(iter_blocks(path, DecodeParams(block_s=1.0)))


@pytest.mark.parametrize("fmt", ["WAV", "AIFF", "WAVEX"])
def test_truncated_pcm_container(tmp_path: Path, fmt: str) -> None:
    # libsndfile reads these silently up to the cut; only its header log shows the mismatch
    path = tmp_path / f"cut.{fmt.lower()}"
    sf.write(path, noise(4.0, amp=0.3), SR, format=fmt, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DecodeError, match="truncated or corrupt audio: the header declares"):
        probe(path)
    with pytest.raises(DecodeError, match="truncated or corrupt audio"):
        list(iter_blocks(path))


@pytest.mark.parametrize("size", [0xFFFFFFFF, 0x7FFFF000, 0x7FFFFF00])
def test_streamed_wav_with_placeholder_size_is_read(tmp_path: Path, size: int) -> None:
    # writers to a pipe never finalise the header (0xFFFFFFFF; SoX 0x7FFFF000; arecord
    # 0x7FFFFF00): all samples are still there
    path = tmp_path / "stream.wav"
    x = noise(2.0, amp=0.3)
    sf.write(path, x, SR, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    at = data.find(b"data")
    data[at + 4 : at + 8] = size.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    assert sum(b.size for b in iter_blocks(path)) == x.size


def test_wav_a_few_bytes_short_is_read(tmp_path: Path) -> None:
    # a partial last frame is not worth losing the file for
    path = tmp_path / "short.wav"
    sf.write(path, noise(2.0, amp=0.3), SR, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[:-3])
    assert sum(b.size for b in iter_blocks(path)) >= 2 * SR - 2


def test_gsm_wav_missing_seconds_is_truncated_but_a_partial_frame_is_not(tmp_path: Path) -> None:
    # GSM 6.10 packs a second into 1,625 bytes: 3,000 bytes missing are almost 2 s of audio
    path = tmp_path / "gsm.wav"
    sf.write(path, voice(20.0, sr=8000), 8000, subtype="GSM610")
    data = path.read_bytes()
    path.write_bytes(data[:-3000])
    with pytest.raises(DecodeError, match="truncated or corrupt audio: the header declares"):
        probe(path)
    path.write_bytes(data[:-30])  # part of the last 65-byte frame
    assert probe(path).duration_s == pytest.approx(20.0, abs=0.1)


def test_nan_float_wav(tmp_path: Path) -> None:
    x = tone(200, 1.0)
    x[SR // 2] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    with pytest.raises(DecodeError, match=r"non-finite samples \(NaN or inf\)"):
        list(iter_blocks(path))


def test_float_samples_far_beyond_full_scale_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.wav"
    sf.write(path, tone(200, 1.0) * 1e30, SR, subtype="FLOAT")
    with pytest.raises(DecodeError, match=r"sample values out of range \(up to 5e\+29"):
        list(iter_blocks(path))
    loud = tmp_path / "loud.wav"  # float audio a little over full scale is audio
    sf.write(loud, tone(200, 1.0) * 3.0, SR, subtype="FLOAT")
    assert np.max(np.abs(_read_all(loud))) == pytest.approx(1.5, rel=1e-3)  # tone peaks at 0.5


def test_mp3_inside_a_wav_is_decoded_by_ffmpeg_to_its_end(tmp_path: Path) -> None:
    # some telephone and dictation recorders write MPEG audio in a RIFF/WAV container; libsndfile
    # only estimates its frame count, which made a whole file look truncated
    from _audio import write_av

    for sr in (8000, 44100):
        path = tmp_path / f"mp3-{sr}.wav"
        write_av(path, voice(20.0, sr=sr), sr, "libmp3lame")
        assert sf.info(path).subtype == "MPEG_LAYER_III"
        info = probe(path)
        y = _read_all(path)
        assert info.format.startswith("FFMPEG:") and info.sample_rate == sr
        assert 20.0 * sr <= y.size <= 20.0 * sr + 4096


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_permission_denied(tmp_path: Path) -> None:
    path = tmp_path / "locked.wav"
    sf.write(path, tone(200, 0.2), SR)
    path.chmod(0)
    try:
        with pytest.raises(DecodeError, match="cannot open: permission denied"):
            probe(path)
    finally:
        path.chmod(0o644)


def test_permission_error_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same message when the OS refuses access (simulated: tests may run as root)."""
    path = tmp_path / "locked.wav"
    sf.write(path, tone(200, 0.2), SR)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(sf, "SoundFile", refuse)
    with pytest.raises(DecodeError, match="cannot open: permission denied"):
        probe(path)


def test_mp3_frames_come_from_decoding(tmp_path: Path) -> None:
    from grv_batch.features import AnalysisParams, FeatureParams, analyze_file

    path = tmp_path / "v.mp3"
    sf.write(path, voice(3.0, sr=SR), SR, format="MP3", subtype="MPEG_LAYER_III")
    n = _read_all(path).size
    fa = analyze_file(path, AnalysisParams(features=FeatureParams(logmel=False)))
    assert fa.info.format == "FFMPEG:MP3" and fa.info.frames == n
    assert fa.info.duration_s == pytest.approx(n / SR) and fa.features["speech_s"] > 1.5


def _chirp(seconds: float, sr: int) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * (100 * t + 400 * t**2))).astype(np.float32)


@pytest.mark.parametrize("name", ["chirp.mp3", "chirp-named.wav"])
def test_mp3_read_in_pieces_is_the_whole_file_decode(tmp_path: Path, name: str) -> None:
    """libsndfile 1.2.2 decodes MP3 wrong after a read boundary (this chirp: 0.6 of full scale
    off with 1 s pieces); blocks and pieces must not change the samples, whatever the name."""
    sr = 44100
    path = tmp_path / name
    sf.write(path, _chirp(8.0, sr), sr, format="MP3", subtype="MPEG_LAYER_III")
    whole, _ = sf.read(path, dtype="float32")  # one read: no boundary
    assert probe(path).format == "FFMPEG:MP3"
    y = np.concatenate(list(iter_blocks(path, DecodeParams(block_s=3.0))))
    assert y.size == whole.size
    np.testing.assert_allclose(y, whole, atol=1e-4)


def test_mp3_with_a_damaged_frame_or_joined_with_cat_still_decodes(tmp_path: Path) -> None:
    """A damaged frame loses that frame, as libsndfile's decoder did, not the file; two MP3s joined
    with ``cat`` (stereo, then mono at another rate) decode as the first one's channels and rate."""
    import soxr

    sr = 44100
    path = tmp_path / "chirp.mp3"
    sf.write(path, _chirp(8.0, sr), sr, format="MP3", subtype="MPEG_LAYER_III")
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 600] = bytes(600)
    damaged = tmp_path / "damaged.mp3"
    damaged.write_bytes(bytes(data))
    y = np.concatenate(list(iter_blocks(damaged)))
    assert 0.97 * 8 * sr < y.size <= 8 * sr + 4096

    stereo, mono = tmp_path / "stereo.mp3", tmp_path / "mono.mp3"
    sf.write(stereo, np.stack([_chirp(3.0, sr), 0.5 * _chirp(3.0, sr)], axis=1), sr,
             format="MP3", subtype="MPEG_LAYER_III")
    sf.write(mono, soxr.resample(_chirp(3.0, sr), sr, 22050), 22050, format="MP3",
             subtype="MPEG_LAYER_III")
    joined = tmp_path / "joined.mp3"
    joined.write_bytes(stereo.read_bytes() + mono.read_bytes())
    assert probe(joined).channels == 2 and probe(joined).sample_rate == sr
    y = np.concatenate(list(iter_blocks(joined)))
    assert 6 * sr < y.size < 6 * sr + 8192


def test_decode_params_validated() -> None:
    with pytest.raises(ValidationError):
        DecodeParams(block_s=0)
    with pytest.raises(ValidationError):
        DecodeParams(blocks=3)  # unknown key


# --- resample -----------------------------------------------------------------------------------


def test_resample_rate_and_length() -> None:
    x = tone(440, 2.0, sr=44100)
    y, sr = resample(x, 44100, ResampleParams())
    assert sr == 16000 and y.dtype == np.float32
    assert y.size == pytest.approx(32000, abs=1)
    spec = np.abs(np.fft.rfft(y[1000:9000]))
    assert np.fft.rfftfreq(8000, 1 / 16000)[np.argmax(spec)] == pytest.approx(440, abs=2)
    same, sr2 = resample(y, 16000, ResampleParams())
    assert sr2 == 16000 and same is y


def test_streaming_resample_matches_one_shot() -> None:
    x = voice(3.0, sr=44100)
    blocks = np.array_split(x, 7)
    streamed = np.concatenate(list(iter_resampled(blocks, 44100, ResampleParams())))
    whole, _ = resample(x, 44100, ResampleParams())
    assert abs(streamed.size - whole.size) <= 2
    n = min(streamed.size, whole.size)
    # no clicks at block edges: the streamed signal equals the one-shot one
    np.testing.assert_allclose(streamed[:n], whole[:n], atol=2e-3)
    assert StreamResampler(16000).process(x[:100]) is not None


# --- denoise ------------------------------------------------------------------------------------


def test_denoise_reduces_noise_in_pauses() -> None:
    clean = voice(4.0)
    noisy = clean + noise(4.0, amp=0.02, seed=3)
    out = denoise(noisy, SR, DenoiseParams())
    assert out.shape == noisy.shape and out.dtype == np.float32
    pause = np.abs(clean) < 1e-3
    assert np.std(out[pause]) < 0.5 * np.std(noisy[pause])


@pytest.mark.parametrize("n", [0, 1, 10, 500, 3000])
def test_denoise_short_and_silent_input(n: int) -> None:
    out = denoise(np.zeros(n, np.float32), SR)
    assert out.shape == (n,) and not np.any(out)
    out = denoise(noise(n / SR, amp=0.1), SR)
    assert out.shape == (n,) and np.isfinite(out).all()
    assert np.array_equal(denoise(silence(3.0), SR), silence(3.0))


def test_denoise_keeps_steady_tone_and_can_be_disabled() -> None:
    x = tone(150, 2.0)
    np.testing.assert_array_equal(denoise(x, SR), x)  # no quiet stretch: nothing to learn noise from
    y = noise(1.0, amp=0.1)
    assert denoise(y, SR, DenoiseParams(enabled=False)) is not None
    np.testing.assert_array_equal(denoise(y, SR, DenoiseParams(enabled=False)), y)
    with pytest.raises(ValidationError):
        DenoiseParams(prop_decrease=1.5)


def test_denoise_matches_noisereduce() -> None:
    """The in-house stationary gating is noisereduce's, to a millionth of full scale (its transforms
    run in float32, noisereduce's in float64)."""
    import noisereduce

    from grv_batch.stages.denoise import _noise_reference

    for seed, amp in ((3, 0.02), (4, 0.002)):
        noisy = voice(4.0) + noise(4.0, amp=amp, seed=seed)
        ref = _noise_reference(noisy, SR, 12.0)
        assert ref is not None
        expected = noisereduce.reduce_noise(
            y=noisy, sr=SR, stationary=True, y_noise=ref, prop_decrease=0.9, n_fft=1024,
            hop_length=512, chunk_size=noisy.size, padding=1024, n_jobs=1,
        )  # fmt: skip
        np.testing.assert_allclose(denoise(noisy, SR), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("sr", [16000, 22050, 44100])
def test_denoise_mask_smoothing_is_noisereduces_kernel(sr: int) -> None:
    """The running-sum smoothing equals noisereduce's 2-D triangle kernel applied by fftconvolve."""
    import scipy.signal
    from noisereduce.spectralgate.base import _smoothing_filter

    from grv_batch.stages.denoise import _smooth_mask, _smoothing_widths

    above = np.random.default_rng(sr).random((57, 513)) > 0.6  # (frames, frequencies)
    wf, wt = _smoothing_widths(sr)
    kernel = _smoothing_filter(wf - 1, wt - 1)  # (frequency, time), as noisereduce builds it
    p = 0.9
    expected = scipy.signal.fftconvolve((above * p + (1 - p)).T, kernel, mode="same").T
    np.testing.assert_allclose(_smooth_mask(above, p, sr), expected, rtol=0, atol=1e-12)


def test_denoise_skip_above_snr_is_opt_in() -> None:
    clean = voice(4.0) + noise(4.0, amp=1e-4, seed=5)  # far above 30 dB
    noisy = voice(4.0) + noise(4.0, amp=0.05, seed=6)
    skip = DenoiseParams(skip_above_snr_db=30.0)
    np.testing.assert_array_equal(denoise(clean, SR, skip), clean)
    assert not np.array_equal(denoise(clean, SR), clean)  # default: always gated
    np.testing.assert_array_equal(denoise(noisy, SR, skip), denoise(noisy, SR))
    with pytest.raises(ValidationError):
        DenoiseParams(skip_above_snr_db=-1.0)


# --- normalise ----------------------------------------------------------------------------------


def test_normalize_peak_and_dc() -> None:
    x = tone(200, 1.0, amp=0.1) + 0.2
    y = normalize(x, SR, NormalizeParams(peak_dbfs=-1.0))
    assert abs(y.mean()) < 1e-3
    assert np.max(np.abs(y)) == pytest.approx(10 ** (-1 / 20), rel=1e-4)
    assert x.mean() == pytest.approx(0.2, abs=1e-3)  # input untouched


def test_normalize_loudness_and_none() -> None:
    x = tone(200, 1.0, amp=0.01)
    y = normalize(x, SR, NormalizeParams(method="loudness", loudness_dbfs=-20.0))
    assert 20 * np.log10(np.sqrt(np.mean(y**2))) == pytest.approx(-20.0, abs=0.1)
    z = normalize(x, SR, NormalizeParams(method="none", remove_dc=False))
    np.testing.assert_array_equal(z, x)


@pytest.mark.parametrize("method", ["peak", "loudness", "none"])
def test_normalize_silence_stays_silent(method: str) -> None:
    for n in (0, 1, 16000):
        y = normalize(np.zeros(n, np.float32), SR, NormalizeParams(method=method))
        assert y.shape == (n,) and not np.any(y) and np.isfinite(y).all()


# --- speech activity ----------------------------------------------------------------------------


def test_speech_activity_silence() -> None:
    act = speech_activity(silence(3.0), SR)
    assert act.speech_s == 0 and act.speech_ratio == 0
    assert act.mask.dtype == bool and act.mask.shape == (1 + 3 * SR // 160,)
    assert act.hop_s == pytest.approx(0.01)


def test_speech_activity_click() -> None:
    x = silence(3.0)
    x[SR : SR + SR // 100] = 0.9  # a 10 ms click
    assert speech_activity(x, SR).speech_s < 0.5


def test_speech_activity_tone_and_pauses() -> None:
    act = speech_activity(tone(200, 2.0), SR)
    assert act.speech_s == pytest.approx(2.0, abs=0.05)
    x = np.concatenate([silence(1.0), tone(200, 1.0), silence(1.0)]) + noise(3.0, amp=1e-3)
    act = speech_activity(x, SR)
    assert act.speech_s == pytest.approx(1.0, abs=0.05)
    t = np.flatnonzero(act.mask) * act.hop_s
    assert t.min() == pytest.approx(1.0, abs=0.03) and t.max() == pytest.approx(2.0, abs=0.03)
    with pytest.raises(ValidationError):
        SpeechParams(frame_ms=10, hop_ms=20)


def _padded(x: np.ndarray, pad_s: float = 2.0) -> np.ndarray:
    """``x`` between stretches of digital silence (a codec's silence suppression, zero padding)."""
    return np.concatenate([silence(pad_s), x, silence(pad_s)])


def test_digital_silence_is_not_the_noise_floor() -> None:
    """Padding noisy speech with zeros leaves speech activity, denoising and SNR as they were: the
    zeros would otherwise be the quietest frames, so the hiss would count as speech, denoising
    would learn a profile of nothing and the SNR would measure the zeros."""
    from grv_batch.features.quality import snr_db

    talk = np.concatenate([voice(1.5), silence(1.0), voice(1.5, seed=1)])
    noisy = talk + noise(4.0, amp=0.02, seed=11)
    pad = 2 * SR
    plain = speech_activity(noisy, SR)
    padded = speech_activity(_padded(noisy), SR)
    assert padded.speech_s == pytest.approx(plain.speech_s, abs=0.1)
    assert plain.speech_s == pytest.approx(3.0, abs=0.2)  # the second of hiss is not speech
    # the constant left where a DC offset is removed from zeros is digital silence too
    offset = _padded(noisy) + np.float32(0.25)
    offset -= offset.mean()
    assert 20 * np.log10(np.abs(offset[:pad]).min()) > DIGITAL_SILENCE_DB  # louder, yet constant
    assert speech_activity(offset, SR).speech_s == pytest.approx(plain.speech_s, abs=0.1)
    assert snr_db(_padded(noisy), SR, padded) == pytest.approx(snr_db(noisy, SR, plain), abs=1.0)

    def hiss_left_db(x: np.ndarray, y: np.ndarray) -> float:
        pauses = slice(int(1.6 * SR), int(2.4 * SR))
        return 10 * np.log10(np.mean(y[pauses] ** 2) / np.mean(x[pauses] ** 2))

    alone = hiss_left_db(noisy, denoise(noisy, SR))
    between_zeros = hiss_left_db(noisy, denoise(_padded(noisy), SR)[pad : pad + noisy.size])
    assert alone < -6.0
    assert between_zeros == pytest.approx(alone, abs=1.5)


def test_a_quiet_background_is_noise_not_digital_silence() -> None:
    """Only a stretch constant to within float rounding is digital silence: a real room at about
    +-1 LSB of 16-bit audio (-95 dBFS), or a quiet 24-bit recording, is the noise to measure."""
    from grv_batch.features import analyze_window
    from grv_batch.stages.speech import frame_levels

    room = noise(2.0, amp=1.8e-5, seed=2)  # -95 dBFS
    _, live = frame_levels(np.concatenate([silence(1.0), room]), 400, 160)
    assert not live[:90].any() and live[110:].all()
    # the same recording 40 dB quieter (24-bit or float): the same analysis
    talk = np.concatenate([voice(1.5), silence(1.0), voice(1.5, seed=1)]) + noise(4.0, amp=3e-3)
    loud, quiet = analyze_window(talk, SR).features, analyze_window(talk * 0.01, SR).features
    for name in ("speech_s", "snr_db", "spectral_centroid_hz", "f0_p50", "mfcc_02_mean"):
        assert quiet[name] == pytest.approx(loud[name], rel=0.01, abs=0.02), name


def test_short_pauses_of_digital_silence_are_not_speech() -> None:
    """Silence suppression between words: the short pauses are exact zeros. Gap filling makes
    short pauses speech, but never digital silence, which would enter the speech-frame features."""
    parts = [vowel(120 + 20 * k, 0.4) + noise(0.4, amp=2e-3, seed=k) for k in range(4)]
    talk = np.concatenate([parts[0], silence(0.1), parts[1], silence(0.15), parts[2],
                           silence(0.1), parts[3]])
    act = speech_activity(talk, SR)
    assert act.speech_s == pytest.approx(1.6, abs=0.12)  # the pauses (0.35 s) are not filled
    for start_s, dur_s in ((0.4, 0.1), (0.9, 0.15), (1.45, 0.1)):  # the pauses' interiors
        inside = slice(int(round((start_s + 0.03) / 0.01)), int(round((start_s + dur_s - 0.03) / 0.01)))
        assert not act.mask[inside].any()


def test_snr_of_speech_whose_pauses_are_digital_silence_is_high() -> None:
    """Every pause is digital silence: the pauses are clean, not the edges of speech."""
    from grv_batch.features.quality import snr_db

    clean = np.concatenate([silence(1.0), vowel(120, 0.8), silence(0.6), vowel(200, 0.8),
                            silence(1.0)])
    assert snr_db(clean, SR, speech_activity(clean, SR)) > 60.0


# --- segment ------------------------------------------------------------------------------------


def _windows(total_s: float, block_s: float, **kw) -> list[tuple[float, int]]:
    x = np.arange(int(total_s * 100), dtype=np.float32)
    blocks = np.array_split(x, max(int(total_s / block_s), 1))
    out = list(iter_windows(blocks, 100, SegmentParams(**kw)))
    np.testing.assert_array_equal(np.concatenate([w for _, w in out]), x)  # nothing lost or repeated
    return [(s, w.size) for s, w in out]


def test_segment_windows_and_tail_merge() -> None:
    assert _windows(94, 7, window_s=30, min_tail_s=5) == [(0, 3000), (30, 3000), (60, 3400)]
    assert _windows(95, 7, window_s=30, min_tail_s=5) == [(0, 3000), (30, 3000), (60, 3000), (90, 500)]
    assert _windows(100, 7, window_s=30, min_tail_s=5) == [(0, 3000), (30, 3000), (60, 3000), (90, 1000)]
    assert _windows(3, 1, window_s=30, min_tail_s=5) == [(0, 300)]  # short only piece is kept
    assert _windows(90, 45, window_s=30, min_tail_s=0) == [(0, 3000), (30, 3000), (60, 3000)]
    assert list(iter_windows([], 100)) == []


def test_long_file_bounded_memory(tmp_path: Path) -> None:
    """A 10-minute file is read in blocks and windows; memory never holds the whole file."""
    sr = 16000
    path = tmp_path / "long.wav"
    with sf.SoundFile(path, "w", sr, 1, subtype="PCM_16") as f:
        for i in range(60):
            f.write(tone(150 + i, 10.0, sr=sr, amp=0.3))
    whole_mb = 600 * sr * 4 / 2**20  # ~37 MB as float32
    tracemalloc.start()
    try:
        n = 0
        starts = []
        for start, w in iter_windows(iter_blocks(path, DecodeParams(block_s=10)), sr, SegmentParams()):
            starts.append(start)
            n += w.size
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert n == 600 * sr
    assert starts == [30.0 * i for i in range(20)]
    # a few windows and blocks in flight (~10 MB), far from the whole file
    assert peak < 0.4 * whole_mb, f"peak {peak:.1f} MB"


def test_channel_selection_keeps_one_talker(tmp_path: Path) -> None:
    # a two-party call with one talker per channel: "mix" blends them, an index keeps one
    path = tmp_path / "call.wav"
    left, right = tone(120, 1.0), tone(220, 1.0)
    sf.write(path, np.stack([left, right], axis=1), SR)
    mixed = np.concatenate(list(iter_blocks(path)))
    np.testing.assert_allclose(mixed, (left + right) / 2, atol=1e-4)
    for index, expected in ((0, left), (1, right)):
        got = np.concatenate(list(iter_blocks(path, DecodeParams(channel=index))))
        np.testing.assert_allclose(got, expected, atol=1e-4)
    with pytest.raises(DecodeError, match="channel 2 requested, but the file has 2 channels"):
        list(iter_blocks(path, DecodeParams(channel=2)))
    mono = tmp_path / "mono.wav"
    sf.write(mono, left, SR)
    np.testing.assert_allclose(np.concatenate(list(iter_blocks(mono, DecodeParams(channel=1)))), left, atol=1e-4)
    with pytest.raises(ValidationError):
        DecodeParams(channel="left")


# --- containers libsndfile cannot read, through PyAV (FFmpeg) ------------------------------------

def _peak_hz(y: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    return float(np.argmax(spec) * sr / y.size)


@pytest.mark.parametrize("ext,codec,sr", [("m4a", "aac", 44100), ("webm", "libopus", 48000),
                                          ("mp4", "aac", 22050)])
def test_av_containers_decode_with_rate_channels_and_pitch(tmp_path: Path, ext, codec, sr) -> None:
    """A 220 Hz tone on the left channel only: the stereo mix-down halves it, channel 1 is quiet."""
    from _audio import write_av

    path = tmp_path / f"tone.{ext}"
    left = tone(220.0, 2.0, sr=sr)
    write_av(path, np.stack([left, np.zeros_like(left)], axis=1), sr, codec)
    info = probe(path)
    assert info.format.startswith("FFMPEG:") and info.sample_rate == sr and info.channels == 2
    y = _read_all(path)
    # lossy encoders add a priming delay and pad the last frame: never less than was written
    assert 2.0 * sr <= y.size <= 2.0 * sr + 4096
    mid = y[sr // 2: sr // 2 + sr]
    assert _peak_hz(mid, sr) == pytest.approx(220.0, abs=2.0)
    assert np.sqrt(np.mean(mid ** 2)) == pytest.approx(0.5 / np.sqrt(2) / 2, rel=0.1)
    quiet = np.concatenate(list(iter_blocks(path, DecodeParams(channel=1))))
    assert np.sqrt(np.mean(quiet[sr // 2: sr // 2 + sr] ** 2)) < 0.01


def test_av_blocks_are_bounded_and_file_objects_work(tmp_path: Path) -> None:
    from _audio import write_av

    path = tmp_path / "v.m4a"
    write_av(path, voice(5.0, sr=SR), SR)
    blocks = list(iter_blocks(path, DecodeParams(block_s=1.0)))
    assert all(b.size == SR for b in blocks[:-1]) and 0 < blocks[-1].size <= SR
    with open(path, "rb") as f:
        assert probe(f).sample_rate == SR


def test_av_corrupt_and_truncated_are_decode_errors(tmp_path: Path) -> None:
    from _audio import write_av

    junk = tmp_path / "junk.m4a"
    junk.write_bytes(os.urandom(5000))
    with pytest.raises(DecodeError, match="not a readable audio file"):
        probe(junk)
    good = tmp_path / "good.m4a"
    write_av(good, voice(3.0, sr=SR), SR)
    cut = tmp_path / "cut.m4a"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # the index (moov) is at the end
    with pytest.raises(DecodeError, match="not a readable audio file"):
        list(iter_blocks(cut))
