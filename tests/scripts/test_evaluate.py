"""scripts/evaluate.py: outputs, lr choice and errors, on tiny LO runs made without PES.

The LO runs are untrained small_fc_lopts saved with ``checkpoint.save_lo`` beside a
hand-written ``config.json``. One in-process ``run()`` (module fixture) feeds most
tests; the CLI smoke run comes after it and finds its programs compiled.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import elo_gym
from elo_gym import checkpoint, evaluation

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
STEPS, EVAL_EVERY, SEEDS = 20, 8, 2  # 20 = 2 x 8 + 4: the tail chunk runs too
LRS = (0.01, 1e-6)  # 1e-6 barely moves in 20 steps: it must lose on validation
# One value per scheduled grid: at both edges, so one round of growth runs.
SCHEDULED_GRIDS = dict(
    cosine_lrs=(0.01,),
    invsqrt_lrs=(0.01,),
    invsqrt_taus=(10.0,),
    lamb_lrs=(0.01,),
    max_grid_extensions=1,
)
SCHEDULED_FLAGS = [
    "--cosine-lrs", "0.01", "--invsqrt-lrs", "0.01", "--invsqrt-taus", "10",
    "--lamb-lrs", "0.01", "--max-grid-extensions", "1",
]  # fmt: skip
HIDDEN, BATCH = (8,), 32
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_lo_run(run_dir: Path, env: str = "ELO-Digits-MLP", n_max: int = 2) -> Path:
    """A run dir with an untrained LO (hidden 8) and a config.json, no PES."""
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = elo_gym.init_meta_params(jax.random.PRNGKey(0), hidden_size=8)
    checkpoint.save_lo(run_dir, meta)
    config = {"env": env, "n_max": n_max, "hidden_sizes": list(HIDDEN)}
    config["batch_size"] = BATCH
    (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lo_runs")
    make_lo_run(root / "a")
    # Same weights, other env: the mismatch checks need no second compilation.
    make_lo_run(root / "ood", env="ELO-ImageNet32-MLP", n_max=3)
    return root


def _config(runs: Path, **overrides) -> evaluation.EvalConfig:
    settings = {
        # The same LO twice, once as a run dir and once as its lo.msgpack: both path
        # forms, and identical programs (the second compilation is a cache hit).
        "los": (("a", str(runs / "a")), ("a_file", str(runs / "a" / "lo.msgpack"))),
        "steps": STEPS,
        "seeds": SEEDS,
        "lrs": LRS,
        "eval_every": EVAL_EVERY,
        "progress": False,
        **SCHEDULED_GRIDS,
    }
    return evaluation.EvalConfig(**{**settings, **overrides})


def _cli_flags(runs: Path, out: Path) -> list[str]:
    return [
        str(SCRIPTS / "evaluate.py"),
        "--lo",
        f"a={runs / 'a'}",
        "--out",
        str(out),
        "--seeds",
        str(SEEDS),
        "--lrs",
        *map(str, LRS),
        "--eval-every",
        str(EVAL_EVERY),
        "--no-progress",
        *SCHEDULED_FLAGS,
    ]


@pytest.fixture(scope="module")
def result(runs: Path, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("eval_out")
    return evaluation.run(_config(runs), out), out


def test_results_json_structure(result):
    res, out = result
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["best_lr"] == res["best_lr"]
    assert on_disk["steps"] == STEPS and on_disk["n_max"] == {"a": 2, "a_file": 2}
    assert on_disk["eval_steps"] == [0, 8, 16, 20]
    assert on_disk["task"]["hidden_sizes"] == list(HIDDEN)
    assert on_disk["task"]["batch_size"] == BATCH  # from the run's config.json
    methods = {"a", "a_file", "AdamW", *evaluation.BASELINES[1:]}
    assert len(methods) == 8  # two LOs, six baselines
    assert set(on_disk["curves"]) == methods and set(on_disk["final"]) == methods
    # 0.01 was the top edge of the constant grid: one round grew it to 0.02.
    assert on_disk["baselines"]["adamw"]["grid"] == {"lr": [1e-6, 0.01, 0.02]}
    assert set(on_disk["curves"]["AdamW"]) == {"1e-06", "0.01", "0.02"}
    for curves in [on_disk["curves"]["a"], *on_disk["curves"]["AdamW"].values()]:
        assert np.shape(curves["train_loss"]) == (SEEDS, STEPS)
        for key in ("valid_loss", "valid_accuracy", "test_loss", "test_accuracy"):
            assert np.shape(curves[key]) == (SEEDS, 4)
        assert np.all(np.isfinite(np.asarray(curves["train_loss"], float)))
    # Equal seeds: both paths to the same LO give the same numbers.
    assert on_disk["curves"]["a"] == on_disk["curves"]["a_file"]
    # Every method starts from the same initial params (same seeds).
    start = on_disk["curves"]["a"]["valid_loss"]
    assert [row[0] for row in start] == [
        row[0] for row in on_disk["curves"]["AdamW"]["0.01"]["valid_loss"]
    ]
    assert on_disk["compute"]["wall_seconds"] > 0
    # 2 LOs, 3 constant lrs, 3 cosine lrs, 3 x 3 (lr, tau) of the inverse sqrt and
    # 3 lrs of LAMB, cautious LAMB and LAMB at b2 0.95 each.
    assert len(on_disk["compute"]["seconds_per_run"]) == 2 + 3 + 3 + 9 + 3 + 3 + 3


def test_best_lr_is_lowest_final_validation_loss(result):
    res, _ = result
    finals = {
        float(lr): np.mean(np.asarray(c["valid_loss"], float)[:, -1])
        for lr, c in res["curves"]["AdamW"].items()
    }
    best = min(finals, key=finals.get)
    assert res["best_lr"] == best and best != 1e-6
    assert finals[1e-6] > finals[0.01]
    assert res["final"]["AdamW"]["valid_loss"]["mean"] == pytest.approx(finals[best])
    assert res["adamw_final_valid_loss"]["0.01"]["mean"] == pytest.approx(finals[0.01])


def test_pick_best_lr_skips_diverged():
    finals = {
        0.01: np.array([0.1, np.nan]),  # lowest mean seed, but one seed diverged
        0.001: np.array([0.5, 0.7]),
        0.0001: np.array([0.4, 0.9]),
    }
    assert evaluation.pick_best_lr(finals) == 0.001


def test_update_and_param_norms(result):
    """param_norm at step 0 is the norm of the seed's initial params (computed here
    without the evaluation code), and AdamW's first update moves each parameter with
    a nonzero gradient by about lr: its norm is at most lr sqrt(P)."""
    res, _ = result
    task = evaluation.make_task(res["config"]["env"], hidden_sizes=HIDDEN)
    init_norms = [
        float(optax.tree.norm(task.init(jax.random.split(jax.random.PRNGKey(seed))[0])))
        for seed in range(SEEDS)
    ]
    for label in ("a", "a_file"):
        curves = res["curves"][label]
        assert np.shape(curves["update_norm"]) == (SEEDS, STEPS)
        assert np.shape(curves["param_norm"]) == (SEEDS, len(res["eval_steps"]))
        np.testing.assert_allclose(
            np.asarray(curves["param_norm"])[:, 0], init_norms, rtol=1e-5
        )
    adamw = res["curves"]["AdamW"]["0.01"]
    first = np.asarray(adamw["update_norm"])[:, 0]
    num_params = task.num_params()
    assert np.all(first <= 0.01 * np.sqrt(num_params) * 1.001)
    assert np.all(first > 0.01 * np.sqrt(num_params) / 2)
    # Adam's steps shrink as its second moments fill; they do not grow.
    later = np.asarray(adamw["update_norm"])[:, -4:].mean(axis=1)
    assert np.all(later < first)
    summary = res["final"]["AdamW"]
    assert summary["update_norm_first"]["mean"] > summary["update_norm"]["mean"]


def test_plots_are_pngs(result):
    res, out = result
    assert set(res["plots"]) == {
        "loss_curves.png",
        "train_loss.png",
        "valid_loss.png",
        "norms.png",
        "adamw_sweep.png",
    }
    for name in res["plots"]:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5_000, name


def test_table_rows(result):
    res, out = result
    table = (out / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| method | test accuracy (%) | test loss")
    names = [row.split("|")[1].strip() for row in rows[1:]]
    cosine, invsqrt, lamb, cautious, lamb95 = (
        res["baselines"][k]["pick"] for k in SCHEDULED
    )
    assert names == [
        "a",
        "a_file",
        f"AdamW (lr {res['best_lr']:g})",
        f"AdamW warmup + cosine (lr {cosine['lr']:g})",
        f"AdamW lr / sqrt(1 + n / tau) (lr {invsqrt['lr']:g}, tau {invsqrt['tau']:g})",
        f"LAMB warmup + cosine (lr {lamb['lr']:g})",
        f"cautious LAMB warmup + cosine (lr {cautious['lr']:g})",
        f"LAMB b2 0.95 warmup + cosine (lr {lamb95['lr']:g})",
    ]
    acc = res["final"]["a"]["test_accuracy"]
    assert f"{100 * acc['mean']:.2f} ± {100 * acc['std']:.2f}" in rows[1]
    assert "H = 20 inner steps, 2 seeds" in table


def test_eval_steps():
    assert evaluation.eval_steps(20, 8) == [0, 8, 16, 20]
    assert evaluation.eval_steps(20, 5) == [0, 5, 10, 15, 20]
    assert evaluation.eval_steps(3, 10) == [0, 3]


def test_missing_checkpoint_names_path(tmp_path):
    missing = tmp_path / "no_such_run"
    config = evaluation.EvalConfig(los=(("x", str(missing)),), steps=4)
    with pytest.raises(FileNotFoundError, match="no_such_run"):
        evaluation.run(config, tmp_path / "out")


def test_task_mismatch_is_an_error_unless_allowed(runs, tmp_path):
    config = evaluation.EvalConfig(los=(("ood", str(runs / "ood")),), steps=4)
    with pytest.raises(ValueError, match="allow-task-mismatch"):
        evaluation.run(config, tmp_path / "out")
    allowed = evaluation.EvalConfig(
        los=(("ood", str(runs / "ood")),), steps=4, allow_task_mismatch=True
    )
    described = evaluation._describe_los(allowed)
    resolved = evaluation._resolve(allowed, described)
    # An OOD run's widths belong to its own task, not to this one.
    assert described[0]["env"] == "ELO-ImageNet32-MLP"
    assert resolved["hidden_sizes"] is None and resolved["n_max"] == {"ood": 3}


def test_unknown_env_id(runs, tmp_path):
    # The run says ELO-Digits-MLP: the unknown id, not a mismatch, is the error.
    config = evaluation.EvalConfig(los=(("a", str(runs / "a")),), env="ELO-Nope")
    with pytest.raises(ValueError, match="unknown env id 'ELO-Nope'"):
        evaluation.run(config, tmp_path / "out")


def test_steps_needed_without_config(tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    checkpoint.save_lo(bare, elo_gym.init_meta_params(jax.random.PRNGKey(0), 8))
    config = evaluation.EvalConfig(los=(("b", str(bare / "lo.msgpack")),))
    with pytest.raises(ValueError, match="--steps"):
        evaluation.run(config, tmp_path / "out")


def test_cli_smoke(runs, result, tmp_path):
    # After the in-process run: its programs are in the persistent compilation cache
    # (tests/conftest.py), which the child inherits through the environment.
    out = tmp_path / "cli_out"
    proc = subprocess.run(
        [sys.executable, *_cli_flags(runs, out)],
        cwd=SCRIPTS.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| a |" in proc.stdout and "wrote" in proc.stdout
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["steps"] == 10 * 2  # 10 x n_max from config.json
    assert math.isfinite(on_disk["final"]["a"]["test_loss"]["mean"])
    # Same settings as the in-process run: the same numbers.
    assert on_disk["curves"]["a"] == result[0]["curves"]["a"]


def test_diverged_seed_is_null_in_json_and_marked_in_table():
    curves = {
        "train_loss": np.array([[2.0, 1.0, 0.5], [2.0, np.nan, np.nan]]),
        "valid_loss": np.array([[2.0, 0.4], [2.0, np.inf]]),
        "valid_accuracy": np.array([[0.1, 0.9], [0.1, 0.1]]),
        "test_loss": np.array([[2.0, 0.5], [2.0, np.nan]]),
        "test_accuracy": np.array([[0.1, 0.8], [0.1, 0.1]]),
        "update_norm": np.array([[1.0, 0.5, 0.25], [1.0, np.nan, np.nan]]),
        "param_norm": np.array([[3.0, 6.0], [3.0, np.nan]]),
    }
    summary = evaluation.eval_report.final_summary(curves, train_window=2)
    assert summary["test_loss"] == {"mean": None, "std": None}
    assert summary["test_accuracy"]["mean"] == pytest.approx(0.45)
    json.dumps(summary, allow_nan=False)  # strict JSON
    assert evaluation.eval_report.jsonable(curves["train_loss"])[1] == [2.0, None, None]
    assert evaluation.eval_report.mean_pm_std(summary["test_loss"]) == "diverged"
    assert (
        evaluation.eval_report.mean_pm_std(summary["test_accuracy"], 100.0, 2)
        == "45.00 ± 35.00"
    )
    # A warmup from lr 0 makes the first update norm 0: not a divergence.
    warmup = {"update_norm_first": {"mean": 0.0}, "update_norm": {"mean": 0.2}}
    assert evaluation.eval_report._growth(warmup, "update_norm") == "0 -> 0.2"
    assert evaluation.eval_report._growth(summary, "update_norm") == "diverged"


@pytest.mark.parametrize("env_id", ["ELO-ImageNet32-ResNet18", "ELO-FineWeb-GPT2Mini"])
def test_out_of_distribution_smoke(runs, tmp_path, env_id, real_text_files):
    """The digits-MLP LO against AdamW on the paper's OOD models, small and offline:
    ResNet-18 (width 4) on digits, GPT-2-mini (width 16) on real text as bytes."""
    options = (
        {"dataset": "digits", "width": 4, "batch_size": 16}
        if "ResNet" in env_id
        else {
            "dataset": "text",
            "text_files": tuple(real_text_files),
            "width": 16,
            "context_length": 16,
            "batch_size": 8,
        }
    )
    config = _config(
        runs,
        los=(("a", str(runs / "a")),),
        env=env_id,
        allow_task_mismatch=True,
        steps=6,
        eval_every=3,
        seeds=1,
        lrs=(1e-3,),
        baselines=("adamw",),
        max_grid_extensions=0,
        **options,
    )
    res = evaluation.run(config, tmp_path)
    assert res["task"]["model"] == ("resnet18" if "ResNet" in env_id else "gpt2mini")
    assert res["task"]["dataset"] == options["dataset"]
    assert res["eval_steps"] == [0, 3, 6] and set(res["final"]) == {"a", "AdamW"}
    for method in ("a", "AdamW"):
        final = res["final"][method]
        assert math.isfinite(final["valid_loss"]["mean"])
        assert 0.0 <= final["test_accuracy"]["mean"] <= 1.0
    assert (tmp_path / "table.md").is_file() and (tmp_path / "valid_loss.png").is_file()


def test_host_loop_gives_the_scan_curves(runs, result, tmp_path):
    """The Python-driven loop (used for conv nets on CPU) trains the same optimizees
    on the same batches as the compiled scan and evaluates at the same steps."""
    res = evaluation.run(
        _config(runs, step_loop="host", baselines=("adamw",), max_grid_extensions=0),
        tmp_path,
    )
    assert res["eval_steps"] == result[0]["eval_steps"]
    for method in ("a", "AdamW"):
        host, scan = res["curves"][method], result[0]["curves"][method]
        if method == "AdamW":
            host, scan = host[str(LRS[0])], scan[str(LRS[0])]
        for key, values in scan.items():
            np.testing.assert_allclose(
                np.asarray(host[key], float),
                np.asarray(values, float),
                rtol=1e-4,
                atol=1e-6,
                err_msg=f"{method} {key}",
            )
    with pytest.raises(ValueError, match="unknown step_loop 'gpu'"):
        evaluation.run(_config(runs, step_loop="gpu"), tmp_path / "bad")


SCHEDULED = (
    "adamw_cosine",
    "adamw_invsqrt",
    "lamb_cosine",
    "cautious_lamb_cosine",
    "lamb_b2_95_cosine",
)


def test_scheduled_baselines_are_tuned_and_reported(result):
    """Each scheduled baseline records its grown grid, every configuration's final
    validation loss, the pick (the lowest mean) and whether it sits at an edge; its
    final row is the picked configuration's, with the same fields as AdamW's."""
    res, out = result
    for family in SCHEDULED:
        axes = ("lr", "tau") if family == "adamw_invsqrt" else ("lr",)
        search = res["baselines"][family]
        assert tuple(search["grid"]) == axes
        assert search["grid"]["lr"] == [0.005, 0.01, 0.02]  # grown both ways once
        if family == "adamw_invsqrt":
            assert search["grid"]["tau"] == [1.0, 10.0, 100.0]
        expected = 9 if family == "adamw_invsqrt" else 3
        assert len(search["losses"]) == expected and search["extensions"] == 1
        means = {tuple(r[a] for a in axes): r["valid_loss"] for r in search["losses"]}
        best = min(means, key=means.get)
        assert tuple(search["pick"][a] for a in axes) == best
        final = res["final"][family]
        assert set(final) == set(res["final"]["AdamW"])
        assert final["valid_loss"]["mean"] == pytest.approx(means[best])
        curve = np.asarray(res["curves"][family]["valid_loss"], float)
        assert final["valid_loss"]["mean"] == pytest.approx(curve[:, -1].mean())
        assert isinstance(search["at_edge"], list)
    table = (out / "table.md").read_text()
    assert "AdamW warmup + cosine: lr 0.005, 0.01, 0.02 (3 configurations" in table


@pytest.mark.parametrize("grid", ["COSINE_LRS", "INVSQRT_LRS", "LAMB_LRS"])
def test_scheduled_grids_are_as_dense_as_the_constant_grid_over_their_range(grid):
    """A scheduled baseline tuned on a coarser grid than the constant one is weaker
    by construction: on the held-out family the cosine pick lies between 0.004 and
    0.01, where the constant grid has 0.007."""
    lrs = getattr(evaluation, grid)
    inside = [lr for lr in evaluation.ADAMW_LRS if min(lrs) <= lr <= max(lrs)]
    assert set(inside) <= set(lrs), sorted(set(inside) - set(lrs))
    assert max(lrs) > 0.02  # above the LO's nominal lr (issue 28)


def test_tune_grid_grows_past_an_edge_until_the_pick_is_inside():
    """On a synthetic loss table (no training): a minimum beyond the grid's top is
    reached by doubling, each point is run once, a diverged point is never picked,
    and a bound on the rounds leaves the pick at the edge, reported."""
    calls = []

    def loss(point):
        calls.append(point)
        lr, tau = point
        if lr > 0.3:
            return np.array([np.nan, 0.0])  # diverged on a seed
        value = np.log(lr / 0.08) ** 2 + np.log10(tau / 1000.0) ** 2
        return np.array([value, value + 0.1])

    axes = [("lr", (0.02, 0.01), 2.0), ("tau", (10.0, 100.0), 10.0)]
    search = evaluation.tune_grid(loss, axes, max_extensions=5)
    assert search["pick"] == {"lr": 0.08, "tau": 1000.0}
    assert search["grid"]["lr"] == [0.01, 0.02, 0.04, 0.08, 0.16]
    assert search["grid"]["tau"] == [10.0, 100.0, 1000.0, 10000.0]
    assert search["at_edge"] == [] and search["extensions"] == 3
    assert len(calls) == len(set(calls)) == len(search["losses"]) == 5 * 4
    record = next(r for r in search["losses"] if r["lr"] == 0.08 and r["tau"] == 1e3)
    assert record["valid_loss"] == pytest.approx(0.05)
    assert record["valid_loss_per_seed"] == pytest.approx([0.0, 0.1])
    bounded = evaluation.tune_grid(loss, axes, max_extensions=1)
    assert bounded["pick"] == {"lr": 0.04, "tau": 1000.0}
    assert bounded["at_edge"] == ["lr", "tau"] and bounded["extensions"] == 1
    # Past 0.3 every lr diverges: it is never picked, though the finite one is an edge.
    edge = evaluation.tune_grid(
        lambda p: loss((p[0], 1000.0)), [("lr", (0.16, 0.32), 2.0)], max_extensions=0
    )
    assert edge["pick"] == {"lr": 0.16} and edge["at_edge"] == ["lr"]
    # A pick at the top edge that stays best after one more lr is inside: one round.
    inside = evaluation.tune_grid(
        lambda p: np.array([abs(np.log(p[0] / 0.02))]), [("lr", (0.01, 0.03), 2.0)], 3
    )
    assert inside["pick"] == {"lr": 0.03} and inside["grid"]["lr"] == [0.01, 0.03, 0.06]
    assert inside["extensions"] == 1 and inside["at_edge"] == []


def _cautious_lamb(schedule, weight_decay):
    """optax.lamb with Adam's coordinates that disagree in sign with the gradient set
    to 0 and each tensor divided by the fraction kept (Cautious LAMB)."""
    adam = optax.scale_by_adam(eps=1e-8)

    def update(grads, state, params=None):
        direction, state = adam.update(grads, state, params)
        keep = jax.tree.map(lambda u, g: np.sign(u) == np.sign(g), direction, grads)
        return jax.tree.map(lambda u, k: u * k / k.mean(), direction, keep), state

    return optax.chain(
        optax.GradientTransformation(adam.init, update),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_trust_ratio(),
        optax.scale_by_learning_rate(schedule),
    )


@pytest.mark.parametrize("family", SCHEDULED)
def test_scheduled_programs_equal_optax_with_the_schedule(family):
    """lr and tau traced through one jitted program give the updates of
    optax.adamw (optax.lamb for LAMB) with the concrete schedule, step by step."""
    steps, lr, tau, wd = 10, 0.03, 4.0, 1e-4
    if family == "adamw_invsqrt":
        schedule = evaluation.schedules.inverse_sqrt_decay(lr, tau)
    else:
        schedule = optax.warmup_cosine_decay_schedule(0.0, lr, 3, steps, 0.0)
    if family == "lamb_cosine":
        reference = optax.lamb(schedule, eps=1e-8, weight_decay=wd)
    elif family == "cautious_lamb_cosine":
        reference = _cautious_lamb(schedule, wd)
    elif family == "lamb_b2_95_cosine":
        reference = optax.lamb(schedule, b2=0.95, eps=1e-8, weight_decay=wd)
    else:
        reference = optax.adamw(schedule, weight_decay=wd)

    @jax.jit
    def update(hyper, grads, state, params):
        optimizer = evaluation.baseline_optimizer(
            family, hyper, steps=steps, warmup_fraction=0.3, weight_decay=wd
        )
        return optimizer.update(grads, state, params)

    params = {"w": jax.random.normal(jax.random.PRNGKey(0), (3, 4))}
    hyper = jax.numpy.array([lr, tau], jax.numpy.float32)
    ours = evaluation.baseline_optimizer(
        family, hyper, steps=steps, warmup_fraction=0.3, weight_decay=wd
    ).init(params)
    theirs = reference.init(params)
    for n in range(steps):
        # Small gradients, so that Adam's eps (1e-8, as the LO's) shows.
        grads = {"w": 1e-5 * jax.random.normal(jax.random.PRNGKey(n + 1), (3, 4))}
        mine, ours = update(hyper, grads, ours, params)
        expected, theirs = reference.update(grads, theirs, params)
        np.testing.assert_allclose(
            mine["w"], expected["w"], rtol=1e-5, atol=1e-8, err_msg=f"step {n}"
        )
        if n == 0 and family != "adamw_invsqrt":
            assert np.all(np.asarray(mine["w"]) == 0)  # warmup starts at lr 0
        params = optax.apply_updates(params, mine)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(baselines=("adamw_cosine",)), "must include 'adamw'"),
        (dict(baselines=("adamw", "sgd")), "must include 'adamw'"),
        (dict(warmup_fraction=1.0), "warmup_fraction"),
        (dict(invsqrt_taus=(0.0,)), "invsqrt_taus"),
        (dict(max_grid_extensions=-1), "max_grid_extensions"),
        (dict(los=(("adamw_cosine", "x"),)), "LO labels"),
    ],
)
def test_bad_baseline_settings(runs, tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        evaluation.run(_config(runs, **change), tmp_path)
