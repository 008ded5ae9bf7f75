"""One place that turns `method.kind` into its Lightning module, and reads back what sampling cost."""

from __future__ import annotations

# Method kinds that sample from the student while training (they need the teacher and one tokenizer).
SAMPLING_KINDS = ("onpolicy", "distillm", "minillm")


def make_module(method, student, teacher, optim, steps: int, vocab_size: int, seed: int, whitebox: bool,
                micro_batch_size: int | None = None):
    """The module that trains `student` (a models.resolve.Loaded) for `steps` optimizer steps."""
    from kdbench.methods.offline import OfflineDistillation

    if method.kind not in SAMPLING_KINDS:  # offline and seqkd (seqkd's data is the teacher's answers)
        return OfflineDistillation(student.model, teacher.model if whitebox else None, method, optim, steps,
                                   vocab_size, micro_batch_size)
    from kdbench.methods.distillm import DistiLLMDistillation
    from kdbench.methods.minillm import MiniLLMDistillation
    from kdbench.methods.onpolicy import OnPolicyDistillation

    kind = {"onpolicy": OnPolicyDistillation, "distillm": DistiLLMDistillation,
            "minillm": MiniLLMDistillation}[method.kind]
    return kind(student.model, teacher.model, method, optim, steps, vocab_size, student.tokenizer.pad_token_id,
                student.tokenizer.eos_token_id, seed, micro_batch_size)


def sampling_cost(module) -> dict:
    """What sampling from the student cost, and how the steps split between sampled and data batches."""
    if not hasattr(module, "generated_tokens"):
        return {}
    out = {"student_generated_tokens": module.generated_tokens}
    if hasattr(module, "onpolicy_steps"):  # GKD
        out["onpolicy_steps"] = module.onpolicy_steps
    if hasattr(module, "rollouts"):  # MiniLLM
        out["rollouts"] = module.rollouts
    if hasattr(module, "counts"):  # DistiLLM: fresh samples, replayed samples, data
        out.update({f"{k}_steps": v for k, v in module.counts.items()},
                   final_student_data_probability=module.threshold.value)
    return out
