"""Which stack generalises to a corpus none of the audio members saw?

The shipped stack (member calibration, combiner weights, final calibration) is fitted on k-fold
out-of-fold logits: each audio member is scored on new *speakers* of the corpora it was trained
on. On a new *domain* the audio members are weaker and overconfident, while ``cv_mel`` (trained on
Common Voice only) is as out-of-domain as everywhere. This study fits the stack three ways and
scores each on a corpus held out from everything (its members were trained on the other corpora,
its stack fitted on the other corpora's rows only):

- ``k-fold``: on the other corpora's k-fold out-of-fold logits (the shipped recipe);
- ``held-out``: on the other corpora's held-out-corpus logits (members that never saw that corpus);
- ``both``: on the two tables together.

It also scores each way on the k-fold table (speaker-grouped, cross-fitted by fold), so a stack
that gains on new domains is not bought with a loss on known ones.

    python -m grv_batch.training.domain --report DIR --metadata ../shared/data/manifest.csv

``DIR`` is a ``grv-batch train --report`` folder with ``oof_files.parquet`` and
``heldout_files.parquet``; ``--metadata``, ``--folds`` and ``--seed`` as given to that run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from grv_batch.models import calibration as cal
from grv_batch.training.metrics import binary_metrics, markdown_table

WAYS = ("k-fold", "held-out", "both")


def _fit_rows(way: str, F: pd.DataFrame, H: pd.DataFrame, f_mask: np.ndarray, h_mask: np.ndarray) -> pd.DataFrame:
    parts = {"k-fold": [F[f_mask]], "held-out": [H[h_mask]], "both": [F[f_mask], H[h_mask]]}[way]
    return pd.concat(parts, ignore_index=True)


def stack_logits(T: pd.DataFrame, on: pd.DataFrame, members: list[str], seed: int) -> tuple[np.ndarray, dict]:
    """Fit a stack on table ``T`` and return its ensemble logits for table ``on`` (both with raw
    ``z_<member>`` columns), and the fitted combiner."""
    from grv_batch.training.train import _ensemble_logit, calibrate_members, fit_stack

    cols = [f"z_{m}" for m in members]
    y = (T["gender"] == "male").to_numpy()
    member_cal, comb, _ = fit_stack(T[cols].to_numpy(), y, T["speaker_id"].to_numpy(), members, seed)
    Zc = calibrate_members(member_cal, on[cols].to_numpy(), members)
    return _ensemble_logit(comb, comb["calibration"], Zc, members), comb


def compare(F: pd.DataFrame, H: pd.DataFrame, members: list[str], fold_of: dict[str, int], *,
            seed: int = 0, ways: tuple[str, ...] = WAYS) -> tuple[list[dict], list[dict]]:
    """Metric rows (held-out corpus, and k-fold cross-fitted) for each of ``ways`` of fitting the
    stack, and the combiner each way fits on all rows."""
    F, H = F.reset_index(drop=True), H.reset_index(drop=True)  # rows are addressed by position
    rows = []
    for way in ways:
        p = np.full(len(H), np.nan)
        for c in sorted(H["corpus"].unique()):
            te = (H["corpus"] == c).to_numpy()
            z, _ = stack_logits(_fit_rows(way, F, H, (F["corpus"] != c).to_numpy(), ~te), H[te], members, seed)
            p[te] = cal.sigmoid(z)
        q = np.full(len(F), np.nan)
        fF, fH = F["speaker_id"].map(fold_of).to_numpy(), H["speaker_id"].map(fold_of).to_numpy()
        for k in np.unique(fF):
            te = fF == k
            z, _ = stack_logits(_fit_rows(way, F, H, ~te, fH != k), F[te], members, seed)
            q[te] = cal.sigmoid(z)
        for table, T, pp in (("held-out corpus", H, p), ("k-fold", F, q)):
            for (corpus, variant), g in [(("all", "all"), T)] + list(T.groupby(["corpus", "variant"], sort=True)):
                idx = g.index.to_numpy()
                m = binary_metrics((g["gender"] == "male").to_numpy(), pp[idx])
                rows.append({"table": table, "corpus": corpus, "variant": variant, "stack": way, "n": m["n"],
                             "accuracy": m["accuracy"], "ece": m["ece"], "log_loss": m["log_loss"]})
    combiners = []
    for way in ways:
        _, comb = stack_logits(_fit_rows(way, F, H, np.ones(len(F), bool), np.ones(len(H), bool)), F.head(1),
                               members, seed)
        combiners.append({"stack": way, **{f"w_{m}": comb["weights"][m] for m in members},
                          "bias": comb["bias"], "final calibration": comb["calibration"]["type"]})
    return rows, combiners


def main(argv=None):
    from grv_batch.training.train import _folds

    ap = argparse.ArgumentParser(prog="python -m grv_batch.training.domain", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", required=True, help="folder written by `grv-batch train --report`")
    ap.add_argument("--metadata", required=True, help="its manifest CSV")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    F = pd.read_parquet(Path(a.report) / "oof_files.parquet")
    H = pd.read_parquet(Path(a.report) / "heldout_files.parquet")
    eval_only = json.loads((Path(a.report) / "summary.json").read_text()).get("eval_variants", [])
    F, H = F[~F["variant"].isin(eval_only)], H[~H["variant"].isin(eval_only)]
    members = [c[2:] for c in F.columns if c.startswith("z_")]
    meta = pd.read_csv(a.metadata)
    meta["speaker_id"] = meta["speaker_id"].astype(str)
    meta = meta[meta["gender"].isin(["female", "male"])]
    rows, combiners = compare(F, H, members, _folds(meta, a.folds, a.seed), seed=a.seed)
    print(markdown_table(combiners))
    print()
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
