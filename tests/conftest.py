"""Shared test settings: a derandomised hypothesis profile and the shared-data locator."""

import gc
import os
from pathlib import Path

import jax
import pytest
from hypothesis import settings

# LiteLLM reads its bundled price list instead of fetching the remote one (tests run offline).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# The command line and the LiteLLM plugin keep compiled kernels in a persistent cache; the suite
# compiles about 20,000 and must not write them into the user's cache folder (tests that check the
# cache give it a folder of their own).
os.environ.setdefault("UNIROUTE_COMPILATION_CACHE", "0")

settings.register_profile("ci", deadline=None, derandomize=True, database=None, max_examples=25)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

SHARED_DATA = Path(os.environ.get("UNIROUTE_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared routing data not found at {SHARED_DATA} (set UNIROUTE_DATA to its folder)")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_kernels():
    """Drop each test module's compiled kernels when it ends.

    XLA's CPU client maps three memory regions per compiled executable, and a process may hold at
    most `vm.max_map_count` of them (65,530 by default). The whole suite compiles about 20,000
    executables, so in one process it would run out of mappings and crash inside a compile.
    """
    yield
    jax.clear_caches()
    gc.collect()
