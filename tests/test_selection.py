"""Checkpoint selection: with best_rouge_l the run ends holding the weights of its best validation, with last its
final ones; the record lists every validation."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from kdbench.data.datamodule import InstructionDataModule
from kdbench.data.embedded import SplitSizes, generate_splits
from kdbench.data.template import render_prompt
from kdbench.methods.offline import OfflineDistillation
from kdbench.models.loading import build_from_arch
from kdbench.models.tokenizer import train_bpe_tokenizer
from kdbench.schema import ArchConfig, MethodConfig, TrainerConfig
from kdbench.training.fit import fit, make_trainer
from kdbench.training.selection import SelectCheckpoint

ROWS = generate_splits(sizes=SplitSizes(train=200, validation=16, test=8))


class Scripted(SelectCheckpoint):
    """Scores from a script; remembers the weights each score was given for."""

    def __init__(self, scores, *args, **kw):
        super().__init__(*args, **kw)
        self.scores, self.seen = list(scores), []

    def score(self, model) -> float:
        self.seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return self.scores.pop(0)


@pytest.mark.parametrize("rule", ["best_rouge_l", "last"])
def test_selection_keeps_the_best_or_the_last_weights(rule):
    tok = train_bpe_tokenizer([render_prompt(r["instruction"], r["input"]) + r["output"] for r in ROWS["train"]],
                              vocab_size=300)
    model = build_from_arch(ArchConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32), tok, 0)
    cfg = OmegaConf.structured(TrainerConfig(max_steps=20, batch_size=8, val_every=5, val_batches=1, progress=False))
    dm = InstructionDataModule(ROWS["train"], ROWS["validation"], tok, 8, seed=0)
    select = Scripted([10.0, 30.0, 20.0, 25.0], ROWS["validation"], tok, rule, 8, 256)
    module = OfflineDistillation(model, None, OmegaConf.structured(MethodConfig(name="sft")), cfg.optim, 20, len(tok))
    fit(module, dm, make_trainer(cfg, 20, callbacks=[select]))
    rec = select.record()
    assert [h["step"] for h in rec["history"]] == [5, 10, 15, 20]
    final = model.state_dict()
    expected = select.seen[1] if rule == "best_rouge_l" else select.seen[3]
    assert all(torch.equal(final[k], expected[k]) for k in final)
    assert rec["step"] == (10 if rule == "best_rouge_l" else 20)
    assert not all(torch.equal(select.seen[1][k], select.seen[3][k]) for k in final)  # training moved on


def test_the_real_score_is_rouge_l_of_greedy_answers():
    tok = train_bpe_tokenizer([render_prompt(r["instruction"], r["input"]) + r["output"] for r in ROWS["train"]],
                              vocab_size=300)
    model = build_from_arch(ArchConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32), tok, 0)
    s = SelectCheckpoint(ROWS["validation"][:4], tok, "best_rouge_l", 8, 256)
    value = s.score(model)
    assert 0.0 <= value <= 100.0


def _tiny_run(scores, steps, **candidates):
    tok = train_bpe_tokenizer([render_prompt(r["instruction"], r["input"]) + r["output"] for r in ROWS["train"]],
                              vocab_size=300)
    model = build_from_arch(ArchConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32), tok, 0)
    cfg = OmegaConf.structured(TrainerConfig(max_steps=steps, batch_size=8, val_every=5, val_batches=1,
                                             progress=False))
    dm = InstructionDataModule(ROWS["train"], ROWS["validation"], tok, 8, seed=0)
    module = OfflineDistillation(model, None, OmegaConf.structured(MethodConfig(name="sft")), cfg.optim, steps,
                                 len(tok))
    select = Scripted(scores, ROWS["validation"], tok, "best_rouge_l", 8, 256, **candidates)
    fit(module, dm, make_trainer(cfg, steps, callbacks=[select]))
    return model, select.record(), select


def test_every_method_chooses_among_the_same_steps():
    """A 20-step budget with a 10-step warm start: sft (no offset) validates at 5, 10, 15, 20 but may only choose
    from 10 on; a warm-started method (its trainer starts at global step 10) validates at 15 and 20 and its
    starting weights are the step-10 candidate. Both choose among {10, 15, 20}."""
    _, rec, _ = _tiny_run([99.0, 10.0, 30.0, 20.0], 20, first_candidate=10)
    assert [h["step"] for h in rec["history"]] == [5, 10, 15, 20]
    assert rec["step"] == 15 and rec["first_candidate"] == 10  # step 5's 99 is no candidate

    model, rec, select = _tiny_run([50.0, 10.0, 30.0], 10, step_offset=10, first_candidate=10, score_start=True)
    assert [h["step"] for h in rec["history"]] == [10, 15, 20]  # global steps: the start, then its validations
    assert rec["step"] == 10  # the starting weights won
    start = select.seen[0]
    assert all(torch.equal(model.state_dict()[k], start[k]) for k in start)
