"""LoLA's acting step as one C++ call on the CPU: the same token as ``step.lola_attn_step_fast``.

The Python fast step is ~45 small tensor ops per token, each paying the dispatcher's fixed cost
(microseconds) on tensors of a few hundred floats, which makes LoLA's acting step several times
Gated DeltaNet's. Here one C++ function does the whole token: the recall errors through the very
ATen ops (same shapes, same order) that the reference and the chunk form use, so the decisions and
the stored SRE stay bit-identical, and everything else (the victim, the canonical cache order, the
fold, the window shift, the readout) in plain loops over the ``B * H`` rows. The fold is one
product and one add per entry, as in ``lola_select.fold`` (built with ``-ffp-contract=off`` so no
fused multiply-add changes a rounding), so the linear state is bit-identical too; the output equals
the Python step's up to float rounding (its sums run in another order).

The extension is compiled on first use with the system's C++ compiler (``torch.utils.cpp_extension``,
~30-60 s once, cached under ``TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions``). Without a
compiler, or with ``LIFELONG_LOLA_CPP=0``, the Python fast step runs instead (one warning says why).
``tests/kernels/test_lola_step_fast.py`` checks it against the reference step over long streams.
"""
from __future__ import annotations

import os
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

from lifelong.kernels.attention.lola_select import DEN_EPS, RECALL_EPS
from lifelong.kernels.attention.states import SELECTIONS, LoLAState, resolve_scale

#: set to "0" to act with the Python fast step (``step.lola_attn_step_fast``) even where C++ builds
ENV_SWITCH = "LIFELONG_LOLA_CPP"
_NAME = "lifelong_lola_step"

