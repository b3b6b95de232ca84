"""Running a job over a corpus on Dask: plan, resume, submit, account for every file, finish.

The client never gathers data: each task writes its own shards and returns a small completion
record. Exactly-once comes from deterministic shard names (a retried task overwrites its own
shards) and completion records (a rerun skips batches that have one). ``_run.json`` is written
last; its presence means the run completed.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import itertools
import logging
import math
import os
import platform
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa
from rich.markup import escape

from grv_batch import storage
from grv_batch._version import __version__
from grv_batch.discovery import (AudioFile, Corpus, InputError, batch_id_for, discover, join_metadata,
                                 load_metadata, plan_batches)
from grv_batch.pipeline import (BATCHES_DIR, SHARD_TABLES, BatchTask, OutputLayout,
                                error_batch_record, features_schema, predictions_schema,
                                process_batch, rename_metadata_clashes)

JOB_FILE = "_job.json"
MIN_TASKS = 32  # split a corpus into at least this many tasks when batches allow
MIN_BATCH_AUDIO_S = 10.0
SINGLE_FILE_ATTEMPTS = 2  # one-file tasks whose worker died, before the file is declared dead
SAME_FAILURE_STOPS_RUN = 3  # planned batches failing alike, none having worked: stop the run
#: batches submitted ahead of the workers: this many per worker thread, at least the minimum. The
#: rest wait in the client, so the scheduler never holds a million files' task specs at once (an
#: adaptive cluster, which sizes itself to the tasks it sees, grows by up to 4x per resize).
BATCHES_IN_FLIGHT_PER_THREAD = 4
MIN_BATCHES_IN_FLIGHT = 64
RUN_FILE = "_run.json"


class StopSignal(Protocol):
    """What :func:`run_job` polls to stop early: the reading half of :class:`threading.Event`."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float) -> bool: ...


class OutputConflict(Exception):
    """OUT belongs to a different job (or is not a grv-batch output)."""


class IncompleteRun(Exception):
    """After all tasks, some discovered file has no row (should never happen; refuses to finish)."""


class RunFailed(Exception):
    """Every file of a batch failed in the same way: the cause is not in the files (workers
    without grv-batch, an OUT they cannot write...), so the run stops instead of writing errors."""


@dataclass
class RunSummary:
    """What a finished run reports back (also the heart of ``_run.json``)."""

    out: str
    n_files: int
    n_ok: int
    n_error: int
    n_batches: int
    n_batches_skipped: int
    audio_s: float
    wall_s: float
    report: str | None = None
    #: audio of the files processed by this command (``audio_s`` counts all of OUT's ok files)
    processed_audio_s: float = 0.0
    counts: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- cluster


