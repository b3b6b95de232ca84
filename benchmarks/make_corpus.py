"""Build the throughput benchmark corpus OUTSIDE the repository, from ../shared/data.

The corpus is real speech only:

* the clips listed in ``../shared/data/manifest.csv`` (LibriSpeech FLAC 16 kHz, TIMIT WAV/NIST
  16 kHz, EmoDB WAV 22.05 kHz), linked (symlink; hard link or copy as fallbacks) under distinct
  names ``rep<NNN>/<original path>`` and repeated until ``--hours`` of audio are reached (the clips
  are taken in a fixed shuffled order so a partial repetition still mixes the three corpora);
* one long recording ``long/long-<M>min.flac`` (FLAC, 16 kHz, mono) of ``--long-minutes`` made by
  concatenating real LibriSpeech clips, written block by block (never whole in memory).

No audio is ever written inside the repository. A ``corpus.json`` next to the audio records what
was built; a later call with the same settings reuses the corpus as it is.

    python benchmarks/make_corpus.py --hours 3 --long-minutes 60 --out /tmp/grv-bench/corpus
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_DATA = (REPO.parent / "shared" / "data").resolve()
DEFAULT_OUT = Path("/tmp/grv-bench/corpus")
LONG_SR = 16000
CORPUS_FILE = "corpus.json"
SEED = 20240611


def read_manifest(data: Path) -> list[dict]:
    """The manifest rows whose audio file exists, with ``duration_s`` as float."""
    manifest = data / "manifest.csv"
    if not manifest.is_file():
        raise SystemExit(f"error: no manifest at {manifest}; pass --data pointing at shared/data")
    rows = []
    with open(manifest, newline="") as fh:
        for row in csv.DictReader(fh):
            if (data / row["path"]).is_file():
                row["duration_s"] = float(row["duration_s"])
                rows.append(row)
    if not rows:
        raise SystemExit(f"error: none of the files in {manifest} exist under {data}")
    return rows


def _link(src: Path, dst: Path) -> str:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(src, dst)
        return "symlink"
    except OSError:
        pass
    try:
        os.link(src, dst)
        return "hardlink"
    except OSError:
        shutil.copyfile(src, dst)
        return "copy"


def write_long(rows: list[dict], data: Path, path: Path, minutes: float) -> float:
    """Concatenate LibriSpeech clips (16 kHz) into one FLAC of ``minutes``; return its length (s)."""
    import numpy as np
    import soundfile as sf

    clips = [r for r in rows if r["corpus"] == "librispeech" and int(r["sample_rate"]) == LONG_SR]
    if not clips:
        raise SystemExit("error: no 16 kHz LibriSpeech clips to build the long recording from")
    rng = random.Random(SEED + 1)
    target = int(round(minutes * 60 * LONG_SR))
    written = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.flac")
    with sf.SoundFile(tmp, "w", samplerate=LONG_SR, channels=1, format="FLAC",
                      subtype="PCM_16") as out:
        order: list[dict] = []
        while written < target:
            if not order:
                order = clips[:]
                rng.shuffle(order)
            clip = order.pop()
            audio, sr = sf.read(data / clip["path"], dtype="float32", always_2d=True)
            if sr != LONG_SR:
                continue
            mono = audio.mean(axis=1)
            take = mono[: target - written]
            out.write(take)
            written += take.size
            # a short pause between utterances, as in a recording of consecutive readings
            gap = min(int(0.3 * LONG_SR), target - written)
            if gap > 0:
                out.write(np.zeros(gap, dtype=np.float32))
                written += gap
    os.replace(tmp, path)
    return written / LONG_SR


def build_corpus(out: Path, hours: float, long_minutes: float, data: Path = DEFAULT_DATA,
                 force: bool = False, say=print) -> dict:
    """Build (or reuse) the corpus under ``out``; return its description (also ``corpus.json``)."""
    out = Path(out).resolve()
    data = Path(data).resolve()
    try:
        out.relative_to(REPO)
    except ValueError:
        pass
    else:
        raise SystemExit(f"error: the corpus must live outside the repository ({REPO}), got {out}")
    settings = {"hours": float(hours), "long_minutes": float(long_minutes), "data": str(data),
                "seed": SEED}
    info_path = out / CORPUS_FILE
    if info_path.is_file() and not force:
        info = json.loads(info_path.read_text())
        if info.get("settings") == settings:
            say(f"corpus: reusing {out} ({info['n_files']} files, {info['audio_h']:.2f} h)")
            return info
    if out.exists():
        if not force and any(out.iterdir()) and not info_path.is_file():
            raise SystemExit(f"error: {out} exists, is not empty and is not a benchmark corpus; "
                             "choose another --corpus-dir or remove it")
        shutil.rmtree(out)
    started = time.perf_counter()
    rows = read_manifest(data)
    rng = random.Random(SEED)
    order = rows[:]
    rng.shuffle(order)
    target_s = hours * 3600.0
    total = 0.0
    n = 0
    kinds: dict[str, int] = {}
    per_corpus: dict[str, float] = {}
    rep = 0
    while total < target_s:
        for row in order:
            if total >= target_s:
                break
            kind = _link(data / row["path"], out / f"rep{rep:03d}" / row["path"])
            kinds[kind] = kinds.get(kind, 0) + 1
            total += row["duration_s"]
            per_corpus[row["corpus"]] = per_corpus.get(row["corpus"], 0.0) + row["duration_s"]
            n += 1
        rep += 1
    long_s = 0.0
    long_path = None
    if long_minutes > 0:
        long_path = out / "long" / f"long-{long_minutes:g}min.flac"
        say(f"corpus: writing the long recording {long_path} ({long_minutes:g} min) ...")
        long_s = write_long(rows, data, long_path, long_minutes)
    info = {
        "settings": settings,
        "root": str(out),
        "n_files": n + (1 if long_path else 0),
        "n_clips": n,
        "clips_audio_s": total,
        "clips_audio_s_by_corpus": per_corpus,
        "repetitions": rep,
        "links": kinds,
        "long_file": str(long_path) if long_path else None,
        "long_audio_s": long_s,
        "audio_s": total + long_s,
        "audio_h": (total + long_s) / 3600.0,
        "built_s": time.perf_counter() - started,
    }
    info_path.parent.mkdir(parents=True, exist_ok=True)
    info_path.write_text(json.dumps(info, indent=2))
    say(f"corpus: built {out} in {info['built_s']:.1f} s: {n} clips ({total / 3600:.2f} h, "
        f"{rep} repetition(s)) + long {long_s / 60:.1f} min = {info['audio_h']:.2f} h")
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours", type=float, default=3.0, help="hours of repeated clips (default 3)")
    ap.add_argument("--long-minutes", type=float, default=60.0,
                    help="length of the one long recording in minutes (default 60; 0 for none)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"corpus folder (default {DEFAULT_OUT})")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"shared data (default {DEFAULT_DATA})")
    ap.add_argument("--force", action="store_true", help="rebuild even if a matching corpus exists")
    args = ap.parse_args(argv)
    if args.hours < 0 or args.long_minutes < 0:
        ap.error("--hours and --long-minutes must be >= 0")
    build_corpus(args.out, args.hours, args.long_minutes, args.data, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
