"""Running the ``lifelong`` console script as a user does, for the end-to-end tests."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

#: the console script of the venv running the tests
LIFELONG = shutil.which("lifelong") or str(Path(sys.executable).parent / "lifelong")


def lifelong(*args: str, cwd: Path, timeout: float = 600, full_error: bool = False) -> subprocess.CompletedProcess:
    """Run ``lifelong *args`` in ``cwd`` on one CPU thread, on the torch path (no ``TRITON_INTERPRET``),
    capturing text output; ``full_error`` asks Hydra for full tracebacks (``HYDRA_FULL_ERROR=1``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1" if full_error else "0"}
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run([LIFELONG, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


#: overrides that keep a test lifetime's probes cheap: 2 episodes per probe, no switch replay, fewer
#: bootstrap resamples, DoorKey episodes of at most 20 steps (the smoke stream's tasks)
CHEAP_PROBES = (
    "tracker.probe_episodes=2", "tracker.curve_probe_episodes=2", "tracker.bootstrap_samples=200",
    "tracker.replay_episodes=null",
    "+stream.tasks.doorkey.env_kwargs={max_steps:20}", "+stream.tasks.doorkey-permuted.env_kwargs={max_steps:20}",
)
