"""`kdbench-report DIR`: print a comparison table of every finished run under DIR."""

from __future__ import annotations

import argparse
import logging
import sys

from kdbench.report.collect import collect_results
from kdbench.report.compare import build_table
from kdbench.report.render import render_csv, render_markdown
from kdbench.report.run_table import headline_metrics
from kdbench.report.tex import minillm_keys, render_minillm_table, render_tex
from kdbench.storage.atomic import atomic_write_text


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kdbench-report",
        description="Compare finished kdbench runs: reads every complete results.json under DIR.")
    parser.add_argument("dir", metavar="DIR", help="directory searched recursively for results.json")
    parser.add_argument("--metrics", help="comma-separated metric keys to show, or all "
                                          "(default: each set's rouge_l and exact_match)")
    parser.add_argument("--format", choices=["md", "csv", "tex"], default="md",
                        help="output format (default: md); tex: a booktabs table float for a paper")
    parser.add_argument("--layout", choices=["survey", "minillm"], default="survey",
                        help="tex only: survey (default: one column per metric, students grouped by size) or "
                             "minillm (MiniLLM's Table 1: DollyEval, SelfInst, VicunaEval, S-NI, UnNI; "
                             "judge / ROUGE-L cells)")
    parser.add_argument("--out", metavar="FILE", help="also write the table to FILE (atomically)")
    parser.add_argument("--precision", type=int, default=1, metavar="N",
                        help="decimals in the markdown and tex tables (default: 1)")
    parser.add_argument("--delta", action="store_true",
                        help="markdown and tex survey: show each method's change vs sft")
    args = parser.parse_args(argv)
    if args.precision < 0:
        parser.error("--precision must be >= 0")
    if args.layout == "minillm":
        if args.format != "tex":
            parser.error(f"--layout minillm needs --format tex (got --format {args.format})")
        if args.delta:
            parser.error("--delta: --layout minillm has no room for changes vs sft; use --layout survey")
        if args.metrics:
            parser.error("--metrics: --layout minillm has fixed columns (each set's judge score and ROUGE-L)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Returns the exit status: 0 ok, 1 nothing to report / cannot write, 2 bad DIR (argparse: 2 as well)."""
    args = _parse_args(argv)
    # Skipped files are reported through logging; make sure they reach stderr when run as a command.
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")

    try:
        results = collect_results(args.dir)
    except (FileNotFoundError, NotADirectoryError) as e:
        print(f"kdbench-report: error: {e}", file=sys.stderr)
        return 2
    if not results:
        print(f"kdbench-report: no complete results.json found under {args.dir}", file=sys.stderr)
        return 1

    # Default columns: each set's overall ROUGE-L and exact match; `--metrics all` shows every key (per category).
    metrics = list(dict.fromkeys(k for r in results for k in headline_metrics(r))) or None
    if args.metrics == "all":
        metrics = None
    elif args.metrics:
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if args.layout == "minillm":
        # Fixed columns; the paired tests vs sft, and so their Holm correction, cover exactly the cells shown.
        metrics = minillm_keys(key for r in results for key in [*r.metrics, *(r.teacher_metrics or {})])
    table = build_table(results, metrics)
    if metrics is not None and args.layout != "minillm":  # a set MiniLLM reports and the runs did not: "---"
        for key in metrics:
            if not any(key in row.cells for row in table.rows):
                print(f"kdbench-report: warning: no run reports metric {key!r}", file=sys.stderr)

    if args.format == "csv":
        text = render_csv(table)
        # The CSV keeps its columns; its caveats (skipped judge, partial ratios) go to stderr instead.
        for note in [*table.notes, *(f"{row.method} {row.student} {key}: {note}" for row in table.rows
                                     for key, note in row.notes.items())]:
            print(f"kdbench-report: note: {note}", file=sys.stderr)
    elif args.format == "tex" and args.layout == "minillm":
        text = render_minillm_table(table, precision=args.precision)
    elif args.format == "tex":
        text = render_tex(table, precision=args.precision, show_delta=args.delta)
    else:
        text = render_markdown(table, precision=args.precision, show_delta=args.delta)

    sys.stdout.write(text)
    if args.out:
        try:
            atomic_write_text(args.out, text)
        except OSError as e:
            print(f"kdbench-report: error: cannot write {args.out}: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
