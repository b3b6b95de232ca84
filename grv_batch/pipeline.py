"""One batch of files, start to finish: audio in, one Parquet shard per table out.

:func:`process_batch` is what a Dask task runs. It never raises for a bad file: every file of the
batch becomes exactly one row of ``files``, ``ok`` or ``error``, and the batch ends by writing its
completion record. Heavy state (the model ensemble) is loaded once per worker process.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from grv_batch import storage
from grv_batch.discovery import AudioFile
from grv_batch.speakers import speaker_from_path

#: Tables written per batch, in the order they are written; the completion record comes after.
SHARD_TABLES = ("files", "features", "predictions")
BATCHES_DIR = "_batches"

#: Fault injection for the test suite: a worker processing a path containing this variable's value
#: exits at once, as if a decoder had crashed. Unset in normal use.
FAULT_INJECTION_ENV = "GRV_BATCH_TEST_CRASH_ON"
#: Likewise, but the task raises (as a bug or a persistent write error would) instead of dying.
FAULT_RAISE_ENV = "GRV_BATCH_TEST_RAISE_ON"

#: Attempts at reading a file whose storage failed (network, bucket), and the first pause between
#: them (then 4x longer each time): s3fs retries each request itself, so these cover an outage of
#: a few seconds rather than a dropped packet.
READ_ATTEMPTS = 3
READ_RETRY_DELAY_S = 1.0

#: Windows buffered before one ensemble predict; bounds memory (a 30 s window's log-mel is ~0.8 MB).
PREDICT_CHUNK_WINDOWS = 32

FILES_SCHEMA = pa.schema([
    ("file_id", pa.string()),
    ("path", pa.string()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("duration_s", pa.float64()),
    ("sample_rate", pa.int64()),
    ("channels", pa.int64()),
    ("format", pa.string()),
    ("subtype", pa.string()),
    ("size_bytes", pa.int64()),
    ("n_windows", pa.int64()),
    ("speech_s", pa.float64()),
    ("processing_s", pa.float64()),
])


@dataclass(frozen=True)
class BatchTask:
    """The work of one Dask task.

    ``metadata[i]`` holds the metadata row of ``files[i]`` (None when the file has none).
    """

    batch_id: str
    files: tuple[AudioFile, ...]
    metadata: tuple[Mapping[str, Any] | None, ...]
    shard_name: str = ""  # defaults to the batch id; sub-batches after a worker death differ

    @property
    def shard(self) -> str:
        return self.shard_name or self.batch_id


@dataclass(frozen=True)
class OutputLayout:
    """Everything a task needs to know about the output, fixed by the client before submitting."""

    out_url: str
    metadata_schema: pa.Schema
    member_names: tuple[str, ...]
    compression: str = "zstd"
    secrets: tuple[str, ...] = ()


@dataclass
class _FileResult:
    row: dict[str, Any]
    features: dict[str, Any] | None = None
    windows: list[Any] = field(default_factory=list)
    window_preds: list[np.ndarray] = field(default_factory=list)  # one row of PRED_COLUMNS each


def features_schema(n_mfcc: int = 20) -> pa.Schema:
    """Schema of the ``features`` table: file id, scalar features for ``n_mfcc`` coefficients
    (``features.n_mfcc`` of the job), then the 128 mel means."""
    from grv_batch.features import feature_columns

    return pa.schema([("file_id", pa.string())]
                     + [(c, pa.float64()) for c in feature_columns(n_mfcc)]
                     + [("mel128", pa.list_(pa.float32(), 128))])


def predictions_schema(member_names: Sequence[str], metadata_schema: pa.Schema) -> pa.Schema:
    """Schema of ``predictions``: the SPEC columns, one probability per member, then metadata."""
    fields = [("file_id", pa.string()), ("path", pa.string()), ("speaker_id", pa.string()),
              ("p_male", pa.float64())]
    fields += [(f"p_male_{m}", pa.float64()) for m in member_names]
    fields += [("confidence", pa.float64()), ("label", pa.string()), ("reason", pa.string()),
               ("speech_s", pa.float64()), ("duration_s", pa.float64()), ("n_windows", pa.int64())]
    taken = {name for name, _ in fields}
    fields += [(f.name, f.type) for f in metadata_schema if f.name not in taken]
    return pa.schema(fields)


def rename_metadata_clashes(metadata: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """Give ``meta_`` names to metadata columns named like a column grv-batch itself writes into
    ``predictions`` (``label``, ``confidence``, ``p_male_*``...), so both are carried.

    ``speaker_id`` and ``gender`` are inputs, not clashes; ``all`` is the report's name for the
    overall results. Returns the frame and ``{old: new}``.
    """
    own = (set(predictions_schema((), pa.schema([])).names) - {"path", "speaker_id"}) | {"all"}
    taken = set(map(str, metadata.columns)) | own
    renamed: dict[str, str] = {}
    for c in map(str, metadata.columns):
        if c in own or c.startswith("p_male_"):
            new, k = f"meta_{c}", 2
            while new in taken:
                new, k = f"meta_{c}_{k}", k + 1
            renamed[c] = new
            taken.add(new)
    return (metadata.rename(columns=renamed) if renamed else metadata), renamed


_WORKER_READY = False
_WORKER_LOCK = threading.Lock()

#: glibc heap settings for worker processes, in bytes (see :func:`_relax_malloc_trimming`).
MALLOC_TRIM_THRESHOLD = 128 * 2**20
MALLOC_MMAP_THRESHOLD = 32 * 2**20


def _relax_malloc_trimming() -> None:
    """Let glibc keep freed memory for reuse instead of returning it to the OS at once.

    Dask starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``. Every window allocates and frees
    arrays of a few MB, so with that setting each one is fetched from the kernel again. We measured
    the cost in ``docs/performance.md``: half the throughput, spent as system time in page faults.
    A 128 MB trim threshold and a 32 MB mmap threshold keep the heap warm. The heap keeps at most
    128 MB of free memory, well inside the worker's memory budget. No-op where glibc is absent.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
        libc.mallopt(m_trim_threshold, MALLOC_TRIM_THRESHOLD)
        libc.mallopt(m_mmap_threshold, MALLOC_MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass


#: Packages Keras imports at start-up only if installed, for features a worker never uses
#: (``matplotlib.pyplot`` for image galleries, scikit-learn for its estimator wrappers): 0.7 s of
#: CPU per worker process, measured in ``docs/performance.md``.
KERAS_OPTIONAL_IMPORTS = ("matplotlib", "sklearn")


@contextlib.contextmanager
def _hidden_modules(names: tuple[str, ...]) -> Iterator[None]:
    """While the block runs, ``import`` of any of ``names`` not yet imported raises ImportError
    (Keras then takes its own "not installed" path); afterwards they import normally again."""
    import sys

    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # the import system's documented "not importable" marker
    try:
        yield
    finally:
        for name in hidden:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]


