"""Classification sets: calibration of zero-shot label scoring (SST-2, BoolQ, the embedded `sentiment` family).

Each row becomes a prompt (MiniLLM's Alpaca template filled from the row's fields, or the embedded row's own
prompt) and a gold class index; the model's probabilities over the label words come from
kdbench.evaluation.calibration.score_labels, and accuracy, ECE, Brier and the reliability diagram from its
calibration_metrics. Values are fractions (ECE and accuracy in [0, 1], Brier in [0, 2]), not x 100.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from kdbench.data.datamodule import prompt_of
from kdbench.data.sources import DataError, load_records, load_rows
from kdbench.data.template import render_prompt
from kdbench.evaluation.calibration import calibration_metrics, score_labels
from kdbench.evaluation.generation_sets import effective_limit, source_with_limit


@dataclass
class ClassificationItems:
    prompts: list[str]
    labels: list[int]
    label_words: list[str]


def _fields(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f}


def _fill(template: str, row: dict, key: str, where: str) -> str:
    missing = sorted(_fields(template) - set(row))
    if missing:
        raise DataError(f"{where}: {key}={template!r} needs field(s) {missing}; the row has "
                        f"{sorted(k for k in row if not k.startswith('_'))}")
    return template.format(**{k: v for k, v in row.items()})


def label_index(value, label_words: list[str], where: str, key: str) -> int:
    """A row's gold class: a bool (False/True -> 0/1), an int index, or one of the label words."""
    if isinstance(value, bool):
        idx = int(value)
    elif isinstance(value, int):
        idx = value
    elif isinstance(value, str) and value.strip() in label_words:
        idx = label_words.index(value.strip())
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        idx = int(value.strip())
    else:
        raise DataError(f"{where}: {key} value {value!r} is not a class index, a bool or one of {label_words}")
    if not 0 <= idx < len(label_words):
        raise DataError(f"{where}: {key} value {value!r} is outside the {len(label_words)} labels {label_words}")
    return idx


def load_items(name: str, set_cfg, eval_cfg, embedded_cfg) -> ClassificationItems:
    """Prompts and gold labels of a classification set, at most min(set.limit, eval.limit) rows (counted after the
    category filter of an embedded set)."""
    c = set_cfg.classification
    words = [str(w) for w in c.label_words]
    limit = effective_limit(set_cfg.limit, eval_cfg.limit)
    key = f"eval.sets.{name}.classification"
    prompts, labels = [], []
    if set_cfg.source.kind == "embedded":
        rows = [r for r in load_rows(set_cfg.source, embedded_cfg) if r.get("category") == c.category]
        if not rows:
            raise DataError(f"{key}.category={c.category!r}: no row of the embedded {set_cfg.source.split} split "
                            "has that category")
        rows = rows[:limit] if limit is not None else rows
        for i, r in enumerate(rows):
            where = f"embedded {set_cfg.source.split} row {i}"
            fields = {**r, "text": r["input"]}
            if c.prompt:
                prompts.append(_fill(c.prompt, fields, f"{key}.prompt", where))
            elif c.instruction or c.input:
                prompts.append(render_prompt(_fill(c.instruction, fields, f"{key}.instruction", where),
                                             _fill(c.input, fields, f"{key}.input", where)))
            else:
                prompts.append(prompt_of(r))
            labels.append(label_index(r.get(c.label_column), words, where, f"{key}.label_column={c.label_column!r}"))
    else:
        for raw in load_records(source_with_limit(set_cfg.source, limit)):
            where = raw.get("_where", name)
            if c.label_column not in raw:
                raise DataError(f"{where}: the row has no {c.label_column!r} field ({key}.label_column); it has "
                                f"{sorted(k for k in raw if not k.startswith('_'))}")
            if c.prompt:
                prompts.append(_fill(c.prompt, raw, f"{key}.prompt", where))
            else:
                prompts.append(render_prompt(_fill(c.instruction, raw, f"{key}.instruction", where),
                                             _fill(c.input, raw, f"{key}.input", where)))
            labels.append(label_index(raw[c.label_column], words, where, f"{key}.label_column={c.label_column!r}"))
    return ClassificationItems(prompts, labels, words)


def evaluate_classification_set(name: str, items: ClassificationItems, set_cfg, eval_cfg, model,
                                tokenizer) -> tuple[dict[str, float], dict]:
    """(`<set>/accuracy`, `/ece`, `/brier`, `/n`, `/n_truncated_prompts`; the reliability diagram)."""
    n_truncated = sum(len(tokenizer(p, add_special_tokens=False)["input_ids"]) > eval_cfg.max_prompt_length
                      for p in items.prompts)
    probs = score_labels(model, tokenizer, items.prompts, items.label_words, batch_size=eval_cfg.score_batch_size,
                         max_prompt_length=eval_cfg.max_prompt_length)
    cal = calibration_metrics(probs, items.labels, n_bins=set_cfg.classification.n_bins)
    metrics = {f"{name}/accuracy": cal["accuracy"], f"{name}/ece": cal["ece"], f"{name}/brier": cal["brier"],
               f"{name}/n": cal["n"], f"{name}/n_truncated_prompts": n_truncated}
    return metrics, cal["reliability"]
