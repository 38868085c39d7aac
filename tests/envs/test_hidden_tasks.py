"""Hidden-task envs (dark room, Bernoulli bandit, hidden-rule doors) and their streams.

The task variable (goal cell, best arm, right door) is fixed by the config and absent from the
observation: an oracle that knows it succeeds every time, a policy that sees only observations is at
chance, and a policy that remembers past episodes' rewards beats chance on the streams.
"""
from __future__ import annotations

import io
import warnings
from collections import deque
from functools import partial
from itertools import pairwise

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from helpers.rollouts import play
from helpers.structures import same as same_structure
from omegaconf import OmegaConf

from lifelong.agents.encoders import MiniGridEncoder, TokenEncoder, build_encoder
from lifelong.envs.bandit import BernoulliBanditEnv
from lifelong.envs.darkroom import DarkRoomEnv, interior_cells
from lifelong.envs.hidden_door import HiddenDoorEnv, door_cells
from lifelong.envs.make import (
    load_stream_config,
    make_stream,
    make_task_env,
    make_vector_env,
    validate_stream_config,
)
from lifelong.envs.stream_config import TaskSpec
from lifelong.envs.tasks import build_task_env

STREAMS = ("darkroom", "darkroom-flip", "bandit", "hidden-door")
LEFT, RIGHT, FORWARD, TOGGLE = 0, 1, 2, 5
DIR_VEC = ((1, 0), (0, 1), (-1, 0), (0, -1))  # MiniGrid: 0 east, 1 south, 2 west, 3 north
same = partial(same_structure, exact_types=True)


# ---- helpers: a planner over MiniGrid (cell, direction) states, and episode runners ----------------
def moves(state, free):
    (x, y), d = state
    yield LEFT, ((x, y), (d - 1) % 4)
    yield RIGHT, ((x, y), (d + 1) % 4)
    nxt = (x + DIR_VEC[d][0], y + DIR_VEC[d][1])
    if free(nxt):
        yield FORWARD, (nxt, d)


def distances(start, free):
    """Fewest left/right/forward actions from ``start`` to every reachable (cell, direction) state, with
    the action sequences."""
    plans = {start: []}
    todo = deque([start])
    while todo:
        state = todo.popleft()
        for action, nxt in moves(state, free):
            if nxt not in plans:
                plans[nxt] = plans[state] + [action]
                todo.append(nxt)
    return plans


def plan_to_cell(start, cell, free):
    plans = distances(start, free)
    return min((p for (c, _), p in plans.items() if c == cell), key=len)


def env_state(env):
    inner = env.unwrapped
    return (tuple(int(c) for c in inner.agent_pos), int(inner.agent_dir))


def room_free(size):
    return lambda c: 1 <= c[0] <= size - 2 and 1 <= c[1] <= size - 2


def darkroom_oracle(env):
    inner = env.unwrapped
    return plan_to_cell(env_state(env), inner.hidden_goal, room_free(inner.width))


def door_plan(env, side):
    """Walk to the doorway's inner neighbour facing the door, open it, step in."""
    inner = env.unwrapped
    door = door_cells(inner.width)[side]
    facing = {"west": 2, "east": 0, "north": 3, "south": 1}[side]
    inside = (door[0] - DIR_VEC[facing][0], door[1] - DIR_VEC[facing][1])
    plans = distances(env_state(env), room_free(inner.width))
    return plans[(inside, facing)] + [TOGGLE, FORWARD]


def run_episode(env, policy, seed=None):
    """``policy(env) -> list of actions`` (replanned when exhausted); returns (return, success, steps)."""
    env.reset(seed=seed)
    total, steps, queue = 0.0, 0, []
    while True:
        if not queue:
            queue = list(policy(env))
        _, reward, terminated, truncated, info = env.step(queue.pop(0))
        total, steps = total + float(reward), steps + 1
        if terminated or truncated:
            return total, info.get("success", float(total > 0)), steps  # raw MiniGrid: success = return > 0


def task(stream, name):
    return validate_stream_config(load_stream_config(stream)).tasks[name]


