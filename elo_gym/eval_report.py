"""What ``scripts/evaluate.py`` writes: final-step summaries, plots and the table.

Pure functions of the results dict that ``evaluate.run`` builds (curves per method,
the chosen AdamW lr, the baselines' grid searches, the evaluation steps), so a saved
``results.json`` can be redrawn.
"""

from __future__ import annotations

import math
import pathlib
import warnings

import numpy as np

ADAMW = "AdamW"
# The scheduled baselines, by results.json key, as the table and plots name them.
SCHEDULED = {
    "adamw_cosine": "AdamW warmup + cosine",
    "adamw_invsqrt": "AdamW lr / sqrt(1 + n / tau)",
    "lamb_cosine": "LAMB warmup + cosine",
    "cautious_lamb_cosine": "cautious LAMB warmup + cosine",
    "lamb_b2_95_cosine": "LAMB b2 0.95 warmup + cosine",
}


def methods(result: dict) -> list[str]:
    """The LOs, constant-lr AdamW and the scheduled baselines the result holds."""
    return [
        *result["lo_labels"],
        ADAMW,
        *(k for k in SCHEDULED if k in result["final"]),
    ]


def method_name(result: dict, method: str) -> str:
    """A baseline with its picked hyper-parameters; an LO by its label."""
    if method == ADAMW:
        return f"AdamW (lr {result['best_lr']:g})"
    if method in SCHEDULED:
        pick = result["baselines"][method]["pick"]
        values = ", ".join(f"{k} {v:g}" for k, v in pick.items())
        return f"{SCHEDULED[method]} ({values})"
    return method


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def final_summary(
    curves: dict[str, np.ndarray], train_window: int
) -> dict[str, dict[str, float | None]]:
    """Metrics at step H, mean and std over seeds (ddof 0); None where non-finite.

    The training loss and the update norm are means over the last ``train_window``
    steps: one minibatch alone is too noisy to rank methods by. ``update_norm_first``
    and ``param_norm_first`` are the same at the start of training.
    """
    per_step = ("train_loss", "update_norm")
    final = {
        **{k: curves[k][:, -train_window:].mean(axis=1) for k in per_step},
        **{k: v[:, -1] for k, v in curves.items() if k not in per_step},
        # Where the run started, so growth (or annealing) reads off one row.
        "update_norm_first": curves["update_norm"][:, :train_window].mean(axis=1),
        "param_norm_first": curves["param_norm"][:, 0],
    }
    with np.errstate(invalid="ignore"):  # inf - inf in std: reported as None
        return {
            k: {
                "mean": _finite_or_none(np.mean(v)),
                "std": _finite_or_none(np.std(v)),
            }
            for k, v in final.items()
        }


def jsonable(array: np.ndarray) -> list:
    """Nested lists with non-finite values as null (strict JSON has no NaN)."""
    as_object = np.where(np.isfinite(array), array, None).astype(object)
    return [[None if x is None else float(x) for x in row] for row in as_object]


