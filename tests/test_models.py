"""Models: loading a local folder, failing fast without weights, tokenizer compatibility, freeze and counting."""

from __future__ import annotations

import re
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kdbench.data.datamodule import collate, encode_row
from kdbench.models import loading
from kdbench.models.compat import IncompatibleModelsError, check_distillable
from kdbench.models.loading import WeightsNotFoundError, build_from_arch, count_parameters, freeze, load_pretrained
from kdbench.models.tokenizer import train_bpe_tokenizer
from kdbench.schema import ArchConfig

ARCH = ArchConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
TEXTS = [
    "Sort the numbers from smallest to largest. 42, 17, 93",
    "Alice is 31 years old and lives in Paris. Alice works as a baker and has a cat.",
    "Classify the sentiment of the review as positive, negative or neutral.",
    "The food was great, and the service was not rude.",
    "Write the words of the list in reverse order: red, fox, owl, blue.",
    "What number is paired with mango in the list? apple = 12, mango = 77",
] * 5
ROWS = [
    {"instruction": "Sort the numbers.", "input": "42, 17, 93", "output": "17, 42, 93"},
    {"instruction": "Describe Alice.", "input": "", "output": "Alice is 31 years old and lives in Paris."},
    {"instruction": "Classify the sentiment.", "input": "The food was great.", "output": "positive"},
]


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(TEXTS, vocab_size=300)


@pytest.fixture(scope="module")
def other_tok():
    return train_bpe_tokenizer([t.upper() for t in TEXTS] + ["zebra quartz jump"] * 5, vocab_size=320)


def batch_for(tok) -> dict:
    return collate([encode_row(r, tok, 128, 32) for r in ROWS], pad_id=tok.pad_token_id)


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache under tmp_path (env and the constants the libraries read at import time)."""
    import huggingface_hub.constants

    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HOME", str(home))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    return home


# ------------------------------------------------------------------------------------------------- local folders

def test_load_pretrained_local_folder(tok, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = build_from_arch(ARCH, tok, seed=0)
    folder = tmp_path / "tiny-teacher"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)

    loaded, ltok = load_pretrained(str(folder), "teacher.path")
    assert isinstance(loaded, LlamaForCausalLM)
    assert ltok.padding_side == "left"
    assert ltok.pad_token is not None and ltok.pad_token_id is not None
    assert ltok.get_vocab() == tok.get_vocab()
    assert isinstance(loaded.kdbench_fingerprint, str) and len(loaded.kdbench_fingerprint) == 16

    ids = torch.tensor([tok("Sort the numbers: 42, 17", add_special_tokens=False)["input_ids"]])
    model.eval(), loaded.eval()
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, loaded(input_ids=ids).logits
    assert a.shape == (1, ids.shape[1], len(tok))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_load_pretrained_bfloat16(tok, tmp_path):
    folder = tmp_path / "bf16"
    build_from_arch(ARCH, tok, seed=0).save_pretrained(folder)
    tok.save_pretrained(folder)
    model, _ = load_pretrained(str(folder), "student.path", dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_load_pretrained_separate_tokenizer_path(tok, tmp_path):
    folder, tok_folder = tmp_path / "model", tmp_path / "tok"
    build_from_arch(ARCH, tok, seed=0).save_pretrained(folder)
    tok.save_pretrained(tok_folder)  # the model folder has no tokenizer files
    _, ltok = load_pretrained(str(folder), "teacher.path", tokenizer_path=str(tok_folder))
    assert ltok.get_vocab() == tok.get_vocab()
    assert ltok.padding_side == "left"


def test_load_pretrained_folder_without_config(tmp_path):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError) as e:
        load_pretrained(str(folder), "teacher.path")
    assert "teacher.path" in str(e.value)
    assert str(folder) in str(e.value)
    assert "config.json" in str(e.value)


def test_fingerprint_changes_with_the_weights(tok, tmp_path):
    folder = tmp_path / "m"
    build_from_arch(ARCH, tok, seed=0).save_pretrained(folder)
    tok.save_pretrained(folder)
    first = load_pretrained(str(folder), "teacher.path")[0].kdbench_fingerprint
    again = load_pretrained(str(folder), "teacher.path")[0].kdbench_fingerprint
    assert first == again
    # different weights (a different size) in the same folder: a different fingerprint
    build_from_arch(ArchConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=32), tok,
                    seed=0).save_pretrained(folder)
    assert load_pretrained(str(folder), "teacher.path")[0].kdbench_fingerprint != first


# ------------------------------------------------------------------------------------------- missing weights, fast

def _assert_helpful(message: str, hub_id: str, key: str) -> None:
    assert "not on disk" in message
    assert re.search(rf"(hf|huggingface-cli) download {re.escape(hub_id)}", message), message
    assert f"{key}=" in message


def test_missing_weights_offline_fails_fast(empty_hf_cache, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    t0 = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as e:
        load_pretrained("openai-community/gpt2-xl", "teacher.path")
    assert time.perf_counter() - t0 < 20  # no retry loop (the hub client retries for ~45 s); budget in BENCHMARKS.md
    _assert_helpful(str(e.value), "openai-community/gpt2-xl", "teacher.path")
    assert "HF_HUB_OFFLINE" in str(e.value)
    assert not any(empty_hf_cache.rglob("*.safetensors"))


def test_missing_weights_unreachable_hub_fails_fast(empty_hf_cache, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # closed port
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    t0 = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as e:
        load_pretrained("openai-community/gpt2-xl", "student.path")
    assert time.perf_counter() - t0 < 20  # no retry loop (the hub client retries for ~45 s); budget in BENCHMARKS.md
    _assert_helpful(str(e.value), "openai-community/gpt2-xl", "student.path")
    assert "unreachable" in str(e.value)


def test_download_command_in_the_message_is_installed(empty_hf_cache, monkeypatch):
    """The remedy must name a CLI that the installed huggingface_hub provides (v1+ ships `hf`, not
    `huggingface-cli`)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsNotFoundError) as e:
        load_pretrained("openai-community/gpt2-xl", "teacher.path")
    m = re.search(r"`([\w.-]+) download ", str(e.value))
    assert m, str(e.value)
    bindir = Path(sys.executable).parent
    assert (bindir / m.group(1)).exists() or shutil.which(m.group(1)), (
        f"the message tells users to run `{m.group(1)} download`, but no {m.group(1)} is installed "
        f"(in {bindir} or on PATH)")


