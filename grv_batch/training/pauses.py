"""Do pauses and silence move a file's answer? Clips of ``../shared/data`` placed inside 27 s of
quiet (pink noise 40 or 20 dB below the clip, or digital silence), as in an interview with long
pauses, scored by the shipped bundle with the ``frames`` member's crops weighted by their speech
(what inference does) and with the plain mean over crops (before the weighting).

    python -m grv_batch.training.pauses --metadata ../shared/data/manifest.csv \\
        --data-root ../shared/data --per-group 40

The bundle was trained on these clips, so absolute accuracy is optimistic; the comparison is of
the same files with and without pauses, and of the two ways of pooling crops.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import pandas as pd

from grv_batch.training.augment import coloured_noise
from grv_batch.training.evaluate import score_windows, stratified_sample
from grv_batch.training.metrics import markdown_table

WINDOW_S = 27.0  # one analysis window (30 s) holds it all


def with_pauses(clip: np.ndarray, sr: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The clip as is, and placed at a random offset inside ``WINDOW_S`` of quiet."""
    n = int(WINDOW_S * sr)
    clip = clip[: n - sr]
    offset = int(rng.uniform(1.0, (n - clip.size) / sr - 1.0) * sr) if clip.size < n - 2 * sr else 0
    rms = float(np.sqrt(np.mean(clip.astype(np.float64) ** 2)))
    out = {"clip": clip}
    for name, snr_db in (("pauses, noise 40 dB below", 40.0), ("pauses, noise 20 dB below", 20.0),
                         ("pauses, digital silence", None)):
        if snr_db is None:
            y = np.zeros(n)
        else:
            noise = coloured_noise(n, sr, "pink", rng)
            y = noise / np.std(noise) * rms * 10 ** (-snr_db / 20)
        y[offset: offset + clip.size] += clip
        out[name] = y.astype(np.float32)
    return out


def score(metadata: str, data_root: str, per_group: int, seed: int = 0) -> pd.DataFrame:
    """One row per clip, variant and crop pooling: ``p_male``, ``p_male_frames``, ``label``."""
    import soundfile as sf

    from grv_batch.features import AnalysisParams, iter_windows
    from grv_batch.models import load_ensemble

    meta = pd.read_csv(metadata)
    meta = stratified_sample(meta[meta["gender"].isin(["female", "male"])], per_group, seed)
    ens, params, rng = load_ensemble(), AnalysisParams(), np.random.default_rng(seed + 1)
    rows = []
    for _, r in meta.iterrows():
        clip, sr = sf.read(Path(data_root) / r["path"], dtype="float32", always_2d=True)
        for variant, audio in with_pauses(clip.mean(axis=1), sr, rng).items():
            buf = io.BytesIO()
            sf.write(buf, audio, sr, format="WAV", subtype="FLOAT")
            buf.seek(0)
            wins = list(iter_windows(buf, params))
            for pooling, weighted in (("speech-weighted", True), ("plain mean", False)):
                row = score_windows(ens, wins, speech_weighted=weighted)
                rows.append({"path": r["path"], "corpus": r["corpus"], "gender": r["gender"],
                             "variant": variant, "crops": pooling, "p_male": row["p_male"],
                             "p_male_frames": row["p_male_frames"], "label": row["label"]})
    return pd.DataFrame(rows)


def summarise(scores: pd.DataFrame) -> pd.DataFrame:
    d = scores.assign(
        correct=(scores["p_male"] > 0.5) == (scores["gender"] == "male"),
        frames_correct=(scores["p_male_frames"] > 0.5) == (scores["gender"] == "male"),
        labelled=scores["label"] != "uncertain",
    )
    d["labelled_correct"] = d["correct"] & d["labelled"]
    g = d.groupby(["variant", "crops"], sort=False).agg(
        n=("correct", "size"), accuracy=("correct", "mean"), frames_accuracy=("frames_correct", "mean"),
        coverage=("labelled", "mean"), _ok=("labelled_correct", "sum"), _n=("labelled", "sum"))
    g["accuracy_labelled"] = g["_ok"] / g["_n"].where(g["_n"] > 0)
    return g.drop(columns=["_ok", "_n"]).reset_index()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m grv_batch.training.pauses", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--metadata", required=True)
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--per-group", type=int, default=40, help="clips per corpus and gender")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write the per-clip scores to this Parquet file")
    args = ap.parse_args(argv)
    scores = score(args.metadata, args.data_root, args.per_group, args.seed)
    if args.out:
        scores.to_parquet(args.out)
    print(markdown_table(summarise(scores).to_dict("records")))


if __name__ == "__main__":
    main()
