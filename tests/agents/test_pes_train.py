"""PES agent: runs, resumes exactly after SIGKILL, shards, loads, rejects bad input."""

import functools
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import types

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import elo_gym
from elo_gym import checkpoint, inner_loop, lopt, pes, pes_run, runs, validation
from elo_gym.agents import bc_train, pes_train
from elo_gym.lo_spec import LOSpec

SCRIPT = pathlib.Path(pes_train.__file__)
FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"
# Tiny but complete: 2 pairs, a 10-unit optimizee, short truncations, checkpoints.
TINY = dict(
    num_pairs=2,
    truncation=4,
    outer_steps=6,
    n_min=2,
    n_max=6,
    hidden_sizes=(10,),
    batch_size=32,
    hidden_size=8,
    checkpoint_every=1,
    init_lo="none",  # the cpu preset's clone of the demonstrator: its own tests
    alpha_schedule="linear",  # Eq. 10, so the task term is in the meta-loss too
    progress=False,
)
TINY_FLAGS = [
    "--num-pairs",
    "2",
    "--truncation",
    "4",
    "--outer-steps",
    "6",
    "--n-min",
    "2",
    "--n-max",
    "6",
    "--hidden-sizes",
    "10",
    "--batch-size",
    "32",
    "--hidden-size",
    "8",
    "--checkpoint-every",
    "1",
    "--init-lo",
    "none",
    "--alpha-schedule",
    "linear",
    "--no-progress",
]


def _lo_arrays(run_dir):
    meta, _ = checkpoint.load_meta_params(run_dir)
    return jax.tree.leaves(flax.serialization.to_state_dict(meta))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted tiny ELO run, shared by the tests that compare against it."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    pes_train.main(pes_train.make_args(run_dir=str(run_dir), **TINY))
    return run_dir


def test_run_directory_contents(reference_run):
    config = json.loads((reference_run / "config.json").read_text())
    assert config["mode"] == "elo" and config["outer_steps"] == 6
    lines = (reference_run / "metrics.csv").read_text().strip().splitlines()
    header = lines[0].split(",")
    for column in (
        "outer_step",
        "meta_loss",
        "task_loss",
        "bc_loss",
        "alpha",
        "mean_inner_step",
        "max_inner_step",
        "buffer_fill",
        "frac_from_buffer",
        "inner_steps_per_s",
    ):
        assert column in header
    rows = [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]
    assert [int(r["outer_step"]) for r in rows] == list(range(6))
    assert [float(r["alpha"]) for r in rows] == pytest.approx([t / 5 for t in range(6)])
    assert all(np.isfinite(float(r["meta_loss"])) for r in rows)
    assert (reference_run / "lo.msgpack").is_file()
    assert sorted(p.name for p in (reference_run / "checkpoints").iterdir())[-1] == "6"


def test_same_seed_same_result(reference_run, tmp_path):
    again = tmp_path / "again"
    pes_train.main(pes_train.make_args(run_dir=str(again), **TINY))
    for a, b in zip(_lo_arrays(reference_run), _lo_arrays(again), strict=True):
        np.testing.assert_array_equal(a, b)
    # Another seed, and another outer lr (a setting the compiled step, reused by
    # runs in one process, holds), each change the LO.
    for i, change in enumerate(({"seed": 1}, {"learning_rate": 0.03})):
        other = tmp_path / f"other{i}"
        pes_train.main(pes_train.make_args(run_dir=str(other), **{**TINY, **change}))
        assert any(
            not np.array_equal(a, b)
            for a, b in zip(_lo_arrays(reference_run), _lo_arrays(other), strict=True)
        ), change


