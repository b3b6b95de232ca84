"""Against real servers: a ``dask scheduler`` with ``dask worker`` processes, and moto's S3 server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import pandas as pd
import pytest

from conftest import BIN, grv, make_mixed_corpus, read_table

pytestmark = pytest.mark.slow


def test_existing_cluster_survives_a_killed_worker(tmp_path, dask_cluster):
    corpus = tmp_path / "corpus"
    meta = make_mixed_corpus(corpus, n_voices=30, broken=True, seed=5)
    job = tmp_path / "job.toml"
    job.write_text("[execution]\nmax_files_per_batch = 1\n")
    out = tmp_path / "out"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "DASK_SCHEDULER_ADDRESS": dask_cluster["address"]}  # the variable, not the flag
    client = subprocess.Popen(
        [str(BIN / "grv-batch"), "run", str(corpus), "--out", str(out), "--job", str(job),
         "--metadata", str(meta), "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    records = out / "_batches"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (records.exists() and len(list(records.glob("*.json"))) >= 3):
        time.sleep(0.1)
    victim = dask_cluster["workers"][0]
    os.kill(victim.pid, signal.SIGKILL)  # mid-run, while it holds tasks
    stdout, stderr = client.communicate(timeout=600)
    assert client.returncode == 0, stderr
    assert dask_cluster["address"] in stderr
    files = read_table(out, "files")
    expected = pd.read_csv(meta)["path"]
    assert sorted(files["path"]) == sorted(expected)
    assert files["file_id"].is_unique
    predictions = read_table(out, "predictions")
    assert predictions["file_id"].is_unique
    assert set(predictions["file_id"]) == set(files.loc[files["status"] == "ok", "file_id"])
    assert victim.poll() is not None  # it really died, and the run finished on the other worker


def test_a_scheduler_without_workers_says_so_and_the_run_waits_for_one(tmp_path, dask_scheduler):
    corpus = tmp_path / "corpus"
    make_mixed_corpus(corpus, n_voices=2, broken=False, seed=3)
    out = tmp_path / "out"
    client = subprocess.Popen(
        [str(BIN / "grv-batch"), "run", str(corpus), "--out", str(out), "--no-progress",
         "--scheduler", dask_scheduler["address"]],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(client.stdout), daemon=True)
    reader.start()  # a thread: readline() would block for good if the run said nothing
    deadline = time.monotonic() + 120
    while "waiting for the first one" not in "".join(lines) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "No workers are connected to this scheduler yet" in " ".join("".join(lines).split())
    assert client.poll() is None  # still waiting, not failed
    dask_scheduler["add_worker"]()
    client.wait(timeout=300)
    reader.join(timeout=10)
    assert client.returncode == 0, "".join(lines)
    assert (read_table(out, "files")["status"] == "ok").all()


def test_a_lost_scheduler_stops_the_run_with_one_line_and_a_rerun_resumes(tmp_path, dask_scheduler):
    """The scheduler dies mid-run: the client stops with one line that says so (no traceback, no
    waiting on batches that will never come back) and keeps the finished batches; the same run on
    another cluster then accounts for every file exactly once, without redoing those batches."""
    corpus = tmp_path / "corpus"
    meta = make_mixed_corpus(corpus, n_voices=24, broken=False, seed=7)
    job = tmp_path / "job.toml"
    job.write_text("[execution]\nmax_files_per_batch = 1\n")
    out = tmp_path / "out"
    dask_scheduler["add_worker"]()
    args = ("run", str(corpus), "--out", str(out), "--job", str(job), "--metadata", str(meta), "--no-progress")
    client = subprocess.Popen([str(BIN / "grv-batch"), *args, "--scheduler", dask_scheduler["address"]],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    records = out / "_batches"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (records.exists() and len(list(records.glob("*.json"))) >= 3):
        time.sleep(0.1)
    dask_scheduler["scheduler"].kill()  # mid-run, with batches queued and running
    killed_at = time.monotonic()
    try:
        _, stderr = client.communicate(timeout=300)
    finally:
        if client.poll() is None:
            client.kill()
    assert client.returncode != 0
    assert time.monotonic() - killed_at < 120
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert "scheduler" in lines[-1] and "run the same command again to resume" in lines[-1], stderr
    kept = {p.name for p in records.glob("*.json")}
    assert len(kept) >= 3 and not (out / "_run.json").exists()

    rerun = grv(*args, "--workers", "1")
    assert f"{len(kept)} already done (resuming)" in " ".join((rerun.stdout + rerun.stderr).split())
    files = read_table(out, "files")
    assert sorted(files["path"]) == sorted(pd.read_csv(meta)["path"])
    assert files["file_id"].is_unique and (files["status"] == "ok").all()
    assert read_table(out, "predictions")["file_id"].is_unique


SECRET = "s3cr3t-Zq81-do-not-leak"


def test_bucket_in_bucket_out_and_no_secret_anywhere(tmp_path, moto_server):
    import s3fs

    opts = {"endpoint_url": moto_server, "key": "testing-key-id", "secret": SECRET}
    fs = s3fs.S3FileSystem(**opts)
    fs.mkdir("corpus-bucket")
    fs.mkdir("out-bucket")
    local = tmp_path / "corpus"
    meta = make_mixed_corpus(local, n_voices=4, broken=True)
    fs.put(str(local) + "/", "corpus-bucket/in/", recursive=True)
    assert fs.find("corpus-bucket/in")
    proc = grv("run", "s3://corpus-bucket/in/", "--out", "s3://out-bucket/run1",
               "--metadata", "s3://corpus-bucket/in/metadata.csv", "--workers", "2",
               "--storage-option", f"endpoint_url={moto_server}",
               "--storage-option", "key=testing-key-id",
               "--storage-option", f"secret={SECRET}", "--no-progress")
    logs = proc.stdout + proc.stderr
    assert SECRET not in logs
    fs.invalidate_cache()
    objects = fs.find("out-bucket/run1")
    assert any(o.endswith("_run.json") for o in objects)
    for obj in objects:
        assert SECRET.encode() not in fs.cat(obj), obj
    files = pd.concat([pd.read_parquet(fs.open(o)) for o in objects if "/files/part-" in o])
    assert sorted(files["path"]) == sorted(pd.read_csv(meta)["path"])
    assert files["file_id"].is_unique
    run = json.loads(fs.cat("out-bucket/run1/_run.json"))
    assert run["job"]["storage_options"]["secret"] == "***"
    assert run["job"]["storage_options"]["endpoint_url"] == moto_server

    # The report can be rebuilt from the bucket without audio.
    again = grv("report", "s3://out-bucket/run1", "--storage-option", f"endpoint_url={moto_server}",
                "--storage-option", "key=testing-key-id", "--storage-option", f"secret={SECRET}")
    assert SECRET not in again.stdout + again.stderr
    fs.invalidate_cache()
    assert fs.exists("out-bucket/run1/report/report.html")


@pytest.mark.parametrize("profiling", [False, True])
def test_local_cluster_serves_its_dashboard_and_workers_get_the_profiling_setting(profiling,
                                                                                   monkeypatch):
    import urllib.request

    import dask

    from grv_batch.runner import dask_client
    from grv_batch.spec import ExecutionParams

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)  # a local cluster, not the user's
    execution = ExecutionParams(workers=1, worker_profiling=profiling, dashboard_address=":0")
    with dask_client(execution) as client:
        seen = client.run(lambda: dask.config.get("distributed.worker.profile.enabled"))
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, no proxy
        with direct.open(client.dashboard_link, timeout=30) as page:  # the link a run prints
            assert page.status == 200
    assert list(seen.values()) == [profiling]


def test_a_key_that_is_an_object_and_a_prefix_is_read_as_the_prefix_with_a_slash(moto_server):
    """S3 lets ``audio`` be an object beside keys under ``audio/``: INPUT ``.../audio/`` is the
    prefix (it was read as the one object), ``.../audio`` the object."""
    import s3fs

    from grv_batch.discovery import InputError, discover

    opts = {"endpoint_url": moto_server, "key": "testing-key-id", "secret": SECRET}
    fs = s3fs.S3FileSystem(**opts)
    fs.mkdir("both")
    fs.pipe({"both/audio": b"not audio", "both/audio/a.wav": b"RIFF", "both/audio/b/c.flac": b"fLaC"})
    prefix = discover("s3://both/audio/", storage_options=opts)
    assert sorted(f.path for f in prefix.files) == ["a.wav", "b/c.flac"]
    with pytest.raises(InputError, match="holds no audio file"):
        discover("s3://both/audio", storage_options=opts)  # the object itself: not an audio name

