"""Probes run on a copy of the lifetime memory with learning off, every task and every lifetime in one
batch, keep every episode's result and count their env steps apart."""
from functools import partial

import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from omegaconf import OmegaConf

from lifelong.memory_layers.state import tree_leaves
from lifelong.tracking.probes import StreamProber, episodes_per_lifetime, probe_task

from tracking_fakes import Corridor, FakeAct, FakeAgent, make_corridor


class ForwardAgent(FakeAgent):
    """Always moves forward (action 1) and records every token's inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens: list[tuple[int, float, bool]] = []  # lifetime 0: (prev_action, prev_reward, boundary)

    def act(self, obs, prev_action, prev_reward, boundary, memory, deterministic=False, generator=None):
        out = super().act(obs, prev_action, prev_reward, boundary, memory, deterministic, generator)
        self.tokens.append((int(prev_action[0]), float(prev_reward[0]), bool(boundary[0])))
        return FakeAct(torch.ones_like(out.action), out.log_prob, out.value, out.memory)


class SeededCorridor(Corridor):
    """A corridor whose goal (1 to 4 cells away) is drawn at every reset from the env's seeded RNG: an
    env's episodes depend on its seed."""

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        self.goal = int(self.np_random.integers(1, 5))
        return obs, info


def make_seeded_corridor(stream_cfg, task_name: str, seed: int) -> SeededCorridor:
    return SeededCorridor(bad=2 if task_name == "A" else 0)


def corridor_prober(make_env=make_corridor, deterministic: bool = False) -> StreamProber:
    return StreamProber(None, "cpu", make_env, deterministic)


def _lifetime_memory(agent: FakeAgent, batch: int) -> tuple:
    (state,) = agent.initial_memory(batch, "cpu")
    return (type(state)(torch.randn_like(state.S)),)


def test_probe_leaves_lifetime_memory_params_mode_and_rng_bit_identical(fake_agent):
    memory = _lifetime_memory(fake_agent, batch=2)
    memory_before = [t.clone() for t in tree_leaves(memory)]
    params_before = {k: v.clone() for k, v in fake_agent.state_dict().items()}
    fake_agent.train()
    rng_before = torch.get_rng_state()

    corridor_prober()(fake_agent, memory, ["A", "B"], seed=3, episodes=4)

    for before, after in zip(memory_before, tree_leaves(memory)):
        assert torch.equal(before, after)
    for name, value in fake_agent.state_dict().items():
        assert torch.equal(params_before[name], value), name
    assert all(p.grad is None for p in fake_agent.parameters())
    assert fake_agent.training
    assert torch.equal(rng_before, torch.get_rng_state())


def test_probe_counts_only_real_transitions_of_the_requested_episodes():
    agent = ForwardAgent()
    out = corridor_prober()(agent, agent.initial_memory(3, "cpu"), ["A", "B"], seed=0, episodes=6)
    # 6 episodes per task over 3 lifetimes: 2 each. A: goal 2 cells away -> 2 steps an episode; B: 4 steps.
    assert out["A"]["steps"] == 3 * 2 * 2 and out["A"]["lifetime_steps"] == [4, 4, 4]
    assert out["B"]["steps"] == 3 * 2 * 4
    assert out["A"]["success"] == 1.0 and out["A"]["episodes"] == 6
    assert out["A"]["return"] == pytest.approx(1 - 0.5 * 2 / 8)
    assert out["B"]["episode_returns"] == pytest.approx([1 - 0.5 * 4 / 8] * 2)


def test_every_episode_of_every_lifetime_is_kept():
    agent = ForwardAgent()
    out = corridor_prober(make_seeded_corridor)(agent, agent.initial_memory(3, "cpu"), ["A", "B"], seed=4, episodes=5)
    for task in ("A", "B"):
        success, returns = np.array(out[task]["success_matrix"]), np.array(out[task]["return_matrix"])
        assert success.shape == returns.shape == (3, 2)  # [lifetime][episode]: ceil(5 / 3) episodes each
        assert out[task]["episodes"] == 6 and (success == 1.0).all()
        assert out[task]["return"] == pytest.approx(returns.mean())
        assert out[task]["episode_returns"] == pytest.approx(returns.mean(0).tolist())
        # an episode of a goal g cells away takes g steps and returns 1 - 0.5 g / 8
        assert sum(out[task]["lifetime_steps"]) == out[task]["steps"] == pytest.approx(((1 - returns) * 16).sum())


def test_episodes_are_counted_over_all_lifetimes():
    assert [episodes_per_lifetime(n, 4) for n in (1, 4, 5, 64)] == [1, 1, 2, 16]
    with pytest.raises(ValueError, match="probe episodes"):
        episodes_per_lifetime(0, 2)
    agent = ForwardAgent()
    with pytest.raises(ValueError, match="probe episodes"):
        corridor_prober()(agent, agent.initial_memory(2, "cpu"), ["A"], seed=0, episodes=0)


