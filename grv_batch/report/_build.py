"""``build_report``: read a finished run's tables, compute the group metrics, write the report."""

from __future__ import annotations

import datetime as _dt
import re

import numpy as np
import pandas as pd

from grv_batch.discovery import load_metadata

from . import _html as H
from ._config import ReportInputError, ReportParams
from ._io import join_url, parquet_bytes, read_table, rejoin_metadata, write_bytes
from ._metrics import BANDS, _ground_truth, build_groupings, evaluate, gaps_from_results

FEATURE_COLUMNS = [b[1] for b in BANDS]

AUDIT_ROWS = 200
SPEAKER_ROWS = 50
MAX_CURVES = 8
MIN_BIN_FILES = 5


def build_report(
    out: str,
    *,
    metadata: str | None = None,
    params: ReportParams | None = None,
    storage_options: dict | None = None,
    input_url: str | None = None,
) -> str:
    """Build ``OUT/report/groups.parquet`` and ``OUT/report/report.html`` from a finished run.

    Reads ``OUT/predictions`` (required), ``OUT/features``, ``OUT/files`` and ``OUT/speakers``
    (each optional); never opens audio.

    Parameters
    ----------
    out : str
        The run's output folder, local path or fsspec URL (``s3://bucket/run``).
    metadata : str or None
        A metadata CSV or Parquet (one row per file, ``path`` column) to join on ``path``; its
        columns replace those carried in ``predictions`` (to fix labels or add groups without
        rerunning).
    params : ReportParams, optional
        Groupings, bootstrap and size thresholds; defaults to ``ReportParams()``.
    storage_options : dict or None
        fsspec options for ``out`` and ``metadata`` (credentials, endpoint). Never written out.
    input_url : str or None
        The run's INPUT, so that ``metadata`` paths given as full URLs or absolute paths are made
        relative to it, as ``grv-batch run`` does (``_run.json`` records it).

    Returns
    -------
    str
        URL of the report folder, ``OUT/report``.
    """
    params = params or ReportParams()
    predictions = read_table(out, "predictions", storage_options)
    if predictions is None:
        raise ReportInputError(f"no predictions table under {out}: is this a finished grv-batch run?")
    features = read_table(out, "features", storage_options, columns=["file_id", *FEATURE_COLUMNS])
    files = read_table(out, "files", storage_options)
    speakers = read_table(out, "speakers", storage_options)
    if metadata is not None:
        meta = load_metadata(metadata, input_url=input_url, storage_options=storage_options)
        predictions = rejoin_metadata(predictions, meta, source=metadata)
    if files is not None and "duration_s" in files.columns and "duration_s" not in predictions.columns:
        dur = files.drop_duplicates("file_id").set_index("file_id")["duration_s"]
        predictions = predictions.assign(duration_s=predictions["file_id"].map(dur))
    predictions = predictions.reset_index(drop=True)

    table, results, blocks = evaluate(predictions, features, params)
    gaps = gaps_from_results(table, results, params, blocks)
    html_text = render_html(
        predictions=predictions,
        features=features,
        files=files,
        speakers=speakers,
        table=table,
        gaps=gaps,
        params=params,
        title_path=out,
    )
    folder = join_url(out, "report")
    write_bytes(join_url(folder, "groups.parquet"), parquet_bytes(table), storage_options)
    write_bytes(join_url(folder, "report.html"), html_text.encode("utf-8"), storage_options)
    return folder


# ---------------------------------------------------------------------------------------------


def _metric_row(table: pd.DataFrame, group_by: str, group: str) -> dict[str, pd.Series]:
    sub = table[(table["group_by"] == group_by) & (table["group"] == group)]
    return {m: r for m, (_, r) in zip(sub["metric"], sub.iterrows())}


