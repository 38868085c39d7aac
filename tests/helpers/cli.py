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
