"""The ``lifelong`` command: a thin layer over the Hydra app and the packages.

    lifelong run [HYDRA OVERRIDES...] [-m]   one lifetime (or a sweep with -m)
    lifelong resume RUN_DIR [progress=false] [debug=true]
                                             continue a stopped or killed run from its newest checkpoint
    lifelong compare RUN_DIR... [--out DIR]  side-by-side report of runs (table + PNG)
    lifelong tensorboard RUN_DIR [--port N]  TensorBoard on 127.0.0.1 for a run
    lifelong mqar [HYDRA OVERRIDES...] [-m]  supervised associative recall (MQAR) with one mixer
    lifelong mqar-report DIR [--out DIR]    figures + table from the MQAR runs under DIR
    lifelong streams                         the configured task streams
    lifelong mixers                          the configured memory mixers
    lifelong --version                       the installed version

``python -m lifelong`` is the same command.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from lifelong import __version__
from lifelong.config_checks import ConfigError
from lifelong.config_files import HYDRA_CONFIG_PATH, ConfigFilesMissing, config_dir
from lifelong.group_overrides import check_group_choices
from lifelong.launch import RunFailed
from lifelong.stop_signals import pass_on_stop_signal

if TYPE_CHECKING:
    from omegaconf import DictConfig

console = Console()
err_console = Console(stderr=True)

USAGE = __doc__


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit before any work starts."""
    err_console.print(f"[bold red]lifelong: error:[/] {message}", highlight=False, soft_wrap=True)
    raise SystemExit(code)


def check_group_overrides(argv: list[str]) -> None:
    """Reject an unknown mixer / stream / agent name of the ``lifelong run`` command line ``argv`` in
    one line naming the choices (those of a ``--config-dir`` too); sweep functions go to Hydra."""
    try:
        check_group_choices(argv)
    except ConfigError as error:
        fail(str(error))


# ---- lifelong run -------------------------------------------------------------------------
def run_lifetime(cfg: DictConfig) -> float | None:
    """The Hydra task function of ``lifelong run``. Module-level, so that launchers running jobs in
    other processes (joblib, submitit, Ray) pickle it by reference (``lifelong.cli.run_lifetime``)
    rather than by value with the module globals it uses (``console`` holds a lock)."""
    from hydra.core.hydra_config import HydraConfig

    from lifelong.config_schema import validate_run_config
    from lifelong.launch import prepare_run_dir

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        validate_run_config(cfg)  # every value, before any work
    except ValueError as error:
        fail(str(error))
    try:
        state = prepare_run_dir(run_dir, bool(cfg.overwrite), bool(cfg.resume_existing))
    except RunFailed as error:
        fail(str(error), error.status)
    if state == "finished":  # a requeued job whose run had already finished
        console.print(f"{run_dir} holds a finished run: left as it is", highlight=False, soft_wrap=True)
        return None
    return _execute(cfg, run_dir, resume=state == "resume")


def _run_app() -> None:
    import hydra

    # decorated here, not at module level: the module attribute must stay the plain, picklable function
    hydra.main(version_base="1.3", config_path=HYDRA_CONFIG_PATH, config_name="config")(run_lifetime)()


def cmd_run(argv: list[str]) -> None:
    config_dir()  # a broken install is one line here, not Hydra's "Primary config directory not found"
    check_group_overrides(argv)
    sys.argv = ["lifelong run", *argv]
    _run_app()


def _execute(cfg: DictConfig, run_dir: Path, *, resume: bool) -> float | None:
    """Run (or resume) the lifetime, print its summary; one line and an exit status if it fails."""
    from lifelong.launch import execute_lifetime
    from lifelong.summary import print_run_summary

    try:
        summary = execute_lifetime(cfg, run_dir, console, resume=resume)
    except RunFailed as error:
        message, status, signum = str(error), error.status, error.signum
        if signum is not None:  # a stop signal: the line, then any handler installed before ours (a requeue)
            pass_on_stop_signal(signum, lambda: fail(message, status))
        fail(message, status)
    print_run_summary(summary, run_dir, console)
    acc = summary["cl"]["acc"]
    return float(acc) if acc is not None else None


#: settings `lifelong resume` may change: how the run is shown, never what it computes
RESUME_OVERRIDES = ("progress", "debug")


