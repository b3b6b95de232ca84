"""How well ``bandwidth_hz`` tells narrowband from wideband audio, on real clips in every variant.

Takes ``--per-corpus`` clips of each corpus of ``../shared/data``, makes each augmentation variant
of ``grv_batch/training/augment.py`` and prints the distribution of ``bandwidth_hz`` from
``grv_batch.features.analyze_window`` per variant (the table in docs/features.md)::

    python benchmarks/bandwidth_separation.py --per-corpus 20
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from grv_batch.features import analyze_window
from grv_batch.training.augment import VARIANTS, make_variant

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--per-corpus", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    manifest = pd.read_csv(args.data / "manifest.csv")
    rng = np.random.default_rng(args.seed)
    rows = []
    for corpus, clips in manifest.groupby("corpus"):
        for path in clips.sample(min(args.per_corpus, len(clips)), random_state=1)["path"]:
            y, sr = sf.read(args.data / path, dtype="float32", always_2d=True)
            for variant in VARIANTS:
                z, zsr = sf.read(make_variant(y.mean(axis=1), sr, variant, rng), dtype="float32",
                                 always_2d=True)
                hz = analyze_window(z.mean(axis=1), zsr).features["bandwidth_hz"]
                rows.append({"corpus": corpus, "variant": variant, "bandwidth_hz": hz})
    table = pd.DataFrame(rows)
    summary = table.groupby("variant")["bandwidth_hz"].agg(
        n="size", median="median", low="min", high="max",
        below_4500=lambda v: float((v < 4500).mean()), at_least_7000=lambda v: float((v >= 7000).mean()))
    print(summary.round(3).to_string())


if __name__ == "__main__":
    main()
