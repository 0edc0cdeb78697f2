"""scripts/pes_signal.py: the agreement of PES estimates, and its JSON at tiny size."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "pes_signal.py"


@pytest.fixture(scope="module")
def pes_signal():
    spec = importlib.util.spec_from_file_location("pes_signal", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_agreement_of_signal_noise_and_alternation(pes_signal):
    rng = np.random.default_rng(0)
    signal = rng.normal(size=500)
    same = np.tile(signal, (8, 1))
    assert pes_signal.agreement(same) == pytest.approx({"1": 1.0, "2": 1.0, "4": 1.0})
    # Signal under noise 3x its size: cosine about 1 / (1 + 9 / k) for blocks of k.
    noisy = signal + 3.0 * rng.normal(size=(64, 500))
    got = pes_signal.agreement(noisy)
    assert list(got) == ["1", "2", "4", "8", "16", "32"]
    assert got["1"] < 0.2 and got["32"] > 0.6
    # A direction that flips at every step: neighbours disagree, pairs cancel.
    flips = signal * np.array([1.0, -1.0] * 4)[:, None]
    assert pes_signal.agreement(flips)["1"] == pytest.approx(-1.0)


def test_tiny_run_reports_its_documented_keys(pes_signal, capsys):
    tiny = "--num-pairs 2 --truncation 4 --n-min 2 --n-max 6 --hidden-sizes 10"
    tiny += " --batch-size 32 --hidden-size 8 --outer-steps 10 --clone-steps 2"
    result = pes_signal.main(
        ["--estimates", "4", "--val-seeds", "2", "--moves", "0.01", *tiny.split()]
    )
    # The cpu preset: its LO starts as a clone, held by behavior cloning (alpha 0).
    assert (result["at_step"], result["alpha"], result["n_max"]) == (9, 0.0, 6)
    assert result["num_weights"] == 410  # the LO's MLP of hidden size 8
    assert set(result["agreement"]) == {"1", "2"}
    assert set(result["along_mean"]) == {"descent_0.01", "random_0.01"}
    for moved in result["along_mean"].values():
        assert np.isfinite(moved["diff_mean"]) and moved["diff_std"] >= 0.0
        assert np.isfinite(moved["train_diff_mean"]) and moved["train_diff_std"] >= 0.0
    assert set(result["start_train_loss"]) == {"mean", "std"}
    assert '"agreement"' in capsys.readouterr().out