def render_html(
    *,
    predictions: pd.DataFrame,
    features: pd.DataFrame | None,
    files: pd.DataFrame | None,
    speakers: pd.DataFrame | None,
    table: pd.DataFrame,
    gaps: pd.DataFrame,
    params: ReportParams,
    title_path: str = "",
) -> str:
    """The whole report page as a string."""
    from . import _plots as P  # matplotlib: imported only to draw, never by the workers

    gt = _ground_truth(predictions)
    with_gt = bool(gt.notna().any())
    p = pd.to_numeric(predictions["p_male"], errors="coerce").to_numpy(dtype=float)
    conf = pd.to_numeric(predictions["confidence"], errors="coerce").to_numpy(dtype=float)
    y = (gt == "male").to_numpy()
    has_gt = gt.notna().to_numpy() & ~np.isnan(p)
    correct = (p > 0.5) == y
    overall = _metric_row(table, "all", "all")
    groupings = build_groupings(predictions, features, params)
    speakers_known = "speaker_id" in predictions.columns and predictions["speaker_id"].notna().any()

    parts: list[str] = []
    parts.append("<h1>grv-batch evaluation report</h1>")
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    shown = re.sub(r"(?<=://)[^/@]*@", "", title_path)  # never show user:password@ of a URL
    parts.append(f'<p class="sub">Run <span class="mono">{H.esc(shown)}</span> · built {stamp}</p>')
    nav = [("overall", "Overall"), ("gaps", "Largest gaps")]
    if with_gt:
        nav.append(("calibration", "Calibration"))
    nav += [("threshold", "Confidence threshold"), ("groups", "Groups"), ("speakers", "Speakers")]
    if with_gt:
        nav.append(("audit", "Possible label errors"))
    nav.append(("method", "How to read"))
    parts.append("<nav>" + "".join(f'<a href="#{a}">{H.esc(t)}</a>' for a, t in nav) + "</nav>")

    # -- overall ---------------------------------------------------------------------------
    parts.append('<h2 id="overall">Overall results</h2>')
    n_files = len(predictions)
    cards = [("files evaluated", f"{n_files:,}")]
    if files is not None and "status" in files.columns:
        n_err = int((files["status"] != "ok").sum())
        cards.append(("files found", f"{len(files):,}"))
        cards.append(("files unreadable", f"{n_err:,}"))
    if speakers_known:
        cards.append(("speakers", f"{predictions['speaker_id'].nunique():,}"))
    cards.append(("with ground truth", f"{int(has_gt.sum()):,}"))
    for m in ("accuracy", "coverage", "accuracy_confident", "ece", "share_female"):
        if m in overall:
            r = overall[m]
            cards.append((m, H.fmt(m, r["value"])))
    parts.append(
        '<div class="cards">'
        + "".join(f'<div class="card"><div class="v">{H.esc(v)}</div><div class="k">{H.esc(k)}</div></div>' for k, v in cards)
        + "</div>"
    )
    if not with_gt:
        parts.append(
            '<p class="note"><b>No ground truth.</b> No file has a <code>gender</code> of '
            "<code>female</code> or <code>male</code> in its metadata, so <b>accuracy cannot be known</b> "
            "from this run. The report shows what can be measured without labels: coverage (share of files "
            "given a label), the share predicted female, and confidence, overall and per group. A group whose "
            "share predicted female differs from what you know of its make-up, or whose coverage is low, "
            "is where to look first. Rebuild with <code>grv-batch report OUT</code> after adding a "
            "<code>gender</code> column to the metadata to get accuracy.</p>"
        )
    elif has_gt.sum() < n_files:
        parts.append(
            f'<p class="info">{int(has_gt.sum()):,} of {n_files:,} files have ground truth; accuracy, '
            "recall and calibration are computed on those only.</p>"
        )
    rows, classes = [], []
    for m, r in overall.items():
        rows.append(
            [H.esc(m), H.esc(H.fmt(m, r["value"])), f'<span class="ci">{H.esc(H.fmt_ci(m, r["ci_low"], r["ci_high"]))}</span>',
             H.esc(f"{int(r['n_files']):,}"), H.esc(r["n_speakers"])]
        )
        classes.append("")
    level = f"{100 * params.confidence_level:g}%"
    parts.append(H.table(["metric", "value", f"{level} interval", "files", "speakers"], rows))

    # -- gaps ------------------------------------------------------------------------------
    parts.append('<h2 id="gaps">Largest gaps between groups</h2>')
    parts.append(
        "<p>For each grouping and metric: the highest group minus the lowest, among groups large enough "
        f"to compare (at least {params.min_files} files and, when speakers are known, {params.min_speakers} "
        "speakers). The highest minus the lowest of several groups is large even when the groups do not "
        "differ at all, so read <b>p</b> first: how often shuffling the group labels between speakers "
        "gives a gap at least this large (Holm-adjusted over the groupings of each metric). Below 0.05 the "
        "difference is unlikely to be chance; <b>by chance</b> is the gap shuffled labels stay under 95% of "
        "the time. The interval is the gap recomputed in every bootstrap replicate: how precisely it is "
        "measured, not whether it is real.</p>"
    )
    if len(gaps):
        main = ["accuracy", "recall_female", "recall_male", "coverage"] if with_gt else [
            "coverage", "share_female", "mean_confidence"]
        other = ["accuracy_confident", "ece", "mean_confidence"] if with_gt else []
        headers = ["grouping", "metric", "gap", f"{level} interval", "by chance", "p", "highest",
                   "lowest", "groups"]
        parts.append(H.table(headers, _gap_rows(gaps[gaps["metric"].isin(main)]), left=2))
        rest = gaps[gaps["metric"].isin(other)]
        if len(rest):
            parts.append(f"<details><summary>Gaps in {', '.join(other)} ({len(rest)})</summary>"
                         + H.table(headers, _gap_rows(rest), left=2) + "</details>")
        if with_gt:
            parts.append("<p class=\"sub\">share_female gaps are left out here: with ground truth they mostly "
                         "reflect each group's real make-up, not an error.</p>")
    else:
        parts.append('<p class="note">No grouping has two groups large enough to compare.</p>')

    # -- calibration -----------------------------------------------------------------------
    if with_gt:
        parts.append('<h2 id="calibration">Calibration</h2>')
        ece = overall.get("ece")
        parts.append(
            "<p>Files with ground truth are put in 10 equal-width bins of predicted P(male); each point is a "
            "bin's average prediction against the share of its files that are really male. On the dotted "
            "diagonal, \"70% male\" means 70% of such files are male. The expected calibration error (ECE), "
            "the files-weighted average distance from the diagonal, is "
            f"<b>{H.esc(H.fmt('ece', ece['value']) if ece is not None else '—')}</b>.</p>"
        )
        fig = P.reliability([("all files", p[has_gt], y[has_gt])], histogram=True)
        parts.append('<div class="plots">' + P.to_img(fig, "reliability diagram, all files") + "</div>")

    # -- threshold -------------------------------------------------------------------------
    parts.append('<h2 id="threshold">Accuracy and coverage vs confidence threshold</h2>')
    parts.append(
        "<p>Keeping only files whose confidence is at least the threshold: coverage is the share kept, "
        "accuracy the share of kept files labelled right. Raising the threshold trades coverage for "
        "accuracy; pick the lowest threshold whose accuracy is good enough for the use, and check the "
        "per-group curves so that no group pays most of the coverage. The run's own <code>uncertain</code> "
        "label also counts too little speech and disagreeing members, so its coverage can be below the curve.</p>"
    )
    # coverage over every file, accuracy over the kept files that have ground truth
    judged = np.where(has_gt, correct, np.nan) if with_gt else None
    fig = P.threshold_curves([("all files", conf, judged)], combined=True)
    threshold_img = P.to_img(fig, "accuracy and coverage vs threshold")
    tt = P.threshold_table(conf, judged)
    rows = []
    for t in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95):
        i = int(np.argmin(np.abs(tt["threshold"] - t)))
        row = [H.esc(f"{t:.2f}"), H.esc(H.fmt("coverage", tt["coverage"][i]))]
        if with_gt:
            row.append(H.esc(H.fmt("accuracy", tt["accuracy"][i])))
        rows.append(row)
    parts.append('<div class="plots">' + threshold_img + H.table(
        ["threshold", "coverage (all files)"] + (["accuracy of kept"] if with_gt else []), rows) + "</div>")

    # -- groups ----------------------------------------------------------------------------
    parts.append('<h2 id="groups">Groups</h2>')
    if not groupings:
        parts.append('<p class="note">No grouping: no metadata column with 2 to 30 values was carried and no '
                     "feature bands could be derived.</p>")
    else:
        parts.append(
            "<p>Each value is shown with its interval in brackets. Rows in grey italics are <b>too small to "
            "compare</b>: their numbers are shown but they are not ranked and not used for the gaps. Bars: "
            "hollow grey = too small; whiskers = interval; dashed red line = all files.</p>"
        )
        parts.append("<p>" + " · ".join(f'<a href="#g-{i}">{H.esc(g.name)}</a>' for i, g in enumerate(groupings))
                     + "</p>")
    metrics = list(table["metric"].drop_duplicates())
    plot_metrics = ["accuracy", "coverage", "recall_female", "recall_male"] if with_gt else [
        "coverage", "share_female", "mean_confidence"]
    overall_values = {m: float(r["value"]) for m, r in overall.items()}
    for i, g in enumerate(groupings):
        sub = table[table["group_by"] == g.name]
        parts.append(f'<h3 id="g-{i}">{H.esc(g.name)}</h3>')
        headers = ["group", "files", "speakers"] + [m for m in metrics if m != "n"]
        rows, classes = [], []
        for level_name in g.order:
            rr = _metric_row(sub, g.name, level_name)
            n_row = rr["n"]
            small = bool(n_row["small"])
            name = f'<span class="gname">{H.esc(level_name)}</span>' + (
                '<br><span class="tag" title="too small to compare">too small</span>' if small else "")
            row = [name, H.esc(f"{int(n_row['n_files']):,}"), H.esc(n_row["n_speakers"])]
            for m in headers[3:]:
                r = rr[m]
                txt = H.cell(m, r["value"], r["ci_low"], r["ci_high"])
                if bool(r["small"]) and not small:
                    txt += '<span class="tag" title="too few files or speakers for this metric">small</span>'
                row.append(txt)
            rows.append(row)
            classes.append("small" if small else "")
        parts.append('<div class="scroll">' + H.table(headers, rows, row_classes=classes, cls="wide") + "</div>")
        plots = [P.to_img(P.bars(sub, [m for m in plot_metrics if m in metrics], g.order, overall_values),
                          f"{g.name}: metrics per group")]
        if "*" not in g.name:
            vals = g.values.to_numpy(dtype=object)
            eligible = [lv for lv in g.order if not bool(_metric_row(sub, g.name, lv)["n"]["small"])]
            eligible = sorted(eligible, key=lambda lv: -(vals == lv).sum())[:MAX_CURVES]
            eligible = [lv for lv in g.order if lv in eligible]
            if eligible and with_gt:
                curves = [(lv, p[(vals == lv) & has_gt], y[(vals == lv) & has_gt]) for lv in eligible]
                curves = [c for c in curves if len(c[1])]
                if curves:
                    plots.append(P.to_img(P.reliability(curves, histogram=False, min_count=MIN_BIN_FILES),
                                          f"{g.name}: reliability"))
            if eligible:
                tc = [(lv, conf[vals == lv], None if judged is None else judged[vals == lv]) for lv in eligible]
                plots.append(P.to_img(P.threshold_curves(tc, combined=False), f"{g.name}: threshold curves"))
        parts.append('<div class="plots">' + "".join(plots) + "</div>")
        if len(plots) > 1:
            parts.append(
                f'<p class="caption">Per-group curves are drawn for at most {MAX_CURVES} groups that are large '
                "enough to compare (the largest). "
                + (f"Reliability: bins with fewer than {MIN_BIN_FILES} files of a group are left out. "
                   if with_gt else "")
                + "Threshold curves: how each group's "
                + ("accuracy and " if with_gt else "") + "coverage move with the confidence threshold.</p>"
            )

    # -- speakers --------------------------------------------------------------------------
    parts.append('<h2 id="speakers">Speakers</h2>')
    parts.append(_speakers_section(predictions, speakers, gt))

    # -- audit -----------------------------------------------------------------------------
    if with_gt:
        parts.append('<h2 id="audit">Possible label errors</h2>')
        parts.append(_audit_section(predictions, gt))

    # -- method ----------------------------------------------------------------------------
    parts.append('<h2 id="method">How to read this report</h2>')
    resample = "speakers (every file of a drawn speaker comes along)" if speakers_known else \
        "files (no speaker is known)"
    parts.append(
        "<ul>"
        f"<li>Intervals are {level} percentile bootstrap intervals from {params.n_bootstrap:,} replicates that "
        f"resample {resample}, within each group. Files of one speaker are not independent evidence, so "
        "resampling speakers gives honest, wider intervals. When the percentile interval would not contain "
        "the estimate (possible for skewed metrics such as ECE), it is widened to include it.</li>"
        "<li><b>accuracy</b>: share of files with ground truth whose decision <code>p_male &gt; 0.5</code> "
        "matches <code>gender</code>, uncertain files included. <b>coverage</b>: share of files not labelled "
        "<code>uncertain</code>. <b>accuracy_confident</b>: accuracy of the labels given. "
        "<b>recall_female / recall_male</b>: share of women / men recognised as such. <b>ece</b>: expected "
        "calibration error of <code>p_male</code> (10 equal-width bins). <b>share_female</b>: share of "
        "confident labels that are female. <b>mean_confidence</b>: average confidence.</li>"
        f"<li>A group is <b>too small to compare</b> when the files a metric is computed on number fewer than "
        f"{params.min_files} or come from fewer than {params.min_speakers} speakers (a file without a "
        "speaker counts as one; where both kinds mix, by their effective number).</li>"
        "<li>Bands are derived from the features: speech seconds (<code>speech_s</code>), signal-to-noise "
        "(<code>snr_db</code>) and median pitch (<code>f0_p50</code>, 'unvoiced' when no pitch was found). "
        "Low-pitched women and high-pitched men are where a voice model is most likely to fail: compare "
        "recall_female in the lowest pitch bands and recall_male in the highest.</li>"
        "<li>Full explanations: <code>docs/fairness.md</code> in the grv-batch project.</li>"
        "</ul>"
    )
    parts.append(f"<footer>groups.parquet next to this page holds every number shown here. "
                 f"Bootstrap seed {params.seed}.</footer>")
    return H.page("grv-batch evaluation report", "\n".join(parts))