@pytest.mark.parametrize("acting", ["forward", "memory"])
def test_the_batched_probe_gives_each_task_what_probing_it_alone_gives(acting):
    """Every task x lifetime in one batch = each task in its own vector env of the B lifetimes,
    lifetime b's env seeded seed + b (deterministic actions: sampling draws from one batch RNG)."""
    torch.manual_seed(0)
    agent = ForwardAgent() if acting == "forward" else FakeAgent()
    memory = _lifetime_memory(agent, batch=3)
    batched = corridor_prober(make_seeded_corridor, deterministic=True)(agent, memory, ["A", "B"], seed=11, episodes=6)
    for task in ("A", "B"):
        venv = SyncVectorEnv([partial(make_seeded_corridor, None, task, 11 + b) for b in range(3)],
                             autoreset_mode=AutoresetMode.NEXT_STEP)
        alone = probe_task(agent, memory, venv, episodes=2, seed=11, device="cpu", deterministic=True)
        assert batched[task] == alone, task
    if acting == "forward":  # the lifetimes' seeds give them different goals: the seeding is tested
        assert len({tuple(row) for row in batched["B"]["return_matrix"]}) > 1
    # the same episodes whatever the task list
    prober = corridor_prober(make_seeded_corridor, deterministic=True)
    assert prober(agent, memory, ["B"], seed=11, episodes=6)["B"] == batched["B"]
    assert prober(agent, memory, ["B", "A"], seed=11, episodes=6) == batched


def test_probe_feeds_tokens_with_the_training_loop_conventions():
    agent = ForwardAgent()
    corridor_prober()(agent, agent.initial_memory(1, "cpu"), ["A"], seed=0, episodes=2)
    n, r = agent.num_actions, 1 - 0.5 * 2 / 8
    # episode 1: two moves; the filler token sees the final reward; episode 2 starts with a boundary
    assert agent.tokens[:5] == [(n, 0.0, True), (1, 0.0, False), (1, r, False), (n, 0.0, True), (1, 0.0, False)]


def test_probe_is_reproducible_for_a_seed(fake_agent):
    memory = _lifetime_memory(fake_agent, batch=2)
    a = corridor_prober()(fake_agent, memory, ["A", "B"], seed=5, episodes=4)
    b = corridor_prober()(fake_agent, memory, ["A", "B"], seed=5, episodes=4)
    assert a == b


def test_probe_with_the_real_agent_and_stream_leaves_the_lifetime_memory_untouched():
    envs_make = pytest.importorskip("lifelong.envs.make")
    from lifelong.agents.policy import LifelongAgent

    stream_cfg = envs_make.load_stream_config("smoke")
    for task in stream_cfg.tasks.values():  # short DoorKey episodes keep the probe cheap
        task.env_kwargs = {"max_steps": 20}
    env = envs_make.make_stream(stream_cfg, seed=0)
    memory_cfg = OmegaConf.load(envs_make.group_dir("memory") / "gated_deltanet.yaml")
    torch.manual_seed(0)
    agent = LifelongAgent(env.observation_space, env.action_space, memory_cfg, d_model=16, num_layers=1, mlp_ratio=2.0)
    agent.eval()  # as the prober acts; probe_task on its own leaves the mode alone
    memory = tuple(type(s)(*(torch.randn_like(t) for t in s)) for s in agent.initial_memory(2, "cpu"))
    before = [t.clone() for t in tree_leaves(memory)]
    prober = StreamProber(stream_cfg, device="cpu", make_env=envs_make.make_task_env, deterministic=True)
    out = prober(agent, memory, env.task_names, seed=0, episodes=4)
    assert all(torch.equal(a, b) for a, b in zip(before, tree_leaves(memory)))
    assert set(out) == set(env.task_names)
    for task, result in out.items():
        assert np.shape(result["success_matrix"]) == (2, 2) and 0 < result["steps"] <= 2 * 2 * 20
        venv = SyncVectorEnv([partial(envs_make.make_task_env, stream_cfg, task, b) for b in range(2)],
                             autoreset_mode=AutoresetMode.NEXT_STEP)
        assert probe_task(agent, memory, venv, episodes=2, seed=0, device="cpu", deterministic=True) == result


class MemoryAtEpisodeStartAgent(FakeAgent):
    """Records, for lifetime 0, the size of the memory it is handed on every episode's first token."""

    def __init__(self) -> None:
        super().__init__()
        self.at_starts: list[float] = []

    def act(self, obs, prev_action, prev_reward, boundary, memory, deterministic=False, generator=None):
        if bool(boundary[0]):
            self.at_starts.append(float(memory[0].S[0].abs().sum()))
        return super().act(obs, prev_action, prev_reward, boundary, memory, deterministic, generator)


@pytest.mark.parametrize("reset_each_episode", [False, True])
def test_an_agent_trained_with_reset_on_episode_is_probed_from_a_fresh_memory_every_episode(reset_each_episode):
    agent = MemoryAtEpisodeStartAgent()
    prober = StreamProber(None, "cpu", make_corridor, reset_each_episode=reset_each_episode)
    prober(agent, _lifetime_memory(agent, batch=1), ["A"], seed=0, episodes=3)
    assert len(agent.at_starts) >= 3
    if reset_each_episode:
        assert agent.at_starts == [0.0] * len(agent.at_starts)
    else:  # the lifetime's memory, then what the probe's own episodes wrote: carried across episodes
        assert all(size > 0 for size in agent.at_starts)
