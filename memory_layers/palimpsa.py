"""Palimpsa (Bayesian metaplasticity, arXiv 2602.09075) as a memory mixer.

Mamba2's projections and decay, plus a per-element precision I ``[K, V]`` per head (DESIGN.md 2)::

    I_t  = f_t I_{t-1} + (1 - f_t) I_p + k_t^2 (x) b_t,      b_t = sigmoid(b_proj(x_t)) in [0, 1]^V
    mu_t = (f_t I_{t-1} . mu_{t-1} + k_t v_t^T) / I_t,       o_t = mu_t^T q_t * K^-1/2

Writes that matter (large b) raise the precision of the memory elements they touch, so later writes
move them less (plasticity 1 / I); forgetting (f_t < 1) relaxes the precision back to the prior
I_p. The kernel carries the ratio form ``PalimpsaState(M = mu . I, I_tilde = I - I_p)``.

Prior precision: with ``metaplasticity=True`` it is learned per head, ``I_p = softplus(raw)``
(positive), initialised to ``prior_precision``. With ``metaplasticity=False`` the layer sets b = 0,
holds I_p fixed (it then only rescales o ahead of the scale-invariant head RMSNorm) and has exactly
Mamba2's parameters: a Mamba2 ``state_dict`` loads strictly and gives Mamba2's outputs.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lifelong.kernels.palimpsa import PalimpsaState, init_palimpsa_state, palimpsa, palimpsa_step
from lifelong.memory_layers.mamba2 import Mamba2
from lifelong.memory_layers.modules import inverse_softplus
from lifelong.memory_layers.state import effective_rank, state_nbytes


class Palimpsa(Mamba2):
    """Palimpsa mixer: ``x [B, T, D] -> y [B, T, D]`` with a ``PalimpsaState`` (``[B, H, K, V]`` x 2)."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        metaplasticity: bool = True,
        prior_precision: float = 1.0,
        chunk_size: int = 64,
        backend: str = "auto",
        *,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        a_min: float = 1.0,
        a_max: float = 16.0,
    ) -> None:
        super().__init__(d_model, num_heads, dt_min=dt_min, dt_max=dt_max, a_min=a_min, a_max=a_max,
                         chunk_size=chunk_size, backend=backend)
        if not prior_precision > 0:
            raise ValueError(f"prior_precision must be positive (the precision memory relaxes to), got "
                             f"{prior_precision}; 1.0 makes metaplasticity=False exactly Mamba2")
        self.metaplasticity = metaplasticity
        init = torch.full((num_heads,), float(prior_precision))
        if metaplasticity:
            self.b_proj = nn.Linear(d_model, d_model)  # importance rate per head and value channel
            self.prior_precision_raw = nn.Parameter(inverse_softplus(init))
        else:
            self.register_buffer("fixed_prior_precision", init, persistent=False)

    def prior_precision(self) -> torch.Tensor:
        """I_p ``[H]``, positive."""
        if self.metaplasticity:
            return F.softplus(self.prior_precision_raw)
        return self.fixed_prior_precision

    def importance(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Importance rate b ``[..., H, V]`` in [0, 1] (zeros without metaplasticity)."""
        if not self.metaplasticity:
            return torch.zeros_like(v)
        return torch.sigmoid(self.split_heads(self.b_proj(x)))

    def init_state(self, batch_size: int, device: torch.device | str) -> PalimpsaState:
        return init_palimpsa_state(batch_size, self.num_heads, self.head_dim, self.head_dim, device)

    def forward_chunk(self, x: torch.Tensor, state: PalimpsaState) -> tuple[torch.Tensor, PalimpsaState]:
        """x ``[B, T, D]`` -> (y ``[B, T, D]``, state after the last token)."""
        q, k, v, g = self.project(x)
        o, state = palimpsa(q, k, v, g, self.importance(x, v), state, prior_precision=self.prior_precision(),
                            chunk_size=self.chunk_size, backend=self.backend)
        return self.output(o, x), state

    def step(self, x: torch.Tensor, state: PalimpsaState) -> tuple[torch.Tensor, PalimpsaState]:
        """x ``[B, D]`` -> (y ``[B, D]``, state): one fused recurrent step."""
        q, k, v, g = self.project(x)
        o, state = palimpsa_step(q, k, v, g, self.importance(x, v), state,
                                 prior_precision=self.prior_precision(), backend=self.backend)
        return self.output(o, x), state

    @torch.no_grad()
    def state_metrics(self, state: PalimpsaState) -> dict[str, float]:
        """Norm and effective rank of the posterior mean mu; mean/min/max of the precision I."""
        precision = self.prior_precision().to(state.I_tilde.device)[None, :, None, None] + state.I_tilde
        mu = state.M / precision
        return {
            "state_norm": float(mu.norm(dim=(-2, -1)).mean()),
            "state_erank": effective_rank(mu),
            "precision_mean": float(precision.mean()),
            "precision_min": float(precision.min()),
            "precision_max": float(precision.max()),
            "state_bytes": float(state_nbytes(state)),
        }