_SOURCE = r"""
#include <torch/extension.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

namespace {

// lola_select.hash_uniform for one (birth, head): the same integer hash, the same float conversion
float hash_uniform(int64_t birth, int64_t head) {
  const int64_t mask = 0x7FFFFFFF;
  int64_t x = ((birth & mask) * 0x5BD1E995LL + head * 0x27D4EB2FLL + 0x3C6EF372LL) & mask;
  const int64_t mults[2] = {0x45D9F3BLL, 0x2C1B3C6DLL};
  for (int i = 0; i < 2; ++i) {
    x = x ^ (x >> 15);
    x = (x * mults[i]) & mask;
  }
  x = x ^ (x >> 16);
  return static_cast<float>(x) / 2147483648.0f;
}

at::Tensor feature_map(const at::Tensor& x) {  // feature_maps.elu_feature_map, op for op
  return at::clamp_max(x, 0.0).exp() + at::relu(x);
}

}  // namespace

// One LoLA token for B lifetimes x H heads (fp32, contiguous): see kernels/attention/lola_select.py.
// Returns {o [B,H,V], S, z, window_k, window_v, window_valid, cache_k, cache_v, cache_valid,
// cache_sre, cache_birth, count}.
std::vector<at::Tensor> lola_step(
    at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor S, at::Tensor z, at::Tensor window_k,
    at::Tensor window_v, at::Tensor window_valid, at::Tensor cache_k, at::Tensor cache_v,
    at::Tensor cache_valid, at::Tensor cache_birth, at::Tensor count, at::Tensor gate,
    int64_t selection, double scale, double recall_eps, double den_eps) {
  q = q.contiguous(); k = k.contiguous(); v = v.contiguous(); S = S.contiguous(); z = z.contiguous();
  window_k = window_k.contiguous(); window_v = window_v.contiguous(); window_valid = window_valid.contiguous();
  cache_k = cache_k.contiguous(); cache_v = cache_v.contiguous(); cache_valid = cache_valid.contiguous();
  cache_birth = cache_birth.contiguous(); count = count.contiguous(); gate = gate.contiguous();
  const int64_t B = q.size(0), H = q.size(1), K = q.size(2), V = v.size(2);
  const int64_t eta = window_k.size(2), lam = cache_k.size(2), n = lam + 1, N = B * H;
  const auto fopt = q.options();

  // 1-2. candidates: the cache's pairs, then c (the window's oldest pair; the new one without a window)
  at::Tensor cand_k = at::empty({B, H, n, K}, fopt), cand_v = at::empty({B, H, n, V}, fopt);
  std::vector<char> cand_valid(N * n);
  std::vector<int64_t> cand_birth(N * n);
  {
    float* ck = cand_k.data_ptr<float>(); float* cv = cand_v.data_ptr<float>();
    const float* gk = cache_k.data_ptr<float>(); const float* gv = cache_v.data_ptr<float>();
    const bool* gvalid = cache_valid.data_ptr<bool>(); const int64_t* gbirth = cache_birth.data_ptr<int64_t>();
    const float* wk = window_k.data_ptr<float>(); const float* wv = window_v.data_ptr<float>();
    const bool* wvalid = window_valid.data_ptr<bool>(); const int64_t* cnt = count.data_ptr<int64_t>();
    const float* kp = k.data_ptr<float>(); const float* vp = v.data_ptr<float>();
    for (int64_t r = 0; r < N; ++r) {
      const int64_t b = r / H;
      std::memcpy(ck + r * n * K, gk + r * lam * K, sizeof(float) * lam * K);
      std::memcpy(cv + r * n * V, gv + r * lam * V, sizeof(float) * lam * V);
      std::memcpy(ck + (r * n + lam) * K, eta > 0 ? wk + r * eta * K : kp + r * K, sizeof(float) * K);
      std::memcpy(cv + (r * n + lam) * V, eta > 0 ? wv + r * eta * V : vp + r * V, sizeof(float) * V);
      for (int64_t j = 0; j < lam; ++j) {
        cand_valid[r * n + j] = gvalid[r * lam + j];
        cand_birth[r * n + j] = gbirth[r * lam + j];
      }
      cand_valid[r * n + lam] = eta > 0 ? wvalid[b * eta] : true;
      cand_birth[r * n + lam] = cnt[b] - eta;
    }
  }
  // recall errors with the reference's ops and shapes (bit-identical decisions)
  at::Tensor phi = feature_map(cand_k);
  at::Tensor SZ = at::cat({S, z.unsqueeze(-1)}, -1).view({N, K, V + 1});
  at::Tensor out = at::bmm(phi.view({N, n, K}), SZ);
  at::Tensor pred = out.narrow(-1, 0, V) / (out.narrow(-1, V, 1) + recall_eps);
  at::Tensor sre = at::linalg_vector_norm(pred - cand_v.view({N, n, V}), 2, at::IntArrayRef{-1}, false,
                                          c10::nullopt).contiguous();
  at::Tensor phi_q = feature_map(q);

  at::Tensor S_new = S.clone(), z_new = z.clone();
  at::Tensor nk = at::zeros({B, H, lam, K}, fopt), nv = at::zeros({B, H, lam, V}, fopt);
  at::Tensor nvalid = at::zeros({B, H, lam}, cache_valid.options());
  at::Tensor nsre = at::zeros({B, H, lam}, fopt);
  at::Tensor nbirth = at::zeros({B, H, lam}, cache_birth.options());
  at::Tensor wk_new = window_k, wv_new = window_v, wvalid_new = window_valid;
  if (eta > 0) {  // the window's newest eta - 1 pairs, then the new one
    wk_new = at::empty_like(window_k); wv_new = at::empty_like(window_v); wvalid_new = at::empty_like(window_valid);
    float* dk = wk_new.data_ptr<float>(); float* dv = wv_new.data_ptr<float>();
    const float* sk = window_k.data_ptr<float>(); const float* sv = window_v.data_ptr<float>();
    const float* kp = k.data_ptr<float>(); const float* vp = v.data_ptr<float>();
    for (int64_t r = 0; r < N; ++r) {
      std::memcpy(dk + r * eta * K, sk + (r * eta + 1) * K, sizeof(float) * (eta - 1) * K);
      std::memcpy(dk + (r * eta + eta - 1) * K, kp + r * K, sizeof(float) * K);
      std::memcpy(dv + r * eta * V, sv + (r * eta + 1) * V, sizeof(float) * (eta - 1) * V);
      std::memcpy(dv + (r * eta + eta - 1) * V, vp + r * V, sizeof(float) * V);
    }
    bool* dvalid = wvalid_new.data_ptr<bool>(); const bool* svalid = window_valid.data_ptr<bool>();
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t j = 0; j + 1 < eta; ++j) dvalid[b * eta + j] = svalid[b * eta + j + 1];
      dvalid[b * eta + eta - 1] = true;
    }
  }
  at::Tensor o = at::empty({B, H, V}, fopt);

  const float* phi_p = phi.data_ptr<float>(); const float* sre_p = sre.data_ptr<float>();
  const float* ck = cand_k.data_ptr<float>(); const float* cv = cand_v.data_ptr<float>();
  const float* Sp = S.data_ptr<float>(); const float* zp = z.data_ptr<float>();
  float* Sn = S_new.data_ptr<float>(); float* zn = z_new.data_ptr<float>();
  float* nkp = nk.data_ptr<float>(); float* nvp = nv.data_ptr<float>();
  bool* nvalidp = nvalid.data_ptr<bool>(); float* nsrep = nsre.data_ptr<float>(); int64_t* nbirthp = nbirth.data_ptr<int64_t>();
  const float* wkp = wk_new.data_ptr<float>(); const float* wvp = wv_new.data_ptr<float>();
  const bool* wvalidp = wvalid_new.data_ptr<bool>();
  const float* qp = q.data_ptr<float>(); const float* phiq = phi_q.data_ptr<float>();
  const float* gatep = gate.data_ptr<float>(); const int64_t* cnt = count.data_ptr<int64_t>();
  float* op = o.data_ptr<float>();
  const float inf = std::numeric_limits<float>::infinity();
  const int64_t L = eta + lam;
  std::vector<int64_t> order(n);
  std::vector<int64_t> key(n);
  std::vector<float> scores(L > 0 ? L : 1);

  for (int64_t r = 0; r < N; ++r) {
    const int64_t b = r / H, h = r % H;
    const char* valid = cand_valid.data() + r * n;
    const int64_t* birth = cand_birth.data() + r * n;
    // 2-3. the victim: the lowest keep-priority (torch.argmin: the first minimum, a NaN wins)
    int64_t victim = 0;
    float best = 0.0f;
    for (int64_t j = 0; j < n; ++j) {
      float s;
      if (!valid[j]) s = -inf;
      else if (selection == 0) s = sre_p[r * n + j];
      else if (selection == 1) s = static_cast<float>(birth[j] - cnt[b]);
      else s = hash_uniform(birth[j], h);
      if (std::isnan(s)) { victim = j; break; }
      if (j == 0 || s < best) { victim = j; best = s; }
    }
    // the new cache order (lola_select.canonical_order): valid by birth, empty ones, the victim last
    const int64_t EMPTY = std::numeric_limits<int64_t>::max() - 1;
    for (int64_t j = 0; j < n; ++j) key[j] = j == victim ? EMPTY + 1 : (valid[j] ? birth[j] : EMPTY);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t c) { return key[a] < key[c]; });
    // fold the victim into (S, z) when it holds a pair: one product and one add per entry
    if (valid[victim]) {
      const float* pk = phi_p + (r * n + victim) * K;
      const float* pv = cv + (r * n + victim) * V;
      for (int64_t i = 0; i < K; ++i) {
        const float pi = pk[i];
        zn[r * K + i] = zp[r * K + i] + pi;
        for (int64_t j = 0; j < V; ++j) {
          const float prod = pi * pv[j];
          Sn[(r * K + i) * V + j] = Sp[(r * K + i) * V + j] + prod;
        }
      }
    }
    for (int64_t s = 0; s < lam; ++s) {
      const int64_t j = order[s];
      if (!valid[j]) continue;  // empty slots hold zeros
      std::memcpy(nkp + (r * lam + s) * K, ck + (r * n + j) * K, sizeof(float) * K);
      std::memcpy(nvp + (r * lam + s) * V, cv + (r * n + j) * V, sizeof(float) * V);
      nvalidp[r * lam + s] = true;
      const float e = sre_p[r * n + j];
      nsrep[r * lam + s] = e * e;
      nbirthp[r * lam + s] = birth[j];
    }
    // 4. read out: exact attention over the new window and cache, mixed with the linear state
    const float* qr = qp + r * K;
    float m = 0.0f;
    for (int64_t l = 0; l < L; ++l) {
      const bool in_window = l < eta;
      const bool ok = in_window ? wvalidp[b * eta + l] : nvalidp[r * lam + (l - eta)];
      if (!ok) { scores[l] = -inf; continue; }
      const float* kl = in_window ? wkp + (r * eta + l) * K : nkp + (r * lam + (l - eta)) * K;
      float dot = 0.0f;
      for (int64_t i = 0; i < K; ++i) dot += qr[i] * kl[i];
      scores[l] = dot * static_cast<float>(scale);
      if (scores[l] > m) m = scores[l];
    }
    const float g = gatep[h], w_lin = g * std::exp(-m), w_soft = 1.0f - g;
    float* orow = op + r * V;
    for (int64_t j = 0; j < V; ++j) orow[j] = 0.0f;
    float den = 0.0f;
    for (int64_t l = 0; l < L; ++l) {
      if (scores[l] == -inf) continue;
      const float p = std::exp(scores[l] - m);
      const float* vl = l < eta ? wvp + (r * eta + l) * V : nvp + (r * lam + (l - eta)) * V;
      den += p;
      for (int64_t j = 0; j < V; ++j) orow[j] += p * vl[j];
    }
    const float* pq = phiq + r * K;
    float lin_den = 0.0f;
    for (int64_t i = 0; i < K; ++i) lin_den += pq[i] * zn[r * K + i];
    const float total_den = den * w_soft + lin_den * w_lin + static_cast<float>(den_eps);
    for (int64_t j = 0; j < V; ++j) {
      float lin = 0.0f;
      for (int64_t i = 0; i < K; ++i) lin += pq[i] * Sn[(r * K + i) * V + j];
      orow[j] = (orow[j] * w_soft + lin * w_lin) / total_den;
    }
  }
  return {o, S_new, z_new, wk_new, wv_new, wvalid_new, nk, nv, nvalid, nsre, nbirth, count + 1};
}
"""

