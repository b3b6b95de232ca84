"""``grv-batch train``: speaker-grouped cross-validation, held-out-corpus evaluation, and the bundle.

    grv-batch train --metadata ../shared/data/manifest.csv --data-root ../shared/data \
        --commonvoice ../shared/data/commonvoice-mel128/features.parquet \
        --seed-model ../shared/anchors/seed-model.h5 --out MODEL_DIR

(the command line is ``grv_batch.cli``'s; this module is the library it calls).

Steps: (1) features of every clip under each augmentation variant (clean, telephone, telephone2,
wild, perturb) via ``grv_batch.features.iter_windows``, cached; (2) speaker-grouped k-fold: the audio members are
trained on the training speakers' clips (all variants) and predict the held-out speakers' clips
(all variants); ``cv_mel`` is trained on Common Voice only, so every prediction of it on these
clips is already out-of-sample; (3) member calibration, combiner and its calibration are fitted on
out-of-fold logits and evaluated cross-fitted (fitted on the other folds); (4) train on two corpora,
test on the third; (5) final members on all speakers, bundle written with its model card.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from grv_batch.models import calibration as cal
from grv_batch.models.bundle import write_bundle
from grv_batch.training.augment import VARIANTS
from grv_batch.training.dataset import signature as _sig
from grv_batch.training.metrics import binary_metrics, coverage_curve, markdown_table

AUDIO_MEMBERS = ("voice_profile", "frames")
#: each audio member's name in memo tags (``oof-vp-...``, ``final-fr-...``)
_MEMO_NAME = {"voice_profile": "vp", "frames": "fr"}
#: training epochs of each member (``epochs`` of :func:`train_bundle` overrides some or all)
EPOCHS = {"voice_profile": 80, "frames": 40, "cv_mel": 25}


def _log(msg):
    print(f"[{_dt.datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def _memo(cache: Path, tag: str, compute):
    """Cache an array result (out-of-fold logits) so a rerun with another cv_mel is cheap."""
    f = cache / "memo" / f"{tag}.npy"
    if f.exists():
        return np.load(f)
    v = np.asarray(compute())
    f.parent.mkdir(parents=True, exist_ok=True)
    np.save(f, v)
    return v


def _memo_model(cache: Path, tag: str, fit):
    import keras

    f = cache / "memo" / f"{tag}.keras"
    if f.exists():
        return keras.saving.load_model(f, compile=False, safe_mode=True), json.loads(f.with_suffix(".json").read_text())
    model, config = fit()
    f.parent.mkdir(parents=True, exist_ok=True)
    model.save(f)
    f.with_suffix(".json").write_text(json.dumps(config))
    return model, config


def _folds(meta: pd.DataFrame, folds: int, seed: int) -> dict[str, int]:
    """Speaker -> fold, stratified by gender and corpus (a speaker is never on both sides)."""
    from sklearn.model_selection import StratifiedGroupKFold

    spk = meta.drop_duplicates("speaker_id")
    strat = spk["gender"].astype(str) + "|" + spk.get("corpus", pd.Series("", index=spk.index)).astype(str)
    sgk = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    out = {}
    for k, (_, te) in enumerate(sgk.split(spk, strat, groups=spk["speaker_id"])):
        for s in spk["speaker_id"].iloc[te]:
            out[s] = k
    return out


class ManifestError(ValueError):
    """The training manifest or the audio it names cannot be trained on; the message says why."""


def load_all(meta, cache, variants, seed):
    from grv_batch.training.dataset import load_windows

    frames, lms = [], []
    for v in variants:
        df, lm = load_windows(meta, cache, v, seed=seed)
        frames.append(df)
        lms += lm
    W = pd.concat(frames, ignore_index=True)
    return W, lms


def oof_study_inputs(argv, *, prog: str, description: str, add_arguments=None):
    """Arguments, manifest and cached windows of a study on a training report's out-of-fold
    predictions (``classic``, ``context``): ``--report``, ``--cache``, ``--metadata``, ``--folds``,
    ``--seed`` as given to ``grv-batch train``, and whatever ``add_arguments(parser)`` adds.
    Returns ``(args, meta, W)``."""
    ap = argparse.ArgumentParser(prog=prog, description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    if add_arguments is not None:
        add_arguments(ap)
    ap.add_argument("--report", required=True, help="folder written by `grv-batch train --report`")
    ap.add_argument("--cache", required=True, help="the feature cache of that training run")
    ap.add_argument("--metadata", required=True, help="its manifest CSV")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    meta = pd.read_csv(a.metadata)
    meta["speaker_id"] = meta["speaker_id"].astype(str)
    W, _ = load_all(meta, a.cache, VARIANTS, a.seed)
    return a, meta, W


def file_level(W: pd.DataFrame, z: np.ndarray) -> pd.DataFrame:
    """Pool window logits to (clip, variant) the way Ensemble.combine_file does."""
    d = W[["path", "variant", "speaker_id", "gender", "corpus", "win_speech_s"]].copy()
    d["z"] = z
    p = cal.sigmoid(z)
    d["w"] = np.maximum(d["win_speech_s"].to_numpy(), 1e-3) * np.maximum(p, 1 - p)
    d["wz"] = d["w"] * d["z"]
    g = d.groupby(["path", "variant"], sort=False).agg(
        wz=("wz", "sum"), w=("w", "sum"), speaker_id=("speaker_id", "first"), gender=("gender", "first"),
        corpus=("corpus", "first"), speech_s=("win_speech_s", "sum")).reset_index()
    g["z"] = g["wz"] / g["w"]
    return g.drop(columns=["wz", "w"])


def member_table(W: pd.DataFrame, Zw: dict[str, np.ndarray], members) -> pd.DataFrame:
    """One row per (clip, variant): :func:`file_level` of each member's window logits in ``z_<member>``."""
    T = None
    for m in members:
        g = file_level(W, Zw[m])
        if T is None:
            T = g.rename(columns={"z": f"z_{m}"})
        else:
            T[f"z_{m}"] = g["z"].to_numpy()
    return T