def test_init_lo_starts_from_a_trained_lo(reference_run):
    """``--init-lo``: the run's first LO is the given one (not the seed's init), and
    an LO of other settings is refused, naming them."""
    args = pes_train.make_args(**{**TINY, "init_lo": str(reference_run)}).resolved()
    cfg, env_params = pes_train.pes_config(args)
    state = pes_train.init_state(args, cfg, env_params)
    start = jax.tree.leaves(flax.serialization.to_state_dict(state.meta))
    for a, b in zip(start, _lo_arrays(reference_run), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(
        jax.tree.leaves(state.best_meta), jax.tree.leaves(state.meta), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    scaled = json.loads((reference_run / "config.json").read_text())["adam_scaled_step"]
    bad_settings = (
        dict(hidden_size=16),
        dict(raw_adam_ratio=True),
        dict(nominal_lr=0.03),
    )
    for bad in (*bad_settings, dict(adam_scaled_step=not scaled)):
        args = pes_train.make_args(
            **{**TINY, **bad, "init_lo": str(reference_run)}
        ).resolved()
        cfg, env_params = pes_train.pes_config(args)
        (name,) = bad
        with pytest.raises(ValueError, match=rf"--init-lo .* is an LO with {name} "):
            pes_train.init_state(args, cfg, env_params)


def test_init_lo_bc_clones_this_runs_demonstrator(tmp_path, monkeypatch):
    """``--init-lo bc``: the BC agent first clones the run's demonstrator (its
    expert_lr and lr decay, features and LO size) into RUN_DIR/init_lo. (That main
    meta-trains from the clone, with the cpu preset's ``--init-lo bc``:
    tests/envs/test_array_task.py's README run; in a multi-process run from process
    0's clone: test_pes_distributed.py.)"""
    tiny_bc = dict(num_copies=2, chunk=4, rows_per_step=16, num_minibatches=2)
    tiny_bc.update(checkpoint_every=2)
    monkeypatch.setattr(
        pes_train.bc_train, "Args", functools.partial(bc_train.Args, **tiny_bc)
    )
    run_dir = tmp_path / "run"
    args = pes_train.make_args(
        **{**TINY, "outer_steps": 1, "init_lo": "bc", "clone_steps": 2},
        run_dir=str(run_dir),
        expert_lr=3e-3,
        expert_decay_steps=50.0,
        expert_schedule="inverse_sqrt",
        expert_weight_decay=0.05,
        expert_trust_ratio=True,
        raw_adam_ratio=True,
        nominal_lr=0.01,
        nominal_lr_spread=2.0,
        run_length_max=500,
    )
    assert pes_train.clone_demonstrator(args.resolved(), run_dir) == (
        run_dir / "init_lo"
    )
    clone = json.loads((run_dir / "init_lo" / "config.json").read_text())
    assert clone["expert_lr"] == 3e-3 and clone["raw_adam_ratio"] is True
    assert clone["expert_decay_steps"] == 50.0
    # The clone meets the run's optimizee and its lr augmentation.
    assert clone["hidden_sizes"] == list(TINY["hidden_sizes"])
    assert clone["nominal_lr_spread"] == 2.0 and clone["run_length_max"] == 500
    # ... and the clone's env imitates the decayed expert, not the constant one.
    fields = runs.flatten(bc_train.Args())
    clone_args = runs.replace_flat(
        bc_train.Args(), **{k: v for k, v in clone.items() if k in fields}
    )
    clone_env = bc_train.env_settings(clone_args).config(2)
    assert clone_env.expert_decay_steps == 50.0
    assert clone["expert_weight_decay"] == clone_env.expert_weight_decay == 0.05
    assert clone["expert_trust_ratio"] is clone_env.expert_trust_ratio is True
    assert clone_env.nominal_lr_spread == 2.0 and clone_env.run_length_max == 500
    assert clone["outer_steps"] == 2  # --clone-steps
    assert clone["hidden_size"] == TINY["hidden_size"]


def test_a_checkpoint_loads_with_its_size_and_settings(reference_run):
    """An LO read from a run's checkpoints (no lo.msgpack needed) comes with its
    hidden size and the LO settings of the run's config.json, so ``--init-lo
    RUN/checkpoints`` is checked like a finished run."""
    config = json.loads((reference_run / "config.json").read_text())
    _, info = checkpoint.load_meta_params(reference_run / "checkpoints")
    assert info["hidden_size"] == TINY["hidden_size"]
    assert LOSpec.from_json(info) == LOSpec.from_json(config)
    assert LOSpec.from_json(info).adam_scaled_step == config["adam_scaled_step"]
    args = pes_train.make_args(
        **{**TINY, "init_lo": str(reference_run / "checkpoints")}
    ).resolved()
    template = lopt.init_meta_params(jax.random.PRNGKey(0), TINY["hidden_size"])
    pes_run.initial_lo(args.pes.init_lo, args.lo, template)  # the same: accepted


def test_clone_meets_the_runs_mixture(tmp_path, monkeypatch):
    """``--init-lo bc --mixture ...``: the BC agent clones Adam on the same tasks as
    the run meta-trains on."""
    seen = []
    monkeypatch.setattr(pes_train.bc_train, "main", seen.append)
    args = pes_train.make_args(**TINY, mixture=("12:gelu", "8-8")).resolved()
    pes_train.clone_demonstrator(args, tmp_path)
    assert seen[0].mixture == ("12:gelu", "8-8")
    assert seen[0].hidden_sizes == TINY["hidden_sizes"]


def test_sigkill_then_resume_gives_identical_weights(reference_run, tmp_path):
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, str(SCRIPT), "--run-dir", str(run_dir), *TINY_FLAGS]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpts = run_dir / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ckpts.is_dir() and any(
            p.name.isdigit() and int(p.name) >= 1 for p in ckpts.iterdir()
        ):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "lo.msgpack").exists()
    pes_train.main(
        pes_train.make_args(run_dir=str(run_dir), **TINY)
    )  # same command: resumes
    for a, b in zip(_lo_arrays(reference_run), _lo_arrays(run_dir), strict=True):
        np.testing.assert_array_equal(a, b)
    rows = (run_dir / "metrics.csv").read_text().strip().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(6))


