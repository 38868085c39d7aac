"""Input checks of every kernel family: the one place where the layouts of DESIGN.md section 2 are
enforced.

Sequences: q, k ``[B, T, H, K]``, v ``[B, T, H, V]``, per-head tensors (gates, write strengths)
``[B, T, H]``; one token (``single_token``): the same without T. States are ``[B, H, K, V]`` tensors
or NamedTuples of them. Every check raises a one-line ValueError (TypeError for a state of the wrong
kind) that shows the expected layout, what was given and how to fix it. The family checks at the
end are what each op's guard (``guard.py``) and its torch / Triton forms call.
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch


def _lead(x: torch.Tensor) -> str:
    """The leading dims of the layout ``x`` is in: ``[B, H`` for one token, ``[B, T, H`` otherwise."""
    return "[B, H" if x.dim() == 3 else "[B, T, H"


def _shape(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


# ---- generic checks ---------------------------------------------------------------------------------


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}: choose one of {tuple(choices)}")


def check_qkv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, single_token: bool = False, counterpart: str | None = None,
) -> None:
    """q, k ``[B, T, H, K]`` and v ``[B, T, H, V]`` (``single_token``: ``[B, H, K]``, ``[B, H, V]``).

    ``counterpart`` names the op to use for the other layout (default: "the *_step op" for one
    token, "the sequence op" for sequences)."""
    ndim = 3 if single_token else 4
    if q.dim() != ndim or k.dim() != ndim or v.dim() != ndim:
        lead = "[B, H" if single_token else "[B, T, H"
        if single_token:
            hint = f"use {counterpart or 'the sequence op'} for [B, T, H, K] inputs"
        else:
            hint = f"use {counterpart or 'the *_step op'} for one token [B, H, K]"
        raise ValueError(
            f"q, k, v must be {lead}, K/V] tensors ({ndim}-D); got q {_shape(q)}, k {_shape(k)}, "
            f"v {_shape(v)} ({hint})"
        )
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape, got {_shape(q)} and {_shape(k)}")
    if v.shape[:-1] != k.shape[:-1]:
        raise ValueError(f"v {_shape(v)} must match k {_shape(k)} in every dim but the last")


def check_per_head(name: str, x: torch.Tensor, k: torch.Tensor, what: str) -> None:
    """``x`` holds one number per token and head: ``k.shape[:-1]`` (``[B, T, H]`` or ``[B, H]``)."""
    want = _shape(k)[:-1]
    if _shape(x) != want:
        raise ValueError(f"{name} must be {_lead(k)}] = {want} ({what}), got {_shape(x)}")


def check_per_channel(name: str, x: torch.Tensor, k: torch.Tensor, what: str) -> None:
    """``x`` has the shape of the keys: ``[B, T, H, K]`` (or ``[B, H, K]``)."""
    if x.shape != k.shape:
        raise ValueError(f"{name} must be {_lead(k)}, K] = {_shape(k)} ({what}), got {_shape(x)}")


def check_gate(g: torch.Tensor, k: torch.Tensor, *, per_channel: bool = False) -> None:
    """Log decays: one per head (``[B, T, H]``) or, ``per_channel``, one per key channel."""
    if per_channel:
        check_per_channel("g", g, k, "one log-decay per key channel")
    else:
        check_per_head("g", g, k, "one log-decay per head")


def check_state(state: torch.Tensor | None, k: torch.Tensor, v: torch.Tensor, *, hint: str = "") -> None:
    """A ``[B, H, K, V]`` state tensor for keys k ``[B, (T,) H, K]`` and values v ``[B, (T,) H, V]``,
    or None. ``hint`` is added to the message for a state that is not a tensor."""
    if state is None:
        return
    if not isinstance(state, torch.Tensor):
        raise TypeError(f"state must be a [B, H, K, V] tensor or None{hint}, got {type(state).__name__}")
    want = (k.shape[0], k.shape[-2], k.shape[-1], v.shape[-1])
    if _shape(state) != want:
        raise ValueError(f"state must be [B, H, K, V] = {want}, got {_shape(state)}")


def check_named_state(
    state: tuple, type_name: str, fields: dict[str, tuple[str, tuple[int, ...]]], fix: str,
) -> None:
    """A NamedTuple state named ``type_name``: ``fields`` maps each of its fields, in order, to its
    layout and expected shape. ``fix`` says how to build a valid state."""
    if getattr(state, "_fields", None) != tuple(fields):
        raise TypeError(
            f"state must be a {type_name}({', '.join(fields)}) or None, got {type(state).__name__}: {fix}"
        )
    for (name, (layout, want)), tensor in zip(fields.items(), state):
        if _shape(tensor) != want:
            raise ValueError(f"state.{name} must be {layout} = {want}, got {_shape(tensor)}: {fix}")


def check_cache(
    name: str, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor, ref_k: torch.Tensor, ref_v: torch.Tensor,
    *, size: int | None = None,
) -> None:
    """A key-value cache ``[B, H, N, K]`` / ``[B, H, N, V]`` / ``[B, N]`` bool matching new tokens
    ref ``[B, T, H, K]``; ``size`` fixes N."""
    b, h, kd, vd = ref_k.shape[0], ref_k.shape[-2], ref_k.shape[-1], ref_v.shape[-1]
    n = k.shape[2] if k.dim() == 4 else -1
    ok = (
        k.dim() == 4 and _shape(k) == (b, h, n, kd) and _shape(v) == (b, h, n, vd)
        and _shape(valid) == (b, n) and valid.dtype == torch.bool
        and (size is None or n == size)
    )
    if not ok:
        want_n = "N" if size is None else str(size)
        raise ValueError(
            f"{name} must hold k [{b}, {h}, {want_n}, {kd}], v [{b}, {h}, {want_n}, {vd}], valid "
            f"[{b}, {want_n}] bool, got {_shape(k)}, {_shape(v)}, {_shape(valid)} "
            f"{valid.dtype}: build it with the op's empty_* helper or the layer's init_state"
        )


def check_chunk_size(chunk_size: int, *, power_of_two_for: str | None = None) -> None:
    """Torch chunk forms: a positive int; a power of two when ``power_of_two_for`` names the op."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if power_of_two_for is not None and chunk_size & (chunk_size - 1):
        raise ValueError(f"{power_of_two_for} needs a power-of-two chunk_size (e.g. 16, 32, 64), got {chunk_size}")


def check_triton_chunk_size(chunk_size: int) -> None:
    """Triton chunk kernels: a power of two in [16, 128] (the tile sides of ``tl.dot``)."""
    if chunk_size not in (16, 32, 64, 128):
        raise ValueError(f"chunk_size must be one of 16, 32, 64, 128 for the Triton kernels, got {chunk_size}")


# ---- family checks ----------------------------------------------------------------------------------


def check_gated_linear_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None, state: torch.Tensor | None, *,
    per_channel: bool = False, single_token: bool = False, counterpart: str | None = None,
) -> None:
    """simple GLA (g ``[B, T, H]``) or GLA (``per_channel``, g ``[B, T, H, K]``); g None: no decay."""
    check_qkv(q, k, v, single_token=single_token, counterpart=counterpart)
    if g is not None:
        check_gate(g, k, per_channel=per_channel)
    check_state(state, k, v, hint=" (pass state.S for a GLAState)")


def check_linear_attn_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: tuple | None, *, single_token: bool = False,
    counterpart: str | None = None,
) -> None:
    """Linear attention: state ``LinearAttnState(S [B, H, K, V], z [B, H, K])`` or None."""
    check_qkv(q, k, v, single_token=single_token, counterpart=counterpart)
    if state is not None:
        B, H, K, V = k.shape[0], k.shape[-2], k.shape[-1], v.shape[-1]
        check_named_state(
            state, "LinearAttnState", {"S": ("[B, H, K, V]", (B, H, K, V)), "z": ("[B, H, K]", (B, H, K))},
            "pass None for zeros",
        )


