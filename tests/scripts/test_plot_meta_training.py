"""scripts/plot_meta_training.py on small fake metrics.csv files."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COLUMNS = (
    "outer_step",
    "meta_loss",
    "task_loss",
    "bc_loss",
    "alpha",
    "mean_inner_step",
    "max_inner_step",
)


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "_plot_meta_training_under_test", SCRIPTS / "plot_meta_training.py"
    )
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolve string annotations through sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


plot = _load()


def fake_run(
    run_dir: Path, mean_inner: np.ndarray, meta_loss: np.ndarray, num_pairs: int = 8
) -> Path:
    """A run dir with metrics.csv (the columns the plots read) and a config."""
    run_dir.mkdir(parents=True)
    with (run_dir / "metrics.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for t, (m, loss) in enumerate(zip(mean_inner, meta_loss, strict=True)):
            writer.writerow([t, loss, loss, 0.0, 1.0, m, 2 * m])
    config = {"truncation": 50, "num_pairs": num_pairs, "mode": run_dir.name}
    (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Path]:
    t = np.arange(30)
    return {
        "elo": fake_run(tmp_path / "elo", 25.0 + 10 * t, 2.3 * np.exp(-t / 10)),
        "naive": fake_run(tmp_path / "naive", 25.0 + (t % 4), 2.3 - 0.01 * t),
        "buffer": fake_run(tmp_path / "buffer", 25.0 + 10 * t, 2.3 + 0.1 * t),
    }


def _is_png(path: Path) -> bool:
    data = path.read_bytes()
    return data[:8] == PNG_MAGIC and len(data) > 5_000


def test_both_figures(runs, tmp_path):
    config = plot.PlotConfig(
        elo=str(runs["elo"]), naive=str(runs["naive"]), buffer=str(runs["buffer"])
    )
    stats = plot.run(config, tmp_path / "out")
    assert _is_png(tmp_path / "out" / "inner_steps.png")
    assert _is_png(tmp_path / "out" / "meta_loss.png")
    inner = stats["inner_steps.png"]
    assert inner["ELO"]["inner_steps_paid"] == inner["naive"]["inner_steps_paid"]
    assert inner["ELO"]["avg_mean_inner_step"] == pytest.approx(25 + 10 * 14.5)
    assert inner["naive"]["largest_inner_step"] == 2 * 28
    loss = stats["meta_loss.png"]
    assert loss["buffer only"]["final_meta_loss"] == pytest.approx(2.3 + 2.9)
    saved = json.loads((tmp_path / "out" / "meta_training_plots.json").read_text())
    assert saved == json.loads(json.dumps(stats))


def test_only_one_comparison(runs, tmp_path):
    plot.run(plot.PlotConfig(elo=str(runs["elo"]), naive=str(runs["naive"])), tmp_path)
    assert (tmp_path / "inner_steps.png").is_file()
    assert not (tmp_path / "meta_loss.png").exists()


def test_unequal_compute_is_reported(tmp_path):
    t = np.arange(5.0)
    elo = fake_run(tmp_path / "elo", t, t + 1)
    naive = fake_run(tmp_path / "naive", t, t + 1, num_pairs=4)
    stats = plot.run(plot.PlotConfig(elo=str(elo), naive=str(naive)), tmp_path / "o")
    paid = stats["inner_steps.png"]
    assert paid["ELO"]["inner_steps_paid"] == 2 * paid["naive"]["inner_steps_paid"]


def test_errors(runs, tmp_path):
    with pytest.raises(ValueError, match="--naive"):
        plot.run(plot.PlotConfig(elo=str(runs["elo"])), tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        plot.run(plot.PlotConfig(elo=str(runs["elo"]), naive="nowhere"), tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.csv").write_text("outer_step,meta_loss\n0,1.0\n")
    with pytest.raises(ValueError, match="mean_inner_step"):
        plot.run(plot.PlotConfig(elo=str(runs["elo"]), naive=str(broken)), tmp_path)


def test_cli(runs, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "plot_meta_training.py"),
            "--elo",
            str(runs["elo"]),
            "--buffer",
            str(runs["buffer"]),
            "--smooth",
            "3",
            "--out",
            str(tmp_path / "cli"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "meta_loss.png" in json.loads(proc.stdout)
    assert _is_png(tmp_path / "cli" / "meta_loss.png")


def test_validation_figure_from_a_real_run(tmp_path):
    """A tiny PES run that validates twice: validation.png plots its LO at 10x the
    horizon against its silenced self and Adam, and the summary holds the last
    validated values."""
    from elo_gym.agents import pes_train

    run_dir = tmp_path / "elo"
    pes_train.main(
        pes_train.make_args(
            run_dir=str(run_dir),
            num_pairs=2,
            truncation=4,
            outer_steps=4,
            n_min=2,
            n_max=6,
            hidden_sizes=(10,),
            batch_size=32,
            hidden_size=8,
            eval_every=2,
            init_lo="none",
            progress=False,
        )
    )
    naive = fake_run(tmp_path / "naive", np.full(4, 25.0), np.full(4, 2.0))
    written = plot.run(plot.PlotConfig(elo=str(run_dir), naive=str(naive)), tmp_path)
    assert _is_png(tmp_path / "validation.png")
    summary = written["validation.png"]
    assert list(summary) == ["elo"]  # the fake naive run never validated
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert summary["elo"]["lo_valid_loss"] == pytest.approx(
        float(rows[3]["val_lo_valid_loss"])
    )
    assert 0 < summary["elo"]["adam_update_norm_ratio"] < 1  # Adam anneals
    # The LO against its silenced self: the difference seed by seed and its spread.
    last = rows[3]
    assert summary["elo"]["silenced_valid_loss"] == pytest.approx(
        float(last["val_silenced_valid_loss"])
    )
    assert summary["elo"]["lo_minus_silenced_valid_loss"] == pytest.approx(
        float(last["val_lo_minus_silenced_valid_loss"])
    )
    assert summary["elo"]["spread_valid_loss"] == pytest.approx(
        float(last["val_lo_minus_silenced_valid_loss_std"])
    )
    assert summary["elo"]["spread_valid_loss"] > 0
    # The paired difference has the means' difference as its mean.
    assert float(last["val_lo_minus_silenced_valid_loss"]) == pytest.approx(
        float(last["val_lo_valid_loss"]) - float(last["val_silenced_valid_loss"]),
        rel=1e-5,
    )
    # A run from before the paired columns plots the difference of the means,
    # against the sum of their stds.
    unpaired = tmp_path / "unpaired" / "elo"
    unpaired.mkdir(parents=True)
    kept = [k for k in rows[0] if "minus" not in k]
    with (unpaired / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=kept, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    written = plot.run(
        plot.PlotConfig(elo=str(unpaired), naive=str(naive)),
        tmp_path / "unpaired_plots",
    )
    assert written["validation.png"]["elo"]["spread_valid_loss"] == pytest.approx(
        float(last["val_lo_valid_loss_std"])
        + float(last["val_silenced_valid_loss_std"])
    )
    # A run from before the silenced LO's columns still plots, without them.
    old = tmp_path / "old" / "elo"
    old.mkdir(parents=True)
    kept = [k for k in rows[0] if "silenced" not in k and not k.endswith("_std")]
    with (old / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=kept, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    written = plot.run(
        plot.PlotConfig(elo=str(old), naive=str(naive)), tmp_path / "old_plots"
    )
    assert _is_png(tmp_path / "old_plots" / "validation.png")
    assert "silenced_valid_loss" not in written["validation.png"]["elo"]
