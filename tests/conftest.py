"""Test-wide settings: Triton runs under its CPU interpreter, torch on one thread.

TRITON_INTERPRET must be set before any module defining ``@triton.jit`` kernels is imported;
``backend="auto"`` still takes the torch path for CPU tensors, so only tests that ask for
``backend="triton"`` run the kernels.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
