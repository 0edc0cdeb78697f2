"""The bench scripts run, return their documented keys, and print one JSON object.

Tiny settings only: these check the scripts, not the speed (the numbers come from
running the scripts themselves). Each script runs once, as its CLI in a child process
(both at once, so that their compilations overlap on the two cores); the CLI prints
what ``run()`` returns, so its JSON is what the tests check.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"

LOPT_KEYS = (
    "num_params",
    "lo_update_ms",
    "adam_update_ms",
    "fwd_bwd_ms",
    "fwd_bwd_4096_ms",
    "matmul_equiv_ms",
    "lo_over_matmul",
    "lo_over_fwd_bwd_4096",
    "lo_over_adam",
)
ENV_KEYS = ("core_steps_per_s", "vector_env_steps_per_s", "elo_over_naive_cost")

# Tiny settings of each script's CLI.
CLI_FLAGS = {
    "bench_lopt": [
        "--hidden-sizes",
        "8",
        "--repeats",
        "2",
        "--warmup",
        "1",
        "--large-batch-size",
        "256",
    ],
    "bench_env": [
        "--num-envs",
        "2",
        "--repeats",
        "2",
        "--warmup",
        "1",
        "--scan-steps",
        "3",
    ],
}


def _load(name: str) -> ModuleType:
    """Imports scripts/<name>.py by path (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        f"_{name}_under_test", SCRIPTS / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=SCRIPTS.parent,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _result(proc: subprocess.Popen) -> dict:
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    return json.loads(stdout)  # all of stdout: one JSON object and nothing else


@pytest.fixture(scope="module")
def run_procs() -> Iterator[dict[str, subprocess.Popen]]:
    """Both scripts' CLIs at once: the compilations overlap on the two cores."""
    procs = {
        name: _start([f"scripts/{name}.py", *flags])
        for name, flags in CLI_FLAGS.items()
    }
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _check_numbers(result: dict, keys: tuple[str, ...]) -> None:
    for key in keys:
        value = result[key]
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, (
            key,
            value,
        )


def test_bench_lopt_run(run_procs):
    result = _result(run_procs["bench_lopt"])
    _check_numbers(result, LOPT_KEYS)
    # 3072*8 + 8 + 8*1000 + 1000 parameters.
    assert result["num_params"] == 33_584
    # P = 16 * 2099 has no square-ish exact factorization: a near cube stands in.
    assert abs(result["matmul_equiv_flops"] / result["lo_mlp_flops"] - 1) < 0.01
    assert result["repeats"]["lo_update"] == 2


def test_bench_env_run(run_procs):
    result = _result(run_procs["bench_env"])
    _check_numbers(result, ENV_KEYS)
    assert set(result["core_s_per_vector_step"]) == {
        "elo",
        "naive",
        "elo_equal_lengths",
        "naive_equal_lengths",
    }
    assert result["elo_over_naive_cost_equal_lengths"] > 0
    assert result["steps_are"].startswith("optimizee copy-steps")
    assert result["num_envs"] == 2 and result["repeats"]["core_elo"] == 2


def test_matmul_shape_matches_flops():
    bench = _load("bench_lopt")
    macs = 538_856 * (39 * 32 + 32 * 32 + 32 * 2)  # the default ImageNet-32 MLP
    m, k, n = bench.matmul_shape(macs)
    assert m * k * n == macs and max(m, k, n) / min(m, k, n) <= 4
    m, k, n = bench.matmul_shape(1_000_003 * 73)  # a prime P: a near cube stands in
    assert abs(m * k * n / (1_000_003 * 73) - 1) < 0.01


@pytest.mark.slow
def test_bench_pes_run():
    """Tiny setting (1 pair, truncation 2): every program compiles, runs and is timed;
    the ratios are those of the medians it reports."""
    result = _load("bench_pes").run(repeats=1, num_pairs=1, truncation=2)
    keys = (
        "s_per_outer_step_elo",
        "s_per_outer_step_naive",
        "s_per_outer_step_no_lo",
        "optimizee_floor_s",
        "elo_over_floor",
        "no_lo_over_floor",
        "s_per_outer_step_tbptt",
        "tbptt_over_elo",
        "temp_mb_elo",
        "temp_mb_tbptt",
    )
    _check_numbers(result, keys)
    ratio = result["s_per_outer_step_tbptt"] / result["s_per_outer_step_elo"]
    assert abs(result["tbptt_over_elo"] / ratio - 1) < 0.01
    ratio = result["s_per_outer_step_elo"] / result["optimizee_floor_s"]
    assert abs(result["elo_over_floor"] / ratio - 1) < 0.01
    share = 1 - result["s_per_outer_step_no_lo"] / result["s_per_outer_step_elo"]
    assert abs(result["lo_share_of_elo"] - share) < 0.01
    assert result["setting"].endswith("4 optimizee steps/outer step")
