"""Comparing nested states (dicts, lists, tuples, numpy arrays) in tests."""
from __future__ import annotations

from typing import Any

import numpy as np


def same(a: Any, b: Any, *, exact_types: bool = False) -> bool:
    """``a`` equals ``b`` element by element; ``exact_types`` also requires equal types and array dtypes
    (a restored env state must give back ``np.int64``, not ``int``)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], exact_types=exact_types) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y, exact_types=exact_types) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return (not exact_types or a.dtype == b.dtype) and np.array_equal(a, b)
    return (not exact_types or type(a) is type(b)) and a == b
