"""The evaluation suite: every component an eval profile (conf/eval/) configures, over the student and the teacher
(the reference row), as flat metrics plus JSON-able details and figures.

    per model     generation sets (generation_sets.py: greedy text metrics, length buckets, Dist-4, repetition,
                  LM loss; MiniLLM's sampling profile), classification sets (classification_sets.py: accuracy,
                  ECE, Brier, reliability diagram), the LLM judge against the gold responses, metrics against
                  the true answer distribution where a set enables truth (truth_sets.py, embedded v5), lm-eval
                  tasks (the student only)
    per pair      teacher-student agreement on gold responses, ExAccErr (both need the teacher and a shared
                  tokenizer)
    figures       plots.py, next to results.json

Metric keys: `<set>/<metric>`, `<set>/<category>/<metric>`, `<set>/rouge_l@<bucket>`, `<set>/sampled/<metric>_mean`
and `_std`, `<set>/judge/score_ratio`, `agreement/forward_kl` and `agreement/top1`, `exposure_bias/exaccerr@<l>`
(with `R@<l>`, `eps@<l>`), `<set>/truth/<metric>` and `<set>/<family>/truth/<metric>`, `lm_eval/<task>/<metric>`.
A component that cannot run (no judge configured, no teacher, tokenizers that differ) is recorded in
`details["skipped"]` with the reason, never as a score.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from kdbench.data.datamodule import prompt_of
from kdbench.evaluation.generation_sets import (
    evaluate_generation_set,
    evaluate_sampled,
    load_set_rows,
    max_new_tokens,
    samples_of,
)

log = logging.getLogger(__name__)


@dataclass
class Model:
    """A model under evaluation. `fingerprint` names its weights for the generation cache (None: not cached)."""
    model: object
    tokenizer: object
    name: str
    fingerprint: str | None = None


@dataclass
class SuiteResult:
    metrics: dict[str, float] = field(default_factory=dict)
    teacher_metrics: dict[str, float] = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)
    # JSON-able: length buckets, reliability diagrams, the ExAccErr curve, judge reports, lm-eval metadata,
    # skipped components with their reasons, seconds per component.
    details: dict = field(default_factory=dict)
    # figure name -> PNG path
    plots: dict[str, str] = field(default_factory=dict)
    new_tokens: int = 0


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(vars(node))


def same_tokenizer(a, b) -> bool:
    return a is b or a.get_vocab() == b.get_vocab()


class _Clock:
    def __init__(self, seconds: dict):
        self.seconds = seconds

    def __call__(self, name: str):
        clock = self

        class _Timer:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                clock.seconds[name] = round(clock.seconds.get(name, 0.0) + time.perf_counter() - self.t0, 2)
                return False

        return _Timer()


def run_suite(student: Model, teacher: Model | None, eval_cfg, embedded_cfg, *, cache_dir: str | None = None,
              out_dir: str | Path | None = None, show_progress: bool = True,
              response_length: int | None = None) -> SuiteResult:
    """Evaluate `student` (and `teacher` as the reference row when eval.teacher) with every configured component.

    `teacher` may be given with eval.teacher false: the pair components (agreement, ExAccErr) still use it.
    Figures and lm-eval's data files go under `out_dir` (no figures without one). `response_length`: the
    max_response_length the models were trained with (data.max_response_length), for the truth metrics' scoring
    of answers as training encodes them (None: eval.max_response_length)."""
    from kdbench.evaluation.classification_sets import evaluate_classification_set, load_items
    from kdbench.evaluation.truth_sets import cached_evaluate_truth, load_truth_rows

    res = SuiteResult(details={"skipped": {}, "seconds": {}})
    skipped, clock = res.details["skipped"], _Clock(res.details["seconds"])
    roles = [("student", student, res.metrics)]
    if teacher is not None and eval_cfg.teacher:
        roles.append(("teacher", teacher, res.teacher_metrics))
    elif eval_cfg.teacher:
        skipped["teacher"] = "no teacher loaded: the reference row is left out"

    reachable = {n: s for n, s in eval_cfg.sets.items() if not _unreachable(n, s, skipped)}
    gen_sets = {n: s for n, s in reachable.items() if s.kind == "generation"}
    cls_sets = {n: s for n, s in reachable.items() if s.kind == "classification"}
    with clock("load_data"):
        rows = {n: _named(n, load_set_rows, s, eval_cfg, embedded_cfg) for n, s in gen_sets.items()}
        # Before any model runs (and before a v5 family's classification set finds no row of it): a set that
        # cannot have p* (data.embedded.version < 5) fails now, naming the keys, not after hours.
        truth = {n: _named(n, load_truth_rows, n, s, eval_cfg, embedded_cfg, rows.get(n))
                 for n, s in reachable.items() if s.truth.enabled}
        items = {n: _named(n, load_items, n, s, eval_cfg, embedded_cfg) for n, s in cls_sets.items()}
    sampled = list(gen_sets) if eval_cfg.sampling.sets is None else list(eval_cfg.sampling.sets)
    judge_cfg, judge_reason = _judge_config(eval_cfg)
    if judge_reason and any(s.judge for s in gen_sets.values()):
        skipped["judge"] = judge_reason
        res.details["judge"] = {"skipped": True, "reason": judge_reason}
        if (judge_cfg.backend or "none").lower() != "none":  # configured, yet it cannot run (an unset key)
            log.warning("LLM judge skipped: %s", judge_reason)

    buckets: dict[str, dict[str, dict]] = {}
    reliability: dict[str, dict[str, dict]] = {}
    for role, m, metrics in roles:
        cache = dict(cache_dir=cache_dir, fingerprint=m.fingerprint, show_progress=show_progress)
        for name, s in gen_sets.items():
            with clock(f"generation/{name}"):
                out = evaluate_generation_set(name, rows[name], s, eval_cfg, m.model, m.tokenizer, role, **cache)
            metrics.update(out.metrics)
            if role == "student":  # per-item scores: a one-seed report's bootstrap interval (report.intervals)
                res.details.setdefault("items", {}).update(out.items)
            res.new_tokens += out.new_tokens if role == "student" else 0
            res.samples += samples_of(name, rows[name], out.texts, role, eval_cfg.num_samples)
            if out.length_buckets is not None:
                buckets.setdefault(name, {})[role] = out.length_buckets
            if eval_cfg.sampling.enabled and name in sampled:
                with clock(f"sampling/{name}"):
                    some = rows[name][:eval_cfg.sampling.limit] if eval_cfg.sampling.limit else rows[name]
                    values, new = evaluate_sampled(name, some, s, eval_cfg, m.model, m.tokenizer, role, **cache)
                metrics.update(values)
                res.new_tokens += new if role == "student" else 0
            if s.judge and judge_reason is None:
                with clock(f"judge/{name}"):
                    metrics.update(_judge(name, rows[name], out.texts, judge_cfg, res.details, role))
        for name, s in cls_sets.items():
            with clock(f"classification/{name}"):
                values, diagram = evaluate_classification_set(name, items[name], s, eval_cfg, m.model, m.tokenizer)
            metrics.update(values)
            reliability.setdefault(name, {})[role] = diagram
        for name, truth_rows in truth.items():
            with clock(f"truth/{name}"):
                values, detail, hit = cached_evaluate_truth(cache_dir, m.fingerprint, name, truth_rows,
                                                            reachable[name], eval_cfg, m.model, m.tokenizer,
                                                            response_length)
            if hit:
                log.info("truth metrics of %s on %s: reused from the cache", role, name)
            metrics.update(values)
            res.details.setdefault("truth", {}).setdefault(name, {})[role] = detail
    if buckets:
        res.details["length_buckets"] = buckets
    if reliability:
        res.details["reliability"] = reliability

    _pair_components(student, teacher, eval_cfg, rows, res, clock)
    if eval_cfg.lm_eval.tasks:
        with clock("lm_eval"):
            _lm_eval(student, eval_cfg, embedded_cfg, out_dir, res)
    if eval_cfg.plots and out_dir is not None:
        with clock("plots"):
            _plots(res, Path(out_dir))
    return res


def _unreachable(name: str, s, skipped: dict) -> bool:
    """A hub set with no bundled copy and no local path, while the hub is off or cannot be reached: skipped with
    the reason (in details["skipped"] and on the console) instead of failing the whole evaluation offline."""
    from kdbench.data.bundled import hub_unavailable
    from kdbench.data.sources import is_local_file

    src = s.source
    if src.kind != "hf" or src.bundled or is_local_file(src):
        return False
    reason = hub_unavailable()
    if reason is None:
        return False
    skipped[name] = (f"not evaluated: {reason} and kdbench bundles no copy of {src.path!r}; give one with "
                     f"eval.sets.{name}.source.path=<file.jsonl>")
    log.warning("eval set %s %s", name, skipped[name])
    return True


def _named(name: str, load, *args):
    """Load a set's data; a data error names the set's config key (the source's own message names the file)."""
    from kdbench.data.sources import DataError

    try:
        return load(*args)
    except DataError as e:
        raise DataError(f"eval.sets.{name}: {e}") from None


# ------------------------------------------------------------------------------------------------------ judge


def _judge_config(eval_cfg):
    from kdbench.evaluation.judge import JudgeConfig, judge_skip_reason

    cfg = JudgeConfig.from_mapping(_plain(eval_cfg.judge))
    return cfg, judge_skip_reason(cfg)


def _judge(name: str, rows: list[dict], texts: list[str], judge_cfg, details: dict, role: str) -> dict:
    """MiniLLM's score ratio of `role`'s generations against the gold responses (the key, read from the
    environment variable the config names, goes into request headers only). More failed verdicts than
    eval.judge.max_failed_fraction raise JudgeFailedError: the run fails rather than report a ratio over the rest."""
    from kdbench.evaluation.judge import judge_pairwise, judge_question

    report = judge_pairwise([judge_question(r["instruction"], r["input"]) for r in rows],
                            [r["output"] for r in rows], texts, judge_cfg)
    details.setdefault("judge", {}).setdefault(role, {})[name] = report.to_dict(with_verdicts=False)
    return report.to_metrics(prefix=f"{name}/judge")


# ------------------------------------------------------------------------------------------------------ pairs


def _pair_components(student: Model, teacher: Model | None, eval_cfg, rows: dict, res: SuiteResult, clock) -> None:
    wanted = [k for k in ("agreement", "exposure_bias") if getattr(eval_cfg, k).enabled]
    if not wanted:
        return
    reason = None
    if teacher is None:
        reason = "no teacher loaded"
    elif not same_tokenizer(teacher.tokenizer, student.tokenizer):
        reason = "teacher and student tokenizers differ: token distributions cannot be compared"
    if reason:
        for k in wanted:
            res.details["skipped"][k] = reason
        return
    if eval_cfg.agreement.enabled:
        from kdbench.evaluation.agreement import teacher_student_agreement

        ag = eval_cfg.agreement
        sel = rows[ag.set][:ag.num_items] if ag.num_items else rows[ag.set]
        log.info("agreement: teacher and student on the gold responses of %s (%d rows)", ag.set, len(sel))
        with clock("agreement"):
            out = teacher_student_agreement(teacher.model, student.model, student.tokenizer,
                                            [prompt_of(r) for r in sel], [r["output"] for r in sel],
                                            batch_size=eval_cfg.score_batch_size,
                                            max_prompt_length=eval_cfg.max_prompt_length,
                                            max_response_length=eval_cfg.max_response_length)
        res.metrics.update({"agreement/forward_kl": out["forward_kl"], "agreement/top1": out["top1_agreement"],
                            "agreement/n_tokens": out["n_tokens"]})
        res.details["agreement"] = {"set": ag.set, "n_items": len(sel), **out}
    if eval_cfg.exposure_bias.enabled:
        from kdbench.evaluation.exposure_bias import exposure_bias

        eb = eval_cfg.exposure_bias
        prompts = [prompt_of(r) for r in rows[eb.set][:eb.num_prompts]]
        length = max_new_tokens(eb.max_new_tokens, eval_cfg)
        # The configured positions that fit, and always the curve's end (a quick run's short curve has a value).
        report_at = tuple(sorted({pos for pos in eb.report_at if pos <= length} | {length}))
        log.info("exposure bias: %d prompts of %s, %d sample(s) each of up to %d tokens from each model",
                 len(prompts), eb.set, eb.samples_per_prompt, length)
        with clock("exposure_bias"):
            curve = exposure_bias(teacher.model, student.model, student.tokenizer, prompts,
                                  max_new_tokens=length,
                                  samples_per_prompt=eb.samples_per_prompt, seed=eb.seed, batch_size=eb.batch_size,
                                  max_prompt_length=eval_cfg.max_prompt_length, average=eb.average,
                                  report_at=report_at)
        shown = reported_positions(report_at, curve["teacher_mean_length"], eb.within_teacher_length)
        for pos in shown:
            at = {k: curve[k][pos - 1] for k in ("R", "eps", "exaccerr")}
            res.metrics.update({f"exposure_bias/{k}@{pos}": v for k, v in at.items() if v is not None})
        # Beside the curve, how long each model's samples run: an ExAccErr past the teacher's length is mostly
        # a length difference.
        res.metrics.update({f"exposure_bias/{who}_mean_length": curve[f"{who}_mean_length"]
                            for who in ("student", "teacher")})
        res.details["exposure_bias"] = {"set": eb.set, "reported_at": shown, **curve}


def reported_positions(report_at, teacher_mean_length: float, within_teacher_length: bool) -> list[int]:
    """The curve positions that become metrics: the configured ones, or with within_teacher_length those up to
    the teacher's mean sample length plus that length (floored, at least 1) itself."""
    if not within_teacher_length:
        return sorted(report_at)
    limit = max(1, math.floor(teacher_mean_length))
    return sorted({p for p in report_at if p <= limit} | {min(limit, max(report_at))})


# ---------------------------------------------------------------------------------------------------- lm-eval


def lm_eval_task_data(eval_cfg, embedded_cfg, out_dir: Path) -> dict[str, str]:
    """task -> JSONL for kdbench's shipped tasks: eval.lm_eval.task_data first; kdbench_embedded gets the embedded
    test split written under out_dir; kdbench_sst2 / kdbench_boolq the sst2 / boolq sets' local file."""
    from kdbench.data.sources import embedded_splits, is_local_file
    from kdbench.evaluation.harness import write_jsonl

    data = dict(eval_cfg.lm_eval.task_data)
    tasks = list(eval_cfg.lm_eval.tasks)
    if "kdbench_embedded" in tasks and "kdbench_embedded" not in data:
        rows = [{k: r[k] for k in ("instruction", "input", "output", "category")}
                for r in embedded_splits(embedded_cfg)["test"]]
        data["kdbench_embedded"] = str(write_jsonl(rows, out_dir / "lm_eval" / "kdbench_embedded.jsonl"))
    for task, set_name in (("kdbench_sst2", "sst2"), ("kdbench_boolq", "boolq")):
        s = eval_cfg.sets.get(set_name)
        if task in tasks and task not in data and s is not None and is_local_file(s.source):
            data[task] = str(Path(s.source.path).expanduser().resolve())
    return data


def _lm_eval(student: Model, eval_cfg, embedded_cfg, out_dir, res: SuiteResult) -> None:
    from kdbench.evaluation.harness import run_lm_eval

    le = eval_cfg.lm_eval
    log.info("lm-eval on the student: %s (limit %s)", ", ".join(le.tasks), le.limit)
    out_dir = Path(out_dir) if out_dir is not None else Path(".")
    out = run_lm_eval(student.model, student.tokenizer, list(le.tasks), limit=le.limit, batch_size=le.batch_size,
                      num_fewshot=le.num_fewshot, include_path=le.include_path,
                      task_data=lm_eval_task_data(eval_cfg, embedded_cfg, out_dir), seed=0)
    res.details["lm_eval"] = out.pop("_meta", {})
    res.metrics.update({f"lm_eval/{k}": v for k, v in out.items() if not k.startswith("_")})


# ---------------------------------------------------------------------------------------------------- figures


def _plots(res: SuiteResult, out_dir: Path) -> None:
    from kdbench.evaluation import plots

    d = res.details
    if "exposure_bias" in d:
        res.plots["exaccerr"] = str(plots.plot_exaccerr(d["exposure_bias"], out_dir / "exaccerr.png",
                                                        f"ExAccErr on {d['exposure_bias']['set']}"))
    if "length_buckets" in d:
        res.plots["rouge_l_by_length"] = str(plots.plot_length_buckets(d["length_buckets"],
                                                                       out_dir / "rouge_l_by_length.png"))
    for name, roles in d.get("truth", {}).items():
        families = {f for detail in roles.values() for f in detail.get("validity", {})}
        for family in sorted(families):
            curves = {role: detail["validity"][family] for role, detail in roles.items()
                      if family in detail.get("validity", {})}
            res.plots[f"validity_{name}_{family}"] = str(plots.plot_validity(
                curves, out_dir / f"validity_{name}_{family}.png", f"Valid {family} prefixes against p*: {name}"))
    for name, by_role in d.get("reliability", {}).items():
        res.plots[f"reliability_{name}"] = str(plots.plot_reliability(by_role, out_dir / f"reliability_{name}.png",
                                                                      f"Reliability diagram: {name}"))
