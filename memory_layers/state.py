"""Memory states and the utilities that walk them.

A state is a NamedTuple of fp32 tensors (a backbone's state is a tuple with one such per layer);
its shapes never depend on the number of tokens seen, softmax attention's growing cache aside.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils import _pytree as pytree

# A state is a NamedTuple of tensors (or a tuple of such per layer in a backbone).
State = Any


def tree_map(fn: Callable[[Any], Any], state: State) -> State:
    """Apply ``fn`` to every leaf of a (nested) state, keeping its NamedTuple types."""
    return pytree.tree_map(fn, state)


def tree_leaves(state: State) -> list[torch.Tensor]:
    """The tensor leaves of a (nested) state, in traversal order."""
    return [leaf for leaf in pytree.tree_leaves(state) if isinstance(leaf, torch.Tensor)]


def clone_state(state: State) -> State:
    """A deep copy that shares no storage with ``state`` (used by probes)."""
    return tree_map(lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t, state)


def state_nbytes(state: State) -> int:
    """Total bytes held by the state's tensors."""
    return sum(t.numel() * t.element_size() for t in tree_leaves(state))


def state_is_finite(state: State) -> bool:
    """True when no floating-point leaf holds a NaN or an infinity."""
    return all(bool(torch.isfinite(t).all()) for t in tree_leaves(state) if t.is_floating_point())


def effective_rank(matrix: torch.Tensor, eps: float = 1e-12) -> float:
    """exp(entropy of the normalised singular values), averaged over leading dims.

    ``matrix``: ``[..., K, V]``. Returns a value in [1, min(K, V)] (0 for an all-zero matrix).
    """
    m = matrix.detach().float().reshape(-1, matrix.shape[-2], matrix.shape[-1])
    s = torch.linalg.svdvals(m)  # [N, min(K, V)]
    total = s.sum(-1, keepdim=True)
    p = s / total.clamp_min(eps)
    entropy = -(p * torch.log(p.clamp_min(eps))).sum(-1)
    erank = torch.where(total.squeeze(-1) > eps, torch.exp(entropy), torch.zeros_like(entropy))
    return float(erank.mean())
