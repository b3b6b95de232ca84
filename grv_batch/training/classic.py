"""Does a classic member add anything? Speaker-grouped CV of a logistic regression over the
voice statistics, stacked with the other members' out-of-fold logits.

    python -m grv_batch.training.classic --report DIR --cache CACHE --metadata ../shared/data/manifest.csv
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from grv_batch.training.metrics import binary_metrics, markdown_table


def main(argv=None):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from grv_batch.models import calibration as cal
    from grv_batch.training.members import profile_columns
    from grv_batch.training.train import _folds, _stack_crossfit, file_level, oof_study_inputs

    a, meta, W = oof_study_inputs(argv, prog="python -m grv_batch.training.classic", description=__doc__)
    y = (W["gender"] == "male").to_numpy()
    fold = W["speaker_id"].map(_folds(meta, a.folds, a.seed)).to_numpy()
    X = W[profile_columns()].to_numpy(dtype=float)
    X = np.where(np.isfinite(X), X, np.nanmean(X, axis=0))
    z = np.full(len(W), np.nan)
    for k in range(a.folds):
        tr, te = fold != k, fold == k
        lr = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000)).fit(X[tr], y[tr])
        z[te] = lr.decision_function(X[te])
    F = pd.read_parquet(f"{a.report}/oof_files.parquet")
    g = file_level(W, z)
    F = F.merge(g[["path", "variant", "z"]].rename(columns={"z": "z_classic"}), on=["path", "variant"])
    yF = (F["gender"] == "male").to_numpy()
    fF = F["speaker_id"].map(_folds(meta, a.folds, a.seed)).to_numpy()
    base = [c[2:] for c in F.columns if c.startswith("z_") and c != "z_classic"]
    rows = [{"model": "classic (logistic regression) alone", **binary_metrics(yF, cal.sigmoid(F["z_classic"]))}]
    for members in (base, base + ["classic"]):
        z_ens, _ = _stack_crossfit(F, members, fF, a.seed)
        p = cal.sigmoid(z_ens)
        rows.append({"model": "stack of " + ", ".join(members), **binary_metrics(yF, p)})
        for v in ("clean", "telephone", "wild"):
            m = (F["variant"] == v).to_numpy()
            rows.append({"model": f"  ... on {v}", **binary_metrics(yF[m], p[m])})
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
