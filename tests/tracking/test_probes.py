"""Probes run on a copy of the lifetime memory with learning off, and count their env steps apart."""
from pathlib import Path

import pytest
import torch

from lifelong.memory_layers.state import tree_leaves
from lifelong.tracking.probes import StreamProber

from tracking_fakes import FakeAct, FakeAgent, make_corridor


class ForwardAgent(FakeAgent):
    """Always moves forward (action 1) and records every token's inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens: list[tuple[int, float, bool]] = []  # lifetime 0: (prev_action, prev_reward, boundary)

    def act(self, obs, prev_action, prev_reward, boundary, memory, deterministic=False, generator=None):
        out = super().act(obs, prev_action, prev_reward, boundary, memory, deterministic, generator)
        self.tokens.append((int(prev_action[0]), float(prev_reward[0]), bool(boundary[0])))
        return FakeAct(torch.ones_like(out.action), out.log_prob, out.value, out.memory)


def corridor_prober(episodes: int) -> StreamProber:
    return StreamProber(None, episodes, "cpu", make_corridor)


def _lifetime_memory(agent: FakeAgent, batch: int) -> tuple:
    (state,) = agent.initial_memory(batch, "cpu")
    return (type(state)(torch.randn_like(state.S)),)


def test_probe_leaves_lifetime_memory_params_mode_and_rng_bit_identical(fake_agent):
    memory = _lifetime_memory(fake_agent, batch=2)
    memory_before = [t.clone() for t in tree_leaves(memory)]
    params_before = {k: v.clone() for k, v in fake_agent.state_dict().items()}
    fake_agent.train()
    rng_before = torch.get_rng_state()

    corridor_prober(episodes=2)(fake_agent, memory, ["A", "B"], seed=3)

    for before, after in zip(memory_before, tree_leaves(memory)):
        assert torch.equal(before, after)
    for name, value in fake_agent.state_dict().items():
        assert torch.equal(params_before[name], value), name
    assert all(p.grad is None for p in fake_agent.parameters())
    assert fake_agent.training
    assert torch.equal(rng_before, torch.get_rng_state())


def test_probe_counts_only_real_transitions_of_the_requested_episodes():
    agent = ForwardAgent()
    out = corridor_prober(episodes=2)(agent, agent.initial_memory(3, "cpu"), ["A", "B"], seed=0)
    # A: goal 2 cells away -> 2 steps per episode; B: 4 steps. 3 lifetimes x 2 episodes each.
    assert out["A"]["steps"] == 3 * 2 * 2
    assert out["B"]["steps"] == 3 * 2 * 4
    assert out["A"]["success"] == 1.0 and out["A"]["episodes"] == 6
    assert out["A"]["return"] == pytest.approx(1 - 0.5 * 2 / 8)
    assert out["B"]["episode_returns"] == pytest.approx([1 - 0.5 * 4 / 8] * 2)


def test_probe_feeds_tokens_with_the_training_loop_conventions():
    agent = ForwardAgent()
    corridor_prober(episodes=2)(agent, agent.initial_memory(1, "cpu"), ["A"], seed=0)
    n, r = agent.num_actions, 1 - 0.5 * 2 / 8
    # episode 1: two moves; the filler token sees the final reward; episode 2 starts with a boundary
    assert agent.tokens[:5] == [(n, 0.0, True), (1, 0.0, False), (1, r, False), (n, 0.0, True), (1, 0.0, False)]


def test_probe_is_reproducible_for_a_seed(fake_agent):
    memory = _lifetime_memory(fake_agent, batch=2)
    a = corridor_prober(episodes=2)(fake_agent, memory, ["A", "B"], seed=5)
    b = corridor_prober(episodes=2)(fake_agent, memory, ["A", "B"], seed=5)
    assert a == b


def test_a_prober_of_zero_episodes_is_refused():
    with pytest.raises(ValueError, match="probe_episodes"):
        corridor_prober(episodes=0)


def test_probe_with_the_real_agent_and_stream_leaves_the_lifetime_memory_untouched():
    pytest.importorskip("lifelong.agents.policy")
    envs_make = pytest.importorskip("lifelong.envs.make")
    from lifelong.agents.policy import LifelongAgent
    from omegaconf import OmegaConf

    stream_cfg = envs_make.load_stream_config("smoke")
    env = envs_make.make_stream(stream_cfg, seed=0)
    memory_cfg = OmegaConf.load(Path(__file__).resolve().parents[2] / "configs" / "memory" / "gated_deltanet.yaml")
    agent = LifelongAgent(env.observation_space, env.action_space, memory_cfg, d_model=16, num_layers=1, mlp_ratio=2.0)
    memory = tuple(type(s)(*(torch.randn_like(t) for t in s)) for s in agent.initial_memory(2, "cpu"))
    before = [t.clone() for t in tree_leaves(memory)]
    prober = StreamProber(stream_cfg, episodes=1, device="cpu", make_env=envs_make.make_task_env)
    out = prober(agent, memory, env.task_names[:1], seed=0)
    assert all(torch.equal(a, b) for a, b in zip(before, tree_leaves(memory)))
    (task,) = out
    assert out[task]["steps"] > 0 and 0.0 <= out[task]["success"] <= 1.0
