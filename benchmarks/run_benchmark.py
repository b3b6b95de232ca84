"""Throughput and memory benchmark: the floor, the original pipeline and ``grv-batch run``, side by side.

One run, one corpus (``benchmarks/make_corpus.py``: real speech from ../shared/data repeated to
``--hours`` plus one recording of ``--long-minutes``), measured as audio seconds per wall second
per core:

a. floor: soundfile decode -> soxr resample to 16 kHz -> one STFT (librosa, n_fft=512, hop=160),
   one process, one thread, time-boxed over a fixed shuffled sample of the clips;
b. original pipeline: ``librosa.load`` (22,050 Hz) -> ``melspectrogram`` (n_fft=2048,
   hop_length=512) mean over time -> the original Keras network (``../shared/anchors/seed-model.h5``)
   ``model.predict`` one file at a time; one process, one thread, time-boxed over the same sample;
c. ``grv-batch run CORPUS --out OUT --workers N --no-progress`` for each N in ``--workers`` (fresh
   OUT each time), wall time from start to exit, audio seconds from ``OUT/files``;
d. peak RSS of every process of (a), (b) and (c), the latter sampled over the whole process tree
   every 0.2 s and reported per role (client = CLI + scheduler + nannies, worker, helper);
e. speed-up from the fewest to the most workers, and grv-batch per core / original per core;
f. with ``--write-docs``: ``docs/performance.md`` with the machine, the corpus, the table, the
   command, and a cProfile of a single-process analysis (analyze_file + ensemble predict + Parquet
   write) grouped by stage.

    python benchmarks/run_benchmark.py --hours 3 --long-minutes 60 --workers 1 2 --write-docs
    python benchmarks/run_benchmark.py --quick --write-docs        # smoke run, about a minute

Every child runs in its own process group and is killed (with its children) on timeout, error or
Ctrl-C, so nothing is left behind.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as _dt
import json
import os
import platform
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from make_corpus import DEFAULT_DATA, build_corpus  # noqa: E402

SEED_MODEL = (REPO.parent / "shared" / "anchors" / "seed-model.h5").resolve()
DOCS = REPO / "docs" / "performance.md"
SAMPLE_SEED = 7
ONE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1", "VECLIB_MAXIMUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
}

# ------------------------------------------------------------------------------------------------
# child-process bookkeeping: every child gets its own session; all are killed on the way out
_CHILDREN: set[subprocess.Popen] = set()


def _kill_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    if proc.poll() is not None:
        # the leader exited; its group may still hold orphans (e.g. Dask workers)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # stragglers in the group
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _cleanup() -> None:
    for proc in list(_CHILDREN):
        _kill_group(proc, grace=2.0)
        _CHILDREN.discard(proc)


def _on_signal(signum, frame):  # noqa: ARG001
    _cleanup()
    raise SystemExit(f"interrupted by signal {signum}; child processes stopped")


class RssSampler(threading.Thread):
    """Samples the RSS of a process and all its descendants every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        import psutil

        self.psutil = psutil
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak: dict[int, int] = {}
        self.role: dict[int, str] = {}
        self.cmd: dict[int, str] = {}
        self.samples = 0
        self._halt = threading.Event()

    def _classify(self, proc, is_root: bool) -> str:
        try:
            cmd = " ".join(proc.cmdline())
        except Exception:  # noqa: BLE001
            cmd = ""
        self.cmd.setdefault(proc.pid, cmd[:200])
        if is_root:
            return "client"
        if "resource_tracker" in cmd or "semaphore_tracker" in cmd or "forkserver" in cmd:
            return "helper"
        return "worker"

    def _sample(self) -> None:
        try:
            procs = [(self.root, True)] + [(p, False) for p in self.root.children(recursive=True)]
        except self.psutil.Error:
            return
        for proc, is_root in procs:
            try:
                rss = proc.memory_info().rss
            except self.psutil.Error:
                continue
            if proc.pid not in self.role:
                self.role[proc.pid] = self._classify(proc, is_root)
            if rss > self.peak.get(proc.pid, 0):
                self.peak[proc.pid] = rss
        self.samples += 1

    def run(self) -> None:
        while not self._halt.is_set():
            self._sample()
            self._halt.wait(self.interval)

    def stop(self) -> dict:
        self._halt.set()
        self.join(timeout=5)
        by_role: dict[str, int] = {}
        for pid, rss in self.peak.items():
            role = self.role.get(pid, "worker")
            by_role[role] = max(by_role.get(role, 0), rss)
        return {
            "per_process": [{"pid": pid, "role": self.role.get(pid), "peak_rss_mb": rss / 2**20,
                             "cmd": self.cmd.get(pid, "")}
                            for pid, rss in sorted(self.peak.items())],
            "peak_rss_mb_by_role": {k: v / 2**20 for k, v in by_role.items()},
            "peak_rss_mb": max(self.peak.values(), default=0) / 2**20,
            "n_processes": len(self.peak),
            "samples": self.samples,
        }


