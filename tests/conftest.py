import os

import pytest
import torch

from slimkit import int8_speed

# Small, deterministic CPU runs; keep BLAS from oversubscribing the 2 CI cores.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _int8_speed_cache(tmp_path_factory):
    """int8 configuration timings go to a session folder, not the user's ~/.cache (and are measured once
    per model structure for the whole test session, as they are once per machine for a user)."""
    int8_speed.CACHE_FILE = tmp_path_factory.mktemp("cache") / "int8_speed.json"
    yield
