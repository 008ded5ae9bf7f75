"""Can this teacher and student be distilled together?

White-box methods compare distributions token by token, so both models must share a tokenizer. Compare the
vocabularies themselves, not `vocab_size`: Qwen2.5-7B and -0.5B share one tokenizer but pad their output layers
to 152064 and 151936 rows, so the logits are sliced to the tokenizer's size instead. Black-box methods only
read the teacher's text and need no match.
"""

from __future__ import annotations


class IncompatibleModelsError(ValueError):
    pass


def _describe(tokenizer) -> str:
    return f"{tokenizer.name_or_path or type(tokenizer).__name__} ({len(tokenizer)} tokens)"


def check_distillable(teacher_tokenizer, student_tokenizer, whitebox: bool, method: str) -> int:
    """Raise unless the pair fits the method; return the vocabulary size to slice logits to (white-box)."""
    if not whitebox:
        return len(student_tokenizer)
    if teacher_tokenizer.get_vocab() != student_tokenizer.get_vocab():
        t, s = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
        differing = sorted(set(t.items()) ^ set(s.items()), key=lambda kv: kv[1])[:5]
        raise IncompatibleModelsError(
            f"method={method} compares token distributions, so teacher and student need the same tokenizer; "
            f"teacher tokenizer {_describe(teacher_tokenizer)} differs from student tokenizer "
            f"{_describe(student_tokenizer)} (e.g. {differing}). Use a black-box method or a matching pair."
        )
    return len(student_tokenizer)