def test_two_devices_match_one(reference_run, tmp_path):
    run_dir = tmp_path / "sharded"
    # Keep this session's other XLA flags (conftest's), so both runs compile alike.
    flags = os.environ.get("XLA_FLAGS", "").split()
    flags.append("--xla_force_host_platform_device_count=2")
    env = dict(os.environ, XLA_FLAGS=" ".join(flags))
    probe = (
        "import jax; from elo_gym.agents import pes_train as p; "
        "assert len(jax.devices()) == 2; import sys; "
        "p.main(p.parse_args(sys.argv[1:]))"
    )
    subprocess.run(
        [sys.executable, "-c", probe, "--run-dir", str(run_dir), *TINY_FLAGS],
        env=env,
        check=True,
        capture_output=True,
    )
    for a, b in zip(_lo_arrays(reference_run), _lo_arrays(run_dir), strict=True):
        # Reductions split across devices round differently; PES amplifies it.
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_load_optimizer_trains_a_flax_model(reference_run):
    import flax.linen as nn

    # The cpu preset's LO reads relative time: it is told the run's length.
    with pytest.raises(ValueError, match="pass total_steps > 0"):
        elo_gym.load_optimizer(reference_run)
    opt = elo_gym.load_optimizer(reference_run, total_steps=20)
    model = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(1)])
    x = jax.random.normal(jax.random.PRNGKey(0), (64, 4))
    y = x @ jnp.array([1.0, -2.0, 0.5, 3.0])[:, None]
    params = model.init(jax.random.PRNGKey(1), x)
    state = opt.init(params)

    @jax.jit
    def train_step(params, state):
        loss, grads = jax.value_and_grad(
            lambda p: jnp.mean((model.apply(p, x) - y) ** 2)
        )(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    first = None
    for _ in range(20):
        params, state, loss = train_step(params, state)
        first = loss if first is None else first
    assert np.isfinite(loss) and jax.tree.structure(params) == jax.tree.structure(
        model.init(jax.random.PRNGKey(1), x)
    )
    # From a checkpoint directory too.
    ckpt_opt = elo_gym.load_optimizer(reference_run / "checkpoints" / "6", 20)
    u1, _ = opt.update(jax.tree.map(jnp.ones_like, params), opt.init(params), params)
    u2, _ = ckpt_opt.update(
        jax.tree.map(jnp.ones_like, params), ckpt_opt.init(params), params
    )
    for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2), strict=True):
        np.testing.assert_array_equal(a, b)


def test_load_optimizer_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no learned optimizer"):
        elo_gym.load_optimizer(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="neither"):
        elo_gym.load_optimizer(tmp_path)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(env="ELO-Nope"), "unknown env"),
        (dict(mode="fancy"), "unknown mode"),
        (dict(sigma=0.0), "sigma must be > 0"),
        (dict(p_th=1.5), "p_th must be in"),
        (dict(n_min=9, n_max=6), "n_min"),
        (dict(buffer_size=0), "buffer_size"),
        (dict(eval_every=-1), "eval_every must be >= 0"),
        (dict(eval_every=0, export="best"), "export='best' needs validation"),
        (dict(alpha_end_fraction=0.0), r"alpha_end_fraction must be in \(0, 1\]"),
        (dict(lr_schedule="step"), "unknown lr schedule 'step'"),
        (dict(warmup_fraction=1.5, lr_schedule="warmup_cosine"), "warmup_fraction"),
        (dict(meta_loss_split="test"), "unknown meta_loss_split"),
        (dict(bc_loss="l1"), "unknown bc_loss"),
        (dict(estimator="sgd"), "unknown estimator 'sgd'"),
        (dict(estimator="tbptt", buffer_scope="pair"), "--buffer-scope pair keeps"),
    ],
)
def test_bad_input_is_rejected_before_anything_is_written(tmp_path, change, message):
    run_dir = tmp_path / "bad"
    with pytest.raises(ValueError, match=message):
        pes_train.main(pes_train.make_args(run_dir=str(run_dir), **{**TINY, **change}))
    assert not run_dir.exists()


def test_resume_with_another_config_is_refused(reference_run):
    with pytest.raises(ValueError, match="another config"):
        pes_train.main(
            pes_train.make_args(run_dir=str(reference_run), **{**TINY, "sigma": 0.02})
        )


def test_unwritable_run_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match="cannot write the run directory"):
        pes_train.main(pes_train.make_args(run_dir=str(blocker / "run"), **TINY))


