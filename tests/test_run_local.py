"""End to end through the real ``grv-batch`` command on a local cluster of worker processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from conftest import BIN, FEMALE, MALE, grv, make_mixed_corpus, read_table, sigint_as_in_a_terminal

pytestmark = pytest.mark.slow

BROKEN_REASONS = {
    "broken/empty.wav": "empty",
    "broken/text.wav": "not a readable audio file",
    "broken/header_only.wav": "no audio",
    "broken/nan.wav": "non-finite",
    "broken/truncated.wav": "truncated",
    "broken/truncated.m4a": "not a readable audio file",
}


def test_mixed_corpus_every_file_exactly_once(mixed_corpus, tmp_path):
    corpus, meta = mixed_corpus
    out = tmp_path / "out"
    proc = grv("run", str(corpus), "--out", str(out), "--metadata", str(meta), "--workers", "2",
               "--no-progress")
    assert proc.returncode == 0
    files = read_table(out, "files")
    expected = pd.read_csv(meta)["path"]
    assert sorted(files["path"]) == sorted(expected)
    assert files["file_id"].is_unique
    by_path = files.set_index("path")
    for path, fragment in BROKEN_REASONS.items():
        assert by_path.loc[path, "status"] == "error", path
        assert fragment in by_path.loc[path, "error"].lower(), (path, by_path.loc[path, "error"])
    assert by_path.loc["broken/truncated.flac", "status"] == "error" or \
        by_path.loc["broken/truncated.flac", "duration_s"] < 3.0

    real = files[files["path"].str.startswith("spk")]
    assert (real["status"] == "ok").all(), real[["path", "error"]]
    stereo = by_path.loc["spk01/clip.wav"]
    assert stereo["channels"] == 2 and stereo["sample_rate"] == 44100
    assert by_path.loc["spk03/clip.mp3", "sample_rate"] == 48000
    assert by_path.loc["spk04/clip.wav", "sample_rate"] == 8000
    m4a, webm = by_path.loc["spk06/clip.m4a"], by_path.loc["spk07/clip.webm"]
    assert (m4a["channels"], m4a["sample_rate"], webm["sample_rate"]) == (2, 44100, 48000)
    assert m4a["duration_s"] >= 3.0 and webm["duration_s"] >= 3.0  # encoder delay may add a little

    ok_ids = set(files.loc[files["status"] == "ok", "file_id"])
    features = read_table(out, "features")
    predictions = read_table(out, "predictions")
    assert set(features["file_id"]) == ok_ids and features["file_id"].is_unique
    assert set(predictions["file_id"]) == ok_ids and predictions["file_id"].is_unique
    for column in ("file_id", "path", "speaker_id", "p_male", "confidence", "label", "reason"):
        assert column in predictions.columns
    assert [c for c in predictions.columns if c.startswith("p_male_")], "no member columns"
    assert predictions["p_male"].between(0, 1).all()
    assert set(predictions["label"]) <= {"female", "male", "uncertain"}
    assert (predictions.loc[predictions["label"] != "uncertain", "reason"].isna()).all()
    assert predictions.loc[predictions["label"] == "uncertain", "reason"].notna().all()
    quiet = predictions.set_index("path").loc[["broken/silence.wav", "broken/click.wav"]]
    for path, row in quiet.iterrows():
        assert row["label"] == "uncertain" and row["reason"] == "too_little_speech", path
    assert "condition" in predictions.columns  # metadata carried

    speakers = read_table(out, "speakers")
    for column in ("speaker_id", "n_files", "n_confident", "p_male", "confidence", "label"):
        assert column in speakers.columns
    assert set(speakers["speaker_id"]) == {f"spk{i:02d}" for i in range(8)}

    run = json.loads((out / "_run.json").read_text())
    assert run["counts"]["n_files"] == len(expected)
    assert run["model"]["name"] and len(run["model"]["manifest_sha256"]) == 64
    assert (out / "report" / "report.html").exists()
    assert (out / "report" / "groups.parquet").exists()
    # the 8 kHz file is narrowband, the 44.1 kHz stereo one wideband, and the report compares them
    bandwidth = features.set_index(files.set_index("file_id").loc[features["file_id"], "path"])
    assert bandwidth.loc["spk04/clip.wav", "bandwidth_hz"] < 4500
    assert bandwidth.loc["spk01/clip.wav", "bandwidth_hz"] >= 7000
    groups = pd.read_parquet(out / "report" / "groups.parquet")
    assert "narrowband (<4.5 kHz)" in set(groups.loc[groups["group_by"] == "bandwidth_band", "group"])

    # The same command again resumes: nothing is redone, nothing is duplicated.
    again = grv("run", str(corpus), "--out", str(out), "--metadata", str(meta), "--workers", "1",
                "--no-progress")
    run2 = json.loads((out / "_run.json").read_text())
    assert run2["batches"]["run_now"] == 0
    assert read_table(out, "files")["file_id"].is_unique
    assert "already done" in again.stderr

    # A predictions shard lost since (say, by an interrupted copy of OUT): its batch runs again.
    predictions = read_table(out, "predictions")
    lost = next(f for f in sorted((out / "predictions").glob("part-*.parquet")) if "empty" not in f.name)
    lost.unlink()
    grv("run", str(corpus), "--out", str(out), "--metadata", str(meta), "--workers", "1", "--no-progress")
    assert json.loads((out / "_run.json").read_text())["batches"]["run_now"] == 1
    restored = read_table(out, "predictions")
    assert restored["file_id"].is_unique and set(restored["file_id"]) == set(predictions["file_id"])

    # Another job over the same OUT is refused with a one-line reason.
    job = tmp_path / "other.toml"
    job.write_text("[denoise]\nenabled = false\n")
    refused = grv("run", str(corpus), "--out", str(out), "--job", str(job), check=False)
    assert refused.returncode != 0
    assert "different job" in refused.stderr and "--overwrite" in refused.stderr


def test_tables_readable_by_pandas_pyarrow_and_duckdb(mixed_corpus, tmp_path):
    corpus, meta = mixed_corpus
    out = tmp_path / "out"
    grv("run", str(corpus), "--out", str(out), "--workers", "1", "--no-progress")
    import duckdb
    import pyarrow.dataset as ds

    for name in ("files", "features", "predictions", "speakers"):
        n_pa = ds.dataset(str(out / name)).count_rows()
        n_pd = len(pd.read_parquet(out / name))
        n_db = duckdb.sql(f"select count(*) from read_parquet('{out}/{name}/**/*.parquet')").fetchall()[0][0]
        assert n_pa == n_pd == n_db, name
    # Without metadata there is no ground truth and no speaker unless the job derives one.
    predictions = read_table(out, "predictions")
    assert predictions["speaker_id"].isna().all()


def test_job_file_speaker_pattern_mfcc_count_and_long_recordings(tmp_path, voice):
    import soundfile as sf

    corpus = tmp_path / "corpus"
    make_mixed_corpus(corpus, n_voices=4, broken=False)
    long = voice(*MALE, 16000, 100.0, np.random.default_rng(1))  # 100 s: four 30 s windows
    sf.write(corpus / "spk01" / "long.flac", long, 16000)
    job = tmp_path / "job.toml"
    job.write_text('[speakers]\nfrom_path = "^(?P<speaker>spk\\\\d+)/"\n[features]\nn_mfcc = 13\n')
    out = tmp_path / "out"
    grv("run", str(corpus), "--out", str(out), "--job", str(job), "--workers", "1", "--no-progress")
    speakers = read_table(out, "speakers")
    assert sorted(speakers["speaker_id"]) == ["spk00", "spk01", "spk02", "spk03"]
    assert speakers.set_index("speaker_id").loc["spk01", "n_files"] == 2
    files = read_table(out, "files").set_index("path")
    assert files.loc["spk01/long.flac", "n_windows"] >= 3
    assert abs(files.loc["spk01/long.flac", "duration_s"] - 100.0) < 0.1
    predictions = read_table(out, "predictions").set_index("path")
    assert predictions.loc["spk01/long.flac", "n_windows"] == files.loc["spk01/long.flac", "n_windows"]
    # the features table has the job's MFCC count: 13 coefficients, all filled, and no 14th
    features = read_table(out, "features")
    assert {"mfcc_13_mean", "dmfcc_13_std"} <= set(features.columns)
    assert not any(c.startswith(("mfcc_14", "dmfcc_14")) for c in features.columns)
    assert features["mfcc_13_mean"].notna().all()


@pytest.mark.parametrize("problem, message", [
    ("missing", "does not exist"),
    ("empty", "holds no audio file"),
    ("dupe-metadata", "more than once"),
    ("bad-metadata", "cannot be read"),
    ("bad-job", "unknown key"),
    ("secret-url", "Protocol not known"),
])
def test_unusable_arguments_stop_with_one_line(tmp_path, problem, message):
    corpus = tmp_path / "corpus"
    meta = make_mixed_corpus(corpus, n_voices=2, broken=False)
    args = [str(corpus), "--out", str(tmp_path / "out")]
    if problem == "missing":
        args[0] = str(tmp_path / "nope")
    elif problem == "empty":
        (tmp_path / "void").mkdir()
        args[0] = str(tmp_path / "void")
    elif problem == "dupe-metadata":
        frame = pd.read_csv(meta)
        pd.concat([frame, frame.iloc[:1]]).to_csv(meta, index=False)
        args += ["--metadata", str(meta)]
    elif problem == "bad-metadata":
        meta.write_bytes(b"\x00\x01\x02garbage")
        args += ["--metadata", str(meta.with_suffix(".parquet"))]
        meta.rename(meta.with_suffix(".parquet"))
    elif problem == "bad-job":
        job = tmp_path / "job.toml"
        job.write_text("[denoise]\nprop_decreas = 0.5\n")
        args += ["--job", str(job)]
    elif problem == "secret-url":
        args[0] = "foo://AKIAKEY:Sup3rSecret@bucket/audio/?token=T0ken99"
    proc = grv("run", *args, check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert message in lines[0]
    assert "Sup3rSecret" not in proc.stderr + proc.stdout and "T0ken99" not in proc.stderr + proc.stdout


def _one_file_batches_run(tmp_path, *, broken: bool, seed: int) -> tuple[list[str], dict, Path]:
    """``grv-batch run`` over 24 voices in one-file batches (many completion records to interrupt
    between): the command, its environment and OUT."""
    corpus = tmp_path / "corpus"
    make_mixed_corpus(corpus, n_voices=24, broken=broken, seed=seed)
    job = tmp_path / "small-batches.toml"
    job.write_text("[execution]\nbatch_audio_s = 4.0\nmax_files_per_batch = 1\n")
    out = tmp_path / "out"
    cmd = [str(BIN / "grv-batch"), "run", str(corpus), "--out", str(out), "--job", str(job),
           "--workers", "1", "--no-progress"]
    return cmd, {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, out


def test_a_changed_corpus_reruns_only_the_batches_it_touched(tmp_path, voice):
    # 96 WAVs of 1 s in batches of about 10 s: had the sorted list been cut every 10 s, the file
    # added in front would move the boundaries up to the one removed near the end. The metadata
    # follows the corpus, and one of its rows is corrected; one file is rewritten in place.
    corpus = tmp_path / "corpus"
    rng = np.random.default_rng(5)
    for i in range(96):
        (corpus / f"spk{i // 8:02d}").mkdir(parents=True, exist_ok=True)
        f0, formants = MALE if i % 2 else FEMALE
        sf.write(corpus / f"spk{i // 8:02d}" / f"{i:02d}.wav",
                 voice(f0, formants, 16000, 1.0, rng), 16000, subtype="PCM_16")
    job = tmp_path / "job.toml"
    job.write_text("[execution]\nbatch_audio_s = 10.0\n")
    out, meta = tmp_path / "out", tmp_path / "meta.csv"

    def listed() -> list[str]:
        return sorted(str(p.relative_to(corpus)) for p in corpus.glob("spk*/*.wav"))

    def run() -> dict:
        rows = pd.DataFrame({"path": listed(), "gender": [
            "male" if int(p.split("/")[1][:2]) % 2 else "female" for p in listed()]})
        # corrected in the second run
        rows.loc[rows["path"] == "spk06/50.wav", "gender"] = "female" if out.exists() else "unknown"
        rows.to_csv(meta, index=False)
        grv("run", str(corpus), "--out", str(out), "--job", str(job), "--workers", "1",
            "--metadata", str(meta), "--no-progress")
        return json.loads((out / "_run.json").read_text())["batches"]

    first = run()
    shutil.copy(corpus / "spk05" / "41.wav", corpus / "spk00" / "00a.wav")  # second in order
    (corpus / "spk11" / "90.wav").unlink()
    sf.write(corpus / "spk03" / "30.wav", voice(*MALE, 16000, 2.0, rng), 16000, subtype="PCM_16")
    second = run()
    assert first["total"] >= 6, first
    # the batches of the added, the removed, the rewritten and the corrected file, and at most
    # one more after each of the first two
    assert second["run_now"] <= 6 and second["skipped_as_done"] >= second["total"] - 6, second
    files = read_table(out, "files")
    assert sorted(files["path"]) == listed() and files["file_id"].is_unique
    assert files.set_index("path").loc["spk03/30.wav", "duration_s"] == pytest.approx(2.0)
    predictions = read_table(out, "predictions").set_index("path")
    assert sorted(predictions.index) == listed()
    assert predictions.loc["spk06/50.wav", "gender"] == "female"
    assert predictions.loc["spk00/00a.wav", "gender"] == "female"


def test_interrupted_run_resumes_exactly_once(tmp_path):
    cmd, env, out = _one_file_batches_run(tmp_path, broken=True, seed=3)
    t0 = time.monotonic()
    full = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    full_s = time.monotonic() - t0
    assert full.returncode == 0, full.stderr
    n_batches = json.loads((out / "_run.json").read_text())["batches"]["total"]

    out2 = tmp_path / "out2"
    cmd2 = [c if c != str(out) else str(out2) for c in cmd]
    client = subprocess.Popen(cmd2, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                              start_new_session=True)
    records = out2 / "_batches"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if records.exists() and len(list(records.glob("*.json"))) >= n_batches // 2:
            break
        time.sleep(0.2)
    os.killpg(client.pid, signal.SIGKILL)  # the client and its local cluster die at once
    client.wait()
    assert not (out2 / "_run.json").exists(), "the run finished before it was killed"
    t0 = time.monotonic()
    resumed = subprocess.run(cmd2, capture_output=True, text=True, env=env, timeout=600)
    resumed_s = time.monotonic() - t0
    assert resumed.returncode == 0, resumed.stderr
    run = json.loads((out2 / "_run.json").read_text())
    assert run["batches"]["skipped_as_done"] >= n_batches // 2, (run["batches"], resumed.stderr)
    files = read_table(out2, "files")
    assert files["file_id"].is_unique and len(files) == len(read_table(out, "files")), \
        (len(files), files["file_id"].duplicated().sum())
    assert read_table(out2, "predictions")["file_id"].is_unique
    # Less work, not just less time: the resumed run ran only the batches the killed one had not
    # finished (wall time is dominated by cluster start and model loading at this size).
    assert run["batches"]["run_now"] <= n_batches - n_batches // 2, run["batches"]
    print(f"full run {full_s:.1f} s, resumed after kill {resumed_s:.1f} s")

    # Rows lost or doubled after the fact (a shard deleted; a stray task of an interrupted run
    # writing a second shard): the next run redoes the batch whose rows are missing, stops on
    # the duplicate with one line, and the run after it repairs that too.
    n_files = len(read_table(out, "files"))
    shards = sorted((out / "files").glob("part-*.parquet"))
    shards[0].unlink()
    doubled = shards[1].name[len("part-"):-len(".parquet")]
    shutil.copy(shards[1], out / "files" / f"part-{doubled}.0.parquet")
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 2 and "1 duplicated" in first.stderr and "again" in first.stderr, \
        (first.returncode, first.stderr)
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr
    files = read_table(out, "files")
    assert files["file_id"].is_unique and len(files) == n_files, (len(files), n_files)
    assert json.loads((out / "_run.json").read_text())["batches"]["run_now"] == 1, again.stderr
    finished = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert finished.returncode == 0 and "nothing left to run" in finished.stderr, finished.stderr
    assert "Dask cluster" not in finished.stderr, finished.stderr  # no cluster for no work


def test_ctrl_c_stops_with_one_line_and_the_same_command_resumes(tmp_path):
    cmd, env, out = _one_file_batches_run(tmp_path, broken=False, seed=5)
    client = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env, start_new_session=True, preexec_fn=sigint_as_in_a_terminal)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list((out / "_batches").glob("*.json")):
        time.sleep(0.1)
    os.killpg(client.pid, signal.SIGINT)  # as Ctrl-C in a terminal: every process of the group
    _, err = client.communicate(timeout=120)
    assert client.returncode == 130, err
    assert "run the same command again to resume" in err.strip().splitlines()[-1]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    resumed = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert read_table(out, "files")["file_id"].is_unique


def test_a_file_that_kills_every_worker_becomes_an_error_row(tmp_path):
    corpus = tmp_path / "corpus"
    meta = make_mixed_corpus(corpus, n_voices=6, broken=False)
    job = tmp_path / "big-batches.toml"
    job.write_text("[execution]\nbatch_audio_s = 10000.0\n")  # several files a batch (10 s each)
    out = tmp_path / "out"
    proc = grv("run", str(corpus), "--out", str(out), "--metadata", str(meta), "--job", str(job),
               "--workers", "2", "--no-progress",
               env={"GRV_BATCH_TEST_CRASH_ON": "spk02/",
                    "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1"})
    assert "one by one" in proc.stderr
    files = read_table(out, "files")
    assert sorted(files["path"]) == sorted(pd.read_csv(meta)["path"])
    assert files["file_id"].is_unique
    dead = files.set_index("path").loc["spk02/clip.ogg"]
    assert dead["status"] == "error" and "worker process died" in dead["error"]
    others = files[files["path"] != "spk02/clip.ogg"]
    assert (others["status"] == "ok").all()
    assert read_table(out, "predictions")["file_id"].is_unique
    run = json.loads((out / "_run.json").read_text())
    assert run["counts"]["n_error"] == 1


def test_worker_start_up_skips_what_keras_only_might_use():
    """A worker imports TensorFlow without Keras's optional matplotlib and scikit-learn (0.7 s per
    worker), still loads the shipped bundle in safe mode, and can import both afterwards."""
    code = (
        "import sys\n"
        "from grv_batch.pipeline import KERAS_OPTIONAL_IMPORTS, _prepare_worker\n"
        "_prepare_worker()\n"
        "assert 'tensorflow' in sys.modules\n"
        "assert not set(KERAS_OPTIONAL_IMPORTS) & set(sys.modules), sorted(sys.modules)\n"
        "from grv_batch.models import load_ensemble\n"
        "print(load_ensemble().members)\n"
        "import sklearn.linear_model, matplotlib\n"
    )
    assert "cv_mel" in _python(code, timeout=120)


def test_local_workers_import_tensorflow_before_their_first_task():
    """The local cluster's preload starts each worker's preparation (TensorFlow, one thread) in a
    background thread at start-up, so it overlaps the client's planning; a task that comes first
    waits for it rather than importing TensorFlow a second time."""
    code = (
        "import sys, time\n"
        "from distributed import Client, LocalCluster\n"
        "def state():\n"
        "    import sys, grv_batch.pipeline as p\n"
        "    return 'tensorflow' in sys.modules, p._WORKER_READY, p._WORKER_LOCK.locked()\n"
        "if __name__ == '__main__':\n"
        "    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,\n"
        "                      preload=['grv_batch._local_worker']) as cluster, Client(cluster) as client:\n"
        "        deadline = time.monotonic() + 90\n"
        "        while True:\n"
        "            (tf, ready, busy), = client.run(state).values()\n"
        "            if (tf and ready and not busy) or time.monotonic() > deadline:\n"
        "                break\n"
        "            time.sleep(0.2)\n"
        "        print(tf, ready, busy)\n"
    )
    assert _python(code, timeout=150).split() == ["True", "True", "False"]


def _python(code: str, *, timeout: float) -> str:
    """stdout of ``code`` run by the virtual environment's Python in a fresh process (which must
    succeed)."""
    proc = subprocess.run([str(BIN / "python"), "-c", code], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_a_batch_that_raises_is_split_and_only_the_failing_file_is_an_error(mixed_corpus, tmp_path):
    corpus, meta = mixed_corpus
    job = tmp_path / "job.toml"
    job.write_text("[execution]\nbatch_audio_s = 10000.0\nretries = 0\n")  # batches of several files
    out = tmp_path / "out"
    proc = grv("run", str(corpus), "--out", str(out), "--metadata", str(meta), "--job", str(job),
               "--workers", "1", "--no-progress", env={"GRV_BATCH_TEST_RAISE_ON": "spk02/"})
    assert "one by one" in proc.stderr
    files = read_table(out, "files")
    assert sorted(files["path"]) == sorted(pd.read_csv(meta)["path"]) and files["file_id"].is_unique
    failed = files[files["path"].str.startswith("spk02/")]
    assert len(failed) >= 1 and (failed["status"] == "error").all()
    assert failed["error"].str.contains("processing failed: RuntimeError: injected failure").all()
    predictions = read_table(out, "predictions")
    assert set(predictions["file_id"]) == set(files.loc[files["status"] == "ok", "file_id"])


def test_retried_shards_leave_nothing_stale_and_a_rerun_drops_the_old_run_record(tmp_path):
    """An attempt whose files now all fail removes the feature/prediction shards an earlier
    attempt wrote; a failed attempt's cleanup removes its completion record too; and a run
    starts by removing ``_run.json``, which only a completed run writes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from grv_batch.pipeline import process_batch
    from grv_batch.runner import _remove_batch_shards, plan_run, run_job
    from grv_batch.spec import JobSpec

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "bad.wav").write_text("not audio")
    out = tmp_path / "out"
    job = JobSpec()
    plan = plan_run(str(corpus), str(out), job)
    (task,) = plan.tasks
    stale = [out / name / f"part-{task.shard}.parquet" for name in ("features", "predictions")]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"file_id": [task.files[0].file_id]}), path)
    record = process_batch(task, job=job, layout=plan.layout)
    assert record["n_error"] == 1 and not any(p.exists() for p in stale)
    assert (out / "_batches" / f"{task.shard}.json").exists()
    _remove_batch_shards(task, plan.layout, {})
    assert not (out / "_batches" / f"{task.shard}.json").exists()
    assert not (out / "files" / f"part-{task.shard}.parquet").exists()

    class ClusterGone:
        def submit(self, *args, **kwargs):
            raise RuntimeError("scheduler unreachable")

        def nthreads(self):
            return {"tcp://127.0.0.1:40000": 1}

    (out / "_run.json").write_text("{}")  # as a finished earlier run left it
    with pytest.raises(RuntimeError, match="unreachable"):
        run_job(str(corpus), str(out), job, client=ClusterGone(), plan=plan)
    assert not (out / "_run.json").exists()


