"""Online BC agent: runs, resumes exactly, loads as optax, rejects bad input."""

import dataclasses
import json
import shutil
import subprocess
import sys

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import elo_gym
from elo_gym import checkpoint, lopt
from elo_gym.agents import bc_train
from elo_gym.lo_spec import LOSpec

# Tiny but complete: 2 copies, a 10-unit optimizee, short chunks, a checkpoint every 2.
TINY = dict(
    num_copies=2,
    chunk=4,
    rows_per_step=16,
    num_minibatches=2,
    outer_steps=4,
    n_min=2,
    n_max=6,
    hidden_sizes=(10,),
    batch_size=32,
    lo=LOSpec(hidden_size=8),
    checkpoint_every=2,
    progress=False,
)


def _lo_arrays(run_dir):
    meta, _ = checkpoint.load_meta_params(run_dir)
    return jax.tree.leaves(flax.serialization.to_state_dict(meta))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("bc") / "run"
    bc_train.main(bc_train.Args(run_dir=str(run_dir), **TINY))
    return run_dir


def test_run_directory_contents(reference_run):
    config = json.loads((reference_run / "config.json").read_text())
    assert config["agent"] == "bc" and config["outer_steps"] == 4
    lines = (reference_run / "metrics.csv").read_text().strip().splitlines()
    assert tuple(lines[0].split(",")) == bc_train.METRICS
    rows = [dict(zip(bc_train.METRICS, ln.split(","), strict=True)) for ln in lines[1:]]
    assert [int(r["outer_step"]) for r in rows] == [0, 1, 2, 3]
    # beta_anneal 0.5 of 4 steps: 1, 0.5, then the learner alone.
    assert [float(r["beta"]) for r in rows] == [1.0, 0.5, 0.0, 0.0]
    assert float(rows[0]["learner_fraction"]) == 0.0
    assert float(rows[-1]["learner_fraction"]) == 1.0
    assert all(np.isfinite(float(r["bc_loss"])) for r in rows)
    assert (reference_run / "lo.msgpack").is_file()


def test_load_optimizer_gives_finite_updates(reference_run):
    opt = elo_gym.load_optimizer(reference_run)
    params = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}
    grads = jax.tree.map(lambda x: 0.1 * jnp.ones_like(x), params)
    updates, _ = jax.jit(opt.update)(grads, opt.init(params), params)
    assert all(np.all(np.isfinite(u)) for u in jax.tree.leaves(updates))
    # The BC-trained MLP moved away from its initialization.
    meta, _ = checkpoint.load_meta_params(reference_run)
    init = lopt.init_meta_params(jax.random.split(jax.random.PRNGKey(0), 3)[1], 8)
    assert not np.allclose(meta.mlp["Dense_0"]["kernel"], init.mlp["Dense_0"]["kernel"])


def test_resume_from_checkpoint_is_exact(reference_run, tmp_path):
    run_dir = tmp_path / "resumed"
    shutil.copytree(reference_run, run_dir)
    # As if killed after the checkpoint at step 2.
    shutil.rmtree(run_dir / "checkpoints" / "4")
    (run_dir / "lo.msgpack").unlink()
    bc_train.main(bc_train.Args(run_dir=str(run_dir), **TINY))
    for a, b in zip(_lo_arrays(reference_run), _lo_arrays(run_dir), strict=True):
        np.testing.assert_array_equal(a, b)
    rows = (run_dir / "metrics.csv").read_text().strip().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [0, 1, 2, 3]


def test_bc_loss_units_and_nan_rows():
    meta = lopt.init_meta_params(jax.random.PRNGKey(0), 8)
    obs = jax.random.normal(jax.random.PRNGKey(1), (5, 39))
    pred = lopt.apply_mlp(meta.mlp, obs)
    loss, rel = bc_train.bc_loss(meta.mlp, obs, pred, lopt.EXP_MULT)
    assert float(loss) == pytest.approx(0.0, abs=1e-10) and float(rel) < 1e-6
    shifted = pred.at[:, 0].add(2.0)  # expert step 2 step_mults away on every row
    assert float(bc_train.bc_loss(meta.mlp, obs, shifted, lopt.EXP_MULT)[0]) == (
        pytest.approx(4.0, rel=1e-2)
    )
    bad = shifted.at[0].set(jnp.nan)
    assert float(bc_train.bc_loss(meta.mlp, obs, bad, lopt.EXP_MULT)[0]) == (
        pytest.approx(4.0, rel=1e-2)
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(env="ELO-Nope"), "unknown env"),
        (dict(num_minibatches=3), "multiple of num_minibatches"),
        (dict(p_th=1.5), "p_th must be in"),
        (dict(n_min=9, n_max=6), "n_min"),
    ],
)
def test_bad_input_is_rejected_before_anything_is_written(tmp_path, change, message):
    run_dir = tmp_path / "bad"
    with pytest.raises(ValueError, match=message):
        bc_train.main(bc_train.Args(run_dir=str(run_dir), **{**TINY, **change}))
    assert not run_dir.exists()