def _worker_environment() -> dict[str, str]:
    """Environment for worker processes: one numeric thread each, quiet TensorFlow."""
    return {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "NUMBA_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
            "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


@contextlib.contextmanager
def _logger_level(name: str, level: int) -> Iterator[None]:
    """Logger ``name`` at ``level`` for the block, then as it was."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


@contextlib.contextmanager
def dask_client(execution, *, console=None) -> Iterator[Any]:
    """A Dask client for ``execution``: the named scheduler, or a local cluster started here.

    The local cluster is a cluster of worker *processes* (audio and model code holds the GIL) and is
    shut down when the block ends.
    """
    from distributed import Client, LocalCluster

    address = execution.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        try:
            client = Client(address, timeout="30s")
        except (ValueError, OSError, TimeoutError) as exc:  # a mistyped or unreachable address
            raise RunFailed(f"cannot connect to the Dask scheduler {address!r}: "
                            f"{type(exc).__name__}: {exc}") from exc
        quiet = contextlib.ExitStack()
        with quiet, client:  # the client closes first, then ``quiet`` ends
            if console:
                console.print(f"Using Dask scheduler {escape(address)} "
                              f"(dashboard: {client.dashboard_link})")
            if not client.scheduler_info().get("workers"):
                # tasks would wait for a worker without a word; workers may still be starting
                if console:
                    console.print("No workers are connected to this scheduler yet: waiting for "
                                  "the first one (Ctrl-C stops).")
                client.wait_for_workers(1)
            try:
                yield client
            except BaseException:
                # the scheduler may be gone: closing the client cancels its attempts to reconnect,
                # which distributed logs as an error with two tracebacks; the run says what happened
                quiet.enter_context(_logger_level("distributed.client", logging.CRITICAL))
                raise
        return
    env = _worker_environment()
    for key, value in env.items():
        os.environ.setdefault(key, value)  # inherited by spawned worker processes
    workers = execution.workers or os.cpu_count() or 1
    import warnings

    import dask

    # Nannies hand their configuration to the worker processes they start, so this reaches them.
    profiling = {"distributed.worker.profile.enabled": execution.worker_profiling}
    with warnings.catch_warnings(), dask.config.set(profiling):
        # A busy dashboard port is not a problem: Dask picks another and we print the real link.
        warnings.filterwarnings("ignore", message="Port .* is already in use")
        try:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=execution.threads_per_worker,
                                   processes=True, memory_limit=execution.memory_limit,
                                   dashboard_address=execution.dashboard_address,
                                   preload=["grv_batch._local_worker"])
        except (ValueError, RuntimeError, OSError) as exc:
            raise RunFailed(f"the local Dask cluster could not start ([execution]): "
                            f"{type(exc).__name__}: {exc}") from exc
    try:
        with Client(cluster) as client:
            if console:
                console.print(f"Started a local Dask cluster: {workers} worker process(es) "
                              f"(dashboard: {client.dashboard_link})")
            yield client
    finally:
        # TensorFlow's thread pools can make a worker take a few seconds to exit; the nanny then
        # kills it, which is what we want at the end of a run, without a warning about it.
        logging.getLogger("distributed.nanny").setLevel(logging.ERROR)
        cluster.close()


# --------------------------------------------------------------------------- output ownership


def _prepare_out(fs, out: str, job, *, input_url: str, model_sha256: str) -> bool:
    """Check that OUT is ours (or new) and record the job in it. Returns True when resuming.

    The identity is the job's result-changing settings, the model bundle's manifest hash and
    INPUT, so a resumed run never mixes outputs of two different jobs. The metadata is not part
    of it: a batch's id covers its files' metadata rows (:func:`batch_id_for`), so a resumed run
    with edited or extended metadata reruns the batches whose rows changed. ``--overwrite``
    replaces only an earlier grv-batch output: a folder without ``_job.json`` holds files
    grv-batch did not write.
    """
    job_path = storage.join(out, JOB_FILE)
    shown = storage.full_url(fs, out)  # s3://bucket/..., not bucket/...
    fingerprint = f"{job.fingerprint()}-{model_sha256[:8]}"
    record = {"fingerprint": fingerprint, "input": storage.location(input_url)}
    if storage.exists(fs, job_path):
        existing = storage.read_json(fs, job_path)
        if isinstance(existing.get("input"), str):  # outputs of 0.3 and before kept it as typed
            existing["input"] = storage.location(existing["input"])
        # keys an older output's record lacks are not compared (and keys it has beyond these,
        # like the metadata digest of outputs before batch ids covered metadata, are ignored)
        differs = [k for k, v in record.items() if existing.get(k, v) != v]
        if not differs:
            return True
        if not job.output.overwrite:
            what = {"fingerprint": "a different job", "input": "a different input"}[differs[0]]
            raise OutputConflict(
                f"OUT {shown} holds the output of {what} (job {existing.get('fingerprint')}, input "
                f"{existing.get('input')}); choose another OUT or pass --overwrite to replace it")
        _remove_earlier_output(fs, out)
    elif storage.list_names(fs, out):
        raise OutputConflict(f"OUT {shown} is not empty and is not a grv-batch output; choose a new "
                             f"or empty folder (--overwrite only replaces an earlier grv-batch output)")
    fs.makedirs(out, exist_ok=True)
    storage.write_json_atomic(fs, job_path, {
        **record, "grv_batch": __version__, "created": _now(), "job": _redacted_job(job)})
    return False


def release_out(plan: "RunPlan") -> None:
    """Undo :func:`plan_run`'s claim on OUT when the run never started (its cluster could not be
    reached): the ``_job.json`` of an OUT that holds nothing else is removed, and the folder too
    when the claim created it. An OUT being resumed is left as it is."""
    if plan.resuming:
        return
    fs, out = storage.filesystem(plan.out_url, dict(plan.job.storage_options))
    if storage.list_names(fs, out) == [JOB_FILE]:
        fs.rm(storage.join(out, JOB_FILE))
        folder = os.path.abspath(out)
        top = plan.out_created
        while top and (folder == top or folder.startswith(top.rstrip(os.sep) + os.sep)):
            try:
                os.rmdir(folder)
            except OSError:  # another process wrote into it meanwhile
                return
            folder = os.path.dirname(folder)


def _first_missing_folder(path: str) -> str | None:
    """The outermost folder of local ``path`` (itself included) that does not exist yet."""
    path = os.path.abspath(path)
    missing = None
    while not os.path.exists(path):
        missing, path = path, os.path.dirname(path)
    return missing


#: Everything grv-batch writes directly under OUT; ``--overwrite`` removes these and nothing else.
OUTPUT_ENTRIES = (RUN_FILE, BATCHES_DIR, *SHARD_TABLES, "speakers", "report", JOB_FILE)


def _remove_earlier_output(fs, out: str) -> None:
    """Remove an earlier grv-batch output from OUT, entry by entry: never OUT itself (at a bucket's
    root that would delete the bucket, its other objects, versions and settings) and nothing
    grv-batch did not write there. ``_job.json`` goes last, so an interrupted removal is still
    recognised as grv-batch's output."""
    leftovers = [n for n in storage.list_names(fs, out) if n.startswith(".tmp-")]  # interrupted writes
    for name in [*leftovers, *OUTPUT_ENTRIES]:
        path = storage.join(out, name)
        if storage.exists(fs, path):
            fs.rm(path, recursive=True)


def _first_readable(tasks: Sequence[BatchTask]) -> list[AudioFile]:
    """The first local file of ``tasks`` that the client can see, if any (looked for among a
    few hundred, so that a corpus of broken links is not stat'ed whole)."""
    for f in itertools.islice((f for t in tasks for f in t.files), 500):
        if f.problem is None and os.path.exists(f.url):
            return [f]
    return []


def _check_workers_see(client, paths: list[tuple[str, str]]) -> None:
    """Local INPUT and OUT must be at the same path on every worker (a cluster's workers may run
    on other machines): otherwise every file would become an error row, or the shards would land
    where the client cannot find them. Checked once with one file of each before any batch runs;
    URLs are not checked (the workers' credentials are proven by their first batch)."""
    run = getattr(client, "run", None)
    for what, path in paths:
        if "://" in path or run is None:
            continue
        try:
            seen = run(os.path.exists, path)
        except Exception:  # noqa: BLE001 - a check, not a requirement: the batches will tell
            return
        blind = sorted(worker for worker, ok in seen.items() if not ok)
        if blind:
            raise RunFailed(
                f"{len(blind)} of {len(seen)} Dask worker(s) ({', '.join(blind[:3])}"
                f"{', ...' if len(blind) > 3 else ''}) cannot see {what} here: {path} does not exist "
                f"for them. A local {what} must be at the same path on every worker (a shared file "
                f"system), or use a bucket")


