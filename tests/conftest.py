"""Shared test set-up: deterministic, small, CPU-only."""
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("PL_DISABLE_FORK", "1")


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_intra_op_thread():
    """One intra-op thread for a module of tiny models: on the shared, oversubscribed 2-core test
    machine OpenMP spin-waiting makes two-thread kernels on such small tensors many times slower.
    Use with ``pytestmark = pytest.mark.usefixtures("one_intra_op_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def repo_root() -> Path:
    return ROOT
