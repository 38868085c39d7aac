"""GAE with NEXT_STEP autoreset: episode ends stop the recursion, fillers are masked out."""
from __future__ import annotations

import pytest
import torch

from lifelong.agents.buffer import RolloutBuffer, compute_gae

GAMMA, LAM = 0.9, 0.8


def reference_gae(rewards, values, next_value, dones, terms, valid):
    """A plain per-episode GAE: each episode computed on its own list, fillers skipped."""
    T = len(rewards)
    adv = [0.0] * T
    nxt = next_value
    carry = 0.0
    for t in reversed(range(T)):
        if not valid[t]:
            adv[t], carry, nxt = 0.0, 0.0, values[t]
            continue
        boot = 0.0 if terms[t] else nxt
        delta = rewards[t] + GAMMA * boot - values[t]
        carry = delta + (0.0 if dones[t] else GAMMA * LAM * carry)
        adv[t], nxt = carry, values[t]
    return adv


def test_without_episode_ends_gae_is_the_standard_recursion():
    r = torch.tensor([[1.0, 0.0, 2.0, 0.5]])
    v = torch.tensor([[0.5, 0.2, 0.1, 0.3]])
    nv = torch.tensor([0.7])
    false = torch.zeros(1, 4, dtype=torch.bool)
    adv, ret = compute_gae(r, v, nv, false, false, ~false, GAMMA, LAM)
    expected = reference_gae(r[0].tolist(), v[0].tolist(), 0.7, [0] * 4, [0] * 4, [1] * 4)
    torch.testing.assert_close(adv[0], torch.tensor(expected))
    torch.testing.assert_close(ret, adv + v)


def test_termination_neither_bootstraps_nor_leaks_the_next_episode_and_the_filler_is_masked():
    # tokens: 0 1 [2 ends: terminated] 3=filler 4 5 (new episode)
    r = torch.tensor([[0.0, 0.0, 1.0, 0.0, 5.0, 5.0]])
    v = torch.tensor([[0.1, 0.2, 0.3, 9.0, 0.4, 0.5]])  # the filler's value 9 must not be used
    done = torch.tensor([[0, 0, 1, 0, 0, 0]], dtype=torch.bool)
    valid = torch.tensor([[1, 1, 1, 0, 1, 1]], dtype=torch.bool)
    adv, ret = compute_gae(r, v, torch.tensor([0.6]), done, done, valid, GAMMA, LAM)
    assert adv[0, 2] == pytest.approx(1.0 - 0.3)  # reward, no bootstrap
    assert adv[0, 3] == 0.0 and ret[0, 3] == 0.0  # filler dropped
    expected = reference_gae(r[0].tolist(), v[0].tolist(), 0.6, done[0].tolist(), done[0].tolist(), valid[0].tolist())
    torch.testing.assert_close(adv[0], torch.tensor(expected))
    # the rewards of the next episode (5, 5) do not reach tokens 0..2
    r2 = r.clone()
    r2[0, 4:] = -100.0
    adv2, _ = compute_gae(r2, v, torch.tensor([0.6]), done, done, valid, GAMMA, LAM)
    torch.testing.assert_close(adv2[0, :3], adv[0, :3])


def test_truncation_bootstraps_from_the_final_observation_seen_by_the_filler():
    r = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    v = torch.tensor([[0.1, 0.2, 2.0, 0.3]])  # token 2 is the filler: value of the final observation
    done = torch.tensor([[0, 1, 0, 0]], dtype=torch.bool)
    term = torch.zeros_like(done)
    valid = torch.tensor([[1, 1, 0, 1]], dtype=torch.bool)
    adv, _ = compute_gae(r, v, torch.tensor([0.0]), done, term, valid, GAMMA, LAM)
    assert adv[0, 1] == pytest.approx(GAMMA * 2.0 - 0.2)
    assert adv[0, 2] == 0.0


def test_gae_runs_per_lifetime_in_a_batch():
    torch.manual_seed(1)
    B, T = 3, 9
    r, v, nv = torch.randn(B, T), torch.randn(B, T), torch.randn(B)
    done = torch.rand(B, T) < 0.3
    done[:, 1:] &= ~done[:, :-1]  # a filler follows every end, so no two ends in a row
    term = done & (torch.rand(B, T) < 0.5)
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[:, 1:] = ~done[:, :-1]
    adv, _ = compute_gae(r, v, nv, done, term, valid, GAMMA, LAM)
    for b in range(B):
        expected = reference_gae(r[b].tolist(), v[b].tolist(), float(nv[b]), done[b].tolist(), term[b].tolist(),
                                 valid[b].tolist())
        torch.testing.assert_close(adv[b], torch.tensor(expected), rtol=1e-5, atol=1e-5)


def test_buffer_refuses_an_incomplete_segment_and_an_overfull_one():
    buf = RolloutBuffer(num_envs=2, length=1)
    buf.start((torch.zeros(2, 3),))
    with pytest.raises(RuntimeError, match="not complete"):
        buf.advantages(GAMMA, LAM)
    z = torch.zeros(2)
    f = torch.zeros(2, dtype=torch.bool)
    buf.add_input({"token": torch.zeros(2, dtype=torch.long)}, z.long(), z, f, f, ~f)
    buf.add_output(z.long(), z, z, z, f, f)
    with pytest.raises(IndexError, match="start"):
        buf.add_input({"token": torch.zeros(2, dtype=torch.long)}, z.long(), z, f, f, ~f)