def through_weights_only(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# ---- gymnasium's checker -------------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: DarkRoomEnv(goal=(7, 1)),
    lambda: DarkRoomEnv(size=7, goal_seed=3, random_start=True, max_steps=20),
    lambda: HiddenDoorEnv(correct="west"),
    lambda: HiddenDoorEnv(correct="south", doors=("west", "east", "north", "south"), size=9, color="red"),
    lambda: BernoulliBanditEnv((0.2, 0.8, 0.2)),
    lambda: BernoulliBanditEnv((0.1, 0.9), pulls=10),
], ids=["darkroom", "darkroom-random-start", "doors", "doors-4", "bandit", "bandit-10-pulls"])
def test_gymnasiums_env_checker_passes_on_every_hidden_task_env(make):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(make(), skip_render_check=True)


@pytest.mark.parametrize("stream", STREAMS)
def test_gymnasiums_env_checker_passes_on_the_streams_and_their_task_envs(stream):
    cfg = load_stream_config(stream)
    envs = [make_stream(cfg, seed=0)] + [make_task_env(cfg, name, seed=1) for name in cfg.tasks]
    for env in envs:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            check_env(env, skip_render_check=True)


# ---- dark room --------------------------------------------------------------------------------------
def stream_goals(stream):
    """{task: goal cell} of a dark-room stream."""
    return {name: tuple(spec["darkroom"]["goal"]) for name, spec in load_stream_config(stream).tasks.items()}


DARK_GOALS = stream_goals("darkroom")


@pytest.mark.parametrize("random_start", [False, True])
def test_darkroom_oracle_reaches_every_goal_every_episode(random_start):
    for name in DARK_GOALS:
        spec = task("darkroom", name).darkroom
        kwargs = {**spec.env_kwargs(), "random_start": random_start}
        if random_start:
            kwargs["max_steps"] = 20  # from a corner facing away, the far corner is 14 steps away
        env = DarkRoomEnv(**kwargs)
        results = [run_episode(env, darkroom_oracle, seed=s) for s in range(25)]
        assert all(success == 1.0 and ret > 0 for ret, success, _ in results), name
        if not random_start:  # 7 or 8 steps from the centre to a corner: return 1 - 0.9 * 7/12 or 8/12
            assert {steps for _, _, steps in results} <= {7, 8}
            assert results[0][0] == pytest.approx(1 - 0.9 * results[0][2] / 12)


def test_darkroom_no_path_through_two_goals_fits_in_an_episode_so_memoryless_success_is_at_most_a_quarter():
    """Observations are the same for every goal until the agent stands on its goal, so a policy without
    memory of past episodes walks the same (distribution of) paths under every goal; if no path of
    max_steps visits two goal cells, its success summed over the goals is <= 1, averaged <= 1/4."""
    spec = task("darkroom", "goal-ne").darkroom
    env = DarkRoomEnv(**spec.env_kwargs())
    env.reset(seed=0)
    free, start, max_steps = room_free(env.width), env_state(env), env.max_steps
    from_start = distances(start, free)
    shortest = min(
        len(from_start[(gi, d)]) + len(plan_to_cell((gi, d), gj, free))
        for gi in DARK_GOALS.values() for gj in DARK_GOALS.values() if gi != gj for d in range(4)
    )
    assert shortest == 14 > max_steps == 12


def test_darkroom_memoryless_policies_are_at_chance():
    envs = {name: DarkRoomEnv(**task("darkroom", name).darkroom.env_kwargs()) for name in DARK_GOALS}
    # a fixed path: the first goal's oracle path (then walking into a wall), replayed under every goal
    first = next(iter(envs.values()))
    first.reset(seed=0)
    path = darkroom_oracle(first) + [FORWARD] * 12
    successes = [run_episode(env, lambda e: path, seed=0)[1] for env in envs.values()]
    assert successes == [1.0, 0.0, 0.0, 0.0]
    # random walks (turns and moves only, the best random policy) for 150 episodes per goal
    rng = np.random.default_rng(0)
    rates = [np.mean([run_episode(env, lambda e: [int(rng.integers(3))], seed=s)[1] for s in range(150)])
             for env in envs.values()]
    assert float(np.mean(rates)) < 0.1, rates


