"""scripts/sweep_demonstrator.py: the expert Adam over a grid of lr and decay."""

import json
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

sys.path.insert(0, os.fspath(pathlib.Path(__file__).resolve().parents[2] / "scripts"))
import sweep_demonstrator  # noqa: E402

from elo_gym import evaluation  # noqa: E402
from elo_gym.inner_loop import train_curves  # noqa: E402

TINY = dict(hidden_sizes=(8,), steps=20, eval_every=5, seeds=1, progress=False)


def test_rows_are_the_decayed_adam_runs(tmp_path):
    """Each row is Adam at lr, decayed as lr / sqrt(1 + n / tau), trained here by
    hand on the same seed: the grid runs the schedule it names."""
    out = tmp_path / "sweep.json"
    config = sweep_demonstrator.SweepConfig(
        lrs=(0.01,), decay_steps=(0.0, 5.0), out=str(out), **TINY
    )
    sweep_demonstrator.main(
        [
            "--lrs",
            "0.01",
            "--decay-steps",
            "0",
            "5",
            "--out",
            str(out),
            "--hidden-sizes",
            "8",
            "--steps",
            "20",
            "--eval-every",
            "5",
            "--seeds",
            "1",
            "--no-progress",
        ]
    )
    result = json.loads(out.read_text())
    assert result["config"] == json.loads(json.dumps(config.__dict__))
    task = evaluation.make_task("ELO-Digits-MLP", hidden_sizes=(8,))
    data = task.load_data()
    schedules = {0.0: 0.01, 5.0: lambda n: 0.01 / jnp.sqrt(1.0 + n / 5.0)}
    for row in result["rows"]:
        curves = train_curves(
            task,
            optax.adam(schedules[row["decay_steps"]]),
            data,
            jax.random.PRNGKey(0),
            steps=20,
            eval_every=5,
        )
        want = float(np.mean(curves["train_loss"][-5:]))
        np.testing.assert_allclose(row["train_loss"]["mean"], want, rtol=1e-5)
        np.testing.assert_allclose(
            row["valid_loss"]["mean"], float(curves["valid_loss"][-1]), rtol=1e-5
        )
    losses = [row["train_loss"]["mean"] for row in result["rows"]]
    assert losses[0] != losses[1]  # the decay changed the run
    best = min(result["rows"], key=lambda r: r["valid_loss"]["mean"])
    assert result["best_by_valid_loss"] == {
        "lr": best["lr"],
        "decay_steps": best["decay_steps"],
    }


def test_bad_grid_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        sweep_demonstrator.main(
            ["--lrs", "0.01", "--decay-steps", "-1", "--no-progress"]
        )
    assert e.value.code == 2
    assert "decay_steps must be >= 0" in capsys.readouterr().err
