"""The project's loop against two anchors, side by side: SB3 PPO (MLP) and sb3-contrib RecurrentPPO (LSTM).

All three learn DoorKey-5x5 (the same stream env, ``benchmarks/throughput.py``'s ``DOORKEY_STREAM``)
with the same number of envs, segment length (SB3's ``n_steps``), PPO epochs and torch threads. They
run in interleaved rounds (lifelong, PPO, RecurrentPPO, lifelong, PPO, ...) so that the load of a
shared machine hits all three alike; each round prints their env steps per second, the end prints
the medians and the per-round ratios (lifelong / PPO-MLP, lifelong / RecurrentPPO): median and range.

    pip install -e '.[bench]'                       # stable-baselines3 and sb3-contrib
    python benchmarks/anchors.py --threads 2        # eager
    python benchmarks/anchors.py --threads 2 --compile
    python benchmarks/anchors.py --threads 2 --overlap   # learner in a second process, on the second core

SB3 sees the stream's observation flattened (the 7x7x3 view as floats and a one-hot direction) and
keeps its defaults otherwise (``MlpPolicy`` 64-64 tanh, minibatches of ``--sb3-batch-size`` = 64,
``ent_coef`` 0); RecurrentPPO uses ``MlpLstmPolicy`` (LSTM 256). The project's loop is what
``benchmarks/throughput.py`` times: the rollout collector and the PPO learner (no tracker, no probes).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

# Idle OpenMP workers sleep instead of spinning (before torch loads its OpenMP runtime): on a shared
# machine with more runnable threads than cores, spinning workers made every 2-thread run 3-4x slower
# (SB3 PPO-MLP 170 vs 660 steps/s, same minute). OMP_WAIT_POLICY=ACTIVE in the environment overrides it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

from throughput import DOORKEY_STREAM, Loop

INSTALL_HINT = "pip install -e '.[bench]'"


def require_sb3() -> tuple[Any, Any]:
    """(stable_baselines3, sb3_contrib), or exit with a one-line error naming the install command."""
    try:
        import sb3_contrib
        import stable_baselines3
    except ImportError as error:
        missing = {"stable_baselines3": "stable-baselines3", "sb3_contrib": "sb3-contrib"}.get(error.name or "",
                                                                                                "stable-baselines3")
        sys.exit(f"anchors.py: error: {missing} is not installed (the anchors need stable-baselines3 and "
                 f"sb3-contrib): {INSTALL_HINT}")
    return stable_baselines3, sb3_contrib


def flat_stream_env(seed: int) -> Any:
    """One DoorKey stream env whose observation is a flat float vector (what an SB3 MLP takes)."""
    import gymnasium as gym
    from gymnasium import spaces
    from omegaconf import OmegaConf

    from lifelong.envs.make import make_stream

    class FlatObservation(gym.ObservationWrapper):
        def __init__(self, env: gym.Env) -> None:
            super().__init__(env)
            self._dirs = int(env.observation_space["direction"].n)
            size = int(np.prod(env.observation_space["image"].shape)) + self._dirs
            self.observation_space = spaces.Box(0.0, 255.0, (size,), np.float32)

        def observation(self, obs: dict) -> np.ndarray:
            out = np.zeros(self.observation_space.shape, np.float32)
            image = np.asarray(obs["image"]).reshape(-1)
            out[: image.size] = image
            out[image.size + int(obs["direction"])] = 1.0
            return out

    return FlatObservation(make_stream(OmegaConf.create(DOORKEY_STREAM), seed))


class LifelongRunner:
    name = "lifelong"

    def __init__(self, args: argparse.Namespace) -> None:
        self.loop = Loop(num_envs=args.num_envs, d_model=args.d_model, layers=args.layers, memory=args.memory,
                         segment=args.segment, epochs=args.epochs, compile=args.compile,
                         acting_threads=args.acting_threads or None, overlap=args.overlap)

    def run(self, segments: int) -> int:
        for _ in range(segments):
            self.loop.segment()
        self.loop.finish()
        return segments * self.loop.steps_per_segment


class SB3Runner:
    def __init__(self, args: argparse.Namespace, recurrent: bool) -> None:
        sb3, contrib = require_sb3()
        from stable_baselines3.common.vec_env import DummyVecEnv

        env = DummyVecEnv([(lambda i=i: flat_stream_env(i)) for i in range(args.num_envs)])
        cls, policy = (contrib.RecurrentPPO, "MlpLstmPolicy") if recurrent else (sb3.PPO, "MlpPolicy")
        self.name = "RecurrentPPO" if recurrent else "PPO-MLP"
        self.model = cls(policy, env, n_steps=args.segment, n_epochs=args.epochs,
                         batch_size=args.sb3_batch_size, seed=0, device="cpu", verbose=0)
        self.steps_per_segment = args.segment * args.num_envs

    def run(self, segments: int) -> int:
        before = self.model.num_timesteps
        self.model.learn(total_timesteps=segments * self.steps_per_segment, reset_num_timesteps=False)
        return self.model.num_timesteps - before


def timed(runner: Any, segments: int) -> float:
    """Env steps per second of ``segments`` segments (collect + learn)."""
    start = time.perf_counter()
    steps = runner.run(segments)
    return steps / (time.perf_counter() - start)


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch threads, every runner")
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--segment", type=int, default=128, help="tokens per segment (SB3: n_steps)")
    p.add_argument("--epochs", type=int, default=4, help="PPO epochs per segment")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--segments", type=int, default=4, help="segments per round, lifelong and PPO-MLP")
    p.add_argument("--recurrent-segments", type=int, default=1, help="segments per round, RecurrentPPO (slow)")
    p.add_argument("--warmup", type=int, default=1, help="untimed segments per runner before the rounds")
    p.add_argument("--no-recurrent", action="store_true", help="leave RecurrentPPO out")
    p.add_argument("--sb3-batch-size", type=int, default=64, help="SB3's minibatch size (its default: 64)")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--memory", default="gated_deltanet")
    p.add_argument("--compile", action="store_true", help="torch.compile the project's acting step and learner")
    p.add_argument("--overlap", nargs="?", const="process", default=False, choices=["thread", "process"],
                   help="the project's loop learns from segment k in a second process (the default) or thread "
                        "while acting segment k+1 (agent.overlap)")
    p.add_argument("--acting-threads", type=int, default=1, help="the project's torch threads while acting")
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    args = p.parse_args()
    require_sb3()
    torch.set_num_threads(args.threads)

    runners: list[tuple[Any, int]] = [(LifelongRunner(args), args.segments), (SB3Runner(args, recurrent=False), args.segments)]
    if not args.no_recurrent:
        runners.append((SB3Runner(args, recurrent=True), args.recurrent_segments))
    for runner, _ in runners:  # warm-up (compilation, allocator, first env resets)
        t = time.perf_counter()
        if args.warmup:
            runner.run(args.warmup)
        print(f"warm-up {runner.name}: {time.perf_counter() - t:.1f} s", flush=True)

    rates: dict[str, list[float]] = {runner.name: [] for runner, _ in runners}
    for r in range(args.rounds):
        row = []
        for runner, segments in runners:
            torch.set_num_threads(args.threads)
            sps = timed(runner, segments)
            rates[runner.name].append(sps)
            row.append(f"{runner.name} {sps:8.1f}")
        print(f"round {r + 1}/{args.rounds}: " + "  ".join(row) + "  env steps/s", flush=True)

    names = [runner.name for runner, _ in runners]
    medians = {name: round(statistics.median(v), 1) for name, v in rates.items()}
    ratios = {f"lifelong / {name}": spread([a / b for a, b in zip(rates["lifelong"], rates[name])])
              for name in names[1:]}
    mode = ("compile" if args.compile else "eager") + (f", overlap={args.overlap}" if args.overlap else "")
    mode += f", OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}"
    print(f"\nmedian env steps/s ({mode}, {args.threads} threads, {args.num_envs} envs, segment {args.segment}, "
          f"{args.epochs} epochs): " + ", ".join(f"{k} {v:,.0f}" for k, v in medians.items()))
    for key, s in ratios.items():
        print(f"{key}: {s['median']:.2f} (rounds {s['min']:.2f}-{s['max']:.2f})")
    if args.json:
        print(json.dumps({"steps_per_s": rates, "medians": medians, "ratios": ratios, "config": vars(args)}, indent=1))


if __name__ == "__main__":
    main()
