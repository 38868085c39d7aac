"""The lifetime loop: act on a vector env segment by segment, learn with PPO, report to the tracker.

:class:`Lifetime` wires objects it is given (the agent, its :class:`RolloutCollector`, the segment
buffer, a learner, a tracker, a prober and :class:`LifetimeSettings`) and runs the lifetime
(``run()``), with state_dict-style checkpoints of every lifetime object. ``agents.build.build_lifetime``
makes them from the Hydra config. The protocols below say what the lifetime needs from the
collaborators it does not own (tests pass fakes of them).
"""
from __future__ import annotations

import time
import warnings
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from lifelong.agents.buffer import RolloutBuffer
from lifelong.agents.checkpoint import (CheckpointFolder, load_checkpoint, load_rng_state_dict, rng_state_dict,
                                       save_checkpoint)
from lifelong.agents.guard import DivergenceError, DivergenceGuard
from lifelong.agents.policy import LifelongAgent, Memory
from lifelong.agents.ppo import NonFiniteError
from lifelong.agents.rollout import Info, RolloutCollector, info_at
from lifelong.stop_signals import StopSignals

ProbeResults = dict[str, dict[str, Any]]  # task -> {"success", "return", "steps", ...}


class LifetimeTracker(Protocol):
    """What the lifetime reports to (``tracking.tracker.Tracker``; see docs/interfaces.md)."""

    def log_episode(self, step: int, task_name: str, episode_return: float, episode_length: int, success: float,
                    episodes_since_switch: int, block_index: int | None = None) -> None: ...

    def log_task_switch(self, step: int, task_name: str, visit: int, block_index: int) -> None: ...

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None: ...

    def log_memory(self, step: int, state_metrics: Mapping[str, Mapping[str, float]]) -> None: ...

    def log_plasticity(self, step: int, features: Mapping[str, torch.Tensor], model: nn.Module | None,
                       grad_norm: float | None) -> None: ...

    def should_probe(self, step: int) -> bool: ...

    def probe_plan(self, block_end: int | None, step: int) -> tuple[list[str], int]: ...

    @property
    def current_block(self) -> int: ...

    def log_probe(self, step: int, results: Mapping[str, Any], block_end: int | None = None) -> None: ...

    def finalize(self) -> dict[str, Any]: ...

    def write_unfinished_summary(self, step: int) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, sd: Mapping[str, Any]) -> None: ...


class Prober(Protocol):
    """Evaluates ``agent`` on ``tasks`` from a copy of ``memory``, ``episodes`` per task over all
    lifetimes (``tracking.probes.StreamProber``)."""

    def __call__(self, agent: LifelongAgent, memory: Memory, tasks: Sequence[str], seed: int,
                 episodes: int) -> ProbeResults: ...


class Replayer(Protocol):
    """The switch-replay probe (``tracking.replay.SwitchReplay``): A, B, A again through a copy of the memory."""

    def __call__(self, agent: LifelongAgent, memory: Memory, tasks: tuple[str, str], seed: int) -> dict[str, Any]: ...


class Learner(Protocol):
    """Learns from a full segment buffer (``agents.ppo.PPOLearner``)."""

    optimizer: torch.optim.Optimizer

    def update(self, buf: RolloutBuffer, reset: torch.Tensor | None = None,
               features: bool = False) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, sd: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class LifetimeSettings:
    """The lifetime's own settings (``configs/config.yaml``; the schedule comes from the stream)."""

    run_dir: Path  # checkpoints/ and the tracker's files go here
    seed: int  # the probes are seeded from it
    total_steps: int  # env steps summed over all lifetimes
    task_names: tuple[str, ...]  # every task of the stream
    log_every: int  # env steps between memory / plasticity diagnostics
    checkpoint_every: int  # env steps between checkpoints (0: none by steps)
    checkpoint_minutes: float  # wall-clock minutes between checkpoints (0: none by time)
    checkpoint_keep: int  # the newest N checkpoints are kept
    config_fingerprint: str  # in every checkpoint's header; a checkpoint of another configuration is refused


