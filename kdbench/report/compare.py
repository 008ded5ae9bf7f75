"""Group runs into (method, student) rows and aggregate each metric over seeds."""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass, field

from kdbench.tracking.record import RunRecord

logger = logging.getLogger(__name__)

TEACHER_METHOD = "teacher"
BASELINE_METHOD = "sft"


@dataclass
class Cell:
    """One metric of one row, aggregated over the seeds that reported it."""

    mean: float
    std: float | None  # sample std (ddof=1); None with one value, where it is undefined
    n: int
    # One seed: a 95% bootstrap CI of the mean over the run's test items (results.json eval.items), if it has them.
    ci: tuple[float, float] | None = None


@dataclass
class Row:
    method: str
    student: str  # for the teacher row: the teacher's name
    n_seeds: int
    cells: dict[str, Cell]
    # method mean minus the same student's sft mean, per metric; empty for sft itself, the teacher, and
    # students without an sft row.
    delta_vs_sft: dict[str, float] = field(default_factory=dict)
    # Whether the change is clear of seed noise: a paired t-test at 5% over the seeds both rows share (a seed
    # fixes the student's init and data order for every method). Only with at least 3 shared seeds; metric keys
    # without a verdict are absent.
    clear_vs_sft: dict[str, bool] = field(default_factory=dict)
    # One seed on both sides: a 95% paired bootstrap CI of the change vs sft over the same test items.
    delta_ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    # metric key -> a caveat shown beside the cell, e.g. a judge ratio over part of its verdicts ("partial: 10 of
    # 12 verdicts"): it reads like a full one otherwise.
    notes: dict[str, str] = field(default_factory=dict)


@dataclass
class Table:
    columns: list[str]
    rows: list[Row]
    # Lines shown under the table: components the runs skipped, with why (they have no column to say it in).
    notes: list[str] = field(default_factory=list)
    # How many paired tests vs sft the table's marks are corrected over (Holm).
    n_tests: int = 0

    def row(self, method: str, student: str) -> Row | None:
        """The row for (method, student), or None."""
        for r in self.rows:
            if r.method == method and r.student == student:
                return r
        return None


def _metric_values(metrics: object) -> dict[str, float]:
    """The finite numeric entries of a metrics dict; anything else counts as missing, not as zero."""
    if not isinstance(metrics, dict):
        return {}
    out = {}
    for key, value in metrics.items():
        # bool is an int subclass; a True metric is a bug upstream, not a 1.0.
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


def _aggregate(values: list[float]) -> Cell:
    std = statistics.stdev(values) if len(values) > 1 else None
    return Cell(mean=statistics.fmean(values), std=std, n=len(values))


def t95(dof: int) -> float:
    """The two-sided 5% critical value of Student's t with `dof` degrees of freedom (exact, from scipy: a table
    with 1.96 past its end is anti-conservative for 31-120 pairs and between its rows)."""
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def paired_verdicts(runs: dict, base: dict, keys: list[str], min_pairs: int = 3) -> dict[str, bool]:
    """Per metric: a paired t-test at 5% (two-sided) of the per-seed differences runs - base, over the seeds both
    have: is their mean more than t(0.975, n - 1) standard errors from zero? Absent with fewer than `min_pairs`
    pairs. One test, uncorrected: the table corrects over its cells (`paired_pvalues` + `holm`)."""
    out = {}
    for key in keys:
        diffs = [runs[s][key] - base[s][key] for s in runs.keys() & base.keys() if key in runs[s] and key in base[s]]
        if len(diffs) >= min_pairs:
            se = statistics.stdev(diffs) / math.sqrt(len(diffs))
            out[key] = abs(statistics.fmean(diffs)) > t95(len(diffs) - 1) * se
    return out


def paired_pvalues(runs: dict, base: dict, keys: list[str], min_pairs: int = 3) -> dict[str, float]:
    """Per metric: the two-sided p-value of a paired t-test (scipy.stats.ttest_rel) of runs vs base over the seeds
    both have; absent with fewer than `min_pairs` pairs. A zero-variance difference gives p = 0 when its mean is
    not 0 (every seed moved by the same amount), 1 when it is."""
    from scipy.stats import ttest_rel

    out = {}
    for key in keys:
        seeds = sorted((runs.keys() & base.keys()), key=str)
        pairs = [(runs[s][key], base[s][key]) for s in seeds if key in runs[s] and key in base[s]]
        if len(pairs) < min_pairs:
            continue
        a, b = zip(*pairs)
        diffs = [x - y for x, y in pairs]
        if statistics.pstdev(diffs) == 0:
            out[key] = 0.0 if statistics.fmean(diffs) != 0 else 1.0
        else:
            out[key] = float(ttest_rel(a, b).pvalue)
    return out