def test_darkroom_flip_goals_are_two_steps_from_the_start_and_no_episode_reaches_both():
    """darkroom-flip: the oracle reaches either goal in 2 steps (turn, forward); the shortest walk
    through both goal cells takes 6 steps, past max_steps 5, so memoryless success is at most 1/2."""
    goals = stream_goals("darkroom-flip")
    envs = {name: DarkRoomEnv(**task("darkroom-flip", name).darkroom.env_kwargs()) for name in goals}
    for env in envs.values():
        assert env.action_space.n == 3
        results = [run_episode(env, darkroom_oracle, seed=s) for s in range(5)]
        assert {(success, steps) for _, success, steps in results} == {(1.0, 2)}
    env = next(iter(envs.values()))
    env.reset(seed=0)
    free, start = room_free(env.width), env_state(env)
    from_start = distances(start, free)
    shortest = min(len(from_start[(gi, d)]) + len(plan_to_cell((gi, d), gj, free))
                   for gi in goals.values() for gj in goals.values() if gi != gj for d in range(4))
    assert shortest == 6 > env.max_steps == 5
    rng = np.random.default_rng(0)  # a random walk of the three actions, the same draws under each goal
    rates = [np.mean([run_episode(e, lambda _: [int(rng.integers(3))], seed=s)[1] for s in range(200)])
             for e in envs.values()]
    assert float(np.mean(rates)) < 0.5, rates


def test_darkroom_observations_do_not_show_the_goal():
    a, b = DarkRoomEnv(goal=(7, 1)), DarkRoomEnv(goal=(1, 7))
    rng = np.random.default_rng(0)
    for seed in range(5):
        oa, ob = a.reset(seed=seed)[0], b.reset(seed=seed)[0]
        assert same(oa, ob)
        assert np.array_equal(a.grid.encode(), b.grid.encode())
        assert all(cell is None or cell.type == "wall" for cell in a.grid.grid), "the grid holds walls only"
        assert np.array_equal(a.get_full_render(highlight=False, tile_size=8), b.get_full_render(False, 8))
        while True:  # the same actions give the same observations until a goal is reached
            action = int(rng.integers(7))
            ra, rb = a.step(action), b.step(action)
            if ra[2] or rb[2] or ra[3]:
                break
            assert same(ra[0], rb[0]) and ra[1] == rb[1] == 0


def test_darkroom_with_three_actions_offers_only_the_turns_and_forward_and_walks_as_minigrid_does():
    three, seven = DarkRoomEnv(size=5, goal=(1, 1), actions=3), DarkRoomEnv(size=5, goal=(1, 1))
    assert three.action_space == gym.spaces.Discrete(3) and seven.action_space == gym.spaces.Discrete(7)
    rng = np.random.default_rng(0)
    for seed in range(20):
        assert same(three.reset(seed=seed)[0], seven.reset(seed=seed)[0])
        for _ in range(6):
            action = int(three.action_space.sample() if seed % 2 else rng.integers(3))
            ra, rb = three.step(action), seven.step(action)
            assert same(ra, rb)
            if ra[2] or ra[3]:
                break


def test_darkroom_random_starts_are_the_same_draws_for_every_goal():
    a = DarkRoomEnv(size=7, goal=(1, 1), random_start=True, max_steps=30)
    b = DarkRoomEnv(size=7, goal=(5, 5), random_start=True, max_steps=30)
    starts = set()
    for seed in range(60):
        a.reset(seed=seed)
        b.reset(seed=seed)
        sa, sb = env_state(a), env_state(b)
        assert sa[0] != a.hidden_goal and sb[0] != b.hidden_goal
        # they differ only when the first draw lands on one of the goals (that env redraws)
        assert sa == sb or sa[0] == b.hidden_goal or sb[0] == a.hidden_goal
        starts.add(sa)
    assert len({c for c, _ in starts}) > 15 and {d for _, d in starts} == {0, 1, 2, 3}


def test_darkroom_goal_from_a_seed_is_fixed_by_the_seed_and_never_the_start():
    goals = {DarkRoomEnv(goal_seed=s).hidden_goal for s in range(40)}
    assert len(goals) > 10 and (4, 4) not in goals and goals <= set(interior_cells(9))
    assert DarkRoomEnv(goal_seed=5).hidden_goal == DarkRoomEnv(goal_seed=5).hidden_goal
    spec = TaskSpec.parse("g", {"darkroom": {"goal_seed": 5}})
    assert spec.darkroom.resolved_goal() == DarkRoomEnv(goal_seed=5).hidden_goal