def test_a_failure_of_every_file_stops_the_run_and_a_rerun_recovers(tmp_path):
    """When every file of a batch fails the same way the cause is not in the files: the run stops
    with one line (no _run.json) instead of writing error rows, and a rerun finishes cleanly."""
    corpus = tmp_path / "corpus"
    meta = make_mixed_corpus(corpus, n_voices=8, broken=False)
    out = tmp_path / "out"
    args = ("run", str(corpus), "--out", str(out), "--workers", "1", "--no-progress")
    failed = grv(*args, check=False, env={"GRV_BATCH_TEST_RAISE_ON": "clip"})
    assert failed.returncode != 0
    last = failed.stderr.strip().splitlines()[-1]
    assert "for every file tried" in last and "injected failure" in last
    # one line: the local workers do not print the task's traceback as well
    assert "Traceback" not in failed.stderr and "Compute Failed" not in failed.stderr, failed.stderr
    assert not (out / "_run.json").exists()
    grv(*args)
    files = read_table(out, "files")
    assert sorted(files["path"]) == sorted(pd.read_csv(meta)["path"]) and files["file_id"].is_unique
    assert (files["status"] == "ok").all()


def test_a_run_where_no_file_is_ok_still_writes_every_table(tmp_path):
    """SPEC: each table is a Parquet dataset; with no ok file it is an empty one with its columns."""
    import pyarrow.dataset as ds

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.wav").write_text("not audio")
    (corpus / "b.flac").write_bytes(b"")
    out = tmp_path / "out"
    grv("run", str(corpus), "--out", str(out), "--workers", "1", "--no-progress")
    assert read_table(out, "files")["status"].tolist() == ["error", "error"]
    for name, column in (("features", "f0_p50"), ("predictions", "p_male"), ("speakers", "speaker_id")):
        dataset = ds.dataset(str(out / name))
        assert dataset.count_rows() == 0 and column in dataset.schema.names, name
    assert (out / "report" / "report.html").exists()
    # the report of such a run rebuilds; a group column that is not there is one line
    grv("report", str(out))
    proc = grv("report", str(out), "--group", "accent", check=False)
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert proc.returncode != 0 and len(lines) == 1 and "'accent'" in lines[0], proc.stderr


