"""Report stage: hand-made results.json files in, tables out."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import statistics

import pytest

from kdbench.report import build_table, collect_results, render_markdown
from kdbench.report.cli import main
from kdbench.report.compare import holm, paired_pvalues, paired_verdicts, t95
from kdbench.report.render import render_csv

RL = "embedded_test/rouge_l"
EM = "embedded_test/exact_match"
TEACHER = {RL: 90.0, EM: 70.0}


def write_result(root, name, method="kd", student="tiny", seed=0, params=100_000, metrics=None,
                 teacher_metrics=TEACHER, status="complete", teacher="teacher-1M", start=None):
    """Write one results.json under root/name/ and return its path."""
    labels = {"method": method, "student": student, "teacher": teacher, "seed": seed}
    if start is not None:
        labels["start"] = start
    if params is not None:
        labels["student_params"] = params
    data = {"status": status, "labels": labels,
            "metrics": {RL: 40.0, EM: 20.0} if metrics is None else metrics}
    if teacher_metrics is not None:
        data["teacher_metrics"] = teacher_metrics
    path = root / name / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def table_for(root, metrics=None):
    return build_table(collect_results(root), metrics)


def body_lines(md):
    """The data rows of a markdown table, split into stripped cells."""
    lines = md.strip().splitlines()[2:]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


# --- aggregation -----------------------------------------------------------------------------------------

def test_two_seeds_mean_and_sample_std(tmp_path):
    write_result(tmp_path, "a", seed=0, metrics={RL: 40.0, EM: 20.0})
    write_result(tmp_path, "b", seed=1, metrics={RL: 44.0, EM: 20.0})
    table = table_for(tmp_path)
    cell = table.row("kd", "tiny").cells[RL]
    assert cell.n == 2
    assert cell.mean == pytest.approx(42.0)
    assert cell.std == pytest.approx(math.sqrt(8))  # ddof=1: ((2^2 + 2^2) / 1) ** 0.5
    assert table.row("kd", "tiny").cells[EM].std == pytest.approx(0.0)
    md = render_markdown(table)
    assert "42.0 ± 2.8" in md
    assert "20.0 ± 0.0" in md


def test_training_run_and_its_later_eval_join_into_one_row(tmp_path, caplog):
    """kdbench trains and scores the embedded test split; kdbench-eval of the same model adds DollyEval: one row,
    one seed, both sets' columns; a metric both report with different values keeps the first and warns."""
    write_result(tmp_path, "a_train", metrics={RL: 40.0, EM: 20.0})
    write_result(tmp_path, "b_eval", metrics={RL: 41.0, "dollyeval/rouge_l": 12.5})
    with caplog.at_level(logging.WARNING):
        table = table_for(tmp_path)
    row = table.row("kd", "tiny")
    assert row.n_seeds == 1
    assert row.cells[RL].mean == 40.0 and row.cells[RL].n == 1
    assert row.cells["dollyeval/rouge_l"].mean == 12.5 and row.cells[EM].mean == 20.0
    assert "already has embedded_test/rouge_l" in caplog.text


def test_a_warm_started_run_is_its_own_row(tmp_path):
    write_result(tmp_path, "a", method="kd", start="scratch", metrics={RL: 40.0, EM: 20.0})
    write_result(tmp_path, "b", method="kd", start="sft-warm-start-1000", metrics={RL: 45.0, EM: 25.0})
    table = table_for(tmp_path)
    assert table.row("kd", "tiny").cells[RL].mean == 40.0
    assert table.row("kd+ws", "tiny").cells[RL].mean == 45.0


def test_single_seed_has_no_std(tmp_path):
    write_result(tmp_path, "a", metrics={RL: 40.04, EM: 20.0})
    table = table_for(tmp_path)
    cell = table.row("kd", "tiny").cells[RL]
    assert cell.std is None and cell.n == 1
    row = body_lines(render_markdown(table))[1]
    assert row[:3] == ["kd", "tiny", "1"]
    assert row[3] == "40.0"
    assert "±" not in "".join(row)


def test_precision(tmp_path):
    write_result(tmp_path, "a", metrics={RL: 40.04, EM: 20.0})
    assert "40.04" in render_markdown(table_for(tmp_path), precision=2)