def _filesystem(what: str, url: str, options: Mapping[str, Any]):
    """``storage.filesystem``, with an unknown scheme or a missing back end (``gs://`` without
    gcsfs) as one line instead of a traceback."""
    try:
        return storage.filesystem(url, options)
    except (ValueError, ImportError, OSError) as exc:
        raise InputError(f"{what} {url} cannot be used: {type(exc).__name__}: {exc}") from exc


def _check_out_apart_from_input(input_url: str, out_url: str, options: Mapping[str, Any]) -> None:
    """OUT must not be INPUT or a folder above it: the outputs would land among the audio, and
    replacing OUT would delete the audio."""
    in_fs, in_path = _filesystem("INPUT", input_url, options)
    out_fs, out_path = _filesystem("OUT", out_url, options)
    if in_fs.protocol != out_fs.protocol:
        return
    if storage.is_local(in_fs):
        in_path, out_path = os.path.realpath(in_path), os.path.realpath(out_path)
    out_dir = out_path.rstrip("/") + "/"
    if in_path == out_path or in_path.startswith(out_dir):
        raise OutputConflict(f"OUT {out_url} is INPUT or a folder that contains it; choose an OUT "
                             f"outside {input_url}")


def _check_report_groups(job, layout: OutputLayout, renamed: Mapping[str, str] | None = None) -> None:
    """A report group that names no column would only fail after all the audio is processed.
    ``renamed``: metadata columns carried as ``meta_<name>`` (:func:`rename_metadata_clashes`)."""
    if not job.output.write_report:
        return
    renamed = renamed or {}
    from grv_batch.report._metrics import BANDS

    columns = predictions_schema(layout.member_names, layout.metadata_schema).names
    carried = ", ".join(f.name for f in layout.metadata_schema) or "none"
    named = [*(job.report.groups or ()), *(c for pair in job.report.intersections for c in pair)]
    ambiguous = [c for c in named if c in renamed]
    if ambiguous:  # the user means their column, which is carried under another name
        raise InputError(f"[report] names {', '.join(map(repr, ambiguous))}: grv-batch writes a column "
                         f"of that name; the metadata's is carried as "
                         f"{', '.join(repr(renamed[c]) for c in ambiguous)}: name that instead")
    missing = [g for g in job.report.groups or () if g not in columns]
    if missing:
        raise InputError(f"[report] groups names {', '.join(map(repr, missing))}, not a metadata "
                         f"column (metadata columns: {carried})")
    # a metadata column of a band's name keeps it; the band is then <name>_derived
    bands = ({f"{name}_derived" if name in columns else name for name, *_ in BANDS}
             if job.report.derived_bands else set())
    missing = [c for pair in job.report.intersections for c in pair
               if c not in columns and c not in bands]
    if missing:
        raise InputError(f"[report] intersections names {', '.join(map(repr, missing))}, neither a "
                         f"metadata column (metadata columns: {carried}) nor a derived band "
                         f"({', '.join(sorted(bands)) or 'derived_bands is off'})")


def _redacted_job(job) -> dict[str, Any]:
    data = job.model_dump(mode="json")
    data["storage_options"] = storage.redact_options(job.storage_options)
    return data


def _shard_owner(name: str) -> str:
    """Batch id that a shard or record name belongs to (``part-<id>[.<k>].parquet``)."""
    stem = name.split(".parquet")[0].split(".json")[0]
    stem = stem[len("part-"):] if stem.startswith("part-") else stem
    return stem.split(".")[0]


def _clean_unfinished(fs, out: str, done: set[str]) -> int:
    """Delete shards and sub-batch records of batches without a completion record.

    A batch interrupted part-way may have left some of its shards; they are rewritten when it runs
    again, but its sub-batch shards (after a worker death) would not be, so all go.
    """
    removed = 0
    for folder in (*SHARD_TABLES, BATCHES_DIR):
        base = storage.join(out, folder)
        for name in storage.list_names(fs, base):
            if name.startswith(".tmp-"):
                fs.rm(storage.join(base, name))
                removed += 1
                continue
            if _shard_owner(name) not in done:
                fs.rm(storage.join(base, name))
                removed += 1
    return removed


def batch_target_s(total_audio_s: float, batch_audio_s: float) -> float:
    """Audio seconds per batch for a corpus of ``total_audio_s``: ``batch_audio_s``, or less for a
    small corpus, so that every worker has work.

    The target is ``batch_audio_s`` halved as often as it takes to make at least ``MIN_TASKS``
    batches (but at least ``MIN_BATCH_AUDIO_S``). Halving in steps, rather than dividing the
    total, keeps the target, and so the batches, the same when a corpus grows a little between
    runs; it depends only on the corpus and the job, not on the number of workers.
    """
    if total_audio_s >= MIN_TASKS * batch_audio_s:
        return batch_audio_s
    halvings = math.ceil(math.log2(MIN_TASKS * batch_audio_s / max(total_audio_s, 1e-9)))
    return max(batch_audio_s / 2**halvings, min(MIN_BATCH_AUDIO_S, batch_audio_s))


# --------------------------------------------------------------------------- the run


@dataclass
class RunPlan:
    """Everything checked and decided before any worker starts (see :func:`plan_run`)."""

    input_url: str
    out_url: str
    job: Any
    metadata_url: str | None
    corpus: Corpus
    joined: Any
    tasks: list[BatchTask]
    done: set[str]
    resuming: bool
    layout: OutputLayout
    #: the outermost local folder that :func:`plan_run`'s claim on OUT created (OUT itself or a
    #: folder above it; None when OUT existed): :func:`release_out` may remove up to it
    out_created: str | None = None