def test_retry_errors_runs_the_failed_files_again(tmp_path):
    """A file that failed (a bucket that timed out, a file fixed since) stays an error row on a
    plain rerun, whose batch is done; ``--retry-errors`` runs it again."""
    corpus = tmp_path / "corpus"
    meta = make_mixed_corpus(corpus, n_voices=3, broken=False)
    (corpus / "late.wav").write_text("not audio yet")
    out = tmp_path / "out"
    args = ("run", str(corpus), "--out", str(out), "--workers", "1", "--no-progress")
    grv(*args)
    files = read_table(out, "files").set_index("path")
    assert files.loc["late.wav", "status"] == "error"
    shutil.copy(corpus / pd.read_csv(meta)["path"].iloc[0], corpus / "late.wav")
    again = grv(*args, "--retry-errors")
    assert "Retrying 1 error row(s)" in again.stderr
    files = read_table(out, "files").set_index("path")
    assert files.loc["late.wav", "status"] == "ok" and files.index.is_unique


def test_a_read_that_fails_mid_file_is_retried_and_never_decoded_short(tmp_path, monkeypatch, voice):
    """Decoders read through C callbacks that take a failed read for the end of the file: an Ogg
    file whose storage failed half-way decoded as a shorter, valid-looking file. A storage failure
    is now retried, and a file that cannot be read whole is an error row saying why."""
    import dataclasses

    import fsspec
    import soundfile as sf
    from fsspec.implementations.local import LocalFileSystem

    from grv_batch import pipeline
    from grv_batch.pipeline import process_batch
    from grv_batch.runner import plan_run
    from grv_batch.spec import JobSpec

    failures = {"flaky.ogg": 1, "dead.ogg": 99}  # reads of each file that fail half-way

    class Flaky(LocalFileSystem):
        protocol = "flaky"

        def _open(self, path, mode="rb", **kwargs):
            f = super()._open(path, mode, **kwargs)
            name = os.path.basename(path)
            if failures.get(name, 0) > 0:
                failures[name] -= 1
                half, read = os.path.getsize(path) // 2, f.read

                def failing_read(n=-1):
                    if f.tell() >= half:
                        raise ConnectionError("connection reset by peer")
                    return read(n if n >= 0 else half - f.tell())

                def failing_readinto(buffer):
                    data = failing_read(len(buffer))
                    buffer[: len(data)] = data
                    return len(data)

                f.read, f.readinto = failing_read, failing_readinto
            return f

    fsspec.register_implementation("flaky", Flaky, clobber=True)
    monkeypatch.setattr(pipeline, "READ_RETRY_DELAY_S", 0.0)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    y = voice(*MALE, 16000, 20.0, np.random.default_rng(0))
    for name in ("flaky.ogg", "dead.ogg", "fine.ogg"):
        sf.write(corpus / name, y, 16000)
    job = JobSpec()
    plan = plan_run(str(corpus), str(tmp_path / "out"), job)
    for task in plan.tasks:
        flaky = [dataclasses.replace(f, url=f"flaky://{f.url}") for f in task.files]
        process_batch(dataclasses.replace(task, files=flaky), job=job, layout=plan.layout)
    files = read_table(tmp_path / "out", "files").set_index("path")
    assert len(files) == 3
    assert files.loc["flaky.ogg", "status"] == "ok", "one failed read is retried"
    assert files.loc["flaky.ogg", "duration_s"] == pytest.approx(20.0, abs=0.1)
    assert files.loc["fine.ogg", "duration_s"] == pytest.approx(20.0, abs=0.1)
    error = files.loc["dead.ogg", "error"]
    assert files.loc["dead.ogg", "status"] == "error"
    assert "read failed: ConnectionError: connection reset by peer (after 3 attempts)" in error
    predictions = read_table(tmp_path / "out", "predictions")
    assert sorted(predictions["path"]) == ["fine.ogg", "flaky.ogg"]