# With test_cli_smoke's bc, every mode; the quick study's real runs are -m slow.
@pytest.mark.parametrize("mode", ["naive", "curriculum", "uniform", "buffer"])
def test_other_modes_run(tmp_path, mode):
    run_dir = tmp_path / mode
    pes_train.main(
        pes_train.make_args(
            run_dir=str(run_dir),
            mode=mode,
            **{**TINY, "outer_steps": 2, "checkpoint_every": 2},
        )
    )
    lines = (run_dir / "metrics.csv").read_text().strip().splitlines()
    header = lines[0].split(",")
    last = dict(zip(header, lines[-1].split(","), strict=True))
    assert float(last["alpha"]) == 1.0  # no behavior cloning in these modes
    if mode != "buffer":
        assert float(last["frac_from_buffer"]) == 0.0
    else:  # the buffer-only ablation does restore (p_th 0.05, from outer step 1 on)
        assert float(last["frac_from_buffer"]) > 0.0
        assert float(last["buffer_fill"]) > 0.0


def test_cli_smoke(tmp_path):
    run_dir = tmp_path / "cli"
    flags = [f for f in TINY_FLAGS]
    flags[flags.index("--outer-steps") + 1] = "2"
    out = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--mode",
            "bc",
            "--run-dir",
            str(run_dir),
            *flags,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert (run_dir / "lo.msgpack").is_file()
    # The end of the main job says where the LO is, how it did, and what to run next.
    assert f"learned optimizer: {run_dir / 'lo.msgpack'} (best LO" in out.stdout
    assert "meta-loss" in out.stdout and "task loss" in out.stdout
    assert "at 10x the horizon (validation, outer step 2)" in out.stdout
    assert f"scripts/evaluate.py --lo bc={run_dir}" in out.stdout


def _flat(**flags) -> types.SimpleNamespace:
    """make_args(**flags), resolved, as one namespace of flags."""
    return types.SimpleNamespace(
        **runs.flatten(pes_train.make_args(**flags).resolved())
    )


def test_explicit_flags_win_over_the_preset():
    paper = _flat(preset="paper", outer_steps=100, n_max=300)
    assert (paper.outer_steps, paper.n_max, paper.n_min) == (100, 300, 100)
    assert paper.env == "ELO-ImageNet32-MLP" and paper.batch_size == 4096
    assert paper.n_max_final == 3000
    cpu = _flat()
    assert (cpu.env, cpu.outer_steps, cpu.n_min, cpu.n_max, cpu.truncation) == (
        "ELO-Digits-MLP",
        400,
        20,
        200,
        50,
    )
    assert _flat(env="ELO-Digits-MLP", preset="paper").env == "ELO-Digits-MLP"
    assert (cpu.expert_lr, paper.expert_lr) == (0.014, 1e-3)
    # The cpu preset's learned part gates its nominal step and is cloned from cautious
    # LAMB before PES (the forty-second screen, docs/levers.md); the paper's is the
    # paper's additive LO imitating Adam.
    assert (cpu.gated_step, paper.gated_step) == (True, False)
    assert (cpu.expert_cautious, paper.expert_cautious) == (True, False)
    # The cpu preset's LO and demonstrator take LAMB's trust ratio (the thirty-first
    # screen, docs/levers.md); the paper's are Adam.
    assert (cpu.nominal_trust_ratio, paper.nominal_trust_ratio) == (True, False)
    assert (cpu.expert_trust_ratio, paper.expert_trust_ratio) == (True, False)
    # The paper preset (GPUs, often several) takes the buffer scope that scales.
    assert (cpu.buffer_scope, paper.buffer_scope) == ("shared", "pair")
    assert _flat(preset="paper", buffer_scope="shared").buffer_scope == "shared"
    # The cpu preset's demonstrator is Adam with warmup + cosine decay to the end of
    # each episode (the twelfth screen, docs/levers.md); the paper's is constant.
    assert (cpu.expert_schedule, paper.expert_schedule) == ("cosine", "inverse_sqrt")
    assert not cpu.expert_decay_steps and not paper.expert_decay_steps
    # The cpu preset starts the BC modes at a clone of the demonstrator; every mode
    # gets its relative-time LO (scaled step, cosine nominal term); the baselines
    # without BC and the paper start from a random init.
    assert (cpu.init_lo, paper.init_lo) == ("bc", None)
    # From the clone, the cpu preset's PES keeps the meta-loss pure behavior cloning
    # (alpha held at 0, the forty-third screen); the paper's anneals it (Eq. 10).
    hold = ("hold_linear", 1.0)
    assert (cpu.alpha_schedule, cpu.hold_fraction) == hold
    assert (paper.alpha_schedule, paper.hold_fraction) == ("linear", 0.2)
    assert pes_train.schedule_at(pes_train.make_args(), 399).alpha == 0.0
    assert (cpu.adam_scaled_step, paper.adam_scaled_step) == (True, False)
    relative = (1e-2, 200.0, "cosine")
    assert (cpu.nominal_lr, cpu.time_horizon, cpu.nominal_schedule) == relative
    assert (paper.nominal_lr, paper.time_horizon) == (0.0, 0.0)
    naive = _flat(mode="naive")
    assert (naive.init_lo, naive.adam_scaled_step) == (None, True)
    assert (naive.nominal_lr, naive.time_horizon, naive.nominal_schedule) == relative
    # No floor under the BC weight, max(1 - alpha, 0), in any preset or mode.
    assert (cpu.bc_floor, paper.bc_floor, naive.bc_floor) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="--bc-floor 0.3 needs behavior cloning"):
        pes_train.make_args(mode="naive", bc_floor=0.3).resolved().validate()
    assert naive.expert_decay_steps == 0.0
    pes_train.make_args(mode="naive").resolved().validate()
    assert _flat(mode="naive", init_lo="bc").init_lo == "bc"
    assert _flat(mode="naive", adam_scaled_step=False).adam_scaled_step is False
    assert _flat(adam_scaled_step=False).adam_scaled_step is False
    # Without a nominal term there is nothing for the trust ratio to rescale.
    no_nominal = dict(nominal_lr=0.0, nominal_trust_ratio=False, gated_step=False)
    assert _flat(**no_nominal).nominal_lr == 0.0
    with pytest.raises(ValueError, match="--no-nominal-trust-ratio"):
        _flat(nominal_lr=0.0)
    assert _flat(init_lo="none").init_lo is None
    assert _flat(expert_lr=2e-3).expert_lr == 2e-3
    # The command line builds the same settings, and its explicit flags win too.
    for argv, flags in (
        ([], {}),
        (["--preset", "paper", "--n-max", "300"], dict(preset="paper", n_max=300)),
        (["--mode=naive", "--init-lo", "bc"], dict(mode="naive", init_lo="bc")),
        (["--mode", "naive", "--bc-floor", "0.2"], dict(mode="naive", bc_floor=0.2)),
    ):
        assert pes_train.parse_args(argv) == pes_train.make_args(**flags)
    with pytest.raises(ValueError, match="unknown setting"):
        pes_train.make_args(n_maximum=3)


