"""Meta-training plots from PES run directories (like the ELO paper's Fig. 2).

The library of ``scripts/plot_meta_training.py`` (:func:`main`); :func:`run` draws.

- ``inner_steps.png`` (Fig. 2 left): how far into the inner trajectory the copies
  were trained, ELO (buffer restarts) against naive (fresh starts only) at equal
  compute. ``metrics.csv`` logs, per outer step, the mean and the max over copies of
  the inner-step index reached; so the figure shows the distribution over outer steps
  of those two statistics (not a per-copy histogram of every inner step trained on),
  and says so in its title.
- ``meta_loss.png`` (Fig. 2 right): meta-loss against the outer step, ELO against
  buffer-only (buffer restarts, no behavior cloning). The ELO meta-loss
  ``(1 - alpha) L_bc + alpha L_task`` is mostly L_bc early on, so a second panel shows
  the task loss of both runs, which compares like with like.
- ``validation.png``: the periodic validation the PES agent runs (``--eval-every``):
  each LO of the meta-training trajectory trains fresh optimizees for 10x the
  horizon; its validation loss, and its update and parameter norms at the end over
  those at the start, against the outer step, with the LO's silenced self (its MLP
  zeroed: the nominal term alone, dashed) and Adam's (lr 1e-3) as references; a fourth
  panel shows the LO's validation loss minus its silenced self's, seed by seed on the
  same optimizees, with its std over validation seeds as a band (runs from before the
  paired columns: the difference of the means, against the sum of their stds), so
  "meta-training improved the LO" reads as a point below the band. An LO drifting
  into "big constant steps" shows here as a flat update norm and a growing parameter
  norm.

Usage::

    python scripts/plot_meta_training.py --elo runs/elo --naive runs/naive \
        --buffer runs/buffer --out plots/
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import pathlib
from collections.abc import Sequence

import numpy as np

HIST_COLUMNS = ("outer_step", "mean_inner_step", "max_inner_step")
LOSS_COLUMNS = ("outer_step", "meta_loss", "task_loss")
VALIDATION_PANELS = (
    ("valid_loss", "validation loss at 10x the horizon"),
    ("update_norm_ratio", "update norm, end / start"),
    ("param_norm_ratio", "parameter norm, end / start"),
)
VALIDATION_COLUMNS = (
    "outer_step",
    *(f"val_{who}_{k}" for who in ("lo", "adam") for k, _ in VALIDATION_PANELS),
)
# The silenced LO's columns and the spreads over validation seeds (runs from before
# them plot without).
SILENCED_COLUMNS = (
    *(f"val_silenced_{k}" for k, _ in VALIDATION_PANELS),
    "val_lo_valid_loss_std",
    "val_silenced_valid_loss_std",
)
# The LO minus its silenced self seed by seed (validation.GAIN; runs from before it
# plot the difference of the means).
PAIRED_COLUMNS = (
    "val_lo_minus_silenced_valid_loss",
    "val_lo_minus_silenced_valid_loss_std",
)


@dataclasses.dataclass(frozen=True)
class PlotConfig:
    """Which runs to plot; a figure needs ELO and its comparison run."""

    elo: str  # ELO run directory (metrics.csv, config.json)
    naive: str | None = None  # naive run, same compute: the inner-step figure
    buffer: str | None = None  # buffer-only run: the meta-loss figure
    smooth: int = 1  # moving-average window of the loss curves (outer steps)


def read_metrics(run_dir: str | pathlib.Path, columns: Sequence[str]) -> dict:
    """Columns of a run's ``metrics.csv`` as float arrays, and its config (or {}).

    Raises:
      FileNotFoundError: the run has no metrics.csv.
      ValueError: a required column is missing.
    """
    run_dir = pathlib.Path(run_dir)
    file = run_dir / "metrics.csv"
    if not file.is_file():
        raise FileNotFoundError(f"no metrics.csv in {run_dir} (is it a PES run dir?)")
    with file.open(newline="") as f:
        rows = list(csv.DictReader(f))
    header = rows[0].keys() if rows else []
    missing = [c for c in columns if c not in header]
    if missing:
        raise ValueError(f"{file} lacks column(s) {missing}; it has {list(header)}")

    def value(text: str) -> float:
        return float(text) if text not in ("", None) else np.nan

    out = {c: np.array([value(r[c]) for r in rows], dtype=float) for c in columns}
    config_file = run_dir / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    return {"columns": out, "config": config, "name": run_dir.name}


def _compute(config: dict, num_outer: int) -> int | None:
    """Inner steps the run paid for: outer steps x truncation x copies."""
    if "truncation" not in config or "num_pairs" not in config:
        return None
    return num_outer * config["truncation"] * 2 * config["num_pairs"]


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1:
        return y
    kernel = np.ones(window) / window
    return np.convolve(y, kernel, mode="same")


def plot_inner_steps(elo: dict, naive: dict, path: pathlib.Path) -> dict:
    """Histogram over outer steps of the mean (filled) and max (outline) inner index."""
    import matplotlib.pyplot as plt

    runs = {"ELO": elo, "naive": naive}
    colors = {"ELO": "C0", "naive": "C1"}
    top = max(
        np.nanmax(r["columns"]["max_inner_step"], initial=1.0) for r in runs.values()
    )
    bins = np.linspace(0, top, 41)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    stats = {}
    for name, r in runs.items():
        mean = r["columns"]["mean_inner_step"]
        peak = r["columns"]["max_inner_step"]
        compute = _compute(r["config"], len(mean))
        ax.hist(
            mean,
            bins=bins,
            alpha=0.45,
            color=colors[name],
            label=f"{name}: mean over copies (avg {np.nanmean(mean):.0f})",
        )
        ax.hist(
            peak,
            bins=bins,
            histtype="step",
            lw=1.5,
            color=colors[name],
            label=f"{name}: max over copies (avg {np.nanmean(peak):.0f})",
        )
        ax.axvline(np.nanmean(mean), color=colors[name], ls=":", lw=1)
        stats[name] = {
            "outer_steps": len(mean),
            "inner_steps_paid": compute,
            "avg_mean_inner_step": float(np.nanmean(mean)),
            "avg_max_inner_step": float(np.nanmean(peak)),
            "largest_inner_step": float(np.nanmax(peak)),
        }
    paid = {s["inner_steps_paid"] for s in stats.values()}
    equal = (
        "equal compute"
        if len(paid) == 1 and None not in paid
        else (
            "UNEQUAL compute: "
            + ", ".join(f"{k} {v['inner_steps_paid']}" for k, v in stats.items())
        )
    )
    ax.set_xlabel("inner-step index reached at the end of an outer step")
    ax.set_ylabel("outer steps")
    ax.set_title(
        "Distribution over outer steps of the copies' mean and max inner-step index\n"
        f"({stats['ELO']['outer_steps']} vs {stats['naive']['outer_steps']} outer "
        f"steps; {equal})",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return stats


def plot_meta_loss(elo: dict, buffer: dict, path: pathlib.Path, smooth: int) -> dict:
    """Meta-loss and task loss against the outer step, ELO vs buffer-only."""
    import matplotlib.pyplot as plt

    runs = {"ELO (buffer + BC)": elo, "buffer only": buffer}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    stats = {}
    for (name, r), color in zip(runs.items(), ("C0", "C3"), strict=True):
        cols = r["columns"]
        for ax, key in zip(axes, ("meta_loss", "task_loss"), strict=True):
            ax.plot(
                cols["outer_step"],
                _smooth(cols[key], smooth),
                color=color,
                label=name,
                lw=1.3,
            )
        stats[name] = {
            "final_meta_loss": float(cols["meta_loss"][-1]),
            "final_task_loss": float(cols["task_loss"][-1]),
        }
    axes[0].set_title("meta-loss (ELO: (1-alpha) L_bc + alpha L_task)", fontsize=10)
    axes[1].set_title("task loss L_task of the trained copies", fontsize=10)
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("outer step")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if smooth > 1:
        fig.suptitle(f"moving average over {smooth} outer steps", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return stats


def plot_validation(runs: list[dict], path: pathlib.Path) -> dict:
    """The periodic validation of each run's LO against the outer step, beside its
    silenced self where the run logged it; returns the last validated values per
    run (and the LO's valid loss minus its silenced self's, with the spread)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    summary = {}
    for i, run in enumerate(runs):
        c, color = run["columns"], colors[i % len(colors)]
        rows = np.isfinite(c["val_lo_valid_loss"])
        x = c["outer_step"][rows] + 1  # validated after the step
        silenced = "val_silenced_valid_loss" in c
        for ax, (key, _) in zip(axes, VALIDATION_PANELS, strict=False):
            ax.plot(
                x, c[f"val_lo_{key}"][rows], marker="o", ms=3, color=color,
                label=run["name"],
            )  # fmt: skip
            if silenced:
                ax.plot(
                    x, c[f"val_silenced_{key}"][rows], ls="--", color=color,
                    label=f"{run['name']}, MLP silenced",
                )  # fmt: skip
        whos = ("lo", "silenced", "adam") if silenced else ("lo", "adam")
        summary[run["name"]] = {
            f"{who}_{key}": float(c[f"val_{who}_{key}"][rows][-1])
            for who in whos
            for key, _ in VALIDATION_PANELS
        }
        if PAIRED_COLUMNS[0] in c:
            gap, spread = (c[k][rows] for k in PAIRED_COLUMNS)
        elif silenced:
            gap = c["val_lo_valid_loss"][rows] - c["val_silenced_valid_loss"][rows]
            spread = (
                c["val_lo_valid_loss_std"][rows]
                + c["val_silenced_valid_loss_std"][rows]
            )
        if silenced:
            axes[3].plot(x, gap, marker="o", ms=3, color=color, label=run["name"])
            axes[3].fill_between(x, -spread, spread, color=color, alpha=0.15, lw=0)
            summary[run["name"]].update(
                lo_minus_silenced_valid_loss=float(gap[-1]),
                spread_valid_loss=float(spread[-1]),
            )
    reference = runs[0]["columns"]
    rows = np.isfinite(reference["val_adam_valid_loss"])
    for ax, (key, title) in zip(axes, VALIDATION_PANELS, strict=False):
        ax.axhline(
            reference[f"val_adam_{key}"][rows][-1], color="k", ls=":", label="Adam"
        )
        ax.set_yscale("log")
        ax.set_title(title)
    axes[3].axhline(0.0, color="k", lw=0.8)
    axes[3].set_title(
        "LO minus its silenced self, validation loss, seed by seed\n"
        "(band: its std over validation seeds)",
        fontsize=9,
    )
    for ax in axes:
        ax.set_xlabel("outer step")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("each LO of meta-training, on fresh optimizees for 10x the horizon")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return summary


