"""Small, exact stand-ins used by the agent tests.

* :class:`DecayMixer`: a real (tiny) parametric mixer, S_t = a_h S_{t-1} + k_t v_t^T, o_t = S_t^T q_t,
  with an exact parallel form (no dependence on the kernels package).
* :class:`CueEnv`: a memory task. Tokens: 0 blank, 1/2 cue, 3 query. An episode shows the cue, then
  ``delay`` blanks, then the query; the action at the query earns 1 if it matches the cue (0 or 1).
  A memoryless policy succeeds half the time.
* :class:`CueStream`: a two-task stream of CueEnv (``plain``, then ``flipped`` where the rewarded
  action is the other one), with the synchronous blocks, info keys and state_dict of
  ``envs.stream.StreamEnv`` (``unit: steps``: tokens counted, the block's last episode truncated).
* :class:`FakeTracker` and :class:`FakeProber`: record every call of the lifetime's tracker and
  prober protocols.
* :func:`make_collector`: a small agent acting in CueEnvs (the fake mixer or a real one).
* :func:`cue_run`: the weights after some PPO updates on CueEnvs with a given ``agent.overlap``.
* :func:`fake_lifetime`: a small Lifetime on a CueStream with the fakes above;
  :func:`compose_config`: the real Hydra config, for lifetimes built by ``build_lifetime``.
"""
from __future__ import annotations

import copy
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lifelong.agents.buffer import RolloutBuffer
from lifelong.agents.build import lifetime_settings, make_learner, seed_everything
from lifelong.agents.loop import Lifetime, LifetimeTracker, Prober
from lifelong.agents.policy import LifelongAgent
from lifelong.agents.ppo import PPOConfig, PPOLearner
from lifelong.agents.rollout import RolloutCollector
from lifelong.config_files import config_dir
from lifelong.memory_layers.protocol import MemoryMixer
from lifelong.memory_layers.registry import load_memory_config


class DecayMixerState(NamedTuple):
    S: torch.Tensor  # [B, H, K, V]


class DecayMixer(MemoryMixer):
    """x ``[B, T, D]`` -> y ``[B, T, D]``; per head a fixed learned decay a_h in (0, 1)."""

    def __init__(self, d_model: int, num_heads: int = 2) -> None:
        super().__init__(d_model, num_heads)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.decay_logit = nn.Parameter(torch.linspace(1.0, 3.0, num_heads))

    def init_state(self, batch_size: int, device) -> DecayMixerState:
        h, d = self.num_heads, self.head_dim
        return DecayMixerState(torch.zeros(batch_size, h, d, d, device=device))

    def _qkv(self, x: torch.Tensor):
        q, k, v = self.qkv(x).view(*x.shape[:-1], 3, self.num_heads, self.head_dim).unbind(-3)
        return q * self.head_dim**-0.5, F.normalize(k, dim=-1), v

    def forward_chunk(self, x: torch.Tensor, state: DecayMixerState):
        b, t, _ = x.shape
        q, k, v = (z.transpose(1, 2) for z in self._qkv(x))  # [B, H, T, d]
        log_a = F.logsigmoid(self.decay_logit)  # [H]
        pos = torch.arange(t, device=x.device, dtype=x.dtype)
        diff = pos[:, None] - pos[None, :]
        decay = torch.where(diff >= 0, torch.exp(log_a[:, None, None] * diff.clamp_min(0)), 0.0)  # [H, T, T]
        o = (q @ k.transpose(-1, -2) * decay) @ v + torch.exp(log_a[:, None, None] * (pos[:, None] + 1)) * (q @ state.S)
        w = torch.exp(log_a[:, None] * (t - 1 - pos))[..., None]  # [H, T, 1]
        S = torch.exp(log_a * t)[:, None, None] * state.S + (k * w).transpose(-1, -2) @ v
        return self.out(o.transpose(1, 2).reshape(b, t, self.d_model)), DecayMixerState(S)

    def step(self, x: torch.Tensor, state: DecayMixerState):
        q, k, v = self._qkv(x)  # [B, H, d]
        a = torch.sigmoid(self.decay_logit)[:, None, None]
        S = a * state.S + k[..., :, None] * v[..., None, :]
        o = (q[..., None, :] @ S).squeeze(-2)
        return self.out(o.reshape(x.shape[0], self.d_model)), DecayMixerState(S)