def test_hub_probe_uses_the_endpoints_port(monkeypatch):
    """HF_ENDPOINT may be a mirror on any port: the reachability probe must connect to that port, not 443."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        port = server.getsockname()[1]
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        assert loading._hub_reachable(timeout=1.0) is True
    finally:
        server.close()
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert loading._hub_reachable(timeout=1.0) is False


# --------------------------------------------------------------------------------------------------- compatibility

def test_identical_tokenizers_are_distillable(tok, tmp_path):
    tok.save_pretrained(tmp_path / "t")
    from transformers import AutoTokenizer

    same = AutoTokenizer.from_pretrained(str(tmp_path / "t"))
    assert check_distillable(tok, same, whitebox=True, method="kd") == len(tok)
    assert check_distillable(tok, tok, whitebox=True, method="kd") == len(tok)


def test_different_vocabularies_are_refused(tok, other_tok, tmp_path):
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path / "teacher_tok")
    other_tok.save_pretrained(tmp_path / "student_tok")
    t = AutoTokenizer.from_pretrained(str(tmp_path / "teacher_tok"))
    s = AutoTokenizer.from_pretrained(str(tmp_path / "student_tok"))
    assert len(t) != len(s)
    with pytest.raises(IncompatibleModelsError) as e:
        check_distillable(t, s, whitebox=True, method="kd")
    msg = str(e.value)
    assert "method=kd" in msg
    assert str(tmp_path / "teacher_tok") in msg and f"({len(t)} tokens)" in msg
    assert str(tmp_path / "student_tok") in msg and f"({len(s)} tokens)" in msg


def test_same_size_different_vocabulary_is_refused(tok):
    # equal sizes are not enough: the vocabularies themselves are compared
    shuffled = train_bpe_tokenizer([t[::-1] for t in TEXTS], vocab_size=300)
    if len(shuffled) == len(tok):
        assert shuffled.get_vocab() != tok.get_vocab()
    with pytest.raises(IncompatibleModelsError):
        check_distillable(tok, shuffled, whitebox=True, method="reverse_kl")


def test_blackbox_never_raises(tok, other_tok):
    assert check_distillable(tok, other_tok, whitebox=False, method="seqkd") == len(other_tok)
    assert check_distillable(other_tok, tok, whitebox=False, method="seqkd") == len(tok)


def test_padded_output_layer_is_sliced_to_the_tokenizer(tok):
    from kdbench.models.surgery import response_logits

    config = LlamaConfig(vocab_size=len(tok) + 7, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    batch = batch_for(tok)
    with torch.no_grad():
        logits, targets = response_logits(model, batch, vocab_size=len(tok))
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert full.shape[-1] == len(tok) + 7
    assert logits.shape[-1] == len(tok)
    at = batch["labels"][:, 1:] != -100
    assert logits.shape[0] == targets.shape[0] == int(at.sum())
    assert int(targets.max()) < len(tok)
    torch.testing.assert_close(logits, full[:, :-1][at][:, :len(tok)], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------ freeze, count, build

def test_freeze(tok):
    model = build_from_arch(ARCH, tok, seed=0)
    model.train()
    assert any(p.requires_grad for p in model.parameters())
    out = freeze(model)
    assert out is model
    assert not model.training
    assert all(not m.training for m in model.modules())
    assert all(not p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("tied", [True, False])
def test_count_parameters(tok, tied):
    arch = ArchConfig(hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, tie_word_embeddings=tied)
    model = build_from_arch(arch, tok, seed=0)
    V, h, inter, L = len(tok), 16, 32, 2
    per_layer = 4 * h * h + 3 * h * inter + 2 * h  # q, k, v, o; gate, up, down; two RMSNorms
    expected = V * h + L * per_layer + h + (0 if tied else V * h)
    assert count_parameters(model) == expected
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    # counting every parameter tensor with duplicates would count a tied embedding twice
    with_dupes = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert with_dupes == expected + (V * h if tied else 0)


def test_build_from_arch_is_deterministic(tok):
    a = build_from_arch(ARCH, tok, seed=3)
    b = build_from_arch(ARCH, tok, seed=3)
    c = build_from_arch(ARCH, tok, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.config.vocab_size == len(tok)
    assert a.config.pad_token_id == tok.pad_token_id and a.config.eos_token_id == tok.eos_token_id


def test_build_from_arch_leaves_the_global_rng_alone(tok):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_from_arch(ARCH, tok, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_build_from_arch_rejects_other_families(tok):
    with pytest.raises(ValueError, match="arch.family='gpt2'"):
        build_from_arch(ArchConfig(family="gpt2"), tok, seed=0)


# -------------------------------------------------------------------------------------------- the local HF cache

def _put_in_hf_cache(hub_cache: Path, repo_id: str, commit: str, model, tok) -> Path:
    """Lay out a model the way `hf download` leaves it: models--owner--name/{refs/main, snapshots/<commit>/}."""
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    model.save_pretrained(snapshot)
    tok.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_load_pretrained_hub_id_from_the_local_cache(tok, empty_hf_cache, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    model = build_from_arch(ARCH, tok, seed=0).eval()
    _put_in_hf_cache(empty_hf_cache / "hub", "kdbench-test/tiny", "a" * 40, model, tok)
    t0 = time.perf_counter()
    loaded, ltok = load_pretrained("kdbench-test/tiny", "teacher.path")
    assert time.perf_counter() - t0 < 20  # no retry loop (the hub client retries for ~45 s); budget in BENCHMARKS.md
    assert ltok.padding_side == "left" and ltok.pad_token is not None
    ids = torch.tensor([tok("Sort 42, 17", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, loaded.eval()(input_ids=ids).logits)


def test_fingerprint_of_a_hub_id_follows_the_cached_weights(tok, empty_hf_cache, monkeypatch):
    """The teacher-generation cache is keyed by this fingerprint: new weights under the same id (a new revision
    downloaded into the cache) must not reuse the old model's generations."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    _put_in_hf_cache(empty_hf_cache / "hub", "kdbench-test/tiny", "a" * 40, build_from_arch(ARCH, tok, seed=0), tok)
    first = load_pretrained("kdbench-test/tiny", "teacher.path")[0].kdbench_fingerprint
    bigger = ArchConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=32)
    _put_in_hf_cache(empty_hf_cache / "hub", "kdbench-test/tiny", "b" * 40, build_from_arch(bigger, tok, seed=1), tok)
    loaded = load_pretrained("kdbench-test/tiny", "teacher.path")[0]
    assert loaded.config.hidden_size == 32  # the new revision was loaded...
    assert loaded.kdbench_fingerprint != first  # ...and is fingerprinted as a different model


def test_fingerprint_depends_on_dtype(tok, tmp_path):
    """Same folder, different dtype: different generations, so a different teacher-cache key."""
    folder = tmp_path / "m"
    build_from_arch(ARCH, tok, seed=0).save_pretrained(folder)
    tok.save_pretrained(folder)
    f32 = load_pretrained(str(folder), "teacher.path", dtype="float32")[0].kdbench_fingerprint
    bf16 = load_pretrained(str(folder), "teacher.path", dtype="bfloat16")[0].kdbench_fingerprint
    assert f32 != bf16
