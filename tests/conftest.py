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
# Compiles, not runs, dominate too, and two XLA CPU flags shorten them: LLVM's backend
# at -O0 (the ResNet-18 env step: 98 s -> 52 s with a cold cache) and the loop emitters
# instead of the MLIR fusion emitters (tests/elo_gym/test_core.py, one process, cold:
# 92 s -> 53 s of CPU). No fast-math either way, but rounding can differ in the last
# bits from the default build, so a child process whose numbers a test compares must
# keep these flags (children inherit them by default).
_FAST_COMPILE = {
    "xla_backend_optimization_level": "0",
    "xla_cpu_use_fusion_emitters": "false",
}
_flags = os.environ.get("XLA_FLAGS", "")
for _name, _value in _FAST_COMPILE.items():
    if _name not in _flags:
        _flags += f" --{_name}={_value}"
os.environ["XLA_FLAGS"] = _flags.strip()
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