def check_delta_rule_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None, beta: torch.Tensor,
    state: torch.Tensor | None, *, single_token: bool = False, counterpart: str | None = None,
) -> None:
    """(Gated) delta rule: g (None for DeltaNet) and beta ``[B, T, H]``, state ``[B, H, K, V]``."""
    check_qkv(q, k, v, single_token=single_token, counterpart=counterpart)
    check_per_head("beta", beta, k, "one write strength per head")
    if g is not None:
        check_gate(g, k)
    check_state(state, k, v)


def check_palimpsa_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, b: torch.Tensor, state: tuple | None,
    *, single_token: bool = False,
) -> None:
    """Palimpsa: g ``[B, T, H]``, b like v, state ``PalimpsaState(M, I_tilde)`` (both ``[B, H, K, V]``)."""
    check_qkv(q, k, v, single_token=single_token)
    check_per_head("g", g, k, "log decay: Palimpsa's decay is one scalar per head")
    if b.shape != v.shape:
        raise ValueError(f"b (importance rate) must have v's shape {_shape(v)}, got {_shape(b)}")
    if state is not None:
        kv = ("[B, H, K, V]", (k.shape[0], k.shape[-2], k.shape[-1], v.shape[-1]))
        check_named_state(state, "PalimpsaState", {"M": kv, "I_tilde": kv}, "use init_palimpsa_state(...)")


