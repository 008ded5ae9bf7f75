"""A local Hugging Face causal LM as judge (greedy decoding), loaded from a folder and fingerprinted by its files."""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

from kdbench.evaluation.judge.prompt import Messages

log = logging.getLogger(__name__)


class HFJudgeBackend:
    """A local causal LM as judge: chat template when the tokenizer has one (else a plain "System/User/Assistant"
    rendering), greedy decoding of `max_new_tokens`. One generation at a time (the model is shared).

    identity is None without a fingerprint: an unnamed model's verdicts cannot be keyed, so they are not cached.
    """

    max_concurrency: int | None = 1

    def __init__(self, model, tokenizer, fingerprint: str | None = None, max_new_tokens: int = 48):
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = int(max_new_tokens)
        self.identity = f"hf|{fingerprint}" if fingerprint else None
        self.settings = {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"HFJudgeBackend(identity={self.identity!r}, max_new_tokens={self.max_new_tokens})"

    def render(self, messages: Messages) -> tuple[str, bool]:
        """(prompt text, whether it came from the chat template: then it already holds any special tokens)."""
        if getattr(self.tokenizer, "chat_template", None):
            try:
                text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                return text, True
            except Exception as e:  # noqa: BLE001 - e.g. a template without a system role
                log.warning("judge tokenizer's chat template failed (%s); using a plain rendering", e)
        text = "".join(f"{m['role'].capitalize()}: {m['content'].strip()}\n\n" for m in messages) + "Assistant:"
        return text, False

    def complete(self, messages: Messages) -> str:
        import torch

        text, templated = self.render(messages)
        tok = self.tokenizer
        enc = tok(text, return_tensors="pt", add_special_tokens=not templated)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with self._lock, torch.no_grad():
            was_training = self.model.training
            self.model.eval()
            try:
                device = next(self.model.parameters()).device
                input_ids = enc["input_ids"].to(device)
                out = self.model.generate(input_ids=input_ids, attention_mask=enc["attention_mask"].to(device),
                                          max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad,
                                          eos_token_id=tok.eos_token_id)
            finally:
                self.model.train(was_training)
        return tok.decode(out[0, input_ids.shape[1]:].tolist(), skip_special_tokens=True)


def path_fingerprint(path: str | Path) -> str:
    """A fingerprint for a model folder: its resolved path plus every file's name, size and mtime."""
    root = Path(path).resolve()
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return f"path:{root}:{h.hexdigest()[:16]}"


def load_hf_judge(path: str | Path):
    """(model, tokenizer) from a local folder, never from the hub."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    return model.eval(), tokenizer
