"""Shared fixtures: corpora made by the tests themselves (never ../shared), and real servers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from _audio import write_av

#: test-corpus extensions written (and read back) through PyAV, with their codec
AV_CODECS = {"m4a": "aac", "webm": "libopus"}

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port}")


def grv(*args: str, env: dict | None = None, timeout: float = 300,
        check: bool = True) -> subprocess.CompletedProcess:
    """Run the real ``grv-batch`` command as a user would."""
    full_env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    full_env.update({"TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})
    proc = subprocess.run([str(BIN / "grv-batch"), *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"grv-batch {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def _voice(f0: float, formants: tuple[float, ...], sr: int, seconds: float,
           rng: np.random.Generator) -> np.ndarray:
    """A crude source-filter voice: glottal pulses through formant resonators, with pauses."""
    from scipy.signal import lfilter

    n = int(seconds * sr)
    t = np.arange(n) / sr
    contour = f0 * (1 + 0.08 * np.sin(2 * np.pi * 0.7 * t))
    phase = np.cumsum(contour / sr)
    source = np.diff(np.floor(phase), prepend=0.0)  # one impulse per period
    source = lfilter([1.0], [1.0, -0.95], source)  # glottal roll-off
    y = source
    for fc in formants:
        bw = 80.0 + fc * 0.05
        r = np.exp(-np.pi * bw / sr)
        a = [1.0, -2 * r * np.cos(2 * np.pi * fc / sr), r * r]
        y = lfilter([1 - r], a, y)
    envelope = (np.sin(2 * np.pi * 1.5 * t) > -0.6).astype(float)  # syllable-like gaps
    # the resonators' gain depends on the sample rate: scale the voice before the faint noise,
    # or at 8 kHz the noise drowns it (-12 dB) and the gaps vanish
    y = y * envelope / (np.max(np.abs(y)) + 1e-9) + rng.normal(0, 1e-3, n)
    return (0.5 * y / (np.max(np.abs(y)) + 1e-9)).astype(np.float32)


FEMALE = (210.0, (850.0, 1400.0, 2900.0))
MALE = (110.0, (700.0, 1150.0, 2450.0))


@pytest.fixture(scope="session")
def voice():
    return _voice


def make_mixed_corpus(root: Path, *, n_voices: int = 8, broken: bool = True,
                      seed: int = 0) -> Path:
    """Voices in FLAC, WAV, OGG and MP3 at 8-48 kHz, mono and stereo, plus broken files.

    Returns the metadata CSV path (path, speaker_id, gender, condition).
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    kinds = [("flac", 16000, 1), ("wav", 44100, 2), ("ogg", 22050, 1), ("mp3", 48000, 1),
             ("wav", 8000, 1), ("flac", 32000, 2), ("m4a", 44100, 2), ("webm", 48000, 1)]
    for i in range(n_voices):
        gender = "female" if i % 2 == 0 else "male"
        f0, formants = FEMALE if gender == "female" else MALE
        ext, sr, channels = kinds[i % len(kinds)]
        y = _voice(f0 * (1 + 0.05 * rng.standard_normal()), formants, sr, 3.0, rng)
        data = np.stack([y, 0.8 * y], axis=1) if channels == 2 else y
        rel = f"spk{i:02d}/clip.{ext}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if ext in AV_CODECS:  # containers libsndfile cannot write (nor read): PyAV
            write_av(root / rel, data, sr, AV_CODECS[ext])
        else:
            sf.write(root / rel, data, sr, format=ext.upper() if ext != "ogg" else "OGG")
        rows.append({"path": rel, "speaker_id": f"spk{i:02d}", "gender": gender,
                     "condition": "clean" if i % 3 else "phone"})
    if broken:
        bad = root / "broken"
        bad.mkdir(exist_ok=True)
        (bad / "empty.wav").write_bytes(b"")
        (bad / "text.wav").write_text("this is not audio, just text with a .wav name\n" * 20)
        good = root / rows[0]["path"]
        blob = good.read_bytes()
        (bad / "truncated.flac").write_bytes(blob[: len(blob) // 3])
        wav = (root / rows[1]["path"]).read_bytes()
        (bad / "truncated.wav").write_bytes(wav[: len(wav) // 2])
        sf.write(bad / "header_only.wav", np.zeros((0,), np.float32), 16000)
        write_av(bad / "full.m4a", _voice(*FEMALE, 16000, 2.0, rng), 16000)
        blob = (bad / "full.m4a").read_bytes()
        (bad / "full.m4a").unlink()
        (bad / "truncated.m4a").write_bytes(blob[: len(blob) // 2])  # its index (moov) is at the end
        sf.write(bad / "silence.wav", np.zeros(3 * 16000, np.float32), 16000)
        click = np.zeros(int(0.01 * 16000), np.float32)
        click[10:20] = 0.9
        sf.write(bad / "click.wav", click, 16000)
        nan = _voice(*FEMALE, 16000, 1.0, rng)
        nan[100:200] = np.nan
        sf.write(bad / "nan.wav", nan, 16000, subtype="FLOAT")
        for name in ("empty.wav", "text.wav", "truncated.flac", "truncated.wav", "header_only.wav", "silence.wav",
                     "click.wav", "nan.wav", "truncated.m4a"):
            rows.append({"path": f"broken/{name}", "speaker_id": None, "gender": None,
                         "condition": "broken"})
    meta = root / "metadata.csv"
    pd.DataFrame(rows).to_csv(meta, index=False)
    return meta


@pytest.fixture
def mixed_corpus(tmp_path) -> tuple[Path, Path]:
    """(corpus folder, metadata CSV) with real voices and every kind of broken file."""
    corpus = tmp_path / "corpus"
    meta = make_mixed_corpus(corpus)
    return corpus, meta


@pytest.fixture
def dask_scheduler(tmp_path):
    """A real ``dask scheduler`` on loopback, no workers; ``add_worker()`` starts a ``dask worker``
    process. Yields ``{"address", "scheduler", "workers", "logs", "add_worker"}``."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
           "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
    logs = tmp_path / "dask-logs"
    logs.mkdir()
    procs = []
    sched = subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1",
                              "--port", str(port), "--dashboard-address", ":0"],
                             stdout=open(logs / "scheduler.log", "w"), stderr=subprocess.STDOUT,
                             env=env, start_new_session=True)
    procs.append(sched)
    wait_for_port(port)
    address = f"tcp://127.0.0.1:{port}"
    workers: list[subprocess.Popen] = []

    def add_worker() -> subprocess.Popen:
        i = len(workers)
        w = subprocess.Popen([str(BIN / "dask"), "worker", address, "--nthreads", "1",
                              "--no-nanny", "--name", f"w{i}", "--dashboard-address", ":0"],
                             stdout=open(logs / f"worker{i}.log", "w"), stderr=subprocess.STDOUT,
                             env=env, start_new_session=True)
        workers.append(w)
        procs.append(w)
        return w

    yield {"address": address, "scheduler": sched, "workers": workers, "logs": logs, "add_worker": add_worker}
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


@pytest.fixture
def dask_cluster(dask_scheduler):
    """A real ``dask scheduler`` and two ``dask worker`` processes on loopback."""
    from distributed import Client

    for _ in range(2):
        dask_scheduler["add_worker"]()
    for attempt in range(3):
        try:
            with Client(dask_scheduler["address"], timeout="30s") as client:
                client.wait_for_workers(2, timeout=60)
            break
        except AssertionError:
            # distributed gives its client's event-loop thread 10 s to start; once in a full-suite
            # run, with worker processes starting on both cores, that was not enough
            if attempt == 2:
                raise
    return dask_scheduler


@pytest.fixture
def moto_server():
    """moto's S3 API server on loopback; yields its endpoint URL."""
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    exe = shutil.which("moto_server", path=str(BIN)) or shutil.which("moto_server")
    cmd = [exe] if exe else [sys.executable, "-m", "moto.server"]
    proc = subprocess.Popen([*cmd, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def read_table(out: Path | str, name: str, **kwargs) -> pd.DataFrame:
    import pyarrow.dataset as ds

    return ds.dataset(str(Path(out) / name), format="parquet").to_table().to_pandas()


def sigint_as_in_a_terminal() -> None:
    """``preexec_fn`` for a child that a test sends Ctrl-C: a suite started as a background job of
    a non-interactive shell (as CI may run it) passes SIGINT on *ignored*, and grv-batch rightly
    leaves an ignored SIGINT ignored; this restores the default a terminal gives."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
