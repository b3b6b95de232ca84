"""Does a classic member add anything? Speaker-grouped CV of a logistic regression or a gradient
boosting over the voice statistics, stacked with the other members' out-of-fold logits; and the
same classic model trained on two corpora and scored on the third, stacked as the shipped recipe
would (``domain``'s ``k-fold`` way), for what it does on a corpus none of the models saw.

    python -m grv_batch.training.classic --report DIR --cache CACHE --metadata ../shared/data/manifest.csv [--model boosting]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from grv_batch.training.metrics import binary_metrics, markdown_table

MODELS = ("logistic", "boosting")


def classic_model(kind: str, seed: int = 0):
    """An unfitted scikit-learn classifier of ``kind`` (one of :data:`MODELS`)."""
    if kind == "logistic":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
    if kind == "boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier

        # missing statistics (no voiced frames) are a branch of their own, not imputed
        return HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, max_leaf_nodes=15,
                                              l2_regularization=1.0, random_state=seed)
    raise ValueError(f"unknown classic model {kind!r}; known: {', '.join(MODELS)}")


def _logits(kind: str, X: np.ndarray, y: np.ndarray, train: np.ndarray, seed: int) -> np.ndarray:
    """Decision values on the rows outside ``train`` of a model fitted on the rows inside it."""
    if kind == "logistic":  # the linear model needs every input
        X = np.where(np.isfinite(X), X, np.nanmean(X[train], axis=0))
    return classic_model(kind, seed).fit(X[train], y[train]).decision_function(X[~train])


def main(argv=None):
    from grv_batch.models import calibration as cal
    from grv_batch.training.domain import compare
    from grv_batch.training.members import profile_columns
    from grv_batch.training.train import _folds, _stack_crossfit, file_level, oof_study_inputs

    def add_model(ap):
        ap.add_argument("--model", choices=MODELS, default="logistic", help="the classic member to try")

    a, meta, W = oof_study_inputs(argv, prog="python -m grv_batch.training.classic", description=__doc__,
                                  add_arguments=add_model)
    y = (W["gender"] == "male").to_numpy()
    fold_of = _folds(meta, a.folds, a.seed)
    fold = W["speaker_id"].map(fold_of).to_numpy()
    X = W[profile_columns()].to_numpy(dtype=float)
    z, z_heldout = np.full(len(W), np.nan), np.full(len(W), np.nan)
    for k in range(a.folds):
        z[fold == k] = _logits(a.model, X, y, fold != k, a.seed)
    for corpus in W["corpus"].unique():
        other = (W["corpus"] != corpus).to_numpy()
        z_heldout[~other] = _logits(a.model, X, y, other, a.seed)

    def with_classic(name: str, zz: np.ndarray) -> pd.DataFrame:
        T = pd.read_parquet(f"{a.report}/{name}")
        g = file_level(W, zz)[["path", "variant", "z"]].rename(columns={"z": "z_classic"})
        return T.merge(g, on=["path", "variant"])

    F, H = with_classic("oof_files.parquet", z), with_classic("heldout_files.parquet", z_heldout)
    # variants the run only scored (never fitted on) are not what the shipped stack is fitted on
    eval_only = json.loads(Path(a.report, "summary.json").read_text()).get("eval_variants", [])
    F, H = F[~F["variant"].isin(eval_only)], H[~H["variant"].isin(eval_only)]
    yF = (F["gender"] == "male").to_numpy()
    fF = F["speaker_id"].map(fold_of).to_numpy()
    base = [c[2:] for c in F.columns if c.startswith("z_") and c != "z_classic"]
    rows = [{"model": f"classic ({a.model}) alone", **binary_metrics(yF, cal.sigmoid(F["z_classic"]))}]
    heldout = []
    for members in (base, base + ["classic"]):
        z_ens, _ = _stack_crossfit(F, members, fF, a.seed)
        p = cal.sigmoid(z_ens)
        rows.append({"model": "stack of " + ", ".join(members), **binary_metrics(yF, p)})
        for v in ("clean", "telephone", "wild"):
            m = (F["variant"] == v).to_numpy()
            rows.append({"model": f"  ... on {v}", **binary_metrics(yF[m], p[m])})
        study, _ = compare(F, H, members, fold_of, seed=a.seed, ways=("k-fold",))
        heldout += [{"model": "stack of " + ", ".join(members), "corpus held out": r["corpus"], "n": r["n"],
                     "accuracy": r["accuracy"], "ece": r["ece"], "log_loss": r["log_loss"]}
                    for r in study if r["table"] == "held-out corpus" and r["variant"] in ("all", "clean")]
    print(markdown_table(rows))
    print()
    print(markdown_table(heldout))


if __name__ == "__main__":
    main()
