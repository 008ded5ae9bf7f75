"""Render a Table as LaTeX for a paper: a booktabs `table` float in the survey's form (students grouped by size,
the best value per student in bold, marks where a change vs sft is clear of seed noise, a legend under it), and
MiniLLM's Table-1 layout (one column per instruction-following set, "judge / ROUGE-L" cells).

The output needs `\\usepackage{booktabs}` in the preamble and nothing else. Every string that comes from results
(method, student and teacher names, metric keys, notes) goes through `escape`; `caption` is LaTeX source from the
caller and is written as given.
"""

from __future__ import annotations

from collections.abc import Iterable

from kdbench.report.compare import TEACHER_METHOD, Cell, Row, Table

MISSING = "---"  # an em dash in LaTeX, like the "—" of the markdown table

# LaTeX's ten specials, plus what the default OT1 font encoding prints as other glyphs (< > | become ¡ ¿ —) and
# brackets, which right after a row's `\\` would be read as its optional argument.
_ESCAPES = {
    "\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "%": r"\%", "#": r"\#",
    "_": r"\_", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}", "[": "{[}", "]": "{]}",
}


def escape(text: object) -> str:
    """`text` as LaTeX that prints it literally. Whitespace runs and control characters become one space: a blank
    line is a paragraph break, which ends a table cell with an error."""
    words = "".join(c if c.isprintable() else " " for c in str(text)).split()
    return " ".join("".join(_ESCAPES.get(c, c) for c in word) for word in words)


# --- which way is better -------------------------------------------------------------------------------------

# A metric's name is the last part of its key without an "@<position or bucket>" and a "_mean" suffix
# (`exposure_bias/exaccerr@10` -> exaccerr, `dollyeval/sampled/rouge_l_mean` -> rouge_l). These names are losses,
# errors, divergences or rates of a defect: lower is better. Every other metric kdbench writes (ROUGE-L, exact
# match, accuracy, judge score ratio, precision, recall, validity, Dist-4, top-1 agreement, lm-eval acc) is a
# score: higher is better.
LOWER_IS_BETTER = frozenset({
    "forward_kl",  # <set>/truth/forward_kl (KL to the true distribution p*), agreement/forward_kl
    "lm_loss", "ece", "brier", "calibration_mae",
    "exaccerr", "R", "eps",  # exposure_bias/<name>@<l>: ExAccErr and the accumulated KLs it is made of
    "repetition", "unparsable_rate",
    "perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte",  # lm-eval's likelihood tasks
})
# Counts and spreads describe a measurement, not a model: no best value.
_UNRANKED = frozenset({"mean_reference", "student_mean_length", "teacher_mean_length"})
_SPREAD_SUFFIXES = ("_std", "_se", "_stderr")


def metric_name(key: str) -> str:
    name = key.rsplit("/", 1)[-1].split("@", 1)[0]
    return name.removesuffix("_mean")


def better_direction(key: str) -> int | None:
    """+1 where higher is better, -1 where lower is, None for counts and spreads (never bold)."""
    raw = key.rsplit("/", 1)[-1].split("@", 1)[0]
    if raw == "n" or raw.startswith("n_") or raw.endswith(_SPREAD_SUFFIXES) or raw in _UNRANKED:
        return None
    return -1 if metric_name(key) in LOWER_IS_BETTER else 1


# --- headers -------------------------------------------------------------------------------------------------

SET_NAMES = {"dollyeval": "DollyEval", "selfinst": "SelfInst", "vicunaeval": "VicunaEval", "sni": "S-NI",
             "unni": "UnNI", "unni_short": "UnNI (1--2 words)", "agreement": "Agreement",
             "exposure_bias": "Exposure bias", "lm_eval": "lm-eval"}
_PART_NAMES = {"rouge_l": "ROUGE-L", "exact_match": "EM", "normalized_exact_match": "EM", "accuracy": "Acc.",
               "ece": "ECE", "brier": "Brier", "forward_kl": "KL", "calibration_mae": "Cal.\\ MAE",
               "precision": "Prec.", "greedy_precision": "Greedy prec.", "recall": "Rec.", "valid": "Valid",
               "lm_loss": "LM loss", "dist4": "Dist-4", "repetition": "Rep.", "top1": "Top-1",
               "exaccerr": "ExAccErr", "judge": "Judge", "score_ratio": "", "sampled": "sampled"}