def _num(value: object) -> str:
    try:
        return f"{float(value):.3f}"
    except (TypeError, ValueError):
        return "—"


def _p_cell(p: float) -> str:
    if p is None or np.isnan(p):
        return "—"
    text = "&lt;0.001" if p < 0.001 else f"{p:.3f}"
    return f"<b>{text}</b>" if p < 0.05 else text


def _gap_rows(gaps: pd.DataFrame) -> list[list[str]]:
    rows = []
    for _, g in gaps.iterrows():
        m = g["metric"]
        gap = H.fmt(m, g["gap"]).replace("%", " pts")
        rows.append([
            H.esc(g["group_by"]), H.esc(m), H.esc(gap),
            f'<span class="ci">{H.esc(H.fmt_ci(m, g["ci_low"], g["ci_high"]))}</span>',
            H.esc(H.fmt(m, g.get("chance_gap", np.nan)).replace("%", " pts")),
            _p_cell(g.get("p_adjusted", np.nan)),
            f'{H.esc(g["group_high"])} ({H.esc(H.fmt(m, g["value_high"]))})',
            f'{H.esc(g["group_low"])} ({H.esc(H.fmt(m, g["value_low"]))})',
            H.esc(g["n_groups"]),
        ])
    return rows


def _speakers_section(predictions: pd.DataFrame, speakers: pd.DataFrame | None, gt: pd.Series) -> str:
    if speakers is None or not len(speakers):
        return ('<p class="info">No speakers table: speakers were not known for this run (no '
                "<code>speaker_id</code> in the metadata and none derived from paths), so intervals resample "
                "files.</p>")
    out = []
    counts = speakers["label"].astype("string").fillna("uncertain").value_counts() if "label" in speakers else None
    nf = pd.to_numeric(speakers.get("n_files"), errors="coerce") if "n_files" in speakers else None
    cards = [("speakers", f"{len(speakers):,}")]
    if counts is not None:
        for k in ("female", "male", "uncertain"):
            cards.append((f"labelled {k}", f"{int(counts.get(k, 0)):,}"))
    if nf is not None and nf.notna().any():
        cards.append(("median files per speaker", f"{nf.median():g}"))
    out.append('<div class="cards">' + "".join(
        f'<div class="card"><div class="v">{H.esc(v)}</div><div class="k">{H.esc(k)}</div></div>' for k, v in cards)
        + "</div>")
    # speaker label against metadata gender (constant per speaker)
    if "speaker_id" in predictions.columns and {"speaker_id", "label"} <= set(speakers.columns) and gt.notna().any():
        spk_gt = (
            pd.DataFrame({"speaker_id": predictions["speaker_id"], "gt": gt})
            .dropna()
            .groupby("speaker_id")["gt"]
            .agg(lambda s: s.iloc[0] if s.nunique() == 1 else "mixed")
        )
        s = speakers.copy()
        s["metadata gender"] = s["speaker_id"].map(spk_gt)
        bad = s[s["label"].isin(["female", "male"]) & s["metadata gender"].isin(["female", "male"])
                & (s["label"] != s["metadata gender"])]
        if "confidence" in bad.columns:
            bad = bad.sort_values("confidence", ascending=False)
        out.append(f"<h3>Speakers whose label disagrees with their metadata gender ({len(bad):,})</h3>")
        if len(bad):
            rows = [[H.esc(r["speaker_id"]), H.esc(r["metadata gender"]), H.esc(r["label"]),
                     H.esc(_num(r.get("p_male"))), H.esc(_num(r.get("confidence"))), H.esc(r.get("n_files"))]
                    for _, r in bad.head(SPEAKER_ROWS).iterrows()]
            out.append('<div class="scroll">' + H.table(
                ["speaker_id", "metadata gender", "label", "p_male", "confidence", "files"], rows, left=3) + "</div>")
        else:
            out.append("<p>None.</p>")
    # speakers whose files get both labels: possibly two people under one id
    if "speaker_id" in predictions.columns:
        lab = predictions["label"].astype("string")
        tab = pd.crosstab(predictions["speaker_id"], lab)
        if {"female", "male"} <= set(tab.columns):
            mixed = tab[(tab["female"] > 0) & (tab["male"] > 0)].copy()
            mixed["minority"] = mixed[["female", "male"]].min(axis=1)
            mixed = mixed.sort_values("minority", ascending=False)
            out.append(f"<h3>Speakers with files confidently labelled both female and male ({len(mixed):,})</h3>")
            out.append("<p>Either the model wavers on this voice, or the id covers more than one person.</p>")
            rows = [[H.esc(k), H.esc(int(r["female"])), H.esc(int(r["male"])),
                     H.esc(int(r.get("uncertain", 0)))] for k, r in mixed.head(SPEAKER_ROWS).iterrows()]
            if rows:
                out.append('<div class="scroll">' + H.table(
                    ["speaker_id", "files female", "files male", "files uncertain"], rows) + "</div>")
    return "".join(out)


