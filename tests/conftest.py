import os
import tempfile

import pytest
import torch

from slimkit import int8_speed

# Small, deterministic CPU runs; keep BLAS from oversubscribing the 2 CI cores.
torch.set_num_threads(min(2, os.cpu_count() or 1))

# Plans in tests must not depend on timing this machine: `--round-to auto` takes the runtime's
# documented multiple and prune skips its latency comparison (tests/test_rounding.py turns timing
# back on where timing is what is tested). Nothing is cached in the user's home.
os.environ["SLIMKIT_NO_TIMING"] = "1"
os.environ["SLIMKIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="slimkit-test-cache-")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _fixed_simd_block():
    """The documented multiple depends on the CPU (16 on AVX-512, 8 on AVX2): pin 8 so widths asserted
    in tests are the same on every machine. Session-scoped, so module-scoped fixtures that prune see
    it too (a function-scoped pin came after them: test_latency's pair failed on an AVX-512 CPU)."""
    import slimkit.rounding as rounding

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rounding, "_simd_block", lambda: (8, "pinned to 8 for tests"))
        yield


@pytest.fixture(autouse=True, scope="session")
def _int8_speed_cache(tmp_path_factory):
    """int8 configuration timings go to a session folder, not the user's ~/.cache (and are measured once
    per model structure for the whole test session, as they are once per machine for a user)."""
    int8_speed.CACHE_FILE = tmp_path_factory.mktemp("cache") / "int8_speed.json"
    yield
