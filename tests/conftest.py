"""Test-session settings shared by every test module."""

import os
import pathlib
import tempfile

import jax
import pytest

# XLA compiles dominate this suite's time, and many tests (and the subprocesses some of
# them start) compile the same programs: share them through JAX's persistent cache.
_CACHE = pathlib.Path(tempfile.gettempdir()) / "elo_gym_test_jax_cache"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# Compiles, not runs, dominate too: LLVM's backend at -O0 halves the slowest compiles
# (the ResNet-18 env step: 98 s -> 52 s with a cold cache). No fast-math either way,
# but rounding can differ in the last bits from an -O3 build, so a child process whose
# numbers a test compares must keep these flags (children inherit them by default).
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(scope="session")
def real_text_files() -> list[str]:
    """Real English text that ships with an installed package (offline): the
    descriptions of scikit-learn's bundled datasets, about 47 kB of reStructuredText."""
    import sklearn

    descr = pathlib.Path(sklearn.__file__).parent / "datasets" / "descr"
    return [str(p) for p in sorted(descr.glob("*.rst"))]
