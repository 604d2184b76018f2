"""Only a build hook; the package is described in pyproject.toml.

The Hydra configs live in conf/ at the top of the checkout (where the scripts and the
README point, and where they are edited); a wheel has no checkout, so build_py copies
conf/ into the built package as mamba_denoiser/conf, where the installed commands
(mamba_denoiser/console.py) find them. An editable install reads conf/ in place.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONF = Path(__file__).resolve().parent / "conf"


class BuildWithConfigs(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # the checkout's conf/ is used in place
        dst = Path(self.build_lib) / "mamba_denoiser" / "conf"
        shutil.copytree(CONF, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.pyc"))


setup(cmdclass={"build_py": BuildWithConfigs})
