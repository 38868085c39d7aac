"""The lifetime loop: act on a vector env segment by segment, learn with PPO, report to the tracker.

* :class:`RolloutCollector` steps a NEXT_STEP-autoreset vector env with ``LifelongAgent.act`` and
  fills a :class:`RolloutBuffer`; it owns the acting memory, which is carried from segment to
  segment and never reset unless ``memory.reset_on`` is ``episode`` or ``task``.
* :class:`Lifetime` builds env, agent, learner and tracker from the Hydra config and runs the
  lifetime (``run()``), with state_dict-style checkpoints of every lifetime object.
"""
from __future__ import annotations

import random
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from omegaconf import DictConfig

from lifelong.agents.buffer import RolloutBuffer
from lifelong.agents.checkpoint import load_checkpoint, load_rng_state_dict, rng_state_dict, save_checkpoint
from lifelong.agents.policy import LifelongAgent
from lifelong.agents.ppo import NONFINITE_HINT, NonFiniteError, PPOConfig, PPOLearner
from lifelong.memory_layers.base import clone_state, state_is_finite, tree_map
from lifelong.memory_layers.registry import RESET_CHOICES

Info = dict[str, Any]


def info_at(info: Info, key: str, i: int, default: Any = None) -> Any:
    """Value of ``key`` for sub-env ``i`` in a vector env's info dict (respecting the ``_key`` mask)."""
    if key not in info:
        return default
    mask = info.get(f"_{key}")
    if mask is not None and not bool(mask[i]):
        return default
    value = info[key][i]
    return value.item() if isinstance(value, np.generic) else value