# ---- bandit ----------------------------------------------------------------------------------------------
BANDIT_TASKS = list(load_stream_config("bandit").tasks)


def bandit_env(name):
    spec = task("bandit", name).bandit
    return BernoulliBanditEnv(spec.arm_probs(), spec.pulls)


def pull(env, policy, episodes, seed):
    env.reset(seed=seed)
    rewards, successes = [], []
    for _ in range(episodes):
        for _ in range(env.pulls):
            _, reward, terminated, _, info = env.step(policy())
            rewards.append(reward)
        assert terminated
        successes.append(info["success"])
        env.reset()
    return float(np.mean(rewards)), float(np.mean(successes))


def test_bandit_oracle_pulls_the_best_arm_and_earns_p_best():
    for name in BANDIT_TASKS:
        env = bandit_env(name)
        reward, success = pull(env, lambda env=env: env.best_arm, 2000, seed=0)
        assert success == 1.0 and abs(reward - 0.8) < 0.04, (name, reward)


def test_bandit_memoryless_policies_are_at_chance():
    rng = np.random.default_rng(0)
    random = [pull(bandit_env(name), lambda: int(rng.integers(5)), 2000, seed=1) for name in BANDIT_TASKS]
    assert abs(np.mean([s for _, s in random]) - 0.2) < 0.02  # 10,000 pulls: stderr 0.004
    assert abs(np.mean([r for r, _ in random]) - (0.8 + 4 * 0.2) / 5) < 0.02
    for arm in range(5):  # a fixed arm is right in exactly one of the five tasks
        fixed = [pull(bandit_env(name), lambda arm=arm: arm, 10, seed=2)[1] for name in BANDIT_TASKS]
        assert np.mean(fixed) == pytest.approx(0.2)


def test_bandit_observations_do_not_depend_on_the_arms():
    a, b = bandit_env("best0"), BernoulliBanditEnv((0.2, 0.2, 0.2, 0.2, 0.8), pulls=1)
    assert a.observation_space == b.observation_space and a.action_space == b.action_space
    c, d = BernoulliBanditEnv((0.9, 0.1, 0.5), pulls=4), BernoulliBanditEnv((0.1, 0.5, 0.9), pulls=4)
    for x, y in ((a, b), (c, d)):
        rng = np.random.default_rng(0)
        assert same(x.reset(seed=3), y.reset(seed=3))
        for _ in range(50):
            action = int(rng.integers(x.action_space.n))
            rx, ry = x.step(action), y.step(action)
            assert same(rx[0], ry[0]) and rx[2:4] == ry[2:4]
            if rx[2]:
                assert same(x.reset(), y.reset())


def test_bandit_episodes_of_several_pulls_count_the_best_arm_pulls():
    env = BernoulliBanditEnv((0.1, 0.9, 0.3), pulls=4)
    obs, _ = env.reset(seed=0)
    tokens, out = [obs["token"]], None
    for arm in (1, 0, 1, 2):
        out = env.step(arm)
        tokens.append(out[0]["token"])
    assert tokens == [0, 1, 2, 3, 0] and out[2] and out[4]["success"] == 0.5
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(0)


# ---- hidden doors ---------------------------------------------------------------------------------------
def test_hidden_door_oracle_takes_the_right_door_and_the_wrong_door_ends_with_nothing():
    for name in ("west", "east"):
        env = build_task_env(task("hidden-door", name), None)
        other = "east" if name == "west" else "west"
        right = [run_episode(env, lambda e, side=name: door_plan(e, side), seed=s) for s in range(20)]
        assert all(success == 1.0 and ret == pytest.approx(1 - 0.9 * 5 / 28) for ret, success, _ in right)
        wrong = run_episode(env, lambda e, side=other: door_plan(e, side), seed=0)
        assert wrong == (0.0, 0.0, 5), "entering the wrong door ends the episode with 0"


