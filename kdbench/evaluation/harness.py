"""Score an in-memory model on lm-eval tasks: kdbench's own local tasks (shipped next to this module) and any other
task lm-eval can find.

    run_lm_eval(model, tokenizer, ["kdbench_embedded", "kdbench_sst2"],
                task_data={"kdbench_embedded": "test.jsonl", "kdbench_sst2": "sst2_dev.jsonl"}, limit=100)
    -> {"kdbench_embedded/exact_match": 0.41, "kdbench_embedded/exact_match_stderr": 0.05,
        "kdbench_embedded/n": 100, "kdbench_sst2/acc": 0.62, ..., "_meta": {...}}

The model is wrapped as it is, not saved and reloaded: `HFLM(pretrained=model, tokenizer=tokenizer)` scores the
very object passed in (lm-eval puts it in eval mode; its training mode is restored afterwards), and
`lm_eval.simple_evaluate` runs the tasks.

Shipped tasks (kdbench/evaluation/lm_eval_tasks/, package data)
    kdbench_embedded  the embedded benchmark's test split, rows {instruction, input, output, category}; MiniLLM's
                      Alpaca prompt rendered by kdbench.data.template.render_prompt (the same function training
                      uses); greedy generation (at most 128 new tokens) stopped at EOS or a blank line;
                      `exact_match` is strict: case and punctuation count, surrounding whitespace stripped.
    kdbench_sst2      SST-2 dev, JSONL rows {"text", "label"} (1 = positive); "Review: {text}\\nSentiment:" scored
                      over " negative" / " positive"; acc and acc_norm.
    kdbench_boolq     BoolQ dev, JSONL rows {passage, question, answer, label} (1 = true);
                      "{passage}\\nQuestion: {question}?\\nAnswer:" scored over " no" / " yes"; acc.

How data files are wired
    The shipped YAMLs read JSONL through the datasets `json` builder (`dataset_path: json`) but name no file:
    where the data lives is only known at run time (kdbench generates the embedded test split; SST-2 and BoolQ
    are wherever the user keeps them). `task_data` maps a task name to its JSONL file. For each such task this
    module writes, into a temporary folder, a two-key YAML

        include: <absolute path of the task's own YAML>
        dataset_kwargs: {data_files: {<the task's evaluation split>: <absolute JSONL path>}}

    and passes that file's path to lm-eval as the task. `include` and YAML paths as task specs are lm-eval's own
    public mechanisms: the task keeps its name, its `!function`s still resolve next to the original YAML, and
    the task index is not touched (no duplicate-name override). The same works for a user's task found through
    `include_path` (any task whose `dataset_path` is a file builder such as `json`). Tasks missing from the
    shipped folder and `include_path` are looked up among lm-eval's built-in tasks (indexing them costs ~6 s;
    built-in tasks download their data unless it is already in the Hugging Face cache).

    Every check runs before the model is touched: an unknown task, a local task with no `task_data` entry, and a
    data file that does not exist each raise an error naming the task (and the file).

Result keys (a flat, JSON-serialisable dict)
    "<task>/<metric>"          lm-eval's value for filter "none" (lm-eval's key "<metric>,none"), as lm-eval
                               reports it: acc, acc_norm and kdbench_embedded's exact_match are fractions in [0, 1]
                               (kdbench.evaluation.metrics.exact_match reports x 100; this does not)
    "<task>/<metric>@<filter>" any other filter, e.g. lm-eval's gsm8k "exact_match,strict-match" becomes
                               "gsm8k/exact_match@strict-match"
    "<task>/<metric>_stderr"   the standard error where lm-eval computed one (non-numeric or non-finite values,
                               e.g. lm-eval's "N/A", are left out)
    "<task>/n"                 documents evaluated (after `limit`)
    "_meta"                    lm-eval and transformers versions, the run's settings, and per task: lm-eval's task
                               version, n-shot, documents available, a sha256 of the effective task config
                               (prompt functions included as source; data file paths excluded), the data file
                               and its sha256
    "_samples"                 only with log_samples=True: lm-eval's per-document records (prompt, response,
                               target, per-document metrics), JSON-safe
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import random
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

SHIPPED_TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
SHIPPED_TASKS = ("kdbench_embedded", "kdbench_sst2", "kdbench_boolq")

# datasets builders that read local files: a task built on one of them needs data_files.
_FILE_BUILDERS = {"json", "csv", "parquet", "text", "arrow"}
# Mean-aggregated metrics (acc, exact_match) get a closed-form stderr; this only bounds bootstrapped ones.
_BOOTSTRAP_ITERS = 1000


class UnknownTaskError(ValueError):
    """A requested task is not in kdbench's shipped tasks, `include_path`, or lm-eval's built-in tasks."""


class TaskDataError(ValueError):
    """A local task has no data file: pass task_data={task: path}."""


def write_jsonl(rows: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write rows (e.g. generate_splits(...)["test"]) as JSONL for task_data; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _task_manager(include_paths: list[Path], include_defaults: bool):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[SHIPPED_TASKS_DIR, *include_paths], include_defaults=include_defaults)


def _eval_split(cfg: Mapping[str, Any]) -> str:
    return cfg.get("test_split") or cfg.get("validation_split") or "test"


def _plain_local_file(value: Any) -> bool:
    return isinstance(value, str) and "://" not in value and not any(c in value for c in "*?[")


def _resolve_tasks(tasks: list[str], include_paths: list[Path], task_data: Mapping[str, str | Path]):
    """Index the tasks and check every name and data file; no model work here.

    Returns (task_manager, overrides) where overrides maps task -> (evaluation split, absolute data path) for the
    tasks whose data file this call supplies.
    """
    from lm_eval.tasks._index import Kind

    tm = _task_manager(include_paths, include_defaults=False)
    missing = [t for t in tasks if t not in tm.task_index]
    if missing:
        tm = _task_manager(include_paths, include_defaults=True)
        missing = [t for t in tasks if t not in tm.task_index]
    if missing:
        local = sorted(n for n, e in tm.task_index.items()
                       if e.yaml_path is not None and not str(e.yaml_path).startswith(str(_lm_eval_tasks_dir())))
        raise UnknownTaskError(
            f"unknown lm-eval task(s) {missing}: not among kdbench's tasks ({', '.join(SHIPPED_TASKS)}), "
            f"the include_path folders {[str(p) for p in include_paths]}, or lm-eval's built-in tasks "
            f"(local tasks found: {local})")

    overrides: dict[str, tuple[str, Path]] = {}
    for name in tasks:
        entry = tm.task_index[name]
        cfg = entry.cfg or {}
        if name in task_data:
            if entry.kind is not Kind.TASK or entry.yaml_path is None:
                raise TaskDataError(f"task_data[{name!r}]: only a single YAML task can take a data file, "
                                    f"and {name!r} is a {entry.kind.name.lower()}")
            path = Path(task_data[name]).expanduser().resolve()
            if not path.is_file():
                raise FileNotFoundError(f"task {name!r}: data file {path} does not exist "
                                        f"(task_data[{name!r}] = {str(task_data[name])!r})")
            overrides[name] = (_eval_split(cfg), path)
            continue
        if entry.kind is Kind.TASK and cfg.get("dataset_path") in _FILE_BUILDERS:
            data_files = (cfg.get("dataset_kwargs") or {}).get("data_files")
            if not data_files:
                raise TaskDataError(
                    f"task {name!r} reads a local {cfg.get('dataset_path')} file and none was given: pass "
                    f"task_data={{{name!r}: '/path/to/{name}.jsonl'}}")
            values = data_files.values() if isinstance(data_files, Mapping) else (
                data_files if isinstance(data_files, list) else [data_files])
            for v in values:
                for f in (v if isinstance(v, list) else [v]):
                    if _plain_local_file(f) and not Path(f).expanduser().is_file():
                        raise FileNotFoundError(f"task {name!r}: data file {f} (named in {entry.yaml_path}, "
                                                f"relative to the current folder) does not exist")
    return tm, overrides


def _lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).resolve().parent


def _write_override_yaml(folder: Path, name: str, yaml_path: Path, cfg: Mapping[str, Any], split: str,
                         data: Path) -> Path:
    import yaml

    dataset_kwargs = dict(cfg.get("dataset_kwargs") or {})
    dataset_kwargs["data_files"] = {split: str(data)}
    out = folder / f"{name}.yaml"
    out.write_text(yaml.safe_dump({"include": str(Path(yaml_path).resolve()), "dataset_kwargs": dataset_kwargs},
                                  sort_keys=False), encoding="utf-8")
    return out


def _stable(obj: Any) -> Any:
    """JSON fallback for hashing configs: functions by their source, anything else by type and str."""
    if callable(obj):
        try:
            return inspect.getsource(obj)
        except (OSError, TypeError):
            return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', type(obj).__name__)}"
    return f"<{type(obj).__name__}> {obj}"


def _config_sha256(config: Mapping[str, Any]) -> str:
    cfg = json.loads(json.dumps(config, default=_stable))
    (cfg.get("dataset_kwargs") or {}).pop("data_files", None)
    (cfg.get("metadata") or {}).pop("config_source", None)
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _jsonable(obj: Any) -> Any:
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return obj.item()
        except (TypeError, ValueError):
            pass
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if callable(obj):
        return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', type(obj).__name__)}"
    return str(obj)


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def flatten_results(results: Mapping[str, Any]) -> dict[str, Any]:
    """lm-eval's results["results"] and ["n-samples"] as {"<task>/<metric>[@<filter>]": float, "<task>/n": int}."""
    flat: dict[str, Any] = {}
    for task, row in results.get("results", {}).items():
        for key, value in row.items():
            if "," not in key or not _finite_number(value):
                continue  # "alias", "name", "sample_len"; "N/A" stderrs
            metric, filt = key.split(",", 1)
            flat[f"{task}/{metric}" if filt == "none" else f"{task}/{metric}@{filt}"] = float(value)
    for task, counts in results.get("n-samples", {}).items():
        flat[f"{task}/n"] = int(counts["effective"])
    return flat


