"""Triton kernels shared by the matmul-form recurrences (simple GLA / Mamba2, GLA, linear attention,
delta rule), split by role as in flash-linear-attention's ``ops/common``: ``chunk_h`` (chunk states,
forward and backward), ``chunk_o`` (output and the per-token gradients), ``cumsum`` (chunk-local
cumulative gates) and ``fused_step`` (one token, for acting).

Every recurrence here is, inside a chunk of ``BT`` tokens with chunk-local cumulative log decay
``gc`` (``gc_t = sum of g over the chunk up to t``), ``h_n`` the state before chunk ``n``:

    o   = scale * (diag(e^gc) Q h_n + tril(Q K^T * e^(gc_i - gc_j)) V')
    h_{n+1} = e^gc_L h_n + (diag(e^(gc_L - gc)) K)^T V'

with ``V' = V`` for the gated linear family and ``V' = U - W h_n`` (the WY form) for the delta rule,
whose WY kernels live in ``kernels/delta_rule/triton.py``.

Layout: q, k, w ``[B, T, H, K]``; v, u, v' ``[B, T, H, V]``; gc ``[B, T, H]`` fp32 (GLA:
``[B, T, H, K]``); chunk states ``[B, NT, H, K, V]`` (fp32, or the input dtype for bf16/fp16
inputs). All accumulation is fp32; ``MM`` is the dtype fed to ``tl.dot`` (``kernels/utils/ops.py``).

Gate gradients use the reparametrisation q~ = q e^gc, v~ = v e^-gc (k~ = k e^-gc for the linear
family) inside each chunk, which gives ``dgc_t = q_t.dq_t - v_t.dv_t + [t = last] <dh_{n+1}, h_{n+1}>``
and ``dg = reverse cumsum of dgc within the chunk`` (``cumsum.chunk_local_cumsum(..., reverse=True)``).
"""
