"""Range checks that the type system cannot express (temperature > 0, a weight in [0, 1], a path a source needs),
run when a run starts; each names its key. A method's own block is checked by its class (kdbench.methods); the
full check of a run is kdbench.runtime.validate."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A config value that composes but makes no sense; the message names the key."""


def check(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: {why}")


def validate(cfg: Any) -> None:
    """The range checks of a composed train/evaluate config outside the method's own block (its class checks that:
    kdbench.methods.registry). Values from a fixed set are enums, checked when the config is composed."""
    for role in ("teacher", "student"):
        mc = cfg[role]
        if mc.source == "pretrained":
            check(bool(mc.path), f"{role}.path", mc.path, "a pretrained model needs an HF id or a local folder")
        check(mc.arch.hidden_size % mc.arch.num_heads == 0, f"{role}.arch.num_heads", mc.arch.num_heads,
              f"must divide {role}.arch.hidden_size={mc.arch.hidden_size}")
    t = cfg.trainer
    check(t.max_steps > 0, "trainer.max_steps", t.max_steps, "must be > 0")
    check(t.select_rows >= 0, "trainer.select_rows", t.select_rows, "must be >= 0")
    if cfg.method.warm_start:
        ws = t.warm_start_steps if t.warm_start_steps is not None else t.max_steps // 2
        check(0 < ws < t.max_steps, "trainer.warm_start_steps", ws,
              f"the sft warm start takes part of trainer.max_steps={t.max_steps}: needs 0 < steps < max_steps")
    check(t.batch_size > 0, "trainer.batch_size", t.batch_size, "must be > 0")
    if t.micro_batch_size is not None:
        check(0 < t.micro_batch_size <= t.batch_size, "trainer.micro_batch_size", t.micro_batch_size,
              f"must lie in [1, trainer.batch_size={t.batch_size}]")
    check(t.optim.lr > 0, "trainer.optim.lr", t.optim.lr, "must be > 0")
    check(cfg.data.max_prompt_length > 0, "data.max_prompt_length", cfg.data.max_prompt_length, "must be > 0")
    sources = [("data.train", cfg.data.train), ("data.validation", cfg.data.validation)]
    sources += [(f"eval.sets.{name}.source", s.source) for name, s in cfg.eval.sets.items()]
    for key, src in sources:
        if src.kind != "embedded":
            check(bool(src.path), f"{key}.path", src.path,
                  "a jsonl source needs a file path, an hf source a dataset id or folder")
    validate_eval(cfg.eval)
    check_truth_has_a_benchmark(cfg)


# The first embedded benchmark version whose rows have a true answer distribution p*: the same constant as
# kdbench.evaluation.truth_sets.FIRST_TRUTH_VERSION (the schema imports no runtime code; a test keeps them equal).
FIRST_TRUTH_VERSION = 5


def check_truth_has_a_benchmark(cfg: Any) -> None:
    """An embedded set scored against p* needs data.embedded.version >= 5: checked when the run starts, since the
    suite loads its sets after training (data=embedded_v4 with the default v5 profile would fail only then)."""
    version = cfg.data.embedded.version
    for name, s in cfg.eval.sets.items():
        if s.truth.enabled and s.source.kind == "embedded":
            check(version >= FIRST_TRUTH_VERSION, f"eval.sets.{name}.truth.enabled", s.truth.enabled,
                  f"data.embedded.version={version} has no true answer distribution (benchmark version "
                  f"{FIRST_TRUTH_VERSION} on has one); benchmark v4 has its own profiles: data=embedded_v4 "
                  "eval=light_v4 (or study_v4), or switch truth off for this set")


def check_max_failed_fraction(value: Any) -> None:
    """eval.judge.max_failed_fraction: a share in [0, 1]."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0
    check(ok, "eval.judge.max_failed_fraction", value,
          "must be a share between 0 and 1 (0: no failed verdict allowed, 1: never fail the run)")


def check_decoding(d: Any, key: str) -> None:
    """A `decoding` block (kdbench.schema.common.Decoding) wherever it is nested."""
    check(d.temperature > 0, f"{key}.temperature", d.temperature, "must be > 0")
    check(0 < d.top_p <= 1, f"{key}.top_p", d.top_p, "must lie in (0, 1]")
    check(d.top_k >= 0, f"{key}.top_k", d.top_k, "must be >= 0 (0: off)")
    check(d.max_new_tokens > 0, f"{key}.max_new_tokens", d.max_new_tokens, "must be > 0")


def parse_length_buckets(specs, key: str = "length_buckets") -> list[tuple[int, int | None]]:
    """["0-5", "6-10", "11+"] -> [(0, 5), (6, 10), (11, None)]; a malformed or overlapping spec fails naming key."""
    out: list[tuple[int, int | None]] = []
    for spec in specs:
        text = str(spec).strip()
        try:
            if text.endswith("+"):
                lo, hi = int(text[:-1]), None
            else:
                a, b = text.split("-")
                lo, hi = int(a), int(b)
        except ValueError:
            raise ConfigError(f"{key}={list(specs)!r}: {spec!r} is not 'lo-hi' or 'lo+' (words)") from None
        check(lo >= 0 and (hi is None or hi >= lo), key, list(specs), f"{spec!r}: need 0 <= lo <= hi")
        out.append((lo, hi))
    ordered = sorted(out)
    for (_, hi1), (lo2, _) in zip(ordered, ordered[1:]):
        check(hi1 is not None and hi1 < lo2, key, list(specs), "buckets overlap")
    return out


def check_truth(s: Any, key: str) -> None:
    """An eval set's `truth` block (kdbench.schema.evaluation.TruthConfig), when enabled; `key` names the set."""
    t = s.truth
    if not t.enabled:
        return
    check(s.source.kind == "embedded", f"{key}.truth.enabled", t.enabled,
          f"the true answer distribution exists for embedded rows only (benchmark v5), and {key}.source.kind is "
          f"{getattr(s.source.kind, 'value', s.source.kind)!r}; switch truth off for this set")
    check(t.num_prompts is None or t.num_prompts > 0, f"{key}.truth.num_prompts", t.num_prompts,
          "must be > 0 (null: every row of each family)")
    check(t.k >= 1, f"{key}.truth.k", t.k, "precision and recall need at least one sample a prompt")
    check(t.kl_samples >= 2, f"{key}.truth.kl_samples", t.kl_samples,
          "a Monte Carlo KL's standard error needs at least 2 draws a prompt")
    check(t.exact_up_to is None or t.exact_up_to >= 0, f"{key}.truth.exact_up_to", t.exact_up_to,
          "must be >= 0 (0: always Monte Carlo; null: exact wherever p* lists its support)")
    lengths = list(t.validity_lengths)
    check(all(n >= 1 for n in lengths) and len(set(lengths)) == len(lengths), f"{key}.truth.validity_lengths",
          lengths, "word counts must be >= 1 and differ")


def validate_eval(e: Any) -> None:
    """The evaluation profile's values (called by `validate`, and by kdbench-eval)."""
    check(e.max_prompt_length > 0, "eval.max_prompt_length", e.max_prompt_length, "must be > 0")
    check(e.max_response_length > 0, "eval.max_response_length", e.max_response_length, "must be > 0")
    check(e.score_batch_size > 0, "eval.score_batch_size", e.score_batch_size, "must be > 0")
    check(e.generation.batch_size > 0, "eval.generation.batch_size", e.generation.batch_size, "must be > 0")
    check_decoding(e.generation.decoding, "eval.generation.decoding")
    for key in ("limit", "max_new_tokens"):
        check(e[key] is None or e[key] > 0, f"eval.{key}", e[key], "must be > 0 (or null)")
    generation_sets = []
    for name, s in e.sets.items():
        k = f"eval.sets.{name}"
        check(s.limit is None or s.limit > 0, f"{k}.limit", s.limit, "must be > 0 (or null)")
        if s.kind == "generation":
            generation_sets.append(name)
            check(s.max_new_tokens > 0, f"{k}.max_new_tokens", s.max_new_tokens, "must be > 0")
            parse_length_buckets(s.length_buckets, f"{k}.length_buckets")
        else:
            c = s.classification
            check(len(c.label_words) >= 2, f"{k}.classification.label_words", list(c.label_words),
                  "a classification set needs at least two label words")
            check(len(set(c.label_words)) == len(c.label_words), f"{k}.classification.label_words",
                  list(c.label_words), "label words must differ")
            check(c.n_bins >= 1, f"{k}.classification.n_bins", c.n_bins, "must be >= 1")
            if s.source.kind == "embedded":
                check(bool(c.category), f"{k}.classification.category", c.category,
                      "an embedded classification set needs the family to keep, e.g. mood")
            else:
                check(bool(c.prompt or c.instruction), f"{k}.classification.instruction", c.instruction,
                      "give an instruction template (or classification.prompt)")
        check_truth(s, k)
    sp = e.sampling
    if sp.enabled:
        check(len(sp.seeds) >= 1, "eval.sampling.seeds", list(sp.seeds), "give at least one seed")
        check_decoding(sp.decoding, "eval.sampling.decoding")
        check(sp.limit is None or sp.limit > 0, "eval.sampling.limit", sp.limit, "must be > 0 (null: every row)")
        for name in sp.sets or []:
            check(name in generation_sets, "eval.sampling.sets", name,
                  f"not a generation set of this profile ({', '.join(generation_sets) or 'none'})")
    check_max_failed_fraction(e.judge.max_failed_fraction)
    eb = e.exposure_bias
    if eb.enabled:
        check(eb.set in generation_sets, "eval.exposure_bias.set", eb.set,
              f"not a generation set of this profile ({', '.join(generation_sets) or 'none'})")
        for key in ("num_prompts", "max_new_tokens", "samples_per_prompt", "batch_size"):
            check(eb[key] > 0, f"eval.exposure_bias.{key}", eb[key], "must be > 0")
        check(all(v > 0 for v in eb.report_at), "eval.exposure_bias.report_at", list(eb.report_at),
              "positions start at 1")
    ag = e.agreement
    if ag.enabled:
        check(ag.set in generation_sets, "eval.agreement.set", ag.set,
              f"not a generation set of this profile ({', '.join(generation_sets) or 'none'})")
        check(ag.num_items is None or ag.num_items > 0, "eval.agreement.num_items", ag.num_items,
              "must be > 0 (or null)")
    le = e.lm_eval
    check(le.limit is None or le.limit > 0, "eval.lm_eval.limit", le.limit, "must be > 0 (or null)")
    check(le.batch_size > 0, "eval.lm_eval.batch_size", le.batch_size, "must be > 0")
