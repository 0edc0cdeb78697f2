"""scripts/reproduce.py --quick: the whole study pipeline at CI size, and its math."""

import importlib.util
import json
import pathlib
import sys

import pytest

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


def test_quick_study_writes_results_and_resumes(tmp_path):
    reproduce = _load("reproduce")
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
        }
        assert saved[family]["nominal"]["meta_seeds"] == []
        for method in ("elo", "naive", "curriculum", "buffer"):
            entry = saved[family][method]
            assert entry["meta_seeds"] == [0, 1]
            for key in ("train_loss_10x", "test_accuracy_10x", "test_loss_10x"):
                assert key in entry and len(entry[f"{key}_per_seed"]) == 2
    assert saved["heldout_task"]["hidden_sizes"] == [12, 12]
    assert saved["heldout_task"]["activation"] == "tanh"
    text = report.read_text()
    for heading in ("In distribution", "Held-out family", "Claims", "Ablations"):
        assert heading in text
    figures = sorted(p.name for p in (report.parent / "figures").iterdir())
    assert figures == [
        "inner_steps.png",
        "meta_loss.png",
        "study_heldout.png",
        "study_main.png",
    ]
    for png in (report.parent / "figures").iterdir():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = sorted(p.name for p in (tmp_path / "out" / "runs").iterdir())
    # methods x meta-seeds, ablations, p_th sweep, the nominal term alone
    assert len(runs) == 4 * 2 + 2 + 2 + 1
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
