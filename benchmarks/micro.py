"""Micro-benchmarks behind the feature-code changes in docs/performance.md.

Each row times one of grv-batch's functions against the library call it replaces (same inputs,
same outputs to float32 rounding, see tests/test_features.py), as CPU milliseconds per call, best
of several repeats, in one process with one numeric thread and the workers' malloc settings. The
last rows time what a worker process pays once: importing the modules behind the old calls, and
the extra time a local Dask cluster takes to stop once its worker has imported TensorFlow.

    python benchmarks/micro.py            # prints a Markdown table
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def cpu_ms(fn, *, number: int = 20, repeat: int = 7) -> float:
    """Best-of-``repeat`` CPU milliseconds per call of ``fn``."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for _ in range(number):
            fn()
        best = min(best, (time.process_time() - start) / number)
    return best * 1e3


def import_s(statement: str) -> float:
    """Wall seconds a fresh interpreter spends on ``statement`` (best of three)."""
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    runs = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True).stdout.strip().splitlines()[-1]) for _ in range(3)]
    return min(runs)


def cluster_stop_s(how: str) -> float:
    """Seconds ``LocalCluster.close()`` takes after one task on its one worker (best of two).

    ``how``: "tensorflow" imports TensorFlow in the task (as before), "grv-batch" prepares the worker
    as grv-batch does (TensorFlow included), "none" imports nothing.
    """
    code = f"""
import time
if __name__ == "__main__":
    from distributed import Client, LocalCluster
    def task():
        if "{how}" == "tensorflow":
            import tensorflow
        elif "{how}" == "grv-batch":
            from grv_batch.pipeline import _prepare_worker
            _prepare_worker()
        return 1
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    client.submit(task).result()
    client.close()
    t = time.perf_counter()
    cluster.close()
    print(time.perf_counter() - t)
"""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    runs = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                 check=True).stdout.strip().splitlines()[-1]) for _ in range(2)]
    return min(runs)


_FEATURE_LOOP = """
import time
import numpy as np
from grv_batch.pipeline import _relax_malloc_trimming
_relax_malloc_trimming()
from grv_batch.features import analyze_window
rng = np.random.default_rng(0)
t = np.arange(16000 * 30) / 16000
y = (0.3 * np.sin(2 * np.pi * 140 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(t.size))
y = y.astype(np.float32)
analyze_window(y, 16000)
start = time.process_time()
for _ in range(20):
    analyze_window(y, 16000)
print(time.process_time() - start)
"""


def feature_loop_cpu_s(copies: int) -> float:
    """CPU seconds of 20 analyses of a 30 s window, mean over ``copies`` processes run at once."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    procs = [subprocess.Popen([sys.executable, "-c", _FEATURE_LOOP], stdout=subprocess.PIPE, text=True,
                              env=env) for _ in range(copies)]
    return float(np.mean([float(p.communicate()[0].strip().splitlines()[-1]) for p in procs]))


def main() -> None:
    import librosa

    import noisereduce

    from grv_batch.features.mfcc import _delta
    from grv_batch.features.spectral import mean_power_spectrum, power_spectrogram
    from grv_batch.pipeline import _relax_malloc_trimming
    from grv_batch.stages.denoise import _noise_reference, _spectral_gate_stationary

    _relax_malloc_trimming()
    rng = np.random.default_rng(0)
    y16 = rng.standard_normal(16000 * 10).astype(np.float32)
    y22 = rng.standard_normal(22050 * 10).astype(np.float32)
    mfcc = rng.standard_normal((20, 1001)).astype(np.float32)
    # 30 s of 1 s tone bursts every other second over a noise floor: quiet stretches to learn from
    t = np.arange(16000 * 30) / 16000
    noisy = (0.01 * rng.standard_normal(t.size) + 0.3 * np.sin(2 * np.pi * 150 * t) * (t.astype(int) % 2))
    noisy = noisy.astype(np.float32)
    noise_ref = _noise_reference(noisy, 16000, 12.0)
    rows = [
        ("power STFT, 10 s at 16 kHz, n_fft 512, hop 160",
         cpu_ms(lambda: np.abs(librosa.stft(y16, n_fft=512, hop_length=160, pad_mode="constant")) ** 2),
         cpu_ms(lambda: power_spectrogram(y16, 512, 160)), "ms per call"),
        ("power STFT, 10 s at 22.05 kHz, n_fft 2048, hop 512 (mel128)",
         cpu_ms(lambda: np.abs(librosa.stft(y22, n_fft=2048, hop_length=512, pad_mode="constant")) ** 2),
         cpu_ms(lambda: power_spectrogram(y22, 2048, 512)), "ms per call"),
        ("mean power spectrum, 10 s at 22.05 kHz, n_fft 2048, hop 512 (mel128)",
         cpu_ms(lambda: (np.abs(librosa.stft(y22, n_fft=2048, hop_length=512, pad_mode="constant")) ** 2)
                .mean(axis=1)),
         cpu_ms(lambda: mean_power_spectrum(y22, 2048, 512)), "ms per call"),
        ("stationary spectral gating, 30 s at 16 kHz (noisereduce.reduce_noise, one chunk)",
         cpu_ms(lambda: noisereduce.reduce_noise(
             y=noisy, sr=16000, stationary=True, y_noise=noise_ref, prop_decrease=0.9, n_fft=1024,
             hop_length=512, chunk_size=noisy.size, padding=1024, n_jobs=1), number=5),
         cpu_ms(lambda: _spectral_gate_stationary(noisy, noise_ref, 0.9, 16000), number=5), "ms per call"),
        ("MFCC deltas, 20 x 1001 frames, width 9",
         cpu_ms(lambda: librosa.feature.delta(mfcc, width=9, axis=-1, mode="interp")),
         cpu_ms(lambda: _delta(mfcc, 9)), "ms per call"),
        ("first mel filterbank in a fresh process: librosa.filters (numba) vs numpy",
         import_s("import librosa; librosa.filters.mel(sr=16000, n_fft=512, n_mels=64)"),
         import_s("import numpy; import importlib.util as u; "
                  "s = u.spec_from_file_location('spectral', 'grv_batch/features/spectral.py'); "
                  "m = u.module_from_spec(s); s.loader.exec_module(m); m.mel_filterbank(16000, 512, 64, 0.0, 8000.0)"),
         "s once per worker"),
        ("LocalCluster.close() after one task, worker with TensorFlow imported",
         cluster_stop_s("tensorflow"), cluster_stop_s("grv-batch"), "s once per run"),
        ("LocalCluster.close() after one task, worker without TensorFlow (reference)",
         None, cluster_stop_s("none"), "s once per run"),
    ]
    alone, paired = feature_loop_cpu_s(1), feature_loop_cpu_s(2)
    print("| what | before (library call) | grv-batch | unit |")
    print("|---|---|---|---|")
    for what, before, after, unit in rows:
        b = "-" if before is None else f"{before:.2f}"
        print(f"| {what} | {b} | {after:.2f} | {unit} |")
    print(f"\nFeature analysis of a 30 s window, 20 times: {alone:.2f} CPU s in one process alone, "
          f"{paired:.2f} CPU s each when two processes run at once ({100 * (paired / alone - 1):+.0f}%: "
          f"the two cores share caches and memory bandwidth, which caps two workers below 2x).")


if __name__ == "__main__":
    main()
