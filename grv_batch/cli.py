"""The ``grv-batch`` command. It only parses arguments and calls the library."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

app = typer.Typer(
    name="grv-batch",
    help="Gender recognition by voice over folders and buckets of audio, on Dask, to Parquet.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)

StorageOptions = Annotated[
    Optional[list[str]],
    typer.Option("--storage-option", "-s", metavar="KEY=VALUE",
                 help="fsspec option for the buckets read and written (repeatable), e.g. "
                      "endpoint_url=URL or key=KEY. Values are never written or logged."),
]


def _fail(message: str, *, code: int = 2) -> None:
    from rich.markup import escape

    from grv_batch.storage import redact_url

    # escape: messages quote job-file sections ("[execution]") and paths, which are not markup;
    # URLs lose their credentials and query strings, whoever wrote the message
    message = " ".join(redact_url(message).split())  # one line, whatever a library wrote
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=code)


def _quiet_libraries() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class CtrlCFlag:
    """Set by the Ctrl-C handler, read by the run between batches: the ``set`` / ``is_set`` /
    ``wait`` of :class:`threading.Event` without its lock.

    A signal handler runs in the main thread between two bytecodes, also while that thread is
    inside ``Event.wait`` holding the event's lock: ``Event.set`` from the handler then waits for
    that lock forever (a run froze after Ctrl-C this way). Setting a plain attribute takes no
    lock; ``wait`` sleeps, and a Ctrl-C interrupts the sleep.
    """

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        if not self._set:
            time.sleep(timeout)
        return self._set


@contextlib.contextmanager
def _ctrl_c_sets(flag: CtrlCFlag):
    """Ctrl-C raises ``KeyboardInterrupt`` as usual and also sets ``flag``, which the run checks
    between batches.

    Python raises the interrupt between any two bytecodes of the main thread, also inside a
    ``__del__`` (distributed's ``Future.__del__`` runs each time the run drops a finished future).
    There it is printed as "Exception ignored" and lost, and the run went on to "Done": the flag
    keeps it, and the lost copy is not printed.
    """
    def on_sigint(signum, frame):
        flag.set()
        signal.default_int_handler(signum, frame)

    def unraisable(info, previous=sys.unraisablehook):
        if not (flag.is_set() and isinstance(info.exc_value, KeyboardInterrupt)):
            previous(info)

    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield  # embedded somewhere that handles Ctrl-C itself
        return
    saved_hook = sys.unraisablehook
    signal.signal(signal.SIGINT, on_sigint)
    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.unraisablehook = saved_hook


@app.command()
def run(
    input: Annotated[str, typer.Argument(metavar="INPUT", help="Folder, single file, or bucket URL (s3://bucket/prefix/).")],
    out: Annotated[str, typer.Option("--out", "-o", help="Output folder or bucket URL.")],
    job: Annotated[Optional[Path], typer.Option("--job", "-j", help="Job file (TOML); default jobs/default.toml settings.")] = None,
    metadata: Annotated[Optional[str], typer.Option("--metadata", "-m", help="CSV or Parquet with a 'path' column (optional speaker_id, gender, groups).")] = None,
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", help="Existing Dask scheduler (tcp://host:8786); also DASK_SCHEDULER_ADDRESS.")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", "-w", min=1, help="Local worker processes (default: one per core).")] = None,
    storage_option: StorageOptions = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier grv-batch output of another job in OUT (never a folder grv-batch did not write).", metavar="")] = False,
    retry_errors: Annotated[bool, typer.Option("--retry-errors", help="When resuming, run the files that became error rows again (e.g. after a bucket timed out).", metavar="")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.", metavar="")] = False,
) -> None:
    """Analyse every audio file under INPUT and write Parquet tables (and a report) to OUT."""
    _quiet_libraries()
    from grv_batch import runner, storage
    from grv_batch.models import BundleError
    from grv_batch.spec import JobError, load_job
    from grv_batch.storage import (merge_options, parse_storage_options, redact_text, redact_url,
                                   secret_values, url_secrets)

    try:
        overrides: dict = {"execution": {}, "output": {}}
        if scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS"):
            overrides["execution"]["scheduler"] = scheduler or os.environ["DASK_SCHEDULER_ADDRESS"]
        if workers:
            overrides["execution"]["workers"] = workers
        if overwrite:
            overrides["output"]["overwrite"] = True
        if retry_errors:
            overrides["output"]["retry_errors"] = True
        cli_options = parse_storage_options(storage_option or [])
        spec = load_job(job, overrides=overrides)
        if cli_options:  # a dotted -s key overrides one nested option, not its whole table
            spec = spec.model_copy(update={"storage_options": merge_options(spec.storage_options,
                                                                            cli_options)})
    except (JobError, ValueError) as exc:
        _fail(str(exc))
    if workers and spec.execution.scheduler:
        console.print("[yellow]warning: --workers is ignored: the named scheduler's workers run the job[/yellow]")
    secrets = [*secret_values(spec.storage_options), *url_secrets(input), *url_secrets(out),
               *url_secrets(metadata or "")]
    interrupted = CtrlCFlag()
    plan, started = None, False
    try:
        with _ctrl_c_sets(interrupted):
            plan = runner.plan_run(input, out, spec, metadata_url=metadata, console=console)
            # nothing left to run (a rerun of a finished job): no cluster to start
            cluster = (runner.dask_client(spec.execution, console=console)
                       if len(plan.done) < len(plan.tasks) else contextlib.nullcontext())
            with cluster as client:
                started = True
                summary = runner.run_job(input, out, spec, client=client, metadata_url=metadata,
                                         console=console, progress=not no_progress, plan=plan,
                                         stop=interrupted)
            if interrupted.is_set():
                raise KeyboardInterrupt  # lost while the tables were finished: still a Ctrl-C
    except KeyboardInterrupt:
        _fail("interrupted; finished batches are kept: run the same command again to resume",
              code=130)
    except (runner.InputError, runner.OutputConflict, runner.IncompleteRun, runner.RunFailed) as exc:
        if plan is not None and not started:  # the cluster never came: leave no OUT behind
            with contextlib.suppress(Exception):
                runner.release_out(plan)
        _fail(redact_text(str(exc), secrets))
    except BundleError as exc:
        _fail(f"model bundle: {exc}")
    except Exception as exc:
        if not storage.is_storage_error(exc):
            raise
        _fail(redact_text(f"{type(exc).__name__}: {exc}; finished batches are kept: run the same "
                          f"command again to resume", secrets))
    if summary.n_batches_skipped == summary.n_batches:
        done = f"nothing left to run, all {summary.n_batches} batch(es) were already done"
    else:
        done = (f"{summary.processed_audio_s / 3600:.2f} h of audio in {summary.wall_s:.1f} s "
                f"({summary.processed_audio_s / max(summary.wall_s, 1e-9):.0f}x realtime)"
                + (f"; {summary.n_batches_skipped} batch(es) already done"
                   if summary.n_batches_skipped else ""))
    console.print(f"Done: {summary.n_files} file(s), {summary.n_ok} ok, {summary.n_error} error; "
                  f"{done}", markup=False)
    console.print(f"Tables: {redact_url(out).rstrip('/')}/files, features, predictions, speakers"
                  + (f"; report: {redact_url(summary.report)}/report.html" if summary.report else ""),
                  markup=False)


@app.command()
def train(
    metadata: Annotated[Path, typer.Option("--metadata", "-m", help="Manifest CSV: path, speaker_id, gender, corpus, ...")],
    data_root: Annotated[Path, typer.Option("--data-root", help="Folder the manifest paths are relative to.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the model bundle.")],
    commonvoice: Annotated[Optional[Path], typer.Option("--commonvoice", help="Common Voice mel128 features.parquet (default: beside the manifest).")] = None,
    cv_mel_model: Annotated[Optional[Path], typer.Option("--cv-mel-model", help="An already trained cv_mel .keras instead of training it on Common Voice.")] = None,
    seed_model: Annotated[Optional[Path], typer.Option("--seed-model", help="The original network's weights, evaluated side by side.")] = None,
    folds: Annotated[int, typer.Option("--folds", min=2, help="Speaker-grouped cross-validation folds.")] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the folds, augmentation and network initialisation.")] = 0,
    variants: Annotated[str, typer.Option("--variants", help="Augmentation variants trained and tested on, comma-separated.", show_default="clean, telephone, telephone2, wild, perturb, mobile: the shipped recipe")] = "clean,telephone,telephone2,wild,perturb,mobile",
    eval_variants: Annotated[str, typer.Option("--eval-variants", help="Variants only tested on held-out speakers, never trained on.")] = "",
    train_only: Annotated[str, typer.Option("--train-only", help="Variants only some audio members train on and nothing is scored on, e.g. pitch=voice_profile (comma-separated variant=member+member).")] = "",
    heldout_corpus: Annotated[bool, typer.Option("--heldout-corpus/--no-heldout-corpus", help="Also train on all corpora but one and test on that one.")] = True,
    epochs: Annotated[str, typer.Option("--epochs", help="Per-member epochs, e.g. frames=40 (comma-separated member=N; members not named keep their default).")] = "",
    cache: Annotated[Optional[Path], typer.Option("--cache", help="Feature and out-of-fold cache (reruns are cheap).")] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Folder for out-of-fold predictions and summary.json.")] = None,
    version: Annotated[Optional[str], typer.Option("--version", help="Bundle version (default: today's date).")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Processes for feature extraction.")] = 2,
) -> None:
    """Train the ensemble with speaker-grouped cross-validation and write a model bundle."""
    _quiet_libraries()
    from grv_batch.training import VARIANT_NAMES, train_bundle
    from grv_batch.training.augment import PITCH_VARIANTS
    from grv_batch.training.train import ManifestError

    if not metadata.exists():
        _fail(f"metadata {metadata} does not exist")
    if not data_root.is_dir():
        _fail(f"data root {data_root} is not a folder")
    try:
        only = {v.strip(): tuple(m.strip() for m in ms.split("+")) for v, ms in (kv.split("=") for kv in _csv(train_only))}
    except ValueError:
        _fail(f"--train-only must look like pitch=voice_profile, got {train_only!r}")
    names = {"variants": _csv(variants), "eval-variants": _csv(eval_variants), "train-only": list(only)}
    for option, values in names.items():
        unknown = [v for v in values if v not in VARIANT_NAMES]
        if unknown:
            _fail(f"--{option}: unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANT_NAMES)}")
    if not names["variants"]:
        _fail(f"--variants needs at least one variant; known: {', '.join(VARIANT_NAMES)}")
    from grv_batch.training.train import AUDIO_MEMBERS

    not_audio = sorted({m for ms in only.values() for m in ms} - set(AUDIO_MEMBERS))
    if not_audio:
        _fail(f"--train-only: {', '.join(not_audio)} is not an audio member; known: {', '.join(AUDIO_MEMBERS)}")
    if set(PITCH_VARIANTS) & set(sum(names.values(), [])) and importlib.util.find_spec("pyworld") is None:
        _fail("the pitch variants need pyworld (the WORLD vocoder): pip install 'grv-batch[train]'")
    try:
        per_member = {k.strip(): int(v) for k, v in (kv.split("=") for kv in _csv(epochs))}
    except ValueError:
        _fail(f"--epochs must look like frames=40,voice_profile=80, got {epochs!r}")
    from grv_batch.models.members import REGISTRY as members

    unknown = sorted(set(per_member) - set(members))
    if unknown:
        _fail(f"--epochs: unknown member(s) {', '.join(unknown)}; known: {', '.join(members)}")
    for option, path in (("--seed-model", seed_model), ("--cv-mel-model", cv_mel_model),
                         ("--commonvoice", commonvoice)):
        if path is not None and not path.exists():
            _fail(f"{option} {path} does not exist")
    if commonvoice is None and cv_mel_model is None:
        guess = metadata.parent / "commonvoice-mel128" / "features.parquet"
        commonvoice = guess if guess.exists() else None
    try:
        train_bundle(metadata=metadata, data_root=data_root, out=out, commonvoice=commonvoice,
                     cv_mel_model=cv_mel_model, seed_model=seed_model, folds=folds, seed=seed,
                     variants=tuple(names["variants"]), eval_variants=tuple(names["eval-variants"]),
                     train_only=only, heldout_corpus=heldout_corpus, epochs=per_member, cache=cache, report=report,
                     version=version, workers=workers)
    except ManifestError as exc:  # the manifest or its audio, as train_bundle checks them
        _fail(str(exc))
    console.print(f"Model bundle written to {out} (model card: {out / 'model_card.md'}); "
                  f"use it with [model] bundle = \"{out}\" in a job file", markup=False)


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@app.command()
def report(
    out: Annotated[str, typer.Argument(metavar="OUT", help="A finished run's OUT (folder or bucket URL).")],
    metadata: Annotated[Optional[str], typer.Option("--metadata", "-m", help="Other metadata to join on 'path' (replaces carried columns).")] = None,
    group: Annotated[Optional[list[str]], typer.Option("--group", "-g", help="Column to group on (repeatable; default: from the run's job).")] = None,
    storage_option: StorageOptions = None,
) -> None:
    """(Re)build OUT/report/ from a finished run's tables, without touching audio."""
    from grv_batch import storage
    from grv_batch.discovery import InputError
    from grv_batch.report import ReportInputError, build_report
    from grv_batch.storage import redact_text, secret_values
    from grv_batch.spec import JobError, JobSpec

    try:
        options = storage.parse_storage_options(storage_option or [])
        fs, path = storage.filesystem(out, options)
        run_path = storage.join(path, "_run.json")
        if not storage.exists(fs, run_path):
            _fail(f"{out} is not a finished grv-batch run (no _run.json)")
        run_record = storage.read_json(fs, run_path)
        previous = run_record.get("job") or {}
        params = JobSpec.model_validate({"report": previous.get("report", {})}).report
        if group:
            params = params.model_copy(update={"groups": list(group)})
    except (JobError, ValueError) as exc:
        _fail(str(exc))
    except Exception as exc:
        if not storage.is_storage_error(exc):
            raise
        _fail(redact_text(f"{out} cannot be read: {type(exc).__name__}: {exc}", secret_values(options)))
    try:
        folder = build_report(out, metadata=metadata, params=params, storage_options=options,
                              input_url=run_record.get("input"))
    except (InputError, ReportInputError) as exc:
        _fail(redact_text(str(exc), secret_values(options)))
    except Exception as exc:
        if not storage.is_storage_error(exc):
            raise
        _fail(redact_text(f"the report could not be written: {type(exc).__name__}: {exc}",
                          secret_values(options)))
    console.print(f"Report: {folder}/report.html", markup=False)


@app.command()
def demo(
    out: Annotated[Path, typer.Argument(help="Folder for the demo corpus (OUT/corpus) and the run (OUT/run).")] = Path("demo-out"),
    workers: Annotated[Optional[int], typer.Option("--workers", "-w", min=1, help="Local worker processes (default: one per core).")] = None,
    corpus_only: Annotated[bool, typer.Option("--corpus-only", help="Only synthesise the corpus.", metavar="")] = False,
    speakers: Annotated[int, typer.Option("--speakers", min=2, help="Synthetic speakers.")] = 24,
) -> None:
    """Synthesise a small labelled corpus of voices, then run the full job on it."""
    _quiet_libraries()
    from grv_batch.demo import make_demo_corpus

    corpus = out / "corpus"
    meta = make_demo_corpus(corpus, n_speakers=speakers)
    console.print(f"Demo corpus: {corpus} (metadata: {meta})", markup=False)
    if corpus_only:
        return
    run(input=str(corpus), out=str(out / "run"), job=None, metadata=str(meta), scheduler=None,
        workers=workers, storage_option=None, overwrite=True, retry_errors=False,
        no_progress=False)


def _print_version(value: bool) -> None:
    if value:
        import json

        from grv_batch._version import __version__
        from grv_batch.models.bundle import MANIFEST, SHIPPED_BUNDLE

        bundle = json.loads((SHIPPED_BUNDLE / MANIFEST).read_text()).get("version", "?")
        print(f"grv-batch {__version__} (model bundle {bundle})")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True, metavar="",
                                                help="Print the version and the shipped model bundle's, and exit.")] = False) -> None:
    """grv-batch: batch gender recognition by voice."""


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="grv-batch")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