def test_a_broken_link_listed_first_does_not_look_like_an_input_the_workers_cannot_see(tmp_path):
    """The workers' view of a local INPUT is checked on its folder: a first file that is a broken
    link (or gone since the listing) is an error row, not "workers cannot see INPUT"."""
    from grv_batch.runner import plan_run, run_job
    from grv_batch.spec import JobSpec

    corpus = tmp_path / "corpus"
    make_mixed_corpus(corpus, n_voices=2, broken=False)
    (corpus / "0_old_take.wav").symlink_to(corpus / "missing.wav")
    job = JobSpec()
    plan = plan_run(str(corpus), str(tmp_path / "out"), job)
    assert any(f.path == "0_old_take.wav" for t in plan.tasks for f in t.files)

    class Submitted(Exception):
        pass

    class SameMachineWorkers:
        def run(self, function, path):
            return {"tcp://127.0.0.1:40000": function(path)}

        def nthreads(self):
            return {"tcp://127.0.0.1:40000": 1}

        def submit(self, *args, **kwargs):
            raise Submitted

    with pytest.raises(Submitted):
        run_job(str(corpus), str(tmp_path / "out"), job, client=SameMachineWorkers(), plan=plan)


def test_a_worker_that_sees_only_an_empty_mount_point_still_stops_the_run(tmp_path):
    """INPUT's folder is there on the worker (an unmounted share's mount point) but its files are
    not: the check also looks for a file the client can read."""
    from grv_batch.runner import RunFailed, plan_run, run_job
    from grv_batch.spec import JobSpec

    corpus = tmp_path / "corpus"
    make_mixed_corpus(corpus, n_voices=2, broken=False)
    job = JobSpec()
    plan = plan_run(str(corpus), str(tmp_path / "out"), job)

    class EmptyMountPoint:
        def run(self, function, path):
            return {"tcp://10.0.0.2:40000": path == str(corpus) or not path.startswith(str(corpus))}

        def submit(self, *args, **kwargs):
            raise AssertionError("no batch may be submitted")

    with pytest.raises(RunFailed, match="cannot see INPUT"):
        run_job(str(corpus), str(tmp_path / "out"), job, client=EmptyMountPoint(), plan=plan)