def test_hidden_door_with_four_doors_only_the_correct_one_pays():
    doors = ("west", "east", "north", "south")
    for correct in doors:
        env = HiddenDoorEnv(correct=correct, doors=doors, size=9)
        for side in doors:
            ret, success, _ = run_episode(env, lambda e, side=side: door_plan(e, side), seed=0)
            assert (success == 1.0) == (side == correct) and (ret > 0) == (side == correct)


def test_hidden_door_memoryless_policies_are_at_chance():
    envs = {name: build_task_env(task("hidden-door", name), None) for name in ("west", "east")}
    for side in ("west", "east"):  # a fixed choice is right under one rule of two
        rates = [run_episode(env, lambda e, side=side: door_plan(e, side), seed=0)[1] for env in envs.values()]
        assert np.mean(rates) == 0.5
    rng = np.random.default_rng(0)
    rates = [np.mean([run_episode(env, lambda e: [int(rng.integers(7))], seed=s)[1] for s in range(100)])
             for env in envs.values()]
    assert float(np.mean(rates)) <= 0.5 and abs(rates[0] - rates[1]) < 0.1, rates


def test_hidden_door_observations_are_the_same_under_every_rule_until_a_door_is_entered():
    a, b = HiddenDoorEnv(correct="west"), HiddenDoorEnv(correct="east")
    rng = np.random.default_rng(1)
    entered = 0
    for seed in range(30):
        assert same(a.reset(seed=seed)[0], b.reset(seed=seed)[0])
        assert np.array_equal(a.get_full_render(False, 8), b.get_full_render(False, 8))
        # odd seeds: random actions; even seeds: a few random actions, then straight to a random door
        actions = [int(rng.choice([LEFT, RIGHT, FORWARD, FORWARD, TOGGLE])) for _ in range(a.max_steps)]
        if seed % 2 == 0:
            actions = actions[:int(rng.integers(4))]
        while True:
            if not actions:
                actions = door_plan(a, ["west", "east"][int(rng.integers(2))])
            action = actions.pop(0)
            ra, rb = a.step(action), b.step(action)
            assert ra[2:4] == rb[2:4], "the episode ends at the same step under every rule"
            if ra[2]:  # a door entered is right under exactly one rule
                entered += 1
                assert (ra[1] > 0) != (rb[1] > 0)
                break
            if ra[3]:
                assert ra[1] == rb[1] == 0
                break
            assert same(ra[0], rb[0])
    assert entered >= 15


# ---- memory across episodes beats chance on the streams --------------------------------------------------
def remembering_policy(stream_name):
    """Acts on observations and on what it remembers of past episodes' rewards, never on the task."""
    if stream_name == "bandit":
        memory = {"arm": 0}

        def act(env, last):  # win-stay, lose-shift across one-pull episodes
            if last is not None and last[0] == 0.0:
                memory["arm"] = (memory["arm"] + 1) % 5
            return [memory["arm"]]
    else:
        targets = list(stream_goals(stream_name).values()) if stream_name.startswith("darkroom") else ["west", "east"]
        memory = {"i": 0}

        def act(env, last):  # go to the remembered target; after a failed episode, try the next one
            if last is not None and last[1] == 0.0:
                memory["i"] = (memory["i"] + 1) % len(targets)
            target = targets[memory["i"]]
            if stream_name.startswith("darkroom"):
                return plan_to_cell(env_state(env), target, room_free(env.unwrapped.width)) + [FORWARD] * 12
            return door_plan(env, target) + [LEFT] * 30
    return act


@pytest.mark.parametrize("stream_name, steps_per_task, chance, least", [
    ("darkroom", 240, 0.25, 0.8), ("darkroom-flip", 60, 0.5, 0.9), ("bandit", 200, 0.2, 0.4),
    ("hidden-door", 200, 0.5, 0.9)])
def test_a_policy_that_remembers_past_episodes_beats_chance_on_the_stream(stream_name, steps_per_task, chance, least):
    cfg = load_stream_config(stream_name)
    cfg.steps_per_task = steps_per_task
    stream = make_stream(cfg, seed=0)
    act = remembering_policy(stream_name)
    _, info = stream.reset(seed=0)
    last, successes = None, []
    while info["block_index"] < len(stream.schedule):
        env = stream._envs[info["task_id"]]
        queue = act(env, last)
        while True:
            _, reward, terminated, truncated, info = stream.step(queue.pop(0))
            if terminated or truncated:
                break
        last = (reward, info["episode_success"])
        successes.append(info["episode_success"])
        _, info = stream.reset()
    assert float(np.mean(successes)) > least > chance


# ---- checkpoints -------------------------------------------------------------------------------------------
RANDOM_START_DARKROOM = {"name": "dr", "steps_per_task": 50, "tasks": {
    "a": {"darkroom": {"size": 7, "goal_seed": 1, "random_start": True, "max_steps": 15}},
    "b": {"darkroom": {"size": 7, "goal": [5, 1], "random_start": True, "max_steps": 15}}},
    "schedule": {"order": ["a", "b"], "cycles": 2}}


@pytest.mark.parametrize("stream, name", [(s, t) for s in STREAMS for t in load_stream_config(s).tasks]
                         + [("random-start", "a")])
@pytest.mark.parametrize("cut", [5, 37])
def test_a_task_env_restored_from_plain_data_continues_identically(stream, name, cut):
    cfg = RANDOM_START_DARKROOM if stream == "random-start" else load_stream_config(stream)
    original = make_task_env(cfg, name, seed=3)
    original.reset()
    play(original, cut, np.random.default_rng(cut))
    restored = make_task_env(cfg, name, seed=99)
    restored.load_state_dict(through_weights_only(original.state_dict()))
    a, b = play(original, 200, np.random.default_rng(5)), play(restored, 200, np.random.default_rng(5))
    assert same(a, b)


@pytest.mark.parametrize("stream", [*STREAMS, "random-start"])
def test_a_hidden_task_stream_restored_from_its_state_continues_identically(stream):
    cfg = RANDOM_START_DARKROOM if stream == "random-start" else OmegaConf.merge(
        load_stream_config(stream), {"steps_per_task": 40})
    original = make_stream(cfg, seed=0)
    original.reset(seed=0)
    play(original, 130, np.random.default_rng(0))
    restored = make_stream(cfg, seed=7)
    restored.load_state_dict(through_weights_only(original.state_dict()))
    a, b = play(original, 150, np.random.default_rng(1)), play(restored, 150, np.random.default_rng(1))
    assert same(a, b)
    assert len({r[-1]["task_name"] for r in a if len(r) == 5}) > 1, "the replay crosses a task switch"


# ---- stream configs -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stream", STREAMS)
def test_the_streams_build_share_their_spaces_and_are_encodable(stream):
    cfg = load_stream_config(stream)
    assert cfg.name == stream and cfg.unit == "steps" and cfg.description
    spec = validate_stream_config(cfg)
    assert len(spec.task_names) >= 2 and len(spec.schedule.blocks) > len(spec.task_names), "tasks are revisited"
    env = make_stream(cfg, seed=0)
    for name in spec.task_names:
        probe = make_task_env(cfg, name, seed=0)
        assert probe.observation_space == env.observation_space and probe.action_space == env.action_space
    if stream == "bandit":
        assert isinstance(build_encoder(env.observation_space, 16), TokenEncoder)
    else:  # the MiniGrid layout, as every other MiniGrid stream
        assert env.observation_space == make_stream(load_stream_config("smoke"), 0).observation_space
        assert isinstance(build_encoder(env.observation_space, 16), MiniGridEncoder)
    encoder = build_encoder(env.observation_space, 16)
    vec = make_vector_env(cfg, num_envs=2, seed=0)
    obs, _ = vec.reset(seed=0)
    for _ in range(20):
        assert encoder(encoder.obs_to_tensor(obs, "cpu")).shape == (2, 16)
        obs, *_ = vec.step(vec.action_space.sample())
    vec.close()


def test_the_darkroom_stream_moves_the_goal_at_each_shift_and_revisits_goals():
    spec = validate_stream_config(load_stream_config("darkroom"))
    goals = [spec.tasks[t].darkroom.resolved_goal() for t, _ in spec.schedule.blocks]
    assert all(a != b for a, b in pairwise(goals)) and len(set(goals)) == 4 and len(goals) == 8