def sub_env_attr(vec_env: Any, i: int, name: str) -> Any:
    """Attribute ``name`` of sub-env ``i``, looking through Gymnasium wrappers."""
    env = vec_env.envs[i]
    return env.get_wrapper_attr(name) if hasattr(env, "get_wrapper_attr") else getattr(env, name)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class RolloutCollector:
    """Acts in ``vec_env`` (B lifetimes) one token per step and records segments.

    Per lifetime it tracks the inputs of the next token: observation, previous action (``n`` = none,
    on an episode's first token), previous reward, the boundary flag (first token of an episode) and
    whether the token is a real transition (``valid``; False for the NEXT_STEP filler).
    """

    def __init__(self, vec_env: Any, agent: LifelongAgent, reset_on: str = "never",
                 device: torch.device | str = "cpu", acting_threads: int | None = None) -> None:
        if reset_on not in RESET_CHOICES:
            raise ValueError(f"memory.reset_on={reset_on!r}: choose one of {RESET_CHOICES}")
        self.vec_env = vec_env
        self.agent = agent
        self.reset_on = reset_on
        self.device = torch.device(device)
        self.num_envs = int(vec_env.num_envs)
        # torch threads while acting (one-token ops gain nothing from more; None keeps the global setting)
        self.acting_threads = acting_threads
        self.memory: tuple | None = None
        self.generator = torch.Generator(self.device)  # action sampling, seeded by reset(seed)
        self.obs: dict[str, torch.Tensor] = {}
        self.info: Info = {}

    @contextmanager
    def acting(self) -> Iterator[None]:
        """Inference mode with ``acting_threads`` torch threads. Every acting tensor (memory, inputs) is
        made in here, so a compiled acting step always sees the same kind of tensor (one graph)."""
        threads = torch.get_num_threads()
        if self.acting_threads:
            torch.set_num_threads(self.acting_threads)
        try:
            with torch.inference_mode():
                yield
        finally:
            torch.set_num_threads(threads)

    # ---- lifetime start ------------------------------------------------------------------------
    @torch.inference_mode()
    def reset(self, seed: int) -> Info:
        """Start every lifetime (sub-env i seeded ``seed + i``) with a fresh memory."""
        self.generator.manual_seed(seed)
        obs, info = self.vec_env.reset(seed=seed)
        b = self.num_envs
        self.obs = self.agent.obs_to_tensor(obs, self.device)
        self.prev_action = torch.full((b,), self.agent.num_actions, dtype=torch.long, device=self.device)
        self.prev_reward = torch.zeros(b, device=self.device)
        self.boundary = torch.ones(b, dtype=torch.bool, device=self.device)
        self.valid = torch.ones(b, dtype=torch.bool, device=self.device)
        self.task_switch = self._task_switch(info)
        self.memory = self.agent.initial_memory(b, self.device)
        self.info = info
        return info

    def _task_switch(self, info: Info) -> torch.Tensor:
        flags = [bool(info_at(info, "task_switch", i, False)) for i in range(self.num_envs)]
        return torch.tensor(flags, dtype=torch.bool, device=self.device)

    def reset_mask(self) -> torch.Tensor:
        """``[B]`` bool: lifetimes whose memory is cleared before the next token (reset ablations)."""
        if self.reset_on == "episode":
            return self.boundary.clone()
        if self.reset_on == "task":
            return self.task_switch.clone()
        return torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)

    # ---- acting --------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, buf: RolloutBuffer | None = None) -> tuple[torch.Tensor, Info]:
        """Act one token in every lifetime (recording it in ``buf`` if given). Returns the actions and
        the env's info for the step."""
        if self.memory is None:
            raise RuntimeError("call reset(seed) before stepping")
        reset = self.reset_mask()
        if self.reset_on != "never" and bool(reset.any()):
            self.memory = self.agent.reset_memory(self.memory, reset)
        if buf is not None:
            buf.add_input(self.obs, self.prev_action, self.prev_reward, self.boundary, reset, self.valid)
        out = self.agent.act(self.obs, self.prev_action, self.prev_reward, self.boundary, self.memory,
                             generator=self.generator)
        obs, reward, terminated, truncated, info = self.vec_env.step(out.action.cpu().numpy())
        reward_t = torch.as_tensor(reward, dtype=torch.float32, device=self.device)
        term_t = torch.as_tensor(terminated, dtype=torch.bool, device=self.device)
        trunc_t = torch.as_tensor(truncated, dtype=torch.bool, device=self.device)
        if buf is not None:
            buf.add_output(out.action, out.log_prob, out.value, reward_t, term_t, trunc_t)
        done = term_t | trunc_t
        # The next token: after a filler (current token invalid) comes an episode's first observation.
        first = ~self.valid
        self.memory = out.memory
        self.obs = self.agent.obs_to_tensor(obs, self.device)
        self.prev_action = torch.where(first, torch.full_like(out.action, self.agent.num_actions), out.action)
        self.prev_reward = torch.where(first, torch.zeros_like(reward_t), reward_t)
        self.boundary = first
        self.valid = ~done
        self.task_switch = self._task_switch(info)
        self.info = info
        return out.action, info

    @torch.inference_mode()
    def next_value(self) -> torch.Tensor:
        """Value ``[B]`` of the next token (segment bootstrap), without changing the memory or RNG."""
        memory = self.memory
        reset = self.reset_mask()
        if self.reset_on != "never" and bool(reset.any()):
            memory = self.agent.reset_memory(memory, reset)
        out = self.agent.act(self.obs, self.prev_action, self.prev_reward, self.boundary, memory,
                             deterministic=True)
        return out.value

    def collect(self, buf: RolloutBuffer, on_step: Callable[[Info], None] | None = None) -> None:
        """Fill ``buf`` with one segment from the current memory, then set its bootstrap value.
        ``on_step(info)`` is called after every vector step. Raises :class:`NonFiniteError` if the
        memory becomes non-finite."""
        buf.start(self.memory)
        with self.acting():
            for _ in range(buf.length):
                _, info = self.step(buf)
                if on_step is not None:
                    on_step(info)
            next_value = self.next_value()
        buf.next_value = next_value.clone()  # a normal tensor, made outside inference mode
        if not state_is_finite(self.memory):
            raise NonFiniteError(f"the memory state became non-finite while acting. {NONFINITE_HINT}")

    # ---- checkpoint ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "memory": clone_state(self.memory) if self.memory is not None else None,
            "generator": self.generator.get_state(),
            "obs": {k: v.clone() for k, v in self.obs.items()},
            "prev_action": self.prev_action.clone(),
            "prev_reward": self.prev_reward.clone(),
            "boundary": self.boundary.clone(),
            "valid": self.valid.clone(),
            "task_switch": self.task_switch.clone(),
            "envs": [sub_env_attr(self.vec_env, i, "state_dict")() for i in range(self.num_envs)],
            "vector_autoreset": np.array(getattr(self.vec_env, "_autoreset_envs", np.zeros(self.num_envs, bool))),
        }

    @torch.inference_mode()
    def load_state_dict(self, sd: dict[str, Any]) -> None:
        to = lambda t: t.to(self.device).clone()  # noqa: E731  (inference tensors, like the acting ones)
        self.memory = tree_map(to, sd["memory"])
        self.generator.set_state(sd["generator"])
        self.obs = {k: to(v) for k, v in sd["obs"].items()}
        self.prev_action, self.prev_reward = to(sd["prev_action"]), to(sd["prev_reward"])
        self.boundary, self.valid, self.task_switch = to(sd["boundary"]), to(sd["valid"]), to(sd["task_switch"])
        for i, env_sd in enumerate(sd["envs"]):
            sub_env_attr(self.vec_env, i, "load_state_dict")(env_sd)
        if hasattr(self.vec_env, "_autoreset_envs"):
            self.vec_env._autoreset_envs = np.array(sd["vector_autoreset"], dtype=bool)