def plan_run(input_url: str, out_url: str, job, *, metadata_url: str | None = None,
             console=None) -> RunPlan:
    """Check INPUT, metadata, the model bundle and OUT, and split the corpus into batches.

    Cheap and cluster-free, so unusable arguments fail before any worker starts.

    Raises
    ------
    InputError, OutputConflict, grv_batch.models.BundleError
        For unusable input, an OUT that belongs to another job, or a bundle failing its hashes.
    """
    options = dict(job.storage_options)
    say = console.print if console else (lambda *a, **k: None)
    typed_job = job  # OUT's identity: as written (an absolute bundle path would differ by folder)
    bundle = job.model.bundle
    if bundle and "://" not in bundle:
        # the workers load it: a relative path would be resolved in each worker's own folder
        model = job.model.model_copy(update={"bundle": os.path.abspath(os.path.expanduser(bundle))})
        job = job.model_copy(update={"model": model})
    _check_out_apart_from_input(input_url, out_url, options)
    corpus = discover(input_url, job.input, storage_options=options)
    metadata = (load_metadata(metadata_url, input_url=input_url, storage_options=options)
                if metadata_url else None)
    renamed: dict[str, str] = {}
    if metadata is not None:
        metadata, renamed = rename_metadata_clashes(metadata)
        if renamed:
            say("[yellow]Metadata column(s) named like columns grv-batch writes are carried as "
                + escape(", ".join(f"{a!r} -> {b!r}" for a, b in renamed.items())) + "[/yellow]")
    joined = join_metadata(corpus, metadata)
    if metadata is not None:
        # a metadata path can be a URL with a password or a signature in it
        examples = ", ".join(storage.redact_url(p) for p in joined.examples_missing_files[:3])
        say(f"Metadata: {len(metadata)} rows; {joined.files_without_metadata} file(s) without a "
            f"metadata row, {joined.metadata_without_files} row(s) without a file"
            + (f" (e.g. {escape(examples)})" if joined.metadata_without_files else ""))
    members, model_sha256 = _member_names(job.model)
    changed = job.analysis_changes()
    if changed:
        say(f"[yellow]warning: {escape(', '.join(changed))} differ from the defaults the models were trained "
            f"with: predictions may be less accurate than docs/models.md reports[/yellow]")
    layout = OutputLayout(out_url=storage.absolute(out_url), metadata_schema=_metadata_schema(metadata),
                          member_names=members, compression=job.output.compression,
                          secrets=tuple(storage.secret_values(options)))
    _check_report_groups(job, layout, renamed)
    # OUT is claimed (its _job.json written) only once every argument has been checked
    try:
        fs, out = storage.filesystem(out_url, options)
        out_created = _first_missing_folder(out) if storage.is_local(fs) else None
        resuming = _prepare_out(fs, out, typed_job, input_url=input_url, model_sha256=model_sha256)
    except OutputConflict:
        raise
    except Exception as exc:  # noqa: BLE001 - an unreachable endpoint, bad credentials...
        raise InputError(f"OUT {out_url} cannot be used: {type(exc).__name__}: {exc}") from exc
    target = batch_target_s(sum(f.estimated_s for f in corpus.files), job.execution.batch_audio_s)
    batches = plan_batches(corpus.files, target_audio_s=target,
                           max_files=job.execution.max_files_per_batch)
    columns = ",".join(f"{f.name}:{f.type}" for f in layout.metadata_schema)
    tasks = []
    for b in batches:
        rows = tuple(joined.by_path.get(f.path) for f in b)
        tasks.append(BatchTask(batch_id=batch_id_for(b, rows if metadata is not None else None,
                                                     metadata_columns=columns),
                               files=tuple(b), metadata=rows))
    recorded = {n[:-len(".json")] for n in storage.list_names(fs, storage.join(out, BATCHES_DIR))
                if n.endswith(".json") and "." not in n[:-len(".json")]}
    # a batch is done when its completion record is there and so are its rows (in one shard, or
    # one per file after a split): a record whose rows were lost would never be redone otherwise
    shards = set(storage.list_names(fs, storage.join(out, "files"))) if recorded else set()
    done = {t.batch_id for t in tasks if t.batch_id in recorded
            and all(name in shards for _, name in _shards_of(t, shards))}
    if done:
        rows = read_table(fs, out, "files", ["file_id", "status"]).to_pandas()
        # ... and so are the features and predictions shards of its ok files (a shard of those two
        # tables lost since, by an interrupted copy of OUT say, would otherwise never come back)
        ok = set(rows.loc[rows["status"] == "ok", "file_id"])
        kept = [set(storage.list_names(fs, storage.join(out, name))) for name in ("features", "predictions")]
        done = {t.batch_id for t in tasks if t.batch_id in done and all(
            name in names for names in kept for f, name in _shards_of(t, shards) if f.file_id in ok)}
        if job.output.retry_errors:
            failed = set(rows.loc[rows["status"] == "error", "file_id"])
            retried = {t.batch_id for t in tasks if any(f.file_id in failed for f in t.files)}
            done -= retried
            if failed:
                say(f"Retrying {len(failed)} error row(s) in {len(retried & recorded)} batch(es)")
    say(f"Found {len(corpus.files)} audio file(s) in {escape(storage.redact_url(input_url))}; {len(tasks)} batch(es)"
        + (f", {len(done)} already done (resuming)" if resuming and done else ""))
    return RunPlan(input_url=input_url, out_url=out_url, job=job, metadata_url=metadata_url,
                   corpus=corpus, joined=joined, tasks=tasks, done=done, resuming=resuming,
                   out_created=out_created,
                   layout=layout)


