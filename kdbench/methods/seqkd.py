"""Sequence-level KD (Kim & Rush 2016; the "SeqKD" baseline of MiniLLM and the KD surveys): the teacher answers
the training prompts, and the student is fine-tuned on those answers with the ordinary cross-entropy, exactly as
`sft` trains on the ground truth. Only text passes from teacher to student, so it is a black-box method: any
teacher (a local model, later an API) and a student with another tokenizer.

The teacher's answers go through the content-keyed generation cache (kdbench.generation.cache): its key holds the
teacher's fingerprint, every prompt and every decoding setting, so every run and sweep cell with the same teacher
and prompts reuses one generation, and two parallel workers never generate it twice (a file lock).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from kdbench.data.datamodule import prompt_of
from kdbench.generation.cache import cached_generate
from kdbench.generation.engine import generate
from kdbench.generation.settings import generation_settings
from kdbench.methods.registry import Method, TrainingContext, register
from kdbench.schema import check, check_decoding

log = logging.getLogger(__name__)


@dataclass
class TeacherData:
    rows: list[dict]
    n_prompts: int
    n_empty: int  # prompts the teacher answered with nothing: dropped (no response token to learn from)
    generated_tokens: int
    n_truncated_prompts: int
    seconds: float  # 0 on a cache hit
    cache_hit: bool

    def cost(self) -> dict:
        """For results.json's cost (0 seconds on a cache hit: the generation was paid for once)."""
        return {"teacher_generated_tokens": self.generated_tokens, "teacher_prompts": self.n_prompts,
                "teacher_empty_answers": self.n_empty, "teacher_generation_seconds": round(self.seconds, 1),
                "teacher_generation_cached": self.cache_hit}


def prompts_needed(seqkd_cfg, max_steps: int, batch_size: int, available: int) -> int:
    """How many training prompts the teacher answers: `max_prompts`, else what the step budget reads."""
    wanted = seqkd_cfg.max_prompts or max_steps * batch_size
    return min(int(wanted), available)


def teacher_answers(rows: list[dict], teacher, seqkd_cfg, max_prompt_length: int, cache_dir: str | None,
                    show_progress: bool = True) -> TeacherData:
    """`rows` with each `output` replaced by the teacher's answer to the row's prompt (same Alpaca prompt the
    student trains on), rows whose answer is empty dropped; the ground truth is kept as `reference`."""
    prompts = [prompt_of(r) for r in rows]
    settings = generation_settings(seqkd_cfg.decoding, do_sample=seqkd_cfg.do_sample, batch_size=seqkd_cfg.batch_size,
                                   seed=seqkd_cfg.seed)

    def run():
        return generate(teacher.model, teacher.tokenizer, prompts, settings, max_prompt_length,
                        description=f"teacher {teacher.name} answers {len(prompts)} training prompts (seqkd)",
                        show_progress=show_progress)

    if cache_dir and teacher.fingerprint:
        key_settings = {**asdict(settings), "max_prompt_length": max_prompt_length}
        result, hit = cached_generate(cache_dir, teacher.fingerprint, prompts, key_settings, run)
    else:
        result, hit = run(), False
    out = [{**r, "output": text, "reference": r["output"]} for r, text in zip(rows, result.texts) if text.strip()]
    n_empty = len(rows) - len(out)
    log.info("seqkd: %d teacher answers (%s, %d generated tokens)%s", len(out),
             "reused from the generation cache" if hit else f"generated in {result.seconds:.0f} s",
             result.new_tokens, f", {n_empty} empty ones dropped" if n_empty else "")
    if not out:
        raise RuntimeError(f"seqkd: the teacher answered all {len(rows)} training prompts with empty text; "
                           "nothing to train on")
    return TeacherData(rows=out, n_prompts=len(rows), n_empty=n_empty, generated_tokens=result.new_tokens,
                       n_truncated_prompts=result.n_truncated, seconds=0.0 if hit else result.seconds,
                       cache_hit=hit)


@register
class SeqKD(Method):
    """`method.kind: seqkd`: the student learns the teacher's answers instead of the ground truth (validation
    keeps the ground truth); black-box, so teacher and student may have different tokenizers."""

    kind = "seqkd"

    @property
    def needs_teacher(self) -> bool:
        return True

    def validate_block(self) -> None:
        m, q = self.cfg, self.cfg.seqkd
        check(m.divergence is None and m.alpha == 0 and m.hidden.weight == 0, "method.kind", m.kind,
              "seqkd trains on the teacher's generated text only: set divergence null, alpha 0, hidden.weight 0")
        check(q.max_prompts is None or q.max_prompts > 0, "method.seqkd.max_prompts", q.max_prompts,
              "must be > 0 (or null: what the step budget reads)")
        check(q.batch_size > 0, "method.seqkd.batch_size", q.batch_size, "must be > 0")
        check_decoding(q.decoding, "method.seqkd.decoding")

    def training_rows(self, rows: list[dict], teacher, context: TrainingContext) -> tuple[list[dict], dict]:
        n = prompts_needed(self.cfg.seqkd, context.steps, context.batch_size, len(rows))
        data = teacher_answers(rows[:n], teacher, self.cfg.seqkd, context.max_prompt_length, context.cache_dir,
                               context.show_progress)
        return data.rows, data.cost()

    def build(self, student, teacher, context: TrainingContext):
        from kdbench.methods.offline import OfflineDistillation

        return OfflineDistillation(student.model, None, self.cfg, context.optim, context.steps, context.vocab_size,
                                   context.micro_batch_size)