def test_cli_smoke(tmp_path):
    run_dir = tmp_path / "cli"
    flags = [
        "--run-dir", str(run_dir), "--outer-steps", "2", "--num-copies", "2",
        "--chunk", "4", "--rows-per-step", "16", "--num-minibatches", "2",
        "--n-min", "2", "--n-max", "6", "--hidden-sizes", "10", "--batch-size", "32",
        "--hidden-size", "8", "--mix", "row", "--no-progress",
    ]  # fmt: skip
    out = subprocess.run(
        [sys.executable, bc_train.__file__, *flags],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "run directory" in out.stdout
    assert (run_dir / "lo.msgpack").is_file()


def test_clones_the_given_expert_with_the_given_features(tmp_path):
    """``--expert-lr``, ``--raw-adam-ratio``, ``--adam-scaled-step`` and the nominal
    term reach the env the LO is cloned in, and the saved LO records its settings, so
    every face loads it with them."""
    args = bc_train.Args(
        **{k: v for k, v in TINY.items() if k != "lo"},
        expert_lr=4e-3,
        lo=LOSpec(
            hidden_size=8,
            raw_adam_ratio=True,
            adam_scaled_step=True,
            nominal_lr=4e-3,
            nominal_decay_steps=50.0,
        ),
    )
    cfg = bc_train.env_settings(args).config(args.num_copies)
    assert cfg.expert_learning_rate == 4e-3 and cfg.lo.raw_adam_ratio
    assert cfg.lo.adam_scaled_step
    assert (cfg.lo.nominal_lr, cfg.lo.nominal_decay_steps) == (4e-3, 50.0)
    bc_train.main(dataclasses.replace(args, run_dir=str(tmp_path / "run")))
    info = json.loads((tmp_path / "run" / "lo.json").read_text())
    assert info["raw_adam_ratio"] is True and info["adam_scaled_step"] is True
    _, loaded = checkpoint.load_meta_params(tmp_path / "run")
    spec = LOSpec.from_json(loaded)
    assert spec.raw_adam_ratio is True and spec.adam_scaled_step is True
    assert (spec.nominal_lr, spec.nominal_decay_steps) == (4e-3, 50.0)
    assert spec == args.lo


def test_mixture_clones_on_the_rows_of_every_task():
    """``--mixture``: each task rolls its own copies (its own shapes, its own data)
    every outer step, and the regression sees the rows of all of them, a mixture
    task's being exactly its own rollout's."""
    teacher = "ELO-Teacher-MLP:hidden_sizes=8,input_dim=6"
    args = bc_train.Args(**TINY, mixture=("12:gelu", teacher))
    settings = bc_train.env_settings(args)
    cfg = bc_train.bc_config(args, settings)
    assert (cfg.mixture[0].task.hidden_sizes, cfg.mixture[0].task.activation) == (
        (12,),
        "gelu",
    )
    params = bc_train.load_task_params(args, settings, cfg)
    assert params[2].data.valid[0].shape[1:] == (6,)  # the teacher's own data
    state = bc_train.init_state(args, cfg, params)
    first_layer = jax.tree.leaves(state.mixture[0].copies.params)
    assert (2, 12) in {x.shape for x in first_layer}  # (copies, 12) biases
    beta, row_mix, key = jnp.float32(1.0), jnp.bool_(False), jax.random.PRNGKey(3)
    states, rows, _ = bc_train.rollout_tasks(
        cfg, state.meta.mlp, (state.env, *state.mixture), beta, row_mix, key, params
    )
    per_task = args.chunk * args.num_copies * args.rows_per_step
    assert rows["obs"].shape == (3 * per_task, lopt.NUM_FEATURES)
    for i in (1, 2):
        _, mixture_rows, _ = bc_train.rollout(
            cfg,
            cfg.mixture[i - 1],
            state.meta.mlp,
            state.mixture[i - 1],
            beta,
            row_mix,
            jax.random.fold_in(key, i),
            params[i],
        )
        np.testing.assert_array_equal(
            rows["acts"][i * per_task : (i + 1) * per_task], mixture_rows["acts"]
        )
    moved = jax.tree.leaves(states[1].copies.params)
    assert any(
        not np.array_equal(a, b) for a, b in zip(moved, first_layer, strict=True)
    )
