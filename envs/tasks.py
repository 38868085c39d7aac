"""Building one task env from its :class:`~envs.stream_config.TaskSpec`.

A task is a registered Gymnasium env or an associative-recall env (``envs.recall``) built on the
stream's shared vocabulary. Every built task env has the stream's observation processing
(MiniGrid: the mission string dropped), reports ``info["success"]`` on its episode-ending step, and
then goes through the task's shifts (``envs.wrappers``) in order.
"""
from __future__ import annotations

import gymnasium as gym
import minigrid  # noqa: F401  (registers the MiniGrid-* env ids)

from lifelong.envs.recall import AssociativeRecallEnv
from lifelong.envs.stream_config import RecallVocab, TaskSpec
from lifelong.envs.wrappers import EpisodeSuccess, MiniGridObservation, apply_shift


def build_task_env(spec: TaskSpec, recall_vocab: RecallVocab | None) -> gym.Env:
    """Build one task env: base env, observation processing, success info, then the shifts.

    ``recall_vocab``: the stream's vocabulary with ``num_keys`` resolved (``envs.make``); a recall
    task needs it, other tasks ignore it.
    """
    if spec.env_id is not None:
        env = gym.make(spec.env_id, disable_env_checker=True, **spec.env_kwargs)
        space = env.observation_space
        if isinstance(space, gym.spaces.Dict) and {"image", "direction", "mission"} <= set(space.spaces):
            env = MiniGridObservation(env)
    elif recall_vocab is None or recall_vocab.num_keys is None:
        raise ValueError("a recall task needs the stream's recall_vocab with num_keys resolved (envs.make builds it)")
    else:
        recall = spec.recall
        env = AssociativeRecallEnv(num_pairs=recall.num_pairs, gap=recall.gap, num_keys=recall_vocab.num_keys,
                                   num_values=recall_vocab.num_values, num_queries=recall.num_queries)
    env = EpisodeSuccess(env)
    for shift in spec.shifts:
        env = apply_shift(env, shift)
    return env