def run_job(input_url: str, out_url: str, job, *, client, metadata_url: str | None = None,
            console=None, progress: bool = True, plan: RunPlan | None = None,
            stop: StopSignal | None = None) -> RunSummary:
    """Run ``job`` over every audio file under ``input_url`` and write the tables to ``out_url``.

    Parameters
    ----------
    input_url
        Local folder, single file, or fsspec URL.
    out_url
        Output folder or bucket prefix.
    job
        A validated :class:`grv_batch.spec.JobSpec`.
    client
        A ``distributed.Client``; the caller owns the cluster (see :func:`dask_client`).
    metadata_url
        Optional CSV/Parquet with a ``path`` column.
    plan
        The result of :func:`plan_run` when the caller checked the arguments before starting a
        cluster; planned here otherwise.
    stop
        Checked before the first batch, every 0.2 s while batches run and after the last: once
        set, the run raises ``KeyboardInterrupt`` (the finished batches are kept and a rerun
        resumes). A :class:`threading.Event`, or anything with its ``is_set()`` and
        ``wait(timeout)``; the CLI passes a flag its Ctrl-C handler sets.

    Raises
    ------
    InputError, OutputConflict
        For unusable input or an OUT that belongs to another job.
    KeyboardInterrupt
        When ``stop`` is set.
    """
    started = time.perf_counter()
    if plan is None:
        plan = plan_run(input_url, out_url, job, metadata_url=metadata_url, console=console)
    job = plan.job  # as planned (e.g. the bundle path made absolute)
    options = dict(job.storage_options)
    secrets = plan.layout.secrets
    say = console.print if console else (lambda *a, **k: None)
    fs, out = storage.filesystem(out_url, options)
    # _run.json means "this run completed"; it must not vouch for tables this run is about to change
    storage.remove_if_exists(fs, storage.join(out, RUN_FILE))
    _clean_unfinished(fs, out, plan.done)
    pending = [t for t in plan.tasks if t.batch_id not in plan.done]
    phases = {"prepare_s": time.perf_counter() - started}
    if job.output.write_report and pending:
        _start_report_imports(ground_truth=metadata_url is not None)
    if stop is not None and stop.is_set():
        raise KeyboardInterrupt  # lost while the cluster started
    if pending:
        # INPUT's folder (an unmounted share still has its empty mount point) and a file of it that
        # the client can read: a broken link or a file gone since listing is an error row, not a
        # sign of a worker that cannot see INPUT
        first = pending[0].files[0].url
        paths = [("INPUT", first)] if "://" in first else [("INPUT", plan.corpus.root)] + [
            ("INPUT", f.url) for f in _first_readable(pending)]
        _check_workers_see(client, paths + [("OUT", storage.join(plan.layout.out_url, JOB_FILE))])
    records = _execute(client, pending, job=job, layout=plan.layout, options=options,
                       console=console, progress=progress, stop=stop)
    if stop is not None and stop.is_set():
        raise KeyboardInterrupt  # lost while the last batches finished: stop before the tables
    phases["batches_s"] = time.perf_counter() - started - sum(phases.values())
    counts = _account(fs, out, plan.corpus, plan.tasks)
    _write_empty_tables(fs, out, job, plan.layout)
    speakers_n = _write_speakers(fs, out, job, options)
    phases["tables_s"] = time.perf_counter() - started - sum(phases.values())
    report_path = None
    report_error = None
    if job.output.write_report:
        try:
            from grv_batch.report import build_report

            report_path = build_report(out_url, params=job.report, storage_options=options)
        except Exception as exc:  # noqa: BLE001 - a failed report must not lose a finished run
            report_error = storage.redact_text(f"{type(exc).__name__}: {exc}", secrets)
            say(f"[yellow]warning: the report could not be built: {escape(report_error)}[/yellow]")
    phases["report_s"] = time.perf_counter() - started - sum(phases.values())
    wall = time.perf_counter() - started
    processed = float(sum(r.get("audio_s") or 0.0 for r in records))
    model_identity = next((r.get("model") for r in records if r.get("model")), None)
    if model_identity is None:
        model_identity = _previous_identity(fs, out)
    tasks, joined = plan.tasks, plan.joined
    summary = RunSummary(out=out_url, n_files=counts["n_files"], n_ok=counts["n_ok"],
                         n_error=counts["n_error"], n_batches=len(tasks),
                         n_batches_skipped=len(tasks) - len(pending),
                         audio_s=counts["audio_s"], wall_s=wall, report=report_path,
                         processed_audio_s=processed,
                         counts={**counts, "n_speakers": speakers_n,
                                 "files_without_metadata": joined.files_without_metadata,
                                 "metadata_without_files": joined.metadata_without_files,
                                 "unmatched_files": plan.corpus.unmatched})
    storage.write_json_atomic(fs, storage.join(out, RUN_FILE), {
        "completed": _now(),
        "input": storage.absolute(storage.redact_url(input_url)),
        "metadata": storage.redact_url(metadata_url) if metadata_url else None,
        "job": _redacted_job(job),
        "job_fingerprint": job.fingerprint(),
        "model": model_identity,
        "versions": _versions(),
        "counts": summary.counts,
        "batches": {"total": len(tasks), "run_now": len(pending),
                    "skipped_as_done": len(tasks) - len(pending)},
        # this command's: a resumed run's wall time covers only the batches it ran
        "timings": {"wall_s": wall, "audio_s": processed,
                    "realtime_factor": processed / wall if wall else None,
                    "task_wall_s": sum(r.get("wall_s") or 0.0 for r in records),
                    # where the run's wall time went: set-up, the batches on the workers, the
                    # accounting and speakers table, the report
                    "phases": phases},
        "report": storage.redact_url(report_path) if report_path else None,
        "report_error": report_error,
    })
    return summary


