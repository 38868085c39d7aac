"""The MQAR model: token embedding -> ``num_layers`` blocks -> LM head, the blocks being the
project's :class:`~lifelong.memory_layers.backbone.Backbone` of the chosen mixer (``configs/memory/``).

Each block is preceded by a short causal depthwise convolution over the sequence (``short_conv``
taps, 0 = none), added to the residual stream. Zoology's MQAR models pair every sequence mixer with
such a short convolution (and flash-linear-attention's layers carry one); here it is the same for
every mixer, outside it, so the mixers themselves are the project's, unchanged. It lets a value
token see the key before it, which is what a mixer then stores.

The head is applied only where a loss is taken (the query positions), so a large vocabulary costs
little. :func:`state_bytes` measures the mixers' memory state after a sequence.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from lifelong.memory_layers.registry import build_backbone
from lifelong.memory_layers.state import state_nbytes


class ShortConv(nn.Module):
    """Causal depthwise convolution over time: x ``[B, T, D]`` -> ``[B, T, D]`` (token t sees t-k+1..t)."""

    def __init__(self, d_model: int, taps: int) -> None:
        super().__init__()
        self.taps = taps
        self.conv = nn.Conv1d(d_model, d_model, taps, groups=d_model, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.pad(x.transpose(1, 2), (self.taps - 1, 0))
        return self.conv(h).transpose(1, 2)


class MQARModel(nn.Module):
    """tokens ``[B, T]`` -> logits ``[B, T, V]`` (or at chosen positions)."""

    def __init__(self, vocab_size: int, d_model: int, num_layers: int, mlp_ratio: float,
                 memory_cfg: Mapping[str, Any], short_conv: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.backbone = build_backbone(memory_cfg, d_model, num_layers, mlp_ratio)
        self.convs = nn.ModuleList(ShortConv(d_model, short_conv) for _ in range(num_layers)) if short_conv else None
        self.head = nn.Linear(d_model, vocab_size)

    def hidden(self, tokens: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """tokens ``[B, T]`` -> (features ``[B, T, D]``, the mixers' states after the last token)."""
        x = self.embed(tokens)
        state = self.backbone.init_state(tokens.shape[0], tokens.device)
        new_states = []
        for i, (block, s) in enumerate(zip(self.backbone.blocks, state)):
            if self.convs is not None:
                x = x + self.convs[i](x)
            x, s = block(x, s)
            new_states.append(s)
        return self.backbone.norm(x), tuple(new_states)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, T, V]``, or ``[B, P, V]`` at ``positions`` ``[B, P]`` (long)."""
        h, _ = self.hidden(tokens)
        if positions is not None:
            h = torch.gather(h, 1, positions[..., None].expand(-1, -1, h.shape[-1]))
        return self.head(h)


def state_bytes(model: MQARModel, seq_len: int) -> list[int]:
    """Bytes of each layer's mixer state for one sequence after ``seq_len`` tokens (constant for a
    parametric mixer; softmax attention's cache grows with the tokens). Measured on the states the
    mixers return, so it follows their real shapes (LoLA's window and cache included)."""
    device = next(model.parameters()).device
    tokens = torch.zeros(1, seq_len, dtype=torch.long, device=device)
    with torch.no_grad():
        _, states = model.hidden(tokens)
    return [state_nbytes(s) for s in states]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
