"""Positive feature maps phi of the linear-attention states (linear attention, LoLA)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """``elu(x) + 1`` elementwise (any shape, feature dim K' = K), computed as
    ``exp(min(x, 0)) + relu(x)``: unlike ``F.elu(x) + 1`` (``expm1(x) + 1`` rounds to 0 below
    x ~ -17 in fp32) it stays > 0 down to x ~ -87, so normalisers ``phi(q)^T z`` keep their sign."""
    return x.clamp(max=0.0).exp() + F.relu(x)