def decay_memory_cfg(reset_on: str = "never", num_heads: int = 2):
    return OmegaConf.create({"name": "decay", "_target_": "agent_fakes.DecayMixer", "num_heads": num_heads,
                             "reset_on": reset_on})


def memory_cfg(name: str, reset_on: str = "never"):
    """The decay fake, or a real mixer config with a small chunk size (several chunks per segment)."""
    if name == "decay":
        return decay_memory_cfg(reset_on)
    cfg = load_memory_config(name)
    if "chunk_size" in cfg:
        cfg.chunk_size = 4  # several chunks per segment, the last one partial
    cfg.reset_on = reset_on
    return cfg


def make_collector(name: str = "decay", reset_on: str = "never", num_envs: int = 3, seed: int = 0):
    """A 2-layer d=16 agent acting (CueEnv, delay 1: an episode end every 3 steps) in ``num_envs`` envs."""
    torch.manual_seed(seed)
    env = gym.vector.SyncVectorEnv([lambda: CueEnv(delay=1) for _ in range(num_envs)])
    agent = LifelongAgent(env.single_observation_space, env.single_action_space, memory_cfg(name, reset_on),
                          d_model=16, num_layers=2, mlp_ratio=2.0)
    collector = RolloutCollector(env, agent, reset_on)
    collector.reset(seed)
    return agent, collector


def close_learner(learner) -> None:
    """Stop a learner that runs elsewhere (the process learner); nothing for the others."""
    close = getattr(learner, "close", None)
    if close is not None:
        close()


def cue_run(overlap: bool | str, segments: int, seed: int = 0, resume_at: int | None = None):
    """(weights, per-update statistics) after ``segments`` updates on the cue task with the learner
    ``agent.overlap`` names; with ``resume_at`` the learner and agent are saved after that many and
    restored into fresh objects (the envs and collector continue)."""
    torch.manual_seed(seed)
    env = gym.vector.SyncVectorEnv([lambda: CueEnv(delay=1) for _ in range(4)])
    make = lambda: LifelongAgent(env.single_observation_space, env.single_action_space,  # noqa: E731
                                 memory_cfg("gated_deltanet"), 16, 1, 2.0)
    agent = make()
    cfg = PPOConfig.from_cfg({"lr": 3e-3, "update_epochs": 2})
    learner = make_learner(agent, cfg, overlap, compile=False, seed=seed)
    collector = RolloutCollector(env, agent, reset_on="never")
    collector.reset(seed)
    buf = RolloutBuffer(4, 8)
    stats = []
    for i in range(segments):
        if i == resume_at:
            sd_agent, sd_learner = copy.deepcopy(agent.state_dict()), copy.deepcopy(learner.state_dict())
            agent.load_state_dict(make().state_dict())  # scrambled, then restored
            close_learner(learner)
            learner = make_learner(agent, cfg, overlap, compile=False, seed=seed + 1)
            learner.load_state_dict(sd_learner)
            agent.load_state_dict(sd_agent)
        collector.collect(buf)
        stats.append(learner.update(buf))
    if overlap:
        learner.finish()
    close_learner(learner)
    torch.set_num_threads(1)
    return [p.detach().clone() for p in agent.parameters()], stats


class CueEnv(gym.Env):
    """The cue-recall task (see the module docstring). ``flipped``: the rewarded action is 1 - cue."""

    metadata: dict = {}

    def __init__(self, delay: int = 2, flipped: bool = False) -> None:
        self.delay = delay
        self.flipped = flipped
        self.observation_space = spaces.Dict({"token": spaces.Discrete(4)})
        self.action_space = spaces.Discrete(2)
        self.t = 0
        self.cue = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        self.cue = int(self.np_random.integers(2))
        return {"token": np.int64(1 + self.cue)}, {}

    def step(self, action):
        self.t += 1
        if self.t <= self.delay:
            return {"token": np.int64(0)}, 0.0, False, False, {}
        if self.t == self.delay + 1:
            return {"token": np.int64(3)}, 0.0, False, False, {}
        target = 1 - self.cue if self.flipped else self.cue
        return {"token": np.int64(0)}, float(int(action) == target), True, False, {}