def fit_logistic(X: np.ndarray, y: np.ndarray, *, C: float = 1.0, nonnegative: bool = True) -> tuple[np.ndarray, float]:
    """L2-penalised logistic regression, with the weights optionally held at zero or above.

    The objective is scikit-learn's ``LogisticRegression(C=C)`` (log loss summed over rows plus
    ``||w||**2 / (2 C)``, intercept not penalised); ``nonnegative=False`` gives its answer.

    Parameters
    ----------
    X : np.ndarray
        Shape ``(n, m)``, finite.
    y : np.ndarray
        Shape ``(n,)``, true for the positive class.

    Returns
    -------
    weights : np.ndarray
        Shape ``(m,)``.
    bias : float
    """
    from scipy.optimize import minimize

    X = np.asarray(X, dtype=np.float64)
    t = np.asarray(y).astype(np.float64)
    if X.ndim != 2 or len(X) != len(t) or not np.isfinite(X).all():
        raise ValueError("X must be a finite (n, m) array with one label per row")

    def loss(v):
        z = X @ v[:-1] + v[-1]
        resid = cal.sigmoid(z) - t
        value = np.sum(np.logaddexp(0.0, z) - t * z) + 0.5 / C * (v[:-1] @ v[:-1])
        return value, np.append(X.T @ resid + v[:-1] / C, resid.sum())

    bounds = [(0.0, None) if nonnegative else (None, None)] * X.shape[1] + [(None, None)]
    r = minimize(loss, np.zeros(X.shape[1] + 1), jac=True, method="L-BFGS-B", bounds=bounds,
                 options={"maxiter": 2000, "gtol": 1e-9})
    return r.x[:-1], float(r.x[-1])


def _fit_combiner(Zc: np.ndarray, y: np.ndarray, members: list[str]) -> dict:
    """The stack over calibrated member log-odds. Its weights are held at zero or above
    (non-negative stacking, as in Breiman's stacked regressions): every member is evidence for
    its own answer. An unconstrained fit gave ``cv_mel`` a negative weight, a correction for how
    it correlates with the audio members on these corpora, and with EmoDB or LibriSpeech
    held out that stack did worse on the held-out corpus than the non-negative one
    (docs/models.md, "Why the stack's weights are non-negative")."""
    ok = np.isfinite(Zc).all(axis=1)
    w, b = fit_logistic(Zc[ok], y[ok], C=1.0, nonnegative=True)
    return {"weights": {m: float(v) for m, v in zip(members, w)}, "bias": b}


def _apply_combiner(comb: dict, Zc: np.ndarray, members: list[str]) -> np.ndarray:
    """Stacked logit; rows with a missing member fall back to the weighted mean of the others
    (as :meth:`Ensemble._combine_logits` does), marked by ``np.nan`` -> handled by caller."""
    w = np.array([comb["weights"][m] for m in members])
    return Zc @ w + comb["bias"]


def _ensemble_logit(comb: dict, final_cal: dict | None, Zc: np.ndarray, members: list[str]) -> np.ndarray:
    """Exactly the inference rule (:func:`grv_batch.models.ensemble.combine_logits`), 0 where no
    member had input."""
    from grv_batch.models.ensemble import combine_logits

    w = np.array([comb["weights"][m] for m in members])
    out = combine_logits(Zc, w, comb["bias"], final_cal)
    return np.where(np.isfinite(out), out, 0.0)


def _choose_final_calibration(z: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int) -> tuple[dict, dict]:
    """Identity vs Platt vs isotonic on the combiner output, by speaker-grouped CV log loss."""
    from sklearn.model_selection import GroupKFold

    scores = {"identity": [], "platt": [], "isotonic": []}
    n_splits = min(5, len(np.unique(groups)))
    if n_splits < 2:  # one speaker: nothing to cross-validate a choice on
        return {"type": "identity"}, {}
    for tr, te in GroupKFold(n_splits).split(z, y, groups):
        for kind in scores:
            c = {"type": "identity"} if kind == "identity" else (
                cal.fit_platt(z[tr], y[tr]) if kind == "platt" else cal.fit_isotonic(z[tr], y[tr]))
            p = cal.sigmoid(cal.apply(c, z[te]))
            scores[kind].append(binary_metrics(y[te], p)["log_loss"] * len(te))
    totals = {k: float(np.sum(v) / len(z)) for k, v in scores.items()}
    best = min(totals, key=totals.get)
    c = {"type": "identity"} if best == "identity" else (cal.fit_platt(z, y) if best == "platt" else cal.fit_isotonic(z, y))
    return c, totals