def test_the_bandit_and_door_streams_move_the_hidden_variable_at_each_shift():
    spec = validate_stream_config(load_stream_config("bandit"))
    best = [int(np.argmax(spec.tasks[t].bandit.arm_probs())) for t, _ in spec.schedule.blocks]
    assert all(a != b for a, b in pairwise(best)) and sorted(set(best)) == [0, 1, 2, 3, 4]
    spec = validate_stream_config(load_stream_config("hidden-door"))
    assert [spec.tasks[t].hidden_door.correct for t, _ in spec.schedule.blocks] == ["west", "east", "west", "east"]


@pytest.mark.parametrize("raw, message", [
    ({"darkroom": {"goal": [9, 1]}},
     "task 't' darkroom: goal [9, 1] must be an interior cell: 1 <= x, y <= 7 for size 9"),
    ({"darkroom": {}}, "give exactly one of `goal`"),
    ({"darkroom": {"goal": [1, 1], "goal_seed": 2}}, "give exactly one of `goal`"),
    ({"darkroom": {"goal": [4, 4]}}, "is the agent's start"),
    ({"darkroom": {"goal": "corner"}}, "goal must be a cell [x, y]"),
    ({"darkroom": {"goal": [1, 1], "size": 2.5}}, "size must be an integer"),
    ({"darkroom": {"goal": [1, 1], "agent_dir": 4}}, "agent_dir must be 0 (east)"),
    ({"darkroom": {"goal": [1, 1], "random_start": "yes"}}, "random_start must be true or false"),
    ({"darkroom": {"goal": [1, 1], "max_steps": 0}}, "max_steps must be >= 1"),
    ({"darkroom": {"goal": [1, 1], "colour": "red"}}, "darkroom has unknown key(s) ['colour']"),
    ({"darkroom": {"goal": [1, 1], "actions": 4}}, "actions must be 3 (turn left, turn right, forward) or 7"),
    ({"bandit": {"best_arm": 5}}, "best_arm must be in [0, arms=5)"),
    ({"bandit": {"arms": 3}}, "give `best_arm`"),
    ({"bandit": {"best_arm": 1, "p_best": 0.1, "p_other": 0.5}}, "p_best must be larger than p_other"),
    ({"bandit": {"probs": [0.5, 0.5]}}, "one arm must have the largest probability"),
    ({"bandit": {"probs": [0.5, 1.5]}}, "must be in [0, 1]"),
    ({"bandit": {"probs": [0.5, 0.2], "best_arm": 0}}, "give either `probs` or `best_arm`"),
    ({"bandit": {"best_arm": 0, "pulls": 0}}, "pulls must be >= 1"),
    ({"hidden_door": {}}, "hidden_door needs the key(s) ['correct']"),
    ({"hidden_door": {"correct": "up"}}, "correct 'up' must be one of the doors ['west', 'east']"),
    ({"hidden_door": {"correct": "west", "doors": ["west", "roof"]}}, "choose doors from west, east, north, south"),
    ({"hidden_door": {"correct": "west", "doors": ["west"]}}, "2 to 4 distinct sides"),
    ({"hidden_door": {"correct": "west", "size": 6}}, "size must be odd and >= 5"),
    ({"hidden_door": {"correct": "west", "color": "pink"}}, "choose color from"),
    ({"darkroom": {"goal": [1, 1]}, "bandit": {"best_arm": 1}}, "give exactly one of `env_id`"),
    ({"bandit": {"best_arm": 1}, "env_kwargs": {"a": 1}}, "`env_kwargs` goes with `env_id` only"),
])
def test_bad_hidden_task_settings_fail_in_one_line(raw, message):
    cfg = {"name": "bad", "steps_per_task": 10, "tasks": {"t": raw}, "schedule": {"order": ["t"]}}
    with pytest.raises(ValueError) as error:
        validate_stream_config(cfg)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert str(error.value).startswith("stream 'bad': task 't'")


def test_tasks_of_different_arm_counts_cannot_share_a_stream():
    cfg = {"name": "arms", "steps_per_task": 10, "schedule": {"order": ["a", "b"]},
           "tasks": {"a": {"bandit": {"best_arm": 0}}, "b": {"bandit": {"best_arm": 0, "arms": 3}}}}
    with pytest.raises(ValueError, match="must share one space"):
        make_stream(cfg, seed=0)
