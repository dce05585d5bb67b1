"""The one build step pyproject.toml cannot express: a ``.pth`` file at the top of site-packages.

All metadata lives in pyproject.toml. This file only adds ``parsl_dragon_globus_compute.pth`` to
the wheel's root (regular and editable installs alike), so that a Globus Compute endpoint whose
YAML names ``engine: type: DragonEngine`` finds it (parsl_dragon/globus_compute/registration.py
says how, docs/globus-compute.md why). pip records the file and removes it on uninstall.
"""
import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_NAME = "parsl_dragon_globus_compute.pth"
# Run by Python's site module at interpreter start; imports nothing of Globus Compute (registration.py).
PTH_LINE = "import parsl_dragon.globus_compute.registration as _r; _r.install()\n"


class BuildWithPth(build_py):
    """build_py, plus the .pth file in the build directory's root (the wheel's purelib root)."""

    def run(self):
        super().run()
        roots = [self.build_lib]
        if getattr(self, "editable_mode", False):
            # setuptools' editable_wheel ignores build_lib; what it zips is install_lib (the unpacked wheel)
            roots.append(self.distribution.get_command_obj("install").install_lib)
        for root in roots:
            os.makedirs(root, exist_ok=True)
            with open(os.path.join(root, PTH_NAME), "w") as out:
                out.write(PTH_LINE)

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, PTH_NAME)]


setup(cmdclass={"build_py": BuildWithPth})