def _platt_finite(z, y) -> dict:
    ok = np.isfinite(z)
    return cal.fit_platt(z[ok], y[ok])


def fit_stack(Z: np.ndarray, y: np.ndarray, groups: np.ndarray, members: list[str], seed: int):
    """Member calibrations, then the stacking combiner and its final calibration, fitted on raw
    file-level member logits.

    Parameters
    ----------
    Z : np.ndarray
        Shape ``(n, m)`` raw logits of ``members`` (NaN where a member had no input).
    y : np.ndarray
        Shape ``(n,)`` true where male.
    groups : np.ndarray
        Shape ``(n,)`` speaker ids: the final calibration is chosen by speaker-grouped CV.

    Returns
    -------
    member_cal : dict
        Platt calibration per member.
    comb : dict
        ``weights``, ``bias`` and ``calibration`` (the final one), as stored in a bundle.
    scores : dict
        Cross-validated log loss of each final-calibration choice.
    """
    member_cal = {m: _platt_finite(Z[:, j], y) for j, m in enumerate(members)}
    Zc = calibrate_members(member_cal, Z, members)
    comb = _fit_combiner(Zc, y, members)
    ok = np.isfinite(Zc).all(axis=1)
    comb["calibration"], scores = _choose_final_calibration(_apply_combiner(comb, Zc[ok], members), y[ok],
                                                            groups[ok], seed)
    return member_cal, comb, scores


def calibrate_members(member_cal: dict, Z: np.ndarray, members: list[str]) -> np.ndarray:
    """Shape ``(n, m)`` calibrated logits from raw ones, member by member."""
    return np.column_stack([cal.apply(member_cal[m], Z[:, j]) for j, m in enumerate(members)])


def _stack_crossfit(F: pd.DataFrame, members: list[str], fold_of: np.ndarray, seed: int,
                    fit: np.ndarray | None = None):
    """Cross-fitted member calibration + combiner + final calibration: OOF ensemble logits.

    Fitted on the other folds' rows where ``fit`` is true (default all), applied to every row.
    """
    y = (F["gender"] == "male").to_numpy()
    Z = F[[f"z_{m}" for m in members]].to_numpy()
    groups = F["speaker_id"].to_numpy()
    fit = np.ones(len(F), bool) if fit is None else fit
    out = np.full(len(F), np.nan)
    Zcal_all = np.full_like(Z, np.nan)
    for k in np.unique(fold_of):
        tr, te = (fold_of != k) & fit, fold_of == k
        member_cal, comb, _ = fit_stack(Z[tr], y[tr], groups[tr], members, seed)
        Zcal_all[te] = calibrate_members(member_cal, Z[te], members)
        out[te] = _ensemble_logit(comb, comb["calibration"], Zcal_all[te], members)
    return out, Zcal_all


def _speaker_accuracy(F: pd.DataFrame, p: np.ndarray, threshold: float, label=None) -> dict:
    """Speakers correct when ``F``'s files are pooled per speaker; ``label``: the files' labels
    (default: ``uncertain`` below ``threshold`` confidence)."""
    from grv_batch.speakers import SpeakerParams, aggregate_speakers

    conf = np.maximum(p, 1 - p)
    if label is None:
        label = np.where(conf >= threshold, np.where(p > 0.5, "male", "female"), "uncertain")
    d = pd.DataFrame({"speaker_id": F["speaker_id"].to_numpy(), "p_male": p, "confidence": conf,
                      "label": label, "speech_s": F["speech_s"].to_numpy(), "gender": F["gender"].to_numpy()})
    sp = aggregate_speakers(d, params=SpeakerParams(confidence_threshold=threshold))
    correct = (sp["p_male"] > 0.5) == (sp["gender"] == "male")
    return {"n_speakers": int(len(sp)), "speaker_accuracy": float(correct.mean()),
            "speaker_coverage": float((sp["label"] != "uncertain").mean())}


#: the operating point's grid: confidence thresholds, and member spreads that count as disagreeing
THRESHOLD_GRID = tuple(np.round(np.arange(0.6, 0.99, 0.005), 3))
DISAGREEMENT_GRID = (0.6, 0.7, 0.8, 0.9)  # above 0.9 members still disagree "strongly"
#: accuracy the operating point keeps on labelled files (the issue's 98.5%), and the one-sided
#: confidence with which the files it is chosen on must show it
OPERATING_TARGET = 0.985
OPERATING_CONFIDENCE = 0.95


def _min_speech_s() -> float:
    from grv_batch.models.ensemble import ModelParams

    return ModelParams().min_speech_s


