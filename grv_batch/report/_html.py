"""HTML helpers: escaping, number formatting, tables and the page shell (inline CSS only)."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

PERCENT_METRICS = {"accuracy", "coverage", "accuracy_confident", "recall_female", "recall_male", "share_female"}

CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       margin: 0; background: #f6f7f9; color: #1d2330; line-height: 1.45; font-size: 15px; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 60px; background: #ffffff; }
h1 { font-size: 1.6em; margin: 0.2em 0 0.1em; }
h2 { font-size: 1.25em; margin-top: 2.2em; padding-bottom: 0.25em; border-bottom: 2px solid #e3e6eb; }
h3 { font-size: 1.05em; margin-top: 1.6em; }
p.sub { color: #5b6475; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-size: 13px; }
th, td { padding: 4px 8px; border-bottom: 1px solid #e3e6eb; text-align: right; vertical-align: top; }
th { background: #eef1f5; font-weight: 600; }
td.l, th.l { text-align: left; }
tr.small td { color: #8a919e; font-style: italic; }
.gname { white-space: nowrap; }
p.caption { color: #5b6475; font-size: 13px; margin: 0.3em 0 0.8em; }
tbody tr:nth-child(even) { background: #fafbfc; }
.ci { color: #6b7385; font-size: 0.85em; white-space: nowrap; }
table.wide { font-size: 12.5px; }
table.wide th, table.wide td { padding: 4px 6px; }
.tag { display: inline-block; font-size: 11px; padding: 0 6px; border-radius: 8px; background: #eceef2;
       color: #5b6475; font-style: normal; margin-left: 4px; white-space: nowrap; }
.note { background: #fff8e6; border-left: 4px solid #e0a800; padding: 8px 12px; margin: 1em 0; }
.info { background: #eef5ff; border-left: 4px solid #3366aa; padding: 8px 12px; margin: 1em 0; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 1em 0; }
.card { border: 1px solid #e3e6eb; border-radius: 8px; padding: 10px 14px; min-width: 150px; }
.card .v { font-size: 1.5em; font-weight: 600; }
.card .k { color: #5b6475; font-size: 0.85em; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
img.plot { max-width: 100%; height: auto; border: 1px solid #eef0f3; }
.scroll { max-height: 480px; overflow: auto; border: 1px solid #eef0f3; }
.mono, td.path { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 12px;
       word-break: break-all; }
nav { font-size: 13px; margin: 0.5em 0 1em; }
nav a { margin-right: 12px; color: #3366aa; }
details > summary { cursor: pointer; color: #3366aa; margin: 0.5em 0; }
footer { color: #8a919e; font-size: 12px; margin-top: 3em; }
"""


def esc(value: object) -> str:
    """Escaped text of any value from the data (null shown as an em dash)."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return "—"
    return html.escape(str(value), quote=True)


def fmt(metric: str, value: float) -> str:
    """A metric value for people: percentages for shares, three decimals otherwise."""
    if value is None or pd.isna(value):
        return "—"
    if metric == "n":
        return f"{int(value):,}"
    if metric in PERCENT_METRICS:
        return f"{100 * value:.1f}%"
    return f"{value:.3f}"


def fmt_ci(metric: str, low: float, high: float) -> str:
    if low is None or pd.isna(low) or metric == "n":
        return ""
    if metric in PERCENT_METRICS:
        return f"{100 * low:.1f}–{100 * high:.1f}"
    return f"{low:.3f}–{high:.3f}"


def cell(metric: str, value: float, low: float, high: float) -> str:
    ci = fmt_ci(metric, low, high)
    return esc(fmt(metric, value)) + (f'<br><span class="ci">[{esc(ci)}]</span>' if ci else "")


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    left: int = 1,
    row_classes: Sequence[str] | None = None,
    cls: str = "",
) -> str:
    """An HTML table. Cells are already-escaped HTML; headers are escaped here."""
    head = "".join(
        f'<th class="{"l" if i < left else ""}">{esc(h).replace("_", "_<wbr>")}</th>' for i, h in enumerate(headers)
    )
    body = []
    for k, row in enumerate(rows):
        row_cls = f' class="{row_classes[k]}"' if row_classes and row_classes[k] else ""
        tds = "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(row))
        body.append(f"<tr{row_cls}>{tds}</tr>")
    klass = f' class="{cls}"' if cls else ""
    return f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )
