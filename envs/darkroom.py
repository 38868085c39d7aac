"""Dark room: an empty MiniGrid room whose goal cell is invisible; only memory across episodes finds it.

The room is ``size x size`` cells with the walls (interior cells ``1 .. size - 2`` on each axis).
Nothing marks the goal: the grid holds walls only, so the 7x7 egocentric view, the direction and
every rendering are the same whatever the goal is. Stepping onto the goal cell ends the episode
(terminated) with MiniGrid's reward ``1 - 0.9 * step_count / max_steps``; any other step earns 0,
and the episode is truncated after ``max_steps`` steps. Success is a positive return, as for every
MiniGrid task.

The goal is the task: it is fixed for as long as the task runs (a block of a stream) and comes from
the config, either named (``goal: [x, y]``) or drawn once from ``goal_seed`` among the interior cells
other than the start. The agent starts at ``agent_start`` (default: the room's centre) facing
``agent_dir`` (0 east, 1 south, 2 west, 3 north), or, with ``random_start``, at a uniformly drawn
interior cell other than the goal, facing a random direction (the draw uses the episode's RNG;
two goals give the same start unless the draw hits one of them).

A short ``max_steps`` makes the success rate a clean measure of memory: when no path from the start
through one candidate goal to another fits in ``max_steps`` steps, a policy that cannot remember past
episodes succeeds in at most ``1 / G`` of the episodes averaged over ``G`` candidate goals (it cannot
tell them apart before it stands on one). The ``darkroom`` stream is built that way.

Observations and actions are MiniGrid's (``Dict(image, direction, mission)``, ``Discrete(7)``), so the
task shares its spaces with every other MiniGrid task of a stream once the mission is dropped. With
``actions=3`` the action space is MiniGrid's three navigation actions only (0 turn left, 1 turn right,
2 forward; the other four do nothing in an empty room), which makes a random walk reach a cell of a
small room several times as often and so gives PPO something to learn from early.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from minigrid.core.grid import Grid
from minigrid.core.mission import MissionSpace
from minigrid.minigrid_env import MiniGridEnv

MISSION = "find the hidden goal"
MIN_SIZE = 4  # at least two interior cells per axis
ACTION_COUNTS = (3, 7)  # MiniGrid's navigation actions (left, right, forward), or all seven
Cell = tuple[int, int]


def check_size(size: int) -> None:
    if size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE} (the room with its walls), got {size}")


def check_interior(cell: tuple[int, int], size: int, what: str) -> None:
    """Raise ``ValueError`` unless ``cell`` is an interior cell of a ``size`` room."""
    if not all(1 <= c <= size - 2 for c in cell):
        raise ValueError(f"{what} {list(cell)} must be an interior cell: 1 <= x, y <= {size - 2} for size {size}")


def default_start(size: int) -> tuple[int, int]:
    """The room's centre (rounded down for an even size)."""
    return ((size - 1) // 2, (size - 1) // 2)


def default_max_steps(size: int) -> int:
    """``size + 3``: from the centre every interior cell is at most ``size - 1`` steps away."""
    return size + 3


def interior_cells(size: int) -> list[tuple[int, int]]:
    """The interior cells, row by row."""
    return [(x, y) for y in range(1, size - 1) for x in range(1, size - 1)]


def resolve_goal(size: int, goal: tuple[int, int] | None, goal_seed: int | None,
                 start: tuple[int, int] | None) -> tuple[int, int]:
    """The goal cell: ``goal`` if named, else drawn from ``goal_seed`` among the interior cells other than
    ``start`` (None: exclude nothing). Raises ``ValueError`` (one line) on a bad combination."""
    check_size(size)
    if (goal is None) == (goal_seed is None):
        raise ValueError("give exactly one of `goal` (an interior cell [x, y]) or `goal_seed` (draws the cell)")
    if goal is not None:
        goal = (int(goal[0]), int(goal[1]))
        check_interior(goal, size, "goal")
    else:
        cells = [c for c in interior_cells(size) if c != start]
        goal = cells[int(np.random.default_rng(int(goal_seed)).integers(len(cells)))]
    if start is not None and goal == start:
        raise ValueError(f"goal {list(goal)} is the agent's start: move the goal or set agent_start")
    return goal


def check_room(size: int, goal: Cell | None, goal_seed: int | None, agent_start: Cell | None, agent_dir: int,
               random_start: bool, max_steps: int | None, actions: int = 7) -> tuple[Cell | None, Cell, int]:
    """Check a room's settings (``ValueError``, one line); return the start (None: random), the goal
    and ``max_steps`` resolved. Builds nothing: the stream-config schema calls it too."""
    size = int(size)
    check_size(size)
    if int(actions) not in ACTION_COUNTS:
        raise ValueError(f"actions must be 3 (turn left, turn right, forward) or 7 (all of MiniGrid's), got {actions}")
    start = None if random_start else tuple(int(c) for c in (agent_start or default_start(size)))
    if start is not None:
        check_interior(start, size, "agent_start")
    if not 0 <= int(agent_dir) <= 3:
        raise ValueError(f"agent_dir must be 0 (east), 1 (south), 2 (west) or 3 (north), got {agent_dir}")
    max_steps = default_max_steps(size) if max_steps is None else int(max_steps)
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    return start, resolve_goal(size, goal, goal_seed, start), max_steps


class DarkRoomEnv(MiniGridEnv):
    """An empty room with an invisible goal cell (see the module docstring)."""

    def __init__(self, size: int = 9, goal: tuple[int, int] | None = None, goal_seed: int | None = None,
                 agent_start: tuple[int, int] | None = None, agent_dir: int = 0, random_start: bool = False,
                 max_steps: int | None = None, actions: int = 7, **kwargs: Any) -> None:
        start, self.hidden_goal, max_steps = check_room(size, goal, goal_seed, agent_start, agent_dir,
                                                        random_start, max_steps, actions)
        self.agent_start_pos = start
        self.agent_start_dir = int(agent_dir)
        self.random_start = bool(random_start)
        super().__init__(mission_space=MissionSpace(mission_func=self._gen_mission), grid_size=int(size),
                         see_through_walls=True, max_steps=max_steps, **kwargs)
        self.action_space = spaces.Discrete(int(actions))  # MiniGrid's first `actions` actions

    @staticmethod
    def _gen_mission() -> str:
        return MISSION

    def _gen_grid(self, width: int, height: int) -> None:
        self.grid = Grid(width, height)
        self.grid.wall_rect(0, 0, width, height)  # walls only: the goal is not in the grid
        if self.random_start:
            cells = interior_cells(width)
            while True:  # the same draws for every goal until one lands on it
                cell = cells[self._rand_int(0, len(cells))]
                if cell != self.hidden_goal:
                    break
            self.agent_pos = cell
            self.agent_dir = self._rand_int(0, 4)
        else:
            self.agent_pos = self.agent_start_pos
            self.agent_dir = self.agent_start_dir
        self.mission = MISSION

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = super().step(action)
        if not terminated and tuple(int(c) for c in self.agent_pos) == self.hidden_goal:
            terminated, reward = True, self._reward()
        return obs, reward, terminated, truncated, info
