"""Would a combiner that knows the channel do better? Speaker-grouped cross-fitted stacking of the
members' out-of-fold logits, with and without a narrowband indicator (the file's median
``bandwidth_hz`` below 4.5 kHz) and its interactions with every member's log-odds.

    python -m grv_batch.training.context --report DIR --cache CACHE --metadata ../shared/data/manifest.csv
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from grv_batch.training.metrics import binary_metrics, markdown_table

NARROWBAND_BELOW_HZ = 4500.0


def _crossfit(Zc: np.ndarray, nb: np.ndarray, y: np.ndarray, fold: np.ndarray, *, context: bool) -> np.ndarray:
    """Out-of-fold stacked logits; rows with a missing member get the plain mean of the others."""
    from sklearn.linear_model import LogisticRegression

    X = np.column_stack([Zc, nb[:, None] * Zc, nb]) if context else Zc
    full = np.isfinite(X).all(axis=1)
    out = np.where(full, np.nan, np.nanmean(Zc, axis=1))
    for k in np.unique(fold):
        tr, te = (fold != k) & full, (fold == k) & full
        lr = LogisticRegression(C=1.0, max_iter=2000).fit(X[tr], y[tr].astype(int))
        out[te] = lr.decision_function(X[te])
    return np.nan_to_num(out)


def main(argv=None):
    from grv_batch.models import calibration as cal
    from grv_batch.training.augment import VARIANTS
    from grv_batch.training.train import _folds, _stack_crossfit, oof_study_inputs

    a, meta, W = oof_study_inputs(argv, prog="python -m grv_batch.training.context", description=__doc__)
    band = W.groupby(["path", "variant"], sort=False)["bandwidth_hz"].median().rename("bandwidth_hz")
    F = pd.read_parquet(f"{a.report}/oof_files.parquet").merge(band.reset_index(), on=["path", "variant"])
    members = [c[2:] for c in F.columns if c.startswith("z_")]
    y = (F["gender"] == "male").to_numpy()
    fold = F["speaker_id"].map(_folds(meta, a.folds, a.seed)).to_numpy()
    nb = (F["bandwidth_hz"] < NARROWBAND_BELOW_HZ).to_numpy(dtype=float)
    _, Zc = _stack_crossfit(F, members, fold, a.seed)  # member calibration, cross-fitted
    rows = []
    for name, context in (("stack of " + ", ".join(members), False), ("... and narrowband x each member", True)):
        p = cal.sigmoid(_crossfit(Zc, nb, y, fold, context=context))
        rows.append({"model": name, "variant": "all", **binary_metrics(y, p)})
        for v in VARIANTS:
            m = (F["variant"] == v).to_numpy()
            if not m.any():  # a report of a run without this variant
                continue
            rows.append({"model": name, "variant": v, **binary_metrics(y[m], p[m])})
    print(f"narrowband (< {NARROWBAND_BELOW_HZ:.0f} Hz) files per variant: "
          + ", ".join(f"{v} {int(nb[(F['variant'] == v).to_numpy()].sum())}" for v in VARIANTS))
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