def _import_report_libraries(ground_truth: bool) -> None:
    with contextlib.suppress(Exception):  # the report imports them again and reports any error
        import grv_batch.report  # noqa: F401 - imports matplotlib
        if ground_truth:  # fairlearn's cross-check only runs on files with a known gender
            import fairlearn.metrics  # noqa: F401 - imports scikit-learn, about 1 s


def _start_report_imports(*, ground_truth: bool) -> threading.Thread:
    """Import the report's libraries in the background while the workers run the batches.

    They cost the client up to a second and a half of CPU: paid after the batches, that is wall
    time added to every run; paid during them, it overlaps the batches.
    """
    thread = threading.Thread(target=_import_report_libraries, args=(ground_truth,),
                              name="grv-batch-report-imports", daemon=True)
    thread.start()
    return thread


def _execute(client, tasks: list[BatchTask], *, job, layout: OutputLayout,
             options: Mapping[str, Any], console, progress: bool,
             stop: StopSignal | None = None) -> list[dict[str, Any]]:
    """Submit the tasks (longest first, a bounded number ahead of the workers), follow them with a
    progress bar, and recover from failed tasks.

    A task whose workers keep dying (``KilledWorker``) or that raises after its retries is split
    into one task per file; a file whose task still kills its worker (or still raises) gets an
    ``error`` row saying so, and the rest go on. An exception that every file of a split batch
    raises alike, or that the first tasks all raise before any task worked, is not the files'
    doing: the run stops with :class:`RunFailed`.
    """
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    if not tasks:
        return []
    futures = {}
    # Keys are unique per OUT: two runs of one job on a shared scheduler must not share tasks.
    key_prefix = f"grv-{job.fingerprint()}-{hashlib.sha1(layout.out_url.encode()).hexdigest()[:8]}"
    # Longest batches first: a long recording started last would leave the other workers idle
    # at the end (the batch ids, and so resuming, do not depend on this order).
    ordered = sorted(tasks, key=lambda t: -sum(f.estimated_s for f in t.files))
    waiting = iter(enumerate(ordered))
    window = {"size": MIN_BATCHES_IN_FLIGHT, "checked": -float("inf")}

    def submit_planned(completed=None) -> None:
        """Top up the planned batches in flight to the window (resized to the workers every 5 s:
        a cluster may grow or shrink during the run)."""
        now = time.monotonic()
        if now - window["checked"] > 5.0:
            try:
                threads = sum(client.nthreads().values())
            except Exception:  # noqa: BLE001 - a scheduler gone quiet: the batches' results say why
                threads = 0
            window.update(size=max(MIN_BATCHES_IN_FLIGHT, BATCHES_IN_FLIGHT_PER_THREAD * threads),
                          checked=now)
        while len(futures) < window["size"]:
            nxt = next(waiting, None)
            if nxt is None:
                return
            priority, task = nxt
            future = client.submit(process_batch, task, job=job, layout=layout,
                                   storage_options=options, key=f"{key_prefix}-{task.shard}",
                                   retries=job.execution.retries, pure=False,
                                   priority=len(ordered) - priority)
            futures[future] = task
            if completed is not None:
                completed.add(future)

    submit_planned()
    records: list[dict[str, Any]] = []
    split_parents: dict[str, list[str]] = {}
    failures: dict[str, list] = {}  # split batch -> [its exception, children failing the same way]
    seen: dict[str, int] = {}       # exception -> planned batches it failed (not dead workers)
    error_tasks: list[BatchTask] = []  # tasks given error rows for an exception in this run
    attempts: dict[str, int] = {}
    n_worked = 0                    # tasks that returned normally

    def stop_if_not_the_files(message: str, same_everywhere: bool) -> None:
        """The same exception on every file tried: the cause is the workers or OUT, not the files.
        Undo this run's error rows for it (a rerun retries those files) and stop with one line."""
        nothing_worked = n_worked == 0 and seen.get(message, 0) >= SAME_FAILURE_STOPS_RUN
        if not (same_everywhere or nothing_worked):
            return
        for failed in error_tasks:
            _remove_batch_shards(failed, layout, options)
            if failed.shard != failed.batch_id:
                # the parent's completion record would vouch for the child rows just removed,
                # and a rerun would skip the whole batch: the parent reruns whole instead
                storage.remove_if_exists(fs_out, storage.join(out_path, BATCHES_DIR,
                                                              f"{failed.batch_id}.json"))
        raise RunFailed(f"{message}, for every file tried; the cause is not in the files (check "
                        f"that the workers run this grv-batch version and can read INPUT and "
                        f"write OUT)")

    fs_out, out_path = storage.filesystem(layout.out_url, options)
    bar = _progress(console, total=len(tasks), enabled=progress)
    with bar as prog:
        task_id = prog.add_task("batches", total=len(tasks)) if prog else None
        completed = as_completed(list(futures))
        for future in _until_stopped(completed, stop):
            task = futures.pop(future)
            if future.status in ("finished", "error"):  # cancelled: the scheduler is gone (below)
                submit_planned(completed)
            try:
                record = future.result()
                n_worked += 1
            except Exception as exc:  # noqa: BLE001 - one failed batch must not stop the run
                if future.status != "error":
                    # cancelled (the scheduler was lost): not the batch's doing; a rerun resumes
                    raise RunFailed(f"the Dask scheduler stopped running batch {task.batch_id} "
                                    f"({type(exc).__name__}); finished batches are kept: run the "
                                    f"same command again to resume") from exc
                killed = isinstance(exc, KilledWorker)
                message = storage.redact_text(f"{type(exc).__name__}: {exc}", layout.secrets)[:300]
                _remove_batch_shards(task, layout, options)  # the dead attempt may have written some
                if not killed and task.shard == task.batch_id:  # a planned batch, not a split
                    seen[message] = seen.get(message, 0) + 1
                    stop_if_not_the_files(message, same_everywhere=False)
                if len(task.files) > 1:
                    failures[task.batch_id] = [message, 0]
                    for k, (f, meta) in enumerate(zip(task.files, task.metadata, strict=True)):
                        sub = BatchTask(batch_id=task.batch_id, files=(f,), metadata=(meta,),
                                        shard_name=f"{task.batch_id}.{k}")
                        # a worker that died is not retried by Dask (we count deaths below);
                        # an exception may be a transient storage error: the job's retries apply
                        new = client.submit(process_batch, sub, job=job, layout=layout,
                                            storage_options=options, pure=False,
                                            retries=0 if killed else job.execution.retries,
                                            key=f"{key_prefix}-{sub.shard}")
                        futures[new] = sub
                        completed.add(new)
                    split_parents[task.batch_id] = [f"{task.batch_id}.{k}"
                                                    for k in range(len(task.files))]
                    if console:
                        what = "Workers died running" if killed else "Failure in"
                        console.print(f"[yellow]{what} batch {task.batch_id}; retrying its "
                                      f"{len(task.files)} files one by one[/yellow]")
                    continue
                attempts[task.shard] = attempts.get(task.shard, 0) + 1
                if killed and attempts[task.shard] < SINGLE_FILE_ATTEMPTS:
                    # A file queued on a worker that another file killed is blamed as well; only
                    # a file that kills its worker again, on its own, is declared dead.
                    new = client.submit(process_batch, task, job=job, layout=layout,
                                        storage_options=options, retries=0, pure=False,
                                        key=f"{key_prefix}-{task.shard}-{attempts[task.shard]}")
                    futures[new] = task
                    completed.add(new)
                    continue
                if killed:
                    reason = ("the worker process died while processing this file, on every retry "
                              "(it may crash the decoder or exhaust memory)")
                else:
                    same = failures.get(task.batch_id)
                    if same is not None and same[0] == message:
                        same[1] += 1
                        stop_if_not_the_files(message, same_everywhere=same[1] == len(
                            split_parents.get(task.batch_id, ())))
                    reason = f"processing failed: {message}"
                    error_tasks.append(task)
                record = error_batch_record(task, layout=layout, storage_options=options,
                                            reason=reason)
            records.append(record)
            finished = (task.shard == task.batch_id
                        or _maybe_close_parent(task.batch_id, split_parents, records, layout,
                                               options))
            if finished and prog is not None:
                prog.update(task_id, advance=1)
    return records


