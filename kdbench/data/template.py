"""The Alpaca-style prompt template MiniLLM feeds its models (byte-identical to the `prompt` field of its
released data files, checked by a test against ../shared/data)."""

from __future__ import annotations

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def render_prompt(instruction: str, input_: str = "") -> str:
    """The prompt string for one row; an empty input selects the no-input variant, as MiniLLM does."""
    if input_:
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input_)
    return PROMPT_NO_INPUT.format(instruction=instruction)


def left_truncate(ids: list[int], max_length: int) -> list[int]:
    """Keep a prompt's END: "### Response:" must stay next to where the answer starts."""
    return ids[len(ids) - max_length:] if len(ids) > max_length else ids
