"""Suite-wide settings: one CPU thread per process.

The models in the tests are tiny, so a second thread buys little, and on a 2-core machine the
tests that launch 2 processes (or run beside a server) would oversubscribe the cores; OpenMP
threads spinning against each other made runs up to ten times slower here. Subprocesses inherit
the variable.
"""

import os

os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402  (after the variable, so torch's pool is created with it)

torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def task():
    """The built-in reviews task (seed 0), shared by the tests that need its text or gold reward."""
    from rlhfkit.tasks import get_task

    return get_task("reviews", seed=0)
