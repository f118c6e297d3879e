"""The HTML and Markdown pieces of the reports: the page style, and tables formatted for reading (numbers to four
figures, 14.7M, headers that wrap at dots and underscores, run ids short with the whole id on hover) so that a
table fits the page at 1400 px."""

from __future__ import annotations

import html

import pandas as pd

CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:min(1360px,calc(100vw - 2em));color:#222}
h1{margin-bottom:.2em}.headline{background:#f3f7ee;border-left:4px solid #5a9;padding:.6em 1em;margin:1em 0}
table{border-collapse:collapse;font-size:13px;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 5px;text-align:right}
th{background:#f4f4f4}figure{display:inline-block;margin:.4em}img{max-width:100%}.muted{color:#777}"""


def fmt(df: pd.DataFrame, link: str | None = None) -> pd.DataFrame:
    out = df.copy()
    for c in out.columns:
        if c == "run_id" and link:
            base = link.split("/runs?")[0]
            out[c] = [f'<a href="{html.escape(base)}/runs/{r}">{r[:8]}</a>' for r in out[c]]
        elif pd.api.types.is_float_dtype(out[c]):
            out[c] = [
                (
                    ""
                    if pd.isna(v)
                    else (f"{v / 1e6:.3g}M" if abs(v) >= 1e6 else f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}")
                )
                for v in out[c]
            ]
    return out


def html_table(df: pd.DataFrame, table_id: str, link: str | None = None) -> str:
    """A table for the page: numbers as in fmt, headers that may wrap at their dots and underscores, and long
    teacher lists at their '+', so that it fits the page's width (no horizontal scrolling at 1400 px)."""
    f = fmt(df, link)
    if "run_id" in f and not link:  # the first 8 characters, the whole id on hover (and in pareto.csv)
        f["run_id"] = [f'<span title="{html.escape(str(r))}">{html.escape(str(r)[:8])}</span>' for r in f["run_id"]]
    for c in f.columns:
        if c != "run_id":
            f[c] = [
                html.escape("" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v)).replace("+", "+<wbr>")
                for v in f[c]
            ]
    f.columns = [html.escape(str(c)).replace("_", "_<wbr>").replace(".", ".<wbr>") for c in f.columns]
    return f.to_html(index=False, escape=False, table_id=table_id)


def markdown_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "(none)"
    f = fmt(df)
    lines = ["| " + " | ".join(map(str, f.columns)) + " |", "|" + "---|" * len(f.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in f.itertuples(index=False)]
    return "\n".join(lines)
