"""StreamEnv: the schedule, the info contract, seeding, checkpoints, and config validation."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from helpers.structures import same
from omegaconf import OmegaConf

from lifelong.config_files import config_dir

from lifelong.envs.make import (
    available_streams,
    describe_streams,
    load_stream_config,
    make_stream,
    make_task_env,
    make_vector_env,
    validate_stream_config,
)
from lifelong.envs.schedules import Schedule
from lifelong.envs.stream_config import RecallTask, RecallVocab

STEP_KEYS = {"task_id", "task_name", "task_switch", "visit", "block_index"}
EPISODE_KEYS = {"episode_return", "episode_length", "episode_success"}


def smoke(steps_per_task: int = 60, **overrides):
    cfg = load_stream_config("smoke")
    cfg.steps_per_task = steps_per_task
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def rollout(stream, steps: int, seed: int | None = 0, action_seed: int = 0):
    """Random actions; returns (records, observations) with one record per reset and per step."""
    rng = np.random.default_rng(action_seed)
    obs, info = stream.reset(seed=seed) if seed is not None else stream.reset()
    records, observations = [("reset", info)], [obs]
    for _ in range(steps):
        obs, reward, terminated, truncated, info = stream.step(int(rng.integers(7)))
        records.append(("step", reward, terminated, truncated, info))
        observations.append(obs)
        if terminated or truncated:
            obs, info = stream.reset()
            records.append(("reset", info))
            observations.append(obs)
    return records, observations



# ---- every configured stream -----------------------------------------------------------------
@pytest.mark.parametrize("name", available_streams())
def test_every_configured_stream_passes_gymnasiums_env_checker(name):
    stream = make_stream(load_stream_config(name), seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checker warning is a failure
        check_env(stream, skip_render_check=True)


@pytest.mark.parametrize("name", available_streams())
def test_every_configured_stream_exposes_the_documented_attributes(name):
    cfg = load_stream_config(name)
    assert cfg.name == name, "a stream file's `name` is its file name"
    stream = make_stream(cfg, seed=0)
    assert stream.task_names == list(dict.fromkeys(t for t, _ in stream.schedule))
    assert stream.duration_unit in ("steps", "episodes")
    if stream.duration_unit == "steps":
        assert stream.schedule_steps == sum(d for _, d in stream.schedule)
    else:
        assert stream.schedule_steps is None
    obs, info = stream.reset(seed=1)
    assert obs in stream.observation_space and STEP_KEYS <= set(info)


def test_the_required_streams_are_configured():
    assert {"smoke", "mg-cycle", "permuted-actions", "slippery", "recall"} <= set(available_streams())


def test_the_default_stream_is_a_b_a_and_the_four_task_cycle_stays_as_the_long_stream():
    config = OmegaConf.load(config_dir() / "config.yaml")
    assert "stream: mg-shift" in [str(d).replace("{'stream': 'mg-shift'}", "stream: mg-shift") for d in config.defaults]
    shift = make_stream(load_stream_config("mg-shift"), seed=0)
    a, b = shift.task_names
    assert [t for t, _ in shift.schedule] == [a, b, a], "learned, overwritten by a shift, revisited"
    stream = make_stream(load_stream_config("mg-cycle"), seed=0)
    assert stream.task_names == ["doorkey", "unlock", "distshift", "simplecrossing"]
    assert [t for t, _ in stream.schedule] == stream.task_names * 2
    assert len({d for _, d in stream.schedule}) == 1 and not stream.expose_task_id
    assert stream.observation_space.spaces.keys() == {"image", "direction"}


def test_describe_streams_lists_tasks_blocks_and_schedule_length():
    rows = {row["name"]: row for row in describe_streams()}
    assert set(rows) == set(available_streams())
    assert rows["smoke"] == {"name": "smoke", "description": "DoorKey-5x5 with an action permutation switched A/B/A",
                             "tasks": ["doorkey", "doorkey-permuted"], "blocks": 3, "schedule_length": 1500,
                             "unit": "steps"}
    assert rows["mg-cycle"]["blocks"] == 8
    assert all(row["unit"] == "steps" for row in rows.values()), "lifelong run takes streams counted in steps"
    assert all(row["description"] for row in rows.values()), "every stream says what it is"


# ---- schedule semantics ----------------------------------------------------------------------
@pytest.mark.parametrize("steps_per_task", [60, 300])
def test_block_k_covers_tokens_end_k_minus_1_to_end_k_and_its_last_token_truncates_the_episode(steps_per_task):
    """A token is a step or an autoreset (every reset after the first), as a NEXT_STEP vector env sees it."""
    stream = make_stream(smoke(steps_per_task), seed=0)
    records, _ = rollout(stream, 2400)
    tokens, switches, episode_blocks = 0, [], set()
    for record in records[1:]:
        tokens += 1
        info = record[-1]
        block = -(-tokens // steps_per_task) - 1  # the block holding token `tokens`
        last_token = tokens % steps_per_task == 0
        assert info["block_end"] == (block if last_token else -1), tokens
        if record[0] == "reset":
            # an episode reset at or after a block's last token belongs to the next block
            assert info["block_index"] == (block + 1 if last_token else block), tokens
            if info["task_switch"]:
                switches.append((tokens, info["task_name"], info["block_index"], info["visit"]))
            episode_blocks = {info["block_index"]}
            continue
        _, _, terminated, truncated, info = record
        assert info["block_index"] == block, "an episode never runs past its block's last token"
        episode_blocks.add(info["block_index"])
        assert len(episode_blocks) == 1, "no episode spans two blocks"
        if last_token:
            assert terminated or truncated, "the block's last token ends the running episode"
            assert info["block_truncated"] == (not terminated)
        elif truncated:
            assert not info["block_truncated"], "a time-limit truncation inside a block is the task's own"
    assert len(switches) >= 6
    # blocks 1..6 (block 0 starts at the first reset): the pass doorkey, permuted, doorkey repeats
    assert [s[1] for s in switches[:6]] == ["doorkey-permuted", "doorkey", "doorkey"] * 2, "the schedule repeats"
    assert [s[2] for s in switches[:6]] == list(range(1, 7))
    assert [s[3] for s in switches[:6]] == [1, 2, 3, 2, 4, 5], "visit counts each task's blocks"
    assert all(t in (k * steps_per_task, k * steps_per_task + 1) for k, (t, *_) in enumerate(switches, 1)), \
        "a block starts on its first token or, after a truncation, on the autoreset token that follows"


def test_every_lifetime_of_a_vector_env_ends_each_block_on_the_same_vector_step():
    vec = make_vector_env(smoke(37), num_envs=4, seed=3)
    vec.reset(seed=3)
    rng = np.random.default_rng(0)
    ends = []
    for t in range(1, 400):
        _, _, term, trunc, info = vec.step(rng.integers(7, size=4))
        ended = np.asarray(info["block_end"])
        assert len(set(ended.tolist())) == 1, f"vector step {t}: lifetimes disagree on the block end {ended}"
        if ended[0] >= 0:
            ends.append((t, int(ended[0])))
            assert (term | trunc | np.asarray(info["task_switch"])).all(), "every lifetime's episode ends with the block"
    assert ends == [(37 * (k + 1), k) for k in range(len(ends))] and len(ends) >= 10


def test_a_two_token_block_still_gets_its_episode_and_shorter_steps_blocks_are_refused():
    stream = make_stream(smoke(2), seed=0)
    records, _ = rollout(stream, 200)
    resets = [r[1] for r in records if r[0] == "reset"]
    assert len(resets) > 3
    assert all(info["task_switch"] for info in resets), "every episode starts the next block, none skipped"
    assert [info["block_index"] for info in resets] == list(range(len(resets)))
    with pytest.raises(ValueError, match=">= 2 steps"):
        make_stream(smoke(1), seed=0)


def test_episode_durations_count_whole_episodes():
    cfg = {"name": "ep", "unit": "episodes",
           "tasks": {"a": {"env_id": "MiniGrid-Empty-5x5-v0"}, "b": {"env_id": "MiniGrid-Empty-6x6-v0"}},
           "schedule": {"type": "cyclic", "order": ["a", "b"], "durations": [2, 3], "cycles": 2}}
    stream = make_stream(cfg, seed=0)
    records, _ = rollout(stream, 12 * 144)
    names = [r[1]["task_name"] for r in records if r[0] == "reset"][:10]
    assert names == ["a"] * 2 + ["b"] * 3 + ["a"] * 2 + ["b"] * 3


def test_step_infos_carry_the_task_and_episode_ends_carry_the_episode_summary():
    stream = make_stream(smoke(60), seed=0)
    records, _ = rollout(stream, 600)
    total, ended = 0.0, 0
    for record in records:
        info = record[-1] if record[0] == "step" else record[1]
        assert STEP_KEYS <= set(info)
        assert info["task_name"] == stream.task_names[info["task_id"]]
        if record[0] == "reset":
            total, length = 0.0, 0
            continue
        _, reward, terminated, truncated, info = record
        total += reward
        length += 1
        assert not info["task_switch"], "switches are reported on resets"
        if terminated or truncated:
            ended += 1
            assert EPISODE_KEYS <= set(info)
            assert info["episode_return"] == pytest.approx(total) and info["episode_length"] == length
            assert info["episode_success"] == float(total > 0)
        else:
            assert not EPISODE_KEYS & set(info)
    assert ended >= 2


def test_expose_task_id_adds_the_task_id_to_the_observation():
    stream = make_stream(smoke(60, expose_task_id=True), seed=0)
    assert stream.observation_space["task_id"].n == 2
    records, observations = rollout(stream, 400)
    ids = {obs["task_id"] for obs in observations}
    assert ids == {0, 1}
    hidden = make_stream(smoke(60), seed=0)
    assert "task_id" not in hidden.reset(seed=0)[0]


def test_the_permuted_block_permutes_the_actions_of_the_same_task():
    stream = make_stream(smoke(60), seed=0)
    stream.reset(seed=0)
    assert not hasattr(stream._envs[0], "permutation")
    assert sorted(stream._envs[1].permutation.tolist()) == list(range(7))


# ---- seeding and checkpoints -------------------------------------------------------------------
def test_same_seed_same_trajectory_and_another_seed_another():
    a = rollout(make_stream(smoke(60), seed=0), 500, seed=3)
    b = rollout(make_stream(smoke(60), seed=0), 500, seed=3)
    c = rollout(make_stream(smoke(60), seed=0), 500, seed=4)
    assert same(a, b)
    assert not same(a[1], c[1])


def test_the_constructor_seed_is_used_by_the_first_unseeded_reset():
    a = rollout(make_stream(smoke(60), seed=5), 200, seed=None)
    b = rollout(make_stream(smoke(60), seed=0), 200, seed=5)
    assert same(a, b)


def test_reset_with_a_seed_restarts_the_stream():
    stream = make_stream(smoke(60), seed=0)
    first = rollout(stream, 300, seed=2)
    again = rollout(stream, 300, seed=2)
    assert same(first, again)


@pytest.mark.parametrize("name, cut", [("smoke", 137), ("slippery", 251), ("recall", 90)])
def test_a_stream_restored_from_its_state_dict_continues_identically(name, cut):
    cfg = load_stream_config(name)
    key = "episodes_per_task" if cfg.unit == "episodes" else "steps_per_task"
    cfg[key] = 3 if cfg.unit == "episodes" else 100
    original = make_stream(cfg, seed=0)
    rollout(original, cut, seed=9)  # stops mid-episode
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    restored = make_stream(cfg, seed=123)
    restored.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    rng = np.random.default_rng(7)
    for _ in range(400):
        action = int(rng.integers(original.action_space.n))
        out_a, out_b = original.step(action), restored.step(action)
        assert same(out_a, out_b)
        if out_a[2] or out_a[3]:
            assert same(original.reset(), restored.reset())


def test_a_state_dict_from_another_stream_is_refused():
    sd = make_stream(smoke(60), seed=0).state_dict()
    with pytest.raises(ValueError, match="different stream"):
        make_stream(load_stream_config("mg-cycle"), seed=0).load_state_dict(sd)


# ---- vector env ---------------------------------------------------------------------------------
def test_vector_env_lifetimes_are_streams_seeded_seed_plus_i_and_pass_their_infos_through():
    cfg = smoke(40)
    vec = make_vector_env(cfg, num_envs=3, seed=10)
    singles = [make_stream(cfg, seed=10 + i) for i in range(3)]
    obs, info = vec.reset(seed=10)
    single_out = [s.reset(seed=10 + i) for i, s in enumerate(singles)]
    for i, (o, inf) in enumerate(single_out):
        np.testing.assert_array_equal(obs["image"][i], o["image"])
        assert info["task_switch"][i] and info["task_name"][i] == "doorkey"
    rng = np.random.default_rng(0)
    pending = [False] * 3
    ended = 0
    for _ in range(300):
        actions = rng.integers(7, size=3)
        obs, reward, term, trunc, info = vec.step(actions)
        for i, s in enumerate(singles):
            if pending[i]:  # NEXT_STEP autoreset: this step was the reset, its action ignored
                o, inf = s.reset()
                r, te, tr = 0.0, False, False
            else:
                o, r, te, tr, inf = s.step(int(actions[i]))
            pending[i] = te or tr
            np.testing.assert_array_equal(obs["image"][i], o["image"])
            assert reward[i] == r and term[i] == te and trunc[i] == tr
            for key, value in inf.items():
                assert info[f"_{key}"][i], f"env {i}'s {key} was dropped"
                assert info[key][i] == value
            if te or tr:
                ended += 1
    assert ended > 0


# ---- probes -------------------------------------------------------------------------------------
def test_task_env_is_one_task_of_the_stream_with_its_shifts_and_spaces():
    cfg = smoke(60, expose_task_id=True)
    stream = make_stream(cfg, seed=0)
    probe = make_task_env(cfg, "doorkey-permuted", seed=0)
    assert probe.observation_space == stream.observation_space and probe.action_space == stream.action_space
    obs, info = probe.reset(seed=0)
    assert obs["task_id"] == 1 and info["task_id"] == 1 and info["task_name"] == "doorkey-permuted"
    np.testing.assert_array_equal(probe._envs[1].permutation, stream._envs[1].permutation)
    records, _ = rollout(probe, 600, seed=0)
    assert {r[-1]["task_name"] for r in records if r[0] == "step"} == {"doorkey-permuted"}
    with pytest.raises(ValueError, match="choose from doorkey, doorkey-permuted"):
        make_task_env(cfg, "nope", seed=0)


# ---- validation -----------------------------------------------------------------------------------
def bad_config(**changes) -> dict:
    cfg = OmegaConf.to_container(smoke(60))
    for key, value in changes.items():
        node = cfg
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    return cfg


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"tasks.doorkey.env_id": "MiniGrid-DoorKey-5x5-v9"}, "did you mean MiniGrid-DoorKey-5x5-v0"),
        ({"schedule.order": []}, "schedule is empty"),
        ({"schedule.order": ["doorkey", "ghost"]}, "unknown task(s) ['ghost']"),
        ({"tasks": {}}, "non-empty `tasks`"),
        ({"tasks.doorkey.shifts": [{"type": "gravity"}]}, "choose type from"),
        ({"unit": "hours"}, "choose unit from steps, episodes"),
        ({"steps_per_task": None}, "steps_per_task"),
        ({"colour": "red"}, "unknown key(s) ['colour']"),
        ({"tasks.doorkey.recall": {"num_pairs": 2}}, "exactly one of `env_id`"),
    ],
)
def test_invalid_stream_configs_fail_in_one_line_before_any_env_is_built(changes, message):
    with pytest.raises(ValueError) as error:
        validate_stream_config(bad_config(**changes))
    assert message in str(error.value) and "\n" not in str(error.value)
    assert str(error.value).startswith("stream 'smoke'")


def test_a_stream_that_leaves_out_the_optional_keys_takes_the_schema_defaults():
    spec = validate_stream_config({"tasks": {"a": {"env_id": "MiniGrid-Empty-5x5-v0"}},
                                   "steps_per_task": 50, "schedule": {"order": ["a"]}})
    assert spec.name == "stream" and not spec.expose_task_id and spec.recall_vocab is None
    assert spec.schedule == Schedule(blocks=(("a", 50),), unit="steps")


def test_a_recall_vocab_left_out_fits_the_largest_recall_task():
    spec = validate_stream_config({"name": "r", "steps_per_task": 10, "schedule": {"order": ["p2", "p6"]},
                                   "tasks": {"p2": {"recall": {"num_pairs": 2}}, "p6": {"recall": {"num_pairs": 6}}}})
    assert spec.recall_vocab == RecallVocab(num_keys=6, num_values=8)
    assert spec.tasks["p2"].recall == RecallTask(num_pairs=2, gap=0, num_queries=None)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"schedule.repeat": 2}, "schedule has unknown key(s) ['repeat']"),
        ({"tasks.doorkey.colour": "red"}, "task 'doorkey' has unknown key(s) ['colour']"),
        ({"tasks.doorkey": {"recall": {"pairs": 2}}}, "task 'doorkey' recall has unknown key(s) ['pairs']"),
        ({"tasks.doorkey": {"recall": {"gap": 2}}}, "task 'doorkey' recall needs the key(s) ['num_pairs']"),
        ({"tasks.doorkey": {"recall": {"num_pairs": 2}}, "recall_vocab": {"keys": 4}},
         "recall_vocab has unknown key(s) ['keys']: allowed are ['num_keys', 'num_values']"),
        ({"recall_vocab": {"num_keys": 4}}, "no task is a recall task"),
    ],
)
def test_every_level_of_a_stream_config_names_its_valid_keys(changes, message):
    with pytest.raises(ValueError) as error:
        validate_stream_config(bad_config(**changes))
    assert message in str(error.value) and str(error.value).startswith("stream 'smoke'")


def test_tasks_with_different_spaces_cannot_share_a_stream():
    cfg = bad_config(**{"tasks.doorkey": {"recall": {"num_pairs": 2}}, "recall_vocab": {"num_keys": 4}})
    with pytest.raises(ValueError, match="must share one space"):
        make_vector_env(cfg, num_envs=2, seed=0)


def test_an_unknown_stream_name_lists_the_choices():
    with pytest.raises(ValueError, match="unknown stream 'nope': choose stream=<name> from .*smoke"):
        load_stream_config("nope")


def test_the_command_line_knob_sets_the_smoke_block_length():
    cfg = OmegaConf.merge(load_stream_config("smoke"), OmegaConf.from_dotlist(["steps_per_task=200"]))
    assert [d for _, d in make_stream(cfg, seed=0).schedule] == [200, 200, 200]


def test_vector_env_exposes_the_task_id_key_when_configured():
    vec = make_vector_env(smoke(40, expose_task_id=True), num_envs=2, seed=0)
    assert vec.single_observation_space["task_id"].n == 2
    obs, info = vec.reset(seed=0)
    np.testing.assert_array_equal(obs["task_id"], info["task_id"])