def _prepare_worker(worker=None) -> None:
    """Once per worker process: one numeric thread (processes give the parallelism), and
    TensorFlow imported with its C++ start-up banner kept off the user's terminal.

    The local cluster's workers start this in a background thread as soon as they start
    (``grv_batch._local_worker``), so TensorFlow is imported while the client is still planning;
    a task that arrives first waits here until it is done. ``worker``: the Dask worker, where this
    does not run inside one of its tasks.
    """
    global _WORKER_READY
    with _WORKER_LOCK:
        if _WORKER_READY:
            return
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(1)
        except Exception:  # noqa: BLE001 - best effort
            pass
        _relax_malloc_trimming()
        import sys

        if "tensorflow" not in sys.modules:
            # TensorFlow's absl/oneDNN notices are written by C++ straight to fd 2 at import,
            # whatever TF_CPP_MIN_LOG_LEVEL says; silence fd 2 for the import only (errors still
            # raise).
            saved = os.dup(2)
            try:
                with open(os.devnull, "w") as null, _hidden_modules(KERAS_OPTIONAL_IMPORTS):
                    os.dup2(null.fileno(), 2)
                    import tensorflow
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            try:
                # The environment variables are not honoured by every TensorFlow build; without
                # this its thread pools spin on every core and cost as much CPU as the work itself.
                tensorflow.config.threading.set_intra_op_parallelism_threads(1)
                tensorflow.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:  # already initialised in this process: keep what it has
                pass
        _exit_quickly_once_closed(worker)
        # only now: if the background preparation failed, the first task prepares again and its
        # failure is the task's, reported to the user
        _WORKER_READY = True


