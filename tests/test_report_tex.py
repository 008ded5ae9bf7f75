"""kdbench-report --format tex: results.json files in, LaTeX tables out (and, where pdflatex is installed, a PDF)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from test_report import EM, RL, _with_items, make_sweep, table_for, write_result

from kdbench.report.cli import main
from kdbench.report.tex import MISSING, better_direction, escape, render_minillm_table, render_tex

KL = "embedded_v5_test/truth/forward_kl"  # lower is better
HOSTILE = "a_b%c&d#e$f{g}h~i^j\\k<l>m|n[o]"
HOSTILE_TEX = (r"a\_b\%c\&d\#e\$f\{g\}h\textasciitilde{}i\textasciicircum{}j\textbackslash{}k\textless{}l"
               r"\textgreater{}m\textbar{}n{[}o{]}")
DOLLY_J, DOLLY_RL, SNI_RL = "dollyeval/judge/score_ratio", "dollyeval/rouge_l", "sni/rouge_l"


def body_rows(tex):
    """The data rows of a rendered tabular, split into cells; a \\midrule between them as the string 'midrule'."""
    lines = tex.splitlines()
    # The header's \midrule is the first after \toprule; data rows run from it to \bottomrule.
    start = lines.index(r"\midrule", lines.index(r"\toprule")) + 1
    body = lines[start:lines.index(r"\bottomrule")]
    return ["midrule" if line == r"\midrule" else [c.strip() for c in line.removesuffix(r"\\").split(" & ")]
            for line in body]


def data_rows(tex):
    """(student as printed, method as printed) -> cells, the student carried down its group like a reader does."""
    rows, student = {}, None
    for row in body_rows(tex):
        if row == "midrule":
            continue
        student = row[0] or student
        rows[(student, row[1])] = row[2:]
    return rows


def with_judge(path, judge):
    data = json.loads(path.read_text())
    data.setdefault("eval", {})["judge"] = judge
    path.write_text(json.dumps(data))


def three_seed_sweep(root):
    """Two students x sft, kd and a method with a hostile name, three seeds. kd beats sft on ROUGE-L (+3 every
    seed: clear after Holm) and on the lower-is-better KL (-0.2 every seed); sft has the best exact match."""
    for student, params in (("tiny", 100_000), ("small", 1_000_000)):
        for method, rl, em, kl in (("sft", 40.0, 25.0, 1.5), ("kd", 43.0, 20.0, 1.3), (HOSTILE, 41.0, 21.0, 1.6)):
            for seed in (0, 1, 2):
                write_result(root, f"{student}/{method}/{seed}", method=method, student=student,
                             params=params, seed=seed, metrics={RL: rl + seed, EM: em - seed, KL: kl + seed / 100})


# --- escaping ------------------------------------------------------------------------------------------------

def test_escape_prints_every_special_literally():
    assert escape(HOSTILE) == HOSTILE_TEX
    assert escape("two\n\nlines\tand\x07bell") == "two lines and bell"  # a blank line would end the cell


def test_hostile_names_notes_and_keys_are_escaped_in_both_layouts(tmp_path):
    path = write_result(tmp_path, "a", method=HOSTILE, student="s_1%", teacher="t&1",
                        metrics={RL: 40.0, f"{HOSTILE}/rouge_l": 3.0, DOLLY_RL: 20.0, DOLLY_J: 50.0,
                                 "dollyeval/judge/n_requests": 12, "dollyeval/judge/n_parsed": 10})
    write_result(tmp_path, "b", method="sft", student="s_1%", teacher="t&1", metrics={RL: 41.0, DOLLY_RL: 21.0})
    with_judge(path, {"skipped": True, "reason": "no key in $JUDGE_KEY & 100% {down}"})
    table = table_for(tmp_path)
    survey, minillm = render_tex(table), render_minillm_table(table)
    for tex in (survey, minillm):
        assert HOSTILE_TEX in tex and r"s\_1\%" in tex and r"t\&1" in tex
        assert HOSTILE not in tex
        assert r"no key in \$JUDGE\_KEY \& 100\% \{down\}" in tex  # the table's note (judge skipped)
        assert r"partial: 10 of 12 verdicts" in tex and r"\texttt{dollyeval/judge/score\_ratio}" in tex
    assert r"\multicolumn{1}{c}" not in survey and HOSTILE_TEX in survey.splitlines()[7]  # the set header row
    # The partial judge cell carries the dagger the legend explains.
    assert data_rows(minillm)[(r"s\_1\%", HOSTILE_TEX)][0].startswith(r"50.0$^{\dagger}$ / 20.0")


# --- the survey table ----------------------------------------------------------------------------------------

def test_better_direction_of_the_keys_kdbench_writes():
    higher = [RL, EM, "dollyeval/normalized_exact_match", DOLLY_J, "sst2/accuracy", "embedded_v5_test/truth/recall",
              "embedded_v5_test/story/truth/valid@20", "dollyeval/dist4", "agreement/top1",
              "dollyeval/sampled/rouge_l_mean", "dollyeval/rouge_l@11+", "lm_eval/boolq/acc"]
    lower = [KL, "agreement/forward_kl", "dollyeval/lm_loss", "sst2/ece", "sst2/brier", "embedded_v5_mood/truth/"
             "calibration_mae", "exposure_bias/exaccerr@10", "exposure_bias/R@10", "dollyeval/repetition",
             "dollyeval/judge/unparsable_rate", "lm_eval/wikitext/word_perplexity"]
    unranked = ["dollyeval/n", "dollyeval/n@0-5", "dollyeval/n_truncated_prompts", "dollyeval/judge/n_parsed",
                "dollyeval/sampled/rouge_l_std", "embedded_v5_test/truth/forward_kl_se", "agreement/n_tokens",
                "exposure_bias/student_mean_length", "dollyeval/judge/mean_reference"]
    assert [better_direction(k) for k in higher] == [1] * len(higher)
    assert [better_direction(k) for k in lower] == [-1] * len(lower)
    assert [better_direction(k) for k in unranked] == [None] * len(unranked)


def test_survey_layout_groups_students_and_bolds_the_best_per_group(tmp_path):
    three_seed_sweep(tmp_path)
    tex = render_tex(table_for(tmp_path))
    assert tex.startswith("\\begin{table}[t]\n") and tex.rstrip().endswith(r"\end{table}")
    assert r"\begin{tabular}{llrrr}" in tex and r"\caption{" in tex and r"\label{tab:kdbench}" in tex
    for rule in (r"\toprule", r"\bottomrule"):
        assert tex.count(rule) == 1
    # Set over metric: one \multicolumn over the embedded_test pair, the truth KL under its own set.
    assert r"\multicolumn{2}{c}{embedded\_test} & embedded\_v5\_test \\" in tex
    assert r"\cmidrule(lr){3-4} \cmidrule(lr){5-5}" in tex
    assert r"Student & Method & ROUGE-L $\uparrow$ & EM $\uparrow$ & KL vs.\ $p^{*}$ $\downarrow$ \\" in tex

    rows = body_rows(tex)
    # teacher | tiny (sft first) | small, each student named on its group's first row only.
    assert [r if r == "midrule" else r[:2] for r in rows] == [
        ["teacher-1M", "teacher"], "midrule",
        ["tiny", "sft"], ["", HOSTILE_TEX], ["", "kd"], "midrule",
        ["small", "sft"], ["", HOSTILE_TEX], ["", "kd"]]
    cells = data_rows(tex)
    for student in ("tiny", "small"):
        sft, kd, other = (cells[(student, m)] for m in ("sft", "kd", HOSTILE_TEX))
        # ROUGE-L (higher is better): kd's 44.0; exact match: sft's 24.0; KL (lower is better): kd's 1.3.
        assert kd[0] == r"\textbf{44.0}$^{*}$ $\pm$ 1.0" and sft[0] == r"41.0 $\pm$ 1.0"
        assert sft[1] == r"\textbf{24.0} $\pm$ 1.0" and r"\textbf" not in kd[1] + other[1]
        assert kd[2].startswith(r"\textbf{1.3}$^{*}$") and r"\textbf" not in sft[2] + other[2]
    # One teacher row: nothing to compare, nothing bold.
    assert r"\textbf" not in " ".join(cells[("teacher-1M", "teacher")])
    assert r"Holm-corrected over the table's 12 tests" in tex and r"3 seeds per row" in tex
    # A change down is typeset with a minus sign, not a hyphen.
    assert data_rows(render_tex(table_for(tmp_path), show_delta=True))[("tiny", "kd")][2] == \
        r"\textbf{1.3}$^{*}$ $\pm$ 0.0 {\scriptsize($-$0.2)}"


def test_ties_share_the_bold_and_a_column_of_equals_has_none(tmp_path):
    for method, rl, em in (("sft", 40.0, 20.0), ("kd", 42.0, 20.0), ("rkl", 42.04, 20.0)):
        write_result(tmp_path, method, method=method, metrics={RL: rl, EM: em})
    cells = data_rows(render_tex(table_for(tmp_path)))
    assert [cells[("tiny", m)][0] for m in ("sft", "kd", "rkl")] == ["40.0", r"\textbf{42.0}", r"\textbf{42.0}"]
    assert [cells[("tiny", m)][1] for m in ("sft", "kd", "rkl")] == ["20.0"] * 3
    # At two decimals the tie is broken.
    cells = data_rows(render_tex(table_for(tmp_path), precision=2))
    assert cells[("tiny", "kd")][0] == "42.00" and cells[("tiny", "rkl")][0] == r"\textbf{42.04}"


def test_one_seed_interval_missing_cells_seed_column_and_delta(tmp_path):
    sft_items, kd_items = [40.0, 42.0, 38.0, 41.0, 39.0, 40.0], [42.0, 43.0, 41.0, 42.0, 40.0, 42.0]
    _with_items(write_result(tmp_path, "sft", method="sft", metrics={RL: 40.0, EM: 10.0}), {RL: sft_items})
    _with_items(write_result(tmp_path, "kd", method="kd", metrics={RL: 41.67}), {RL: kd_items})
    write_result(tmp_path, "rkl0", method="rkl", seed=0, metrics={RL: 45.0, EM: 12.0})
    write_result(tmp_path, "rkl1", method="rkl", seed=1, metrics={RL: 47.0})
    table = table_for(tmp_path)
    tex = render_tex(table, show_delta=True)
    lo, hi = table.row("kd", "tiny").cells[RL].ci
    dlo, dhi = table.row("kd", "tiny").delta_ci[RL]
    cells = data_rows(tex)
    # Rows differ in seeds (1 and 2): a Seeds column.
    assert r"Student & Method & Seeds & ROUGE-L" in tex and r"\begin{tabular}{lllrr}" in tex
    assert cells[("tiny", "kd")] == ["1", f"41.7 {{[}}{lo:.1f}, {hi:.1f}{{]}} "
                                     f"{{\\scriptsize($+$1.7 {{[}}$+${dlo:.1f}, $+${dhi:.1f}{{]}})}}", MISSING]
    assert cells[("tiny", "rkl")][1:] == [r"\textbf{46.0} $\pm$ 1.4 {\scriptsize($+$6.0)}",
                                          r"\textbf{12.0} {\scriptsize($n$=1)} {\scriptsize($+$2.0)}"]
    assert "[lo, hi]: one seed" in tex and "($n$=k)" in tex and "No $^{*}$ marks" in tex


# --- MiniLLM's Table 1 ---------------------------------------------------------------------------------------

def test_minillm_layout_columns_and_judge_slash_rouge_cells(tmp_path):
    for method, judge, dolly, sni in (("sft", 50.0, 22.0, 30.0), ("kd", 55.0, 21.0, 31.5), ("minillm", 58.0, 23.5,
                                                                                             None)):
        for seed in (0, 1):
            metrics = {DOLLY_J: judge + seed, DOLLY_RL: dolly + seed, "selfinst/rouge_l": 10.0 + seed}
            if sni is not None:
                metrics[SNI_RL] = sni
            write_result(tmp_path, f"{method}{seed}", method=method, seed=seed, metrics=metrics,
                         teacher_metrics={DOLLY_J: 70.0, DOLLY_RL: 27.0})
    tex = render_minillm_table(table_for(tmp_path))
    assert r"Student & Method & DollyEval & SelfInst & VicunaEval & S-NI & UnNI \\" in tex
    assert r"\begin{tabular}{llrrrrr}" in tex and r"\label{tab:kdbench-minillm}" in tex
    cells = data_rows(tex)
    assert cells[("teacher-1M", "teacher")] == ["70.0 / 27.0", MISSING, MISSING, MISSING, MISSING]
    assert cells[("tiny", "sft")] == ["50.5 / 22.5", "10.5", MISSING, "30.0", MISSING]
    assert cells[("tiny", "kd")] == ["55.5 / 21.5", "10.5", MISSING, r"\textbf{31.5}", MISSING]
    # The judge and ROUGE-L are bold separately: minillm has both best on DollyEval; no S-NI run: ---.
    assert cells[("tiny", "minillm")] == [r"\textbf{58.5} / \textbf{24.0}", "10.5", MISSING, MISSING, MISSING]
    assert "LLM-judge score / ROUGE-L" in tex and "Means over seeds (2 seeds per row)" in tex
    assert "UnNI (1--2" not in tex  # no run reports the short-answer UnNI set: no column for it

    write_result(tmp_path, "short", method="sft", seed=0, metrics={"unni_short/rouge_l": 61.0})
    tex = render_minillm_table(table_for(tmp_path))
    assert r"& S-NI & UnNI & UnNI (1--2 words) \\" in tex and "not MiniLLM's UnNI" in tex
    # One of sft's two seeds reported it: said in the cell, as in the survey table.
    assert data_rows(tex)[("tiny", "sft")][-2:] == [MISSING, r"61.0 {\scriptsize($n$=1)}"]
    assert "($n$=k): only k of the row's seeds" in tex


# --- CLI -----------------------------------------------------------------------------------------------------

def test_cli_tex_writes_the_table_to_out(tmp_path, capsys):
    make_sweep(tmp_path / "runs")
    out_file = tmp_path / "paper" / "table.tex"
    assert main([str(tmp_path / "runs"), "--format", "tex", "--precision", "2", "--out", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert out_file.read_text() == out and out == render_tex(table_for(tmp_path / "runs"), precision=2)
    assert r"\toprule" in out and r"42.00 $\pm$ 2.83" in out
    assert sorted(p.name for p in out_file.parent.iterdir()) == ["table.tex"]  # no temp file left beside it

    minillm_file = tmp_path / "minillm.tex"
    for seed in (0, 1):
        write_result(tmp_path / "runs", f"dolly/{seed}", method="kd", student="tiny", seed=seed,
                     metrics={DOLLY_J: 55.0, DOLLY_RL: 21.0})
    assert main([str(tmp_path / "runs"), "--format", "tex", "--layout", "minillm", "--out", str(minillm_file)]) == 0
    out = capsys.readouterr().out
    assert minillm_file.read_text() == out and "DollyEval & SelfInst" in out
    assert data_rows(out)[("tiny", "kd")][0] == "55.0 / 21.0"


@pytest.mark.parametrize("argv, message", [
    (["--layout", "minillm"], "--layout minillm needs --format tex (got --format md)"),
    (["--format", "csv", "--layout", "minillm"], "--layout minillm needs --format tex (got --format csv)"),
    (["--format", "tex", "--layout", "minillm", "--delta"], "--layout minillm has no room"),
    (["--format", "tex", "--layout", "minillm", "--metrics", RL], "--layout minillm has fixed columns"),
    (["--format", "tex", "--layout", "ieee"], "invalid choice: 'ieee'"),
])
def test_cli_rejects_a_layout_it_cannot_honour(tmp_path, capsys, argv, message):
    make_sweep(tmp_path / "runs")
    out_file = tmp_path / "t.tex"
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "runs"), *argv, "--out", str(out_file)])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""
    assert not out_file.exists()


# --- it compiles ---------------------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("pdflatex") is None,
                    reason="pdflatex not installed (apt-get install texlive-latex-base texlive-latex-recommended)")
@pytest.mark.parametrize("layout", ["survey", "survey-delta", "minillm"])
def test_the_tables_compile_with_pdflatex(tmp_path, layout):
    runs = tmp_path / "runs"
    three_seed_sweep(runs)
    judged = write_result(runs, "judged", method="kd", student="tiny", seed=3,
                          metrics={DOLLY_J: 50.0, DOLLY_RL: 20.0, SNI_RL: 30.0, "dollyeval/judge/n_requests": 12,
                                   "dollyeval/judge/n_parsed": 10})
    with_judge(judged, {"skipped": True, "reason": "no key in $JUDGE_KEY & 100% {down} ~^\\"})
    table = table_for(runs)
    tex = {"survey": lambda: render_tex(table), "survey-delta": lambda: render_tex(table, show_delta=True),
           "minillm": lambda: render_minillm_table(table)}[layout]()
    (tmp_path / "table.tex").write_text(tex)
    (tmp_path / "doc.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                                      "\\input{table.tex}\n\\end{document}\n")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 1000
    log = (tmp_path / "doc.log").read_text(errors="replace")
    assert "! " not in log and "Undefined control sequence" not in log
