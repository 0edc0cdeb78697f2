"""scripts/reproduce.py --quick: the whole study pipeline at CI size, and its math.

The quick study with real PES runs (twelve meta-training runs and five clones) is
``-m slow``; CI runs the same pipeline, checked the same way, with each PES run
replaced by a stand-in that writes what ``pes_train.main`` leaves in a run directory.
PES itself, in every mode the study uses, is tests/agents/test_pes_train.py's.
"""

import importlib.util
import json
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import pytest

from elo_gym import lopt, pes, pes_run, runs, validation

SCRIPTS = pathlib.Path(__file__).parents[2] / "scripts"


def _load(name: str):
    sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def _final(train, acc, test, valid=1.0, norms=(1.0, 2.0, 10.0, 15.0), std=0.0):
    stat = lambda v: {"mean": v, "std": std}  # noqa: E731
    return {
        "train_loss": stat(train),
        "test_accuracy": stat(acc),
        "test_loss": stat(test),
        "valid_loss": stat(valid),
        "update_norm_first": stat(norms[0]),
        "update_norm": stat(norms[1]),
        "param_norm_first": stat(norms[2]),
        "param_norm": stat(norms[3]),
    }


def test_aggregate_is_mean_and_std_over_meta_seeds():
    reproduce = _load("reproduce")
    result = {
        "final": {
            "elo_s0": _final(0.1, 0.9, 0.3),
            "elo_s1": _final(0.3, 0.8, 0.5),
            "AdamW": _final(0.2, 0.85, 0.4, std=0.01),
        },
        "best_lr": 0.004,
    }
    result["final"]["nominal"] = _final(0.25, 0.8, 0.45, std=0.02)
    table = reproduce.aggregate(result, ("elo",), (0, 1), ("nominal",))
    assert list(table) == ["elo", "nominal", "adamw"]
    assert table["nominal"]["meta_seeds"] == []
    assert table["nominal"]["train_loss_10x"] == pytest.approx(0.25)
    assert table["nominal"]["train_loss_10x_std"] == pytest.approx(0.02)
    elo = table["elo"]
    assert elo["meta_seeds"] == [0, 1]
    assert elo["train_loss_10x"] == pytest.approx(0.2)
    assert elo["train_loss_10x_std"] == pytest.approx(0.1)  # ddof 0 over seeds
    assert elo["test_accuracy_10x"] == pytest.approx(0.85)
    assert elo["update_norm_ratio_10x"] == pytest.approx(2.0)
    assert elo["param_norm_ratio_10x"] == pytest.approx(1.5)
    assert table["adamw"]["lr"] == 0.004
    assert table["adamw"]["train_loss_10x_std"] == pytest.approx(0.01)
    line = reproduce.compare(table, "train_loss_10x", "elo", "adamw", True)
    assert line.startswith("train_loss_10x: elo not better than adamw (0.2 vs 0.2;")
    table["elo"]["train_loss_10x"] = 0.05
    line = reproduce.compare(table, "train_loss_10x", "elo", "adamw", True)
    assert "elo better than adamw" in line and "exceeds the spread 0.11" in line
    table["elo"]["train_loss_10x"] = 0.15
    line = reproduce.compare(table, "train_loss_10x", "elo", "adamw", True)
    assert "is within the spread" in line


def _stand_in_pes_main(args) -> pathlib.Path:
    """What a finished ``pes_train.main(args)`` leaves (config.json, metrics.csv with
    a validation row, lo.msgpack and best/), with an untrained LO and made-up
    metrics: no PES."""
    pes_train = sys.modules["reproduce"].pes_train
    args = args.resolved()
    run_dir = pathlib.Path(args.run.run_dir)
    steps = args.pes.outer_steps
    runs.prepare_run_dir(run_dir, runs.args_config(args, exclude=pes_run.LAUNCH))
    log = runs.MetricsLog(run_dir / "metrics.csv", pes_train.METRICS, 0)
    for t in range(steps):
        row = dict.fromkeys(pes_train.METRICS, math.nan)
        row.update(outer_step=t, meta_loss=2.0 - 0.1 * t, task_loss=2.1 - 0.1 * t)
        row.update(mean_inner_step=3.0 + t, max_inner_step=args.inner.n_max)
        row.update(task_index=0)
        if t == steps - 1:
            for who, loss in (("lo", 1.5), ("adam", 1.6)):
                row.update({f"val_{who}_{k}": 1.0 for k in validation.METRICS})
                row[f"val_{who}_valid_loss"] = loss
            row["val_best_step"] = steps
        log.write(row)
    log.close()
    meta = lopt.init_meta_params(jax.random.PRNGKey(args.seed), args.lo.hidden_size)
    state = pes.PESState(
        meta=meta,
        opt_state=None,
        env=None,
        accumulator=None,
        key=None,
        outer_step=jnp.int32(steps),
        best_meta=meta,
        best_valid_loss=jnp.float32(1.5),
        best_step=jnp.int32(steps),
    )
    info = dict(env=args.env, mode=args.mode, n_max=args.inner.n_max)
    pes_run.export(run_dir, state, args.lo, args.run.export, info)
    return run_dir


