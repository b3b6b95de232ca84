"""Resampling with soxr, one-shot and streaming."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Literal

import numpy as np
import soxr
from pydantic import Field

from grv_batch._params import Params

__all__ = ["ResampleParams", "StreamResampler", "iter_resampled", "resample"]


class ResampleParams(Params):
    """Parameters of the resample stage.

    Attributes
    ----------
    sample_rate : int
        Target rate in Hz for the analysis (features are defined at 16 kHz).
    quality : {"HQ", "VHQ", "MQ", "LQ"}
        soxr quality preset.
    """

    sample_rate: int = Field(16000, ge=4000, le=192000)
    quality: Literal["HQ", "VHQ", "MQ", "LQ"] = "HQ"


def _check(audio: np.ndarray, sr: int) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono, shape (n,), got {audio.shape}")
    if int(sr) <= 0:
        raise ValueError(f"sample rate must be positive, got {sr}")
    return audio


def resample(
    audio: np.ndarray, sr: int, params: ResampleParams | None = None
) -> tuple[np.ndarray, int]:
    """Resample a whole signal.

    Parameters
    ----------
    audio : np.ndarray
        Shape ``(n,)``, mono.
    sr : int
        Rate of ``audio`` in Hz.
    params : ResampleParams, optional

    Returns
    -------
    audio : np.ndarray
        Shape ``(round(n * target / sr),)`` float32 (the input itself when the rate already matches).
    sr : int
        The target rate.
    """
    params = params or ResampleParams()
    audio = _check(audio, sr)
    target = params.sample_rate
    if int(sr) == target or audio.size == 0:
        return audio, target
    out = soxr.resample(audio, int(sr), target, quality=params.quality)
    return np.asarray(out, dtype=np.float32), target


class StreamResampler:
    """Stateful resampler for a stream of blocks: no clicks or gaps at block edges.

    Parameters
    ----------
    sr : int
        Input rate in Hz.
    params : ResampleParams, optional
    """

    def __init__(self, sr: int, params: ResampleParams | None = None) -> None:
        self.params = params or ResampleParams()
        self.in_rate = int(sr)
        self.out_rate = self.params.sample_rate
        self._stream = (
            None
            if self.in_rate == self.out_rate
            else soxr.ResampleStream(
                self.in_rate, self.out_rate, 1, dtype="float32", quality=self.params.quality
            )
        )

    def process(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        """Resample one block of shape ``(n,)``; pass ``last=True`` with the final block to flush."""
        block = _check(block, self.in_rate)
        if self._stream is None:
            return block
        return np.asarray(self._stream.resample_chunk(block, last=last), dtype=np.float32)


def iter_resampled(
    blocks: Iterable[np.ndarray], sr: int, params: ResampleParams | None = None
) -> Iterator[np.ndarray]:
    """Resample a stream of mono blocks (as from :func:`~grv_batch.stages.decode.iter_blocks`).

    Yields float32 blocks of shape ``(m,)`` at ``params.sample_rate``; empty blocks are skipped.
    """
    rs = StreamResampler(sr, params)
    for block in blocks:
        out = rs.process(block)
        if out.size:
            yield out
    tail = rs.process(np.zeros(0, np.float32), last=True)
    if tail.size:
        yield tail