def set_name(key: str) -> str:
    """The header over a key's set (its first part), '' for a key without one."""
    head = key.split("/", 1)[0] if "/" in key else ""
    return SET_NAMES.get(head, escape(head))


def metric_header(key: str) -> str:
    """A short header for the rest of the key and its better direction (`truth/forward_kl`: KL vs. p*, down)."""
    rest = key.split("/", 1)[1] if "/" in key else key
    rest, _, at = rest.partition("@")
    parts, against_truth = [], False
    for part in rest.split("/"):
        if part == "truth":  # said after the metric: "KL vs. p*", not "p* KL"
            against_truth = True
            continue
        base = part.removesuffix("_mean")
        shown = _PART_NAMES[base] if base in _PART_NAMES else escape(part)
        if base != part and base in _PART_NAMES:
            shown += " (mean)"
        if shown:
            parts.append(shown)
    text = " ".join(parts) + (f"@{escape(at)}" if at else "") + (r" vs.\ $p^{*}$" if against_truth else "")
    arrow = {1: r" $\uparrow$", -1: r" $\downarrow$"}.get(better_direction(key), "")
    return text + arrow


# --- cells ---------------------------------------------------------------------------------------------------

def _num(value: float, precision: int, signed: bool = False) -> str:
    text = f"{value:+.{precision}f}" if signed else f"{value:.{precision}f}"
    # A text-mode hyphen is shorter than a minus sign.
    return text.replace("-", "$-$", 1) if text.startswith("-") else text.replace("+", "$+$", 1)


def _groups(rows: list[Row]) -> list[list[Row]]:
    """Consecutive rows of one student (build_table sorts students by size, so groups are sizes); a teacher row
    is its own group even where a student has the teacher's name."""
    groups: list[list[Row]] = []
    for row in rows:
        key = (row.method == TEACHER_METHOD, row.student)
        if groups and (groups[-1][0].method == TEACHER_METHOD, groups[-1][0].student) == key:
            groups[-1].append(row)
        else:
            groups.append([row])
    return groups


def _best(group: list[Row], key: str, precision: int) -> set[int]:
    """The ids of the rows holding the best value of `key` in a group, compared as printed (ties share the bold).
    None where the metric has no better direction, or where no row stands out: fewer than two values, or all
    equal as printed."""
    direction = better_direction(key)
    shown = {id(row): round(row.cells[key].mean, precision) for row in group if key in row.cells}
    if direction is None or len(set(shown.values())) < 2:
        return set()
    best = max(shown.values()) if direction > 0 else min(shown.values())
    return {row_id for row_id, value in shown.items() if value == best}


def _mean_text(row: Row, key: str, precision: int, bold: bool) -> str:
    text = _num(row.cells[key].mean, precision)
    text = rf"\textbf{{{text}}}" if bold else text
    if row.clear_vs_sft.get(key):
        text += "$^{*}$"
    if key in row.notes:
        text += r"$^{\dagger}$"
    return text


def _seeds_short(row: Row, cell: Cell) -> str:
    # Fewer values than the row has seeds: the mean (and spread) do not cover every seed.
    return rf" {{\scriptsize($n$={cell.n})}}" if cell.n != row.n_seeds else ""


def _survey_cell(row: Row, key: str, precision: int, show_delta: bool, bold: bool) -> str:
    cell: Cell | None = row.cells.get(key)
    if cell is None:
        return MISSING
    text = _mean_text(row, key, precision, bold)
    if cell.std is not None:
        text += rf" $\pm$ {_num(cell.std, precision)}"
    elif cell.ci is not None:
        text += f" {{[}}{_num(cell.ci[0], precision)}, {_num(cell.ci[1], precision)}{{]}}"
    text += _seeds_short(row, cell)
    if show_delta and key in row.delta_vs_sft:
        delta = _num(row.delta_vs_sft[key], precision, signed=True)
        ci = row.delta_ci.get(key)
        interval = f" {{[}}{_num(ci[0], precision, True)}, {_num(ci[1], precision, True)}{{]}}" if ci else ""
        text += rf" {{\scriptsize({delta}{interval})}}"
    return text


# --- shared layout -------------------------------------------------------------------------------------------

