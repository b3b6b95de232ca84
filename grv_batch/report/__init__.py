"""Fairness and evaluation report of a finished run.

Metrics per group (metadata columns, bands derived from the features, and their intersections),
with percentile bootstrap intervals that resample speakers, the largest gaps between groups, and
one self-contained ``report.html``. See ``docs/fairness.md``.

Public API
----------
ReportParams
    Groupings, bootstrap and size thresholds.
ReportInputError
    The tables cannot give the report asked for (no predictions, a missing group column).
group_metrics(predictions, features=None, *, params=None) -> DataFrame
    The long ``groups`` table.
largest_gaps(groups, *, predictions, features=None, params=None) -> DataFrame
    Max-min gap per (grouping, metric) among comparable groups, with intervals.
build_report(out, *, metadata=None, params=None, storage_options=None) -> str
    Writes ``OUT/report/groups.parquet`` and ``OUT/report/report.html``.
"""

from ._build import build_report
from ._config import ReportInputError, ReportParams
from ._metrics import ALWAYS_METRICS, GROUPS_COLUMNS, GT_METRICS, group_metrics, largest_gaps

__all__ = [
    "ALWAYS_METRICS",
    "GROUPS_COLUMNS",
    "GT_METRICS",
    "ReportInputError",
    "ReportParams",
    "build_report",
    "group_metrics",
    "largest_gaps",
]
