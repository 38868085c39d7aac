"""Single-task reference lifetimes for Continual World's forward transfer (``reference=true``).

For every task of the stream, a fresh agent lives one block of that task alone (same sizes, same
learner, the same steps as the task's first block, probed as often); its summary goes to ``<run_dir>/reference/<task>/summary.json``,
where ``tracking.tracker.apply_reference_runs`` finds it: FT_j = (AUC_j - AUC_j^ref) / (1 - AUC_j^ref).
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict
from rich.console import Console

from lifelong.agents.build import build_lifetime
from lifelong.envs.make import validate_stream_config


def reference_config(cfg: DictConfig, task: str) -> DictConfig:
    """The run's config with the stream cut down to one block of ``task`` as long as its first block."""
    schedule = validate_stream_config(cfg.stream).schedule
    if schedule.unit != "steps":
        raise ValueError("reference=true needs a stream counted in steps (docs/blocks.md)")
    tokens = next(duration for name, duration in schedule.blocks if name == task)
    ref = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(ref):
        ref.stream.name = f"{cfg.stream.name}-reference-{task}"
        ref.stream.tasks = {task: OmegaConf.to_container(cfg.stream.tasks[task], resolve=True)}
        ref.stream.schedule = {"type": "blocked", "order": [task], "durations": [int(tokens)]}
        ref.reference = False
        ref.checkpoint_every = 0
        ref.total_steps = None  # one pass of the one-block schedule: the block's steps x num_envs
    return ref


def run_reference_lifetimes(cfg: DictConfig, run_dir: Path, console: Console) -> list[Path]:
    """Run one reference lifetime per task; returns their run directories."""
    out = []
    scheduled = dict.fromkeys(name for name, _ in validate_stream_config(cfg.stream).schedule.blocks)
    for task in scheduled:
        ref_dir = Path(run_dir) / "reference" / str(task)
        console.print(f"reference lifetime: [bold]{task}[/] alone -> {ref_dir}", soft_wrap=True)
        build_lifetime(reference_config(cfg, str(task)), ref_dir).run(progress=bool(cfg.progress))
        out.append(ref_dir)
    return out
