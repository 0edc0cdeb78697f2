"""scripts/bench_torch_lopt.py runs at a tiny size and prints its documented JSON."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_torch_lopt.py"


def test_cli_prints_one_json_object_with_the_ratios(capsys):
    spec = importlib.util.spec_from_file_location("_bench_torch_lopt", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        # One torch thread: on busy shared cores, a second one spins at barriers.
        bench.main(
            ["--hidden-sizes", "8", "--repeats", "2", "--warmup", "1"]
            + ["--torch-threads", "1"]
        )
    finally:
        torch.set_num_threads(threads)
    result = json.loads(capsys.readouterr().out)  # all of stdout: one JSON object
    # 3072*8 + 8 + 8*1000 + 1000 parameters; the default is 538,856.
    assert result["num_params"] == 33_584
    assert sum(math.prod(s) for s in bench.mlp_shapes((128, 128))) == 538_856
    names = ("torch_lo_step", "torch_adam_step", "jax_lo_update")
    ms = {name: result[f"{name}_ms"] for name in names}
    assert all(math.isfinite(v) and v > 0 for v in ms.values())
    for ratio, (a, b) in {
        "torch_over_jax": ("torch_lo_step", "jax_lo_update"),
        "torch_over_adam": ("torch_lo_step", "torch_adam_step"),
    }.items():
        assert abs(result[ratio] - ms[a] / ms[b]) <= 1e-3 * result[ratio] + 1e-3
    assert result["repeats"] == {name: 2 for name in ms}
    assert result["torch_threads"] == 1
