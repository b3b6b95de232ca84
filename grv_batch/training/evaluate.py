"""Evaluation reports from a training run, and an end-to-end check of a bundle through the
inference API.

    # tables and target checks from out-of-fold predictions written by `train --report DIR`
    python -m grv_batch.training.evaluate targets --report DIR
    python -m grv_batch.training.evaluate tables --report DIR
    # run a bundle end to end (analyze_file -> predict_windows -> combine_file) over files
    python -m grv_batch.training.evaluate bundle --metadata ../shared/data/manifest.csv \
        --data-root ../shared/data [--bundle DIR] [--limit 60]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from grv_batch.training.metrics import binary_metrics, markdown_table


def targets(report: str | Path) -> list[dict]:
    """The issue's targets on out-of-fold predictions (speakers never seen by the audio members)."""
    from grv_batch.training.train import _speaker_accuracy

    F = pd.read_parquet(Path(report) / "oof_files.parquet")
    summary = json.loads((Path(report) / "summary.json").read_text())
    thr = float(summary["threshold"])
    y = (F["gender"] == "male").to_numpy()
    cols = [("ensemble", "p_ensemble")] + [(c[2:], c) for c in F.columns if c.startswith("p_") and c not in ("p_ensemble",)]
    rows = []

    def add(target, mask, goal):
        if not mask.any():  # a variant or corpus this run did not have
            return
        for name, c in cols:
            p = F.loc[mask, c].to_numpy()
            rows.append({"target": target, "model": name, "n": int(mask.sum()),
                         "accuracy": binary_metrics(y[mask], p)["accuracy"], "goal": goal})

    read = (F["variant"] == "clean") & F["corpus"].isin(["librispeech", "timit"])
    add("read speech (LibriSpeech+TIMIT, clean)", read.to_numpy(), ">= 0.96")
    add("acted emotional speech (EmoDB, clean)", ((F["variant"] == "clean") & (F["corpus"] == "emodb")).to_numpy(), "")
    add("simulated in-the-wild (reverb+noise 0-23 dB+codec)", (F["variant"] == "wild").to_numpy(), ">= 0.90")
    add("narrowband telephone (8 kHz, 300-3400 Hz, mu-law)", (F["variant"] == "telephone").to_numpy(), ">= 0.97")
    add("narrowband telephone, real codecs (GSM 6.10/ADPCM/A-law/mu-law, random band, dropouts)",
        (F["variant"] == "telephone2").to_numpy(), "")
    add("mobile and internet calls (AMR-NB 4.75-12.2 kbit/s, Opus 6-16 kbit/s, noise, losses)",
        (F["variant"] == "mobile").to_numpy(), "")
    add("perturbed (speed +-6%, gain, codec)", (F["variant"] == "perturb").to_numpy(), "")
    add("pitch moved 2-5 semitones, formants kept (WORLD; codec, gain)", (F["variant"] == "pitch").to_numpy(), "")
    add("pitch moved 2-5 semitones, then a call channel (telephone, real codecs or mobile)",
        (F["variant"] == "pitch_call").to_numpy(), "")
    add("pitch moved 2-5 semitones towards the other sex, formants kept (WORLD; codec, gain)",
        (F["variant"] == "pitch_cross").to_numpy(), "")
    p = F["p_ensemble"].to_numpy()
    conf = np.maximum(p, 1 - p)
    op = summary.get("operating_point", {"confidence_threshold": thr, "disagreement": None})
    # reports written before the operating point existed: uncertain = below the threshold only
    labels = [("", F["label"].to_numpy() if "label" in F else np.where(conf >= thr, "labelled", "uncertain"))]
    if "label_nested" in F:
        labels.append((", point chosen on the other folds", F["label_nested"].to_numpy()))
    for variant in ["clean", "all"]:
        m = np.ones(len(F), bool) if variant == "all" else (F["variant"] == variant).to_numpy()
        if not m.any():
            continue
        for how, label in labels:
            c = m & (label != "uncertain")
            rows.append({"target": f"accuracy on non-uncertain files ({variant}; threshold {op['confidence_threshold']}, "
                                   f"disagreement {op['disagreement']}{how})", "model": "ensemble",
                         "n": int(c.sum()), "accuracy": float(((p[c] > 0.5) == y[c]).mean()),
                         "coverage": float(c.sum() / m.sum()), "goal": ">= 0.985 at coverage >= 0.80"})
        rows.append({"target": f"ECE ({variant})", "model": "ensemble", "n": int(m.sum()),
                     "ece": binary_metrics(y[m], p[m])["ece"], "goal": "<= 0.05"})
    for variant in ["clean", "telephone", "telephone2", "mobile", "wild"]:
        g = F[F["variant"] == variant]
        if g.empty:
            continue
        s = _speaker_accuracy(g, g["p_ensemble"].to_numpy(), thr, label=g["label"].to_numpy() if "label" in g else None)
        rows.append({"target": f"speakers correct ({variant})", "model": "ensemble", "n": s["n_speakers"],
                     "accuracy": s["speaker_accuracy"], "coverage": s["speaker_coverage"], "goal": ">= 0.97"})
        if "p_original" in g:
            s = _speaker_accuracy(g, g["p_original"].to_numpy(), thr)
            rows.append({"target": f"speakers correct ({variant})", "model": "original network",
                         "n": s["n_speakers"], "accuracy": s["speaker_accuracy"], "goal": ""})
    return rows