def cmd_resume(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lifelong resume",
                                     description="Continue a stopped or killed run from its newest checkpoint.")
    parser.add_argument("run_dir", type=Path, help="the run directory `lifelong run` printed")
    parser.add_argument("overrides", nargs="*", help=f"only {', '.join(RESUME_OVERRIDES)} (e.g. progress=false)")
    args = parser.parse_args(argv)
    from omegaconf import OmegaConf

    from lifelong.config_schema import with_added_settings
    from lifelong.launch import check_resumable
    from lifelong.run_dir import saved_config

    run_dir = args.run_dir.resolve()
    if not run_dir.is_dir():
        fail(f"no such run directory: {args.run_dir}")
    for override in args.overrides:
        key = override.partition("=")[0]
        if key not in RESUME_OVERRIDES:
            fail(f"lifelong resume takes only {', '.join(k + '=...' for k in RESUME_OVERRIDES)}; {key!r} would change "
                 "the run (start a new one with `lifelong run` instead)")
    try:
        cfg = with_added_settings(saved_config(run_dir))  # a run saved before a setting existed
        check_resumable(run_dir)
    except ValueError as error:
        fail(str(error))
    except RunFailed as error:
        fail(str(error), error.status)
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(args.overrides))
    from lifelong.config_schema import validate_run_config

    try:
        validate_run_config(cfg)
    except ValueError as error:
        fail(f"the saved configuration of {run_dir} is not valid for this version of lifelong: {error}")
    _execute(cfg, run_dir, resume=True)


# ---- other subcommands --------------------------------------------------------------------
def cmd_compare(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="lifelong compare",
        description="Compare finished runs: groups of seeds with the same configuration, mean ± 95% CI across "
                    "seeds of ACC, forgetting, BWT, FWT, CW forgetting / forward transfer; probe curves and R.",
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories or a multirun directory")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write compare.{md,csv,png}, compare_tasks.md, compare_R.png "
                             "(default: the run directory when one is given, else runs/compare)")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.run_dirs if not p.exists()]
    if missing:
        fail(f"no such run directory: {', '.join(missing)}")
    from lifelong.summary import print_dataframe
    from lifelong.tracking.report import compare, display_table

    out_dir = args.out or (args.run_dirs[0] if len(args.run_dirs) == 1 else Path("runs") / "compare")
    try:
        result = compare(list(args.run_dirs), out_dir)
    except (ValueError, OSError) as error:  # nothing left to compare, no summary.json, an unwritable --out
        fail(str(error))
    console.print("groups (runs with the same configuration, seeds aside):", highlight=False)
    width = max(len(group.label) for group in result.groups)
    for k, group in enumerate(result.groups, 1):
        console.print(f"  [{k}] {group.label:<{width}}   n={group.seeds}   config_key {group.config_key}",
                      highlight=False, soft_wrap=True, markup=False)
    shown = display_table(result.table)
    shown.columns = [f"[{k}] {group.memory}" for k, group in enumerate(result.groups, 1)]
    print_dataframe(shown, "mean ± 95% CI across seeds (Student t)", console)
    if any(group.seeds == 1 for group in result.groups):
        console.print("n=1: one seed, no interval across seeds; the interval beside it is that run's own "
                      "bootstrap CI", highlight=False, soft_wrap=True)
    console.print(f"wrote to {out_dir}:", highlight=False, soft_wrap=True)
    for path in result.files:
        console.print(f"  {path}", highlight=False, soft_wrap=True, markup=False)


