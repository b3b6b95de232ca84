"""Preloaded into the worker processes of the local cluster that ``grv-batch run`` starts."""

from __future__ import annotations

import logging
import signal


def dask_setup(worker) -> None:  # noqa: ARG001 - Dask's preload hook
    """Leave Ctrl-C to the client.

    Ctrl-C reaches every process of the terminal's process group. The client stops the run and
    closes the cluster; a worker that handled it as well would only print a traceback of its own.
    """
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: keep the default
        pass
    # the tasks the client cancels when it stops are logged as warnings here, one per task
    logging.getLogger("distributed.worker.state_machine").setLevel(logging.ERROR)
