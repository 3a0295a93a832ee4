"""Shared fixtures: where the golden vectors computed by the official implementations live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# The folder of golden vectors: $RECCE_REFERENCE_DIR, else ../shared/reference beside the repository.
# scripts/make_recce_golden.py makes the RECCE file from a checkout of the official code.
REFERENCE_ENV = "RECCE_REFERENCE_DIR"
REFERENCE_DIR = Path(os.environ.get(REFERENCE_ENV) or Path(__file__).resolve().parents[2] / "shared" / "reference")


def require_reference(path: Path) -> Path:
    """`path`, or skip the test saying where the golden vectors are looked for and how to make them."""
    if not path.exists():
        pytest.skip(
            f"golden vectors not available: {path} is absent (set {REFERENCE_ENV} to their folder, default "
            "../shared/reference beside the repository; scripts/make_recce_golden.py makes the RECCE file)"
        )
    return path


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return require_reference(REFERENCE_DIR)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """On two shared CPU cores, one intra-op thread is faster than two contending ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