def _validated(run_dir: str) -> dict | None:
    """The run's validation columns, or None if it never validated."""
    # Runs from before the paired columns, or before the silenced LO's, plot without.
    for extra in (SILENCED_COLUMNS + PAIRED_COLUMNS, SILENCED_COLUMNS, ()):
        try:
            run = read_metrics(run_dir, VALIDATION_COLUMNS + extra)
            break
        except ValueError:
            continue
    else:  # a run from before periodic validation, or eval_every 0
        return None
    return run if np.isfinite(run["columns"]["val_lo_valid_loss"]).any() else None


def run(config: PlotConfig, workdir: str | pathlib.Path) -> dict:
    """Writes the figures the given runs allow; returns {figure: summary numbers}.

    Raises:
      ValueError: neither a naive nor a buffer-only run was given.
    """
    import matplotlib

    matplotlib.use("Agg")
    if config.naive is None and config.buffer is None:
        raise ValueError("give --naive (inner-step figure) and/or --buffer (meta-loss)")
    out = pathlib.Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict = {}
    if config.naive is not None:
        elo = read_metrics(config.elo, HIST_COLUMNS)
        naive = read_metrics(config.naive, HIST_COLUMNS)
        written["inner_steps.png"] = plot_inner_steps(
            elo, naive, out / "inner_steps.png"
        )
    if config.buffer is not None:
        elo = read_metrics(config.elo, LOSS_COLUMNS)
        buffer = read_metrics(config.buffer, LOSS_COLUMNS)
        written["meta_loss.png"] = plot_meta_loss(
            elo, buffer, out / "meta_loss.png", config.smooth
        )
    given = [r for r in (config.elo, config.naive, config.buffer) if r is not None]
    validated = [v for v in map(_validated, given) if v is not None]
    if validated:
        written["validation.png"] = plot_validation(validated, out / "validation.png")
    (out / "meta_training_plots.json").write_text(json.dumps(written, indent=2))
    return written


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: parse flags, run, print the summary."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--elo", required=True, help="ELO run directory")
    p.add_argument("--naive", help="naive run directory (inner-step figure)")
    p.add_argument("--buffer", help="buffer-only run directory (meta-loss figure)")
    p.add_argument("--smooth", type=int, default=1, help="loss moving average")
    p.add_argument("--out", required=True, help="output directory")
    a = p.parse_args(argv)
    config = PlotConfig(elo=a.elo, naive=a.naive, buffer=a.buffer, smooth=a.smooth)
    print(json.dumps(run(config, a.out), indent=2))


if __name__ == "__main__":
    main()
