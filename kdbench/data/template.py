"""The Alpaca-style prompt template MiniLLM feeds its models (byte-identical to the `prompt` field of its
released data files, checked by a test against the bundled copies in kdbench/assets/evalsets)."""

from __future__ import annotations

import re

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


# A text longer than a window of characters is cut before it is tokenized: a tokenizer given a 1M-character field
# builds working state many times the string's size (peak memory +300 MB) only for all but max_tokens of its ids
# to be thrown away. Why the cut never changes the ids that are kept:
#  - a text within the window is tokenized whole, as before. The window allows CHARS_PER_TOKEN_BOUND characters
#    a token, several times the ~4 of English text, so every normal row fits unless it is truncated anyway;
#  - a longer text is cut just before a space that follows a non-space. Every tokenizer family splits text
#    there before it merges characters into tokens (GPT-2, Llama-3 and Qwen pre-tokenizer regexes, SentencePiece
#    and WordPiece word splits), and a token never spans such a split, so the pieces before it (after it, when
#    the end is kept) are tokenized exactly as in the whole text;
#  - the cut text must still yield CUT_MARGIN_TOKENS ids beyond the kept ones (a tokenizer may treat the cut
#    text's first piece differently, e.g. SentencePiece's added "▁"); else the window grows and the text is cut
#    again, so no chars-per-token ratio is assumed (tokens of many characters cost a retry, never a wrong id).
# A text without such a space for a whole window (a base64 blob, one character repeated) is cut at the window
# itself: one "word" that long has no natural tokenization to keep, and its ids next to the cut may differ.
# tests/test_data_errors.py checks the kept ids against those of the whole text.
CHARS_PER_TOKEN_BOUND = 16
CUT_MARGIN_TOKENS = 16
_SPACE_AFTER_NON_SPACE = re.compile(r"(?<=\S) ")


def _cut(text: str, window: int, keep_end: bool) -> str:
    """At least `window` characters of `text` (its end if keep_end), cut at a word boundary within one more window,
    or at the window itself when there is none."""
    if keep_end:
        start = len(text) - window
        boundaries = [m.start() for m in _SPACE_AFTER_NON_SPACE.finditer(text, max(0, start - window), start + 1)]
        return text[boundaries[-1] if boundaries else start:]
    boundary = _SPACE_AFTER_NON_SPACE.search(text, window, 2 * window + 1)
    return text[:boundary.start() if boundary else window]


def char_window(max_tokens: int) -> int:
    """Texts up to this many characters are tokenized whole by tokenize_truncated."""
    return (max_tokens + CUT_MARGIN_TOKENS) * CHARS_PER_TOKEN_BOUND


def tokenize_truncated(tokenizer, text: str, max_tokens: int, keep_end: bool) -> tuple[list[int], bool]:
    """(ids, truncated): the first max_tokens ids of `text` (its last ones if keep_end), without tokenizing more
    of a long text than it takes to find them; truncated says the text had more than max_tokens ids."""
    window = char_window(max_tokens)
    while True:
        if len(text) <= window:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            break
        ids = tokenizer(_cut(text, window, keep_end), add_special_tokens=False)["input_ids"]
        if len(ids) >= max_tokens + CUT_MARGIN_TOKENS:
            break
        window *= 4
    truncated = len(ids) > max_tokens
    return (left_truncate(ids, max_tokens) if keep_end else ids[:max_tokens]), truncated