@pytest.mark.parametrize("preset", ["cpu", "paper"])
@pytest.mark.parametrize("mode", pes_train.MODES)
def test_presets_write_the_config_they_always_wrote(preset, mode):
    """The settings each preset and mode put in config.json, with no flag given, are
    those written before the settings became groups (tests/fixtures/README.md), plus
    the settings added since, and the cpu preset's relative-time LO and cosine
    demonstrator (the twelfth screen, docs/levers.md)."""
    golden = json.loads((FIXTURES / "pes_train_configs.json").read_text())
    added_since = dict(
        time_horizon=0.0,
        nominal_schedule="inverse_sqrt",
        expert_schedule="inverse_sqrt",
        nominal_lr_spread=1.0,
        run_length_max=0,
        estimator="pes",
        scheduled_step=False,
        nominal_norm_step=False,
        tangential_step=False,
        expert_b2=0.999,
        fast_second_moment=False,
        expert_weight_decay=0.0,
        nominal_trust_ratio=False,
        meta_loss_log=False,
        expert_trust_ratio=False,
        gated_step=False,
        expert_cautious=False,
    )
    if preset == "cpu":
        added_since.update(
            time_horizon=200.0,
            nominal_schedule="cosine",
            nominal_decay_steps=0.0,
            expert_schedule="cosine",
            expert_decay_steps=0.0,
            bc_floor=0.0,
            meta_loss_split="valid",
            nominal_trust_ratio=True,
            expert_trust_ratio=True,
            nominal_lr=0.01,
            expert_lr=0.014,
            gated_step=True,
            expert_cautious=True,
            alpha_schedule="hold_linear",  # the forty-third screen's pure BC
            hold_fraction=1.0,
        )
        if mode in pes_train.BC_MODES:  # the forty-second screen's start
            added_since.update(init_lo=pes_train.CLONE_DEMONSTRATOR)
    argv = ["--preset", preset, "--mode", mode]
    args = pes_train.parse_args(argv).resolved()
    config = runs.args_config(args, exclude=pes_run.LAUNCH)
    assert json.loads(json.dumps(config)) == {
        **golden[f"{preset}-{mode}"],
        **added_since,
    }


