"""Where kdbench's own files are: configs, sweeps and shipped assets, in a checkout or an installed wheel."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"


def _first_existing(*candidates: Path) -> Path:
    for c in candidates:
        if c.is_dir():
            return c
    raise FileNotFoundError(f"none of {', '.join(map(str, candidates))} exists: the kdbench install is incomplete")


def conf_dir() -> Path:
    # A checkout (or editable install) has conf/ beside the package; a wheel carries a copy as kdbench/_conf.
    return _first_existing(PACKAGE_DIR.parent / "conf", PACKAGE_DIR / "_conf")


def sweeps_dir() -> Path:
    return _first_existing(PACKAGE_DIR.parent / "sweeps", PACKAGE_DIR / "_sweeps")