def _audit_section(predictions: pd.DataFrame, gt: pd.Series) -> str:
    label = predictions["label"].astype("string")
    mask = label.isin(["female", "male"]).fillna(False) & gt.notna() & (label != gt.astype("string")).fillna(False)
    bad = predictions[mask.to_numpy(dtype=bool)].assign(_gt=gt[mask]).sort_values("confidence", ascending=False)
    out = [
        f"<p><b>{len(bad):,}</b> confident predictions disagree with the metadata <code>gender</code>. The most "
        "confident ones first: these are worth a listen, since a confident disagreement is often a "
        f"mislabelled file rather than a model error. Showing at most {AUDIT_ROWS}.</p>"
    ]
    if len(bad):
        rows = []
        for _, r in bad.head(AUDIT_ROWS).iterrows():
            rows.append([f'<span class="mono">{H.esc(r["path"])}</span>', H.esc(r.get("speaker_id")),
                         H.esc(r["_gt"]), H.esc(r["label"]), H.esc(f"{r['p_male']:.3f}"),
                         H.esc(f"{r['confidence']:.3f}")])
        out.append('<div class="scroll">' + H.table(
            ["path", "speaker_id", "metadata gender", "label", "p_male", "confidence"], rows, left=4) + "</div>")
    return "".join(out)
