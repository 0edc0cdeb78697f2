"""The README's main job delivers ELO's result (slow: about 5 minutes on 2 cores).

``python agents/pes_train.py`` with its defaults, then its LO in a plain optax loop at
10x the horizon on 3 fresh optimizee seeds, against Adam at each of the paper's 7 lrs:
on digits (the meta-training task) and on the held-out MLP family no LO saw
(``scripts/reproduce.py``'s ``HELDOUT``), the LO's final training loss is at most the
best-lr Adam's, and its parameters grow no faster than Adam's do.

``ELO_GYM_MAIN_RUN=<run dir>`` checks an existing run instead of training one.
"""

import importlib.util
import os
import pathlib
import sys

import numpy as np
import pytest

from elo_gym import evaluation
from elo_gym.agents import pes_train

SCRIPTS = pathlib.Path(__file__).resolve().parents[1] / "scripts"


def _load(name: str):
    sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(
        f"_{name}_main_job", SCRIPTS / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def main_run(tmp_path_factory) -> pathlib.Path:
    given = os.environ.get("ELO_GYM_MAIN_RUN")
    if given:
        return pathlib.Path(given)
    run_dir = tmp_path_factory.mktemp("main") / "run"
    return pes_train.main(pes_train.make_args(run_dir=str(run_dir), progress=False))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["digits", "heldout"])
def test_main_job_keeps_improving_at_10x(main_run, tmp_path, family):
    reproduce = _load("reproduce")
    task = reproduce.HELDOUT if family == "heldout" else {}
    config = evaluation.EvalConfig(
        los=(("elo", str(main_run)),), seeds=3, progress=False, **task
    )
    result = evaluation.run(config, tmp_path / family)
    lo = result["final"]["elo"]
    best_adam = min(
        (c for c in result["curves"]["AdamW"].values()),
        key=lambda c: np.mean(np.asarray(c["train_loss"], float)[:, -40:]),
    )
    adam_train = float(np.mean(np.asarray(best_adam["train_loss"], float)[:, -40:]))
    assert lo["train_loss"]["mean"] <= adam_train, (lo["train_loss"], adam_train)
    growth = lo["param_norm"]["mean"] / lo["param_norm_first"]["mean"]
    adamw = result["final"]["AdamW"]
    adam_growth = adamw["param_norm"]["mean"] / adamw["param_norm_first"]["mean"]
    assert growth <= 2 * adam_growth, (growth, adam_growth)