def _legend_lines(table: Table, keys: list[str], spread: bool, directions: bool) -> list[str]:
    """The lines under a table: what its numbers, bold, marks and daggers mean, and the table's own notes."""
    rows = table.rows
    cells = [(row, row.cells[key]) for row in rows for key in keys if key in row.cells]
    seeds = sorted({row.n_seeds for row in rows})
    per_row = (f"{seeds[0]} seed{'s' if seeds[0] != 1 else ''} per row" if len(seeds) == 1
               else "the Seeds column says how many per row" if seeds else "no rows")
    if spread and any(cell.std is not None for _, cell in cells):
        line = rf"Mean $\pm$ sample standard deviation over seeds ({per_row})."
    else:
        line = f"Means over seeds ({per_row})."
    if spread and any(cell.std is None and cell.ci is not None for _, cell in cells):
        line += r" [lo, hi]: one seed, a 95\% percentile bootstrap interval of the mean over the test items."
    if any(cell.n != row.n_seeds for row, cell in cells):
        line += r" ($n$=k): only k of the row's seeds reported the metric."
    lines = [line]
    lines.append(r"Bold: the best value among one student's methods" + (
        r" ($\uparrow$ higher is better, $\downarrow$ lower is better)." if directions else "."))
    if table.n_tests:
        lines.append(r"$^{*}$: the change vs.\ the same student's SFT is clear of seed noise: a paired $t$-test "
                     r"over the seeds both share, two-sided, 5\%, at least 3 seeds, Holm-corrected over the "
                     f"table's {table.n_tests} tests.")
    else:
        lines.append(r"No $^{*}$ marks: a paired $t$-test vs.\ the same student's SFT needs at least 3 seeds "
                     "shared with it, and no row has them.")
    for row in rows:
        for key, note in row.notes.items():
            if key in keys:
                lines.append(rf"$^{{\dagger}}$ {escape(row.method)}, {escape(row.student)}, "
                             rf"\texttt{{{escape(key)}}}: {escape(note)}.")
    lines += [escape(note) for note in table.notes]
    return lines


