"""Which checkpoint a run keeps: the one with the best validation ROUGE-L (MiniLLM selects this way) or the last.

At every validation the student answers `trainer.select_rows` validation prompts greedily (the generation engine)
and their ROUGE-L (the MiniLLM protocol) is logged as val/rouge_l; with `trainer.select=best_rouge_l` the best
weights so far are kept in memory (on CPU) and restored when training ends. The same rule for every method, so a
method that peaks early and then degrades is read at its peak, as the papers read theirs.
"""

from __future__ import annotations

import logging

import lightning as L

from kdbench.data.datamodule import prompt_of
from kdbench.evaluation.metrics import rouge_l
from kdbench.generation.engine import generate
from kdbench.generation.settings import GenerationSettings

log = logging.getLogger(__name__)
RULES = ("best_rouge_l", "last")


class SelectCheckpoint(L.Callback):
    """Scores every validation (val/rouge_l) and, with rule best_rouge_l, keeps the best candidate's weights.

    Steps are the run's global steps: a warm-started method's trainer starts at `step_offset` (the warm start's
    steps). Validations before `first_candidate` are scored and recorded but cannot be chosen; with score_start,
    a trainer that starts at first_candidate scores its starting weights as that step's candidate. With
    first_candidate = the warm-start length for every method, sft and the warm-started methods choose among the
    same steps (kdbench.train decides score_start: only where sft validates at that step too).
    """

    def __init__(self, rows: list[dict], tokenizer, rule: str, max_new_tokens: int, max_prompt_length: int,
                 batch_size: int = 64, step_offset: int = 0, first_candidate: int = 0, score_start: bool = False):
        self.rows, self.tokenizer, self.rule = rows, tokenizer, rule
        self.step_offset, self.first_candidate, self.score_start = step_offset, first_candidate, score_start
        self.settings = GenerationSettings(do_sample=False, max_new_tokens=max_new_tokens, batch_size=batch_size)
        self.max_prompt_length = max_prompt_length
        self.history: list[tuple[int, float]] = []
        self.best: tuple[int, float] | None = None
        self._best_state: dict | None = None

    def score(self, model) -> float:
        out = generate(model, self.tokenizer, [prompt_of(r) for r in self.rows], self.settings,
                       self.max_prompt_length, show_progress=False)
        return rouge_l(out.texts, [r["output"] for r in self.rows])

    def on_train_start(self, trainer, pl_module):
        # The starting weights are a candidate when this trainer starts where the candidates start (a warm-started
        # method: sft's validation at that step is sft's candidate). Not again after a resume: it is in history.
        if self.rows and self.score_start and trainer.global_step == 0 and self.step_offset == self.first_candidate:
            self._consider(self.step_offset, self.score(pl_module.student), pl_module)

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or not self.rows:
            return
        value = self.score(pl_module.student)
        self._consider(int(trainer.global_step) + self.step_offset, value, pl_module)
        pl_module.log("val/rouge_l", value, on_epoch=True, batch_size=len(self.rows))

    def _consider(self, step: int, value: float, pl_module) -> None:
        self.history.append((step, value))
        if step < self.first_candidate:
            return
        if self.rule == "best_rouge_l" and (self.best is None or value > self.best[1]):
            self.best = (step, value)
            self._best_state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.student.state_dict().items()}

    # Saved in a resume checkpoint: a resumed run still keeps the best weights seen before the interruption.
    def state_dict(self) -> dict:
        return {"history": list(self.history), "best": self.best, "best_state": self._best_state}

    def load_state_dict(self, state: dict) -> None:
        self.history, self.best, self._best_state = list(state["history"]), state["best"], state["best_state"]

    def on_fit_end(self, trainer, pl_module):
        if self.rule == "best_rouge_l" and self._best_state is not None:
            pl_module.student.load_state_dict(self._best_state)
            log.info("selection: kept the step-%d weights (validation ROUGE-L %.2f; last %.2f at step %d)",
                     self.best[0], self.best[1], self.history[-1][1], self.history[-1][0])

    def record(self) -> dict:
        out = {"rule": self.rule, "rows": len(self.rows), "first_candidate": self.first_candidate,
               "history": [{"step": s, "val_rouge_l": round(v, 4)} for s, v in self.history]}
        if self.best is not None:
            out.update(step=self.best[0], val_rouge_l=self.best[1])
        elif self.history:
            out.update(step=self.history[-1][0], val_rouge_l=self.history[-1][1])
        return out
