"""Load a teacher or student: a Hugging Face id or local folder, or a LLaMA-style model built from a config.

The hub path is real code: a local folder (config.json + weights + tokenizer files) is what tests use, and a
hub id resolves through the local Hugging Face cache first. Without the weights on disk and without network it
fails at once with a message that says how to provide them, instead of transformers' ~45 s of retries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedModel
from transformers.utils import cached_file

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Loaded:
    """A model ready for a run: weights, tokenizer, display name, size and (teachers) a content fingerprint."""
    model: object
    tokenizer: object
    name: str
    parameters: int
    fingerprint: str


class WeightsNotFoundError(RuntimeError):
    pass


def _hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _offline() -> bool:
    return any(os.environ.get(v, "0").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _missing_weights(key: str, path: str, why: str) -> WeightsNotFoundError:
    return WeightsNotFoundError(
        f"{key}={path!r}: the weights are not on disk ({why}). Provide them: on a machine with network run "
        f"`hf download {path}` (`huggingface-cli download {path}` with huggingface_hub < 1.0); they land in "
        f"the Hugging Face hub cache ({_hub_cache()}): copy it here. Or save the model folder (config.json, "
        f"weights, tokenizer files) anywhere and set {key}=/path/to/that/folder."
    )


def _hub_cache() -> str:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    return os.path.join(os.environ.get("HF_HOME", "~/.cache/huggingface"), "hub")


def load_pretrained(path: str, key: str, dtype: str = "float32", tokenizer_path: str | None = None):
    """(model, tokenizer) from a local folder or a hub id, failing fast when the weights are not on disk."""
    local = Path(path).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"{key}={path!r}: the folder has no config.json; expected a model saved with "
                                    f"save_pretrained (config.json, weights, tokenizer files)")
        source, local_only = str(local), True
    else:
        source, local_only = path, True
        try:  # The local HF cache first: no network, no retries.
            return _load(source, dtype, tokenizer_path, local_files_only=True)
        except OSError:
            if _offline():
                raise _missing_weights(key, path, "not in the Hugging Face cache and HF_HUB_OFFLINE=1") from None
            if not _hub_reachable():
                raise _missing_weights(key, path, "not in the Hugging Face cache and the hub is unreachable") from None
            local_only = False
    return _load(source, dtype, tokenizer_path, local_files_only=local_only)


def _load(source: str, dtype: str, tokenizer_path: str | None, local_files_only: bool):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or source, local_files_only=local_files_only)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype], local_files_only=local_files_only)
    # Fingerprint the resolved folder (for a hub id: the cached snapshot of the revision actually loaded), and
    # what changes the outputs besides the weights.
    resolved = source if Path(source).is_dir() else str(
        Path(cached_file(source, "config.json", local_files_only=local_files_only)).parent)
    model.kdbench_fingerprint = fingerprint_folder(resolved, json.dumps([source, dtype, tokenizer_path]))
    return model, prepare_tokenizer(tokenizer)


def prepare_tokenizer(tokenizer):
    """Left padding (batched generation needs it) and a pad token (GPT-2 and LLaMA tokenizers ship none)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def fingerprint_folder(resolved: str, name: str) -> str:
    """What identifies a pretrained model's weights for content-keyed caches: its files' names, sizes and mtimes
    (hashing multi-GB weights on every run would cost more than the cache saves)."""
    folder = Path(resolved)
    entries = []
    if folder.is_dir():
        for f in sorted(folder.iterdir()):
            if f.is_file():
                st = f.stat()
                entries.append((f.name, st.st_size, int(st.st_mtime)))
    return hashlib.sha256(json.dumps([name, str(folder), entries]).encode()).hexdigest()[:16]


def build_from_arch(arch, tokenizer, seed: int, dtype: str = "float32") -> PreTrainedModel:
    """A LLaMA-style decoder with random init, sized to the tokenizer."""
    if arch.family != "llama":
        raise ValueError(f"arch.family={arch.family!r}: only llama is built from a config")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers, num_attention_heads=arch.num_heads, num_key_value_heads=arch.num_heads,
        max_position_embeddings=arch.max_position_embeddings, tie_word_embeddings=arch.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.to(DTYPES[dtype])


def count_parameters(model: torch.nn.Module) -> int:
    # Tied embeddings are one tensor: count unique storages, not modules.
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def freeze(model: PreTrainedModel) -> PreTrainedModel:
    """The teacher: eval mode (no dropout) and no gradients."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def save_model_folder(model, tokenizer, folder: str | Path) -> Path:
    """save_pretrained (safetensors) + the tokenizer into `folder`, atomically: written into a temp folder beside it,
    then renamed into place, so a reader never sees half a model; an older folder of the same name is replaced."""
    import shutil
    import tempfile

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.chmod(0o755)
        if folder.exists():
            old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old."))
            os.replace(folder, old / folder.name)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def resolve_model_path(path: str) -> tuple[str, dict | None]:
    """(what to load, the kdbench run record or None) for kdbench-eval's model.path: a kdbench run folder (its
    results.json names the saved student), a folder saved with save_pretrained, or a hub id (returned as is)."""
    local = Path(path).expanduser()
    if local.is_dir() and (local / "results.json").is_file() and not (local / "config.json").is_file():
        record = _run_record(local / "results.json")
        # The folder the run recorded, else `student/` beside results.json (a run folder that was moved).
        candidates = [Path(p) for p in (((record or {}).get("artifacts") or {}).get("student_dir"),) if p]
        candidates.append(local / "student")
        for folder in candidates:
            if (folder / "config.json").is_file():
                return str(folder), record
        raise FileNotFoundError(f"model.path={path!r} is a kdbench run folder without a saved student (no "
                                f"config.json in {', '.join(map(str, candidates))}): it ran with "
                                "trainer.save_student=false or an older kdbench; rerun it with force=true")
    return path, None


def _run_record(path: Path) -> dict | None:
    """A run folder's results.json, or None with a warning naming it when it is damaged. It is the run's own record,
    not a cache entry: left where it is (nothing can recompute it), and the saved student is looked for beside it."""
    from kdbench.storage.cache_entry import CorruptEntry, read_entry

    try:
        return read_entry(path)
    except CorruptEntry as e:
        log.warning("%s is damaged (%s): evaluating the student saved beside it without the run's record", path,
                    e.why)
        return None