def test_teacher_row_once_and_first(tmp_path):
    # Two methods x two seeds all repeat the same teacher evaluation: one teacher row, one value per seed.
    for method in ("sft", "kd"):
        for seed in (0, 1):
            write_result(tmp_path, f"{method}-{seed}", method=method, seed=seed)
    table = table_for(tmp_path)
    teacher_rows = [r for r in table.rows if r.method == "teacher"]
    assert len(teacher_rows) == 1
    assert table.rows[0] is teacher_rows[0]
    assert teacher_rows[0].student == "teacher-1M"
    assert teacher_rows[0].n_seeds == 2
    assert teacher_rows[0].cells[RL].mean == pytest.approx(90.0)
    assert body_lines(render_markdown(table))[0][:3] == ["teacher", "teacher-1M", "2"]


def test_teacher_values_from_several_seeds_are_averaged(tmp_path):
    write_result(tmp_path, "a", seed=0, teacher_metrics={RL: 90.0})
    write_result(tmp_path, "b", seed=1, teacher_metrics={RL: 92.0})
    cell = table_for(tmp_path).row("teacher", "teacher-1M").cells[RL]
    assert (cell.mean, cell.n) == (pytest.approx(91.0), 2)


def test_no_teacher_metrics_means_no_teacher_row(tmp_path):
    write_result(tmp_path, "a", teacher_metrics=None)
    write_result(tmp_path, "b", method="sft", teacher_metrics={})
    assert all(r.method != "teacher" for r in table_for(tmp_path).rows)


def test_row_order(tmp_path):
    # Written in a scrambled order on purpose; params put "small" (1M) after "tiny" (100k) despite the names.
    write_result(tmp_path, "01", method="seqkd", student="small", params=1_000_000)
    write_result(tmp_path, "02", method="kd", student="tiny", params=100_000)
    write_result(tmp_path, "03", method="sft", student="small", params=1_000_000)
    write_result(tmp_path, "04", method="akl", student="tiny", params=100_000)
    write_result(tmp_path, "05", method="sft", student="tiny", params=100_000)
    write_result(tmp_path, "06", method="kd", student="small", params=1_000_000)
    write_result(tmp_path, "07", method="sft", student="zeta-unknown-size", params=None)
    write_result(tmp_path, "08", method="kd", student="alpha-unknown-size", params=None)
    order = [(r.method, r.student) for r in table_for(tmp_path).rows]
    assert order == [
        ("teacher", "teacher-1M"),
        ("sft", "tiny"), ("akl", "tiny"), ("kd", "tiny"),
        ("sft", "small"), ("kd", "small"), ("seqkd", "small"),
        ("kd", "alpha-unknown-size"),
        ("sft", "zeta-unknown-size"),
    ]


def test_metric_columns_default_union_in_first_seen_order(tmp_path):
    write_result(tmp_path, "a", metrics={RL: 40.0}, teacher_metrics={RL: 90.0})
    write_result(tmp_path, "b", method="sft", metrics={EM: 10.0, "embedded_test/extra": 1.0},
                 teacher_metrics={RL: 90.0})
    assert table_for(tmp_path).columns == [RL, EM, "embedded_test/extra"]
    assert table_for(tmp_path, metrics=[EM]).columns == [EM]


def test_missing_metric_renders_dash(tmp_path):
    write_result(tmp_path, "a", method="sft", metrics={RL: 40.0, EM: 20.0})
    write_result(tmp_path, "b", method="kd", metrics={RL: 45.0})  # no exact_match
    table = table_for(tmp_path)
    assert EM not in table.row("kd", "tiny").cells
    rows = {(r[0], r[1]): r for r in body_lines(render_markdown(table))}
    header = [c.strip() for c in render_markdown(table).splitlines()[0].strip("|").split("|")]
    assert rows[("kd", "tiny")][header.index(EM)] == "—"
    assert rows[("sft", "tiny")][header.index(EM)] == "20.0"


def test_cell_with_fewer_values_than_seeds_says_n(tmp_path):
    write_result(tmp_path, "a", seed=0, metrics={RL: 40.0, EM: 20.0})
    write_result(tmp_path, "b", seed=1, metrics={RL: 44.0})
    md = render_markdown(table_for(tmp_path))
    assert "20.0 (n=1)" in md
    assert "42.0 ± 2.8 |" in md


