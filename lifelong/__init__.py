"""lifelong: a simulator for lifelong in-context learning with parametric-attention memory mixers.

One import root: ``lifelong.kernels``, ``lifelong.memory_layers``, ``lifelong.agents``,
``lifelong.envs``, ``lifelong.tracking`` (top-level folders mapped by ``setup.py``), and the Hydra
configs as package data in ``lifelong.configs``.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lifelong")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
