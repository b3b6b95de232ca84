"""Fixed-length windows over a stream of blocks, so memory stays bounded for any file length."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
from pydantic import Field

from grv_batch._params import Params

__all__ = ["SegmentParams", "iter_windows"]


class SegmentParams(Params):
    """Parameters of the segment stage.

    Attributes
    ----------
    window_s : float
        Window length in seconds.
    min_tail_s : float
        A trailing piece shorter than this is merged into the previous window (which then lasts up to
        ``window_s + min_tail_s``); if it is the only piece it is kept as it is.
    """

    window_s: float = Field(30.0, gt=0.0, le=3600.0)
    min_tail_s: float = Field(5.0, ge=0.0)


def iter_windows(
    blocks: Iterable[np.ndarray], sr: int, params: SegmentParams | None = None
) -> Iterator[tuple[float, np.ndarray]]:
    """Re-chunk a stream of mono blocks into windows.

    Parameters
    ----------
    blocks : iterable of np.ndarray
        Each of shape ``(n_i,)``, consecutive pieces of one signal at rate ``sr``.
    sr : int
        Sample rate in Hz.
    params : SegmentParams, optional

    Yields
    ------
    start_s : float
        Start of the window in the stream, seconds.
    window : np.ndarray
        Shape ``(m,)`` float32; ``m == window_s * sr`` except for the last window.
    """
    params = params or SegmentParams()
    if int(sr) <= 0:
        raise ValueError(f"sample rate must be positive, got {sr}")
    win = max(int(round(params.window_s * sr)), 1)
    tail = int(round(params.min_tail_s * sr))
    pending: list[np.ndarray] = []
    n_pending = 0
    start = 0
    for block in blocks:
        block = np.asarray(block, dtype=np.float32)
        if block.ndim != 1:
            raise ValueError(f"blocks must be mono, shape (n,), got {block.shape}")
        if block.size == 0:
            continue
        pending.append(block)
        n_pending += block.size
        # Hold back until a window plus a possible short tail is buffered: only then do we know the
        # window is not the one a short tail must be merged into.
        if n_pending >= win + max(tail, 1):
            buf = np.concatenate(pending)
            while buf.size >= win + max(tail, 1):
                yield start / sr, buf[:win].copy()
                start += win
                buf = buf[win:]
            pending, n_pending = [buf], buf.size
    if n_pending:
        # what is left is shorter than win + min_tail: one (possibly merged or only) window
        yield start / sr, np.concatenate(pending)