def test_validation_columns_and_best_export(reference_run, tmp_path, monkeypatch):
    """Periodic validation at 10x the horizon logs the LO beside Adam; export='best'
    writes the LO whose validation loss was lowest, and best/ holds it either way."""
    rows = [
        dict(zip(lines[0].split(","), line.split(","), strict=True))
        for lines in [(reference_run / "metrics.csv").read_text().splitlines()]
        for line in lines[1:]
    ]
    validated = [r for r in rows if r["val_lo_valid_loss"] != "nan"]
    assert [int(r["outer_step"]) for r in validated] == [5]  # eval_every 50 > T = 6
    adam = validated[0]
    assert 0 < float(adam["val_adam_valid_loss"]) < np.log(10)
    assert float(adam["val_adam_update_norm_ratio"]) > 0
    run_dir = tmp_path / "best"
    # Every checkpoint kept, so that the exported LO can be compared with its step's.
    keep_all = functools.partial(checkpoint.checkpoint_manager, max_to_keep=None)
    monkeypatch.setattr(checkpoint, "checkpoint_manager", keep_all)
    pes_train.main(
        pes_train.make_args(
            run_dir=str(run_dir), **{**TINY, "eval_every": 2, "export": "best"}
        )
    )
    rows = [
        dict(zip(lines[0].split(","), line.split(","), strict=True))
        for lines in [(run_dir / "metrics.csv").read_text().splitlines()]
        for line in lines[1:]
    ]
    validated = {
        int(r["outer_step"]) + 1: float(r["val_lo_valid_loss"])
        for r in rows
        if r["val_lo_valid_loss"] != "nan"
    }
    assert sorted(validated) == [2, 4, 6]
    best_step = min(validated, key=validated.get)
    info = json.loads((run_dir / "lo.json").read_text())
    assert info["exported"] == "best" and info["outer_step"] == best_step
    assert info["best_valid_loss"] == pytest.approx(validated[best_step])
    exported = _lo_arrays(run_dir)
    for a, b in zip(exported, _lo_arrays(run_dir / "best"), strict=True):
        np.testing.assert_array_equal(a, b)
    # The exported LO is the one checkpointed at its outer step, not the last one.
    at_best = checkpoint.load_meta_params(run_dir / "checkpoints" / str(best_step))[0]
    for a, b in zip(
        exported,
        jax.tree.leaves(flax.serialization.to_state_dict(at_best)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_keep_best_and_export_pick_the_lowest_validation_loss(tmp_path):
    meta_a = elo_gym.init_meta_params(jax.random.PRNGKey(1), hidden_size=8)
    meta_b = elo_gym.init_meta_params(jax.random.PRNGKey(2), hidden_size=8)
    state = pes.PESState(
        meta=meta_a,
        opt_state=None,
        env=None,
        accumulator=None,
        key=None,
        outer_step=jnp.int32(6),
        best_meta=meta_b,
        best_valid_loss=jnp.float32(0.5),
        best_step=jnp.int32(2),
    )
    worse = pes_run.keep_best(state, 0.7, 6)
    assert int(worse.best_step) == 2 and float(worse.best_valid_loss) == 0.5
    better = pes_run.keep_best(state, 0.3, 6)
    assert int(better.best_step) == 6
    assert float(better.best_valid_loss) == pytest.approx(0.3)
    assert pes_run.keep_best(state, float("inf"), 6) is state

    def leaves(meta):
        return jax.tree.leaves(flax.serialization.to_state_dict(meta))

    for export, expected in (("best", meta_b), ("last", meta_a)):
        run_dir = tmp_path / export
        run_dir.mkdir()
        args = pes_train.make_args(export=export, **TINY).resolved()
        pes_run.export(run_dir, state, args.lo, export, {"env": args.env})
        for a, b in zip(_lo_arrays(run_dir), leaves(expected), strict=True):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(_lo_arrays(run_dir / "best"), leaves(meta_b), strict=True):
            np.testing.assert_array_equal(a, b)
        info = json.loads((run_dir / "lo.json").read_text())
        assert info["exported"] == export
        assert info["outer_step"] == (2 if export == "best" else 6)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--outer-steps", "0"], "outer_steps must be > 0, got 0"),
        (["--p-th", "1.5"], r"p_th must be in \[0, 1\], got 1.5"),
        (["--env", "ELO-Nope"], "unknown env 'ELO-Nope'"),
        (["--mode", "naive", "--bc-floor", "0.2"], "needs behavior cloning"),
        (["--mode", "naive", "--expert-weight-decay", "0.1"], "needs behavior cl"),
    ],
)
def test_bad_flag_is_one_line_and_exit_code_2(
    tmp_path, flags, message, monkeypatch, capsys
):
    """The script's command line (runs.run_cli, as its ``__main__`` calls it;
    test_cli_smoke runs the script itself) in process: no JAX start-up per flag."""
    argv = ["pes_train.py", "--run-dir", str(tmp_path / "bad"), *flags]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_:
        runs.run_cli(pes_train.main, pes_train.parse_args, "pes_train.py")
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pes_train.py: error: ")
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "bad").exists()


