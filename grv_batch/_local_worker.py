"""Preloaded into the worker processes of the local cluster that ``grv-batch run`` starts."""

from __future__ import annotations

import logging
import signal
import threading


def dask_setup(worker) -> None:  # Dask's preload hook
    """Leave Ctrl-C and the reporting of failed tasks to the client.

    Ctrl-C reaches every process of the terminal's process group. The client stops the run and
    closes the cluster; a worker that handled it as well would only print a traceback of its own.
    """
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: keep the default
        pass
    # the tasks the client cancels when it stops are logged as warnings here, one per task
    logging.getLogger("distributed.worker.state_machine").setLevel(logging.ERROR)
    # a failed task is the client's to report (one line, or its traceback for a bug); the worker's
    # own "Compute Failed" record would print the same traceback again in the user's terminal
    logging.getLogger("distributed.worker").addFilter(_not_compute_failed)
    # TensorFlow takes a second or two of CPU to import: start now, while the client plans the
    # run, rather than in the first task (which waits for it if it comes sooner)
    threading.Thread(target=_prepare, args=(worker,), name="grv-batch-prepare", daemon=True).start()


def _prepare(worker) -> None:
    try:
        from grv_batch.pipeline import _prepare_worker

        _prepare_worker(worker)
    except Exception:  # noqa: BLE001 - the first task then prepares again, and reports what fails
        logging.getLogger("grv_batch").debug("worker preparation failed", exc_info=True)


def _not_compute_failed(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Compute Failed")