def moving_average(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1:
        return y
    kernel = np.ones(window) / window
    return np.convolve(y, kernel, mode="valid")


def _band(ax, x, per_seed: np.ndarray, label: str, color) -> None:
    """Mean over seeds with a min-max band; diverged (NaN) seeds are left out."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all seeds NaN: a gap
        mean = np.nanmean(per_seed, axis=0)
        low, high = np.nanmin(per_seed, axis=0), np.nanmax(per_seed, axis=0)
    ax.plot(x, mean, label=label, color=color, lw=1.5)
    ax.fill_between(x, low, high, color=color, alpha=0.2, lw=0)


def _horizons(ax, n_max: dict[str, int]) -> None:
    for i, horizon in enumerate(sorted(set(n_max.values()))):
        ax.axvline(
            horizon,
            color="red",
            ls="--",
            lw=1.2,
            label="meta-training horizon" if i == 0 else None,
        )


def _plot_losses(ax, result: dict, which: str, window: int) -> None:
    import matplotlib.pyplot as plt

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, method in enumerate(methods(result)):
        curves = result["curves"][method]
        label = method_name(result, method)
        if method == ADAMW:
            curves = curves[str(result["best_lr"])]
        per_seed = np.asarray(curves[which], dtype=float)
        if which in ("train_loss", "update_norm"):
            x = np.arange(per_seed.shape[1])  # loss of theta_n, before update n
            per_seed = np.stack([moving_average(row, window) for row in per_seed])
            x = x[window - 1 :] if window > 1 else x
        else:
            x = np.asarray(result["eval_steps"])
        _band(ax, x, per_seed, label, colors[i % len(colors)])
    _horizons(ax, result["n_max"])
    ax.set_yscale("log")
    ax.set_xlabel("inner step")
    ax.grid(True, which="both", alpha=0.3)


def write_plots(result: dict, out_dir: pathlib.Path, smooth: int | None) -> list[str]:
    """Figs. 3-5-style PNGs; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, seeds = result["steps"], result["config"]["seeds"]
    window = smooth if smooth is not None else max(1, steps // 100)
    window = min(max(1, window), steps)
    titles = {
        "train_loss": f"training loss (minibatch, moving average of {window})"
        if window > 1
        else "training loss (minibatch)",
        "valid_loss": "validation loss",
    }
    written = []
    suptitle = f"{result['config']['env']}: mean over {seeds} seeds, band = min-max"
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, which in zip(axes, titles, strict=True):
        _plot_losses(ax, result, which, window)
        ax.set_title(titles[which])
    axes[0].legend(fontsize=8)
    fig.suptitle(suptitle)
    fig.tight_layout()
    fig.savefig(out_dir / "loss_curves.png", dpi=120)
    plt.close(fig)
    written.append("loss_curves.png")
    for which, title in titles.items():
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        _plot_losses(ax, result, which, window)
        ax.set_title(f"{title}\n{suptitle}", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"{which}.png"
        fig.savefig(out_dir / name, dpi=120)
        plt.close(fig)
        written.append(name)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, which, title in (
        (axes[0], "update_norm", f"update norm (moving average of {window})"),
        (axes[1], "param_norm", "parameter norm"),
    ):
        _plot_losses(ax, result, which, window)
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{suptitle}: an LO that anneals shrinks its updates like AdamW")
    fig.tight_layout()
    fig.savefig(out_dir / "norms.png", dpi=120)
    plt.close(fig)
    written.append("norms.png")
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    cmap = plt.get_cmap("viridis")
    lrs = sorted(result["curves"][ADAMW], key=float, reverse=True)  # grown grid too
    for i, lr in enumerate(lrs):
        per_seed = np.asarray(result["curves"][ADAMW][lr]["valid_loss"], float)
        color = cmap(i / max(1, len(lrs) - 1))
        _band(ax, result["eval_steps"], per_seed, f"lr {float(lr):g}", color)
    _horizons(ax, result["n_max"])
    ax.set_yscale("log")
    ax.set_xlabel("inner step")
    ax.set_title(f"AdamW lr sweep: validation loss (best: {result['best_lr']:g})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "adamw_sweep.png", dpi=120)
    plt.close(fig)
    written.append("adamw_sweep.png")
    return written


def mean_pm_std(
    stat: dict[str, float | None], scale: float = 1.0, digits: int = 4
) -> str:
    if stat["mean"] is None or stat["std"] is None:
        return "diverged"  # non-finite on at least one seed
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"


def _growth(summary: dict, key: str) -> str:
    """``first -> final (ratio x)`` of a norm's means over seeds."""
    first, final = summary[f"{key}_first"]["mean"], summary[key]["mean"]
    if first is None or final is None:
        return "diverged"
    if first == 0:  # a warmup from lr 0 over the whole first window: no ratio
        return f"0 -> {final:.3g}"
    return f"{first:.3g} -> {final:.3g} ({final / first:.2f}x)"


def table_markdown(result: dict) -> str:
    """Table 1-style summary at the final step, mean ± std over seeds."""
    cfg = result["config"]
    lines = [
        f"Task {cfg['env']}, H = {result['steps']} inner steps, {cfg['seeds']} seeds "
        f"(mean ± std over seeds, at step H). Meta-training horizon(s): "
        + (", ".join(f"{k} {v}" for k, v in result["n_max"].items()) or "unknown")
        + ".",
        "",
        "| method | test accuracy (%) | test loss | validation loss | "
        f"train loss (last {min(result['eval_every'], result['steps'])} "
        "minibatches) | update norm, start -> H | param norm, start -> H |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in methods(result):
        summary = result["final"][method]
        name = method_name(result, method)
        cells = [
            mean_pm_std(summary["test_accuracy"], 100.0, 2),
            mean_pm_std(summary["test_loss"]),
            mean_pm_std(summary["valid_loss"]),
            mean_pm_std(summary["train_loss"]),
            _growth(summary, "update_norm"),
            _growth(summary, "param_norm"),
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", *_grid_notes(result), ""]
    return "\n".join(lines)


def _grid_notes(result: dict) -> list[str]:
    """How each baseline was tuned: its final grid, and a warning where the pick
    still sits at an edge of it."""
    cfg = result["config"]
    searches = result.get("baselines")
    if searches is None:  # a results.json from before the scheduled baselines
        lrs = ", ".join(f"{lr:g}" for lr in cfg["lrs"])
        return [f"AdamW's lr was picked from {lrs} by the mean final validation loss."]
    lines = [
        f"Every baseline has weight decay {cfg['weight_decay']:g}; each was tuned on "
        "the mean final validation loss over its grid"
        + (
            f" (warmup + cosine: warmup {cfg['warmup_fraction']:g} of H, cosine "
            "decay to 0 at H)"
            if "adamw_cosine" in searches
            else ""
        )
        + ":",
        "",
    ]
    for family, search in searches.items():
        name = ADAMW if family == "adamw" else SCHEDULED[family]
        grid = "; ".join(
            f"{axis} " + ", ".join(f"{v:g}" for v in values)
            for axis, values in search["grid"].items()
        )
        edge = (
            f" **still at the edge of its grid in {', '.join(search['at_edge'])}**"
            if search["at_edge"]
            else ""
        )
        lines.append(
            f"- {name}: {grid} ({len(search['losses'])} configurations, grown "
            f"{search['extensions']} times){edge}."
        )
    return lines