class LifetimeStopped(Exception):
    """A stop signal ended the lifetime early: a checkpoint and an unfinished summary.json were written."""

    def __init__(self, signal_name: str, signum: int, step: int, checkpoint: Path) -> None:
        super().__init__(f"{signal_name} at env step {step}: saved {checkpoint}")
        self.signal_name, self.signum, self.step, self.checkpoint = signal_name, signum, step, checkpoint


class Lifetime:
    """One lifelong run: ``collector.num_envs`` parallel lifetimes of one stream, agent and memory."""

    def __init__(self, agent: LifelongAgent, collector: RolloutCollector, buffer: RolloutBuffer, learner: Learner,
                 tracker: LifetimeTracker, prober: Prober, settings: LifetimeSettings,
                 guard: DivergenceGuard | None = None, replay: Replayer | None = None) -> None:
        self.agent = agent
        self.collector = collector
        self.buffer = buffer
        self.learner = learner
        self.tracker = tracker
        self.prober = prober
        self.settings = settings
        self.guard = guard
        self.replay = replay
        self.rollbacks = 0  # divergences rolled back so far in this process
        self._lr_scale = 1.0  # the learning rate's factor from rollbacks (saved in checkpoints)
        self.num_envs = collector.num_envs
        self._probe_seconds = 0.0  # wall time spent in probes (counted apart from the lifetime), over every process
        self._wall_before = 0.0  # wall time of the earlier processes of this lifetime (resumed runs)
        self._run_started: float | None = None  # perf_counter() when this process's run() began
        self.global_step = 0
        self.started = False
        self._episodes_since_switch = [0] * self.num_envs
        self._recent_returns: deque[float] = deque(maxlen=100)
        self._current_task = ""  # for the progress bar only; the tracker owns the blocks
        self._last_log = 0
        self._last_checkpoint = 0
        self._last_checkpoint_time = time.monotonic()
        self.checkpoints = CheckpointFolder(settings.run_dir / "checkpoints", settings.checkpoint_keep,
                                            {"config": settings.config_fingerprint})
        self._final_probe: ProbeResults | None = None  # the end-of-lifetime probe, once taken
        self._last_probe_step = -1  # env step of the newest probe
        self._last_results: ProbeResults | None = None  # its results (this process only)

    # ---- probes --------------------------------------------------------------------------------
    def _probe(self, block_end: int | None = None) -> ProbeResults:
        """Probe every lifetime from a copy of its memory (learning off) on the tasks the tracker plans
        for this moment (``probe_plan``); log it."""
        started = time.perf_counter()
        self._settle_learner()  # an overlapped learner's pending update: the probe sees the newest weights
        tasks, episodes = self.tracker.probe_plan(block_end, self.global_step)
        with self.collector.acting():
            results = self.prober(self.agent, self.collector.memory, tasks,
                                  self.settings.seed + 10_000 + self.global_step, episodes)
        self.tracker.log_probe(self.global_step, results, block_end=block_end)
        self._probe_seconds += time.perf_counter() - started  # kept out of charts/sps
        self._last_probe_step = self.global_step
        self._last_results = results if block_end is not None else None
        return results

    def _settle_learner(self) -> None:
        """Wait for a learner that learns in the background (``agent.overlap``) and take its weights."""
        settle = getattr(self.learner, "settle", None)
        if settle is not None:
            settle()

    def _switch_replay(self) -> None:
        """In-context versus in-weight forgetting at the lifetime's end (tracking/replay.py)."""
        tasks = self.tracker.replay_tasks() if self.replay is not None else None
        if tasks is None:
            return
        started = time.perf_counter()
        with self.collector.acting():
            result = self.replay(self.agent, self.collector.memory, tasks, self.settings.seed + 20_000 + self.global_step)
        self.tracker.log_replay(self.global_step, result)
        self._probe_seconds += time.perf_counter() - started

    # ---- per-step bookkeeping ------------------------------------------------------------------
    def _on_step(self, info: Info) -> None:
        """Report one vector step: finished episodes (each with the block its own lifetime's stream
        names), then block starts, then the probe of a block that ended on this step (row k of R,
        docs/blocks.md: every lifetime ends block k on the same step) or a periodic probe.

        A lifetime's token is a step (maybe ending an episode) or a reset (maybe starting a block),
        never both; the episodes of every lifetime go first, so that block k's last episodes reach
        the tracker before another lifetime's reset on the same step starts block k+1."""
        self.global_step += self.num_envs
        for i in range(self.num_envs):
            ret = info_at(info, "episode_return", i)
            if ret is None:
                continue
            self._episodes_since_switch[i] += 1
            self._recent_returns.append(float(ret))
            self.tracker.log_episode(
                self.global_step, str(info_at(info, "task_name", i, "")), float(ret),
                int(info_at(info, "episode_length", i, 0)), float(info_at(info, "episode_success", i, 0.0)),
                self._episodes_since_switch[i], int(info_at(info, "block_index", i, 0)),
            )
        for i in range(self.num_envs):
            if bool(info_at(info, "task_switch", i, False)):
                self._episodes_since_switch[i] = 0
                name = str(info_at(info, "task_name", i, ""))
                self.tracker.log_task_switch(self.global_step, name, int(info_at(info, "visit", i, 1)),
                                             int(info_at(info, "block_index", i, 0)))
                if i == 0:
                    self._current_task = name
        ended = _block_end(info, self.num_envs)
        if ended is not None:
            self._probe(block_end=ended)
        elif self.tracker.should_probe(self.global_step):
            self._probe()

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
        """Reset the envs, log the first block and probe the untrained agent (baseline b_j)."""
        info = self.collector.reset(self.settings.seed)
        self.started = True
        for i in range(self.num_envs):
            name = str(info_at(info, "task_name", i, ""))
            self.tracker.log_task_switch(0, name, int(info_at(info, "visit", i, 1)), int(info_at(info, "block_index", i, 0)))
        self._current_task = str(info_at(info, "task_name", 0, ""))
        self._probe()

    def train_segment(self) -> dict[str, Any]:
        """Collect one segment in every lifetime and run the learner's update on it."""
        self.agent.train()
        self.collector.collect(self.buffer, self._on_step)
        log_now = self.global_step - self._last_log >= self.settings.log_every
        reset = self.buffer.reset if self.collector.reset_on != "never" else None
        stats = self.learner.update(self.buffer, reset=reset, features=log_now)
        if log_now:
            self._last_log = self.global_step
        return stats

    def act_steps(self, steps: int) -> None:
        """Act ``steps`` tokens in every lifetime without learning (the lifetime's final partial segment,
        so that it ends at ``total_steps`` rather than a segment later)."""
        self.agent.train()
        with self.collector.acting():
            for _ in range(steps):
                _, info = self.collector.step()
                self._on_step(info)
        self.collector.check_finite()

    def _wall_seconds(self) -> float:
        """Wall time of the lifetime so far, earlier processes included."""
        now = time.perf_counter()
        return self._wall_before + (now - self._run_started if self._run_started is not None else 0.0)

    def run(self, progress: bool = True) -> dict[str, Any]:
        """Run the lifetime to ``total_steps`` env steps (summed over lifetimes); returns the summary."""
        self._run_started = time.perf_counter()
        bar = None
        try:
            with StopSignals() as stop:  # a stop during start() takes effect after the first segment
                if not self.started:
                    self.start()
                bar = _progress_bar(self.settings.total_steps, self.global_step) if progress else None
                self._last_checkpoint_time = time.monotonic()
                while True:
                    try:
                        self._run_segments(bar, stop, time.perf_counter(), self.global_step, self._probe_seconds)
                        break
                    except (DivergenceError, NonFiniteError) as error:
                        if not self._roll_back(error):
                            raise
        finally:
            if bar is not None:
                bar.close()
        self._settle_learner()
        if self._final_probe is None:  # a lifetime resumed after its final probe does not probe again
            block = self.tracker.current_block
            if self._last_probe_step == self.global_step and self._last_results is not None:
                self._final_probe = self._last_results  # the run ended on a block end: its probe is the final one
            else:  # a partial final block: its row of R is measured where the lifetime stops
                self._final_probe = self._probe(block_end=block)
            self._switch_replay()
            self.checkpoint()
        wall = self._wall_seconds()
        self.tracker.log_scalars(self.global_step, {"charts/wall_seconds": wall, "charts/probe_seconds": self._probe_seconds,
                                                    "charts/probe_share": self._probe_seconds / max(wall, 1e-9)})
        summary = dict(self.tracker.finalize())
        summary["final_probe"] = {task: {k: r[k] for k in ("success", "return")} for task, r in self._final_probe.items()}
        summary["env_steps"] = self.global_step
        return summary

    def _run_segments(self, bar: Any, stop: StopSignals, last_time: float, last_step: int, last_probe: float) -> None:
        """Learn segment by segment up to ``total_steps``; checkpoint on schedule; on a stop signal,
        checkpoint, write an unfinished summary and raise :class:`LifetimeStopped`."""
        while self.global_step < self.settings.total_steps:
            remaining = -(-(self.settings.total_steps - self.global_step) // self.num_envs)  # steps per lifetime
            if remaining < self.buffer.length:  # the last partial segment: acted, not learned from
                self.act_steps(remaining)
                if bar is not None:
                    bar.update(self.global_step - bar.n)
                break
            stats = self.train_segment()
            if self.guard is not None:
                self.guard.check(self.global_step, stats, self._state_norms)
            now = time.perf_counter()
            lifetime_seconds = now - last_time - (self._probe_seconds - last_probe)
            sps = (self.global_step - last_step) / max(lifetime_seconds, 1e-9)
            last_time, last_step, last_probe = now, self.global_step, self._probe_seconds
            self._log_diagnostics(stats, sps)
            if stop.requested:
                path = self.checkpoint()
                self.tracker.write_unfinished_summary(self.global_step)
                raise LifetimeStopped(stop.requested, int(stop.signum), self.global_step, path)
            if self._checkpoint_due():
                self.checkpoint()
            if bar is not None:
                mean_ret = float(np.mean(self._recent_returns)) if self._recent_returns else float("nan")
                bar.update(self.global_step - bar.n)
                bar.set_postfix(task=self._current_task, ret=f"{mean_ret:.3f}", sps=f"{sps:.0f}")

    def _state_norms(self) -> list[float]:
        metrics = self.agent.backbone.state_metrics(self.collector.memory)
        return [float(layer["state_norm"]) for layer in metrics.values() if "state_norm" in layer]

    def _roll_back(self, error: Exception) -> bool:
        """``guard.on_divergence=rollback``: reload the newest checkpoint and continue with the learning
        rate multiplied by ``rollback_lr_factor``. False when the run must stop instead."""
        guard = self.guard
        if guard is None or guard.on_divergence != "rollback" or self.rollbacks >= guard.max_rollbacks:
            return False
        if self.checkpoints.latest() is None:
            return False
        step, scale = self.global_step, self._lr_scale * guard.rollback_lr_factor
        path = self.resume()  # the checkpoint's learning rate carries the checkpoint's _lr_scale
        self.rollbacks += 1
        for group in self.learner.optimizer.param_groups:
            group["lr"] *= scale / self._lr_scale
        self._lr_scale = scale
        lr = self.learner.optimizer.param_groups[0]["lr"]
        warnings.warn(f"{str(error).splitlines()[0].split(';')[0]}; rolled back from env step {step} to {path.name} "
                      f"with lr={lr:.3g} (rollback {self.rollbacks} of {guard.max_rollbacks})", stacklevel=2)
        return True

    def _checkpoint_due(self) -> bool:
        every, minutes = self.settings.checkpoint_every, self.settings.checkpoint_minutes
        by_steps = every > 0 and self.global_step - self._last_checkpoint >= every
        by_time = minutes > 0 and time.monotonic() - self._last_checkpoint_time >= 60.0 * minutes
        return by_steps or by_time

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
                "started": self.started,
                "episodes_since_switch": list(self._episodes_since_switch),
                "recent_returns": list(self._recent_returns),
                "current_task": self._current_task,
                "last_probe_step": self._last_probe_step,
                # a block-end probe at this very step is the final one if the lifetime ends here
                "last_results": self._last_results if self._last_probe_step == self.global_step else None,
                "last_log": self._last_log,
                "last_checkpoint": self._last_checkpoint,
                "final_probe": self._final_probe,
                "probe_seconds": self._probe_seconds,
                "wall_seconds": self._wall_seconds(),
                "lr_scale": self._lr_scale,
            },
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.agent.load_state_dict(sd["agent"])
        self.learner.load_state_dict(sd["learner"])
        self.collector.load_state_dict(sd["collector"])
        self.tracker.load_state_dict(sd["tracker"])
        loop = sd["loop"]
        self.global_step, self.started = loop["global_step"], loop["started"]
        self._episodes_since_switch = list(loop["episodes_since_switch"])
        self._recent_returns = deque(loop["recent_returns"], maxlen=100)
        self._current_task = loop["current_task"]
        self._last_probe_step = int(loop["last_probe_step"])
        self._last_results = loop.get("last_results")
        self._last_log, self._last_checkpoint = loop["last_log"], loop["last_checkpoint"]
        self._final_probe = loop["final_probe"]
        self._probe_seconds = float(loop["probe_seconds"])
        self._wall_before = float(loop["wall_seconds"])
        self._run_started = time.perf_counter() if self._run_started is not None else None
        self._lr_scale = float(loop["lr_scale"])
        load_rng_state_dict(sd["rng"])

    def _checkpoint_state(self) -> dict[str, Any]:
        """The lifetime's state for a checkpoint, after marking the checkpoint's step and time (the
        tracker's state_dict writes its pending events first, so the checkpoint claims only events on disk)."""
        self._last_checkpoint = self.global_step
        self._last_checkpoint_time = time.monotonic()
        return self.state_dict()

    def save(self, path: Path | str) -> Path:
        """Write the whole lifetime to ``path``."""
        return save_checkpoint(path, self._checkpoint_state())

    def checkpoint(self) -> Path:
        """Save into ``run_dir/checkpoints/step_<global step>.pt``, keeping the newest ``checkpoint_keep``."""
        return self.checkpoints.save(self.global_step, self._checkpoint_state())

    def resume(self) -> Path:
        """Continue from the newest readable checkpoint in ``run_dir/checkpoints``; returns its path."""
        path, sd = self.checkpoints.load_latest(map_location=self.collector.device)
        self.load_state_dict(sd)
        return path

    def load(self, path: Path | str) -> None:
        self.load_state_dict(load_checkpoint(path, map_location=self.collector.device))


def _block_end(info: Info, num_envs: int) -> int | None:
    """The block whose last token this vector step was (None inside a block); every lifetime must agree."""
    ends = {int(info_at(info, "block_end", i, -1)) for i in range(num_envs)}
    if len(ends) > 1:
        raise RuntimeError(f"the lifetimes disagree on the block that ended on this step ({sorted(ends)}): every "
                           f"lifetime of a vector env must follow one schedule counted in steps (docs/blocks.md)")
    ended = ends.pop() if ends else -1
    return ended if ended >= 0 else None


def _progress_bar(total: int, initial: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, desc="lifetime")
