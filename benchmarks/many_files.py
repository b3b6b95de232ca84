"""What a run costs per file, apart from the audio: `grv-batch run` over many placeholder files.

Every file is a few kilobytes of zeros named ``.wav`` (sparse, so they take no disk space), so each becomes an ``error`` row at once and
the run measures the machinery a corpus of millions of files goes through: listing, the metadata
join, planning, thousands of Dask tasks, the tables, the accounting and the report. It prints
the wall time, the phases from ``_run.json`` and the peak resident memory of the client and of
any other process of the run (sampled every 0.1 s).

    python benchmarks/many_files.py --files 200000 --workers 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil


def make_corpus(root: Path, n: int) -> Path:
    """``n`` placeholder files in folders of 1,000, and a metadata CSV beside them (made once)."""
    meta = root.with_suffix(".csv")
    if meta.exists():
        return meta
    lines = ["path,speaker_id,gender,accent"]
    for i in range(n):
        rel = f"d{i // 1000:04d}/f{i:07d}.wav"
        if i % 1000 == 0:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
        with open(root / rel, "wb") as f:  # sparse: a million of them take no disk space
            f.truncate(32_000 + (i % 7) * 1_000)
        lines.append(f"{rel},s{i % 5000},{'female' if i % 2 else 'male'},a{i % 3}")
    meta.write_text("\n".join(lines) + "\n")
    return meta


def peak_rss(cmd: list[str]) -> tuple[float, float, float, int]:
    """Wall seconds, peak RSS (MB) of the command's own process and of any process below it, and
    the exit status."""
    started = time.perf_counter()
    log = tempfile.TemporaryFile("w+")  # not a pipe: the workers' messages could fill it and block
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    me, client, others = psutil.Process(proc.pid), 0, 0
    while proc.poll() is None:
        try:
            client = max(client, me.memory_info().rss)
            for child in me.children(recursive=True):
                try:
                    others = max(others, child.memory_info().rss)
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        time.sleep(0.1)
    wall = time.perf_counter() - started
    if proc.returncode:
        log.seek(0)
        sys.stderr.write(log.read())
    log.close()
    return wall, client / 2**20, others / 2**20, proc.returncode


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=200_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "grv-bench")
    a = ap.parse_args(argv)
    root = a.dir / f"many-{a.files}"
    meta = make_corpus(root, a.files)
    out = a.dir / f"many-{a.files}-out-{time.strftime('%Y%m%d-%H%M%S')}"
    grv = str(Path(sys.executable).with_name("grv-batch"))
    wall, client, others, rc = peak_rss([grv, "run", str(root), "--out", str(out), "--metadata", str(meta),
                                         "--workers", str(a.workers), "--no-progress"])
    if rc:
        raise SystemExit(f"grv-batch run exited with {rc}")
    run = json.loads((out / "_run.json").read_text())
    phases = run["timings"]["phases"]
    print("| files | batches | workers | wall (s) | batches (s) | tables (s) | report (s) | "
          "peak RSS client (MB) | peak RSS other process (MB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    n_batches = len(list((out / "_batches").glob("*.json")))
    print(f"| {run['counts']['n_files']:,} | {n_batches:,} | {a.workers} | {wall:.1f} | "
          f"{phases['batches_s']:.1f} | {phases['tables_s']:.1f} | {phases['report_s']:.1f} | "
          f"{client:.0f} | {others:.0f} |")


if __name__ == "__main__":
    main()