def _until_stopped(completed, stop: StopSignal | None) -> Iterator[Any]:
    """``completed``'s futures as they finish; ``KeyboardInterrupt`` within 0.2 s of ``stop``
    being set, also while a long batch runs (a Ctrl-C that Python lost: see run_job's ``stop``)."""
    while True:
        if stop is not None:
            while not completed.has_ready() and not completed.is_empty():
                if stop.wait(0.2):
                    break
            if stop.is_set():
                raise KeyboardInterrupt
        try:
            yield next(completed)
        except StopIteration:
            return


def _remove_batch_shards(task: BatchTask, layout: OutputLayout,
                         options: Mapping[str, Any]) -> None:
    """Delete the shards (and completion record: the attempt may have died after writing it, before
    reporting back) a failed attempt of ``task`` may have left, before its files run again."""
    fs, out = storage.filesystem(layout.out_url, options)
    paths = [storage.join(out, name, f"part-{task.shard}.parquet") for name in SHARD_TABLES]
    for path in [*paths, storage.join(out, BATCHES_DIR, f"{task.shard}.json")]:
        storage.remove_if_exists(fs, path)


def _maybe_close_parent(parent: str, split_parents: dict[str, list[str]],
                        records: list[dict[str, Any]], layout: OutputLayout,
                        options: Mapping[str, Any]) -> bool:
    """Write the parent batch's completion record once all its one-file tasks are done.

    Returns True when the parent is complete.
    """
    children = split_parents.get(parent)
    if children is None:
        return False
    have = {r["shard"]: r for r in records if r.get("batch_id") == parent}
    if not all(c in have for c in children):
        return False
    fs, out = storage.filesystem(layout.out_url, options)
    kids = [have[c] for c in children]
    storage.write_json_atomic(fs, storage.join(out, BATCHES_DIR, f"{parent}.json"), {
        "batch_id": parent, "shard": parent, "children": children,
        "n_files": sum(k["n_files"] for k in kids), "n_ok": sum(k["n_ok"] for k in kids),
        "n_error": sum(k["n_error"] for k in kids), "audio_s": sum(k["audio_s"] for k in kids),
        "wall_s": sum(k["wall_s"] for k in kids), "worker_pid": None,
        "model": next((k["model"] for k in kids if k.get("model")), None)})
    del split_parents[parent]
    return True


def _progress(console, *, total: int, enabled: bool):
    if not enabled or console is None:
        return contextlib.nullcontext(None)
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)


def read_table(fs, out: str, name: str, columns: list[str] | None = None) -> pa.Table:
    """Read one output table (a folder of Parquet shards) as a single Arrow table (empty if none)."""
    table = storage.read_parquet(fs, storage.join(out, name), columns)
    if table is None:
        return pa.table({c: pa.array([], pa.string()) for c in (columns or [])})
    return table


