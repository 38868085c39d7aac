"""Package layout: the top-level folders are importable only under one root, ``lifelong.*``.

The metadata is in ``pyproject.toml``; this file only maps folders to packages (setuptools
``package_dir``), so that ``agents/`` is ``lifelong.agents`` and so on, and ships ``configs/`` as
the package data of ``lifelong.configs``. Sub-packages (e.g. ``kernels/gated_linear/``) are found
by walking each folder, so a new kernel family needs no edit here.
"""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = "lifelong"
#: top-level folder -> sub-package of ``lifelong``
FOLDERS = ("agents", "envs", "memory_layers", "kernels", "tracking", "configs")

package_dir = {ROOT: ROOT}
packages = [ROOT]
for folder in FOLDERS:
    package_dir[f"{ROOT}.{folder}"] = folder
    packages.append(f"{ROOT}.{folder}")
    packages += [f"{ROOT}.{folder}.{sub}" for sub in find_packages(folder)]

config_files = sorted(str(p.relative_to("configs")) for p in Path("configs").rglob("*.yaml"))

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={f"{ROOT}.configs": config_files},
    include_package_data=False,
)
