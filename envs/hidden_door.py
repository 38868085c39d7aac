"""Hidden-rule doors: identical doors in the walls of one room, and only the task knows which is right.

A ``size x size`` room (odd size) with two to four closed, unlocked doors of one colour, each in the
middle of a wall (``west``, ``east``, ``north``, ``south``). The agent starts at the centre facing
north. Opening a door (``toggle``) and stepping into its doorway ends the episode (terminated): the
``correct`` door pays MiniGrid's ``1 - 0.9 * step_count / max_steps``, any other door pays 0. After
``max_steps`` steps the episode is truncated with 0. Success is a positive return.

The rule (which door is right) is the task and is not in the observation: the doors have the same
colour and state, and nothing lies behind a door (it sits in the outer wall), so the view, the
direction and every rendering are the same under every rule, step for step, until a door is entered.
The episode ends at the first door entered, so a policy that cannot remember past episodes picks the
right door in at most ``1 / len(doors)`` of the episodes averaged over the rules.

Observations and actions are MiniGrid's (``Dict(image, direction, mission)``, ``Discrete(7)``).
"""
from __future__ import annotations

from typing import Any

from minigrid.core.constants import COLOR_NAMES
from minigrid.core.grid import Grid
from minigrid.core.mission import MissionSpace
from minigrid.core.world_object import Door
from minigrid.minigrid_env import MiniGridEnv

SIDES = ("west", "east", "north", "south")
MISSION = "open the right door and go through it"
START_DIR = 3  # north


def default_max_steps(size: int) -> int:
    """``4 * size``: a door is at most ``size // 2 + 3`` steps from the start."""
    return 4 * size


def door_cells(size: int) -> dict[str, tuple[int, int]]:
    """The doorway of each side of a ``size`` room."""
    c = size // 2
    return {"west": (0, c), "east": (size - 1, c), "north": (c, 0), "south": (c, size - 1)}


def check_doors(size: int, doors: tuple[str, ...], correct: str, color: str) -> None:
    """Raise ``ValueError`` (one line) on a bad room: odd ``size >= 5``, 2-4 distinct sides, ``correct``
    one of them, a MiniGrid colour."""
    if size < 5 or size % 2 == 0:
        raise ValueError(f"size must be odd and >= 5 (doors in the middle of the walls), got {size}")
    unknown = [d for d in doors if d not in SIDES]
    if unknown:
        raise ValueError(f"doors {unknown} unknown: choose doors from {', '.join(SIDES)}")
    if len(set(doors)) != len(doors) or not 2 <= len(doors) <= 4:
        raise ValueError(f"doors must be 2 to 4 distinct sides, got {list(doors)}")
    if correct not in doors:
        raise ValueError(f"correct {correct!r} must be one of the doors {list(doors)}")
    if color not in COLOR_NAMES:
        raise ValueError(f"color {color!r} unknown: choose color from {', '.join(COLOR_NAMES)}")


class HiddenDoorEnv(MiniGridEnv):
    """Identical doors, one right per task (see the module docstring)."""

    def __init__(self, correct: str, doors: tuple[str, ...] = ("west", "east"), size: int = 7,
                 color: str = "yellow", max_steps: int | None = None, **kwargs: Any) -> None:
        size, doors, correct, color = int(size), tuple(str(d) for d in doors), str(correct), str(color)
        check_doors(size, doors, correct, color)
        max_steps = default_max_steps(size) if max_steps is None else int(max_steps)
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.doors = doors
        self.correct = correct
        self.door_color = color
        cells = door_cells(size)
        self.door_at = {cells[side]: side for side in doors}
        super().__init__(mission_space=MissionSpace(mission_func=self._gen_mission), grid_size=size,
                         see_through_walls=True, max_steps=max_steps, **kwargs)

    @staticmethod
    def _gen_mission() -> str:
        return MISSION

    def _gen_grid(self, width: int, height: int) -> None:
        self.grid = Grid(width, height)
        self.grid.wall_rect(0, 0, width, height)
        for (x, y) in self.door_at:  # same colour, same state: the doors look alike
            self.grid.set(x, y, Door(self.door_color, is_open=False, is_locked=False))
        self.agent_pos = (width // 2, height // 2)
        self.agent_dir = START_DIR
        self.mission = MISSION

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = super().step(action)
        side = self.door_at.get(tuple(int(c) for c in self.agent_pos))
        if side is not None:  # the agent stands in a doorway: the choice is made
            terminated = True
            reward = self._reward() if side == self.correct else 0.0
        return obs, reward, terminated, truncated, info
