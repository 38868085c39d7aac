"""Single-task reference lifetimes for Continual World's forward transfer (``reference=true``).

For every task of the stream, a fresh agent lives one block of that task alone (same sizes, same
learner, same steps per block); its summary goes to ``<run_dir>/reference/<task>/summary.json``,
where ``tracking.tracker.apply_reference_runs`` finds it: FT_j = (AUC_j - AUC_j^ref) / (1 - AUC_j^ref).
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict
from rich.console import Console

from lifelong.agents.build import build_lifetime
from lifelong.envs.make import validate_stream_config


def reference_config(cfg: DictConfig, task: str) -> DictConfig:
    """The run's config with the stream cut down to one block of ``task``."""
    schedule = validate_stream_config(cfg.stream).schedule
    ref = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(ref):
        ref.stream.name = f"{cfg.stream.name}-reference-{task}"
        ref.stream.tasks = {task: OmegaConf.to_container(cfg.stream.tasks[task], resolve=True)}
        ref.stream.schedule = {"type": "blocked", "order": [task]}
        ref.reference = False
        ref.checkpoint_every = 0
        if schedule.unit == "steps":
            ref.total_steps = None  # one pass of the one-block schedule: the block's steps x num_envs
        elif cfg.total_steps is not None:  # blocks counted in episodes: the run's mean block length
            ref.total_steps = max(int(cfg.num_envs), int(cfg.total_steps) // max(len(schedule.blocks), 1))
        else:
            raise ValueError("reference=true on a stream counted in episodes needs total_steps=<env steps>")
    return ref


def run_reference_lifetimes(cfg: DictConfig, run_dir: Path, console: Console) -> list[Path]:
    """Run one reference lifetime per task; returns their run directories."""
    out = []
    for task in cfg.stream.tasks:
        ref_dir = Path(run_dir) / "reference" / str(task)
        console.print(f"reference lifetime: [bold]{task}[/] alone -> {ref_dir}", soft_wrap=True)
        build_lifetime(reference_config(cfg, str(task)), ref_dir).run(progress=bool(cfg.progress))
        out.append(ref_dir)
    return out