_lock = threading.Lock()
_module: ModuleType | None = None
_failure: str | None = None


def _build() -> ModuleType:
    from torch.utils import cpp_extension

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root())
    if not any(root.glob(f"*/{_NAME}/{_NAME}*.so")):
        print(f"LoLA: building its C++ acting step (once, about a minute; cached under {root})",
              file=sys.stderr, flush=True)
    return cpp_extension.load_inline(
        name=_NAME, cpp_sources=[_SOURCE], functions=["lola_step"],
        extra_cflags=["-O3", "-ffp-contract=off"], verbose=False,
    )


def extension() -> ModuleType | None:
    """The compiled step (built on the first call), or None where it is switched off or cannot be
    built (then :func:`failure` says why, and a warning said it once)."""
    global _module, _failure
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return None
    if _module is not None or _failure is not None:
        return _module
    with _lock:
        if _module is None and _failure is None:
            try:
                _module = _build()
            except Exception as error:  # no compiler, no headers, a failed build: the Python step acts
                _failure = f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}"
                warnings.warn(
                    f"LoLA's C++ acting step could not be built ({_failure}); acting with the Python step "
                    f"(the same decisions, slower). Set {ENV_SWITCH}=0 to skip the build.", RuntimeWarning,
                    stacklevel=2,
                )
    return _module


