"""Copies the top-level conf/ and sweeps/ into the wheel as kdbench/_conf and kdbench/_sweeps, so that a plain
(non-editable) `pip install .` gives a `kdbench` that runs from any folder. An editable install reads them in
place (kdbench.paths finds the checkout's folders first)."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithConfigs(build_py):
    def run(self):
        super().run()
        for src, dst in (("conf", "_conf"), ("sweeps", "_sweeps")):
            target = Path(self.build_lib) / "kdbench" / dst
            shutil.copytree(src, target, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildPyWithConfigs})