class Lifetime:
    """One lifelong run: ``num_envs`` parallel lifetimes of the configured stream, agent and memory.

    ``cfg`` keys: seed, device, total_steps, num_envs, compile, checkpoint_every, memory, stream,
    agent, tracker (see ``configs/config.yaml``). Files go to ``run_dir`` (TensorBoard logs,
    summary.json, checkpoint.pt).
    """

    def __init__(self, cfg: DictConfig, run_dir: Path | str) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = resolve_device(str(cfg.get("device", "auto")))
        self.seed = int(cfg.seed)
        self._probe_seconds = 0.0  # wall time spent in probes (counted apart from the lifetime)
        self._seed_everything(self.seed)
        agent_cfg = cfg.agent
        self.num_envs = int(cfg.num_envs)
        self.segment_length = int(agent_cfg.segment_length)
        if self.segment_length < 1:
            raise ValueError(f"agent.segment_length must be >= 1, got {self.segment_length}")
        self.vec_env = make_vector_env(cfg.stream, self.num_envs, self.seed)
        self.task_names: list[str] = list(sub_env_attr(self.vec_env, 0, "task_names"))
        self.schedule: list = list(sub_env_attr(self.vec_env, 0, "schedule"))
        self.total_steps = self._total_steps()
        self.agent = LifelongAgent(
            self.vec_env.single_observation_space, self.vec_env.single_action_space, cfg.memory,
            int(agent_cfg.d_model), int(agent_cfg.num_layers), float(agent_cfg.get("mlp_ratio", 2.0)),
        ).to(self.device)
        compile_ = bool(cfg.get("compile", False))
        if compile_:
            self.agent.compile_acting()
        self.learner = PPOLearner(self.agent, PPOConfig.from_cfg(agent_cfg), compile=compile_, seed=self.seed)
        self.reset_on = str(cfg.memory.get("reset_on", "never"))
        acting_threads = agent_cfg.get("acting_threads", 1)
        self.collector = RolloutCollector(self.vec_env, self.agent, self.reset_on, self.device,
                                          None if acting_threads is None else int(acting_threads))
        self.buffer = RolloutBuffer(self.num_envs, self.segment_length, self.device)
        tcfg = cfg.tracker
        self.probe_episodes = int(tcfg.probe_episodes)
        self.log_every = int(tcfg.get("log_every", 2000))
        self.tracker = make_tracker(self.run_dir, self.task_names, self._hparams(), int(tcfg.probe_every),
                                    self.probe_episodes, int(tcfg.get("adaptation_k", 5)))
        self.global_step = 0
        self.iteration = 0
        self.started = False
        self._episodes_since_switch = [0] * self.num_envs
        self._recent_returns: deque[float] = deque(maxlen=100)
        self._current_task = self.task_names[0] if self.task_names else ""
        self._block_index = 0
        self._seen_tasks: list[str] = []
        self._last_log = 0
        self._last_checkpoint = 0

    # ---- setup helpers -------------------------------------------------------------------------
    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _total_steps(self) -> int:
        total = self.cfg.get("total_steps")
        if total is not None:
            return int(total)
        pass_steps = sub_env_attr(self.vec_env, 0, "schedule_steps")
        if pass_steps is None:
            raise ValueError(
                "total_steps=null needs a stream whose schedule is counted in steps; this stream counts "
                "episodes: set total_steps=<env steps summed over all lifetimes>"
            )
        return int(pass_steps) * self.num_envs

    def _hparams(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "memory": str(cfg.memory.get("name", cfg.memory.get("_target_", "?"))),
            "stream": str(cfg.stream.get("name", "?")),
            "d_model": int(cfg.agent.d_model),
            "num_layers": int(cfg.agent.num_layers),
            "num_envs": self.num_envs,
            "segment_length": self.segment_length,
            "lr": float(cfg.agent.lr),
            "reset_on": str(cfg.memory.get("reset_on", "never")),
            "seed": self.seed,
            "total_steps": self.total_steps,
        }

    # ---- probes --------------------------------------------------------------------------------
    def _next_task(self) -> str | None:
        """The task of the block after lifetime 0's current block (the schedule cycles; None if empty)."""
        if not self.schedule:
            return None
        name = self.schedule[(self._block_index + 1) % len(self.schedule)][0]
        return str(name)

    def _probe(self, tasks: list[str], block_end: int | None = None) -> dict[str, dict[str, Any]]:
        """Evaluate every lifetime on ``tasks`` from a copy of its memory (learning off); log it."""
        started = time.perf_counter()
        with self.collector.acting():
            results = run_probe(self.agent, self.collector.memory, self.cfg.stream, tasks, self.probe_episodes,
                                self.seed + 10_000 + self.global_step, self.device)
        self.tracker.log_probe(self.global_step, results, block_end=block_end)
        self._probe_seconds += time.perf_counter() - started  # kept out of charts/sps
        return results

    def _probe_tasks(self) -> list[str]:
        tasks = list(self._seen_tasks)
        nxt = self._next_task()
        if nxt is not None and nxt not in tasks:
            tasks.append(nxt)
        return tasks

    # ---- per-step bookkeeping ------------------------------------------------------------------
    def _on_step(self, info: Info) -> None:
        self.global_step += self.num_envs
        for i in range(self.num_envs):
            if bool(info_at(info, "task_switch", i, False)):
                self._episodes_since_switch[i] = 0
                if i == 0:
                    self._on_task_switch(info)
            ret = info_at(info, "episode_return", i)
            if ret is None:
                continue
            self._episodes_since_switch[i] += 1
            self._recent_returns.append(float(ret))
            self.tracker.log_episode(
                self.global_step, str(info_at(info, "task_name", i, "")), float(ret),
                int(info_at(info, "episode_length", i, 0)), float(info_at(info, "episode_success", i, 0.0)),
                self._episodes_since_switch[i],
            )

    def _on_task_switch(self, info: Info) -> None:
        """Lifetime 0 starts a new block: probe the block that ended (row k of R) on every task seen
        and on the incoming one (R[k, k+1] is what GEM's forward transfer reads), then log the switch."""
        block_index = int(info_at(info, "block_index", 0, self._block_index + 1))
        name = str(info_at(info, "task_name", 0, ""))
        if block_index > 0 and block_index != self._block_index:
            tasks = self._seen_tasks_with(self._current_task)
            self._probe(tasks + ([name] if name and name not in tasks else []), block_end=self._block_index)
        self._block_index = block_index
        self._current_task = name
        if name not in self._seen_tasks:
            self._seen_tasks.append(name)
        self.tracker.log_task_switch(self.global_step, name, int(info_at(info, "visit", 0, 1)), block_index)

    def _seen_tasks_with(self, name: str) -> list[str]:
        return self._seen_tasks + ([name] if name and name not in self._seen_tasks else [])

    def _log_diagnostics(self, stats: dict[str, Any], sps: float) -> None:
        scalars = {k: float(v) for k, v in stats.items() if k.startswith("losses/")}
        scalars["charts/sps"] = sps
        scalars["charts/lr"] = float(self.learner.optimizer.param_groups[0]["lr"])
        self.tracker.log_scalars(self.global_step, scalars)
        if "features" in stats:
            self.tracker.log_memory(self.global_step, self.agent.backbone.state_metrics(self.collector.memory))
            self.tracker.log_plasticity(self.global_step, stats["features"], self.agent, stats["losses/grad_norm"])

    # ---- the loop ------------------------------------------------------------------------------
    def start(self) -> None:
        """Reset the envs, log the first task switch and probe the untrained agent (baseline b_j)."""
        info = self.collector.reset(self.seed)
        self.started = True
        if bool(info_at(info, "task_switch", 0, True)):
            self._block_index = int(info_at(info, "block_index", 0, 0))
            name = str(info_at(info, "task_name", 0, self.task_names[0]))
            self._current_task = name
            self._seen_tasks = [name]
            self.tracker.log_task_switch(0, name, int(info_at(info, "visit", 0, 1)), self._block_index)
        self._probe(list(self.task_names))

    def train_segment(self) -> dict[str, Any]:
        """Collect one segment in every lifetime and run the PPO update on it."""
        self.agent.train()
        self.collector.collect(self.buffer, self._on_step)
        log_now = self.global_step - self._last_log >= self.log_every
        reset = self.buffer.reset if self.reset_on != "never" else None
        stats = self.learner.update(self.buffer, reset=reset, features=log_now)
        if log_now:
            self._last_log = self.global_step
        self.iteration += 1
        return stats

    def act_steps(self, steps: int) -> None:
        """Act ``steps`` tokens in every lifetime without learning (the lifetime's final partial segment,
        so that it ends at ``total_steps`` rather than a segment later)."""
        self.agent.train()
        with self.collector.acting():
            for _ in range(steps):
                _, info = self.collector.step()
                self._on_step(info)
        if not state_is_finite(self.collector.memory):
            raise NonFiniteError(f"the memory state became non-finite while acting. {NONFINITE_HINT}")

    def run(self, progress: bool = True) -> dict[str, Any]:
        """Run the lifetime to ``total_steps`` env steps (summed over lifetimes); returns the summary."""
        if not self.started:
            self.start()
        bar = _progress_bar(self.total_steps, self.global_step) if progress else None
        last_time, last_step, last_probe = time.perf_counter(), self.global_step, self._probe_seconds
        every = int(self.cfg.get("checkpoint_every", 0) or 0)
        try:
            while self.global_step < self.total_steps:
                remaining = -(-(self.total_steps - self.global_step) // self.num_envs)  # steps per lifetime
                if remaining < self.segment_length:  # the last partial segment: acted, not learned from
                    self.act_steps(remaining)
                    if bar is not None:
                        bar.update(self.global_step - bar.n)
                    break
                stats = self.train_segment()
                now = time.perf_counter()
                lifetime_seconds = now - last_time - (self._probe_seconds - last_probe)
                sps = (self.global_step - last_step) / max(lifetime_seconds, 1e-9)
                last_time, last_step, last_probe = now, self.global_step, self._probe_seconds
                self._log_diagnostics(stats, sps)
                if self.tracker.should_probe(self.global_step):
                    self._probe(self._probe_tasks())
                if every > 0 and self.global_step - self._last_checkpoint >= every:
                    self.save(self.run_dir / "checkpoint.pt")
                if bar is not None:
                    mean_ret = float(np.mean(self._recent_returns)) if self._recent_returns else float("nan")
                    bar.update(self.global_step - bar.n)
                    bar.set_postfix(task=self._current_task, ret=f"{mean_ret:.3f}", sps=f"{sps:.0f}")
        finally:
            if bar is not None:
                bar.close()
        final = self._probe(self._seen_tasks_with(self._current_task), block_end=self._block_index)
        self.save(self.run_dir / "checkpoint.pt")
        summary = dict(self.tracker.finalize())
        summary["final_probe"] = {task: {k: r[k] for k in ("success", "return")} for task, r in final.items()}
        summary["env_steps"] = self.global_step
        return summary

    # ---- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "agent": self.agent.state_dict(),
            "learner": self.learner.state_dict(),
            "collector": self.collector.state_dict(),
            "rng": rng_state_dict(),
            "tracker": self.tracker.state_dict(),
            "loop": {
                "global_step": self.global_step,
                "iteration": self.iteration,
                "started": self.started,
                "episodes_since_switch": list(self._episodes_since_switch),
                "recent_returns": list(self._recent_returns),
                "current_task": self._current_task,
                "block_index": self._block_index,
                "seen_tasks": list(self._seen_tasks),
                "last_log": self._last_log,
                "last_checkpoint": self._last_checkpoint,
            },
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.agent.load_state_dict(sd["agent"])
        self.learner.load_state_dict(sd["learner"])
        self.collector.load_state_dict(sd["collector"])
        self.tracker.load_state_dict(sd["tracker"])
        loop = sd["loop"]
        self.global_step, self.iteration, self.started = loop["global_step"], loop["iteration"], loop["started"]
        self._episodes_since_switch = list(loop["episodes_since_switch"])
        self._recent_returns = deque(loop["recent_returns"], maxlen=100)
        self._current_task, self._block_index = loop["current_task"], loop["block_index"]
        self._seen_tasks = list(loop["seen_tasks"])
        self._last_log, self._last_checkpoint = loop["last_log"], loop["last_checkpoint"]
        load_rng_state_dict(sd["rng"])

    def save(self, path: Path | str) -> Path:
        self._last_checkpoint = self.global_step
        return save_checkpoint(path, self.state_dict())

    def load(self, path: Path | str) -> None:
        self.load_state_dict(load_checkpoint(path, map_location=self.device))


# ---- construction of the other packages' objects (module-level so tests can substitute them) ----
def make_vector_env(stream_cfg: Any, num_envs: int, seed: int) -> Any:
    from lifelong.envs.make import make_vector_env as _make

    return _make(stream_cfg, num_envs, seed)


def make_tracker(run_dir: Path, task_names: list[str], hparams: dict, probe_every: int, probe_episodes: int,
                 adaptation_k: int) -> Any:
    from lifelong.tracking.tracker import Tracker

    return Tracker(run_dir, task_names, hparams, probe_every, probe_episodes, adaptation_k)


def run_probe(agent: LifelongAgent, memory: tuple, stream_cfg: Any, task_names: list[str], episodes: int,
              seed: int, device: torch.device) -> dict[str, dict[str, float]]:
    from lifelong.tracking.probes import run_probe as _run_probe

    return _run_probe(agent, memory, stream_cfg, task_names, episodes, seed, device)


def _progress_bar(total: int, initial: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, desc="lifetime")
