"""Shared fixtures."""

import os

import numpy as np
import pytest

# torch defaults to every core; keep CI (2 cores) predictable
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
