"""Running a lifetime for the CLI, fresh (``lifelong run``) or continued (``lifelong resume``).

Everything that can go wrong after the command line was read ends here as :class:`RunFailed`: one
line for the user and an exit status. Before any work: a bad config, a run directory that already
holds a run. During the run: a stop signal (a checkpoint and an unfinished summary are written, and
the line says how to resume), a second Ctrl-C (no save), any error (the last good checkpoint is
named; ``debug=true`` re-raises with the full traceback).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from rich.console import Console

from lifelong.run_dir import CHECKPOINT_FOLDER, clear_run, holds_run
from lifelong.stop_signals import exit_status


class RunFailed(Exception):
    """A run that ended without a summary: ``message`` (one line), the process exit ``status`` and, for
    a stop signal, its number (``signum``)."""

    def __init__(self, message: str, status: int, signum: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.signum = signum


def _finished(run_dir: Path) -> bool:
    summary_path = run_dir / "summary.json"
    return summary_path.is_file() and bool(json.loads(summary_path.read_text()).get("finished", False))


def prepare_run_dir(run_dir: Path, overwrite: bool, resume_existing: bool = False) -> str:
    """What ``lifelong run`` does with ``run_dir``: ``"fresh"`` (empty, or cleared with ``overwrite``),
    ``"resume"`` (``resume_existing`` and an unfinished run with a checkpoint: a requeued job) or
    ``"finished"`` (``resume_existing`` and the run already finished: nothing to do). A directory that
    holds a run is refused otherwise."""
    if not holds_run(run_dir):
        return "fresh"
    if overwrite:
        clear_run(run_dir)
        return "fresh"
    if resume_existing:
        from lifelong.agents.checkpoint import CheckpointFolder

        if _finished(run_dir):
            return "finished"
        if CheckpointFolder(run_dir / CHECKPOINT_FOLDER, keep=1, meta={}).latest() is not None:
            return "resume"
        clear_run(run_dir)  # killed before its first checkpoint: nothing to keep
        return "fresh"
    raise RunFailed(f"{run_dir} already holds a run: continue it with `lifelong resume {run_dir}`, "
                    "or start afresh there with overwrite=true", 2)


def check_resumable(run_dir: Path) -> None:
    """A finished run has nothing to continue (its summary.json says ``finished: true``)."""
    if _finished(run_dir):  # summaries of stopped runs say finished: false
        steps = json.loads((run_dir / "summary.json").read_text())["steps"]
        raise RunFailed(f"the run in {run_dir} finished at env step {steps:,}: nothing to resume "
                        "(start a new one with `lifelong run`)", 2)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def execute_lifetime(cfg: DictConfig, run_dir: Path, console: Console, *, resume: bool) -> dict[str, Any]:
    """Build the lifetime ``cfg`` describes in ``run_dir``, continue it from its newest checkpoint if
    ``resume``, run it (and its reference lifetimes if ``cfg.reference``); returns the summary."""
    from lifelong.agents.build import build_lifetime
    from lifelong.agents.loop import LifetimeStopped

    try:
        lifetime = build_lifetime(cfg, run_dir)
    except (ValueError, TypeError) as error:  # bad configuration: said before any work
        raise RunFailed(_first_line(error), 2) from None
    if resume:
        try:
            path = lifetime.resume()
        except (FileNotFoundError, ValueError) as error:
            raise RunFailed(_first_line(error), 2) from None
        console.print(f"resuming {run_dir} from {path.name}: env step {lifetime.global_step:,} of "
                      f"{lifetime.settings.total_steps:,}", highlight=False, soft_wrap=True)

    def last_checkpoint() -> str:
        latest = lifetime.checkpoints.latest()
        if latest is None:
            return "no checkpoint was written yet"
        return f"last good checkpoint {latest} (continue with `lifelong resume {run_dir}`)"

    try:
        summary = lifetime.run(progress=bool(cfg.progress))
    except LifetimeStopped as stop:
        raise RunFailed(f"stopped by {stop.signal_name} at env step {stop.step:,}, checkpoint saved; continue with "
                        f"`lifelong resume {run_dir}`", exit_status(stop.signum), stop.signum) from None
    except KeyboardInterrupt:
        raise RunFailed(f"aborted at env step {lifetime.global_step:,} without saving; {last_checkpoint()}",
                        130) from None
    except Exception as error:
        if cfg.debug:
            raise
        raise RunFailed(f"{type(error).__name__} at env step {lifetime.global_step:,}: {_first_line(error)}; "
                        f"{last_checkpoint()}; debug=true shows the traceback", 1) from None
    if cfg.reference:  # before printing, so the table shows the forward transfer
        from lifelong.agents.reference import run_reference_lifetimes
        from lifelong.tracking.tracker import apply_reference_runs

        run_reference_lifetimes(cfg, run_dir, console)
        summary = apply_reference_runs(run_dir)
    return summary
