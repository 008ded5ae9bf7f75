"""Render a Table as GitHub Markdown (for reading) or CSV (for further processing)."""

from __future__ import annotations

import csv
import io

from kdbench.report.compare import Cell, Row, Table

MISSING = "—"


def _escape(text: object) -> str:
    # A literal | would split a Markdown cell in two.
    return str(text).replace("|", "\\|")


def _format_cell(row: Row, key: str, precision: int, show_delta: bool) -> str:
    cell: Cell | None = row.cells.get(key)
    if cell is None:
        return MISSING
    text = f"{cell.mean:.{precision}f}"
    if cell.std is not None:
        text += f" ± {cell.std:.{precision}f}"
    elif cell.ci is not None:
        text += f" [{cell.ci[0]:.{precision}f}, {cell.ci[1]:.{precision}f}]"
    if cell.n != row.n_seeds:
        # Fewer values than the row has seeds: say so, or the ± reads as if it covered every seed.
        text += f" (n={cell.n})"
    if show_delta and key in row.delta_vs_sft:
        mark = "*" if row.clear_vs_sft.get(key) else ""
        ci = row.delta_ci.get(key)
        interval = f" [{ci[0]:+.{precision}f}, {ci[1]:+.{precision}f}]" if ci else ""
        text += f" ({row.delta_vs_sft[key]:+.{precision}f}{mark}{interval})"
    if key in row.notes:
        text += f" [{row.notes[key]}]"
    return text


def render_markdown(table: Table, precision: int = 1, show_delta: bool = False) -> str:
    """A GitHub Markdown table: method | student | seeds | one `mean ± std` column per metric."""
    header = ["method", "student", "seeds", *table.columns]
    # Labels left-aligned, numbers right-aligned so the decimal points line up.
    align = [":---", ":---", "---:", *["---:"] * len(table.columns)]
    lines = ["| " + " | ".join(_escape(h) for h in header) + " |",
             "| " + " | ".join(align) + " |"]
    for row in table.rows:
        cells = [row.method, row.student, str(row.n_seeds),
                 *[_format_cell(row, key, precision, show_delta) for key in table.columns]]
        lines.append("| " + " | ".join(_escape(c) for c in cells) + " |")
    if show_delta and any(row.clear_vs_sft for row in table.rows):
        lines += ["", "(±: std over seeds; (+d): mean change vs the same student's sft; *: a paired t-test over the "
                  f"seeds puts the change away from 0 at 5%, two-sided, >= 3 seeds, Holm-corrected over the table's "
                  f"{table.n_tests} tests)"]
    if any(cell.ci for row in table.rows for cell in row.cells.values()):
        lines += ["", "([lo, hi]: one seed, a 95% bootstrap interval over the test items; beside a change vs sft, the "
                  "paired interval of the change over the same items)"]
    if table.notes:
        lines += ["", *table.notes]
    return "\n".join(lines) + "\n"


def render_csv(table: Table) -> str:
    """CSV with method,student,n_seeds then <metric>_mean,<metric>_std; full precision, empty when missing."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = ["method", "student", "n_seeds"]
    for key in table.columns:
        header += [f"{key}_mean", f"{key}_std"]
    writer.writerow(header)
    for row in table.rows:
        line = [row.method, row.student, row.n_seeds]
        for key in table.columns:
            cell = row.cells.get(key)
            line += ["", ""] if cell is None else [repr(cell.mean), "" if cell.std is None else repr(cell.std)]
        writer.writerow(line)
    return buf.getvalue()