def cmd_tensorboard(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lifelong tensorboard", description="TensorBoard on 127.0.0.1.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--port", type=int, default=6006)
    args = parser.parse_args(argv)
    if not args.run_dir.exists():
        fail(f"no such run directory: {args.run_dir}")
    exe = shutil.which("tensorboard")
    if exe is None:
        fail("tensorboard is not on PATH: activate the project's venv (. .venv/bin/activate)")
    command = [exe, "--logdir", str(args.run_dir), "--host", "127.0.0.1", "--port", str(args.port)]
    console.print(f"serving {args.run_dir} at http://127.0.0.1:{args.port}/ (Ctrl+C stops)")
    raise SystemExit(subprocess.call(command))


def cmd_streams(argv: list[str]) -> None:
    from rich.table import Table

    from lifelong.envs.make import describe_streams

    table = Table(title="task streams (configs/stream/)")
    for column in ("stream", "description", "tasks", "blocks", "schedule length"):
        table.add_column(column, overflow="fold")
    for row in describe_streams():
        length = row.get("schedule_length")
        table.add_row(row["name"], row["description"], ", ".join(row["tasks"]), str(row["blocks"]),
                      f"{length} {row.get('unit', '')}".strip())
    console.print(table)


def cmd_mixers(argv: list[str]) -> None:
    from rich.table import Table

    from lifelong.memory_layers.registry import available_mixers, load_memory_config

    table = Table(title="memory mixers (configs/memory/)")
    table.add_column("memory")
    table.add_column("class")
    for name in available_mixers():
        table.add_row(name, str(load_memory_config(name)["_target_"]))
    console.print(table)


# ---- lifelong mqar ------------------------------------------------------------------------
def run_mqar(cfg: DictConfig) -> float | None:
    """The Hydra task function of ``lifelong mqar`` (module-level, like :func:`run_lifetime`, so that
    launchers pickle it by reference): check, train, write ``results.json``; returns the test accuracy."""
    from hydra.core.hydra_config import HydraConfig

    from lifelong.config_schema import plain_config
    from lifelong.mqar.app import RunDirTaken, run_in_dir
    from lifelong.mqar.train import TrainingFailed

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        config = plain_config(cfg)
    except ValueError as error:
        fail(str(error))
    debug = bool(config.get("debug", False))
    try:
        results = run_in_dir(config, run_dir)
    except RunDirTaken as error:
        fail(str(error))
    except (ConfigError, ValueError) as error:  # settings refused before any work (one line, status 2)
        if debug and not isinstance(error, ConfigError):
            raise
        fail(str(error).splitlines()[0] if str(error) else type(error).__name__)
    except TrainingFailed as error:
        fail(str(error), 1)
    except Exception as error:  # noqa: BLE001  after start-up: one line unless debug=true
        if debug:
            raise
        reason = str(error).splitlines()[0] if str(error) else ""
        fail(f"the MQAR run in {run_dir} failed: {type(error).__name__}: {reason} (debug=true shows the traceback)", 1)
    console.print(
        f"mqar {results['mixer']}: test accuracy [bold]{results['accuracy']:.4f}[/] (loss {results['loss']:.4f}, "
        f"{results['test']['queries']:,} queries), state {results['state_bytes_per_token']:,} B/token, "
        f"{results['parameters']:,} parameters, {results['wall_time_s']:.1f} s", highlight=False, soft_wrap=True)
    console.print(f"results:       {run_dir.resolve() / 'results.json'}", highlight=False, soft_wrap=True)
    console.print(f"view it:       tensorboard --logdir {run_dir.resolve()} --host 127.0.0.1", highlight=False,
                  soft_wrap=True)
    return float(results["accuracy"])


def _run_mqar_app() -> None:
    import hydra

    hydra.main(version_base="1.3", config_path=HYDRA_CONFIG_PATH, config_name="mqar/config")(run_mqar)()


def cmd_mqar(argv: list[str]) -> None:
    config_dir()
    check_group_overrides(argv)
    sys.argv = ["lifelong mqar", *argv]
    _run_mqar_app()


def cmd_mqar_report(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lifelong mqar-report",
                                     description="Figures and a table from the MQAR runs (results.json) under DIR.")
    parser.add_argument("dir", type=Path, help="a folder holding MQAR runs (searched recursively)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the figures and tables (default: DIR)")
    args = parser.parse_args(argv)
    from lifelong.mqar.report import ReportError, write_report

    try:
        report = write_report(args.dir, args.out)
    except ReportError as error:
        fail(str(error))
    console.print(report["markdown"], highlight=False, soft_wrap=True)
    console.print(f"{report['runs']} runs in {report['groups']} groups", highlight=False)
    if report["skipped"]:
        console.print(f"skipped (unreadable): {', '.join(report['skipped'])}", highlight=False, soft_wrap=True)
    for figure in report["figures"]:
        console.print(f"figure: [bold]{figure}[/]", highlight=False, soft_wrap=True)
    console.print(f"table:  {report['table']}, {report['csv']}", highlight=False, soft_wrap=True)


COMMANDS = {
    "run": cmd_run,
    "resume": cmd_resume,
    "compare": cmd_compare,
    "tensorboard": cmd_tensorboard,
    "streams": cmd_streams,
    "mixers": cmd_mixers,
    "mqar": cmd_mqar,
    "mqar-report": cmd_mqar_report,
}


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      line: str | None = None) -> str:
    return f"lifelong: warning: {message}\n"


def main(argv: list[str] | None = None) -> None:
    warnings.formatwarning = _one_line_warning  # a warning is one line for the user, like an error
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        console.print(USAGE, highlight=False)
        return
    if argv[0] in ("-V", "--version"):
        console.print(f"lifelong {__version__}", highlight=False)
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        fail(f"unknown command {command!r}: choose one of {', '.join(COMMANDS)}")
    try:
        COMMANDS[command](rest)
    except ConfigFilesMissing as error:
        fail(str(error))


if __name__ == "__main__":
    main()
