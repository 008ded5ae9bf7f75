"""The report stage: turns finished runs' `results.json` files into survey-style comparison tables.

It reads results.json only, never logs: a run that did not write a complete results.json did not finish, and
a table must never mix finished numbers with numbers scraped from a run that may still be going.
"""

from kdbench.report.collect import collect_results
from kdbench.report.compare import Cell, Row, Table, build_table
from kdbench.report.render import render_csv, render_markdown

__all__ = ["collect_results", "build_table", "render_markdown", "render_csv", "Table", "Row", "Cell"]