def run_monitored(cmd: list[str], *, timeout: float, env: dict | None = None, log: Path | None = None,
                  cwd: Path | None = None) -> dict:
    """Run ``cmd`` in its own session, sample RSS of its tree, kill the tree on timeout."""
    full_env = {**os.environ, **(env or {})}
    out = open(log, "wb") if log else subprocess.DEVNULL
    started = time.perf_counter()
    cpu0 = _children_cpu()
    try:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env,
                                cwd=cwd, start_new_session=True)
    finally:
        if log:
            out.close()
    _CHILDREN.add(proc)
    sampler = RssSampler(proc.pid)
    sampler.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        wall = time.perf_counter() - started
        mem = sampler.stop()
        _kill_group(proc)
        _CHILDREN.discard(proc)
    return {"cmd": cmd, "rc": proc.returncode, "timed_out": timed_out, "wall_s": wall,
            "children_cpu_s": _children_cpu() - cpu0, **mem}


def _children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


def _tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------------
# child modes: floor, original, profile (run by this same script in a fresh process)
def _pin_threads() -> None:
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except Exception:  # noqa: BLE001
        pass


def _timed_loop(files: list[str], seconds: float, fn, result: Path, extra: dict | None = None) -> None:
    """Apply ``fn(path) -> audio_s`` to the files, cycling through them, until ``seconds`` of wall
    have passed (a small sample is taken again rather than timing a fraction of a second)."""
    import itertools
    import resource

    done, audio = 0, 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    for path in itertools.cycle(files):
        audio += fn(path)
        done += 1
        if time.perf_counter() - t0 >= seconds:
            break
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    result.write_text(json.dumps({
        "files": done, "audio_s": audio, "wall_s": wall, "cpu_s": cpu,
        "peak_rss_mb_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **(extra or {}),
    }))


def child_floor(files: list[str], seconds: float, result: Path) -> None:
    _pin_threads()
    import librosa
    import numpy as np
    import soundfile as sf
    import soxr

    def one(path: str) -> float:
        y, sr = sf.read(path, dtype="float32", always_2d=True)
        y = y.mean(axis=1) if y.shape[1] > 1 else y[:, 0]
        if sr != 16000:
            y = soxr.resample(y, sr, 16000, quality="HQ")
        s = librosa.stft(y, n_fft=512, hop_length=160)
        np.abs(s[:1, :1])  # use the result
        return y.size / 16000

    one(files[0])  # warm-up (FFT plans, imports), not timed
    _timed_loop(files, seconds, one, result)


def build_seed_model():
    import keras
    from keras import layers

    stack = [keras.Input((128,)), layers.Dense(256), layers.Dropout(0.3)]
    for units in (256, 128, 128, 64):
        stack += [layers.Dense(units, activation="relu"), layers.Dropout(0.3)]
    model = keras.Sequential(stack + [layers.Dense(1, activation="sigmoid")])
    model.load_weights(str(SEED_MODEL))
    return model


def child_original(files: list[str], seconds: float, result: Path) -> None:
    _pin_threads()
    t0 = time.perf_counter()
    import librosa
    import numpy as np
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass
    model = build_seed_model()
    setup = time.perf_counter() - t0

    def one(path: str) -> float:
        y, sr = librosa.load(path)  # the original: 22,050 Hz mono, soxr_hq
        mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=2048, hop_length=512).mean(axis=1)
        p = model.predict(mel[np.newaxis, :], verbose=0)
        float(p[0, 0])
        return y.size / sr

    one(files[0])  # warm-up: graph tracing of predict, resampler set-up; not timed
    _timed_loop(files, seconds, one, result, {"setup_s": setup})


