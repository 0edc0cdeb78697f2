"""scripts/learned_part.py: an LO against its silenced self, seed by seed."""

import json
import math
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from elo_gym import checkpoint, lopt
from elo_gym.lo_features import silenced_output
from elo_gym.lo_spec import LOSpec

sys.path.insert(0, os.fspath(pathlib.Path(__file__).resolve().parents[2] / "scripts"))
import learned_part  # noqa: E402

# The cpu preset's kind of LO: a nominal term (Adam, warmup + cosine) plus the MLP.
SPEC = LOSpec(
    adam_scaled_step=True,
    nominal_lr=0.02,
    time_horizon=200.0,
    nominal_schedule="cosine",
)
SMALL = ["--steps", "40", "--seeds", "2", "--family", "8:tanh", "--no-progress"]


def _save(path: pathlib.Path, meta) -> str:
    path.mkdir()
    checkpoint.save_lo(path, meta, SPEC)
    return str(path)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """A silenced LO and a random one (a learned part that moves every step)."""
    root = tmp_path_factory.mktemp("los")
    meta = lopt.init_meta_params(jax.random.PRNGKey(0), SPEC.hidden_size)
    # Output weights 100x the init's, so that the learned step is as large as the
    # nominal term's rather than 1e-3 of it.
    mlp = dict(meta.mlp)
    last = f"Dense_{len(mlp) - 1}"
    mlp[last] = jax.tree.map(lambda w: 100.0 * w, mlp[last])
    loud = lopt.MetaParams(mlp=mlp)
    # The loud LO first: silenced runs built from the first LO's weights (not zeros)
    # would show no effect for it.
    los = {
        "loud": _save(root / "loud", loud),
        "quiet": _save(root / "quiet", silenced_output(meta)),
    }
    out = root / "part.json"
    argv = [f"--lo={k}={v}" for k, v in los.items()] + SMALL + ["--out", str(out)]
    result = learned_part.main(argv)
    return result, json.loads(out.read_text())


def test_an_lo_whose_output_is_zero_equals_its_silenced_self_on_every_seed(measured):
    result, _ = measured
    quiet = result["families"]["8:tanh"]["quiet"]
    for metric in learned_part.EFFECTS:
        # Same seeds, same data, same update: the runs are identical, not just close.
        assert quiet[metric]["minus_silenced"] == 0.0
        assert quiet[metric]["std"] == 0.0
        assert quiet[metric]["lo"] == quiet[metric]["silenced"] > 0
    # 40 Adam steps lift a 10-class net's validation accuracy above chance, not to 1.
    assert 0.1 < quiet["valid_accuracy"]["silenced"] < 1.0
    growth = quiet["param_norm_ratio"]
    assert growth["lo"] == growth["silenced"]
    assert quiet["per_seed"]["lo"] == quiet["per_seed"]["silenced"]


def test_every_seeds_values_are_kept_so_two_los_can_be_paired_afterwards(measured):
    _, saved = measured
    rows = saved["families"]["8:tanh"]
    loud, quiet = rows["loud"], rows["quiet"]
    for metric in learned_part.EFFECTS:
        lo = np.asarray(loud["per_seed"]["lo"][metric])
        silenced = np.asarray(loud["per_seed"]["silenced"][metric])
        assert lo.shape == (2,)
        assert lo.mean() == pytest.approx(loud[metric]["lo"])
        assert (lo - silenced).std() == pytest.approx(loud[metric]["std"])
        # The silenced runs are the same seeds' for both LOs, so loud minus quiet,
        # seed by seed, is loud's effect over the quiet LO's (here its silenced self).
        assert quiet["per_seed"]["lo"][metric] == silenced.tolist()
    assert np.mean(loud["per_seed"]["lo"]["param_norm_ratio"]) == pytest.approx(
        loud["param_norm_ratio"]["lo"]
    )


def test_a_learned_part_that_moves_the_update_is_measured_against_the_silenced_runs(
    measured,
):
    result, saved = measured
    rows = result["families"]["8:tanh"]
    loud, quiet = rows["loud"]["train_loss"], rows["quiet"]["train_loss"]
    # Both LOs have one spec, so one set of silenced runs serves them.
    assert loud["silenced"] == quiet["silenced"]
    assert loud["minus_silenced"] != 0.0
    assert loud["minus_silenced"] == pytest.approx(loud["lo"] - loud["silenced"])
    assert loud["percent"] == pytest.approx(
        100 * loud["minus_silenced"] / loud["silenced"]
    )
    assert loud["stderr"] == pytest.approx(loud["std"] / jnp.sqrt(2.0))
    # Weight growth is the end's norm over the start's: Adam at lr 0.02 grows a fresh
    # net's weights, and a learned step as large as the nominal one, in directions of
    # its own, grows them further.
    growth = rows["loud"]["param_norm_ratio"]
    assert growth["silenced"] == rows["quiet"]["param_norm_ratio"]["silenced"]
    assert 1.0 < growth["silenced"] < growth["lo"]
    assert (
        f"{growth['lo']:.2f}x / {growth['silenced']:.2f}x"
        in learned_part.table_markdown(result)
    )
    assert saved["config"]["family"] == ["8:tanh"]
    assert saved["families"] == json.loads(json.dumps(result["families"]))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lo", "no-label"], "expected LABEL=PATH"),
        (["--lo", "x=/nonexistent/run"], "no learned optimizer at"),
        (["--lo", "x={run}", "--family", "0-8:tanh"], "positive widths"),
        (["--lo", "x={run}", "--seeds", "1"], "--seeds >= 2"),
    ],
)
def test_bad_input_exits_2_and_says_what_to_do(tmp_path, capsys, args, message):
    meta = lopt.init_meta_params(jax.random.PRNGKey(0), SPEC.hidden_size)
    run = _save(tmp_path / "run", meta)
    argv = [a.format(run=run) for a in args] + ["--out", str(tmp_path / "o.json")]
    with pytest.raises(SystemExit) as exit_info:
        learned_part.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_diverged_run_scores_inf_on_its_own_side():
    """A seed where the silenced run diverged makes the LO look better (-inf), one
    where the LO diverged worse (+inf); never NaN, which strict JSON lacks."""
    finite = {
        "train_loss": [0.1, 0.2],
        "valid_loss": [0.3, 0.4],
        "valid_accuracy": [0.9, 0.8],
        "param_norm_ratio": [2.0, 3.0],
    }
    broken = {
        "train_loss": [0.1, float("nan")],
        "valid_loss": [float("inf"), 0.4],
        "valid_accuracy": [0.1, 0.8],
        "param_norm_ratio": [2.0, float("nan")],
    }
    as_arrays = lambda d: {k: np.asarray(v) for k, v in d.items()}  # noqa: E731
    silenced_diverged = learned_part.paired(as_arrays(finite), as_arrays(broken))
    lo_diverged = learned_part.paired(as_arrays(broken), as_arrays(finite))
    for metric in ("train_loss", "valid_loss"):
        assert silenced_diverged[metric]["minus_silenced"] == -math.inf
        assert lo_diverged[metric]["minus_silenced"] == math.inf
    assert silenced_diverged["param_norm_ratio"] == {"lo": 2.5, "silenced": math.inf}
    assert lo_diverged["param_norm_ratio"] == {"lo": math.inf, "silenced": 2.5}
    both = learned_part.paired(as_arrays(broken), as_arrays(broken))
    assert all(not math.isnan(v) for v in both["train_loss"].values())
