"""Autotune config lists of the Triton kernels."""
from __future__ import annotations

import triton

from lifelong.kernels.utils.backend import triton_interpret


def autotune_configs(configs: list, interpret_config_index: int = 0) -> list:
    """All autotune configs on a GPU; one config under the interpreter (it cannot benchmark)."""
    return [configs[interpret_config_index]] if triton_interpret() else configs


def warp_configs(*pairs: tuple[int, int]) -> list:
    """One config per ``(num_warps, num_stages)`` pair (the first is the one used under the interpreter)."""
    return autotune_configs([triton.Config({}, num_warps=w, num_stages=s) for w, s in pairs])


def v_tile_configs() -> list:
    """Configs of the kernels that run sequentially over chunks: their parallelism is B * H * V / BV,
    so the V tile ``BV`` is tuned too (the first config is the one used under the interpreter)."""
    return autotune_configs([
        triton.Config({"BV": bv}, num_warps=w, num_stages=s)
        for bv in (64, 32) for w in (4, 8) for s in (2, 3)
    ])
