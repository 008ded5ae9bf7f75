"""The evaluation sets bundled with kdbench (kdbench/assets/evalsets/*.jsonl.gz, provenance and licences in its
PROVENANCE.md): the source of a hub set (source.kind=hf) that names its copy in `source.bundled`, when the hub is
off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) or cannot be reached.

Whether the hub can be reached is probed once per process with one short request, instead of paying the
datasets library's retries (about 23 s per set when the hub's name does not resolve)."""

from __future__ import annotations

import functools
import gzip
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from kdbench.data.sources import DataError, jsonl_records
from kdbench.paths import ASSETS_DIR

log = logging.getLogger(__name__)

EVALSETS_DIR = ASSETS_DIR / "evalsets"
SUFFIX = ".jsonl.gz"
# Either variable switches the hub off, as it does for huggingface_hub and datasets.
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
PROBE_TIMEOUT_S = 3.0
# The hub set (id, data_files, split) each bundled file is a copy of: a source whose path is overridden to another
# set keeps its `bundled` key, and must not be read from the wrong copy.
HUB_SETS = {
    "dollyeval_minillm_500": ("MiniLLM/dolly", "valid.jsonl", "train"),
    "selfinst_minillm_242": ("MiniLLM/self-inst", "valid.jsonl", "train"),
    "vicunaeval_minillm_80": ("MiniLLM/Vicuna", "valid.jsonl", "train"),
    "sni_minillm_1694": ("MiniLLM/sinst", "11_/valid.jsonl", "train"),
    "unni_dtkd_1050": ("MiniLLM/uinst", "0_2/valid.jsonl", "train"),
    "sst2_dev": ("stanfordnlp/sst2", None, "validation"),
    "boolq_dev": ("google/boolq", None, "validation"),
}


def bundled_names() -> list[str]:
    """The names `source.bundled` accepts: the bundled files without .jsonl.gz."""
    return sorted(p.name[:-len(SUFFIX)] for p in EVALSETS_DIR.glob(f"*{SUFFIX}"))


def bundled_path(name: str) -> Path:
    """The bundled file of `name` (a DataError naming source.bundled and the names there are when there is none)."""
    path = EVALSETS_DIR / f"{name}{SUFFIX}"
    if not path.is_file():
        raise DataError(f"source.bundled={name!r}: kdbench ships no such evaluation set in {EVALSETS_DIR}; "
                        f"it ships {bundled_names()}")
    return path


def iter_bundled(path: Path) -> Iterator[tuple[dict, str]]:
    """(object, "file:line") for each non-blank line of a bundled .jsonl.gz file (read as any JSONL file is)."""
    with gzip.open(path, "rb") as f:
        yield from jsonl_records(f, path)


def _is_set(value: str | None) -> bool:
    # huggingface_hub's reading of a boolean variable
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


@functools.cache
def _probe(endpoint: str) -> str | None:
    """None when the hub at `endpoint` answers; otherwise why it cannot be reached. Once per endpoint and process."""
    from huggingface_hub import get_session

    try:
        response = get_session().head(endpoint, timeout=PROBE_TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 - the HTTP client's error types differ between huggingface_hub versions
        return f"the Hugging Face hub ({endpoint}) cannot be reached ({type(e).__name__}: {e})"
    if response.status_code >= 500:  # any other answer, even 401 or 404, is a hub that serves requests
        return f"the Hugging Face hub ({endpoint}) answered HTTP {response.status_code}"
    return None


def hub_unavailable() -> str | None:
    """Why the hub is not to be used (an offline variable is set, or the probe failed); None when it is."""
    for variable in OFFLINE_VARIABLES:
        if _is_set(os.environ.get(variable)):
            return f"{variable} is set"
    from huggingface_hub import constants  # ENDPOINT honours HF_ENDPOINT

    return _probe(constants.ENDPOINT)


def bundled_instead(name: str, data_files: str | None, split: str, bundled: str | None) -> Path | None:
    """The bundled copy to read instead of the hub set (`name`, `data_files`, `split`), or None: read the hub. A
    name that is not bundled fails whether or not the hub is up, so a typo in source.bundled shows at once."""
    if not bundled:
        return None
    path = bundled_path(bundled)
    reason = hub_unavailable()
    if reason is None:
        return None
    hub_set = f"data source {name!r} (split {split!r}{f', data_files {data_files!r}' if data_files else ''})"
    copy_of = HUB_SETS.get(bundled)
    if copy_of != (name, data_files, split):
        raise DataError(f"{hub_set}: {reason}, and source.bundled={bundled!r} is a copy of {copy_of}, not of this "
                        f"set: point source.path at a local JSONL copy of it, or use the hub")
    log.warning("%s: %s; reading the copy bundled with kdbench instead: %s", hub_set, reason, path)
    return path