def file_labels(F: pd.DataFrame, members, p: np.ndarray, threshold: float, disagreement: float) -> np.ndarray:
    """Each file's ``label`` by the inference rule (:func:`grv_batch.models.ensemble.decide`)."""
    from grv_batch.models.ensemble import decide

    P = F[[f"p_{m}" for m in members]].to_numpy(dtype=np.float64)
    return decide(p, P, F["speech_s"].to_numpy(), confidence_threshold=threshold, disagreement=disagreement,
                  min_speech_s=_min_speech_s())[0]


def choose_operating_point(F: pd.DataFrame, members, *, target: float = OPERATING_TARGET,
                           confidence: float = OPERATING_CONFIDENCE) -> dict:
    """The confidence threshold and disagreement spread with the most files labelled while the
    labelled files' accuracy is at least ``target`` with one-sided ``confidence`` (Wilson lower
    bound; the rule of inference, all of ``F``'s rows pooled). Ties go to the stricter
    disagreement; if no point's bound reaches ``target``, the point with the highest bound is taken.

    Why a bound and not the accuracy itself: the point with the most coverage whose accuracy just
    reaches the target sits where accuracy is falling fastest, so on new speakers it lands below
    the target (bundles 0.3.1-0.8.0: 98.5% where chosen, 98.1% at the point chosen on the other
    folds).
    """
    from grv_batch.training.metrics import wilson_lower_bound

    y = (F["gender"] == "male").to_numpy()
    p = F["p_ensemble"].to_numpy()
    best, fallback = None, None
    for d in DISAGREEMENT_GRID:
        for t in THRESHOLD_GRID:
            m = file_labels(F, members, p, t, d) != "uncertain"
            if not m.any():
                continue
            n_right = int(((p[m] > 0.5) == y[m]).sum())
            bound, cov = wilson_lower_bound(n_right, int(m.sum()), confidence=confidence), float(m.mean())
            if fallback is None or bound > fallback[0]:
                fallback = (bound, {"confidence_threshold": float(t), "disagreement": float(d)})
            if bound >= target:
                if best is None or cov > best[0]:
                    best = (cov, {"confidence_threshold": float(t), "disagreement": float(d)})
                break  # larger thresholds only lower coverage
    if best is not None:
        return best[1]
    return fallback[1] if fallback else {"confidence_threshold": 0.95, "disagreement": 0.6}


def operating_point_oof(F: pd.DataFrame, members, folds: np.ndarray, fit: np.ndarray, *, target: float,
                        confidence: float = OPERATING_CONFIDENCE) -> np.ndarray:
    """Labels of each fold's files at the operating point chosen on the other folds' fitted rows,
    so the accuracy and coverage it gives are not those of a choice made on the same files."""
    label = np.empty(len(F), dtype=object)
    p = F["p_ensemble"].to_numpy()
    for k in np.unique(folds):
        te = folds == k
        op = choose_operating_point(F[~te & fit], members, target=target, confidence=confidence)
        label[te] = file_labels(F[te], members, p[te], op["confidence_threshold"], op["disagreement"])
    return label


def _seed_model_probs(seed_model, W) -> np.ndarray:
    from grv_batch.training.cv_mel import build_seed_model

    net = build_seed_model(seed_model)
    X = np.stack(W["mel128"].to_numpy()).astype(np.float32)
    return net.predict(X, batch_size=2048, verbose=0)[:, 0].astype(np.float64)


def train_only_variants_of(train_only: dict, member: str) -> list[str]:
    """The train-only variants (``train_bundle``'s ``train_only``) that ``member`` trains on, sorted."""
    return sorted(v for v, ms in train_only.items() if member in ms)


