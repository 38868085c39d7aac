"""The associative-recall env: an optimal policy recalls everything, a random one is at chance."""
from __future__ import annotations

import numpy as np
import pytest

from lifelong.envs.make import load_stream_config, make_stream
from lifelong.envs.recall import FILLER, AssociativeRecallEnv


def memorising_policy():
    """The optimal policy from observations alone: store key -> value, answer queries from the store."""
    store: dict[int, int] = {}
    last_key: list[int | None] = [None]

    def act(env: AssociativeRecallEnv, token: int) -> int:
        kind = env.token_kind(token)
        if kind == "key":
            last_key[0] = token - 1
        elif kind == "value":
            store[last_key[0]] = token - 1 - env.num_keys
        elif kind == "query":
            return store[token - 1 - env.num_keys - env.num_values]
        return 0

    return act


def play(env: AssociativeRecallEnv, policy, seed: int) -> tuple[float, float, int, list[int]]:
    obs, _ = env.reset(seed=seed)
    tokens, total, steps = [obs["token"]], 0.0, 0
    while True:
        action = policy(env, obs["token"])
        obs, reward, terminated, truncated, info = env.step(action)
        total += reward
        steps += 1
        if terminated or truncated:
            return total, info["success"], steps, tokens
        tokens.append(obs["token"])


def test_an_episode_is_pairs_then_gap_then_one_query_per_pair():
    env = AssociativeRecallEnv(num_pairs=3, gap=4, num_keys=8, num_values=5, num_queries=None)
    _, _, steps, tokens = play(env, lambda e, t: 0, seed=0)
    assert steps == env.episode_length == 2 * 3 + 4 + 3
    kinds = [env.token_kind(t) for t in tokens]
    assert kinds == ["key", "value"] * 3 + ["filler"] * 4 + ["query"] * 3
    written = {tokens[2 * i] - 1 for i in range(3)}
    queried = {t - 1 - env.num_keys - env.num_values for t in tokens[-3:]}
    assert written == queried, "each stored key is queried exactly once"
    assert tokens[6] == FILLER


def test_the_optimal_policy_gets_full_reward():
    env = AssociativeRecallEnv(num_pairs=8, gap=5, num_keys=16, num_values=8, num_queries=None)
    for seed in range(5):
        total, success, _, _ = play(env, memorising_policy(), seed)
        assert success == 1.0
        assert total == pytest.approx(1.0)


def test_a_random_policy_gets_chance_level():
    env = AssociativeRecallEnv(num_pairs=4, gap=0, num_keys=8, num_values=4, num_queries=None)
    rng = np.random.default_rng(0)
    successes = [play(env, lambda e, t: int(rng.integers(4)), seed)[1] for seed in range(400)]
    mean = float(np.mean(successes))
    stderr = np.sqrt(0.25 * 0.75 / (400 * 4))
    assert abs(mean - 0.25) < 4 * stderr, mean


def test_actions_outside_queries_earn_nothing_and_do_not_count():
    env = AssociativeRecallEnv(num_pairs=2, gap=3, num_keys=4, num_values=3, num_queries=None)
    env.reset(seed=1)
    rewards = [env.step(a % 3)[1] for a in range(7)]  # the 4 writes and 3 fillers
    assert rewards == [0.0] * 7


def test_same_seed_same_episode_and_spaces_fixed_by_the_vocabulary():
    a = AssociativeRecallEnv(num_pairs=2, gap=0, num_keys=32, num_values=16, num_queries=None)
    b = AssociativeRecallEnv(num_pairs=32, gap=32, num_keys=32, num_values=16, num_queries=None)
    assert a.observation_space == b.observation_space and a.action_space == b.action_space
    assert a.vocab_size == 1 + 2 * 32 + 16
    assert play(b, lambda e, t: 0, 3)[3] == play(b, lambda e, t: 0, 3)[3]
    assert play(b, lambda e, t: 0, 3)[3] != play(b, lambda e, t: 0, 4)[3]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_pairs": 9, "num_keys": 8}, "raise num_keys"),
        ({"num_pairs": 0}, "must be in [1, num_keys"),
        ({"num_pairs": 2, "gap": -1}, "gap must be >= 0"),
        ({"num_pairs": 2, "num_values": 1}, "num_values >= 2"),
    ],
)
def test_invalid_recall_parameters_are_rejected(kwargs, message):
    valid = {"num_pairs": 2, "gap": 0, "num_keys": 16, "num_values": 8, "num_queries": None}
    with pytest.raises(ValueError) as error:
        AssociativeRecallEnv(**{**valid, **kwargs})
    assert message in str(error.value)


@pytest.mark.parametrize("name", ["recall", "recall-cpu"])
def test_the_recall_stream_grows_its_load_and_the_optimal_policy_stays_perfect(name):
    cfg = load_stream_config(name)
    cfg.unit, cfg.episodes_per_task = "episodes", 2
    stream = make_stream(cfg, seed=0)
    assert stream.duration_unit == "episodes"
    pairs = [int(t.split("-")[0][1:]) for t in stream.task_names]
    gaps = [int(t.split("-g")[1]) for t in stream.task_names]
    assert pairs == sorted(pairs) and gaps == sorted(gaps) and pairs[0] < pairs[-1]
    seen = []
    obs, info = stream.reset(seed=0)
    policy = memorising_policy()
    episodes = 0
    while episodes < 2 * len(stream.task_names):
        env = stream._envs[info["task_id"]].unwrapped
        obs, _, term, trunc, info = stream.step(policy(env, obs["token"]))
        if term or trunc:
            seen.append((info["task_name"], info["episode_success"]))
            episodes += 1
            obs, info = stream.reset()
    assert [t for t, _ in seen] == [t for t in stream.task_names for _ in range(2)]
    assert all(s == 1.0 for _, s in seen)


def test_recall_cpus_last_task_reaches_past_one_sliding_window_and_fits_one_training_segment():
    from omegaconf import OmegaConf

    from lifelong.config_files import group_dir

    window = OmegaConf.load(group_dir("memory") / "sliding_window.yaml").window
    segment = OmegaConf.load(group_dir("agent") / "ppo.yaml").segment_length
    stream = make_stream(load_stream_config("recall-cpu"), seed=0)
    env = stream._envs[stream.task_names.index("p4-g64")].unwrapped
    env.reset(seed=0)
    values = [t for t in range(env.episode_length) if env.token_kind(int(env._tokens[t])) == "value"]
    queries = [t for t in range(env.episode_length) if env.token_kind(int(env._tokens[t])) == "query"]
    assert min(queries) - max(values) > window
    assert env.episode_length <= segment