def _exit_quickly_once_closed(worker=None) -> None:
    """Skip TensorFlow's interpreter teardown (over a second) when a worker process ends normally.

    A Dask nanny starts its worker with multiprocessing's spawn, whose child ends through
    ``sys.exit`` and so through the whole interpreter finalisation. Everything a task writes is
    written before the task returns, so once the worker has closed there is nothing left to lose.
    Only in a nanny's child (not in a ``dask worker --no-nanny`` or any other program) and only
    when the worker reached ``closed``; any other ending keeps the normal path. The exit status is
    then 0 even if closing raised (the error is in the worker's log already): a nanny decides to
    restart or close by its own state, not by its worker's exit status.
    """
    import atexit
    import multiprocessing

    try:
        from distributed import get_worker
        from distributed.core import Status

        worker = worker or get_worker()
    except (ImportError, ValueError):  # not running inside a Dask worker
        return
    if multiprocessing.parent_process() is None:
        return

    def _exit_now() -> None:
        if worker.status != Status.closed:
            return
        import logging
        import sys

        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(0)

    atexit.register(_exit_now)  # registered after TensorFlow's own handlers, so it runs first


def process_batch(task: BatchTask, *, job, layout: OutputLayout,
                  storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Analyse, predict and write one batch; return its completion record.

    Parameters
    ----------
    task
        The files of the batch and their metadata rows.
    job
        The resolved :class:`grv_batch.spec.JobSpec`.
    layout
        Output location and table schemas, fixed by the client.
    storage_options
        fsspec options for INPUT and OUT (credentials stay in memory, never written).

    Returns
    -------
    dict
        The completion record, also written to ``OUT/_batches/<batch_id>.json``.
    """
    from grv_batch.features import iter_windows, pool_windows
    from grv_batch.models import load_ensemble
    from grv_batch.stages.decode import DecodeError, probe

    started_at = time.time()  # wall-clock, for a timeline of the run across workers
    _prepare_worker()
    started = time.perf_counter()
    options = dict(storage_options or {})
    ensemble = load_ensemble(job.model.bundle, params=job.model)
    analysis = job.analysis()
    results: list[_FileResult] = []
    pending: list[tuple[_FileResult, Any]] = []
    pred_columns = [*(f"p_male_{m}" for m in ensemble.members), "p_male"]  # of predict_windows

    def flush() -> None:
        if not pending:
            return
        windows = [w for _, w in pending]
        frame = pd.DataFrame({c: [w.features[c] for w in windows] for c in windows[0].features})
        frame["mel128"] = [w.mel128 for w in windows]
        preds = ensemble.predict_windows(frame, [w.logmel for w in windows],
                                         [w.speech_mask for w in windows])
        values = preds[pred_columns].to_numpy(dtype=np.float64)
        for (result, window), pred in zip(pending, values, strict=True):
            result.window_preds.append(pred)
            window.logmel = window.speech_mask = None  # no longer needed: free them now
        pending.clear()

    crash_on, raise_on = os.environ.get(FAULT_INJECTION_ENV), os.environ.get(FAULT_RAISE_ENV)
    for audio_file, meta in zip(task.files, task.metadata, strict=True):
        if crash_on and crash_on in audio_file.path:
            os._exit(70)  # fault injection for tests: die as a decoder crash would
        if raise_on and raise_on in audio_file.path:
            raise RuntimeError("injected failure")  # fault injection for tests
        t0 = time.perf_counter()
        row: dict[str, Any] = {"file_id": audio_file.file_id, "path": audio_file.path,
                               "size_bytes": audio_file.size}
        result = _FileResult(row=row)
        for attempt in range(1, READ_ATTEMPTS + 1):
            try:
                if audio_file.problem:
                    raise DecodeError(audio_file.problem)
                with storage.open_input(audio_file.url, options) as source:
                    info = probe(source)
                    source.seek(0)
                    row.update(sample_rate=info.sample_rate, channels=info.channels,
                               format=info.format, subtype=info.subtype)
                    for window in iter_windows(source, analysis, info=info):
                        result.windows.append(window)
                        pending.append((result, window))
                        if len(pending) >= PREDICT_CHUNK_WINDOWS:
                            flush()
                if not result.windows:
                    raise DecodeError("no audio samples")
                result.features = pool_windows(result.windows)
                duration = float(sum(w.duration_s for w in result.windows))
                row.update(status="ok", error=None, duration_s=duration,
                           n_windows=len(result.windows),
                           speech_s=float(sum(w.speech_s for w in result.windows)))
            except Exception as exc:  # noqa: BLE001 - one bad file must not take the batch with it
                _drop_pending(pending, result)
                if isinstance(exc, storage.ReadFailed) and attempt < READ_ATTEMPTS:
                    time.sleep(READ_RETRY_DELAY_S * 4 ** (attempt - 1))  # the storage may answer later
                    continue
                row.update(status="error",
                           error=storage.redact_text(_file_error(exc, attempt), layout.secrets))
            break
        row["processing_s"] = time.perf_counter() - t0
        results.append(result)
    flush()

    files_rows, feature_rows, prediction_rows = [], [], []
    for result, meta in zip(results, task.metadata, strict=True):
        row = result.row
        files_rows.append(row)
        if row.get("status") != "ok":
            continue
        feature_rows.append({"file_id": row["file_id"], **result.features})
        decision = ensemble.combine_file(
            dict(zip(pred_columns, np.array(result.window_preds).T, strict=True)),
            speech_s=np.array([w.speech_s for w in result.windows]),
            params=job.model,
        )
        meta = dict(meta or {})
        speaker = meta.pop("speaker_id", None) or speaker_from_path(row["path"], job.speakers.from_path)
        prediction_rows.append({
            **meta,
            "file_id": row["file_id"], "path": row["path"], "speaker_id": speaker,
            **decision,
            "speech_s": row["speech_s"], "duration_s": row["duration_s"],
            "n_windows": row["n_windows"],
        })

    fs, out = storage.filesystem(layout.out_url, options)
    shard = f"part-{task.shard}.parquet"
    tables = {
        "files": pa.Table.from_pylist(files_rows, schema=FILES_SCHEMA),
        "features": pa.Table.from_pylist(feature_rows, schema=features_schema(job.features.n_mfcc)),
        "predictions": pa.Table.from_pylist(
            prediction_rows, schema=predictions_schema(layout.member_names, layout.metadata_schema)),
    }
    for name in SHARD_TABLES:
        path = storage.join(out, name, shard)
        if tables[name].num_rows:
            storage.write_parquet_atomic(fs, path, tables[name], compression=layout.compression)
        else:  # an earlier attempt of this shard may have had rows here (a retry now all errors)
            storage.remove_if_exists(fs, path)
    record = {
        "batch_id": task.batch_id,
        "shard": task.shard,
        "n_files": len(files_rows),
        "n_ok": len(feature_rows),
        "n_error": len(files_rows) - len(feature_rows),
        "audio_s": float(sum(r.get("duration_s") or 0.0 for r in files_rows)),
        "wall_s": time.perf_counter() - started,
        "started_at": started_at,
        "finished_at": time.time(),
        "worker_pid": os.getpid(),
        "model": ensemble.identity,
    }
    storage.write_json_atomic(fs, storage.join(out, BATCHES_DIR, f"{task.shard}.json"), record)
    return record


def _file_error(exc: Exception, attempts: int) -> str:
    """The ``error`` of a file's row, from what reading or analysing it raised."""
    from grv_batch.stages.decode import DecodeError

    if isinstance(exc, storage.ReadFailed):
        return f"{exc} (after {attempts} attempts)"
    if isinstance(exc, DecodeError):
        return str(exc)
    if isinstance(exc, PermissionError):
        return "cannot open: permission denied"
    if isinstance(exc, FileNotFoundError):
        return "file disappeared before it could be read"
    last = traceback.extract_tb(exc.__traceback__)[-1]
    return (f"could not be processed: {type(exc).__name__}: {exc} "
            f"(at {os.path.basename(last.filename)}:{last.lineno})")


def _drop_pending(pending: list, result: _FileResult) -> None:
    """Forget windows of a file that failed part-way, so no prediction is made for it."""
    pending[:] = [(r, w) for r, w in pending if r is not result]
    result.windows.clear()
    result.window_preds.clear()


def error_batch_record(task: BatchTask, *, layout: OutputLayout, reason: str,
                       storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``error`` rows for every file of a task that could not run at all (its worker died)."""
    fs, out = storage.filesystem(layout.out_url, storage_options)
    rows = [{"file_id": f.file_id, "path": f.path, "status": "error", "error": reason,
             "size_bytes": f.size} for f in task.files]
    storage.write_parquet_atomic(fs, storage.join(out, "files", f"part-{task.shard}.parquet"),
                                 pa.Table.from_pylist(rows, schema=FILES_SCHEMA),
                                 compression=layout.compression)
    record = {"batch_id": task.batch_id, "shard": task.shard, "n_files": len(rows), "n_ok": 0,
              "n_error": len(rows), "audio_s": 0.0, "wall_s": 0.0, "worker_pid": None,
              "model": None}
    storage.write_json_atomic(fs, storage.join(out, BATCHES_DIR, f"{task.shard}.json"), record)
    return record