def test_workers_that_cannot_see_a_local_input_stop_the_run_before_any_batch(tmp_path):
    """Workers of a named scheduler may run on other machines: a local INPUT they cannot see made
    every file an error row "file disappeared", and the run exited 0."""
    from grv_batch.runner import RunFailed, plan_run, run_job
    from grv_batch.spec import JobSpec

    corpus = tmp_path / "corpus"
    make_mixed_corpus(corpus, n_voices=2, broken=False)
    out = tmp_path / "out"
    job = JobSpec()
    plan = plan_run(str(corpus), str(out), job)

    class ElsewhereWorkers:
        def run(self, function, path):
            return {"tcp://10.0.0.2:40000": False, "tcp://10.0.0.3:40000": function(path)}

        def submit(self, *args, **kwargs):
            raise AssertionError("no batch may be submitted")

    with pytest.raises(RunFailed, match=r"1 of 2 Dask worker\(s\) \(tcp://10.0.0.2:40000\) cannot see INPUT"):
        run_job(str(corpus), str(out), job, client=ElsewhereWorkers(), plan=plan)
    assert not (out / "files").exists()


def test_batches_are_submitted_a_bounded_number_ahead_of_the_workers(tmp_path, monkeypatch):
    """A corpus of a million files is thousands of batches: only a window of them (per worker
    thread, at least a minimum) is handed to the scheduler at once, topped up as batches finish,
    and every file is still accounted for once."""
    from grv_batch import runner
    from grv_batch.runner import dask_client, plan_run, run_job
    from grv_batch.spec import JobSpec

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    monkeypatch.setattr(runner, "MIN_BATCHES_IN_FLIGHT", 3)
    monkeypatch.setattr(runner, "BATCHES_IN_FLIGHT_PER_THREAD", 1)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(12):  # one batch each, and quick: each is an error row
        (corpus / f"{i:02d}.wav").write_text("not audio")
    out = tmp_path / "out"
    job = JobSpec(execution={"workers": 1, "max_files_per_batch": 1, "dashboard_address": ":0"})
    plan = plan_run(str(corpus), str(out), job)
    assert len(plan.tasks) == 12
    with dask_client(job.execution) as client:
        submitted, most = [], [0]
        real_submit = client.submit

        def counting_submit(*args, **kwargs):
            future = real_submit(*args, **kwargs)
            submitted.append(future)
            most[0] = max(most[0], sum(not f.done() for f in submitted))
            return future

        monkeypatch.setattr(client, "submit", counting_submit)
        run_job(str(corpus), str(out), job, client=client, plan=plan, progress=False)
    assert len(submitted) == 12 and 1 <= most[0] <= 3
    files = read_table(out, "files")
    assert sorted(files["path"]) == [f"{i:02d}.wav" for i in range(12)] and files["file_id"].is_unique