def _float(caption: str, label: str, spec: str, head: list[str], body: list[str], legend: list[str]) -> str:
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{caption}}}", rf"\label{{{label}}}",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule", *head, r"\midrule", *body, r"\bottomrule",
             r"\end{tabular}", r"\par\smallskip", r"{\footnotesize\raggedright"]
    lines += [line + r"\par" for line in legend]
    lines += ["}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _body(table: Table, cells_of) -> list[str]:
    """One line per row; a \\midrule between student groups, the student named on its group's first row."""
    body = []
    for g, group in enumerate(_groups(table.rows)):
        if g:
            body.append(r"\midrule")
        for i, row in enumerate(group):
            labels = [escape(row.student) if i == 0 else "", escape(row.method)]
            body.append(" & ".join([*labels, *cells_of(row, group)]) + r" \\")
    return body


# --- the survey table ----------------------------------------------------------------------------------------

def render_tex(table: Table, precision: int = 1, show_delta: bool = False,
               caption: str = "Distillation methods compared by kdbench.", label: str = "tab:kdbench") -> str:
    """A booktabs table: Student | Method | [Seeds] | one column per metric key, headed by its set over its metric
    (a \\multicolumn over each run of keys from one set); cells `mean $\\pm$ std`, or `mean [lo, hi]` for one seed
    with an item interval, and with `show_delta` the change vs the student's sft."""
    columns = list(table.columns)
    seeds_column = len({row.n_seeds for row in table.rows}) > 1
    label_cols = ["Student", "Method", *(["Seeds"] if seeds_column else [])]

    runs: list[tuple[str, int]] = []  # (set header, how many consecutive columns)
    for key in columns:
        name = set_name(key)
        if runs and runs[-1][0] == name:
            runs[-1] = (name, runs[-1][1] + 1)
        else:
            runs.append((name, 1))
    head = []
    if any(name for name, _ in runs):
        top, rules, col = [""] * len(label_cols), [], len(label_cols) + 1
        for name, width in runs:
            top.append(rf"\multicolumn{{{width}}}{{c}}{{{name}}}" if width > 1 else name)
            if name:
                rules.append(rf"\cmidrule(lr){{{col}-{col + width - 1}}}")
            col += width
        head += [" & ".join(top) + r" \\", " ".join(rules)]
    head.append(" & ".join([*label_cols, *(metric_header(key) for key in columns)]) + r" \\")

    def cells_of(row: Row, group: list[Row]) -> list[str]:
        seeds = [str(row.n_seeds)] if seeds_column else []
        return seeds + [_survey_cell(row, key, precision, show_delta, id(row) in _best(group, key, precision))
                        for key in columns]

    body = _body(table, cells_of)
    legend = _legend_lines(table, columns, spread=True, directions=True)
    if show_delta:
        delta = "In small type: the change of the mean vs.\\ the same student's SFT"
        if any(row.delta_ci for row in table.rows):
            delta += "; beside it for one seed, its paired 95\\% bootstrap interval over the same items"
        legend.insert(1, delta + ".")
    spec = "l" * len(label_cols) + "r" * len(columns)
    return _float(caption, label, spec, head, body, legend)


# --- MiniLLM's Table 1 ---------------------------------------------------------------------------------------

# MiniLLM (Gu et al., 2024), Table 1: the sets in its order, with kdbench's eval_set names (conf/eval_set/). Its
# UnNI is the 11+ token set, kdbench's `unni`; `unni_short` (1-2 word answers) gets its own column when reported.
# Their column titles are SET_NAMES'.
MINILLM_SETS = ("dollyeval", "selfinst", "vicunaeval", "sni", "unni")
EXTRA_SETS = ("unni_short",)
JUDGE_KEY = "{}/judge/score_ratio"  # kdbench.evaluation.judge: 100 x candidate / reference score (MiniLLM's GPT-4)
ROUGE_KEY = "{}/rouge_l"


def _minillm_sets(reported: Iterable[str]) -> list[str]:
    reported = set(reported)
    return list(MINILLM_SETS) + [name for name in EXTRA_SETS
                                 if {JUDGE_KEY.format(name), ROUGE_KEY.format(name)} & reported]


def minillm_keys(reported: Iterable[str]) -> list[str]:
    """The metric keys the MiniLLM layout shows, given the keys the runs report (for build_table's `metrics`)."""
    return [key.format(name) for name in _minillm_sets(reported) for key in (JUDGE_KEY, ROUGE_KEY)]


def render_minillm_table(table: Table, precision: int = 1,
                         caption: str = "Instruction following, in MiniLLM's Table 1 layout (kdbench).",
                         label: str = "tab:kdbench-minillm") -> str:
    """Student | Method | DollyEval | SelfInst | VicunaEval | S-NI | UnNI: cells `judge / ROUGE-L` (means over
    seeds) where an LLM judge scored the set, ROUGE-L alone where none did, --- where the row has neither. The best
    judge score and the best ROUGE-L of each student are bold separately."""
    sets = _minillm_sets(key for row in table.rows for key in row.cells)

    def cells_of(row: Row, group: list[Row]) -> list[str]:
        out = []
        for name in sets:
            parts = [key for key in (JUDGE_KEY.format(name), ROUGE_KEY.format(name)) if key in row.cells]
            if not parts:
                out.append(MISSING)
                continue
            shown = [_mean_text(row, key, precision, id(row) in _best(group, key, precision))
                     + _seeds_short(row, row.cells[key]) for key in parts]
            if parts == [JUDGE_KEY.format(name)]:  # a judge score without ROUGE-L: keep the cell's form
                shown.append(MISSING)
            out.append(" / ".join(shown))
        return out

    head = [" & ".join(["Student", "Method", *(SET_NAMES[name] for name in sets)]) + r" \\"]
    body = _body(table, cells_of)
    keys = minillm_keys(key for row in table.rows for key in row.cells)
    legend = [r"Cells: LLM-judge score / ROUGE-L where a judge scored the set, else ROUGE-L; the judge score is "
              r"100 $\times$ the judge's total for the student's answers over its total for the reference "
              r"answers (MiniLLM's GPT-4 feedback score). " + MISSING + ": not evaluated.",
              *_legend_lines(table, keys, spread=False, directions=False)]
    if "unni_short" in sets:
        legend.insert(1, "UnNI (1--2 words): Unnatural Instructions items with 1--2 word references, not "
                         "MiniLLM's UnNI (references of 11+ tokens).")
    return _float(caption, label, "ll" + "r" * len(sets), head, body, legend)