def failure() -> str | None:
    """Why the C++ step could not be built (None: it was, or no build was tried yet)."""
    return _failure


def usable(q: torch.Tensor) -> bool:
    """Whether a step on ``q`` can run in C++: a CPU tensor, no autograd, not under torch.compile's
    tracing (the call would break the graph), and the extension built."""
    return (q.device.type == "cpu" and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and extension() is not None)


def lola_attn_step_cpp(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: LoLAState, *, window: int, cache_size: int,
    gate: torch.Tensor, selection: str = "sre", scale: float | None = None,
) -> tuple[torch.Tensor, LoLAState]:
    """One LoLA token (inputs already checked, CPU): q, k ``[B, H, K]``, v ``[B, H, V]``, gate ``[H]``
    -> o ``[B, H, V]``, new state; the state equals ``step.lola_attn_step_fast``'s bit for bit."""
    module = extension()
    if module is None:
        raise RuntimeError(f"LoLA's C++ step is not available ({_failure or ENV_SWITCH + '=0'})")
    out_dtype = q.dtype
    scale = resolve_scale(scale, q.shape[-1])
    result = module.lola_step(
        q.float(), k.float(), v.float(), state.S, state.z, state.window_k, state.window_v, state.window_valid,
        state.cache_k, state.cache_v, state.cache_valid, state.cache_birth, state.count,
        gate.detach().float(), SELECTIONS.index(selection), scale, RECALL_EPS, DEN_EPS,
    )
    o, *fields = result
    new_state = LoLAState(*fields)
    return (o if out_dtype == torch.float32 else o.to(out_dtype)), new_state
