"""Rendering a :class:`~frozen.Report`: plain text, ``rich`` (colour) and HTML (Jupyter).

All three show the same columns and the same totals; only the plain table is
promised to be byte-for-byte deterministic. ``rich`` is imported only when a
report is rendered with it, so ``import frozen`` never needs it.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .census import ReportRow
    from .report import Report

__all__ = ["COLUMNS", "human_bytes", "cells", "totals_lines", "plain_table", "rich_renderable", "html_table"]

COLUMNS = ("path", "type", "params", "state", "inference", "tied with", "dtype")
_STATE_STYLE = {"trainable": "green", "frozen": "cyan", "mixed": "yellow", "-": "dim"}
_STATE_COLOUR = {"trainable": "#1a7f37", "frozen": "#0969da", "mixed": "#9a6700", "-": "#6e7781"}


def _kind(state: str) -> str:
    """The state without a note on why (``"trainable (flag flipped by PEFT)"`` -> ``"trainable"``)."""
    return state.split(" (", 1)[0]


def human_bytes(count: int) -> str:
    """``1536`` -> ``'1.5 KiB'``: binary units, one decimal, deterministic."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def cells(row: ReportRow) -> tuple[str, ...]:
    """The text of one row, column by column; the model itself shows as ``(model)``."""
    return (
        row.path or "(model)",
        row.type,
        f"{row.params:,}",
        row.state,
        row.inference or "-",
        ", ".join(row.tied_with) or "-",
        row.dtype,
    )


def totals_lines(report: Report) -> list[str]:
    """The summary under the table: counts with percentages, then memory saved."""
    r = report
    return [
        f"trainable: {r.trainable_params:,} params ({r.trainable_percent:.1f}%, {human_bytes(r.trainable_bytes)})"
        f"  frozen: {r.frozen_params:,} params ({r.frozen_percent:.1f}%, {human_bytes(r.frozen_bytes)})"
        f"  total: {r.total_params:,}",
        f"freezing saves {human_bytes(r.gradient_bytes_saved)} of gradients and "
        f"{human_bytes(r.adam_state_bytes_saved)} of Adam-style optimizer state",
        *(
            f"cache {path or '(model)'!r}: {c['hits']:,} hits, {c['misses']:,} misses, "
            f"{human_bytes(c['bytes'])} in {c['entries']:,} entries on {c['store']}"
            for path, c in r.caches.items()
        ),
    ]


def plain_table(report: Report) -> str:
    """A fixed-width text table with the totals underneath."""
    body = [cells(row) for row in report.rows]
    widths = [max([len(c)] + [len(line[i]) for line in body]) for i, c in enumerate(COLUMNS)]
    numeric = {COLUMNS.index("params")}

    def line(values: tuple[str, ...]) -> str:
        parts = [v.rjust(w) if i in numeric else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths))]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(COLUMNS), rule, *(line(v) for v in body), rule, *totals_lines(report)])


def rich_renderable(report: Report) -> Any:
    """A ``rich`` table (state in colour) followed by the totals."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title="frozen.report", title_justify="left", header_style="bold")
    for column in COLUMNS:
        # Only "tied with" may wrap: long path lists fold, everything else stays on one line.
        table.add_column(
            column, justify="right" if column == "params" else "left", no_wrap=column != "tied with", overflow="fold"
        )
    for row in report.rows:
        values = list(cells(row))
        values[3] = f"[{_STATE_STYLE.get(_kind(row.state), '')}]{row.state}[/]"
        if row.eval_forced:
            values[4] = "[magenta]forced eval[/]"
        table.add_row(*(v if i in (3, 4) else Text(v) for i, v in enumerate(values)))
    return Group(table, *(Text(line) for line in totals_lines(report)))


def html_table(report: Report) -> str:
    """An HTML table for Jupyter, state in colour, totals in a caption."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    rows = []
    for row in report.rows:
        tds = []
        for i, value in enumerate(cells(row)):
            style = f' style="color:{_STATE_COLOUR.get(_kind(row.state), "inherit")}"' if i == 3 else ""
            align = ' align="right"' if i == 2 else ""
            tds.append(f"<td{style}{align}>{html.escape(value)}</td>")
        rows.append("<tr>" + "".join(tds) + "</tr>")
    caption = "<br>".join(html.escape(line) for line in totals_lines(report))
    return (
        '<table class="frozen-report">'
        f'<caption style="caption-side:bottom;text-align:left">{caption}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