def _rng_state() -> tuple:
    import numpy as np
    import torch

    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda


def _set_rng_state(state: tuple) -> None:
    import numpy as np
    import torch

    py, npy, cpu, cuda = state
    random.setstate(py)
    np.random.set_state(npy)
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def run_lm_eval(model, tokenizer, tasks: list[str], *, limit: int | None = None, batch_size: int = 8,
                max_length: int | None = None, num_fewshot: int | None = None,
                include_path: str | Path | None = None, task_data: dict[str, str] | None = None, seed: int = 0,
                log_samples: bool = False) -> dict:
    """Evaluate the in-memory `model` (a transformers PreTrainedModel) with lm-eval on `tasks`.

    limit: the first `limit` documents of each task (lm-eval's --limit); None = all.
    max_length: context length lm-eval assumes (default: the model config's max_position_embeddings); generation
        tasks keep max_length - 128 prompt tokens (left-truncated).
    num_fewshot: None keeps each task's own setting (0 for kdbench's tasks); kdbench's tasks have only an
        evaluation split, so few-shot examples are drawn from it (lm-eval leaves the current document out).
    include_path: a folder of further lm-eval task YAMLs (searched after kdbench's shipped folder; a task of the
        same name there overrides the shipped one).
    task_data: task name -> JSONL file (see the module docstring); entries for tasks not requested are ignored.
    seed: lm-eval's python / numpy / torch / few-shot seeds; the caller's RNG states are restored afterwards.

    Returns the flat dict described in the module docstring.
    """
    if isinstance(tasks, str):
        tasks = [tasks]
    tasks = list(dict.fromkeys(tasks))
    if not tasks:
        raise ValueError("run_lm_eval: no tasks given")
    include_paths = [] if include_path is None else [Path(include_path).expanduser().resolve()]
    for p in include_paths:
        if not p.is_dir():
            raise FileNotFoundError(f"include_path {p} is not a folder")
    task_data = dict(task_data or {})

    tm, overrides = _resolve_tasks(tasks, include_paths, task_data)

    import lm_eval
    import transformers
    from lm_eval.models.huggingface import HFLM

    was_training = model.training
    rng = _rng_state()
    try:
        with tempfile.TemporaryDirectory(prefix="kdbench-lm-eval-") as tmp:
            specs: list[str] = []
            for name in tasks:
                if name in overrides:
                    entry = tm.task_index[name]
                    split, data = overrides[name]
                    specs.append(str(_write_override_yaml(Path(tmp), name, entry.yaml_path, entry.cfg or {},
                                                          split, data)))
                else:
                    specs.append(name)
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
            res = lm_eval.simple_evaluate(
                model=lm, tasks=specs, num_fewshot=num_fewshot, limit=limit, task_manager=tm,
                bootstrap_iters=_BOOTSTRAP_ITERS, log_samples=log_samples, random_seed=seed,
                numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    finally:
        _set_rng_state(rng)
        model.train(was_training)
    if res is None:  # only non-zero ranks of a distributed run get None
        raise RuntimeError("lm_eval.simple_evaluate returned no results")

    out = flatten_results(res)
    task_meta: dict[str, Any] = {}
    for name, config in res.get("configs", {}).items():
        meta: dict[str, Any] = {
            "version": _jsonable(res.get("versions", {}).get(name)),
            "n_shot": _jsonable(res.get("n-shot", {}).get(name)),
            "n_available": (res.get("n-samples", {}).get(name) or {}).get("original"),
            "config_sha256": _config_sha256(config),
        }
        if name in overrides:
            meta["data_file"] = str(overrides[name][1])
            meta["data_sha256"] = _file_sha256(overrides[name][1])
        task_meta[name] = meta
    out["_meta"] = {
        "lm_eval_version": res.get("lm_eval_version") or getattr(lm_eval, "__version__", None),
        "transformers_version": transformers.__version__,
        "tasks_requested": tasks,
        "limit": limit,
        "num_fewshot": num_fewshot,
        "batch_size": batch_size,
        "max_length": res.get("max_length"),
        "seed": seed,
        "bootstrap_iters": _BOOTSTRAP_ITERS,
        "tasks": task_meta,
    }
    if log_samples:
        out["_samples"] = json.loads(json.dumps(res.get("samples", {}), default=_jsonable))
    return out