def holm(pvalues: dict, alpha: float = 0.05) -> dict:
    """Holm's step-down correction (Holm 1979): the family-wise error rate over all the tests stays <= alpha.
    Sorted ascending, the i-th p-value (from 0) is rejected while p <= alpha / (m - i); the first that is not
    stops the rejections. Returns {test: rejected}. (statsmodels' multipletests does the same; not worth its
    dependency tree for ten lines.)"""
    m = len(pvalues)
    out = {k: False for k in pvalues}
    for i, (key, p) in enumerate(sorted(pvalues.items(), key=lambda kv: kv[1])):
        if p > alpha / (m - i):
            break
        out[key] = True
    return out


def _method_key(method: str) -> tuple:
    # sft is the baseline every KD method is read against, so it sits first within each student.
    return (method != BASELINE_METHOD, method)


def build_table(results: list[RunRecord], metrics: list[str] | None = None) -> Table:
    """Aggregate collected results into a Table: teacher rows first, then students by size, then methods.

    `metrics=None` takes the union of metric keys over all results (student then teacher keys, first-seen
    order). A requested metric that no run reports still gets a column: it renders as missing, which is
    more honest than silently dropping it.
    """
    # group key -> {seed: metrics}; one entry per seed so a duplicated run cannot inflate n.
    groups: dict[tuple[str, str], dict[object, dict[str, float]]] = {}
    # (method, student) -> {seed: {metric: per-item values}} (results.json eval.items; student metrics only)
    items: dict[tuple[str, str], dict[object, dict[str, list]]] = {}
    teachers: dict[str, dict[object, dict[str, float]]] = {}
    student_params: dict[str, float] = {}
    seen_keys: dict[str, None] = {}  # ordered set

    for r in results:
        where, labels = r.path or "<result>", r.labels
        method, student, seed = str(labels.method), str(labels.student), labels.seed
        if str(labels.start or "scratch") != "scratch":
            # Said in the row: a method that started from the sft warm start is not the same row as one that did
            # not (gkd, distillm and minillm always do; an offline method does with method.warm_start=true).
            method = f"{method}+ws"

        values = _metric_values(r.metrics)
        teacher_values = _metric_values(r.teacher_metrics)
        for key in [*values, *teacher_values]:
            seen_keys.setdefault(key, None)

        per_item = (r.eval or {}).get("items")
        if isinstance(per_item, dict):
            items.setdefault((method, student), {}).setdefault(seed, per_item)
        seeds = groups.setdefault((method, student), {})
        if seed in seeds:
            # The same model twice: typically its training run and a later `kdbench-eval` of it with a larger
            # suite. Their metrics join into one row; a metric both report keeps the first value, and a clash
            # is said out loud (never averaged: that would count one seed twice).
            known = seeds[seed]
            clashes = sorted(k for k, v in values.items() if k in known and known[k] != v)
            if clashes:
                logger.warning("%s: method=%s student=%s seed=%s already has %s with other values; keeping the "
                               "first", where, method, student, seed, ", ".join(clashes[:5]))
            for k, v in values.items():
                known.setdefault(k, v)
        else:
            seeds[seed] = values
        params = labels.student_params
        if params is not None and student not in student_params:
            student_params[student] = params

        if teacher_values:
            teacher = labels.teacher
            if teacher is None:
                logger.warning("%s: teacher_metrics without labels.teacher; teacher row not counted", where)
            else:
                # Every run of a sweep repeats the same teacher evaluation; keep one per seed so the teacher
                # row aggregates over seeds like any other row instead of counting each method's copy.
                teachers.setdefault(str(teacher), {}).setdefault(seed, teacher_values)

    columns = list(metrics) if metrics is not None else list(seen_keys)

    def make_row(method: str, student: str, per_seed: dict[object, dict[str, float]]) -> Row:
        cells = {}
        for key in columns:
            vals = [m[key] for m in per_seed.values() if key in m]
            if vals:
                cells[key] = _aggregate(vals)
        return Row(method=method, student=student, n_seeds=len(per_seed), cells=cells)

    rows = [make_row(TEACHER_METHOD, name, per_seed) for name, per_seed in teachers.items()]

    def student_key(student: str) -> tuple:
        # Smaller students first (the survey reading order); unknown sizes after, by name.
        if student in student_params:
            return (0, student_params[student], student)
        return (1, 0, student)

    student_rows = [make_row(m, s, per_seed) for (m, s), per_seed in groups.items()]
    student_rows.sort(key=lambda row: (student_key(row.student), _method_key(row.method)))

    sft = {row.student: row for row in student_rows if row.method == BASELINE_METHOD}
    # Every cell's paired test vs sft, then one Holm correction over all of them: a table of many cells would
    # otherwise mark some by chance.
    pvalues: dict[tuple[int, str], float] = {}
    for i, row in enumerate(student_rows):
        base = sft.get(row.student)
        if base is None or row is base:
            continue
        row.delta_vs_sft = {key: cell.mean - base.cells[key].mean
                            for key, cell in row.cells.items() if key in base.cells}
        tested = paired_pvalues(groups[(row.method, row.student)], groups[(BASELINE_METHOD, row.student)],
                                list(row.delta_vs_sft))
        pvalues.update({(i, key): p for key, p in tested.items()})
    for (i, key), rejected in holm(pvalues).items():
        student_rows[i].clear_vs_sft[key] = rejected
    _item_intervals(student_rows, sft, items)

    for row in rows + student_rows:
        per_seed = (teachers if row.method == TEACHER_METHOD else groups).get(
            row.student if row.method == TEACHER_METHOD else (row.method, row.student), {})
        row.notes = judge_coverage_notes(per_seed, row.cells)
    return Table(columns=columns, rows=rows + student_rows, notes=judge_skip_notes(results), n_tests=len(pvalues))


