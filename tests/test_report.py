"""Tests of grv_batch.report: every number recomputed with plain pandas, intervals, the HTML page."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from grv_batch.report import (GROUPS_COLUMNS, ReportInputError, ReportParams, build_report, group_metrics,
                              largest_gaps)

N_BOOT = 200
NASTY = '<script>alert("x")</script>'


# ---------------------------------------------------------------------------------------------
# synthetic run


def make_run(*, seed: int = 7, ground_truth: bool = True, n_speakers: int = 48, files_per: int = 6):
    """Predictions/features/files/speakers tables of a fake run with known structure.

    Accent 'C' is recognised worse than 'A'/'B'; accent NASTY is a tiny group of 2 speakers with
    a value that must be escaped in the HTML.
    """
    rng = np.random.default_rng(seed)
    preds, feats = [], []
    for s in range(n_speakers):
        gender = "female" if s % 2 else "male"
        accent = NASTY if s >= n_speakers - 2 else "ABC"[s % 3]
        skill = rng.normal(0.4 if accent == "C" else 1.6, 0.7)
        for k in range(files_per):
            z = skill + rng.normal(0, 1.0)
            pm = 1 / (1 + np.exp(-z)) if gender == "male" else 1 / (1 + np.exp(z))
            if s == 0 and k == 0:
                pm = 0.5  # decision p_male > 0.5 is strict (SPEC): this counts as 'female'
            conf = max(pm, 1 - pm)
            speech = float(rng.uniform(0.5, 25))
            label = "uncertain" if (conf < 0.7 or speech < 1.0) else ("male" if pm > 0.5 else "female")
            reason = None if label != "uncertain" else ("too_little_speech" if speech < 1.0 else "low_confidence")
            fid = f"f{s:03d}_{k}"
            preds.append(
                {
                    "file_id": fid,
                    "path": f"spk{s:03d}/{fid}.wav",
                    "speaker_id": f"s{s:03d}",
                    "p_male": pm,
                    "p_male_mfcc": float(np.clip(pm + rng.normal(0, 0.05), 0, 1)),
                    "p_male_cnn": float(np.clip(pm + rng.normal(0, 0.05), 0, 1)),
                    "confidence": conf,
                    "label": label,
                    "reason": reason,
                    "speech_s": speech,  # the pipeline carries these three: never groupings
                    "duration_s": speech + 1.0,
                    "n_windows": 1 + k % 3,
                    "gender": gender if ground_truth else None,
                    "accent": accent,
                    "age_band": ["18-29", "30-49", "50+"][(s // 3) % 3],
                    "corpus": "only-one",  # one value: not a grouping
                    "utterance": f"free text sentence number {s} {k} " * 3,  # free text
                    "age": 18 + s,  # too many values
                }
            )
            f0 = np.nan if rng.random() < 0.06 else float(rng.normal(125 if gender == "male" else 205, 30))
            feats.append({"file_id": fid, "speech_s": speech, "snr_db": float(rng.uniform(0, 40)), "f0_p50": f0})
    predictions = pd.DataFrame(preds)
    features = pd.DataFrame(feats)
    files = predictions[["file_id", "path"]].assign(
        status="ok", error=None, duration_s=features["speech_s"] + 1.0, sample_rate=16000, channels=1
    )
    spk = predictions.groupby("speaker_id").agg(
        n_files=("file_id", "size"), p_male=("p_male", "mean"), gender=("gender", "first")
    )
    spk["n_confident"] = predictions[predictions["label"] != "uncertain"].groupby("speaker_id").size()
    spk["n_confident"] = spk["n_confident"].fillna(0).astype(int)
    spk["confidence"] = np.maximum(spk["p_male"], 1 - spk["p_male"])
    spk["label"] = np.where(spk["p_male"] > 0.5, "male", "female")
    return predictions, features, files, spk.reset_index()


def write_run(root: Path, tables) -> Path:
    out = root / "OUT"
    for name, df in zip(["predictions", "features", "files", "speakers"], tables):
        (out / name).mkdir(parents=True)
        df.to_parquet(out / name / "part-0.parquet", index=False)
    return out


PARAMS = ReportParams(n_bootstrap=N_BOOT, intersections=[("accent", "pitch_band")])


@pytest.fixture(scope="module")
def run_gt(tmp_path_factory):
    tables = make_run()
    out = write_run(tmp_path_factory.mktemp("gt"), tables)
    folder = build_report(str(out), params=PARAMS)
    return tables, out, folder


@pytest.fixture(scope="module")
def run_nogt(tmp_path_factory):
    tables = make_run(ground_truth=False)
    out = write_run(tmp_path_factory.mktemp("nogt"), tables)
    folder = build_report(str(out), params=PARAMS)
    return tables, out, folder


# ---------------------------------------------------------------------------------------------
# independent recomputation with plain pandas


def _band(x: pd.Series, edges, labels, nan_label=None) -> pd.Series:
    b = pd.cut(x, [-np.inf, *edges, np.inf], right=False, labels=labels).astype(object)
    return b.where(x.notna(), nan_label)


def group_columns(pred: pd.DataFrame, feat: pd.DataFrame) -> pd.DataFrame:
    f = pred[["file_id"]].merge(feat, on="file_id", how="left")
    cols = pd.DataFrame(index=pred.index)
    cols["accent"] = pred["accent"]
    cols["age_band"] = pred["age_band"]
    cols["speech_duration_band"] = _band(f["speech_s"], [2, 5, 15], ["<2 s", "2-5 s", "5-15 s", ">=15 s"])
    cols["snr_band"] = _band(f["snr_db"], [10, 20, 30], ["<10 dB", "10-20 dB", "20-30 dB", ">=30 dB"])
    cols["pitch_band"] = _band(
        f["f0_p50"], [120, 165, 210], ["<120 Hz", "120-165 Hz", "165-210 Hz", ">=210 Hz"], "unvoiced"
    )
    cols["accent*pitch_band"] = cols["accent"] + "*" + cols["pitch_band"]
    cols["all"] = "all"
    return cols


def expected_metric(d: pd.DataFrame, metric: str) -> tuple[float, int, int]:
    """(value, n_files, n_speakers) of one metric over rows ``d`` of predictions."""
    gt = d[d["gender"].isin(["female", "male"])]
    conf = d[d["label"] != "uncertain"]
    y = gt["gender"] == "male"
    dec = gt["p_male"] > 0.5
    if metric == "n":
        sub, v = d, float(len(d))
    elif metric == "coverage":
        sub, v = d, (d["label"] != "uncertain").mean()
    elif metric == "share_female":
        sub, v = conf, (conf["label"] == "female").mean()
    elif metric == "mean_confidence":
        sub, v = d, d["confidence"].mean()
    elif metric == "accuracy":
        sub, v = gt, (dec == y).mean()
    elif metric == "accuracy_confident":
        sub = gt[gt["label"] != "uncertain"]
        v = (sub["label"] == sub["gender"]).mean()
    elif metric == "recall_female":
        sub = gt[~y]
        v = (sub["p_male"] <= 0.5).mean()
    elif metric == "recall_male":
        sub = gt[y]
        v = (sub["p_male"] > 0.5).mean()
    elif metric == "ece":
        sub = gt
        b = np.minimum(np.floor(gt["p_male"] * 10), 9)
        frame = pd.DataFrame({"b": b, "p": gt["p_male"], "y": y.astype(float)})
        per = frame.groupby("b").agg(n=("p", "size"), p=("p", "mean"), y=("y", "mean"))
        v = float((per["n"] / len(frame) * (per["p"] - per["y"]).abs()).sum()) if len(frame) else np.nan
    else:
        raise AssertionError(metric)
    return (float(v) if len(sub) else np.nan), len(sub), sub["speaker_id"].nunique()


# ---------------------------------------------------------------------------------------------
# groups.parquet


def test_every_number_matches_pandas(run_gt):
    (pred, feat, _, _), out, folder = run_gt
    groups = pd.read_parquet(Path(folder) / "groups.parquet")
    assert list(groups.columns[:8]) == GROUPS_COLUMNS[:8]
    cols = group_columns(pred, feat)
    assert set(groups["group_by"]) == set(cols.columns)
    expected_keys = {(gb, str(g)) for gb in cols.columns for g in cols[gb].dropna().unique()}
    assert set(zip(groups["group_by"], groups["group"])) == expected_keys
    assert set(groups["metric"]) == {
        "n", "accuracy", "coverage", "accuracy_confident", "recall_female", "recall_male", "ece",
        "share_female", "mean_confidence",
    }
    for row in groups.itertuples():
        d = pred[(cols[row.group_by] == row.group).to_numpy()]
        v, n_files, n_spk = expected_metric(d, row.metric)
        assert row.n_files == n_files, row
        assert row.n_speakers == n_spk, row
        if np.isnan(v):
            assert np.isnan(row.value), row
        else:
            assert row.value == pytest.approx(v, abs=1e-12), row
        assert row.small == (n_files < PARAMS.min_files or n_spk < PARAMS.min_speakers), row
    # the overall rows come first
    assert (groups["group_by"].iloc[:9] == "all").all()


def test_intervals_contain_estimates(run_gt):
    _, _, folder = run_gt
    g = pd.read_parquet(Path(folder) / "groups.parquet")
    has = g["value"].notna()
    assert g.loc[has, "ci_low"].notna().all() and g.loc[has, "ci_high"].notna().all()
    assert (g.loc[has, "ci_low"] <= g.loc[has, "value"] + 1e-12).all()
    assert (g.loc[has, "value"] <= g.loc[has, "ci_high"] + 1e-12).all()
    ratios = g[has & (g["metric"] != "n")]
    assert ((ratios["ci_low"] >= 0) & (ratios["ci_high"] <= 1)).all()
    # a non-trivial interval somewhere
    overall = g[(g["group_by"] == "all") & (g["metric"] == "accuracy")].iloc[0]
    assert overall["ci_low"] < overall["value"] < overall["ci_high"]


def test_same_seed_same_intervals():
    pred, feat, _, _ = make_run()
    a = group_metrics(pred, feat, params=ReportParams(n_bootstrap=50, seed=3))
    b = group_metrics(pred, feat, params=ReportParams(n_bootstrap=50, seed=3))
    pd.testing.assert_frame_equal(a, b)


def _cohort_frame(n_speakers: int, files_per: int, cohort: str) -> pd.DataFrame:
    """Speakers alternately at 100% and 50% accuracy; the same pooled accuracy for any size."""
    rows = []
    for s in range(n_speakers):
        n_wrong = 0 if s % 2 == 0 else files_per // 2
        for k in range(files_per):
            wrong = k < n_wrong
            rows.append({
                "file_id": f"{cohort}{s}_{k}", "path": f"{cohort}{s}_{k}.wav", "speaker_id": f"{cohort}{s}",
                "p_male": 0.1 if wrong else 0.9, "confidence": 0.9, "label": "female" if wrong else "male",
                "reason": None, "gender": "male", "cohort": cohort,
            })
    return pd.DataFrame(rows)


def test_interval_widens_with_fewer_speakers():
    pred = pd.concat([_cohort_frame(40, 6, "many"), _cohort_frame(6, 40, "few")], ignore_index=True)
    g = group_metrics(pred, None, params=ReportParams(groups=["cohort"], n_bootstrap=500))
    acc = g[(g["group_by"] == "cohort") & (g["metric"] == "accuracy")].set_index("group")
    assert acc.loc["many", "value"] == pytest.approx(0.75)
    assert acc.loc["few", "value"] == pytest.approx(0.75)
    assert acc.loc["few", "n_speakers"] == 6 and acc.loc["many", "n_speakers"] == 40
    width = acc["ci_high"] - acc["ci_low"]
    assert width["few"] > 1.8 * width["many"]
    # resampling files instead (no speakers known) would hide that: files are not independent
    no_spk = pred.assign(speaker_id=None)
    g2 = group_metrics(no_spk, None, params=ReportParams(groups=["cohort"], n_bootstrap=500))
    acc2 = g2[(g2["group_by"] == "cohort") & (g2["metric"] == "accuracy")].set_index("group")
    assert acc2["n_speakers"].isna().all()
    assert (acc2["ci_high"] - acc2["ci_low"])["few"] < width["few"]


def test_files_without_a_speaker_count_as_their_own_units_for_small():
    """A group of files with no speaker_id is bootstrapped file by file; when other files of the
    run have speakers, it is not "too small" for want of speakers (it was, at any size)."""
    lab = _cohort_frame(20, 5, "lab")
    phone = _cohort_frame(150, 2, "phone").assign(speaker_id=None)
    few = _cohort_frame(3, 10, "few")
    # 3 speakers with 30 files each and 7 files without a speaker: still about 3 units, not 10
    stray = pd.concat([_cohort_frame(3, 30, "stray"), _cohort_frame(7, 1, "stray").assign(speaker_id=None)])
    pred = pd.concat([lab, phone, few, stray], ignore_index=True)
    g = group_metrics(pred, None, params=ReportParams(groups=["cohort"], n_bootstrap=50))
    acc = g[(g["group_by"] == "cohort") & (g["metric"] == "accuracy")].set_index("group")
    assert acc.loc["phone", "n_speakers"] == 0 and not acc.loc["phone", "small"]
    assert acc.loc["lab", "n_speakers"] == 20 and not acc.loc["lab", "small"]
    assert acc.loc["few", "small"]  # 30 files, but from 3 speakers
    assert acc.loc["stray", "small"] and acc.loc["stray", "n_files"] == 97


def test_no_ground_truth(run_nogt):
    (pred, feat, _, _), _, folder = run_nogt
    g = pd.read_parquet(Path(folder) / "groups.parquet")
    assert set(g["metric"]) == {"n", "coverage", "share_female", "mean_confidence"}
    cols = group_columns(pred, feat)
    for row in g.itertuples():
        d = pred[(cols[row.group_by] == row.group).to_numpy()]
        v, n_files, _ = expected_metric(d, row.metric)
        assert row.value == pytest.approx(v, abs=1e-12, nan_ok=True)
        assert row.n_files == n_files
    text = (Path(folder) / "report.html").read_text(encoding="utf-8")
    assert "accuracy cannot be known" in text
    assert "Possible label errors" not in text


def test_largest_gaps(run_gt):
    (pred, feat, _, _), _, folder = run_gt
    groups = pd.read_parquet(Path(folder) / "groups.parquet")
    gaps = largest_gaps(groups, predictions=pred, features=feat, params=PARAMS)
    assert len(gaps)
    for row in gaps.itertuples():
        elig = groups[(groups["group_by"] == row.group_by) & (groups["metric"] == row.metric)
                      & ~groups["small"] & groups["value"].notna()]
        assert row.n_groups == len(elig) >= 2
        assert row.gap == pytest.approx(elig["value"].max() - elig["value"].min())
        assert row.ci_low <= row.gap <= row.ci_high
        assert NASTY not in (row.group_high, row.group_low)  # the tiny group is never ranked
    acc = gaps[(gaps["group_by"] == "accent") & (gaps["metric"] == "accuracy")].iloc[0]
    assert acc["group_low"] == "C"


def test_default_groups_and_params():
    pred, feat, _, _ = make_run(n_speakers=36, files_per=2)  # 'age' then has 36 values
    g = group_metrics(pred, feat, params=ReportParams(n_bootstrap=0, derived_bands=False))
    # not corpus (one value), utterance (free text), age (36 values), gender, n_windows (pipeline's)
    assert set(g["group_by"]) == {"all", "accent", "age_band"}
    assert g.loc[g["metric"] != "n", "ci_low"].isna().all()  # no bootstrap, no intervals
    with pytest.raises(ValidationError):
        ReportParams(n_bootstrap=-1)
    with pytest.raises(ValidationError):
        ReportParams(colour="red")
    with pytest.raises(ReportInputError, match="not in the predictions"):
        group_metrics(pred, feat, params=ReportParams(groups=["nope"]))


def test_metadata_rejoin(tmp_path):
    tables = make_run(n_speakers=12, files_per=3)
    pred = tables[0]
    out = write_run(tmp_path, tables)
    meta = pred[["path", "gender"]].copy()
    meta["gender"] = "female"  # relabel everybody: accuracy becomes recall_female
    meta["site"] = np.where(np.arange(len(meta)) % 2, "north", "south")
    meta.to_csv(tmp_path / "meta.csv", index=False)
    folder = build_report(str(out), metadata=str(tmp_path / "meta.csv"),
                          params=ReportParams(n_bootstrap=20, derived_bands=False))
    g = pd.read_parquet(Path(folder) / "groups.parquet")
    acc = g[(g["group_by"] == "all") & (g["metric"] == "accuracy")]["value"].iloc[0]
    assert acc == pytest.approx((pred["p_male"] <= 0.5).mean())
    assert "site" in set(g["group_by"])
    assert g[(g["group_by"] == "all") & (g["metric"] == "recall_male")]["value"].isna().all()


# ---------------------------------------------------------------------------------------------
# report.html


def test_html_is_self_contained_and_escaped(run_gt):
    _, _, folder = run_gt
    text = (Path(folder) / "report.html").read_text(encoding="utf-8")
    assert re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I) is None
    assert re.search(r"<script[^>]*\bsrc", text, re.I) is None
    assert "<link" not in text.lower() and "@import" not in text.lower()
    assert "url(" not in text.lower()
    assert "<script" not in text.lower()  # the metadata value was escaped, and there is no script
    assert "&lt;script&gt;" in text
    assert text.count('src="data:image/png;base64,') >= 10
    for heading in ("Overall results", "Largest gaps", "Calibration", "confidence threshold", "Speakers",
                    "Possible label errors", "too small to compare"):
        assert heading in text
    # the audit list names confident disagreements by path
    pred = run_gt[0][0]
    bad = pred[pred["label"].isin(["female", "male"]) & (pred["label"] != pred["gender"])]
    assert len(bad) and bad.sort_values("confidence").iloc[-1]["path"] in text


@pytest.mark.browser
def test_html_renders_in_chromium(run_gt, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium not installed")
    _, _, folder = run_gt
    png = tmp_path / "report.png"
    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}", "--window-size=1280,4000",
        (Path(folder) / "report.html").resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    assert png.exists() and png.stat().st_size > 10_000


def test_fsspec_url(tmp_path):
    """OUT given as an fsspec URL (in-memory filesystem standing in for a bucket)."""
    import fsspec

    pred, feat, files, spk = make_run(n_speakers=10, files_per=3)
    fs = fsspec.filesystem("memory")
    root = "memory://grv-report-test/run"
    for name, df in [("predictions", pred), ("features", feat), ("files", files), ("speakers", spk)]:
        with fs.open(f"{root}/{name}/part-0.parquet", "wb") as fh:
            df.to_parquet(fh, index=False)
    try:
        folder = build_report(root, params=ReportParams(n_bootstrap=10), storage_options={})
        assert folder == f"{root}/report"
        with fs.open(f"{folder}/groups.parquet", "rb") as fh:
            g = pd.read_parquet(fh)
        assert len(g) and fs.exists(f"{folder}/report.html")
    finally:
        fs.rm("memory://grv-report-test", recursive=True)


def test_fairlearn_cross_check_on_a_subset(monkeypatch):
    """Large runs cross-check against fairlearn on a random subset; the numbers do not change."""
    from grv_batch.report import _metrics

    pred, feat, _, _ = make_run(n_speakers=12, files_per=4)
    params = ReportParams(n_bootstrap=20)
    full = group_metrics(pred, feat, params=params)
    monkeypatch.setattr(_metrics, "FAIRLEARN_CHECK_MAX_FILES", 17)
    pd.testing.assert_frame_equal(group_metrics(pred, feat, params=params), full)


def test_metadata_column_named_like_a_band_keeps_its_name():
    pred, feat, _, _ = make_run(n_speakers=12, files_per=2)
    pred["pitch_band"] = np.where(pred["gender"] == "male", "low", "high")
    g = group_metrics(pred, feat, params=ReportParams(n_bootstrap=0))
    assert set(g.loc[g["group_by"] == "pitch_band", "group"]) == {"low", "high"}
    assert "<120 Hz" in set(g.loc[g["group_by"] == "pitch_band_derived", "group"])


def test_rejoined_metadata_named_like_pipeline_columns_is_renamed_and_must_match(tmp_path):
    tables = make_run(n_speakers=6, files_per=2)
    pred = tables[0]
    out = write_run(tmp_path, tables)
    meta = pred[["path", "gender"]].assign(label="female", p_male=0.0)
    meta.to_csv(tmp_path / "meta.csv", index=False)
    params = ReportParams(n_bootstrap=0, derived_bands=False)
    build_report(str(out), metadata=str(tmp_path / "meta.csv"),
                 params=ReportParams(groups=["meta_label"], n_bootstrap=0, derived_bands=False))
    g = pd.read_parquet(Path(out) / "report" / "groups.parquet")
    coverage = g[(g["group_by"] == "all") & (g["metric"] == "coverage")]["value"].iloc[0]
    assert coverage == pytest.approx((pred["label"] != "uncertain").mean())  # predicted labels kept
    assert set(g.loc[g["group_by"] == "meta_label", "group"]) == {"female"}  # the user's, renamed
    meta = meta.drop(columns=["label", "p_male"])
    # absolute paths are made relative to the run's INPUT, as grv-batch run does
    meta.assign(path="/data/in/" + meta["path"]).to_csv(tmp_path / "abs.csv", index=False)
    build_report(str(out), metadata=str(tmp_path / "abs.csv"), params=params, input_url="/data/in")
    with pytest.raises(ReportInputError, match="no path matches a file of the run"):
        build_report(str(out), metadata=str(tmp_path / "abs.csv"), params=params)


def test_group_names_with_dollar_signs_are_drawn_as_text(tmp_path):
    tables = make_run(n_speakers=6, files_per=2)
    pred = tables[0]
    pred["income"] = np.where(np.arange(len(pred)) % 2, "$10k-$20k", r"a$\foo$b")
    out = write_run(tmp_path, tables)
    folder = build_report(str(out), params=ReportParams(groups=["income"], n_bootstrap=0,
                                                        derived_bands=False))
    assert (Path(folder) / "report.html").exists()


def test_gap_p_values_tell_a_real_difference_from_chance():
    """In make_run accuracy depends on accent (speakers of accent C are worse) and not on age
    band: only the first gap survives the permutation test."""
    from grv_batch.report._metrics import holm

    pred, feat = make_run()[:2]
    params = ReportParams(n_bootstrap=50)
    gaps = largest_gaps(group_metrics(pred, feat, params=params), predictions=pred, features=feat,
                        params=params).set_index(["group_by", "metric"])
    assert gaps.loc[("accent", "accuracy"), "p_adjusted"] < 0.05
    assert gaps.loc[("age_band", "accuracy"), "p_adjusted"] > 0.2
    assert gaps.loc[("age_band", "accuracy"), "gap"] < gaps.loc[("age_band", "accuracy"), "chance_gap"]
    assert (gaps["p_value"] <= gaps["p_adjusted"]).all()
    assert holm(np.array([0.01, 0.04, np.nan, 0.03])).round(3).tolist()[:2] == [0.03, 0.06]


def test_ece_interval_is_basic_and_mean_confidence_skips_missing_values():
    rng = np.random.default_rng(0)
    n = 400
    p = rng.uniform(0, 1, n)  # perfectly calibrated: the true ECE is 0
    pred = pd.DataFrame({"file_id": [f"f{i}" for i in range(n)], "path": [f"{i}.wav" for i in range(n)],
                         "speaker_id": [f"s{i // 4}" for i in range(n)], "p_male": p,
                         "confidence": np.maximum(p, 1 - p), "label": "uncertain",
                         "gender": np.where(rng.uniform(0, 1, n) < p, "male", "female")})
    pred.loc[:9, ["p_male", "confidence"]] = np.nan
    g = group_metrics(pred, None, params=ReportParams(n_bootstrap=200, derived_bands=False)).set_index("metric")
    ece = g.loc["ece"]
    assert ece["ci_low"] < 0.5 * ece["value"]  # a percentile interval would sit above the value
    assert g.loc["mean_confidence", "value"] == pytest.approx(pred["confidence"].mean())
    assert g.loc["mean_confidence", "n_files"] == n - 10


def test_intersection_cells_that_would_share_a_name_are_refused():
    pred = pd.DataFrame({"file_id": ["1", "2"], "path": ["1.wav", "2.wav"], "p_male": [0.9, 0.1],
                         "confidence": [0.9, 0.9], "label": ["male", "female"],
                         "x": ["a*b", "a"], "y": ["c", "b*c"]})
    with pytest.raises(ReportInputError, match="share the name 'a\\*b\\*c'"):
        group_metrics(pred, None, params=ReportParams(groups=["x", "y"], intersections=[("x", "y")],
                                                      n_bootstrap=0, derived_bands=False))


def test_metadata_named_like_a_files_table_column_is_grouped_on():
    """``sample_rate`` or ``channels`` in the metadata (a natural fairness grouping) are carried
    into ``predictions`` as they are; the report groups on them like any other column."""
    from grv_batch.report._metrics import default_groups

    pred = _cohort_frame(10, 4, "x").assign(sample_rate=[8000, 16000] * 20, channels=["phone", "mic"] * 20,
                                            status=["native", "l2"] * 20)
    assert {"sample_rate", "channels", "status"} <= set(default_groups(pred))


def test_threshold_coverage_counts_every_file_and_accuracy_the_judged_ones():
    from grv_batch.report._plots import threshold_table

    conf = np.array([0.95, 0.9, 0.6, 0.55])
    correct = np.array([1.0, np.nan, 0.0, np.nan])  # the second and fourth have no ground truth
    tt = threshold_table(conf, correct).set_index("threshold")
    assert tt["coverage"].iloc[0] == 1.0
    at = tt.index[np.argmin(np.abs(tt.index - 0.7))]
    assert tt.loc[at, "coverage"] == 0.5 and tt.loc[at, "accuracy"] == 1.0


def test_a_group_named_with_a_leading_underscore_keeps_its_legend_entry():
    from grv_batch.report._plots import threshold_curves

    fig = threshold_curves([("_unknown", np.array([0.9, 0.6]), None), ("adult", np.array([0.8, 0.7]), None)],
                           combined=False)
    labels = [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]
    assert len(labels) == 2 and labels[0].endswith("_unknown")