class CueStream(gym.Env):
    """Blocks of ``block_steps`` tokens: plain, flipped, plain, ... (the schedule repeats), counted like
    ``envs.stream.StreamEnv`` in ``unit: steps``: every step and every reset after the first is a
    token, the episode running at a block's last token is truncated there (``block_truncated``), an
    episode reset at or after it belongs to the next block, and every token's info has ``block_end``
    (the index of the block whose last token it is, else -1)."""

    metadata: dict = {}

    def __init__(self, block_steps: int = 40, num_blocks: int = 3, delay: int = 1) -> None:
        self.task_names = ["plain", "flipped"]
        self.schedule = [(self.task_names[i % 2], block_steps) for i in range(num_blocks)]
        self.duration_unit = "steps"
        self.schedule_steps = block_steps * num_blocks
        self.envs = {"plain": CueEnv(delay), "flipped": CueEnv(delay, flipped=True)}
        self.observation_space = self.envs["plain"].observation_space
        self.action_space = self.envs["plain"].action_space
        self._restart()

    def _restart(self) -> None:
        self.block_index = 0
        self.tokens = 0
        self.started = False
        self.ep_return = 0.0
        self.ep_length = 0
        self.visits = {n: 0 for n in self.task_names}

    @property
    def task_name(self) -> str:
        return self.schedule[self.block_index % len(self.schedule)][0]

    def _end(self, block: int) -> int:
        passes, i = divmod(block, len(self.schedule))
        return passes * self.schedule_steps + sum(d for _, d in self.schedule[: i + 1])

    def _ending(self) -> int:
        return self.block_index if self.tokens == self._end(self.block_index) else -1

    def _info(self, switch: bool, ended: int) -> dict:
        return {"task_id": self.task_names.index(self.task_name), "task_name": self.task_name,
                "task_switch": switch, "visit": self.visits[self.task_name], "block_index": self.block_index,
                "block_end": ended}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._restart()
            for i, env in enumerate(self.envs.values()):
                env.reset(seed=seed * 7 + i)
        switch, ended = False, -1
        if not self.started:
            self.started = switch = True
        else:  # the autoreset token
            self.tokens += 1
            ended = self._ending()
            if self.tokens >= self._end(self.block_index):
                self.block_index += 1
                switch = True
        if switch:
            self.visits[self.task_name] += 1
        self.ep_return, self.ep_length = 0.0, 0
        obs, _ = self.envs[self.task_name].reset()
        return obs, self._info(switch, ended)

    def step(self, action):
        obs, reward, terminated, truncated, _ = self.envs[self.task_name].step(action)
        self.tokens += 1
        self.ep_return += reward
        self.ep_length += 1
        info = self._info(False, self._ending())
        block_truncated = False
        if self.tokens >= self._end(self.block_index) and not terminated:
            block_truncated, truncated = not truncated, True
        if terminated or truncated:
            info.update(episode_return=self.ep_return, episode_length=self.ep_length,
                        episode_success=float(self.ep_return > 0), block_truncated=block_truncated)
        return obs, reward, terminated, truncated, info

    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy({
            "block_index": self.block_index, "tokens": self.tokens, "started": self.started,
            "ep_return": self.ep_return, "ep_length": self.ep_length, "visits": self.visits,
            "envs": {n: {"t": e.t, "cue": e.cue, "rng": e.np_random.bit_generator.state}
                     for n, e in self.envs.items()},
        })

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        sd = copy.deepcopy(sd)
        self.block_index, self.tokens, self.started = sd["block_index"], sd["tokens"], sd["started"]
        self.ep_return, self.ep_length, self.visits = sd["ep_return"], sd["ep_length"], sd["visits"]
        for n, e in self.envs.items():
            e.t, e.cue = sd["envs"][n]["t"], sd["envs"][n]["cue"]
            e.np_random.bit_generator.state = sd["envs"][n]["rng"]


def cue_vector_env(num_envs: int, block_steps: int = 40) -> gym.vector.SyncVectorEnv:
    """``num_envs`` lifetimes of a 3-block :class:`CueStream` (NEXT_STEP autoreset, like the stream envs)."""
    return gym.vector.SyncVectorEnv([lambda: CueStream(block_steps) for _ in range(num_envs)],
                                    autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)


