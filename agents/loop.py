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
                    episodes_since_switch: int) -> None: ...

    def log_task_switch(self, step: int, task_name: str, visit: int, block_index: int) -> None: ...

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None: ...

    def log_memory(self, step: int, state_metrics: Mapping[str, Mapping[str, float]]) -> None: ...

    def log_plasticity(self, step: int, features: Mapping[str, torch.Tensor], model: nn.Module | None,
                       grad_norm: float | None) -> None: ...

    def should_probe(self, step: int) -> bool: ...

    def log_probe(self, step: int, results: Mapping[str, Any], block_end: int | None = None) -> None: ...

    def finalize(self) -> dict[str, Any]: ...

    def write_unfinished_summary(self, step: int) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, sd: Mapping[str, Any]) -> None: ...


class Prober(Protocol):
    """Evaluates ``agent`` on ``tasks`` from a copy of ``memory`` (``tracking.probes.StreamProber``)."""

    def __call__(self, agent: LifelongAgent, memory: Memory, tasks: Sequence[str], seed: int) -> ProbeResults: ...


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
    block_tasks: tuple[str, ...]  # the task of each block of one pass of the schedule
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
                 guard: DivergenceGuard | None = None) -> None:
        self.agent = agent
        self.collector = collector
        self.buffer = buffer
        self.learner = learner
        self.tracker = tracker
        self.prober = prober
        self.settings = settings
        self.guard = guard
        self.rollbacks = 0  # divergences rolled back so far in this process
        self._lr_scale = 1.0  # the learning rate's factor from rollbacks (saved in checkpoints)
        self.num_envs = collector.num_envs
        self._probe_seconds = 0.0  # wall time spent in probes (counted apart from the lifetime)
        self.global_step = 0
        self.started = False
        self._episodes_since_switch = [0] * self.num_envs
        self._recent_returns: deque[float] = deque(maxlen=100)
        self._current_task = settings.task_names[0] if settings.task_names else ""
        self._block_index = 0
        self._seen_tasks: list[str] = []
        self._last_log = 0
        self._last_checkpoint = 0
        self._last_checkpoint_time = time.monotonic()
        self.checkpoints = CheckpointFolder(settings.run_dir / "checkpoints", settings.checkpoint_keep,
                                            {"config": settings.config_fingerprint})
        self._final_probe: ProbeResults | None = None  # the end-of-lifetime probe, once taken

    # ---- probes --------------------------------------------------------------------------------
    def _next_task(self) -> str | None:
        """The task of the block after lifetime 0's current block (the schedule cycles; None if empty)."""
        blocks = self.settings.block_tasks
        return blocks[(self._block_index + 1) % len(blocks)] if blocks else None

    def _probe(self, tasks: list[str], block_end: int | None = None) -> ProbeResults:
        """Evaluate every lifetime on ``tasks`` from a copy of its memory (learning off); log it."""
        started = time.perf_counter()
        with self.collector.acting():
            results = self.prober(self.agent, self.collector.memory, tasks,
                                  self.settings.seed + 10_000 + self.global_step)
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
        info = self.collector.reset(self.settings.seed)
        self.started = True
        if bool(info_at(info, "task_switch", 0, True)):
            self._block_index = int(info_at(info, "block_index", 0, 0))
            name = str(info_at(info, "task_name", 0, self.settings.task_names[0]))
            self._current_task = name
            self._seen_tasks = [name]
            self.tracker.log_task_switch(0, name, int(info_at(info, "visit", 0, 1)), self._block_index)
        self._probe(list(self.settings.task_names))

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

    def run(self, progress: bool = True) -> dict[str, Any]:
        """Run the lifetime to ``total_steps`` env steps (summed over lifetimes); returns the summary."""
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
        if self._final_probe is None:  # a lifetime resumed after its final probe does not probe again
            self._final_probe = self._probe(self._seen_tasks_with(self._current_task), block_end=self._block_index)
            self.checkpoint()
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
            if self.tracker.should_probe(self.global_step):
                self._probe(self._probe_tasks())
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
                "block_index": self._block_index,
                "seen_tasks": list(self._seen_tasks),
                "last_log": self._last_log,
                "last_checkpoint": self._last_checkpoint,
                "final_probe": self._final_probe,
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
        self._current_task, self._block_index = loop["current_task"], loop["block_index"]
        self._seen_tasks = list(loop["seen_tasks"])
        self._last_log, self._last_checkpoint = loop["last_log"], loop["last_checkpoint"]
        self._final_probe = loop["final_probe"]
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


def _progress_bar(total: int, initial: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, desc="lifetime")