def check_ttt_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eta: torch.Tensor, state: tuple | None,
    ln_weight: torch.Tensor, ln_bias: torch.Tensor, mini_batch_size: int, *, single_token: bool = False,
) -> None:
    """TTT-Linear: q, k, v share D (the target is v - k), eta ``[B, T, H]``, LayerNorm affine
    ``[H, D]``, state ``TTTState`` or None."""
    check_qkv(q, k, v, single_token=single_token)
    if v.shape[-1] != k.shape[-1]:
        raise ValueError(f"TTT-Linear needs K = V (its target is v - k), got k {_shape(k)} and v {_shape(v)}")
    check_per_head("eta", eta, k, "one inner learning rate per token and head")
    B, H, D = k.shape[0], k.shape[-2], k.shape[-1]
    if ln_weight.shape != (H, D) or ln_bias.shape != (H, D):
        raise ValueError(
            f"ln_weight and ln_bias must be [H, V] = {(H, D)}, got {_shape(ln_weight)} and {_shape(ln_bias)}"
        )
    if mini_batch_size < 1:
        raise ValueError(f"mini_batch_size must be >= 1, got {mini_batch_size}")
    if state is not None:
        kv, bias = ("[B, H, D, D]", (B, H, D, D)), ("[B, H, 1, D]", (B, H, 1, D))
        check_named_state(
            state, "TTTState", {"W": kv, "b": bias, "grad_W": kv, "grad_b": bias, "pos": ("[B]", (B,))},
            "use zero_ttt_state(...), or None for zeros",
        )


def check_softmax_attn_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: tuple | None, *, single_token: bool = False,
) -> None:
    """Softmax attention: state ``KVCache(k, v, valid)`` of any length N, or None."""
    check_qkv(q, k, v, single_token=single_token)
    if state is not None:
        check_cache("KVCache", *state, k, v)


def check_window_attn_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: tuple | None, window: int, *,
    single_token: bool = False,
) -> None:
    """Sliding-window attention: ``window >= 1``, state ``WindowCache`` of ``window`` slots, or None."""
    check_qkv(q, k, v, single_token=single_token)
    if window < 1:
        raise ValueError(f"window must be >= 1 (the token itself), got {window}")
    if state is not None:
        check_cache("WindowCache", *state, k, v, size=window)


def check_lola_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: tuple | None, window: int, cache_size: int, *,
    single_token: bool = False,
) -> None:
    """LoLA: window and cache sizes >= 0, state ``LoLAState`` built for them, or None."""
    check_qkv(q, k, v, single_token=single_token)
    if window < 0 or cache_size < 0:
        raise ValueError(f"window ({window}) and cache_size ({cache_size}) must be >= 0")
    if state is not None:
        _check_lola_state(state, k, v, window, cache_size)


def _check_lola_state(state: tuple, k: torch.Tensor, v: torch.Tensor, window: int, cache_size: int) -> None:
    """A ``LoLAState`` for new tokens k ``[B, (T,) H, K]``, v ``[B, (T,) H, V]``."""
    b, h, kd, vd = k.shape[0], k.shape[-2], k.shape[-1], v.shape[-1]
    w, c = window, cache_size
    check_named_state(
        state, "LoLAState",
        {
            "S": ("[B, H, K, V]", (b, h, kd, vd)), "z": ("[B, H, K]", (b, h, kd)),
            "window_k": ("[B, H, window, K]", (b, h, w, kd)), "window_v": ("[B, H, window, V]", (b, h, w, vd)),
            "window_valid": ("[B, window]", (b, w)),
            "cache_k": ("[B, H, cache_size, K]", (b, h, c, kd)), "cache_v": ("[B, H, cache_size, V]", (b, h, c, vd)),
            "cache_valid": ("[B, H, cache_size]", (b, h, c)), "cache_sre": ("[B, H, cache_size]", (b, h, c)),
            "cache_birth": ("[B, H, cache_size]", (b, h, c)), "count": ("[B]", (b,)),
        },
        f"build it with empty_lola_state(...) using the op's window ({w}) and cache_size ({c})",
    )

