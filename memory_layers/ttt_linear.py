"""TTT-Linear (Sun et al., 2024) as a memory mixer.

Each head holds a linear inner model trained at test time on the self-supervised loss
1/2 ||LN(k W + b) - (v - k)||^2 by mini-batch gradient descent with a learnable per-token
learning rate eta_t = base_lr * sigmoid(eta_proj(x_t)) / head_dim (``kernels/ttt``). The head
output is the TTT paper's residual inner model applied to the query, z = q + LN(q W_t + b_t),
followed by a per-head RMSNorm, a SiLU output gate and ``o_proj``.

The state is ``TTTState(W, b, grad_W, grad_b, pos)``: the weights at the start of the pending
mini-batch, the sums of its gradients so far and its token count. Carrying the unfinished
mini-batch is what makes one token at a time (``step``) equal a whole segment (``forward``) and
a split segment equal the whole one. The initial weights (W_init, b_init) are parameters.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lifelong.kernels.ttt import TTTState, ln_fwd, ttt_linear, ttt_linear_step
from lifelong.kernels.utils.backend import BACKENDS
from lifelong.memory_layers.modules import HeadRMSNorm
from lifelong.memory_layers.protocol import MemoryMixer

LN_EPS = 1e-6


class TTTLinear(MemoryMixer):
    """TTT-Linear mixer: x ``[B, T, D]`` -> y ``[B, T, D]`` with state ``TTTState``."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        mini_batch_size: int = 16,
        base_lr: float = 1.0,
        backend: str = "auto",
    ) -> None:
        super().__init__(d_model, num_heads)
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: choose one of {BACKENDS}")
        if mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be >= 1, got {mini_batch_size}")
        if base_lr <= 0:
            raise ValueError(f"base_lr must be > 0, got {base_lr}")
        self.mini_batch_size = mini_batch_size
        self.base_lr = base_lr
        self.backend = backend
        d, h, hd = d_model, num_heads, self.head_dim
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.eta_proj = nn.Linear(d, h)
        self.ln_weight = nn.Parameter(torch.ones(h, hd))  # the inner model's LayerNorm
        self.ln_bias = nn.Parameter(torch.zeros(h, hd))
        self.W_init = nn.Parameter(torch.randn(h, hd, hd) * 0.02)
        self.b_init = nn.Parameter(torch.zeros(h, 1, hd))
        self.gate_proj = nn.Linear(d, d, bias=False)  # SiLU output gate
        self.o_norm = HeadRMSNorm(h, hd)
        self.o_proj = nn.Linear(d, d, bias=False)

    def _project(self, x: torch.Tensor):
        """x ``[..., D]`` -> q, k, v ``[..., H, hd]``, eta ``[..., H]``."""
        q, k, v = (self.split_heads(proj(x)) for proj in (self.q_proj, self.k_proj, self.v_proj))
        eta = self.base_lr * torch.sigmoid(self.eta_proj(x)) / self.head_dim
        return q, k, v, eta

    def _output(self, o: torch.Tensor, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Raw readout o and q ``[..., H, hd]``, x ``[..., D]`` -> y ``[..., D]``."""
        z = q + ln_fwd(o.unsqueeze(-2), self.ln_weight[:, None], self.ln_bias[:, None], LN_EPS).squeeze(-2)
        gate = F.silu(self.gate_proj(x)).view(z.shape)
        return self.o_proj((self.o_norm(z) * gate).flatten(-2))

    def _kernel_kwargs(self) -> dict:
        return dict(
            ln_weight=self.ln_weight, ln_bias=self.ln_bias, scale=1.0, eps=LN_EPS,
            mini_batch_size=self.mini_batch_size, backend=self.backend,
        )

    def init_state(self, batch_size: int, device: torch.device | str) -> TTTState:
        """Learned initial weights, an empty pending mini-batch."""
        W = self.W_init.to(device).unsqueeze(0).expand(batch_size, -1, -1, -1).float()
        b = self.b_init.to(device).unsqueeze(0).expand(batch_size, -1, -1, -1).float()
        pos = torch.zeros(batch_size, dtype=torch.long, device=device)
        return TTTState(W.clone(), b.clone(), torch.zeros_like(W), torch.zeros_like(b), pos)

    def _check_state(self, x: torch.Tensor, state: TTTState) -> None:
        expected = (x.shape[0], self.num_heads, self.head_dim, self.head_dim)
        if not isinstance(state, TTTState) or tuple(state.W.shape) != expected:
            got = tuple(state.W.shape) if isinstance(state, TTTState) else type(state).__name__
            raise ValueError(f"state must be TTTState(W {expected}, ...) from init_state(batch_size), got {got}")

    def forward_chunk(self, x: torch.Tensor, state: TTTState) -> tuple[torch.Tensor, TTTState]:
        """x ``[B, T, D]`` -> (y ``[B, T, D]``, state after the last token)."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be [B, T, {self.d_model}], got {tuple(x.shape)}")
        self._check_state(x, state)
        q, k, v, eta = self._project(x)
        o, state = ttt_linear(q, k, v, eta, state, **self._kernel_kwargs())
        return self._output(o.to(x.dtype), q, x), state

    def step(self, x: torch.Tensor, state: TTTState) -> tuple[torch.Tensor, TTTState]:
        """x ``[B, D]`` -> (y ``[B, D]``, state); equals ``forward(x[:, None], state)``."""
        if x.dim() != 2 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be [B, {self.d_model}] (one token), got {tuple(x.shape)}")
        self._check_state(x, state)
        q, k, v, eta = self._project(x)
        o, state = ttt_linear_step(q, k, v, eta, state, **self._kernel_kwargs())
        return self._output(o.to(x.dtype), q, x), state

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, num_heads={self.num_heads}, mini_batch_size={self.mini_batch_size}, "
            f"base_lr={self.base_lr}, backend={self.backend!r}"
        )