def _shards_of(task: BatchTask, files_shards: set[str]) -> list[tuple[AudioFile, str]]:
    """Each file of a batch with the name of the shard that holds its rows (in every table): the
    batch's one shard, or one per file where the batch was split (as its ``files`` shards show)."""
    whole = f"part-{task.batch_id}.parquet"
    if whole in files_shards:
        return [(f, whole) for f in task.files]
    return [(f, f"part-{task.batch_id}.{k}.parquet") for k, f in enumerate(task.files)]


def _account(fs, out: str, corpus: Corpus, tasks: Sequence[BatchTask] = ()) -> dict[str, Any]:
    """Check that every discovered file has exactly one row in ``files``; count the outcomes.

    When they do not match, the completion records of the batches holding the missing or
    duplicated files are removed first, so that running the same command again redoes them.
    """
    table = read_table(fs, out, "files", ["file_id", "status", "duration_s"]).to_pandas()
    expected = {f.file_id for f in corpus.files}
    ids = table["file_id"]
    duplicated = sorted(set(ids[ids.duplicated()]))
    missing = sorted(expected - set(ids))
    unexpected = sorted(set(ids) - expected)
    if duplicated or missing or unexpected:
        wrong = set(duplicated) | set(missing)
        for task in tasks:
            if any(f.file_id in wrong for f in task.files):
                storage.remove_if_exists(fs, storage.join(out, BATCHES_DIR, f"{task.batch_id}.json"))
        raise IncompleteRun(
            f"files table does not match the corpus: {len(missing)} missing, {len(duplicated)} "
            f"duplicated, {len(unexpected)} unexpected; run the same command again to repair")
    ok = table["status"] == "ok"
    return {"n_files": int(len(table)), "n_ok": int(ok.sum()), "n_error": int((~ok).sum()),
            "audio_s": float(table.loc[ok, "duration_s"].sum())}


def _write_empty_tables(fs, out: str, job, layout: OutputLayout) -> None:
    """Give ``features`` and ``predictions`` an empty shard when no file was ok, so each table is
    still a Parquet dataset with its columns. A resume deletes it (no batch owns it) and
    rewrites it only if still needed."""
    schemas = {"features": features_schema(job.features.n_mfcc),
               "predictions": predictions_schema(layout.member_names, layout.metadata_schema)}
    for name, schema in schemas.items():
        folder = storage.join(out, name)
        if not any(n.endswith(".parquet") for n in storage.list_names(fs, folder)):
            storage.write_parquet_atomic(fs, storage.join(folder, "part-empty.parquet"),
                                         schema.empty_table(), compression=job.output.compression)


def _write_speakers(fs, out: str, job, options: Mapping[str, Any]) -> int:
    """Pool predictions per speaker into ``speakers`` (one shard, rewritten on every finish)."""
    from grv_batch.speakers import aggregate_speakers

    predictions = read_table(fs, out, "predictions").to_pandas()
    speakers = aggregate_speakers(predictions, params=job.speakers)
    folder = storage.join(out, "speakers")
    storage.write_parquet_atomic(fs, storage.join(folder, "part-0.parquet"),
                                 storage.plain_strings(pa.Table.from_pandas(speakers, preserve_index=False)),
                                 compression=job.output.compression)
    return int(len(speakers))


def _metadata_schema(metadata) -> pa.Schema:
    """Arrow types of the metadata columns carried into ``predictions`` (fixed for all shards)."""
    if metadata is None:
        return pa.schema([])
    frame = metadata.drop(columns=["path"])
    schema = pa.Schema.from_pandas(frame, preserve_index=False)
    fields = []
    for f in schema:
        kind = f.type
        if pa.types.is_null(kind) or pa.types.is_large_string(kind):
            kind = pa.string()
        if f.name in ("speaker_id", "gender"):
            kind = pa.string()
        fields.append(pa.field(f.name, kind))
    return pa.schema(fields)


def _member_names(params) -> tuple[tuple[str, ...], str]:
    """Members of the bundle the job uses and the sha256 of its manifest, checked without
    loading any model (so a tampered bundle stops the run before a worker starts)."""
    import json
    from pathlib import Path

    from grv_batch.models.bundle import ENSEMBLE_JSON, MANIFEST, SHIPPED_BUNDLE, sha256_file, verify_bundle

    root = Path(params.bundle or SHIPPED_BUNDLE).expanduser()
    verify_bundle(root)
    available = list(json.loads((root / ENSEMBLE_JSON).read_text())["members"])
    members = tuple(params.members if params.members is not None else available)
    unknown = [m for m in members if m not in available]
    if unknown or not members:
        raise InputError(f"[model] members {list(members)}: "
                         + (f"the bundle has no member {', '.join(map(repr, unknown))}; "
                            if unknown else "at least one is needed; ")
                         + f"its members are {', '.join(available)}")
    return members, sha256_file(root / MANIFEST)


def _previous_identity(fs, out: str) -> Any:
    for name in storage.list_names(fs, storage.join(out, BATCHES_DIR)):
        record = storage.read_json(fs, storage.join(out, BATCHES_DIR, name))
        if record.get("model"):
            return record["model"]
    return None


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    names = ["grv-batch", "dask", "distributed", "librosa", "numpy", "pandas", "pyarrow", "keras",
             "tensorflow-cpu", "tensorflow", "soundfile", "noisereduce", "soxr", "scikit-learn"]
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return found


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


__all__ = ["run_job", "plan_run", "RunPlan", "dask_client", "RunSummary", "OutputConflict", "IncompleteRun", "InputError",
           "read_table"]
