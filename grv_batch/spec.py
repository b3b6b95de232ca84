"""The job spec: every stage's parameters in one typed, validated TOML file.

A job file has one table per stage (``[denoise]``, ``[features]``, ``[model]`` ...), each validated
by that stage's own parameter model. Unknown keys and bad values are rejected with a message that
names the key and what is allowed. Stages are chosen from fixed registries by name; a job file can
never name code to import.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from grv_batch._params import Params
from grv_batch.discovery import InputParams
from grv_batch.features import AnalysisParams, FeatureParams
from grv_batch.models import ModelParams
from grv_batch.report import ReportParams
from grv_batch.speakers import SpeakerParams
from grv_batch.stages.decode import DecodeParams
from grv_batch.stages.denoise import MIN_SAMPLE_RATE as MIN_DENOISE_RATE, DenoiseParams
from grv_batch.stages.normalize import NormalizeParams
from grv_batch.stages.resample import ResampleParams
from grv_batch.stages.segment import SegmentParams
from grv_batch.stages.speech import SpeechParams
from grv_batch.storage import merge_options


class ExecutionParams(Params):
    """Where and how the work runs. Does not change results, so it is not part of the job identity.

    Parameters
    ----------
    scheduler
        Address of an existing Dask scheduler (``tcp://host:8786``). None starts a local cluster.
    workers
        Worker processes of the local cluster; None means one per core.
    threads_per_worker
        Threads per worker process. One is fastest for this CPU-bound work (measured in
        ``docs/performance.md``); numeric libraries are pinned to one thread too.
    memory_limit
        Memory limit per local worker, as Dask understands it (``"auto"``, ``"2GiB"``).
    batch_audio_s
        Target seconds of audio per task; each task writes one shard per table. Tasks hold about
        this much on average and at most twice as much (a longer file is a task of its own; the
        task before it, and one ended by ``max_files_per_batch``, may hold less than half). A
        corpus of less than 32 times this gets it halved until it makes at least 32 tasks (of at
        least 10 s of audio) so every worker has work.
    max_files_per_batch
        Upper bound of files per task, for corpora of very short clips (which get about half as
        many per task on average, and one each when this is below 5).
    retries
        Times a failed task is retried (transient storage errors).
    dashboard_address
        Where the local cluster's dashboard listens.
    worker_profiling
        Dask's statistical profiler in local workers (it samples every worker thread's stack every
        10 ms for the dashboard's *Profile* page). Off by default: it took 3-5% of throughput in
        ``docs/performance.md``. Workers of a named scheduler keep their own configuration.
    """

    scheduler: str | None = None
    workers: int | None = Field(default=None, ge=1)
    threads_per_worker: int = Field(default=1, ge=1)
    memory_limit: str = "auto"
    batch_audio_s: float = Field(default=300.0, gt=0, le=1e9, allow_inf_nan=False)
    max_files_per_batch: int = Field(default=200, ge=1)
    retries: int = Field(default=2, ge=0)
    dashboard_address: str = ":8787"
    worker_profiling: bool = False

    @field_validator("memory_limit")
    @classmethod
    def _memory_limit_dask_reads(cls, v: str) -> str:
        if v.strip().lower() not in ("auto", "0"):
            from dask.utils import parse_bytes

            try:
                parse_bytes(v)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{v!r} is not a memory size ('auto', '4GB', '1.5GiB', ...)") from exc
        return v


class OutputParams(Params):
    """How OUT is written.

    Parameters
    ----------
    overwrite
        Replace an earlier grv-batch output of a different job instead of refusing (a folder
        without ``_job.json``, INPUT or a folder above it is never replaced).
    retry_errors
        When resuming, run again the batches that hold ``error`` rows (a bucket that timed out,
        a file fixed since), instead of keeping them as done.
    compression
        Parquet compression codec.
    write_report
        Build ``OUT/report/`` (fairness and evaluation report) at the end of the run.
    """

    overwrite: bool = False
    retry_errors: bool = False
    write_report: bool = True
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"


#: sections that shape the models' inputs (``[decode]`` only picks the channel)
ANALYSIS_SECTIONS = ("resample", "denoise", "normalize", "speech", "segment", "features")


class JobSpec(Params):
    """A whole job. Every table of the TOML file is one field here."""

    name: str = "default"
    input: InputParams = InputParams()
    decode: DecodeParams = DecodeParams()
    resample: ResampleParams = ResampleParams()
    denoise: DenoiseParams = DenoiseParams()
    normalize: NormalizeParams = NormalizeParams()
    speech: SpeechParams = SpeechParams()
    segment: SegmentParams = SegmentParams()
    features: FeatureParams = FeatureParams()
    model: ModelParams = ModelParams()
    speakers: SpeakerParams = SpeakerParams()
    report: ReportParams = ReportParams()
    execution: ExecutionParams = ExecutionParams()
    output: OutputParams = OutputParams()
    storage_options: dict[str, Any] = {}

    @model_validator(mode="after")
    def _denoise_needs_rate(self) -> "JobSpec":
        # noisereduce's mask smoothing spans 50 ms: below this rate that is less than one hop
        if self.denoise.enabled and self.resample.sample_rate < MIN_DENOISE_RATE:
            raise ValueError(f"[resample] sample_rate {self.resample.sample_rate} is too low to "
                             f"denoise (at least {MIN_DENOISE_RATE} Hz); raise it or set [denoise] "
                             f"enabled = false")
        return self

    def analysis_changes(self) -> list[str]:
        """The analysis sections that differ from the defaults the model bundles are trained with
        (``grv-batch train`` analyses its clips with the defaults): there the models get inputs
        unlike any they were trained or evaluated on."""
        defaults = JobSpec()
        return [f"[{name}]" for name in ANALYSIS_SECTIONS
                if getattr(self, name) != getattr(defaults, name)]

    def analysis(self) -> AnalysisParams:
        """The audio-analysis part of the job, as the feature extractor takes it."""
        return AnalysisParams(decode=self.decode, resample=self.resample, denoise=self.denoise,
                              normalize=self.normalize, speech=self.speech, segment=self.segment,
                              features=self.features)

    def identity(self) -> dict[str, Any]:
        """The settings that change results: two runs agree on these or must not share OUT."""
        data = self.model_dump(mode="json")
        for key in ("name", "execution", "output", "storage_options", "report"):
            data.pop(key, None)
        return data

    def fingerprint(self) -> str:
        """Short hash of :meth:`identity`."""
        blob = json.dumps(self.identity(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class JobError(Exception):
    """The job file or an override is invalid; the message names the key and what is allowed."""


def load_job(path: str | Path | None = None, *, overrides: Mapping[str, Any] | None = None) -> JobSpec:
    """Read and validate a job file, then apply command-line overrides.

    Parameters
    ----------
    path
        TOML job file; None uses the defaults (identical to ``jobs/default.toml``).
    overrides
        Nested mapping merged over the file, e.g. ``{"execution": {"workers": 2}}``.

    Raises
    ------
    JobError
        With a message naming each bad key.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError as exc:
            raise JobError(f"job file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise JobError(f"job file {path} is not valid TOML: {exc}") from exc
    data = merge_options(data, dict(overrides or {}))
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise JobError(f"job {source}: " + "; ".join(_describe(err) for err in exc.errors())) from exc


def _describe(error: Mapping[str, Any]) -> str:
    """One validation error as ``[table].key: what is wrong (allowed: ...)`` (a top-level key is
    named bare: ``name: ...``)."""
    loc = [str(part) for part in error["loc"]]
    field = JobSpec.model_fields.get(loc[0]) if loc else None
    table = hasattr(getattr(field, "annotation", None), "model_fields") or isinstance(error.get("input"), Mapping)
    if not loc:
        where = "job"
    elif len(loc) == 1 and not table:
        where = loc[0]  # a top-level key (name = ...), not a table
    else:
        where = f"[{loc[0]}]" + "".join("." + part for part in loc[1:])
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(error["loc"][:-1])
        return f"{where}: unknown key (allowed: {', '.join(allowed)})"
    message = error["msg"].removeprefix("Value error, ")  # pydantic's prefix on a validator's own text
    if error["type"] == "value_error" and not loc:  # a rule across tables: its text says it all
        return message
    if error["type"] == "literal_error":
        return f"{where}: {message}"
    return f"{where}: {message} (got {error.get('input')!r})"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = JobSpec
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    return sorted(getattr(model, "model_fields", {}))


def default_job_toml() -> str:
    """The default job as TOML text (what ``jobs/default.toml`` holds, without its comments)."""
    lines: list[str] = []
    spec = JobSpec().model_dump(mode="json")
    lines.append(f'name = "{spec.pop("name")}"')
    spec.pop("storage_options")
    for table, values in spec.items():
        lines.append(f"\n[{table}]")
        for key, value in values.items():
            if value is None:
                lines.append(f"# {key} = (not set)")
            else:
                lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"