def test_delta_vs_sft(tmp_path):
    write_result(tmp_path, "sft0", method="sft", seed=0, metrics={RL: 40.0, EM: 20.0})
    write_result(tmp_path, "sft1", method="sft", seed=1, metrics={RL: 42.0, EM: 22.0})
    write_result(tmp_path, "kd0", method="kd", seed=0, metrics={RL: 45.0, EM: 19.0})
    write_result(tmp_path, "kd1", method="kd", seed=1, metrics={RL: 47.0})
    # A student with no sft row gets no delta.
    write_result(tmp_path, "other", method="kd", student="small", params=10**6, metrics={RL: 50.0})
    table = table_for(tmp_path)
    kd = table.row("kd", "tiny")
    assert kd.delta_vs_sft[RL] == pytest.approx(46.0 - 41.0)
    assert kd.delta_vs_sft[EM] == pytest.approx(19.0 - 21.0)
    assert table.row("sft", "tiny").delta_vs_sft == {}
    assert table.row("teacher", "teacher-1M").delta_vs_sft == {}
    assert table.row("kd", "small").delta_vs_sft == {}
    md = render_markdown(table, show_delta=True)
    assert "46.0 ± 1.4 (+5.0)" in md
    assert "(-2.0)" in md
    assert "(+" not in render_markdown(table)


# --- collection ------------------------------------------------------------------------------------------

def test_incomplete_and_corrupt_files_are_skipped(tmp_path, caplog):
    good = write_result(tmp_path, "good")
    write_result(tmp_path, "running", status="running")
    no_status = write_result(tmp_path, "nostatus")
    data = json.loads(no_status.read_text())
    del data["status"]
    no_status.write_text(json.dumps(data))
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "results.json").write_text('{"status": "complete", "labels": ')
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "results.json").write_text("[1, 2]")
    (tmp_path / "good" / "other.json").write_text('{"status": "complete"}')  # not a results.json
    with caplog.at_level(logging.WARNING):
        results = collect_results(tmp_path)
    assert [r.path for r in results] == [str(good)]
    warned = caplog.text
    for name in ("running", "nostatus", "corrupt", "list"):
        assert name in warned


def test_collect_recursive_sorted_and_errors(tmp_path):
    write_result(tmp_path, "b/deep/x", seed=1)
    write_result(tmp_path, "a", seed=0)
    assert [r.labels.seed for r in collect_results(tmp_path)] == [0, 1]
    assert collect_results(tmp_path / "a" / "..") != []
    (tmp_path / "empty").mkdir()
    assert collect_results(tmp_path / "empty") == []
    with pytest.raises(FileNotFoundError, match="nope"):
        collect_results(tmp_path / "nope")


