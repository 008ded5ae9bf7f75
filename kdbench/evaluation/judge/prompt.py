"""The pairwise reviewer prompt (kdbench/evaluation/prompts/judge_pairwise.txt) and the parsing of its verdicts."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

# The prompts stay beside the evaluation modules (package data of kdbench.evaluation), one level above this package.
PROMPT_PATH = Path(__file__).resolve().parent.parent / "prompts" / "judge_pairwise.txt"

Messages = list[dict[str, str]]


@lru_cache(maxsize=8)
def load_prompt(path: str | Path = PROMPT_PATH) -> tuple[str, str]:
    """(system message, user template) from a prompt file (format described at the top of the shipped one)."""
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        marker = re.fullmatch(r"=== (\w+) ===", line.strip())
        if marker:
            current = marker.group(1)
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
        elif line.strip() and not line.startswith("#"):
            raise ValueError(f"{path}: text before the first section marker: {line!r}")
    missing = {"system", "user"} - set(sections)
    if missing:
        raise ValueError(f"{path}: missing section(s) {sorted(missing)}")
    return "\n".join(sections["system"]).strip(), "\n".join(sections["user"]).strip() + "\n"


def judge_question(instruction: str, input: str | None = None) -> str:
    """The question shown to the judge: the instruction, then its input (context) when there is one."""
    return f"{instruction}\n\n{input}" if input and input.strip() else instruction


def render_messages(question: str, answer_1: str, answer_2: str, prompt_path: str | Path = PROMPT_PATH) -> Messages:
    """The chat messages for one pairwise verdict. Plain replacement, so answers may contain braces."""
    system, template = load_prompt(prompt_path)
    # One pass over the placeholders so that an answer containing "{answer_2}" is not itself substituted.
    values = {"question": question, "answer_1": answer_1, "answer_2": answer_2}
    user = re.sub(r"\{(question|answer_1|answer_2)\}", lambda m: values[m.group(1)], template)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


_NUMBER = r"(\d+(?:\.\d+)?|\.\d+)"
_SCORE_LINE = re.compile(rf"{_NUMBER}\s*(?:,\s*|\s+){_NUMBER}")


def parse_scores(text: str | None) -> tuple[float, float] | None:
    """(score of Assistant 1, score of Assistant 2), or None if the verdict does not follow the format.

    The first line (after leading whitespace and blank lines) must hold exactly two numbers (integers or
    decimals) separated by spaces and/or one comma, as the prompt asks. Anything else is unparsable: a label
    ("Score: 7 9"), words ("seven nine"), one or three numbers, or a score outside 0-10 (it is not on the
    prompt's scale and would distort the ratio). Guessing at a free-form verdict would make the ratio depend on
    the guessing, so those are counted and reported instead.
    """
    if not text or not text.strip():
        return None
    first = text.strip().splitlines()[0].strip()
    m = _SCORE_LINE.fullmatch(first)
    if not m:
        return None
    a, b = float(m.group(1)), float(m.group(2))
    if not (0.0 <= a <= 10.0 and 0.0 <= b <= 10.0):
        return None
    return a, b