@pytest.mark.slow
def test_quick_study_writes_results_and_resumes(tmp_path):
    _check_quick_study(_load("reproduce"), tmp_path)


def test_quick_study_pipeline_with_stand_in_pes_runs(tmp_path, monkeypatch):
    """The quick study as above, each PES run replaced by :func:`_stand_in_pes_main`;
    the study asks for each of its runs once, and not again when it resumes."""
    reproduce = _load("reproduce")
    asked = []

    def stand_in(args):
        asked.append(pathlib.Path(args.run.run_dir).name)
        return _stand_in_pes_main(args)

    monkeypatch.setattr(reproduce.pes_train, "main", stand_in)
    plot, legends = reproduce.plot_methods, []
    monkeypatch.setattr(
        reproduce, "plot_methods", lambda *a, **k: legends.append(plot(*a, **k))
    )
    _check_quick_study(reproduce, tmp_path)
    assert sorted(asked) == sorted(reproduce.runs(reproduce.StudyConfig.quick()))
    # Both figures (drawn by the run and again by its resume) draw the nominal term
    # alone beside the methods and the baselines.
    assert len(legends) == 4
    for labels in legends:
        assert labels[:4] == ["elo", "naive", "curriculum", "buffer"]
        assert "nominal term alone (MLP silenced)" in labels
        assert sum(label.startswith("AdamW") for label in labels) == 3


