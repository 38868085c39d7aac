"""MiniGrid's partial view, computed with fewer Python objects: the same observation, bit for bit.

MiniGrid builds each step's observation (``MiniGridEnv.gen_obs``) by copying the view's cells into a
new ``Grid`` object, rotating it one ``Grid`` copy per quarter turn, propagating visibility over it
and encoding it cell by cell. On DoorKey-5x5 that was most of the env's time per step (cProfile of
``benchmarks/throughput.py``: ``gen_obs`` 2.5 s of the env's 2.9 s). :func:`fast_gen_obs` reads each
cell of the view once (its encoding and whether it hides what is behind it), rotates with numpy, and
runs MiniGrid's visibility propagation (``Grid.process_vis``, the same scan in the same order) on a
list of lists. ``tests/envs/test_minigrid_view.py`` checks it against ``gen_obs`` over random
episodes of every MiniGrid env the streams use.

:func:`install_fast_view` puts it in place of ``gen_obs`` on one env instance, only where the env
class keeps MiniGrid's own ``gen_obs``, ``gen_obs_grid`` and ``Grid``; ``LIFELONG_FAST_MINIGRID_VIEW=0``
turns it off.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np
from minigrid.core.constants import OBJECT_TO_IDX
from minigrid.core.grid import Grid
from minigrid.core.world_object import Wall
from minigrid.minigrid_env import MiniGridEnv

EMPTY = (OBJECT_TO_IDX["empty"], 0, 0)  # what Grid.encode writes for a visible empty cell
WALL = Wall()  # Grid.slice puts a wall where the view leaves the grid
OUTSIDE = WALL.encode()
FLAG = "LIFELONG_FAST_MINIGRID_VIEW"


def view_cells(env: MiniGridEnv) -> tuple[np.ndarray, tuple[bool, ...]]:
    """The view's cells before rotation, as ``Grid.slice`` takes them: encodings ``[V, V, 3]`` (uint8,
    indexed [x, y] in the view) and whether each cell blocks the view (``not see_behind()``), flat in
    the same [x, y] order."""
    size = env.agent_view_size
    top_x, top_y, _, _ = env.get_view_exts(size)
    grid = env.grid
    width, height, cells = grid.width, grid.height, grid.grid
    codes: list[tuple[int, int, int]] = []
    opaque: list[bool] = []
    for x in range(top_x, top_x + size):
        if 0 <= x < width:
            for y in range(top_y, top_y + size):
                if not 0 <= y < height:  # outside the grid: a wall, as for x above
                    codes.append(OUTSIDE)
                    opaque.append(True)
                    continue
                cell = cells[y * width + x]
                if cell is None:
                    codes.append(EMPTY)
                    opaque.append(False)
                else:
                    codes.append(cell.encode())
                    opaque.append(not cell.see_behind())
        else:
            codes.extend([OUTSIDE] * size)
            opaque.extend([True] * size)
    return np.array(codes, dtype=np.uint8).reshape(size, size, 3), tuple(opaque)


def rotate_left(rows: list[list[bool]]) -> list[list[bool]]:
    """``Grid.rotate_left`` on a square [x][y] table: the cell at (i, j) moves to (j, size - 1 - i)."""
    size = len(rows)
    return [[rows[size - 1 - b][a] for b in range(size)] for a in range(size)]


def visible(opaque: list[list[bool]], agent: tuple[int, int]) -> np.ndarray:
    """``Grid.process_vis``'s mask ``[V, V]`` (bool, [x, y]) from the cells that block the view: the
    same row-by-row scan from the agent's row outwards, left-to-right then right-to-left."""
    size = len(opaque)
    mask = [[False] * size for _ in range(size)]
    mask[agent[0]][agent[1]] = True
    for j in reversed(range(size)):
        for i in range(size - 1):
            if not mask[i][j] or opaque[i][j]:
                continue
            mask[i + 1][j] = True
            if j > 0:
                mask[i + 1][j - 1] = True
                mask[i][j - 1] = True
        for i in reversed(range(1, size)):
            if not mask[i][j] or opaque[i][j]:
                continue
            mask[i - 1][j] = True
            if j > 0:
                mask[i - 1][j - 1] = True
                mask[i][j - 1] = True
    return np.array(mask, dtype=bool)


@functools.lru_cache(maxsize=1 << 16)
def hidden_cells(opaque: tuple[bool, ...], turns: int) -> np.ndarray:
    """The cells ``[V, V]`` (bool, [x, y] after ``turns`` left turns) the agent does not see, for the
    unrotated flat blocking pattern ``opaque``. A view shows few distinct patterns over a lifetime
    (walls, doors), so they are computed once each."""
    size = int(round(len(opaque) ** 0.5))
    rows = [list(opaque[i * size : (i + 1) * size]) for i in range(size)]
    for _ in range(turns):
        rows = rotate_left(rows)
    hidden = ~visible(rows, (size // 2, size - 1))
    hidden.flags.writeable = False  # shared by every call with this pattern
    return hidden


def fast_gen_obs(env: MiniGridEnv) -> dict[str, Any]:
    """What ``env.gen_obs()`` returns: ``{"image": [V, V, 3] uint8, "direction", "mission"}``."""
    if type(env.grid) is not Grid:  # a grid class of its own may slice, rotate or encode otherwise
        return MiniGridEnv.gen_obs(env)
    codes, opaque = view_cells(env)
    turns = env.agent_dir + 1  # gen_obs_grid rotates left agent_dir + 1 times
    image = np.rot90(codes, k=-turns, axes=(0, 1)).copy()
    size = env.agent_view_size
    agent = (size // 2, size - 1)
    if not env.see_through_walls:
        image[hidden_cells(opaque, turns % 4)] = 0  # Grid.encode leaves unseen cells at zero
    image[agent] = env.carrying.encode() if env.carrying else EMPTY  # the agent sees what it carries
    return {"image": image, "direction": env.agent_dir, "mission": env.mission}


def fast_view_applies(env: Any) -> bool:
    """Whether ``env`` (unwrapped) computes its observation exactly as MiniGrid's ``gen_obs`` does."""
    cls = type(env)
    return (isinstance(env, MiniGridEnv) and cls.gen_obs is MiniGridEnv.gen_obs
            and cls.gen_obs_grid is MiniGridEnv.gen_obs_grid and cls.get_view_exts is MiniGridEnv.get_view_exts
            and "gen_obs" not in vars(env))


def install_fast_view(env: Any) -> bool:
    """Replace ``gen_obs`` of the MiniGrid env under ``env``'s wrappers by :func:`fast_gen_obs` (an
    instance attribute, so the class and other instances keep MiniGrid's). Returns whether it did."""
    base = getattr(env, "unwrapped", env)
    if os.environ.get(FLAG, "1") == "0" or not fast_view_applies(base):
        return False
    base.gen_obs = functools.partial(fast_gen_obs, base)
    return True