def test_corrupt_latest_checkpoint_resumes_from_the_one_before(
    reference_run, tmp_path, capfd
):
    """Bytes flipped in the latest checkpoint's data: orbax would restore wrong
    numbers silently; the saved digest catches it, the run resumes from checkpoint 5
    and ends with the uninterrupted run's LO."""
    run_dir = tmp_path / "corrupt"
    shutil.copytree(reference_run, run_dir)
    (run_dir / "lo.msgpack").unlink()
    # The array data files (not the b-tree nodes, whose CRC tensorstore checks).
    data = [
        p
        for p in (run_dir / "checkpoints" / "6").rglob("*")
        if p.parent.name == "d" and p.parent.parent.name.startswith("ocdbt.process")
    ]
    assert data
    for path in data:
        raw = bytearray(path.read_bytes())
        for i in range(len(raw) // 3, len(raw) // 3 + 16):
            raw[i] ^= 0xFF
        path.write_bytes(bytes(raw))
    pes_train.main(pes_train.make_args(run_dir=str(run_dir), **TINY))
    err = capfd.readouterr().err
    assert "checkpoint 6 in" in err and "cannot be read" in err
    assert "resuming from checkpoint 5, the latest readable" in err
    for a, b in zip(_lo_arrays(reference_run), _lo_arrays(run_dir), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_finished_run_extends_with_more_outer_steps(tmp_path):
    run_dir = tmp_path / "extend"
    short = {**TINY, "outer_steps": 4, "checkpoint_every": 2}
    pes_train.main(pes_train.make_args(run_dir=str(run_dir), **short))
    pes_train.main(
        pes_train.make_args(run_dir=str(run_dir), **{**short, "outer_steps": 6})
    )
    config = json.loads((run_dir / "config.json").read_text())
    assert config["outer_steps"] == 6
    rows = (run_dir / "metrics.csv").read_text().strip().splitlines()[1:]
    steps = [int(r.split(",")[0]) for r in rows]
    assert steps == list(range(6))
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    alphas = [float(r.split(",")[header.index("alpha")]) for r in rows]
    # Steps 0-3 ran under T = 4, steps 4-5 under the new T = 6.
    assert alphas == pytest.approx([0, 1 / 3, 2 / 3, 1, 4 / 5, 1])
    # Each run's end is validated, and the best of both is exported.
    column = header.index("val_lo_valid_loss")
    validated = [i + 1 for i, r in enumerate(rows) if r.split(",")[column] != "nan"]
    assert validated == [4, 6]
    assert json.loads((run_dir / "lo.json").read_text())["best_step"] in validated
    with pytest.raises(ValueError, match="can be extended, not shortened to 3"):
        pes_train.main(
            pes_train.make_args(run_dir=str(run_dir), **{**short, "outer_steps": 3})
        )


def test_mixture_trains_each_task_in_turn_on_its_own_copies(tmp_path):
    """--mixture: outer step t trains task t mod 3; a mixture task's step moves its
    own copies and the LO, and leaves the env's copies and the other task's alone;
    an entry naming another env trains on that env's own data."""
    teacher = "ELO-Teacher-MLP:hidden_sizes=8-8,input_dim=6"
    args = pes_train.make_args(
        **dict(TINY, outer_steps=3, eval_every=0, export="last"),
        mixture=("12:gelu", teacher),
    ).resolved()
    args.validate()
    cfg, env_params = pes_train.pes_config(args)
    mixture = pes_train.mixture_configs(args)
    assert [(c.env.task.hidden_sizes, c.env.task.activation) for c, _ in mixture] == [
        ((12,), "gelu"),
        ((8, 8), "relu"),
    ]
    assert mixture[1][1].data.valid[0].shape[1:] == (6,)  # the teacher's own data
    state = pes_train.init_state(args, cfg, env_params, mixture)
    leaves = lambda tree: [np.asarray(x) for x in jax.tree.leaves(tree)]  # noqa: E731
    before = jax.tree.map(np.asarray, state)
    params = env_params.replace(alpha=jnp.float32(0.5), outer_step=jnp.int32(1))
    new, _ = jax.jit(
        lambda s: pes.mixture_outer_step(
            1, mixture[0][0], pes_train.outer_optimizer(args), s, params
        )
    )(state)
    shapes = {x.shape for x in jax.tree.leaves(new.mixture[0][0].copies.params)}
    assert (4, 64, 12) in shapes  # 4 copies of the 12-wide first layer on 8x8 digits
    for same_a, same_b in [(new.env, before.env), (new.mixture[1], before.mixture[1])]:
        for a, b in zip(leaves(same_a), leaves(same_b), strict=True):
            np.testing.assert_array_equal(a, b)
    moved = leaves(new.mixture[0][0].copies.params)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(moved, leaves(before.mixture[0][0].copies.params), strict=True)
    )
    assert not np.array_equal(leaves(new.meta)[0], leaves(before.meta)[0])

    run_dir = pes_train.main(
        pes_train.make_args(
            **dict(TINY, outer_steps=3, eval_every=0, export="last"),
            mixture=("12:gelu", teacher),
            run_dir=str(tmp_path / "mix"),
        )
    )
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    column = header.index("task_index")
    assert [int(float(row.split(",")[column])) for row in lines[1:]] == [0, 1, 2]


def test_bad_mixture_entry_is_named():
    with pytest.raises(ValueError, match="--mixture entry '12x' must be WIDTHS"):
        pes_train.make_args(mixture=("12x",)).resolved().validate()


@pytest.mark.parametrize("nominal_lr", [2e-2, 0.0])
def test_validation_of_the_silenced_lo_is_an_explicit_zero_mlp_run(nominal_lr):
    """val_silenced_* are the numbers of small_fc_lopt with every MLP weight zero on
    the validation seeds (its nominal term alone; with no nominal term, a zero update
    that leaves the optimizee where it started), and the stds are over those seeds."""
    args = pes_train.make_args(
        **{**TINY, "nominal_lr": nominal_lr, "eval_seeds": 3, "n_max": 4},
        nominal_trust_ratio=nominal_lr > 0,
        gated_step=nominal_lr > 0,
    ).resolved()
    cfg, env_params = pes_train.pes_config(args)
    n_max = args.inner.n_max
    validate = validation.Validation(
        cfg.env.task, env_params.data, args.lo, steps=10 * n_max, seeds=3, seed=1_000
    )
    trained = lopt.init_meta_params(jax.random.PRNGKey(3), args.lo.hidden_size)
    row = validate(trained)

    steps, window = 10 * n_max, max(1, 10 * n_max // 10)
    keys = jax.random.split(jax.random.PRNGKey(args.seed + 1_000), 3)

    def seed_runs(meta):
        """The runs of small_fc_lopt with ``meta`` on the validation keys, and their
        final validation losses and mean last training losses per seed."""
        optimizer = elo_gym.small_fc_lopt(meta, args.lo, total_steps=steps)
        runs = [
            jax.device_get(
                inner_loop.train_curves(
                    cfg.env.task, optimizer, env_params.data, key, steps=steps,
                    eval_every=window,
                )
            )
            for key in keys
        ]  # fmt: skip
        valid = np.array([r["valid_loss"][-1] for r in runs], np.float64)
        train = np.array([r["train_loss"][-window:].mean() for r in runs], np.float64)
        return runs, valid, train

    runs, valid, train = seed_runs(jax.tree.map(jnp.zeros_like, trained))
    np.testing.assert_allclose(row["val_silenced_valid_loss"], valid.mean(), rtol=1e-5)
    np.testing.assert_allclose(row["val_silenced_train_loss"], train.mean(), rtol=1e-5)
    np.testing.assert_allclose(
        row["val_silenced_valid_loss_std"], valid.std(), rtol=1e-4, atol=1e-7
    )
    np.testing.assert_allclose(
        row["val_silenced_train_loss_std"], train.std(), rtol=1e-4, atol=1e-7
    )
    assert row["val_silenced_valid_loss_std"] > 0  # seeds differ: a spread to beat
    ratio = row["val_silenced_param_norm_ratio"]
    if nominal_lr == 0:  # a zero update: the optimizee never moves
        assert ratio == 1.0
        np.testing.assert_allclose(valid, [r["valid_loss"][0] for r in runs])
    else:
        assert ratio != 1.0
    # The learned part seed by seed: the trained LO's runs on the same keys, minus
    # the silenced ones.
    _, lo_valid, lo_train = seed_runs(trained)
    for what, diff in (("valid", lo_valid - valid), ("train", lo_train - train)):
        np.testing.assert_allclose(
            row[f"val_lo_minus_silenced_{what}_loss"], diff.mean(), rtol=1e-4, atol=1e-7
        )
        np.testing.assert_allclose(
            row[f"val_lo_minus_silenced_{what}_loss_std"],
            diff.std(),
            rtol=1e-3,
            atol=1e-6,
        )
    # The LO's own row is another LO's: the silenced row is not just a copy of it.
    assert row["val_lo_valid_loss"] != row["val_silenced_valid_loss"]
    assert row["val_lo_valid_loss_std"] >= 0
    assert set(row) | {"outer_step"} <= set(pes_train.METRICS) | {"outer_step"}
    assert {k for k in pes_train.METRICS if k.startswith("val_")} - {
        "val_best_step"
    } == set(row)
