"""Decoding audio with soundfile (libsndfile), or PyAV (FFmpeg) for what libsndfile cannot read,
block by block, with user-readable errors.

libsndfile reads WAV, FLAC, Ogg Vorbis/Opus, AIFF, NIST and more; MP3 (which it decodes wrong when
read in pieces) and the containers it cannot read (M4A/MP4 with AAC or ALAC, WebM, Matroska, WMA,
ADTS AAC: the usual formats of downloaded or recorded interviews) go through PyAV. Both paths give
the same float32 blocks.

Audio is never held whole: :func:`iter_blocks` yields mono float32 blocks of ``block_s`` seconds at the
native sample rate, so a two-hour recording costs one block of memory here. Every failure mode we know
of (empty, not audio, header only, truncated, NaN samples, permissions) becomes a :class:`DecodeError`
whose message can be shown to a user as is.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Annotated, Any, Literal, Union

import numpy as np
import soundfile as sf
from pydantic import Field

from grv_batch._params import Params

Source = Union[str, "os.PathLike[str]", IO[bytes]]

__all__ = ["AudioInfo", "DecodeError", "DecodeParams", "iter_blocks", "probe"]

# Formats whose frame count libsndfile derives from a bitrate estimate (VBR MP3) rather than a header
# field, and every container decoded by PyAV (durations from the container, encoder delay and
# padding included or not): for these a short read is not evidence of truncation.
_INEXACT_FRAME_FORMATS = {"MP3", "OGG"}
_AV_FORMAT_PREFIX = "FFMPEG:"

# Damaged packets in a row after which a PyAV stream is given up as not audio (MP3: 2.6 s at 44.1 kHz)
_AV_MAX_BAD_PACKETS = 100

#: Extensions opened with PyAV (FFmpeg) directly: libsndfile cannot read them or, for MP3, reads
#: them wrong in pieces (libsndfile 1.2.2: up to 0.46 of full scale off after a read boundary at
#: 44.1 kHz; a whole-file read matches FFmpeg, but long recordings are read block by block).
AV_EXTENSIONS = (".mp3", ".m4a", ".m4b", ".mp4", ".aac", ".webm", ".mka", ".mkv", ".wma", ".3gp",
                 ".amr")

# libsndfile's header log for a RIFF/AIFF file cut short: "data : 64000 (should be 31978)".
_CHUNK_SIZE_LOG = re.compile(r"^\s*(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Size fields that writers of unfinished streams leave as placeholders (0, 0xFFFFFFFF, and near
# 2**31: SoX to a pipe writes 0x7FFFF000, arecord 0x7FFFFF00): not evidence of a cut.
_PLACEHOLDER_MIN = 0x7F000000
# A shortfall this small is not worth losing the file for (a partial last frame, a writer that
# counted its header in the data size): at most this many bytes, or this share of the data.
_CUT_TOLERANCE_BYTES, _CUT_TOLERANCE_SHARE = 4096, 0.005
# ... and never more than this much audio
_CUT_TOLERANCE_S = 0.25
# Decoded samples beyond this magnitude are not audio (float files are about +-1.0 at full scale).
_MAX_ABS_SAMPLE = 1e4
# A file that libsndfile opens with no samples but is bigger than this holds more than a header.
_SMALLEST_HEADER_BYTES = 1024


class DecodeParams(Params):
    """Parameters of the decode stage.

    Attributes
    ----------
    block_s : float
        Length of each yielded block in seconds (> 0). Bounds memory: one block is held at a time.
    channel : "mix" or int
        ``"mix"``: the mean of all channels (a stereo pair in opposite phase: half the
        difference, see :func:`iter_blocks`). An index (0 = first/left): only that channel, for
        recordings that keep one talker per channel (two-party calls, interviews on two
        microphones). Mono files always use their one channel; a multi-channel file with fewer
        channels than the index is an error.
    """

    block_s: float = Field(30.0, gt=0, le=3600)
    channel: Literal["mix"] | Annotated[int, Field(ge=0, le=63)] = "mix"


class DecodeError(Exception):
    """The source cannot be used as audio; ``str(err)`` is a sentence meant for a user."""


@dataclass(frozen=True)
class AudioInfo:
    """What the container header says about a source.

    ``frames`` may be an estimate for MP3 (libsndfile derives it from the bitrate); the analysis
    replaces it with the number of frames actually decoded.
    """

    sample_rate: int
    channels: int
    frames: int
    duration_s: float
    format: str
    subtype: str


def _is_path(source: Any) -> bool:
    return isinstance(source, (str, bytes, os.PathLike))


def _check_size(source: Any) -> int:
    """Reject 0-byte sources before libsndfile gives a cryptic message for them; return the size."""
    if _is_path(source):
        try:
            size = os.path.getsize(source)
        except PermissionError as exc:
            raise DecodeError("cannot open: permission denied") from exc
        except FileNotFoundError as exc:
            raise DecodeError(f"cannot open: file not found ({os.fspath(source)!s})") from exc
        except OSError as exc:
            raise DecodeError(f"cannot open: {exc.strerror or exc}") from exc
    else:
        try:
            source.seek(0, io.SEEK_END)
            size = source.tell()
            source.seek(0)
        except (AttributeError, OSError, ValueError) as exc:
            raise DecodeError(f"cannot open: source is not a seekable binary file ({exc})") from exc
    if size == 0:
        raise DecodeError("empty file (0 bytes)")
    return size


class _AVFile:
    """The part of ``soundfile.SoundFile`` that this module uses, over PyAV (FFmpeg) decoding.

    Samples are decoded frame by frame as packed float32 and buffered only up to the size of the
    next ``read``, so memory stays bounded like libsndfile's.
    """

    def __init__(self, source: Source):
        import av

        self._av = av
        if not _is_path(source):
            source.seek(0)
        try:
            self._container = av.open(os.fspath(source) if _is_path(source) else source, "r")
        except av.error.FFmpegError as exc:
            raise DecodeError(f"not a readable audio file: {_av_reason(exc)}") from exc
        streams = self._container.streams.audio
        if not streams:
            self._container.close()
            raise DecodeError("not a readable audio file: no audio stream")
        self._stream = stream = streams[0]
        ctx = stream.codec_context
        self.samplerate = int(ctx.sample_rate or stream.rate or 0)
        self.channels = int(ctx.channels or 0)
        if stream.duration is not None and stream.time_base is not None:
            seconds = float(stream.duration * stream.time_base)
        elif self._container.duration is not None:
            seconds = self._container.duration / 1_000_000  # FFmpeg's AV_TIME_BASE
        else:
            seconds = 0.0
        self.frames = int(round(seconds * self.samplerate))
        self.format = _AV_FORMAT_PREFIX + self._container.format.name.split(",")[0].upper()
        self.subtype = ctx.name.upper()
        self.extra_info = ""
        self._packets = self._container.demux(stream)
        self._decoded: list = []  # frames of the last packet not yet converted
        self._resampler = None
        self._resampler_input = None  # (format, layout, rate) the resampler was made for
        self._layout = ""  # set by the first frame; channels and rate are fixed from then on
        self._pending: list[np.ndarray] = []
        self._pending_n = 0

    def _next_decoded(self):
        """The next decoded frame; a damaged packet is skipped, as libsndfile's MP3 decoder
        re-syncs, unless :data:`_AV_MAX_BAD_PACKETS` in a row are (then the data is not audio)."""
        av = self._av
        bad = 0
        while not self._decoded:
            try:
                packet = next(self._packets)
            except StopIteration:
                return None
            except av.error.FFmpegError as exc:
                raise RuntimeError(_av_reason(exc)) from exc
            try:
                self._decoded = list(packet.decode())
            except av.error.InvalidDataError as exc:
                bad += 1
                if bad >= _AV_MAX_BAD_PACKETS:
                    raise RuntimeError(_av_reason(exc)) from exc
            except av.error.FFmpegError as exc:
                raise RuntimeError(_av_reason(exc)) from exc
        return self._decoded.pop(0)

    def _next_frame(self) -> np.ndarray | None:
        av = self._av
        frame = self._next_decoded()
        if frame is None:
            return None
        if not self._layout:
            # the stream's declared layout, or the first frame's where it declares none
            layout = self._stream.codec_context.layout
            if layout is None or layout.nb_channels != self.channels:
                layout = frame.layout
                self.channels = layout.nb_channels
            self._layout = layout.name
            self.samplerate = self.samplerate or frame.sample_rate
        if (self._resampler is None and frame.format.name in ("fltp", "flt")
                and frame.sample_rate == self.samplerate
                and frame.layout.nb_channels == self.channels):
            # already float32 at the declared rate and channels (MP3, AAC, Opus, Vorbis decoders):
            # no conversion needed, and skipping the resampler halves the time spent per frame
            data = frame.to_ndarray()
            return data.T if frame.format.is_planar else data.reshape(-1, self.channels)
        # Anything else (another sample format, or a stream whose rate or channel count changes
        # midway, as two files joined with cat) is converted to what the file started as.
        given = (frame.format.name, frame.layout.name, frame.sample_rate)
        out = []
        if self._resampler is not None and given != self._resampler_input:
            out.extend(self._resampler.resample(None))  # what the old set-up still holds
            self._resampler = None
        if self._resampler is None:
            self._resampler = av.AudioResampler(format="flt", layout=self._layout,
                                                rate=self.samplerate)
            self._resampler_input = given
        out.extend(self._resampler.resample(frame))
        return (np.concatenate([f.to_ndarray().reshape(-1, self.channels) for f in out]) if out
                else np.zeros((0, self.channels), np.float32))

    def read(self, frames: int, dtype: str = "float32", always_2d: bool = True) -> np.ndarray:
        while self._pending_n < frames:
            data = self._next_frame()
            if data is None:
                break
            self._pending.append(data)
            self._pending_n += data.shape[0]
        if not self._pending:
            return np.zeros((0, self.channels), np.float32)
        buf = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        out, rest = buf[:frames], buf[frames:]
        self._pending, self._pending_n = ([rest], rest.shape[0]) if rest.shape[0] else ([], 0)
        return out.astype(dtype, copy=False)

    def close(self) -> None:
        self._container.close()


def _av_reason(exc: Exception) -> str:
    reason = getattr(exc, "strerror", None) or str(exc)
    if "nvalid data" in reason:
        reason = "format not recognised or data corrupt"
    return reason


def _uses_av(source: Source) -> bool:
    name = os.fspath(source) if _is_path(source) else getattr(source, "path", getattr(source, "name", ""))
    return str(name).lower().endswith(AV_EXTENSIONS)


def _open_sndfile(source: Source) -> sf.SoundFile:
    try:
        return sf.SoundFile(source, "r")
    except PermissionError as exc:
        raise DecodeError("cannot open: permission denied") from exc
    except sf.LibsndfileError as exc:
        reason = exc.error_string or str(exc)
        if "ermission denied" in reason:
            raise DecodeError("cannot open: permission denied") from exc
        if "does not exist or is not a regular file" in reason:
            # libsndfile's catch-all when no format matched; the file itself does exist
            reason = "format not recognised or data corrupt"
        raise DecodeError(f"not a readable audio file: {reason}") from exc
    except (RuntimeError, TypeError, ValueError) as exc:
        raise DecodeError(f"not a readable audio file: {exc}") from exc


@contextmanager
def _open(source: Source) -> Iterator[sf.SoundFile]:
    size = _check_size(source)
    f = _AVFile(source) if _uses_av(source) else _open_sndfile(source)
    if isinstance(f, sf.SoundFile) and (f.format == "MP3" or f.subtype.startswith("MPEG_LAYER")):
        # MP3 by its content, not its name, and MPEG audio inside a WAV (some telephone and
        # dictation recorders write it; libsndfile only estimates its frame count): FFmpeg's,
        # as for .mp3 (AV_EXTENSIONS)
        f.close()
        f = _AVFile(source)
    if isinstance(f, sf.SoundFile) and f.frames == 0 and size > _SMALLEST_HEADER_BYTES:
        # A WAV whose writer never filled in its sizes (a recorder that was stopped hard) declares
        # no samples, and libsndfile believes it; FFmpeg reads such a file to its end. A file that
        # really has no samples gets the same "header only" answer from either.
        f.close()
        try:
            f = _AVFile(source)
        except DecodeError:
            f = _open_sndfile(source)
    try:
        if f.samplerate <= 0 or f.channels <= 0:
            raise DecodeError("not a readable audio file: invalid sample rate or channel count")
        _check_not_cut(f)  # PyAV files have no libsndfile header log: a no-op for them
        yield f
    finally:
        f.close()


def _check_not_cut(f: sf.SoundFile) -> None:
    """Reject a WAV/AIFF whose data chunk is shorter than its header says.

    libsndfile reads such a file silently up to the cut and reports the shortened length as the
    file's length, so the only trace is in its header log.
    """
    match = _CHUNK_SIZE_LOG.search(f.extra_info or "")
    if not match:
        return
    declared, present = int(match.group(1)), int(match.group(2))
    if declared == 0 or declared >= _PLACEHOLDER_MIN:
        return
    allowed = max(_CUT_TOLERANCE_BYTES, _CUT_TOLERANCE_SHARE * declared)
    if f.frames > 0 and present > 0:
        # compressed telephone codecs pack seconds into those bytes (GSM 6.10: 1,625 bytes a second)
        allowed = min(allowed, _CUT_TOLERANCE_S * present * f.samplerate / f.frames)
    if declared - present <= allowed:
        return
    raise DecodeError(
        f"truncated or corrupt audio: the header declares {declared} bytes of samples, "
        f"the file holds {present}"
    )


def _inexact(fmt: str) -> bool:
    return fmt in _INEXACT_FRAME_FORMATS or fmt.startswith(_AV_FORMAT_PREFIX)


def _info(f: sf.SoundFile) -> AudioInfo:
    frames = max(int(f.frames), 0)
    return AudioInfo(
        sample_rate=int(f.samplerate),
        channels=int(f.channels),
        frames=frames,
        duration_s=frames / float(f.samplerate),
        format=str(f.format),
        subtype=str(f.subtype),
    )


def probe(source: Source) -> AudioInfo:
    """Read the header of ``source`` without decoding samples.

    Parameters
    ----------
    source : str, os.PathLike or binary file object
        Local path or seekable binary file (e.g. opened by fsspec). File objects are rewound.

    Returns
    -------
    AudioInfo

    Raises
    ------
    DecodeError
        Empty, unreadable, or header-only (zero frames) sources.
    """
    with _open(source) as f:
        info = _info(f)
    if info.frames == 0 and not _inexact(info.format):
        raise DecodeError("no audio samples (header only)")
    return info


def _phase(data: np.ndarray) -> int:
    """-1 for a ``(n, 2)`` piece whose channels are audible and correlated below -0.5 (one of them
    in opposite phase), +1 above +0.5 (in phase), 0 otherwise (silent, unrelated channels or
    not stereo: no evidence either way)."""
    if data.ndim != 2 or data.shape[1] != 2:
        return 0
    left, right = data[:, 0].astype(np.float64), data[:, 1].astype(np.float64)
    e_left, e_right = float(left @ left), float(right @ right)
    audible = 1e-7 * data.shape[0]  # mean square above -70 dBFS in both channels
    if e_left <= audible or e_right <= audible:
        return 0
    corr = float(left @ right) / np.sqrt(e_left * e_right)
    return -1 if corr < -0.5 else 1 if corr > 0.5 else 0


def iter_blocks(source: Source, params: DecodeParams | None = None) -> Iterator[np.ndarray]:
    """Yield the audio as mono float32 blocks at the native sample rate.

    Parameters
    ----------
    source : str, os.PathLike or binary file object
        Local path or seekable binary file. File objects are rewound first.
    params : DecodeParams, optional

    Yields
    ------
    np.ndarray
        Shape ``(n,)`` float32, ``n <= block_s * sample_rate`` (only the last block is shorter).
        Multi-channel audio is mixed down by the mean over channels; the stretches of a stereo
        file whose channels are in opposite phase (from a second that is audible with a
        correlation below -0.5 until one above +0.5) by half their difference, instead of
        cancelling.

    Raises
    ------
    DecodeError
        For every unusable source, possibly after some blocks were already yielded (truncation,
        non-finite samples discovered mid-file).
    """
    params = params or DecodeParams()
    with _open(source) as f:
        info = _info(f)
        sr = info.sample_rate
        pick = None if params.channel == "mix" or info.channels == 1 else int(params.channel)
        if pick is not None and pick >= info.channels:
            raise DecodeError(f"channel {pick} requested, but the file has {info.channels} channels")
        block = max(int(round(params.block_s * sr)), 1)
        # libsndfile is read in pieces of at most 1 s, so a decoding error is located to the second
        piece = min(block, sr)
        done = 0
        inverted = False
        while True:
            parts: list[np.ndarray] = []
            got = 0
            while got < block:
                try:
                    data = f.read(min(piece, block - got), dtype="float32", always_2d=True)
                except (sf.LibsndfileError, RuntimeError) as exc:  # RuntimeError: PyAV's, re-raised
                    raise DecodeError(
                        f"truncated or corrupt audio after {(done + got) / sr:.1f} s: {exc}"
                    ) from exc
                if data.shape[0] == 0:
                    break
                # Mix-down by mean (not sum) keeps the level of a mono source copied to both channels
                if pick is not None:
                    mono = np.ascontiguousarray(data[:, pick])
                elif data.shape[1] == 1:
                    mono = data[:, 0]
                else:
                    # a channel wired in opposite phase would cancel the voice in the mean: from a
                    # second that shows it until one in phase, that channel is mixed inverted
                    phase = _phase(data)
                    inverted = phase < 0 if phase else inverted
                    mono = (data[:, 0] - data[:, 1]) * np.float32(0.5) if inverted else (
                        data.mean(axis=1, dtype=np.float32))
                peak = float(np.max(np.abs(mono))) if mono.size else 0.0
                if not np.isfinite(peak):
                    raise DecodeError("non-finite samples (NaN or inf)")
                if peak > _MAX_ABS_SAMPLE:
                    # float samples 80 dB over full scale are corrupt data (integers read as
                    # floats, say), and their powers overflow the spectra
                    raise DecodeError(f"sample values out of range (up to {peak:.3g}; audio is "
                                      f"within about 1.0 of full scale)")
                parts.append(mono)
                got += mono.size
            if got == 0:
                break
            done += got
            out = parts[0] if len(parts) == 1 else np.concatenate(parts)
            yield np.ascontiguousarray(out, dtype=np.float32)
            if got < block:
                break
    if done == 0:
        raise DecodeError("no audio samples (header only)")
    # A lossless container that promised more frames than it delivered was cut short; libsndfile
    # reads such files silently up to the cut, so we check the count ourselves.
    if not _inexact(info.format) and done < info.frames:
        raise DecodeError(
            f"truncated or corrupt audio: {done / sr:.2f} s of the {info.frames / sr:.2f} s its "
            f"header promises ({info.frames - done} samples missing)"
        )