def _one_seed_items(items: dict, row: Row) -> dict[str, list]:
    seeds = items.get((row.method, row.student), {})
    return next(iter(seeds.values())) if row.n_seeds == 1 and len(seeds) == 1 else {}


def _item_intervals(student_rows: list[Row], sft: dict[str, Row], items: dict) -> None:
    """Where a row has one seed: each cell's bootstrap CI over its test items and, against a one-seed sft of the
    same student over the same items, the paired CI of the change (reading order: the seed spread is unknown)."""
    from kdbench.report.intervals import bootstrap_ci, paired_bootstrap_ci

    for row in student_rows:
        own = _one_seed_items(items, row)
        for key, cell in row.cells.items():
            if key in own:
                cell.ci = bootstrap_ci(own[key])
        base = sft.get(row.student)
        base_items = _one_seed_items(items, base) if base is not None and base is not row else {}
        for key in row.delta_vs_sft:
            if key in own and key in base_items:
                ci = paired_bootstrap_ci(own[key], base_items[key])
                if ci is not None:
                    row.delta_ci[key] = ci


JUDGE_RATIO = "/judge/score_ratio"


def judge_coverage_notes(per_seed: dict[object, dict[str, float]], cells: dict[str, Cell]) -> dict[str, str]:
    """`<set>/judge/score_ratio` cells computed from fewer verdicts than were asked (failed or unparsable ones
    left out): "partial: n of N verdicts", summed over the seeds that reported the ratio."""
    notes = {}
    for key in cells:
        if not key.endswith(JUDGE_RATIO):
            continue
        prefix = key[:-len("score_ratio")]
        runs = [m for m in per_seed.values() if key in m and f"{prefix}n_requests" in m]
        parsed = sum(m.get(f"{prefix}n_parsed", 0.0) for m in runs)
        asked = sum(m[f"{prefix}n_requests"] for m in runs)
        if parsed < asked:
            notes[key] = f"partial: {parsed:g} of {asked:g} verdicts"
    return notes


def judge_skip_notes(results: list[RunRecord]) -> list[str]:
    """One line per distinct reason an LLM judge was skipped (results.json's eval.judge), with the runs."""
    runs_by_reason: dict[str, list[str]] = {}
    for r in results:
        judge = (r.eval or {}).get("judge")
        if isinstance(judge, dict) and judge.get("skipped"):
            run = f"method={r.labels.method} student={r.labels.student} seed={r.labels.seed}"
            runs_by_reason.setdefault(str(judge.get("reason") or "no reason recorded"), []).append(run)
    # A sweep may skip it in every cell: name a few runs, count the rest.
    return [f"LLM judge skipped: {reason} ({len(runs)} run(s): {'; '.join(runs[:5])}"
            + (f"; and {len(runs) - 5} more" if len(runs) > 5 else "") + ")"
            for reason, runs in runs_by_reason.items()]