def child_profile(files: list[str], seconds: float, result: Path, workdir: Path) -> None:
    """Single-process analysis as one worker does it: analyze_file, ensemble predict (windows
    buffered across files and predicted in chunks of the pipeline's size), one Parquet write.

    Imports, the model load and a warm-up file (TensorFlow tracing, numba compilation) happen
    before cProfile is enabled: they are paid once per worker, not per hour of audio. The profile
    covers the measured loop only and is dumped to ``profile.pstats``.
    """
    import cProfile

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _pin_threads()
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from grv_batch.features import analyze_file
    from grv_batch.models import load_ensemble
    from grv_batch.pipeline import PREDICT_CHUNK_WINDOWS
    from grv_batch.spec import load_job

    t0 = time.perf_counter()
    job = load_job(None)
    analysis = job.analysis()
    ens = load_ensemble(job.model.bundle, params=job.model)

    def analyse(paths: list[str], cycle: bool = False) -> tuple[int, float]:
        import itertools

        pending, per_file, feature_rows, pred_rows = [], [], [], []
        done, audio, start = 0, 0.0, time.perf_counter()

        def flush():
            if not pending:
                return
            frame = pd.DataFrame([{**w.features, "mel128": w.mel128} for _, w in pending])
            preds = ens.predict_windows(frame, [w.logmel for _, w in pending])
            for (k, w), (_, p) in zip(pending, preds.iterrows()):
                per_file[k][1].append({c: float(v) for c, v in p.items()})
                w.logmel = None
            pending.clear()

        for path in (itertools.cycle(paths) if cycle else paths):
            fa = analyze_file(path, analysis)
            per_file.append((fa, []))
            for w in fa.windows:
                pending.append((len(per_file) - 1, w))
                if len(pending) >= PREDICT_CHUNK_WINDOWS:
                    flush()
            feature_rows.append({"path": path, **fa.features})
            audio += sum(w.duration_s for w in fa.windows)
            done += 1
            if time.perf_counter() - start >= seconds:
                break
        flush()
        for fa, wp in per_file:
            pred_rows.append(ens.combine_file(pd.DataFrame(wp),
                                              speech_s=np.array([w.speech_s for w in fa.windows]),
                                              params=job.model))
        pq.write_table(pa.Table.from_pylist(feature_rows), workdir / "features.parquet",
                       compression="zstd")
        pq.write_table(pa.Table.from_pylist(pred_rows), workdir / "predictions.parquet",
                       compression="zstd")
        return done, audio

    analyse(files[:1])  # warm-up, not profiled
    setup = time.perf_counter() - t0
    prof = cProfile.Profile()
    t1, c1 = time.perf_counter(), time.process_time()
    prof.enable()
    done, audio = analyse(files, cycle=True)
    prof.disable()
    wall, cpu = time.perf_counter() - t1, time.process_time() - c1
    prof.dump_stats(str(workdir / "profile.pstats"))
    result.write_text(json.dumps({"files": done, "audio_s": audio, "wall_s": wall, "cpu_s": cpu,
                                  "setup_s": setup}))


# ------------------------------------------------------------------------------------------------
# profile grouping
STAGES = [  # (stage, module path suffix, function names); time = cumulative, called from the pipeline
    ("decode", "grv_batch/stages/decode.py", ("iter_blocks", "probe")),
    ("resample", "grv_batch/stages/resample.py", ("resample",)),
    ("denoise", "grv_batch/stages/denoise.py", ("denoise",)),
    ("normalise", "grv_batch/stages/normalize.py", ("normalize",)),
    ("speech", "grv_batch/stages/speech.py", ("speech_activity",)),
    ("quality", "grv_batch/features/quality.py", ("quality_features",)),
    ("spectral", "grv_batch/features/spectral.py", ("power_spectrogram", "spectral_features")),
    ("pitch", "grv_batch/features/pitch.py", ("yin", "pitch_features")),
    ("formants", "grv_batch/features/formants.py", ("formant_tracks", "formant_features")),
    ("mfcc", "grv_batch/features/mfcc.py", ("mfcc_features",)),
    ("logmel (64 bands)", "grv_batch/features/spectral.py", ("mel_filterbank",)),
    ("mel128", "grv_batch/features/mel128.py", ("mel128",)),
    ("window pooling", "grv_batch/features/analysis.py", ("pool_windows",)),
    ("model predict", "grv_batch/models/ensemble.py", ("predict_windows", "combine_file")),
    ("parquet write", "pyarrow/parquet/core.py", ("write_table",)),
]
# callers that are orchestration, not a stage: time of a stage function is counted when called from these
ORCHESTRATION = ("grv_batch/features/analysis.py", "grv_batch/stages/segment.py", "run_benchmark.py")


def group_profile(prof_path: Path, top: int = 25) -> dict:
    import pstats

    st = pstats.Stats(str(prof_path))
    stats = st.stats  # {(file, line, func): (cc, nc, tt, ct, callers)}
    total = max((ct for (_, _, _, ct, _) in stats.values()), default=0.0)
    # the driver loop's cumulative time is the total of the measured work
    for (file, _, func), (_, _, _, ct, _) in stats.items():
        if file.endswith("run_benchmark.py") and func == "analyse":
            total = ct
    stages = []
    for name, suffix, funcs in STAGES:
        t, calls = 0.0, 0
        for (file, _, func), (_, _, _, _, callers) in stats.items():
            if not file.endswith(suffix) or func not in funcs:
                continue
            for (cfile, _, cfunc), cstat in callers.items():
                if cfile.endswith(ORCHESTRATION) and not (cfile.endswith(suffix) and cfunc in funcs):
                    t += cstat[3]
                    calls += cstat[1]
        stages.append({"stage": name, "s": t, "calls": calls})
    accounted = sum(s["s"] for s in stages)
    stages.append({"stage": "other (glue, pandas frames, windowing)", "s": max(total - accounted, 0.0),
                   "calls": 0})
    rows = []
    for (file, line, func), (cc, nc, tt, ct, _) in stats.items():
        rows.append({"func": f"{_short(file)}:{line}({func})", "ncalls": nc, "tottime": tt,
                     "cumtime": ct})
    by_cum = sorted(rows, key=lambda r: -r["cumtime"])[:top]
    by_tot = sorted(rows, key=lambda r: -r["tottime"])[:top]
    return {"total_s": total, "stages": stages, "top_cumulative": by_cum, "top_self": by_tot}


