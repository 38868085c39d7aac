"""StreamEnv: one lifetime's unbounded stream of tasks behind a single Gymnasium env.

The stream walks a :class:`~envs.schedules.Schedule` of blocks ``(task_name, duration)``; when the
schedule is exhausted it starts again (a lifetime never ends). Block boundaries sit at fixed
positions of the stream (cumulative durations). All tasks share one observation and action space.

Blocks in ``unit: steps`` are synchronous (docs/blocks.md): the stream counts *tokens*, the calls of
a NEXT_STEP-autoreset vector env (every ``step()`` and every ``reset()`` after the first, which is
the autoreset token), so that every lifetime of a vector env is at the same position after the same
number of vector steps. Block k covers tokens ``(end_{k-1}, end_k]`` in every lifetime: the episode
running at ``end_k`` is truncated there (bootstrapped as a truncation), and an episode reset at or
after ``end_k`` belongs to block k+1. No episode spans two blocks.

In ``unit: episodes`` a block ends at the first reset after its episode count (one lifetime's own
position; lifetimes of a vector env drift apart, which is why ``lifelong run`` takes steps only).

``info`` on every step and reset: ``task_id``, ``task_name``, ``task_switch`` (True on the reset
that starts a new block), ``visit`` (1 on a task's first block), ``block_index`` (the block the
token's episode belongs to, counted over the whole lifetime), ``block_end`` (the index of the block
whose last token this is, else -1; steps unit only). On an episode's last step also
``episode_return``, ``episode_length``, ``episode_success`` and ``block_truncated`` (True when the
block's end, not the task, ended the episode).
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from lifelong.envs.plain_state import env_state_dict, load_env_state_dict
from lifelong.envs.schedules import Schedule
from lifelong.envs.stream_config import RecallVocab, TaskSpec
from lifelong.envs.tasks import build_task_env

STATE_VERSION = 3  # 2: task envs as plain data (envs.plain_state), no pickle; 3: steps count tokens (synchronous blocks)


class StreamEnv(gym.Env):
    """A schedule of shifted tasks as one env (see the module docstring for the semantics).

    Args:
        tasks: the task specs by name (at least every task the schedule names).
        schedule: one pass of blocks.
        seed: the seed used by the first ``reset()`` when none is given.
        expose_task_id: add ``task_id = Discrete(len(task_names))`` to the observation.
        task_names: the id order of the tasks, each scheduled task included (a stream: order of first
            appearance in the schedule; a single-task probe env: the full stream's order, so ids match).
        recall_vocab: the vocabulary shared by every recall task (None without recall tasks).
        name: the stream's name (for messages).
    """

    metadata = {"render_modes": []}

    def __init__(self, tasks: dict[str, TaskSpec], schedule: Schedule, *, seed: int, expose_task_id: bool,
                 task_names: list[str], recall_vocab: RecallVocab | None, name: str) -> None:
        if not schedule.blocks:
            raise ValueError(f"stream {name!r}: the schedule is empty: give schedule.order a task name")
        scheduled = list(dict.fromkeys(task for task, _ in schedule.blocks))
        self.task_names: list[str] = list(task_names)
        missing = [t for t in scheduled if t not in self.task_names or t not in tasks]
        if missing:
            raise ValueError(f"stream {name!r}: schedule names undefined task(s) {missing}: define them under `tasks`")
        self.name = name
        self.schedule: list[tuple[str, int]] = [(t, int(d)) for t, d in schedule.blocks]
        self.duration_unit: str = schedule.unit
        self.schedule_steps: int | None = schedule.length if schedule.unit == "steps" else None
        self.expose_task_id = bool(expose_task_id)
        self._pass_length = schedule.length
        self._ends = schedule.ends()
        self._block_task = [self.task_names.index(t) for t, _ in self.schedule]
        # one env per scheduled task, indexed by task id (None for ids this stream never visits)
        self._envs: list[gym.Env | None] = [None] * len(self.task_names)
        for task in scheduled:
            self._envs[self.task_names.index(task)] = build_task_env(tasks[task], recall_vocab)
        self._check_spaces(scheduled)
        first = self._envs[self._block_task[0]]
        self.action_space = first.action_space
        obs_space = first.observation_space
        if self.expose_task_id:
            obs_space = spaces.Dict({**obs_space.spaces, "task_id": spaces.Discrete(len(self.task_names))})
        self.observation_space = obs_space
        self._seed = int(seed)
        self._restart(self._seed)

    # ---- construction helpers ------------------------------------------------------------
    def _check_spaces(self, scheduled: list[str]) -> None:
        ref_name = scheduled[0]
        ref = self._envs[self.task_names.index(ref_name)]
        if not isinstance(ref.observation_space, spaces.Dict):
            raise ValueError(
                f"stream {self.name!r}: task {ref_name!r} has a non-Dict observation space "
                f"{ref.observation_space}: streams need Dict observations (MiniGrid or recall tasks)"
            )
        for task in scheduled[1:]:
            env = self._envs[self.task_names.index(task)]
            for what in ("observation_space", "action_space"):
                a, b = getattr(ref, what), getattr(env, what)
                if a != b:
                    raise ValueError(
                        f"stream {self.name!r}: tasks {ref_name!r} and {task!r} have different {what.replace('_', ' ')}s "
                        f"({a} vs {b}): every task of a stream must share one space; pick tasks that do"
                    )

    def _restart(self, seed: int) -> None:
        """Go back to the start of the schedule; per-task seeds are derived from ``seed``."""
        self._block = 0                      # global block counter (over every pass)
        self._units = 0                      # steps or episodes done in this lifetime
        self._visits = [0] * len(self.task_names)
        self._started = False                # whether block 0 has begun
        task_seeds = np.random.SeedSequence(int(seed)).generate_state(len(self.task_names), dtype=np.uint32)
        self._pending_seeds: list[int | None] = [int(s) for s in task_seeds]
        self._episode_return = 0.0
        self._episode_length = 0
        self._needs_reset = True

    # ---- position --------------------------------------------------------------------------
    def _block_end(self, block: int) -> int:
        passes, i = divmod(block, len(self.schedule))
        return passes * self._pass_length + int(self._ends[i])

    def _ending_block(self) -> int:
        """The block whose last token the current position is (-1 inside a block)."""
        block = self._block
        while self._block_end(block) < self._units:
            block += 1
        return block if self._block_end(block) == self._units else -1

    @property
    def block_index(self) -> int:
        return self._block

    @property
    def task_id(self) -> int:
        return self._block_task[self._block % len(self.schedule)]

    @property
    def task_name(self) -> str:
        return self.task_names[self.task_id]

    def _info(self, switch: bool) -> dict[str, Any]:
        tid = self.task_id
        return {"task_id": tid, "task_name": self.task_names[tid], "task_switch": switch,
                "visit": self._visits[tid], "block_index": self._block}

    def _observe(self, obs: dict[str, Any]) -> dict[str, Any]:
        if self.expose_task_id:
            return {**obs, "task_id": self.task_id}
        return obs

    # ---- gymnasium API -----------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start the next episode; a new block begins here if the current one has run its course.

        ``seed`` restarts the stream from the beginning of its schedule with that seed.
        """
        super().reset(seed=seed)
        if seed is not None:
            self._restart(seed)
        switch = False
        ended = -1
        if not self._started:
            self._started, switch = True, True
        else:
            if self.duration_unit == "steps":  # the autoreset token
                self._units += 1
                ended = self._ending_block()
            if self._units >= self._block_end(self._block):
                self._block += 1
                switch = True
        tid = self.task_id
        if switch:
            self._visits[tid] += 1
        env = self._envs[tid]
        task_seed, self._pending_seeds[tid] = self._pending_seeds[tid], None
        obs, _ = env.reset(seed=task_seed)
        self._episode_return = 0.0
        self._episode_length = 0
        self._needs_reset = False
        info = self._info(switch)
        if self.duration_unit == "steps":
            info["block_end"] = ended
        return self._observe(obs), info

    def step(self, action: Any):
        if self._needs_reset:
            raise RuntimeError(f"stream {self.name!r}: call reset() before step() (the episode has ended)")
        obs, reward, terminated, truncated, inner = self._envs[self.task_id].step(action)
        reward = float(reward)
        self._episode_return += reward
        self._episode_length += 1
        info = self._info(False)
        block_truncated = False
        if self.duration_unit == "steps":
            self._units += 1
            info["block_end"] = self._ending_block()
            if self._units >= self._block_end(self._block) and not terminated:
                block_truncated = not truncated
                truncated = True
        if terminated or truncated:
            self._needs_reset = True
            if self.duration_unit == "episodes":
                self._units += 1
            info["episode_return"] = self._episode_return
            info["episode_length"] = self._episode_length
            info["episode_success"] = float(inner.get("success", float(self._episode_return > 0)))
            info["block_truncated"] = block_truncated
        return self._observe(obs), reward, bool(terminated), bool(truncated), info

    def close(self) -> None:
        for env in self._envs:
            if env is not None:
                env.close()
        super().close()

    # ---- checkpointing -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The full position: schedule index, units into it, visits, episode so far, every RNG.

        The task envs (their current episode and RNG, and the shift wrappers' RNG) are stored as plain
        data (:func:`~envs.plain_state.env_state_dict`; None for a task this stream never visits), so a
        restored stream continues identically mid-episode.
        """
        return {
            "version": STATE_VERSION,
            "name": self.name,
            "task_names": list(self.task_names),
            "schedule": [list(b) for b in self.schedule],
            "unit": self.duration_unit,
            "block": self._block,
            "units": self._units,
            "visits": list(self._visits),
            "started": self._started,
            "pending_seeds": list(self._pending_seeds),
            "episode_return": self._episode_return,
            "episode_length": self._episode_length,
            "needs_reset": self._needs_reset,
            "seed": self._seed,
            "np_random": self.np_random.bit_generator.state,  # plain: str and int values
            "envs": [None if env is None else env_state_dict(env) for env in self._envs],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position saved by :meth:`state_dict` (the same stream config is required)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"stream state version {state.get('version')} is not {STATE_VERSION}: re-create the checkpoint")
        if list(state["task_names"]) != self.task_names or [tuple(b) for b in state["schedule"]] != self.schedule \
                or state["unit"] != self.duration_unit:
            raise ValueError(
                f"stream state was saved from a different stream (tasks {state['task_names']}): "
                f"load it into a stream built from the same config as {self.name!r}"
            )
        self._block = int(state["block"])
        self._units = int(state["units"])
        self._visits = [int(v) for v in state["visits"]]
        self._started = bool(state["started"])
        self._pending_seeds = [None if s is None else int(s) for s in state["pending_seeds"]]
        self._episode_return = float(state["episode_return"])
        self._episode_length = int(state["episode_length"])
        self._needs_reset = bool(state["needs_reset"])
        self._seed = int(state["seed"])
        self.np_random.bit_generator.state = state["np_random"]
        for env, env_state in zip(self._envs, state["envs"], strict=True):
            if env is not None:
                load_env_state_dict(env, env_state)