def tables(report: str | Path) -> str:
    """Markdown pivot tables (accuracy / ECE per corpus x variant x model) from a run's summary."""
    s = json.loads((Path(report) / "summary.json").read_text())
    out = []

    def pivot(rows, index, value):
        df = pd.DataFrame(rows)
        order = list(dict.fromkeys(df["model"]))
        pv = df.pivot_table(index=index, columns="model", values=value, aggfunc="first")[order]
        n = df.groupby(index)["n"].first()
        pv.insert(0, "n", n)
        recs = []
        for idx, r in pv.iterrows():
            idx = idx if isinstance(idx, tuple) else (idx,)
            recs.append({**dict(zip(index, idx)), **{k: (int(v) if k == "n" else float(v)) for k, v in r.items()}})
        return markdown_table(recs)

    k = s.get("folds", 5)  # reports written before the fold count was recorded used 5
    out += [f"### Accuracy, speaker-grouped {k}-fold CV (out of fold)", "", pivot(s["by_corpus_variant"], ["corpus", "variant"], "accuracy"), ""]
    out += [f"### ECE, speaker-grouped {k}-fold CV (out of fold)", "", pivot(s["by_corpus_variant"], ["corpus", "variant"], "ece"), ""]
    out += ["### Overall (all corpora and variants)", "", markdown_table(s["overall"]), ""]
    out += ["### Accuracy / coverage of the ensemble as the confidence threshold moves", "", markdown_table(s["coverage"]), ""]
    if "operating_point_table" in s:
        op = s["operating_point"]
        out += [f"### At the operating point (threshold {op['confidence_threshold']}, disagreement {op['disagreement']}; "
                "`_nested`: each fold at the point chosen on the other folds)", "",
                markdown_table(s["operating_point_table"]), ""]
    sp = [{"variant": r["variant"], "model": r["model"], "n": r["n_speakers"], "speaker_accuracy": r["speaker_accuracy"]}
          for r in s["speakers"]]
    out += ["### Speakers correct (files pooled per speaker)", "", pivot(sp, ["variant"], "speaker_accuracy"), ""]
    if "heldout_corpus" in s:
        out += ["### Held-out corpus: audio members trained on the other two corpora", "",
                pivot(s["heldout_corpus"], ["heldout_corpus", "variant"], "accuracy"), ""]
    if "heldout_corpus_operating_point" in s:
        op = s["operating_point"]
        out += [f"### Held-out corpus at the operating point (threshold {op['confidence_threshold']}, disagreement "
                f"{op['disagreement']}; ensemble, every fitted condition pooled)", "",
                markdown_table(s["heldout_corpus_operating_point"]), ""]
    return "\n".join(out)