def _short(file: str) -> str:
    for marker in ("site-packages/", "grv_batch/", "benchmarks/"):
        if marker in file:
            return (marker if marker != "site-packages/" else "") + file.split(marker, 1)[1]
    return file


# ------------------------------------------------------------------------------------------------
def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import psutil

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": affinity,
            "ram_gb": psutil.virtual_memory().total / 2**30, "python": platform.python_version(),
            "os": f"{platform.system()} {platform.release()}"}


def sample_files(info: dict, limit: int = 100000) -> list[str]:
    """The corpus clips (not the long file) in a fixed shuffled order."""
    root = Path(info["root"])
    files = sorted(str(p) for p in root.glob("rep*/**/*") if p.is_file() or p.is_symlink())
    files = [f for f in files if Path(f).suffix.lower() in (".wav", ".flac", ".sph", ".nist")]
    random.Random(SAMPLE_SEED).shuffle(files)
    return files[:limit]


def grv_batch_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "grv-batch"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "grv_batch"]


def read_run(out: Path) -> dict:
    import pandas as pd

    files = pd.read_parquet(out / "files")
    ok = files[files["status"] == "ok"]
    run = json.loads((out / "_run.json").read_text()) if (out / "_run.json").is_file() else {}
    return {"n_files": int(len(files)), "n_ok": int(len(ok)), "n_error": int(len(files) - len(ok)),
            "errors": files.loc[files["status"] != "ok", "error"].head(5).tolist(),
            "audio_s": float(ok["duration_s"].sum()), "timings": run.get("timings", {}),
            "sum_processing_s": float(files["processing_s"].sum())}


