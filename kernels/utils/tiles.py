"""Tile sides of the Triton kernels (powers of two, as ``tl.arange`` needs)."""
from __future__ import annotations

import triton


def block_size(n: int, cap: int = 64, floor: int = 16) -> int:
    """Power-of-two tile covering ``n``, at least ``floor`` (16: the smallest ``tl.dot`` side) and at
    most ``cap``."""
    return max(floor, min(cap, triton.next_power_of_2(n)))


def full_block(n: int) -> int:
    """Power-of-two tile covering all of ``n`` (at least 16)."""
    return max(16, triton.next_power_of_2(n))