def _check_quick_study(reproduce, tmp_path: pathlib.Path) -> None:
    """Runs the quick study, checks results.json, the report and the figures, then
    resumes it and checks that nothing is trained or evaluated again."""
    config = reproduce.StudyConfig.quick()
    report = tmp_path / "docs" / "results.md"
    results = reproduce.run(config, tmp_path / "out", report)
    saved = json.loads((tmp_path / "docs" / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    for family in ("methods", "heldout"):
        assert set(saved[family]) == {
            "elo",
            "naive",
            "curriculum",
            "buffer",
            "nominal",  # the default LO's nominal term alone
            "adamw",
            "adamw_cosine",
            "adamw_invsqrt",
            "lamb_cosine",
            "cautious_lamb_cosine",
            "lamb_b2_95_cosine",
        }
        assert saved[family]["nominal"]["meta_seeds"] == []
        adamw = saved[family]["adamw"]
        for baseline, picked in (
            ("adamw_cosine", {"lr"}),
            ("adamw_invsqrt", {"lr", "tau"}),
            ("lamb_cosine", {"lr"}),
            ("cautious_lamb_cosine", {"lr"}),
            ("lamb_b2_95_cosine", {"lr"}),
        ):
            entry = saved[family][baseline]
            assert set(entry) == set(adamw) | picked
            assert entry["lr"] == 0.01 and entry.get("tau", 10.0) == 10.0
            assert entry["at_edge"] == sorted(picked)  # a one-value grid, not grown
            assert entry["train_loss_10x"] > 0
        for method in ("elo", "naive", "curriculum", "buffer"):
            entry = saved[family][method]
            assert entry["meta_seeds"] == [0, 1]
            for key in ("train_loss_10x", "test_accuracy_10x", "test_loss_10x"):
                assert key in entry and len(entry[f"{key}_per_seed"]) == 2
    assert saved["heldout_task"]["hidden_sizes"] == [12, 12]
    assert saved["heldout_task"]["activation"] == "tanh"
    for grids in ("methods_grids", "heldout_grids"):
        assert set(saved[grids]) == {
            "adamw",
            "adamw_cosine",
            "adamw_invsqrt",
            "lamb_cosine",
            "cautious_lamb_cosine",
            "lamb_b2_95_cosine",
        }
        assert saved[grids]["adamw"]["grid"] == {"lr": [0.001, 0.01]}
    text = report.read_text()
    for heading in ("In distribution", "Held-out family", "Claims", "Ablations"):
        assert heading in text
    assert "AdamW warmup + cosine (tuned lr 0.01" in text
    assert "AdamW lr / sqrt(1 + n / tau) (tuned lr 0.01, tau 10" in text
    assert "lr / sqrt(1 + n / tau) over lr in {0.01} x tau in {10}" in text
    assert "LAMB warmup + cosine (tuned lr 0.01" in text
    for baseline in ("nominal", *reproduce.BASELINES):
        for prefix in ("", "held-out family: "):
            assert any(
                c.startswith(f"{prefix}train_loss_10x: elo")
                and f"than {baseline} (" in c
                for c in saved["claims"]
            ), (prefix, baseline)
    # The ablations and p_th sweep run the constant-lr AdamW only.
    ablations = json.loads(
        (tmp_path / "out" / "ablations" / "results.json").read_text()
    )
    assert set(ablations["baselines"]) == {"adamw"}
    figures = sorted(p.name for p in (report.parent / "figures").iterdir())
    assert figures == [
        "inner_steps.png",
        "meta_loss.png",
        "study_heldout.png",
        "study_main.png",
    ]
    for png in (report.parent / "figures").iterdir():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run_names = sorted(p.name for p in (tmp_path / "out" / "runs").iterdir())
    # methods x meta-seeds, ablations, p_th sweep, the nominal term alone
    assert len(run_names) == 4 * 2 + 2 + 2 + 1
    assert any(
        c.startswith("train_loss_10x: elo") and "nominal" in c for c in saved["claims"]
    )
    # Resuming: nothing is trained or evaluated again.
    stamps = {
        p: p.stat().st_mtime_ns
        for p in (tmp_path / "out").rglob("*")
        if p.name in ("lo.msgpack", "results.json")
    }
    reproduce.run(config, tmp_path / "out", report)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_claims_compare_elo_with_every_baseline_and_the_best_adamw_accuracy():
    reproduce = _load("reproduce")

    def entry(train, acc):
        out = {"meta_seeds": []}
        for key, value in (("train_loss_10x", train), ("test_accuracy_10x", acc)):
            out[key], out[f"{key}_std"] = value, 0.001
        return out

    table = {
        "elo": entry(0.03, 0.96),
        "naive": entry(0.05, 0.9),
        "curriculum": entry(0.05, 0.9),
        "buffer": entry(0.05, 0.9),
        "nominal": entry(0.031, 0.95),
        "adamw": entry(0.07, 0.94),
        "adamw_cosine": entry(0.01, 0.97),  # the best AdamW on accuracy
        "adamw_invsqrt": entry(0.04, 0.95),
        "lamb_cosine": entry(0.02, 0.98),  # not an AdamW: never the best AdamW
        "cautious_lamb_cosine": entry(0.025, 0.99),  # nor this one
        "lamb_b2_95_cosine": entry(0.026, 0.99),  # nor this one
    }
    lines = reproduce.claims(table, table)
    for prefix in ("", "held-out family: "):
        for other, verdict in (
            ("nominal", "better than nominal (0.03 vs 0.031; the gap is within"),
            ("adamw", "better than adamw (0.03 vs 0.07; the gap exceeds"),
            ("adamw_cosine", "not better than adamw_cosine (0.03 vs 0.01"),
            ("adamw_invsqrt", "better than adamw_invsqrt (0.03 vs 0.04; the gap"),
            ("lamb_cosine", "not better than lamb_cosine (0.03 vs 0.02; the gap"),
            (
                "cautious_lamb_cosine",
                "not better than cautious_lamb_cosine (0.03 vs 0.025; the gap",
            ),
            (
                "lamb_b2_95_cosine",
                "not better than lamb_b2_95_cosine (0.03 vs 0.026; the gap",
            ),
        ):
            expected = f"{prefix}train_loss_10x: elo {verdict}"
            assert any(line.startswith(expected) for line in lines), (prefix, other)
        assert (
            f"{prefix}test_accuracy_10x: elo not better than adamw_cosine (0.96 vs "
            "0.97; the gap exceeds the spread 0.002) (adamw_cosine is the best AdamW "
            "on it)"
        ) in lines
        assert (
            f"{prefix}test_accuracy_10x: elo not better than lamb_cosine (0.96 vs "
            "0.98; the gap exceeds the spread 0.002)"
        ) in lines
    assert reproduce.best_adamw(table, "train_loss_10x", True) == "adamw_cosine"
    table["adamw_cosine"]["test_accuracy_10x"] = None  # diverged: never the best
    assert reproduce.best_adamw(table, "test_accuracy_10x", False) == "adamw_invsqrt"
