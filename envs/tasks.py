"""Building one task env from its :class:`~envs.stream_config.TaskSpec`.

A task is a registered Gymnasium env, an associative-recall env (``envs.recall``) built on the
stream's shared vocabulary, or a hidden-task env: the dark room (``envs.darkroom``), the Bernoulli
bandit (``envs.bandit``) or the hidden-rule doors (``envs.hidden_door``). Every built task env has the
stream's observation processing (MiniGrid: the mission string dropped; the view computed by
``envs.minigrid_view``), reports ``info["success"]``
on its episode-ending step, and then goes through the task's shifts (``envs.wrappers``) in order.
"""
from __future__ import annotations

import gymnasium as gym
import minigrid  # noqa: F401  (registers the MiniGrid-* env ids)

from lifelong.envs.bandit import BernoulliBanditEnv
from lifelong.envs.darkroom import DarkRoomEnv
from lifelong.envs.hidden_door import HiddenDoorEnv
from lifelong.envs.minigrid_view import install_fast_view
from lifelong.envs.recall import AssociativeRecallEnv
from lifelong.envs.stream_config import RecallVocab, TaskSpec
from lifelong.envs.wrappers import EpisodeSuccess, MiniGridObservation, apply_shift


def is_minigrid_dict(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Dict) and {"image", "direction", "mission"} <= set(space.spaces)


def build_base_env(spec: TaskSpec, recall_vocab: RecallVocab | None) -> gym.Env:
    """The task's env before the success info and the shifts (MiniGrid's mission already dropped)."""
    kind = spec.kind
    if kind == "env_id":
        env = gym.make(spec.env_id, disable_env_checker=True, **spec.env_kwargs)
    elif kind == "darkroom":
        env = DarkRoomEnv(**spec.darkroom.env_kwargs())
    elif kind == "hidden_door":
        door = spec.hidden_door
        env = HiddenDoorEnv(correct=door.correct, doors=door.doors, size=door.size, color=door.color,
                            max_steps=door.max_steps)
    elif kind == "bandit":
        env = BernoulliBanditEnv(probs=spec.bandit.arm_probs(), pulls=spec.bandit.pulls)
    elif recall_vocab is None or recall_vocab.num_keys is None:
        raise ValueError("a recall task needs the stream's recall_vocab with num_keys resolved (envs.make builds it)")
    else:
        recall = spec.recall
        env = AssociativeRecallEnv(num_pairs=recall.num_pairs, gap=recall.gap, num_keys=recall_vocab.num_keys,
                                   num_values=recall_vocab.num_values, num_queries=recall.num_queries)
    if is_minigrid_dict(env.observation_space):
        install_fast_view(env)  # MiniGrid's observation, bit for bit, in less time (envs.minigrid_view)
        env = MiniGridObservation(env)
    return env


def build_task_env(spec: TaskSpec, recall_vocab: RecallVocab | None) -> gym.Env:
    """Build one task env: base env, observation processing, success info, then the shifts.

    ``recall_vocab``: the stream's vocabulary with ``num_keys`` resolved (``envs.make``); a recall
    task needs it, other tasks ignore it.
    """
    env = EpisodeSuccess(build_base_env(spec, recall_vocab))
    for shift in spec.shifts:
        env = apply_shift(env, shift)
    return env