def fmt_mb(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def fmt_x(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _grv_batch_run(args, info: dict, work: Path, n: int, rep: int) -> dict:
    """One monitored ``grv-batch run`` over the whole corpus with ``n`` workers."""
    out = work / f"out-w{n}-r{rep}"
    if out.exists():
        shutil.rmtree(out)
    cmd = grv_batch_cmd() + ["run", info["root"], "--out", str(out), "--workers", str(n),
                             "--no-progress"]
    if args.job:
        cmd += ["--job", str(args.job)]
    log = work / f"grv-batch-w{n}-r{rep}.log"
    print(f"grv-batch: {' '.join(shlex.quote(c) for c in cmd)}")
    mon = run_monitored(cmd, timeout=args.run_timeout, log=log, cwd=REPO)
    if mon["timed_out"] or mon["rc"] != 0:
        why = "timed out" if mon["timed_out"] else f"exit status {mon['rc']}"
        raise SystemExit(f"error: grv-batch run with {n} worker(s) failed ({why}); log {log}:\n"
                         + _tail(log))
    res = read_run(out)
    if res["n_files"] != info["n_files"]:
        print(f"  warning: OUT/files has {res['n_files']} rows, corpus has {info['n_files']} files")
    if res["n_error"]:
        print(f"  warning: {res['n_error']} error rows, e.g. {res['errors'][:2]}")
    r = {"workers": n, **mon, **res}
    r["x_total"] = res["audio_s"] / mon["wall_s"]
    r["x_per_core"] = r["x_total"] / n
    r["x_in_run"] = res["timings"].get("realtime_factor")
    r["x_per_cpu_s"] = res["audio_s"] / mon["children_cpu_s"] if mon["children_cpu_s"] else None
    r.pop("cmd", None)
    r["command"] = " ".join(shlex.quote(c) for c in cmd)
    print(f"  {n} worker(s): {res['audio_s']:.0f} s audio ({res['n_ok']} ok, {res['n_error']} error) "
          f"in {mon['wall_s']:.1f} s: {r['x_total']:.0f}x realtime, {r['x_per_core']:.0f}x per core; "
          f"peak RSS {mon['peak_rss_mb']:.0f} MB over {mon['n_processes']} processes")
    if not args.keep_outputs:
        shutil.rmtree(out, ignore_errors=True)
    return r


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("_floor", "_original", "_profile"):
        mode, files_json, seconds, result = argv[0], Path(argv[1]), float(argv[2]), Path(argv[3])
        files = json.loads(files_json.read_text())
        if mode == "_floor":
            child_floor(files, seconds, result)
        elif mode == "_original":
            child_original(files, seconds, result)
        else:
            child_profile(files, seconds, result, result.parent)
        return 0

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=3.0, help="hours of repeated clips (default 3)")
    ap.add_argument("--long-minutes", type=float, default=60.0, help="one long recording (default 60)")
    ap.add_argument("--workers", type=int, nargs="+", default=None,
                    help="worker counts for grv-batch (default: 1 2, plus all cores if more than 2)")
    ap.add_argument("--corpus-dir", type=Path, default=None,
                    help="corpus folder (default /tmp/grv-bench/corpus-<hours>h-<min>m)")
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/grv-bench/runs"),
                    help="outputs, logs and profile (default /tmp/grv-bench/runs)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--floor-seconds", type=float, default=120.0, help="time box of the floor (wall s)")
    ap.add_argument("--original-seconds", type=float, default=120.0,
                    help="time box of the original pipeline (wall s)")
    ap.add_argument("--profile-seconds", type=float, default=90.0,
                    help="time box of the profiled single-process analysis (wall s; 0 skips it)")
    ap.add_argument("--run-timeout", type=float, default=4 * 3600.0,
                    help="kill a grv-batch run after this many seconds (default 4 h)")
    ap.add_argument("--job", type=Path, default=None, help="job file passed to grv-batch run")
    ap.add_argument("--quick", action="store_true",
                    help="smoke configuration: 0.05 h + a 2-minute long file, 15 s time boxes, workers 1 2")
    ap.add_argument("--write-docs", action="store_true", help=f"write {DOCS.relative_to(REPO)}")
    ap.add_argument("--docs-path", type=Path, default=DOCS)
    ap.add_argument("--keep-outputs", action="store_true", help="keep the grv-batch OUT folders")
    ap.add_argument("--repeat", type=int, default=1,
                    help="grv-batch runs per worker count (alternating); the median-wall run is reported")
    args = ap.parse_args(argv)
    if args.quick:
        args.hours, args.long_minutes = 0.05, 2.0
        args.floor_seconds = min(args.floor_seconds, 15.0)
        args.original_seconds = min(args.original_seconds, 15.0)
        args.profile_seconds = min(args.profile_seconds, 20.0)
    cores = os.cpu_count() or 1
    if args.workers is None:
        args.workers = sorted({1, min(2, cores), cores})
    if any(w < 1 for w in args.workers):
        ap.error("--workers must be >= 1")
    if args.corpus_dir is None:
        args.corpus_dir = Path(f"/tmp/grv-bench/corpus-{args.hours:g}h-{args.long_minutes:g}m")
    if not SEED_MODEL.is_file():
        ap.error(f"the original network's weights are missing: {SEED_MODEL}")

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    atexit.register(_cleanup)

    command = "python benchmarks/run_benchmark.py " + " ".join(shlex.quote(a) for a in argv)
    started_at = _dt.datetime.now().astimezone()
    load_before = os.getloadavg()
    mach = machine()
    print(f"machine: {mach['cpu']}, {mach['cores']} cores, {mach['ram_gb']:.1f} GiB RAM; "
          f"load average {load_before[0]:.2f}")
    info = build_corpus(args.corpus_dir, args.hours, args.long_minutes, args.data)
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    stamp = started_at.strftime("%Y%m%d-%H%M%S")
    work = Path(tempfile.mkdtemp(prefix=f"{stamp}-", dir=work))
    print(f"work dir: {work}")
    sample = sample_files(info)
    if not sample:
        raise SystemExit(f"error: no clips found in {info['root']}")
    (work / "sample.json").write_text(json.dumps(sample))
    me = [sys.executable, str(Path(__file__).resolve())]
    results: dict = {"machine": mach, "corpus": info, "command": command,
                     "started": started_at.isoformat(timespec="seconds"), "load_before": load_before}

    def child(mode: str, seconds: float, prefix: list[str] | None = None) -> dict:
        res_path = work / f"{mode.strip('_')}.json"
        log = work / f"{mode.strip('_')}.log"
        cmd = (prefix or [sys.executable]) + me[1:] + [mode, str(work / "sample.json"), str(seconds),
                                                        str(res_path)]
        # generous hard timeout: time box + start-up + one long file
        mon = run_monitored(cmd, timeout=seconds * 3 + 300, env=ONE_THREAD_ENV, log=log, cwd=REPO)
        if mon["rc"] != 0 or not res_path.is_file():
            why = "timed out" if mon["timed_out"] else f"exit status {mon['rc']}"
            raise SystemExit(f"error: {mode.strip('_')} measurement failed ({why}); log {log}:\n"
                             + _tail(log))
        res = json.loads(res_path.read_text())
        res.update(peak_rss_mb=mon["peak_rss_mb"], process_wall_s=mon["wall_s"])
        return res

    print(f"floor: decode -> soxr 16 kHz -> STFT, 1 process, 1 thread, up to {args.floor_seconds:g} s ...")
    floor = child("_floor", args.floor_seconds)
    floor["x_per_core"] = floor["audio_s"] / floor["wall_s"]
    print(f"  {floor['files']} files, {floor['audio_s']:.0f} s audio in {floor['wall_s']:.1f} s: "
          f"{floor['x_per_core']:.0f}x realtime per core")
    print(f"original: librosa.load -> mel -> seed model predict per file, up to {args.original_seconds:g} s ...")
    orig = child("_original", args.original_seconds)
    orig["x_per_core"] = orig["audio_s"] / orig["wall_s"]
    print(f"  {orig['files']} files, {orig['audio_s']:.0f} s audio in {orig['wall_s']:.1f} s: "
          f"{orig['x_per_core']:.1f}x realtime per core")
    results.update(floor=floor, original=orig)

    runs = []
    attempts: dict[int, list[dict]] = {n: [] for n in args.workers}
    # rounds alternate the worker counts (1, 2, 1, 2, ...) so that load on a shared machine
    # falls on all of them alike; each count is reported by its median-wall repetition
    for rep in range(args.repeat):
        for n in args.workers:
            attempts[n].append(_grv_batch_run(args, info, work, n, rep))
    for n in args.workers:
        ranked = sorted(attempts[n], key=lambda r: r["wall_s"])
        r = dict(ranked[(len(ranked) - 1) // 2])
        r["walls"] = [a["wall_s"] for a in attempts[n]]
        runs.append(r)
    results["runs"] = runs
    base = min(runs, key=lambda r: r["workers"])
    top = max(runs, key=lambda r: r["workers"])
    results["speedup"] = {"from": base["workers"], "to": top["workers"],
                          "x": base["wall_s"] / top["wall_s"] if top is not base else None}
    results["vs_original"] = {r["workers"]: r["x_per_core"] / orig["x_per_core"] for r in runs}

    profile = None
    if args.profile_seconds > 0:
        print(f"profile: cProfile of analyze_file + ensemble predict + Parquet write (after warm-up), up to "
              f"{args.profile_seconds:g} s ...")
        prof = work / "profile.pstats"
        res = child("_profile", args.profile_seconds)
        profile = {**res, **group_profile(prof), "pstats": str(prof)}
        results["profile"] = profile
    results["load_after"] = os.getloadavg()
    results["finished"] = _dt.datetime.now().astimezone().isoformat(timespec="seconds")

    table = render_table(results)
    print()
    print(table)
    if profile:
        print()
        print(render_profile(profile))
    (work / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\nresults: {work / 'results.json'}")
    if args.write_docs:
        old = args.docs_path.read_text() if args.docs_path.exists() else ""
        args.docs_path.write_text(keep_notes(render_docs(results, quick=args.quick), old))
        print(f"wrote {args.docs_path}")
    return 0


NOTES_START, NOTES_END = "<!-- notes: kept by --write-docs -->", "<!-- /notes -->"


def keep_notes(new_doc: str, old_doc: str) -> str:
    """Carry the hand-written block between the notes markers of the old page over to the new one.

    The block (what the numbers mean, status against targets, what changed them) goes just before
    *Where the time goes*; a page without the block gets an empty one there to write into.
    """
    i, j = old_doc.find(NOTES_START), old_doc.find(NOTES_END)
    block = old_doc[i:j + len(NOTES_END)] if 0 <= i < j else f"{NOTES_START}\n{NOTES_END}"
    anchor = "## Where the time goes"
    if anchor in new_doc:
        return new_doc.replace(anchor, block + "\n\n" + anchor, 1)
    return new_doc.rstrip("\n") + "\n\n" + block + "\n"


# ------------------------------------------------------------------------------------------------
def render_table(res: dict) -> str:
    floor, orig, runs = res["floor"], res["original"], res["runs"]
    head = ("| pipeline | workers | files | audio (s) | wall (s) | x realtime | x realtime per core "
            "| audio s per CPU s | vs original per core | peak RSS client (MB) | peak RSS worker (MB) "
            "| peak RSS any process (MB) |")
    lines = [head, "|" + "---|" * 12]
    lines.append(f"| floor: decode + soxr 16 kHz + STFT (sample, 1 thread) | 1 | {floor['files']} "
                 f"| {floor['audio_s']:,.0f} | {floor['wall_s']:.1f} | {floor['x_per_core']:,.0f} "
                 f"| {floor['x_per_core']:,.0f} | {floor['audio_s'] / floor['cpu_s']:,.0f} "
                 f"| {floor['x_per_core'] / orig['x_per_core']:.1f} | - | {fmt_mb(floor['peak_rss_mb'])} "
                 f"| {fmt_mb(floor['peak_rss_mb'])} |")
    lines.append(f"| original: librosa.load + mel + predict per file (sample, 1 thread) | 1 "
                 f"| {orig['files']} | {orig['audio_s']:,.0f} | {orig['wall_s']:.1f} "
                 f"| {orig['x_per_core']:,.1f} | {orig['x_per_core']:,.1f} "
                 f"| {orig['audio_s'] / orig['cpu_s']:,.1f} | 1.0 | - | {fmt_mb(orig['peak_rss_mb'])} "
                 f"| {fmt_mb(orig['peak_rss_mb'])} |")
    for r in runs:
        roles = r["peak_rss_mb_by_role"]
        lines.append(
            f"| `grv-batch run` end to end (whole corpus) | {r['workers']} | {r['n_files']} "
            f"| {r['audio_s']:,.0f} | {r['wall_s']:.1f} | {r['x_total']:,.0f} | {r['x_per_core']:,.0f} "
            f"| {fmt_x(r['x_per_cpu_s'])} | {res['vs_original'][r['workers']]:.1f} "
            f"| {fmt_mb(roles.get('client'))} | {fmt_mb(roles.get('worker'))} | {fmt_mb(r['peak_rss_mb'])} |")
    sp = res["speedup"]
    extra = []
    if sp["x"] is not None:
        extra.append(f"Speed-up from {sp['from']} to {sp['to']} workers (wall time ratio): **{sp['x']:.2f}x**.")
    for r in runs:
        if len(r.get("walls", [])) > 1:
            walls = sorted(r["walls"])
            extra.append(f"{r['workers']} worker(s): {len(walls)} runs, wall "
                         + ", ".join(f"{w:.1f}" for w in walls) + " s; the row above is the median run "
                         f"({r['audio_s'] / walls[-1] / r['workers']:,.0f}x to "
                         f"{r['audio_s'] / walls[0] / r['workers']:,.0f}x per core).")
    for r in runs:
        if r.get("x_in_run"):
            extra.append(f"{r['workers']} worker(s): in-run realtime factor from `_run.json` "
                         f"{r['x_in_run']:,.0f}x (its own wall {r['timings'].get('wall_s', 0):.1f} s, "
                         f"excluding interpreter and import start-up); "
                         f"{r['n_processes']} processes sampled, {r['n_error']} error rows.")
    steady = [r for r in runs if r.get("timings", {}).get("task_wall_s")]
    if len(steady) > 1:
        # the part of a run that grows with the corpus: batches on running workers, without the
        # fixed start-up (interpreter, cluster, TensorFlow import and model load) and the report
        lo, hi = steady[0], steady[-1]
        scale = (hi["workers"] * lo["timings"]["task_wall_s"]) / (lo["workers"] * hi["timings"]["task_wall_s"])
        extra.append(
            "Batch work alone (the sum of every batch's own wall time on its worker, `_run.json` "
            "`task_wall_s`: no interpreter, cluster or TensorFlow start-up, no report): "
            + ", ".join(f"{r['workers']} worker(s) {r['timings']['task_wall_s']:.1f} s "
                        f"({r['audio_s'] / r['timings']['task_wall_s']:,.0f}x per worker)" for r in steady)
            + f"; {lo['workers']} -> {hi['workers']} workers would scale by **{scale:.2f}x** on a corpus "
            "long enough for the fixed start-up to vanish.")
    phased = [r for r in runs if r.get("timings", {}).get("phases")]
    if phased:
        extra.append("Where each run's wall time went (command start to exit; `_run.json` phases): "
                     + "; ".join(_phase_line(r) for r in phased) + ".")
    return "\n".join(lines) + ("\n\n" + "\n".join(f"- {e}" for e in extra) if extra else "")


def _phase_line(r: dict) -> str:
    """One run's wall time split: start-up outside the run, the batches, tables, report, shutdown."""
    t = r["timings"]
    ph = t["phases"]
    outside = r["wall_s"] - t.get("wall_s", 0.0)
    return (f"{r['workers']} worker(s): {r['wall_s']:.1f} s = {outside:.1f} s interpreter, imports, "
            f"cluster start and stop + {ph.get('prepare_s', 0):.1f} s set-up + {ph.get('batches_s', 0):.1f} s "
            f"batches (worker start-up included) + {ph.get('tables_s', 0):.1f} s accounting and speakers + "
            f"{ph.get('report_s', 0):.1f} s report")


def render_profile(p: dict) -> str:
    total = p["total_s"] or 1.0
    lines = [f"Profiled: {p['files']} files, {p['audio_s']:,.0f} s of audio, {p['wall_s']:.1f} s wall "
             f"({p['audio_s'] / p['wall_s']:,.0f}x realtime under the profiler, whose overhead inflates "
             f"Python-heavy stages); one-off set-up before the loop {p.get('setup_s', 0):.1f} s.",
             "", "| stage | seconds | share | calls |", "|---|---|---|---|"]
    for s in sorted(p["stages"], key=lambda s: -s["s"]):
        lines.append(f"| {s['stage']} | {s['s']:.2f} | {100 * s['s'] / total:.1f}% | {s['calls'] or ''} |")
    lines += ["", "Top functions by own time (tottime):", "",
              "| function | calls | own s | cumulative s |", "|---|---|---|---|"]
    for r in p["top_self"][:15]:
        lines.append(f"| `{r['func']}` | {r['ncalls']} | {r['tottime']:.2f} | {r['cumtime']:.2f} |")
    lines += ["", "Top functions by cumulative time:", "",
              "| function | calls | own s | cumulative s |", "|---|---|---|---|"]
    for r in p["top_cumulative"][:20]:
        lines.append(f"| `{r['func']}` | {r['ncalls']} | {r['tottime']:.2f} | {r['cumtime']:.2f} |")
    return "\n".join(lines)


def render_docs(res: dict, quick: bool) -> str:
    m, c = res["machine"], res["corpus"]
    by = c.get("clips_audio_s_by_corpus", {})
    lb, la = res["load_before"], res["load_after"]
    parts = ["# Performance", ""]
    if quick:
        parts += ["> **SMOKE RUN (`--quick`): not the benchmark.** These figures come from a corpus of a few",
                  "> minutes with 15 s time boxes, on a shared machine, and only show that the harness works.",
                  "> Run the command under *Reproduce* for the real figures.", ""]
    parts += [
        "Throughput is audio seconds per wall second (x realtime); *per core* divides by the worker",
        "processes used (the floor and the original pipeline run in one process pinned to one thread).",
        "`audio s per CPU s` divides by the CPU time the processes used instead, which is less",
        "sensitive to other load on the machine.",
        "",
        "## Machine and corpus",
        "",
        f"- CPU: {m['cpu']}; {m['cores']} cores ({m['usable_cores']} usable); {m['ram_gb']:.1f} GiB RAM; "
        f"Python {m['python']}; {m['os']}",
        f"- Date: {res['started']} to {res['finished']}; load average before {lb[0]:.2f}, after {la[0]:.2f}"
        + (" (other jobs were running: wall-clock figures are pessimistic)" if lb[0] > 0.5 * m["cores"] else ""),
        f"- Corpus: {c['audio_h']:.2f} h in {c['n_files']} files: {c['n_clips']} real clips "
        f"({c['clips_audio_s'] / 3600:.2f} h; LibriSpeech {by.get('librispeech', 0) / 60:.1f} min, "
        f"TIMIT {by.get('timit', 0) / 60:.1f} min, EmoDB {by.get('emodb', 0) / 60:.1f} min; "
        f"{c['repetitions']} repetition(s) of the clips of `../shared/data` under distinct names) "
        f"plus one {c['long_audio_s'] / 60:.0f}-minute recording (LibriSpeech clips concatenated, FLAC 16 kHz)",
        f"- The floor and the original pipeline are time-boxed over the same fixed shuffled sample of the "
        f"clips (cycled through again if the time box outlasts them; the files count is of files processed); `grv-batch run` processes the whole corpus, long recording included, once per worker count.",
        "",
        "## Results" + (" (smoke run, not the benchmark)" if quick else ""),
        "",
        render_table(res),
        "",
        "Reference points from the issue: the original project's code about 29x realtime per core, "
        "inaSpeechSegmenter about 10x on a CPU, the floor 900-1,400x per core on this machine.",
        "",
        "Targets (issue *Throughput and scale*): grv-batch >= 250x realtime per core end to end with two "
        "workers, >= 8x the original per core, two workers >= 1.8x faster than one, no process above "
        "1.5 GB RSS.",
        "",
        "## Where the time goes",
        "",
    ]
    if res.get("profile"):
        parts += [
            "cProfile over a single-process, single-thread analysis of a sample of the clips, as one "
            "worker does it: `grv_batch.features.analyze_file` (job defaults), `Ensemble.predict_windows` "
            "on windows buffered across files in chunks of the pipeline's `PREDICT_CHUNK_WINDOWS`, "
            "`combine_file` per file, and a zstd Parquet write of the rows. Imports, the model load and "
            "one warm-up file (TensorFlow tracing, numba compilation) are paid once per worker and are "
            "excluded: the profiler is enabled around the measured loop only. Each stage is the cumulative "
            "time of its entry functions when called from the pipeline (`features/analysis.py`, "
            "`stages/segment.py`); *other* is the rest of the measured loop.",
            "",
            render_profile(res["profile"]),
            "",
        ]
    else:
        parts += ["(profile skipped: `--profile-seconds 0`)", ""]
    parts += [
        "## Reproduce",
        "",
        "The benchmark needs `../shared` beside the checkout (its clips for the corpus and "
        "`anchors/seed-model.h5` for the original pipeline). `--write-docs` rewrites this page.",
        "",
        "```bash",
        "source .venv/bin/activate",
        "python benchmarks/run_benchmark.py --hours 3 --long-minutes 60 --workers 1 2 --write-docs",
        "```",
        "",
        "This run's command:" if not quick else "The smoke run above was made with:",
        "",
        "```bash",
        res["command"],
        "```",
        "",
        "The corpus is built outside the repository (by `benchmarks/make_corpus.py`; "
        "`run_benchmark.py`'s default `--corpus-dir` is `/tmp/grv-bench/corpus-<hours>h-<minutes>m`, "
        "reused when it matches); outputs, logs, "
        "`results.json` and the raw `profile.pstats` go to a fresh folder under `/tmp/grv-bench/runs/`. "
        "On a machine with more than two cores the default worker counts are 1, 2 and all cores. "
        "Each grv-batch run is killed (with its Dask workers) after `--run-timeout` seconds.",
        "",
    ]
    return "\n".join(parts)


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        _cleanup()
