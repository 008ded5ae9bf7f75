"""Copy the default teacher (and its tokenizer) from a kdbench cache into the package's assets.

  KDBENCH_CACHE=/tmp/kdbench-ship kdbench-teacher trainer.num_threads=2     # the teacher stage, as any run does
  python scripts/ship_teacher.py /tmp/kdbench-ship                          # -> kdbench/assets/
  python scripts/ship_teacher.py /tmp/kdbench-ship4 data=embedded_v4        # another config: the same overrides

The assets are then found by the same content keys a run computes, so a fresh install reuses them and any change
to the teacher's config, the data or the tokenizer (a new key) trains a new teacher instead.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from kdbench.paths import ASSETS_DIR, conf_dir
from kdbench.schema import register_configs
from kdbench.stages.teacher import teacher_key
from kdbench.stages.tokenizer import tokenizer_key


def main(cache: str, overrides: list[str]) -> None:
    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    tok_key = tokenizer_key(cfg.data.embedded)
    key = teacher_key(cfg.teacher, cfg.data, tok_key)
    src_teacher = Path(cache) / "teachers" / key
    src_tok = Path(cache) / "tokenizers" / tok_key
    for src in (src_teacher, src_tok):
        if not src.is_dir():
            sys.exit(f"{src} does not exist: run the teacher stage with KDBENCH_CACHE={cache} first")
    for src, dst in ((src_teacher, ASSETS_DIR / "teachers" / key), (src_tok, ASSETS_DIR / "tokenizers" / tok_key)):
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst)
        print(f"{src} -> {dst}")
    recipe = json.loads((src_teacher / "kdbench_recipe.json").read_text())
    (ASSETS_DIR / "teachers" / key / "RECIPE.md").write_text(
        f"# Shipped teacher {key}\n\n"
        f"Produced by kdbench's teacher stage from `conf/teacher/embedded.yaml` on the embedded benchmark "
        f"(version {cfg.data.embedded.version}, seed {cfg.data.embedded.seed}); {recipe['parameters']:,} parameters, "
        f"{recipe['train_seconds'] / 60:.0f} min of training on this machine's CPU.\n\n"
        "Reproduce it (same key, same weights up to floating-point nondeterminism):\n\n"
        f"```bash\nKDBENCH_CACHE=/tmp/kdbench-ship kdbench-teacher trainer.num_threads=2 {' '.join(overrides)}\n"
        f"python scripts/ship_teacher.py /tmp/kdbench-ship {' '.join(overrides)}\n```\n\n"
        "The full configuration and final validation loss are in `kdbench_recipe.json`.\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path.home() / ".cache" / "kdbench"), sys.argv[2:])