class FakeTracker(LifetimeTracker):
    """Records calls; ``should_probe`` every ``probe_every`` steps; ``probe_plan``: every task of
    ``task_names``, ``plan_episodes`` per task at step 0 and at block ends, ``curve_episodes`` else."""

    def __init__(self, probe_every: int, task_names=("plain", "flipped"), plan_episodes: int = 4,
                 curve_episodes: int = 2) -> None:
        self.probe_every = probe_every
        self.task_names = list(task_names)
        self.plan_episodes, self.curve_episodes = plan_episodes, curve_episodes
        self.calls: dict[str, list] = {k: [] for k in ("episode", "switch", "scalars", "memory", "plasticity",
                                                        "plan", "probe", "unfinished")}
        self.last_probe = 0

    @property
    def current_block(self) -> int:
        return max((s[3] for s in self.calls["switch"]), default=0)

    def log_episode(self, step, task_name, episode_return, episode_length, success, episodes_since_switch,
                    block_index=None):
        self.calls["episode"].append((step, task_name, episode_return, episode_length, success,
                                      episodes_since_switch, block_index))

    def log_task_switch(self, step, task_name, visit, block_index):
        self.calls["switch"].append((step, task_name, visit, block_index))

    def log_scalars(self, step, scalars):
        self.calls["scalars"].append((step, dict(scalars)))

    def log_memory(self, step, state_metrics):
        self.calls["memory"].append((step, state_metrics))

    def log_plasticity(self, step, features, model, grad_norm):
        self.calls["plasticity"].append((step, {k: tuple(v.shape) for k, v in features.items()}, grad_norm))

    def should_probe(self, step):
        if step - self.last_probe >= self.probe_every:
            self.last_probe = step
            return True
        return False

    def probe_plan(self, block_end, step):
        episodes = self.plan_episodes if block_end is not None or step == 0 else self.curve_episodes
        self.calls["plan"].append((step, block_end, list(self.task_names), episodes))
        return list(self.task_names), episodes

    def log_probe(self, step, results, block_end=None):
        self.calls["probe"].append((step, dict(results), block_end))

    def finalize(self):
        return {"probes": len(self.calls["probe"])}

    def write_unfinished_summary(self, step):
        self.calls["unfinished"].append(step)
        return {"finished": False}

    def state_dict(self):
        return {"calls": copy.deepcopy(self.calls), "last_probe": self.last_probe}

    def load_state_dict(self, sd):
        self.calls, self.last_probe = copy.deepcopy(sd["calls"]), sd["last_probe"]


class FakeProber(Prober):
    """A probe that only checks its inputs and records ``(tasks, seed, episodes)``: success 0.5 on every task."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int, int]] = []

    def __call__(self, agent, memory, tasks, seed, episodes):
        assert isinstance(memory, tuple) and memory[0].S.dim() == 4
        self.calls.append((list(tasks), seed, episodes))
        return {name: {"success": 0.5, "return": 0.0, "steps": 0} for name in tasks}


def compose_config(*overrides: str) -> DictConfig:
    """The run config ``lifelong run OVERRIDES...`` would get (``configs/config.yaml`` and its groups)."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def fake_lifetime(run_dir, seed: int = 0, reset_on: str = "never", block_steps: int = 40,
                  total_steps: int | None = None) -> Lifetime:
    """Two lifetimes of a :class:`CueStream` for a 1-layer d=16 agent with the decay mixer, learning
    from segments of 8 tokens, reporting to a :class:`FakeTracker` (a probe every 64 steps) and probed
    by a :class:`FakeProber`."""
    cfg = compose_config(f"seed={seed}", "num_envs=2", "agent.d_model=16", "agent.num_layers=1",
                         "agent.segment_length=8", "agent.lr=1e-3", "agent.update_epochs=2", "tracker.log_every=16")
    seed_everything(seed)
    vec_env = cue_vector_env(cfg.num_envs, block_steps)
    settings = lifetime_settings(vec_env, run_dir, seed, total_steps, cfg.tracker.log_every, cfg.checkpoint_every,
                                 cfg.checkpoint_minutes, cfg.checkpoint_keep, "fake")
    agent = LifelongAgent(vec_env.single_observation_space, vec_env.single_action_space,
                          decay_memory_cfg(reset_on), cfg.agent.d_model, cfg.agent.num_layers, cfg.agent.mlp_ratio)
    learner = PPOLearner(agent, PPOConfig.from_cfg(cfg.agent), compile=cfg.compile, seed=seed)
    collector = RolloutCollector(vec_env, agent, reset_on)
    buffer = RolloutBuffer(cfg.num_envs, cfg.agent.segment_length)
    return Lifetime(agent, collector, buffer, learner, FakeTracker(probe_every=64), FakeProber(), settings)
