"""Group metrics with cluster (speaker) bootstrap intervals.

Every metric is a ratio of sums over files, so each bootstrap cluster (a speaker, or a file when
the speaker is unknown) is reduced once to a vector of sums; a bootstrap replicate is then a
weighted sum of those vectors (weights = how often each cluster was drawn), which makes 1000
replicates cheap even for large corpora.
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._config import ReportInputError, ReportParams

#: Metrics that need ground truth (``gender`` in {female, male}).
GT_METRICS = ("accuracy", "coverage", "accuracy_confident", "recall_female", "recall_male", "ece")
#: Metrics reported with or without ground truth.
ALWAYS_METRICS = ("n", "share_female", "mean_confidence")

GROUPS_COLUMNS = [
    "group_by",
    "group",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n_files",
    "n_speakers",
    "small",
]

# Columns of ``predictions`` that belong to the pipeline, never metadata to group on. Columns of
# the ``files`` table (``status``, ``sample_rate``, ``channels``...) are not among them: a metadata
# column of such a name is carried into ``predictions`` as it is, and is the user's to group on.
_OWN_COLUMNS = {
    "file_id",
    "path",
    "speaker_id",
    "gender",
    "p_male",
    "confidence",
    "label",
    "reason",
    "duration_s",
    "speech_s",
    "n_windows",
}

N_BINS = 10

# Derived bands: (group_by, feature column, edges, labels, label for NaN or None).
BANDS = (
    ("speech_duration_band", "speech_s", [2.0, 5.0, 15.0], ["<2 s", "2-5 s", "5-15 s", ">=15 s"], None),
    ("snr_band", "snr_db", [10.0, 20.0, 30.0], ["<10 dB", "10-20 dB", "20-30 dB", ">=30 dB"], None),
    # telephone audio (cut off at 3.4-4 kHz) is narrowband whatever rate it is stored at
    ("bandwidth_band", "bandwidth_hz", [4500.0, 7000.0],
     ["narrowband (<4.5 kHz)", "4.5-7 kHz", "wideband (>=7 kHz)"], None),
    (
        "pitch_band",
        "f0_p50",
        [120.0, 165.0, 210.0],
        ["<120 Hz", "120-165 Hz", "165-210 Hz", ">=210 Hz"],
        "unvoiced",
    ),
)

# Index of each sum in the per-file statistics vector.
_S_N, _S_CONF, _S_CONF_F, _S_CONFSUM = 0, 1, 2, 3
_S_GT, _S_CORRECT, _S_GT_CONF, _S_GT_CONF_OK = 4, 5, 6, 7
_S_F, _S_F_OK, _S_M, _S_M_OK = 8, 9, 10, 11
_S_BIN_N = 12
_S_BIN_P = _S_BIN_N + N_BINS
_S_BIN_Y = _S_BIN_P + N_BINS
_S_CONF_N = _S_BIN_Y + N_BINS  # files with a known confidence
_N_STATS = _S_CONF_N + 1

# metric -> index of the sum that is its denominator (the files it is computed on)
_DENOMINATOR = {
    "n": _S_N,
    "coverage": _S_N,
    "share_female": _S_CONF,
    "mean_confidence": _S_CONF_N,
    "accuracy": _S_GT,
    "accuracy_confident": _S_GT_CONF,
    "recall_female": _S_F,
    "recall_male": _S_M,
    "ece": _S_GT,
}


def _ground_truth(predictions: pd.DataFrame) -> pd.Series:
    """``gender`` normalised to 'female'/'male', anything else null."""
    if "gender" not in predictions.columns:
        return pd.Series(None, index=predictions.index, dtype=object)
    g = predictions["gender"].astype("string").str.strip().str.lower()
    ok = g.isin(["female", "male"]).fillna(False).to_numpy(dtype=bool)
    vals = np.where(ok, g.fillna("").to_numpy(dtype=object), None)
    return pd.Series(vals, index=predictions.index, dtype=object)


def has_ground_truth(predictions: pd.DataFrame) -> bool:
    """Whether any file has a usable ``gender`` (female/male)."""
    return bool(_ground_truth(predictions).notna().any())


def file_stats(predictions: pd.DataFrame) -> np.ndarray:
    """Per-file vector of sums from which every metric is a ratio, shape (n_files, K)."""
    n = len(predictions)
    p = pd.to_numeric(predictions["p_male"], errors="coerce").to_numpy(dtype=float)
    conf = pd.to_numeric(predictions["confidence"], errors="coerce").to_numpy(dtype=float)
    label = predictions["label"].astype("string").fillna("uncertain").to_numpy(dtype=object)
    gt = _ground_truth(predictions).to_numpy(dtype=object)
    has_gt = pd.notna(gt) & ~np.isnan(p)
    y = gt == "male"
    # SPEC's decision: male when p_male > 0.5. A file without any detected speech gets exactly
    # 0.5 and so counts as female: groups with many such files lean towards women in accuracy.
    pred_male = p > 0.5
    confident = (label == "female") | (label == "male")
    s = np.zeros((n, _N_STATS), dtype=float)
    s[:, _S_N] = 1.0
    s[:, _S_CONF] = confident
    s[:, _S_CONF_F] = confident & (label == "female")
    s[:, _S_CONFSUM] = np.nan_to_num(conf)
    s[:, _S_CONF_N] = np.isfinite(conf)
    s[:, _S_GT] = has_gt
    s[:, _S_CORRECT] = has_gt & (pred_male == y)
    s[:, _S_GT_CONF] = has_gt & confident
    s[:, _S_GT_CONF_OK] = has_gt & confident & ((label == "male") == y)
    s[:, _S_F] = has_gt & ~y
    s[:, _S_F_OK] = has_gt & ~y & ~pred_male
    s[:, _S_M] = has_gt & y
    s[:, _S_M_OK] = has_gt & y & pred_male
    pc = np.clip(np.nan_to_num(p), 0.0, 1.0)
    bins = np.minimum((pc * N_BINS).astype(int), N_BINS - 1)
    rows = np.flatnonzero(has_gt)
    s[rows, _S_BIN_N + bins[rows]] = 1.0
    s[rows, _S_BIN_P + bins[rows]] = pc[rows]
    s[rows, _S_BIN_Y + bins[rows]] = y[rows]
    return s


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def metrics_from_sums(sums: np.ndarray, metrics: tuple[str, ...]) -> np.ndarray:
    """Metric values from summed statistics; ``sums`` is (..., K), result (..., len(metrics))."""
    out = []
    for m in metrics:
        if m == "n":
            v = sums[..., _S_N].astype(float)
        elif m == "coverage":
            v = _ratio(sums[..., _S_CONF], sums[..., _S_N])
        elif m == "share_female":
            v = _ratio(sums[..., _S_CONF_F], sums[..., _S_CONF])
        elif m == "mean_confidence":
            v = _ratio(sums[..., _S_CONFSUM], sums[..., _S_CONF_N])
        elif m == "accuracy":
            v = _ratio(sums[..., _S_CORRECT], sums[..., _S_GT])
        elif m == "accuracy_confident":
            v = _ratio(sums[..., _S_GT_CONF_OK], sums[..., _S_GT_CONF])
        elif m == "recall_female":
            v = _ratio(sums[..., _S_F_OK], sums[..., _S_F])
        elif m == "recall_male":
            v = _ratio(sums[..., _S_M_OK], sums[..., _S_M])
        elif m == "ece":
            gap = np.abs(sums[..., _S_BIN_P:_S_BIN_Y] - sums[..., _S_BIN_Y : _S_BIN_Y + N_BINS])
            v = _ratio(gap.sum(axis=-1), sums[..., _S_GT])
        else:  # pragma: no cover - guarded by callers
            raise ValueError(f"unknown metric {m!r}")
        out.append(v)
    return np.stack(out, axis=-1)


def _metric_names(with_gt: bool) -> tuple[str, ...]:
    middle = GT_METRICS if with_gt else ("coverage",)
    return ("n",) + middle + ("share_female", "mean_confidence")


# ---------------------------------------------------------------------------------------------
# groupings


def _natural_key(value: str) -> tuple:
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def _as_group_strings(s: pd.Series) -> pd.Series:
    """Group values as strings (null stays null); integral floats lose their '.0'."""
    if pd.api.types.is_float_dtype(s.dtype):
        vals = s.map(lambda v: np.nan if pd.isna(v) else (str(int(v)) if float(v).is_integer() else str(v)))
        return vals.astype(object)
    out = s.astype("string").astype(object)
    return out.where(s.notna(), np.nan)


def _is_free_text(s: pd.Series) -> bool:
    if not (pd.api.types.is_object_dtype(s.dtype) or pd.api.types.is_string_dtype(s.dtype)):
        return False
    vals = s.dropna().astype(str)
    return bool(len(vals)) and (vals.str.len().mean() > 40 or vals.str.contains("\n").any())


def metadata_columns(predictions: pd.DataFrame) -> list[str]:
    """Carried metadata columns of ``predictions`` (everything the pipeline did not add)."""
    return [
        c
        for c in predictions.columns
        if c not in _OWN_COLUMNS and not str(c).startswith("p_male_") and not str(c).startswith("_")
    ]


def default_groups(predictions: pd.DataFrame) -> list[str]:
    """Metadata columns with 2..30 distinct values that are not free text."""
    chosen = []
    for c in metadata_columns(predictions):
        s = predictions[c]
        try:
            k = s.dropna().nunique()
        except TypeError:  # unhashable values (lists): not a grouping
            continue
        if 2 <= k <= 30 and not _is_free_text(s):
            chosen.append(c)
    return chosen


def _band(values: pd.Series, edges: list[float], labels: list[str], nan_label: str | None) -> pd.Series:
    x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    idx = np.searchsorted(np.asarray(edges), x, side="right")
    out = np.array([labels[i] for i in np.minimum(idx, len(labels) - 1)], dtype=object)
    out[np.isnan(x)] = nan_label if nan_label is not None else np.nan
    return pd.Series(out, index=values.index, dtype=object)


def band_name(name: str, predictions: pd.DataFrame) -> str:
    """Name of a derived band: ``name``, or ``name_derived`` when a metadata column has it."""
    return f"{name}_derived" if name in predictions.columns else name


@dataclass
class Grouping:
    """One way of splitting the files: the group value of every file (null = not in any group)."""

    name: str
    values: pd.Series
    order: list[str]


def build_groupings(
    predictions: pd.DataFrame, features: pd.DataFrame | None, params: ReportParams
) -> list[Grouping]:
    """Every grouping the report uses, in report order (metadata, bands, intersections)."""
    cols = default_groups(predictions) if params.groups is None else list(params.groups)
    series: dict[str, pd.Series] = {}
    orders: dict[str, list[str]] = {}
    for c in cols:
        if c not in predictions.columns:
            raise ReportInputError(f"group column {c!r} is not in the predictions (metadata columns: "
                             f"{', '.join(metadata_columns(predictions)) or 'none'})")
        s = _as_group_strings(predictions[c])
        series[c] = s
        orders[c] = sorted(s.dropna().unique().tolist(), key=_natural_key)
    if params.derived_bands:
        feats = _aligned_features(predictions, features)
        for name, col, edges, labels, nan_label in BANDS:
            if col not in feats.columns:
                continue
            if pd.to_numeric(feats[col], errors="coerce").notna().sum() == 0:
                continue
            s = _band(feats[col], edges, labels, nan_label)
            # a metadata column of the same name keeps its name: the band becomes <name>_derived
            name = band_name(name, predictions)
            series[name] = s
            orders[name] = [v for v in labels + ([nan_label] if nan_label else []) if (s == v).any()]
    out = [Grouping(k, series[k], orders[k]) for k in series]
    for a, b in params.intersections:
        for c in (a, b):
            if c not in series:
                src = predictions[c] if c in predictions.columns else None
                if src is None:
                    raise ReportInputError(f"intersection column {c!r} is neither a metadata column "
                                           f"nor a band")
                series[c] = _as_group_strings(src)
                orders[c] = sorted(series[c].dropna().unique().tolist(), key=_natural_key)
        sa, sb = series[a], series[b]
        both = sa.notna() & sb.notna()
        cells = pd.DataFrame({"a": sa[both].astype(str), "b": sb[both].astype(str)}).drop_duplicates()
        names = cells["a"] + "*" + cells["b"]
        if names.duplicated().any():  # e.g. ("a*b", "c") and ("a", "b*c"): one cell "a*b*c"
            raise ReportInputError(f"intersection {a}*{b}: values containing '*' make two cells share "
                                   f"the name {names[names.duplicated()].iloc[0]!r}; remove '*' from "
                                   f"the values of {a} or {b}")
        vals = pd.Series(np.nan, index=predictions.index, dtype=object)
        vals[both] = sa[both].astype(str) + "*" + sb[both].astype(str)
        order = [f"{x}*{y}" for x in orders[a] for y in orders[b] if (vals == f"{x}*{y}").any()]
        out.append(Grouping(f"{a}*{b}", vals, order))
    return out


def _aligned_features(predictions: pd.DataFrame, features: pd.DataFrame | None) -> pd.DataFrame:
    """Feature columns aligned row by row with ``predictions`` (empty frame when unknown)."""
    base = pd.DataFrame(index=predictions.index)
    if features is not None and len(features) and "file_id" in features.columns:
        f = features.drop_duplicates("file_id").set_index("file_id")
        keep = [c for _, c, *_ in BANDS if c in f.columns]
        aligned = f.reindex(predictions["file_id"].to_numpy())[keep]
        aligned.index = predictions.index
        base = aligned
    # columns carried in predictions itself are used when the features do not have them
    for _, c, *_ in BANDS:
        if c not in base.columns and c in predictions.columns:
            base[c] = predictions[c]
    return base


# ---------------------------------------------------------------------------------------------
# bootstrap


def clusters(predictions: pd.DataFrame) -> tuple[np.ndarray, bool]:
    """Cluster code per file (speaker, else the file itself) and whether speakers are known."""
    if "speaker_id" in predictions.columns:
        spk = predictions["speaker_id"]
        known = spk.notna().to_numpy()
    else:
        spk = pd.Series(np.nan, index=predictions.index)
        known = np.zeros(len(predictions), dtype=bool)
    key = [f"s:{v}" if k else f"f:{i}" for i, (v, k) in enumerate(zip(spk.to_numpy(dtype=object), known))]
    codes, _ = pd.factorize(pd.Series(key, dtype=object))
    return codes, bool(known.any())


def _rng(seed: int, group_by: str, group: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(group_by.encode()), zlib.crc32(group.encode())])


def bootstrap_sums(cluster_sums: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Summed statistics of ``n_boot`` cluster-bootstrap replicates, shape (n_boot, K)."""
    c = cluster_sums.shape[0]
    if n_boot == 0 or c == 0:
        return np.zeros((0, cluster_sums.shape[1]))
    out = np.empty((n_boot, cluster_sums.shape[1]))
    chunk = max(1, min(n_boot, 2_000_000 // max(c, 1)))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        draws = rng.integers(0, c, size=(b, c)) + (np.arange(b) * c)[:, None]
        weights = np.bincount(draws.ravel(), minlength=b * c).reshape(b, c).astype(float)
        out[start : start + b] = weights @ cluster_sums
    return out


@dataclass
class GroupResult:
    """Point estimates, replicates and sizes of one group."""

    group_by: str
    group: str
    metrics: tuple[str, ...]
    value: np.ndarray  # (M,)
    replicates: np.ndarray  # (B, M)
    n_files: np.ndarray  # (M,)
    n_speakers: np.ndarray  # (M,) or NaN when speakers unknown
    #: (M,) how many independent units the bootstrap draws: the speakers where every file has
    #: one; where some files have none (each drawn on its own), Kish's effective number
    #: (sum n)**2 / sum n**2 over the units' file counts n
    n_clusters: np.ndarray


def _evaluate_group(
    group_by: str,
    group: str,
    stats: np.ndarray,
    codes: np.ndarray,
    speakers_known: bool,
    is_known_speaker: np.ndarray,
    metrics: tuple[str, ...],
    params: ReportParams,
) -> GroupResult:
    uniq, inv = np.unique(codes, return_inverse=True)
    csums = np.zeros((len(uniq), stats.shape[1]))
    np.add.at(csums, inv, stats)
    total = csums.sum(axis=0)
    value = metrics_from_sums(total, metrics)
    reps = metrics_from_sums(bootstrap_sums(csums, params.n_bootstrap, _rng(params.seed, group_by, group)), metrics)
    den = np.array([_DENOMINATOR[m] for m in metrics])
    n_files = total[den]
    counts = csums[:, den]  # (clusters, M): files each cluster has for each metric
    if speakers_known:
        spk_cluster = np.zeros(len(uniq), dtype=bool)
        spk_cluster[inv[is_known_speaker]] = True
        n_speakers = ((counts > 0) & spk_cluster[:, None]).sum(axis=0).astype(float)
        all_have_one = (counts * spk_cluster[:, None]).sum(axis=0) == n_files
    else:
        n_speakers = np.full(len(metrics), np.nan)
        all_have_one = np.zeros(len(metrics), dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        kish = np.nan_to_num(n_files**2 / (counts**2).sum(axis=0))
    effective = np.where(all_have_one, n_speakers, kish)
    return GroupResult(group_by, group, metrics, value, reps, n_files, n_speakers, effective)


def _interval(value: float, reps: np.ndarray, level: float, *, basic: bool = False) -> tuple[float, float]:
    """Percentile interval, widened (clipped) so that it always contains ``value``.

    ``basic``: the basic bootstrap interval ``(2 value - q_hi, 2 value - q_lo)``, floored at 0,
    for a statistic the resampling biases, as ECE (always >= 0: it is biased upwards, and each
    replicate adds that bias again, so a percentile interval lies above the truth).
    """
    if np.isnan(value):
        return np.nan, np.nan
    r = reps[~np.isnan(reps)]
    if r.size == 0:
        return np.nan, np.nan
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(r, [alpha, 1.0 - alpha])
    if basic:
        lo, hi = max(2 * value - hi, 0.0), 2 * value - lo
    return float(min(lo, value)), float(max(hi, value))


@dataclass(frozen=True)
class Blocks:
    """A grouping's files summed per (speaker, group) block, for the permutation test of its gaps:
    ``stats`` shape (n_blocks, K), ``group`` shape (n_blocks,) each block's group."""

    stats: np.ndarray
    group: np.ndarray


def evaluate(
    predictions: pd.DataFrame, features: pd.DataFrame | None, params: ReportParams
) -> tuple[pd.DataFrame, dict[tuple[str, str], GroupResult], dict[str, Blocks]]:
    """The long groups table, every group's bootstrap replicates and every grouping's blocks
    (both for the gaps)."""
    predictions = predictions.reset_index(drop=True)
    with_gt = has_ground_truth(predictions)
    metrics = _metric_names(with_gt)
    stats = file_stats(predictions)
    codes, speakers_known = clusters(predictions)
    known_spk = (
        predictions["speaker_id"].notna().to_numpy()
        if "speaker_id" in predictions.columns
        else np.zeros(len(predictions), dtype=bool)
    )
    p_ok = pd.to_numeric(predictions["p_male"], errors="coerce").notna().to_numpy()
    gt_mask = _ground_truth(predictions).notna().to_numpy() & p_ok  # as in file_stats

    results: dict[tuple[str, str], GroupResult] = {}
    blocks: dict[str, Blocks] = {}
    jobs: list[tuple[str, str, np.ndarray]] = [("all", "all", np.ones(len(predictions), dtype=bool))]
    for g in build_groupings(predictions, features, params):
        vals = g.values.to_numpy(dtype=object)
        for level in g.order:
            jobs.append((g.name, level, vals == level))
        blocks[g.name] = _blocks(stats, codes, vals, g.order)
    for group_by, group, mask in jobs:
        results[(group_by, group)] = _evaluate_group(
            group_by, group, stats[mask], codes[mask], speakers_known, known_spk[mask], metrics, params
        )

    _fairlearn_check(predictions, stats, gt_mask, jobs, params.seed)

    rows = []
    for (group_by, group), r in results.items():
        for j, m in enumerate(metrics):
            v = float(r.value[j])
            if m == "n":
                lo = hi = v
            elif params.n_bootstrap:
                lo, hi = _interval(v, r.replicates[:, j], params.confidence_level, basic=m == "ece")
            else:
                lo = hi = np.nan
            nf, ns = int(r.n_files[j]), r.n_speakers[j]
            # the interval's honesty depends on how many independent units it resamples, in
            # effect: known speakers, and each file without a speaker on its own (counting only the
            # speakers made a large group of such files "too small" once any other file had one;
            # counting units plainly would let a few such files hide that a group has 3 speakers)
            small = nf < params.min_files or (speakers_known and r.n_clusters[j] < params.min_speakers)
            rows.append((group_by, group, m, v, lo, hi, nf, ns, bool(small)))
    table = pd.DataFrame(rows, columns=GROUPS_COLUMNS)
    table = table.astype(
        {
            "group_by": "string",
            "group": "string",
            "metric": "string",
            "value": "float64",
            "ci_low": "float64",
            "ci_high": "float64",
            "n_files": "int64",
            "small": "bool",
        }
    )
    table["n_speakers"] = pd.array(
        [pd.NA if np.isnan(x) else int(x) for x in table["n_speakers"]], dtype="Int64"
    )
    return table, results, blocks


def _blocks(stats: np.ndarray, codes: np.ndarray, vals: np.ndarray, order: list[str]) -> Blocks:
    level_of = {v: i for i, v in enumerate(order)}
    level = np.array([level_of.get(v, -1) for v in vals], dtype=int)
    keep = level >= 0
    # one block per (cluster, group) pair
    pairs, inverse = np.unique(np.column_stack([codes[keep], level[keep]]), axis=0, return_inverse=True)
    sums = np.zeros((len(pairs), stats.shape[1]))
    np.add.at(sums, inverse.ravel(), stats[keep])
    return Blocks(sums, np.asarray(order, dtype=object)[pairs[:, 1]])


def permutation_sums(blocks: Blocks, n_perm: int, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    """Each group's summed statistics when the group labels are shuffled between blocks,
    ``n_perm`` times: their distribution if the groups did not differ.

    A block is one speaker's files within one group (or one file without a speaker), so a
    speaker's files move together: they are not independent evidence. Returns the groups and
    sums of shape ``(n_perm, n_groups, K)``.
    """
    groups = sorted(set(blocks.group.tolist()))
    index = {g: k for k, g in enumerate(groups)}
    codes = np.array([index[v] for v in blocks.group], dtype=int)
    out = np.empty((n_perm, len(groups), blocks.stats.shape[1]))
    chunk = max(1, min(n_perm, 2_000_000 // max(len(codes), 1)))
    for start in range(0, n_perm, chunk):
        b = min(chunk, n_perm - start)
        perm = np.stack([rng.permutation(codes) for _ in range(b)])           # (b, n_blocks)
        for k in range(len(groups)):
            out[start:start + b, k] = (perm == k).astype(float) @ blocks.stats
    return groups, out


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN)."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    running = 0.0
    for i, idx in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[idx]))
        out[idx] = running
    return out


#: Above this many files with ground truth, the fairlearn cross-check runs on a random subset
#: (fairlearn slices arrays element by element, which costs seconds per grouping at 100k files).
FAIRLEARN_CHECK_MAX_FILES = 20_000


def _fairlearn_check(
    predictions: pd.DataFrame,
    stats: np.ndarray,
    gt_mask: np.ndarray,
    jobs: list[tuple[str, str, np.ndarray]],
    seed: int,
) -> None:
    """Cross-check accuracy and recalls against fairlearn's MetricFrame, one grouping at a time.

    The sums-based estimates above are what the bootstrap needs; fairlearn's ``MetricFrame`` is
    the reference implementation of "a metric per sensitive group". Both are computed on the same
    files (all files with ground truth, or a seeded random subset of
    ``FAIRLEARN_CHECK_MAX_FILES`` of them). A disagreement is a bug, so it raises instead of
    reporting a number nobody can trust.
    """
    idx = np.flatnonzero(gt_mask)
    if idx.size == 0:
        return
    if idx.size > FAIRLEARN_CHECK_MAX_FILES:
        idx = np.sort(np.random.default_rng(seed).choice(idx, FAIRLEARN_CHECK_MAX_FILES, replace=False))
    from fairlearn.metrics import MetricFrame

    y = (_ground_truth(predictions) == "male").to_numpy()[idx].astype(int)
    yhat = (pd.to_numeric(predictions["p_male"], errors="coerce").to_numpy() > 0.5)[idx].astype(int)
    sub_stats = stats[idx]

    def _acc(t: np.ndarray, p: np.ndarray) -> float:
        return float(np.mean(t == p)) if len(t) else np.nan

    def _rec(cls: int):
        def f(t: np.ndarray, p: np.ndarray) -> float:
            sel = t == cls
            return float(np.mean(p[sel] == cls)) if sel.any() else np.nan

        return f

    funcs = {"accuracy": _acc, "recall_female": _rec(0), "recall_male": _rec(1)}
    names = tuple(funcs)
    by_grouping: dict[str, list[tuple[str, np.ndarray]]] = {}
    for group_by, group, mask in jobs:
        by_grouping.setdefault(group_by, []).append((group, mask[idx]))
    for group_by, items in by_grouping.items():
        sens = np.full(idx.size, None, dtype=object)
        for group, mask in items:
            sens[mask] = group
        sel = pd.notna(sens)
        if not sel.any():
            continue
        mf = MetricFrame(
            metrics=funcs,
            y_true=y[sel],
            y_pred=yhat[sel],
            sensitive_features=pd.Series(sens[sel], name="group"),
        )
        masks = dict(items)
        for group, row in mf.by_group.iterrows():
            ours = metrics_from_sums(sub_stats[masks[str(group)]].sum(axis=0), names)
            for j, m in enumerate(names):
                theirs = float(row[m])
                if not (np.isnan(ours[j]) and np.isnan(theirs)) and not np.isclose(ours[j], theirs):
                    raise AssertionError(f"{m} of {group_by}={group}: {ours[j]} != fairlearn {theirs}")


def group_metrics(
    predictions: pd.DataFrame, features: pd.DataFrame | None = None, *, params: ReportParams | None = None
) -> pd.DataFrame:
    """Metrics per group, with bootstrap intervals, in long format.

    Parameters
    ----------
    predictions : pandas.DataFrame
        The ``predictions`` table (``file_id``, ``p_male``, ``confidence``, ``label``, optional
        ``speaker_id`` and ``gender``, carried metadata columns).
    features : pandas.DataFrame or None
        The ``features`` table (``file_id``, ``speech_s``, ``snr_db``, ``f0_p50``, ...), used for
        the derived bands. ``None`` skips bands whose column is not in ``predictions`` either.
    params : ReportParams, optional
        Groupings, bootstrap and size thresholds; defaults to ``ReportParams()``.

    Returns
    -------
    pandas.DataFrame
        One row per (``group_by``, ``group``, ``metric``) with columns ``group_by``, ``group``,
        ``metric``, ``value``, ``ci_low``, ``ci_high``, ``n_files``, ``n_speakers`` (null when no
        speaker is known) and ``small`` (too small to compare). The first rows are the overall
        results, ``group_by == group == "all"``. Without ground truth only ``n``, ``coverage``,
        ``share_female`` and ``mean_confidence`` are reported.
    """
    table, _, _ = evaluate(predictions, features, params or ReportParams())
    return table


def gaps_from_results(
    table: pd.DataFrame, results: dict[tuple[str, str], GroupResult], params: ReportParams,
    blocks: dict[str, Blocks] | None = None,
) -> pd.DataFrame:
    """Largest gap per (grouping, metric) among groups that are not small, with the bootstrap
    interval of the gap and, given ``blocks``, a permutation p-value (``p_value``; ``p_adjusted``
    Holm-adjusted within each metric across the groupings) and ``chance_gap``, the gap that
    shuffled labels stay below 95% of the time."""
    rows = []
    shuffled: dict[str, tuple[list[str], np.ndarray]] = {}
    alpha = (1.0 - params.confidence_level) / 2.0
    eligible = table[(table["group_by"] != "all") & ~table["small"] & (table["metric"] != "n")]
    for (group_by, metric), sub in eligible.groupby(["group_by", "metric"], sort=False):
        sub = sub[sub["value"].notna()]
        if len(sub) < 2:
            continue
        ranked = sub.sort_values("value", kind="stable")  # two different groups, even when tied
        lo_row, hi_row = ranked.iloc[0], ranked.iloc[-1]
        gap = float(hi_row["value"] - lo_row["value"])
        ci_low = ci_high = np.nan
        if params.n_bootstrap:
            reps = np.column_stack(
                [
                    results[(group_by, g)].replicates[:, results[(group_by, g)].metrics.index(metric)]
                    for g in sub["group"]
                ]
            )
            ok = ~np.isnan(reps).any(axis=1)
            if ok.any():
                rg = reps[ok].max(axis=1) - reps[ok].min(axis=1)
                lo, hi = np.quantile(rg, [alpha, 1.0 - alpha])
                ci_low, ci_high = float(min(lo, gap)), float(max(hi, gap))
        p_value = chance = np.nan
        if blocks is not None and params.n_permutations and group_by in blocks:
            if group_by not in shuffled:  # one set of permutations serves every metric
                shuffled[group_by] = permutation_sums(blocks[group_by], params.n_permutations,
                                                      _rng(params.seed, group_by, "permutations"))
            names, sums = shuffled[group_by]
            cols = [names.index(g) for g in sub["group"]]
            values = metrics_from_sums(sums[:, cols], (metric,))[..., 0]
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN replicates: dropped below
                perm = np.nanmax(values, axis=1) - np.nanmin(values, axis=1)
            perm = perm[~np.isnan(perm)]
            if perm.size:
                p_value = float((1 + np.sum(perm >= gap - 1e-12)) / (perm.size + 1))
                chance = float(np.quantile(perm, 0.95))
        rows.append(
            (group_by, metric, gap, ci_low, ci_high, hi_row["group"], float(hi_row["value"]),
             lo_row["group"], float(lo_row["value"]), len(sub), chance, p_value)
        )
    cols = ["group_by", "metric", "gap", "ci_low", "ci_high", "group_high", "value_high",
            "group_low", "value_low", "n_groups", "chance_gap", "p_value"]
    out = pd.DataFrame(rows, columns=cols)
    # Holm within each metric, across its groupings: the question a reader asks of the table
    out["p_adjusted"] = np.nan
    for _, idx in out.groupby("metric", sort=False).groups.items():
        out.loc[idx, "p_adjusted"] = holm(out.loc[idx, "p_value"].to_numpy())
    rank = {m: i for i, m in enumerate(GT_METRICS + ALWAYS_METRICS)}
    out["_rank"] = out["metric"].map(rank)
    out = out.sort_values(["_rank", "gap"], ascending=[True, False], kind="stable")
    return out.drop(columns="_rank").reset_index(drop=True)


def largest_gaps(
    groups: pd.DataFrame,
    *,
    predictions: pd.DataFrame,
    features: pd.DataFrame | None = None,
    params: ReportParams | None = None,
) -> pd.DataFrame:
    """Largest difference between groups of each grouping, with a bootstrap interval.

    For each (``group_by``, ``metric``), the gap is the highest minus the lowest value among the
    groups that are not ``small``. Its interval comes from recomputing that max-min gap inside
    every bootstrap replicate (the same replicates, same seed, as the group intervals).

    Parameters
    ----------
    groups : pandas.DataFrame
        The output of :func:`group_metrics` for the same inputs and params.
    predictions, features : pandas.DataFrame
        The tables ``groups`` was computed from (the replicates are recomputed from them).
    params : ReportParams, optional
        The params ``groups`` was computed with.

    Returns
    -------
    pandas.DataFrame
        Columns ``group_by``, ``metric``, ``gap``, ``ci_low``, ``ci_high``, ``group_high``,
        ``value_high``, ``group_low``, ``value_low``, ``n_groups``, ``chance_gap``, ``p_value``,
        ``p_adjusted``; ordered by metric (accuracy first), then largest gap first. Groupings
        with fewer than two comparable groups are left out. The interval says how precisely the
        gap is measured; whether it is more than chance is ``p_adjusted`` (the max-min gap over
        several groups is large even when they do not differ at all).
    """
    params = params or ReportParams()
    _, results, blocks = evaluate(predictions, features, params)
    return gaps_from_results(groups, results, params, blocks)