def test_result_without_labels_is_skipped(tmp_path, caplog):
    write_result(tmp_path, "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "results.json").write_text(json.dumps({"status": "complete", "metrics": {RL: 1.0}}))
    with caplog.at_level(logging.WARNING):
        table = table_for(tmp_path)
    assert [(r.method, r.student) for r in table.rows] == [("teacher", "teacher-1M"), ("kd", "tiny")]
    assert "labels" in caplog.text


# --- CLI -------------------------------------------------------------------------------------------------

def make_sweep(root):
    for student, params in (("tiny", 100_000), ("small", 1_000_000)):
        for method in ("sft", "kd"):
            for seed in (0, 1):
                write_result(root, f"{student}/{method}/{seed}", method=method, student=student, params=params,
                             seed=seed, metrics={RL: 40.0 + seed * 4, EM: 20.0})


def test_cli_prints_all_rows(tmp_path, capsys):
    make_sweep(tmp_path)
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = body_lines(out)
    assert [(r[0], r[1]) for r in rows] == [("teacher", "teacher-1M"), ("sft", "tiny"), ("kd", "tiny"),
                                             ("sft", "small"), ("kd", "small")]
    assert out.splitlines()[0].startswith("| method | student | seeds |")
    assert all(r[2] == "2" for r in rows)
    assert "42.0 ± 2.8" in out


def test_cli_metrics_precision_and_out(tmp_path, capsys):
    make_sweep(tmp_path / "runs")
    out_file = tmp_path / "report.md"
    assert main([str(tmp_path / "runs"), "--metrics", f"{RL}", "--precision", "2", "--out", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert EM not in out and "42.00 ± 2.83" in out
    assert out_file.read_text() == out
    # No temp file left beside the report.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md", "runs"]


def test_cli_csv_parses(tmp_path, capsys):
    make_sweep(tmp_path)
    assert main([str(tmp_path), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert list(rows[0]) == ["method", "student", "n_seeds", f"{RL}_mean", f"{RL}_std", f"{EM}_mean", f"{EM}_std"]
    assert len(rows) == 5
    # The teacher was evaluated once per seed (0 and 1) with identical numbers: std 0, not missing.
    assert rows[0]["method"] == "teacher" and float(rows[0][f"{RL}_std"]) == 0.0
    kd_tiny = next(r for r in rows if (r["method"], r["student"]) == ("kd", "tiny"))
    assert float(kd_tiny[f"{RL}_mean"]) == pytest.approx(42.0)
    assert float(kd_tiny[f"{RL}_std"]) == pytest.approx(math.sqrt(8))
    assert kd_tiny["n_seeds"] == "2"


def test_render_csv_missing_cells_are_empty(tmp_path):
    write_result(tmp_path, "a", metrics={RL: 40.0})
    write_result(tmp_path, "b", method="sft", metrics={RL: 41.0, EM: 1.0})
    rows = list(csv.DictReader(io.StringIO(render_csv(table_for(tmp_path)))))
    kd = next(r for r in rows if r["method"] == "kd")
    assert kd[f"{EM}_mean"] == "" and kd[f"{EM}_std"] == ""


def test_cli_empty_dir_exits_1(tmp_path, capsys):
    write_result(tmp_path, "running", status="running")  # present but not complete: still nothing to report
    assert main([str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no complete results.json" in captured.err and str(tmp_path) in captured.err


def test_cli_missing_dir_exits_2(tmp_path, capsys):
    missing = tmp_path / "does-not-exist"
    assert main([str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_config_changes_ignores_volatile_and_added_keys():
    from kdbench.tracking.results import config_changes
    old = {"method": {"name": "kd", "alpha": 0.5}, "trainer": {"num_threads": 1, "max_steps": 10},
           "paths": {"output_root": "a"}, "data": {"embedded": {"version": 1}}}
    new = {"method": {"name": "kd", "alpha": 0.5, "chunk_size": 1024}, "trainer": {"num_threads": 2, "max_steps": 10},
           "paths": {"output_root": "b"}, "data": {"embedded": {"version": 2}}}
    assert config_changes(old, new) == ["data.embedded.version"]
    assert config_changes(old, old) == []
    new["trainer"]["max_steps"] = 20
    assert config_changes(old, new) == ["data.embedded.version", "trainer.max_steps"]


def test_a_change_vs_sft_is_marked_only_when_clear_of_seed_noise(tmp_path):
    # kd moves RL by +2, +3, +2.5 on seeds 0-2 (t = 8.7 > 4.30: clear), EM by +1, -1, +0.5 (not clear).
    for seed, (rl, em) in enumerate([(40.0, 20.0), (45.0, 25.0), (50.0, 22.0)]):
        write_result(tmp_path, f"sft{seed}", method="sft", seed=seed, metrics={RL: rl, EM: em})
    for seed, (rl, em) in enumerate([(42.0, 21.0), (48.0, 24.0), (52.5, 22.5)]):
        write_result(tmp_path, f"kd{seed}", method="kd", seed=seed, metrics={RL: rl, EM: em})
    kd = table_for(tmp_path).row("kd", "tiny")
    assert kd.clear_vs_sft == {RL: True, EM: False}
    md = render_markdown(table_for(tmp_path), show_delta=True)
    assert "(+2.5*)" in md and "(+0.2)" in md and "paired t-test" in md
    # A consistent but noisy change is not marked: +1, +3, +0.2 has t = 1.8.
    assert not paired_verdicts({0: {RL: 1.0}, 1: {RL: 3.0}, 2: {RL: 0.2}}, {s: {RL: 0.0} for s in range(3)}, [RL])[RL]
    # With two seeds there is no verdict either way.
    for name in ("sft2", "kd2"):
        (tmp_path / name / "results.json").unlink()
    assert table_for(tmp_path).row("kd", "tiny").clear_vs_sft == {}


def test_t_critical_values_are_exact_for_any_number_of_pairs():
    # Published two-sided 5% values; the old table returned 2.131 for 11 pairs (t(10) is 2.228, t(11) 2.201) and
    # 1.96 past 31 pairs, both too small (anti-conservative).
    for dof, value in ((1, 12.706), (2, 4.303), (10, 2.228), (11, 2.201), (40, 2.021), (120, 1.980)):
        assert t95(dof) == pytest.approx(value, abs=1e-3)
    assert t95(1000) > 1.96
    # At the edge, over 41 pairs (t(40) = 2.021): a mean difference of 2.1 standard errors is clear, one of 2.0 is
    # not (the table's 1.96 called both clear).
    n = 41
    base = {s: {RL: 0.0} for s in range(n)}
    noise = [(-1) ** s for s in range(n)]  # mean ~0, stdev ~1
    for k, clear in ((2.1, True), (2.0, False)):
        se = statistics.stdev(noise) / math.sqrt(n)
        shift = k * se - statistics.fmean(noise)
        runs = {s: {RL: noise[s] + shift} for s in range(n)}
        assert paired_verdicts(runs, base, [RL])[RL] is clear


def test_holm_rejects_step_down_against_alpha_over_the_tests_left():
    # Sorted 0.01, 0.03, 0.04 over m = 3: 0.01 <= 0.05/3 rejected; 0.03 > 0.05/2 stops; 0.04 is not rejected
    # although it is below 0.05/1 (step-down: nothing after the first acceptance).
    assert holm({"a": 0.04, "b": 0.01, "c": 0.03}) == {"a": False, "b": True, "c": False}
    assert holm({"a": 0.01, "b": 0.02, "c": 0.04}) == {"a": True, "b": True, "c": True}  # .0167, .025, .05
    assert holm({}) == {}


def test_paired_pvalues_are_scipys_paired_t_test():
    base = {s: {RL: 0.0} for s in range(3)}
    runs = {0: {RL: 1.0}, 1: {RL: 3.0}, 2: {RL: 0.2}}
    # t = mean / (sd / sqrt 3) = 1.4 / (1.4422 / 1.7321) = 1.6814 on 2 dof: p = 0.2347 (two-sided)
    assert paired_pvalues(runs, base, [RL])[RL] == pytest.approx(0.2347, abs=1e-3)
    assert paired_pvalues({s: {RL: 2.0} for s in range(3)}, base, [RL]) == {RL: 0.0}  # the same shift every seed
    assert paired_pvalues({s: {RL: 0.0} for s in range(3)}, base, [RL]) == {RL: 1.0}
    assert paired_pvalues({0: {RL: 1.0}, 1: {RL: 2.0}}, base, [RL]) == {}  # two pairs: no test


def test_the_table_corrects_its_marks_over_all_its_cells(tmp_path):
    # Each of kd, rkl and jsd alone passes an uncorrected 5% test on RL (p ~ 0.03-0.04), but three tests at
    # once do not survive Holm (the smallest needs p <= 0.0167).
    sft = [40.0, 45.0, 50.0]
    moves = {"kd": [1.1, 1.6, 2.1], "rkl": [1.1, 1.5, 1.9], "jsd": [1.2, 1.8, 2.4]}  # t = 5.5, 6.5, 5.2
    for seed, v in enumerate(sft):
        write_result(tmp_path, f"sft{seed}", method="sft", seed=seed, metrics={RL: v})
    for method, move in moves.items():
        for seed, (v, d) in enumerate(zip(sft, move)):
            write_result(tmp_path, f"{method}{seed}", method=method, seed=seed, metrics={RL: v + d})
    runs = {m: {s: {RL: sft[s] + d} for s, d in enumerate(move)} for m, move in moves.items()}
    base = {s: {RL: v} for s, v in enumerate(sft)}
    raw = {m: paired_pvalues(r, base, [RL])[RL] for m, r in runs.items()}
    assert all(0.0167 < p < 0.05 for p in raw.values()), raw
    assert all(paired_verdicts(r, base, [RL])[RL] for r in runs.values())  # each alone: marked
    table = table_for(tmp_path)
    assert table.n_tests == 3
    assert [table.row(m, "tiny").clear_vs_sft for m in moves] == [{RL: False}] * 3
    assert "*)" not in render_markdown(table, show_delta=True)  # no cell marked
    # One clear move among the three (the same shift on every seed: p = 0) keeps its mark after the correction.
    for seed, v in enumerate(sft):
        write_result(tmp_path, f"kd{seed}", method="kd", seed=seed, metrics={RL: v + 3.0})
    table = table_for(tmp_path)
    assert table.row("kd", "tiny").clear_vs_sft == {RL: True}
    assert "Holm-corrected over the table's 3 tests" in render_markdown(table, show_delta=True)


def _with_items(path, items):
    data = json.loads(path.read_text())
    data["eval"] = {"items": items}
    path.write_text(json.dumps(data))


def test_one_seed_cells_get_a_bootstrap_interval_over_test_items(tmp_path):
    from kdbench.report.intervals import bootstrap_ci, paired_bootstrap_ci

    # 0/1 exact-match items, mean 0.3 over 200: the percentile interval is about mean +- 1.96 sqrt(.3 .7 / 200).
    items = [1.0] * 60 + [0.0] * 140
    lo, hi = bootstrap_ci(items)
    half = 1.96 * math.sqrt(0.3 * 0.7 / 200)
    assert lo < 0.3 < hi and lo == pytest.approx(0.3 - half, abs=0.015) and hi == pytest.approx(0.3 + half, abs=0.015)
    assert bootstrap_ci(items) == (lo, hi)  # seeded: the same table every time
    assert bootstrap_ci([5.0] * 10) == (5.0, 5.0) and bootstrap_ci([1.0]) is None
    # Paired: a shift of +1 on every item has no spread at all; unequal lengths have no pairing.
    assert paired_bootstrap_ci([x + 1 for x in items], items) == (1.0, 1.0)
    assert paired_bootstrap_ci(items[:10], items) is None

    sft_items = [40.0, 42.0, 38.0, 41.0, 39.0, 40.0]
    kd_items = [42.0, 43.0, 41.0, 42.0, 40.0, 42.0]
    _with_items(write_result(tmp_path, "sft", method="sft", metrics={RL: statistics.fmean(sft_items)}),
                {RL: sft_items})
    _with_items(write_result(tmp_path, "kd", method="kd", metrics={RL: statistics.fmean(kd_items)}), {RL: kd_items})
    table = table_for(tmp_path, [RL])
    kd, sft = table.row("kd", "tiny"), table.row("sft", "tiny")
    assert kd.cells[RL].ci == bootstrap_ci(kd_items) and sft.cells[RL].ci == bootstrap_ci(sft_items)
    assert kd.delta_ci[RL] == paired_bootstrap_ci(kd_items, sft_items)
    assert 0 < kd.delta_ci[RL][0] < kd.delta_vs_sft[RL] < kd.delta_ci[RL][1]
    md = render_markdown(table, show_delta=True)
    lo, hi = kd.cells[RL].ci
    assert f"{kd.cells[RL].mean:.1f} [{lo:.1f}, {hi:.1f}]" in md and "bootstrap interval over the test items" in md
    # With two seeds the spread over seeds is shown instead, and no item interval.
    write_result(tmp_path, "kd1", method="kd", seed=1, metrics={RL: 43.0})
    assert table_for(tmp_path, [RL]).row("kd", "tiny").cells[RL].ci is None


def test_headline_metrics_include_the_truth_metrics_of_a_v5_run(tmp_path):
    from kdbench.report.run_table import headline_metrics

    metrics = {RL: 40.0, EM: 20.0, "embedded_test/sort/rouge_l": 1.0, "s/truth/forward_kl": 2.0,
               "s/truth/forward_kl_se": 0.1, "s/truth/precision": 0.9, "s/truth/recall": 0.5, "s/truth/n": 60,
               "s/story/truth/forward_kl": 9.0, "m/truth/calibration_mae": 0.1, "s/judge/score_ratio": 80.0}
    record = collect_results(write_result(tmp_path, "a", metrics=metrics).parent)[0]
    assert headline_metrics(record) == [RL, EM, "s/truth/forward_kl", "s/truth/precision", "s/truth/recall",
                                        "m/truth/calibration_mae", "s/judge/score_ratio"]
