"""The fast paths of the loop compute what the plain paths compute.

* the eager acting step (packed projections, pre-transposed weights, inline recurrences) equals the
  plain step of the same modules, for the default mixer and the attention family, and follows every
  optimizer step (a fused Adam step does not bump the parameters' version counters);
* the learner's encoder embeds each distinct view of a segment once, with the same values and
  gradients as embedding every token;
* the overlapped learner (learning on a second thread, one update behind the acting) is reproducible
  by seed and resumes from its state_dict identically;
* the compiled acting step (``compile=true``) acts as the eager one;
* ``benchmarks/anchors.py`` without SB3 is a one-line error naming the install command.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from agent_fakes import cue_run, memory_cfg
from gymnasium import spaces

from lifelong.agents.encoders import DEDUPE_MIN_ROWS, build_encoder
from lifelong.agents.policy import LifelongAgent
from lifelong.memory_layers.state import tree_leaves

ROOT = Path(__file__).resolve().parents[2]
MINIGRID = spaces.Dict({"image": spaces.Box(0, 255, (7, 7, 3), np.uint8), "direction": spaces.Discrete(4)})


def minigrid_agent(name: str) -> LifelongAgent:
    return LifelongAgent(MINIGRID, spaces.Discrete(7), memory_cfg(name), d_model=32, num_layers=2, mlp_ratio=2.0)


def minigrid_tokens(b: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    obs = {"image": torch.randint(0, 11, (b, 7, 7, 3), generator=gen, dtype=torch.uint8),
           "direction": torch.randint(0, 4, (b,), generator=gen)}
    return obs, torch.randint(0, 8, (b,), generator=gen), torch.rand(b, generator=gen), torch.rand(b, generator=gen) < 0.3


def act_both_ways(agent: LifelongAgent, memory, b: int, seed: int):
    """(fast, plain) results of one acting token: inference mode takes the eager acting step,
    no_grad the plain modules."""
    obs, prev_action, prev_reward, boundary = minigrid_tokens(b, seed)
    with torch.inference_mode():
        fast = agent._act_core(obs, prev_action, prev_reward, boundary, tuple(tree_clone(memory)), None)
    with torch.no_grad():
        plain = agent._act_core(obs, prev_action, prev_reward, boundary, tuple(tree_clone(memory)), None)
    return fast, plain


def tree_clone(memory):
    from lifelong.memory_layers.state import clone_state

    return clone_state(memory)


def assert_same_token(fast, plain) -> None:
    torch.testing.assert_close(fast[0], plain[0])  # action (argmax)
    torch.testing.assert_close(fast[1], plain[1], rtol=1e-5, atol=1e-5)  # log-prob
    torch.testing.assert_close(fast[2], plain[2], rtol=1e-5, atol=1e-5)  # value
    for a, b in zip(tree_leaves(fast[3]), tree_leaves(plain[3]), strict=True):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["gated_deltanet", "deltanet", "lola", "softmax", "decay"])
def test_the_eager_acting_step_equals_the_plain_step(name):
    agent = minigrid_agent(name)
    memory = agent.initial_memory(5, "cpu")
    for t in range(12):  # a memory with history (LoLA: window and cache filled and evicting)
        with torch.inference_mode():
            obs, prev_action, prev_reward, boundary = minigrid_tokens(5, seed=100 + t)
            memory = agent._act_core(obs, prev_action, prev_reward, boundary, memory, None)[3]
    assert_same_token(*act_both_ways(agent, memory, 5, seed=1))


def test_acting_follows_every_fused_optimizer_step():
    agent = minigrid_agent("gated_deltanet")
    memory = agent.initial_memory(4, "cpu")
    fast_before, _ = act_both_ways(agent, memory, 4, seed=2)  # builds the packed weights
    optimizer = torch.optim.Adam(agent.parameters(), lr=0.05, fused=True)
    for p in agent.parameters():
        p.grad = torch.randn_like(p)
    versions = [p._version for p in agent.parameters()]
    optimizer.step()
    assert versions == [p._version for p in agent.parameters()]  # the reason for the step hook
    fast_after, plain_after = act_both_ways(agent, memory, 4, seed=2)
    assert_same_token(fast_after, plain_after)
    assert not torch.allclose(fast_after[2], fast_before[2])


def test_distinct_views_are_embedded_once_with_the_same_values_and_gradients():
    enc = build_encoder(MINIGRID, d_model=16)
    gen = torch.Generator().manual_seed(3)
    views = torch.randint(0, 11, (5, 7, 7, 3), generator=gen, dtype=torch.uint8)
    pick = torch.randint(0, 5, (4, 40), generator=gen)  # [B, T] tokens showing 5 distinct views
    obs = {"image": views[pick], "direction": torch.randint(0, 4, (4, 40), generator=gen)}
    assert pick.numel() >= DEDUPE_MIN_ROWS
    out = enc(obs)  # deduplicated
    grad_out = torch.randn(out.shape, generator=gen)
    (out * grad_out).sum().backward()
    dedup_grad = enc.table.grad.clone()
    enc.table.grad = None
    rows = [enc({k: v[:, t : t + 1] for k, v in obs.items()}) for t in range(40)]  # 4 rows per call: no dedupe
    per_row = torch.cat(rows, dim=1)
    torch.testing.assert_close(out, per_row)
    (per_row * grad_out).sum().backward()
    torch.testing.assert_close(dedup_grad, enc.table.grad, rtol=1e-4, atol=1e-5)  # summed in another order


def test_the_overlapped_learner_is_reproducible_by_seed_and_one_update_behind():
    weights_a, stats = cue_run(overlap=True, segments=5)
    weights_b, _ = cue_run(overlap=True, segments=5)
    assert all(torch.equal(a, b) for a, b in zip(weights_a, weights_b))
    assert stats[0] == {} and "losses/policy" in stats[1]  # the first update's statistics come a segment later
    sequential, _ = cue_run(overlap=False, segments=5)
    assert not all(torch.equal(a, b) for a, b in zip(weights_a, sequential))  # acting lags: another lifetime


def test_the_overlapped_learner_resumes_from_its_state_dict_identically():
    straight, _ = cue_run(overlap=True, segments=5)
    resumed, _ = cue_run(overlap=True, segments=5, resume_at=3)
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed))


def test_anchors_without_sb3_is_one_line_naming_the_bench_extra(tmp_path):
    (tmp_path / "stable_baselines3.py").write_text("raise ImportError('blocked for this test', name='stable_baselines3')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "anchors.py"), "--rounds", "1"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install -e '.[bench]'" in lines[0], result.stderr


def test_the_compiled_acting_step_acts_as_the_eager_one():
    """``compile=true`` (on the CPU through Inductor's C++ wrapper) gives the eager step's actions,
    log-probs, values and memory for the same noise."""
    eager = minigrid_agent("gated_deltanet")
    compiled = copy.deepcopy(eager)
    compiled.compile_acting()
    obs, prev_action, prev_reward, boundary = minigrid_tokens(4)
    with torch.inference_mode():
        memory = eager.initial_memory(4, "cpu")
        for t in range(3):
            gen_a, gen_b = torch.Generator().manual_seed(t), torch.Generator().manual_seed(t)
            a = eager.act(obs, prev_action, prev_reward, boundary, memory, generator=gen_a)
            b = compiled.act(obs, prev_action, prev_reward, boundary, memory, generator=gen_b)
            assert torch.equal(a.action, b.action)
            torch.testing.assert_close(b.log_prob, a.log_prob, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(b.value, a.value, rtol=1e-4, atol=1e-5)
            for x, y in zip(tree_leaves(a.memory), tree_leaves(b.memory), strict=True):
                torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-5)
            memory = a.memory