def train_bundle(*, metadata, data_root, out, commonvoice=None, folds: int = 5, seed: int = 0,
                 cache: str | os.PathLike | None = None, variants=VARIANTS, seed_model=None,
                 cv_mel_model: str | None = None, heldout_corpus: bool = True, workers: int = 2,
                 epochs: dict | None = None, name: str = "grv-batch", version: str | None = None,
                 report: str | os.PathLike | None = None, eval_variants=(), train_only=None) -> dict:
    """Train, evaluate and write a model bundle to ``out``; returns the evaluation summary.

    ``metadata``: CSV/Parquet path or DataFrame with ``path`` (relative to ``data_root``),
    ``speaker_id``, ``gender`` and optionally ``corpus``. ``commonvoice``: the Common Voice mel128
    parquet for the ``cv_mel`` member (or ``cv_mel_model``: an already trained ``.keras`` file);
    without either the bundle has the audio members only. ``eval_variants``: augmentation variants
    that are only *tested* (held-out speakers' audio in a condition no member, calibration or
    combiner was fitted on), to measure robustness to an unseen channel. ``train_only``:
    ``{variant: (audio member, ...)}``, variants only the named members train on and nothing is
    scored on (e.g. ``{"pitch": ("voice_profile",)}``); the other members, and their memoised
    results, are as without it.
    """
    import keras

    from grv_batch.training import members as M
    from grv_batch.training.dataset import extract, feature_signature

    t0 = time.time()
    ep = {**EPOCHS, **(epochs or {})}
    meta = metadata if isinstance(metadata, pd.DataFrame) else (
        pd.read_parquet(metadata) if str(metadata).endswith(".parquet") else pd.read_csv(metadata))
    for col in ("path", "gender", "speaker_id"):
        if col not in meta.columns:
            raise ManifestError(f"metadata needs a {col!r} column")
    meta = meta[meta["gender"].isin(["female", "male"])].copy()
    if "corpus" not in meta.columns:
        meta["corpus"] = "all"
    meta["speaker_id"] = meta["speaker_id"].astype(str)
    cache = Path(cache or Path(tempfile.gettempdir()) / "grv-batch-features")
    variants, eval_variants = tuple(variants), tuple(v for v in eval_variants if v not in variants)
    train_only = {v: tuple(ms) for v, ms in (train_only or {}).items() if v not in variants + eval_variants}
    every = variants + eval_variants + tuple(train_only)
    _log(f"extracting features for {len(meta)} clips x {list(every)} (cache {cache})")
    errors = extract(meta, data_root, cache, every, seed=seed, workers=workers)
    for e in errors:
        _log(f"skipped: {e}")
    W, logmels = load_all(meta, cache, variants + eval_variants, seed)
    if W.empty or W["speaker_id"].nunique() < folds:
        raise ManifestError(f"{W['path'].nunique() if len(W) else 0} of the manifest's {len(meta)} "
                         f"labelled clips could be read, from {W['speaker_id'].nunique() if len(W) else 0} "
                         f"speaker(s): {folds}-fold speaker-grouped cross-validation needs at least "
                         f"{folds} speakers (check --data-root and the manifest's paths)")
    y = (W["gender"] == "male").to_numpy()
    fit_rows = W["variant"].isin(variants).to_numpy()  # eval-only variants are never fitted on
    # train-only windows live apart from W: never scored, only added to some members' training sets
    X, xlogmels = load_all(meta, cache, tuple(train_only), seed) if train_only else (W.iloc[:0], [])
    yx = (X["gender"] == "male").to_numpy()

    def fit_member(m: str, keep, seed_: int):
        """Member ``m`` fitted on the windows ``keep(table)`` selects (a boolean mask of any window
        table): of W's fitted variants, and of X's train-only variants that ``m`` trains on."""
        rows = keep(W) & fit_rows
        xrows = keep(X) & X["variant"].isin(train_only_variants_of(train_only, m)).to_numpy()
        Wt = pd.concat([W[rows], X[xrows]], ignore_index=True)
        yt = np.concatenate([y[rows], yx[xrows]])
        if m == "voice_profile":
            return M.fit_voice_profile(Wt, yt, seed=seed_, epochs=ep[m])
        lm = [logmels[i] for i in np.flatnonzero(rows)] + [xlogmels[i] for i in np.flatnonzero(xrows)]
        return M.fit_frames(Wt, lm, yt, seed=seed_, epochs=ep[m])

    def member_key(base: str, m: str) -> str:
        """Memo key of member ``m`` trained on the data ``base`` names; a member without train-only
        variants keeps the key it had before they existed."""
        extra = train_only_variants_of(train_only, m)
        data = _sig(base, extra) if extra else base
        return _sig(data, ep[m], *((M.VP_BAG,) if m == "voice_profile" else ()))
    _log(f"{len(W)} windows from {W['path'].nunique()} clips, {W['speaker_id'].nunique()} speakers")

    # ---- cv_mel (Common Voice only) ----
    members: list[str] = []
    trained: dict[str, tuple] = {}
    Zw: dict[str, np.ndarray] = {}
    if cv_mel_model or commonvoice:
        if cv_mel_model:
            cvm = keras.saving.load_model(cv_mel_model, compile=False, safe_mode=True)
        else:
            from grv_batch.training.cv_mel import load_commonvoice, train_cv_mel

            _log("training cv_mel on Common Voice")
            Xcv, ycv = load_commonvoice(commonvoice)
            cvm = train_cv_mel(Xcv, ycv, epochs=ep["cv_mel"], seed=seed)
        from grv_batch.training.cv_mel import CV_MEL_CONFIG

        # the preprocessing follows from the model's input width (128: legacy full band)
        cv_config = dict(CV_MEL_CONFIG) if cvm.input_shape[-1] == CV_MEL_CONFIG["n_bands"] else {}
        members.append("cv_mel")
        trained["cv_mel"] = (cvm, cv_config)
        Zw["cv_mel"] = M.predict_member("cv_mel", cvm, cv_config, W, logmels)

    # ---- speaker-grouped k-fold for the audio members ----
    fold_map = _folds(meta, folds, seed)
    fold = W["speaker_id"].map(fold_map).to_numpy()
    for m in AUDIO_MEMBERS:
        members.append(m)
        Zw[m] = np.full(len(W), np.nan)
    # members memoised from features computed otherwise are never reused
    data_sig = _sig(sorted(meta["path"]), sorted(meta["speaker_id"]), list(variants), folds, seed, M.VERSION,
                    feature_signature())
    oof_sig = _sig(data_sig, list(eval_variants)) if eval_variants else data_sig
    for k in range(folds):
        tr, te = np.nonzero((fold != k) & fit_rows)[0], np.nonzero(fold == k)[0]
        assert not set(W["speaker_id"].iloc[tr]) & set(W["speaker_id"].iloc[te])
        _log(f"fold {k + 1}/{folds}: {len(tr)} train windows, {len(te)} test windows")

        def _oof(m, k=k, te=te):
            model, config = fit_member(m, lambda T: T["speaker_id"].map(fold_map).to_numpy() != k, seed + k)
            return M.predict_member(m, model, config, W.iloc[te], [logmels[i] for i in te])

        for m in AUDIO_MEMBERS:
            Zw[m][te] = _memo(cache, f"oof-{_MEMO_NAME[m]}-{k}-{member_key(oof_sig, m)}", lambda m=m: _oof(m))

    # ---- file-level out-of-fold table ----
    F = member_table(W, Zw, members)
    if seed_model:
        ps = _seed_model_probs(seed_model, W)
        F["p_original"] = cal.sigmoid(file_level(W, cal.logit(ps))["z"].to_numpy())
    yF = (F["gender"] == "male").to_numpy()
    fF = F["speaker_id"].map(fold_map).to_numpy()
    fitF = F["variant"].isin(variants).to_numpy()
    z_ens, Zcal = _stack_crossfit(F, members, fF, seed, fit=fitF)
    F["p_ensemble"] = cal.sigmoid(z_ens)
    for j, m in enumerate(members):
        F[f"p_{m}"] = cal.sigmoid(np.nan_to_num(Zcal[:, j], nan=0.0))   # no output counts as 0.5

    # ---- final stacking fitted on all OOF ----
    Z = F[[f"z_{m}" for m in members]].to_numpy()
    member_cal, comb, cal_scores = fit_stack(Z[fitF], yF[fitF], F["speaker_id"].to_numpy()[fitF], members, seed)
    summary_missing = {m: int((~np.isfinite(Z[:, j])).sum()) for j, m in enumerate(members)}
    # operating point (confidence threshold, disagreement spread) with the most files labelled at
    # >= 98.5% accuracy (95% lower bound) on every fitted condition pooled, by the inference rule;
    # never chosen on eval-only rows. Its honest estimate: each fold labelled at the point chosen
    # on the others.
    op = choose_operating_point(F[fitF], members, target=OPERATING_TARGET)
    threshold = op["confidence_threshold"]
    F["label"] = file_labels(F, members, F["p_ensemble"].to_numpy(), threshold, op["disagreement"])
    F["label_nested"] = operating_point_oof(F, members, fF, fitF, target=OPERATING_TARGET)

    # ---- metrics ----
    summary = evaluate_oof(F, members, threshold, has_original=bool(seed_model), fit_variants=variants)
    summary["operating_point"] = {**op, "target_accuracy": OPERATING_TARGET,
                                  "target_confidence": OPERATING_CONFIDENCE}
    summary["eval_variants"] = list(eval_variants)
    summary["train_only_variants"] = {v: list(ms) for v, ms in train_only.items()}
    summary["folds"] = folds
    summary["calibration_choice_logloss"] = cal_scores
    summary["combiner"] = comb
    summary["member_calibration"] = member_cal
    summary["threshold"] = threshold
    summary["files_without_member_output"] = summary_missing

    # ---- held-out corpus ----
    H = None
    if heldout_corpus and meta["corpus"].nunique() > 1:
        summary["heldout_corpus"], summary["heldout_corpus_operating_point"], H = heldout_corpus_eval(
            W, logmels, F, members, trained, member_cal, comb, seed, has_original=bool(seed_model), cache=cache,
            data_sig=oof_sig, fit_rows=fit_rows, fit_member=fit_member, member_key=member_key,
            operating_point=op, fit_variants=variants)

    # ---- final members on every speaker ----
    _log("training final members on all speakers")
    for m in AUDIO_MEMBERS:
        trained[m] = _memo_model(cache, f"final-{_MEMO_NAME[m]}-{member_key(data_sig, m)}",
                                 lambda m=m: fit_member(m, lambda T: np.ones(len(T), bool), seed))

    version = version or _dt.datetime.now(_dt.timezone.utc).strftime("%Y.%m.%d")
    card = model_card(meta, variants, members, summary, folds, seed, train_only=train_only)
    card["training_seconds"] = round(time.time() - t0, 1)
    write_bundle(out, name=name, version=version,
                 members={m: {"kind": m, "model": trained[m][0], "config": trained[m][1],
                              "calibration": member_cal[m]} for m in members},
                 combiner=comb, thresholds=op,
                 model_card=card, model_card_md=model_card_md(card))
    if report:
        Path(report).mkdir(parents=True, exist_ok=True)
        F.to_parquet(Path(report) / "oof_files.parquet")
        if H is not None:
            H.to_parquet(Path(report) / "heldout_files.parquet")
        (Path(report) / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    _log(f"bundle written to {out} in {time.time() - t0:.0f} s")
    return summary


def _pcols(members, has_original):
    cols = [("ensemble", "p_ensemble")] + [(m, f"p_{m}") for m in members]
    if has_original:
        cols.append(("original network", "p_original"))
    return cols


def evaluate_oof(F, members, threshold, *, has_original, fit_variants=None) -> dict:
    """Tables of out-of-fold metrics; ``overall`` pools the ``fit_variants`` (default: all)."""
    res = {"by_corpus_variant": [], "coverage": [], "speakers": [], "overall": []}
    pooled = F if fit_variants is None else F[F["variant"].isin(fit_variants)]
    y = (pooled["gender"] == "male").to_numpy()
    for name, c in _pcols(members, has_original):
        res["overall"].append({"model": name, **binary_metrics(y, pooled[c].to_numpy())})
    for (corpus, variant), g in F.groupby(["corpus", "variant"], sort=True):
        yy = (g["gender"] == "male").to_numpy()
        for name, c in _pcols(members, has_original):
            m = binary_metrics(yy, g[c].to_numpy())
            res["by_corpus_variant"].append({"corpus": corpus, "variant": variant, "model": name,
                                             "n": m["n"], "accuracy": m["accuracy"], "ece": m["ece"]})
    for variant, g in F.groupby("variant", sort=True):
        yy = (g["gender"] == "male").to_numpy()
        for r in coverage_curve(yy, g["p_ensemble"].to_numpy(), thresholds=tuple(sorted({0.5, 0.7, 0.8, 0.9, threshold, 0.95, 0.98}))):
            res["coverage"].append({"variant": variant, **r})
        for name, c in _pcols(members, has_original):
            label = g["label"].to_numpy() if name == "ensemble" and "label" in g else None
            res["speakers"].append({"variant": variant, "model": name,
                                    **_speaker_accuracy(g, g[c].to_numpy(), threshold, label=label)})
    if "label" in F:
        res["operating_point_table"] = operating_point_table(F, fit_variants)
    return res


def at_operating_point(g: pd.DataFrame, label: str = "label") -> dict:
    """Coverage (share of ``g``'s files not ``uncertain`` in column ``label``) and accuracy of
    ``p_ensemble > 0.5`` on the labelled ones."""
    m = g[label].to_numpy() != "uncertain"
    right = (g["p_ensemble"].to_numpy() > 0.5) == (g["gender"] == "male").to_numpy()
    return {"coverage": float(m.mean()), "accuracy_labelled": float(right[m].mean()) if m.any() else float("nan")}


def operating_point_table(F: pd.DataFrame, fit_variants=None) -> list[dict]:
    """Accuracy on labelled files and coverage (share labelled) per variant and pooled, at the
    chosen operating point (``label``) and at the point chosen on the other folds (``label_nested``)."""
    rows = []
    pooled = F if fit_variants is None else F[F["variant"].isin(fit_variants)]
    groups = [("all fitted, pooled", pooled)] + list(F.groupby("variant", sort=True))
    for variant, g in groups:
        row = {"variant": variant, "n": int(len(g))}
        for col, tag in (("label", ""), ("label_nested", "_nested")):
            if col in g:
                row.update({f"{k}{tag}": v for k, v in at_operating_point(g, col).items()})
        rows.append(row)
    return rows


def heldout_corpus_eval(W, logmels, F, members, trained, member_cal, comb, seed, *, has_original,
                        cache, data_sig, fit_rows, fit_member, member_key, operating_point, fit_variants):
    """Train the audio members on two corpora, test on the third (calibration/combiner from k-fold OOF).

    Returns the metric rows; coverage and accuracy on labelled files at ``operating_point`` per
    held-out corpus and pooled (``fit_variants`` only); and the held-out files' raw member logits
    (:func:`member_table`: each corpus predicted by audio members trained on the other corpora
    only). ``fit_member(m, keep, seed)`` and ``member_key(sig, m)``: :func:`train_bundle`'s, which
    know its train-only windows.
    """
    from grv_batch.training import members as M

    rows, held, labelled = [], [], []
    for c in sorted(W["corpus"].unique()):
        corpus = W["corpus"].to_numpy()
        tr, te = np.nonzero((corpus != c) & fit_rows)[0], np.nonzero(corpus == c)[0]
        _log(f"held-out corpus {c}: train {len(tr)} windows, test {len(te)}")
        Zte = {}
        if "cv_mel" in members:
            Zte["cv_mel"] = M.predict_member("cv_mel", trained["cv_mel"][0], trained["cv_mel"][1], W.iloc[te],
                                             [logmels[i] for i in te])

        def _held(m, c=c, te=te):
            model, config = fit_member(m, lambda T: T["corpus"].to_numpy() != c, seed)
            return M.predict_member(m, model, config, W.iloc[te], [logmels[i] for i in te])

        for m in AUDIO_MEMBERS:
            Zte[m] = _memo(cache, f"hoc-{_MEMO_NAME[m]}-{c}-{member_key(data_sig, m)}", lambda m=m: _held(m))
        Wte = W.iloc[te].reset_index(drop=True)
        held.append(member_table(Wte, Zte, members))
        G = member_table(Wte, {m: cal.apply(member_cal[m], Zte[m]) for m in members}, members)
        G = G.rename(columns={f"z_{m}": f"zc_{m}" for m in members})
        Zc = G[[f"zc_{m}" for m in members]].to_numpy()
        G["p_ensemble"] = cal.sigmoid(_ensemble_logit(comb, comb.get("calibration"), Zc, members))
        for m in members:
            G[f"p_{m}"] = cal.sigmoid(G[f"zc_{m}"].fillna(0.0))
        G["label"] = file_labels(G, members, G["p_ensemble"].to_numpy(), operating_point["confidence_threshold"],
                                 operating_point["disagreement"])
        labelled.append(G[G["variant"].isin(fit_variants)].assign(heldout_corpus=c))
        if has_original:
            G = G.merge(F[["path", "variant", "p_original"]], on=["path", "variant"], how="left")
        for variant, g in G.groupby("variant", sort=True):
            yy = (g["gender"] == "male").to_numpy()
            for name, col in _pcols(members, has_original):
                m = binary_metrics(yy, g[col].to_numpy())
                rows.append({"heldout_corpus": c, "variant": variant, "model": name, "n": m["n"],
                             "accuracy": m["accuracy"], "ece": m["ece"]})
    L = pd.concat(labelled, ignore_index=True)
    op_rows = []
    for c, g in [("all, pooled", L)] + list(L.groupby("heldout_corpus", sort=True)):
        right = (g["p_ensemble"] > 0.5) == (g["gender"] == "male")
        op_rows.append({"heldout_corpus": c, "n": int(len(g)), "accuracy": float(right.mean()),
                        **at_operating_point(g)})
    return rows, op_rows, pd.concat(held, ignore_index=True)


def model_card(meta, variants, members, summary, folds, seed, *, train_only=None) -> dict:
    train_only = train_only or {}

    def audio_data(m: str) -> str:
        extra = train_only_variants_of(train_only, m)
        return (f"the clips below, variants {', '.join(variants)}"
                + (f", plus their {', '.join(extra)} copies (trained on, never scored)" if extra else ""))

    data = (meta.groupby("corpus").agg(clips=("path", "size"), speakers=("speaker_id", "nunique"),
                                       female_speakers=("speaker_id", lambda s: s[meta.loc[s.index, "gender"] == "female"].nunique()),
                                       male_speakers=("speaker_id", lambda s: s[meta.loc[s.index, "gender"] == "male"].nunique()))
            .reset_index().to_dict("records"))
    return {
        "data": data,
        "variants": list(variants),
        "train_only_variants": {v: list(ms) for v, ms in train_only.items()},
        "cv": {"folds": folds, "seed": seed, "grouped_by": "speaker_id", "stratified_by": "gender, corpus"},
        "members": {
            "cv_mel": {"data": "66,938 Common Voice clips (commonvoice-mel128), never the clips below",
                       "features": "mel128 time-mean mel power (22.05 kHz, raw decoded audio): log10, minus its mean over bands",
                       "augmentation": "mel domain: tilt, noise spectra 0-30 dB SNR, telephone band, low-pass, gain"},
            "voice_profile": {"data": audio_data("voice_profile"),
                              "features": "pitch, formant, spectral and MFCC statistics (FEATURE_COLUMNS minus recording-quality columns), standardised (JSON)"},
            "frames": {"data": audio_data("frames"),
                       "features": "64-band log-mel frames (100/s) of the processed 16 kHz audio, 3 s crops, mean-removed; logits averaged over crops"},
        },
        "members_in_bundle": members,
        "evaluation": summary,
    }


def model_card_md(card: dict) -> str:
    s = card["evaluation"]
    op = s.get("operating_point", {})
    lines = ["# grv-batch model bundle", "",
             "Members: " + ", ".join(f"`{m}`" for m in card["members_in_bundle"]) +
             ". Combiner: logistic stacking (weights held non-negative) of Platt-calibrated member log-odds, then "
             f"`{s['combiner']['calibration']['type']}` calibration (chosen by speaker-grouped CV log loss).", "",
             f"Operating point: confidence threshold {s['threshold']}, disagreement spread "
             f"{op.get('disagreement', 0.6)} (the most files labelled with >= "
             f"{op.get('target_accuracy', 0.985):.1%} accuracy on labelled files"
             + (f" at {op['target_confidence']:.0%} confidence (Wilson lower bound)" if "target_confidence" in op else "")
             + ", every training condition pooled, out of fold).", "",
             "## Data", "", markdown_table(card["data"]), "",
             f"Augmentation variants evaluated separately: {', '.join(card['variants'])}.", "",
             "## Speaker-grouped cross-validation (out of fold, file level, p_male > 0.5)", "",
             markdown_table(s["overall"]), "", markdown_table(s["by_corpus_variant"]), "",
             "## Accuracy / coverage (ensemble)", "", markdown_table(s["coverage"]), "",
             "## Operating point: accuracy on labelled files and coverage (`_nested`: point chosen on the other folds)", "",
             markdown_table(s.get("operating_point_table", [])), "",
             "## Speakers (log-odds pooled per speaker)", "", markdown_table(s["speakers"]), ""]
    if "heldout_corpus" in s:
        lines += ["## Held-out corpus (train on the other two)", "", markdown_table(s["heldout_corpus"]), ""]
    lines += ["## Members", ""]
    for m in card["members_in_bundle"]:
        d = card["members"][m]
        lines.append(f"- `{m}`: data: {d['data']}; features: {d['features']}.")
    return "\n".join(lines) + "\n"