def stratified_sample(meta: pd.DataFrame, per_group: int, seed: int = 0) -> pd.DataFrame:
    """Up to ``per_group`` rows of each corpus x gender (a smaller group is taken whole)."""
    return meta.loc[[i for _, g in meta.groupby(["corpus", "gender"])
                     for i in g.sample(n=min(per_group, len(g)), random_state=seed).index]]


def score_windows(ens, windows: list, *, speech_weighted: bool = True) -> dict:
    """One file's answer from its analysed windows: ``predict_windows``, then ``combine_file`` with
    default ``ModelParams``, as inference does (``speech_weighted=False``: the ``frames`` member's
    crops count alike, as before speech masks)."""
    from grv_batch.models import ModelParams

    feats = pd.DataFrame([w.features for w in windows])
    feats["mel128"] = [w.mel128 for w in windows]
    masks = [w.speech_mask for w in windows] if speech_weighted else None
    preds = ens.predict_windows(feats, [w.logmel for w in windows], masks)
    return ens.combine_file(preds, speech_s=np.array([w.speech_s for w in windows]),
                            params=ModelParams())


def bundle_check(metadata, data_root, bundle=None, limit=60, seed=0) -> list[dict]:
    """End-to-end through the public API on a stratified sample of files."""
    from grv_batch.features import AnalysisParams, iter_windows
    from grv_batch.models import ModelParams, load_ensemble

    meta = pd.read_csv(metadata)
    if limit:
        meta = stratified_sample(meta, max(1, limit // meta.groupby(["corpus", "gender"]).ngroups), seed)
    ens = load_ensemble(bundle, params=ModelParams())
    out = []
    for _, r in meta.iterrows():
        wins = list(iter_windows(str(Path(data_root) / r["path"]), AnalysisParams()))
        out.append({"path": r["path"], "corpus": r["corpus"], "gender": r["gender"],
                    **score_windows(ens, wins)})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m grv_batch.training.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    report_help = "folder written by `grv-batch train --report DIR` (oof_files.parquet, summary.json)"
    t = sub.add_parser("targets", help="the issue's targets, out of fold")
    t.add_argument("--report", required=True, help=report_help)
    tb = sub.add_parser("tables", help="accuracy, calibration and coverage tables, out of fold")
    tb.add_argument("--report", required=True, help=report_help)
    b = sub.add_parser("bundle", help="a bundle end to end through the inference API")
    b.add_argument("--metadata", required=True, help="manifest CSV (path, speaker_id, gender, corpus)")
    b.add_argument("--data-root", required=True, help="folder the manifest paths are relative to")
    b.add_argument("--bundle", help="bundle folder (default: the shipped one)")
    b.add_argument("--limit", type=int, default=60, help="clips per corpus (default 60)")
    a = ap.parse_args(argv)
    if a.cmd in ("targets", "tables") and not (Path(a.report) / "summary.json").exists():
        ap.error(f"{a.report} is not a training report folder (no summary.json)")
    if a.cmd == "targets":
        print(markdown_table(targets(a.report)))
    elif a.cmd == "tables":
        print(tables(a.report))
    else:
        from grv_batch.models import BundleError

        try:
            rows = pd.DataFrame(bundle_check(a.metadata, a.data_root, a.bundle, a.limit))
        except (BundleError, ValueError, OSError) as exc:
            ap.exit(2, f"error: {exc}\n")
        y = rows["gender"] == "male"
        summ = []
        for corpus, g in rows.groupby("corpus"):
            yy = g["gender"] == "male"
            summ.append({"corpus": corpus, "n": len(g), "accuracy": float(((g["p_male"] > 0.5) == yy).mean()),
                         "coverage": float((g["label"] != "uncertain").mean())})
        summ.append({"corpus": "all", "n": len(rows), "accuracy": float(((rows["p_male"] > 0.5) == y).mean()),
                     "coverage": float((rows["label"] != "uncertain").mean())})
        print(markdown_table(summ))
        print(rows["reason"].value_counts(dropna=False).to_string())


if __name__ == "__main__":
    main()
