"""Throughput of the lifelong loop (DESIGN.md section 10): env steps per second including learning.

DoorKey-5x5 alone, ``--num-envs`` lifetimes, a ``--layers``-block backbone of ``--memory`` at width
``--d-model``, PPO on ``--segment``-token segments. Prints the steps/s and the time per env step
spent stepping envs, acting and learning.

    python benchmarks/throughput.py --threads 2 --segments 20
    python benchmarks/throughput.py --threads 2 --compile     # torch.compile of acting and learner
    python benchmarks/throughput.py --threads 2 --compile --segments 100 --warmup 0 --print-every 10
                                                              # DoorKey learning curve

Measured 2026-11-23 on the shared 2-core dev VM (load average about 1, other engineers' jobs
running): eager 1,980-2,030 steps/s; --compile 1,935-2,770 (median about 2,500; per env step
0.14 ms env, 0.08 ms acting, 0.15-0.18 ms learning). Acting runs on one torch thread
(--acting-threads 1, the default): with two threads on a busy machine the OpenMP workers of the
tiny acting ops contend and the loop fell to 350 steps/s. Learning curve (--compile): success
0.17 -> 0.997 by 72k env steps, 37 s wall; a uniformly random policy succeeds in 7.8% of episodes.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from omegaconf import OmegaConf

DOORKEY_STREAM = {
    "name": "doorkey",
    "description": "DoorKey-5x5 alone",
    "unit": "steps",
    "steps_per_task": 10**9,
    "expose_task_id": False,
    "tasks": {"doorkey": {"env_id": "MiniGrid-DoorKey-5x5-v0"}},
    "schedule": {"type": "blocked", "order": ["doorkey"]},
}


class Loop:
    """The project's loop as the benchmarks run it: ``num_envs`` lifetimes of DoorKey-5x5 (or of the
    stream ``configs/stream/<stream>.yaml``), a
    ``layers``-block backbone of ``memory`` at width ``d_model``, PPO on ``segment``-token segments
    (:meth:`segment` collects one segment and learns from it)."""

    def __init__(self, *, num_envs: int = 8, d_model: int = 128, layers: int = 2, memory: str = "gated_deltanet",
                 segment: int = 128, epochs: int = 4, lr: float = 3e-4, compile: bool = False, device: str = "cpu",
                 acting_threads: int | None = 1, seed: int = 0, memory_overrides: dict | None = None,
                 overlap: bool | str = False, stream: str | None = None) -> None:
        from lifelong.agents.buffer import RolloutBuffer
        from lifelong.agents.build import make_learner
        from lifelong.agents.policy import LifelongAgent
        from lifelong.agents.ppo import PPOConfig
        from lifelong.agents.rollout import RolloutCollector
        from lifelong.envs.make import load_stream_config, make_vector_env
        from lifelong.memory_layers.registry import load_memory_config

        torch.manual_seed(seed)
        self.device = torch.device(device)
        stream_cfg = OmegaConf.create(DOORKEY_STREAM) if stream is None else load_stream_config(stream)
        self.env = make_vector_env(stream_cfg, num_envs, seed=seed)
        memory_cfg = load_memory_config(memory)
        if memory_overrides:
            memory_cfg = OmegaConf.merge(memory_cfg, memory_overrides)
        self.agent = LifelongAgent(self.env.single_observation_space, self.env.single_action_space, memory_cfg,
                                   d_model, layers, 2.0).to(self.device)
        if compile:
            self.agent.compile_acting()
        ppo_cfg = PPOConfig.from_cfg({"lr": lr, "update_epochs": epochs})
        self.overlap = overlap
        # overlap: learning on its own thread or process (and core), one update behind the acting
        self.learner = make_learner(self.agent, ppo_cfg, overlap, compile=compile, seed=seed)
        self.env_seconds = 0.0  # time inside the vector env's step, summed (acting = collect - this)
        raw_step = self.env.step

        def timed_step(actions):
            t = time.perf_counter()
            out = raw_step(actions)
            self.env_seconds += time.perf_counter() - t
            return out

        self.env.step = timed_step
        self.collector = RolloutCollector(self.env, self.agent, "never", self.device, acting_threads=acting_threads)
        self.collector.reset(seed=seed)
        self.buffer = RolloutBuffer(num_envs, segment, self.device)
        self.steps_per_segment = num_envs * segment

    def segment(self) -> tuple[float, float]:
        """Collect one segment and learn from it; returns (collect seconds, learn seconds). With
        ``overlap`` the learn seconds are the wait for the previous update plus starting this one."""
        t0 = time.perf_counter()
        self.collector.collect(self.buffer)
        t1 = time.perf_counter()
        self.learner.update(self.buffer)
        return t1 - t0, time.perf_counter() - t1

    def finish(self) -> None:
        """Wait for a pending update (overlap mode); nothing to do otherwise."""
        if self.overlap:
            self.learner.finish()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--memory", default="gated_deltanet")
    p.add_argument("--segment", type=int, default=128)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--segments", type=int, default=20, help="timed segments (after --warmup)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--overlap", nargs="?", const="process", default=False, choices=["thread", "process"],
                   help="learn from segment k on a second process (the default) or thread while acting segment k+1 "
                        "(agent.overlap)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--acting-threads", type=int, default=1, help="torch threads while acting (0: same as --threads)")
    p.add_argument("--print-every", type=int, default=0,
                   help="print a learning-curve line (success rate of the episodes in the window) every N segments")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    loop = Loop(num_envs=args.num_envs, d_model=args.d_model, layers=args.layers, memory=args.memory,
                segment=args.segment, epochs=args.epochs, lr=args.lr, compile=args.compile, device=args.device,
                acting_threads=args.acting_threads or None, overlap=args.overlap)
    buf = loop.buffer

    t_collect = t_learn = 0.0
    episodes = successes = 0
    win_episodes = win_successes = 0
    start = time.perf_counter()
    for i in range(args.warmup + args.segments):
        if i == args.warmup:
            loop.env_seconds, t_collect, t_learn, episodes, successes = 0.0, 0.0, 0.0, 0, 0
        dt_collect, dt_learn = loop.segment()
        t_collect += dt_collect
        t_learn += dt_learn
        episodes += int(buf.done.sum())
        successes += int((buf.done & (buf.reward > 0)).sum())
        win_episodes += int(buf.done.sum())
        win_successes += int((buf.done & (buf.reward > 0)).sum())
        if args.print_every and (i + 1) % args.print_every == 0:
            done_steps = (i + 1) * args.segment * args.num_envs
            print(f"steps {done_steps:>8d}  success {win_successes / max(win_episodes, 1):.3f} "
                  f"({win_episodes} episodes)  wall {time.perf_counter() - start:.0f} s", flush=True)
            win_episodes = win_successes = 0
    t = time.perf_counter()
    loop.finish()
    t_learn += time.perf_counter() - t
    steps = args.segments * args.segment * args.num_envs
    total = t_collect + t_learn
    result = {
        "steps_per_s": round(steps / total, 1),
        "ms_per_env_step": {
            "env": round(1e3 * loop.env_seconds / steps, 4),
            "acting": round(1e3 * (t_collect - loop.env_seconds) / steps, 4),
            "learning": round(1e3 * t_learn / steps, 4),
        },
        "config": {k: v for k, v in vars(args).items()},
        "env_steps_timed": steps,
        "episodes": episodes,
        "success_rate": round(successes / max(episodes, 1), 3),
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
