"""The paper's study at CPU scale with meta-seeds: does ELO deliver at 10x its horizon?

Meta-trains ELO, naive, curriculum and buffer-only LOs on ELO-Digits-MLP with
``meta_seeds`` meta-training seeds each (the same compute per run: outer steps x pairs
x truncation, and every other setting at ``pes_train``'s defaults, so each method's
exported LO is the one its own periodic validation picked); trains fresh optimizees
with each LO for 10x the meta-training horizon, over ``eval_seeds`` optimizee seeds,
in distribution and on a held-out task family no LO saw in meta-training (``HELDOUT``),
against six baselines each tuned on validation loss (``scripts/evaluate.py``): AdamW
with a constant lr (the paper's 7 values, 0.02 and 0.03), with linear warmup + cosine
decay to the evaluation length, and with lr / sqrt(1 + n / tau) over lr x tau; LAMB
with warmup + cosine, the default LO's nominal term with its lr tuned per task; and
cautious LAMB and LAMB with b2 0.95 (the demonstrators of docs/levers.md's gated LOs)
with the same schedule, tuned alike.
The ablations (BC only, uniform) and the p_th sweep run with one meta-seed, against
the constant-lr AdamW only.

Rows are mean ± std over meta-seeds of each LO's mean over optimizee seeds; a
difference "exceeds the spread" when the two means are further apart than the sum of
their stds. Writes ``docs/results.md``, ``docs/results.json`` and figures.

The study is resumable: a meta-training run whose ``lo.msgpack`` exists and an
evaluation whose ``results.json`` matches its config are not run again, so a killed
study loses at most the run in progress.

Usage:
  python scripts/reproduce.py                          # full study -> docs/
  python scripts/reproduce.py --quick --out /tmp/smoke # CI-sized smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import shutil
import sys
import time
from typing import Any

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from elo_gym import checkpoint, evaluation, lopt, meta_plots  # noqa: E402
from elo_gym import runs as runs_lib  # noqa: E402
from elo_gym.agents import pes_train  # noqa: E402
from elo_gym.eval_report import moving_average as smooth  # noqa: E402

METHODS = ("elo", "naive", "curriculum", "buffer")
ABLATIONS = ("bc", "uniform")
ADAMW = "adamw"
# Every baseline by its results.json key; the scheduled ones are keyed the same in
# evaluate.py's results.
BASELINES = evaluation.BASELINES
LAMB = "lamb_cosine"
CAUTIOUS_LAMB = evaluation.CAUTIOUS_LAMB
LAMB_B2_95 = evaluation.LAMB_B2_95
# The AdamW ones: the done-when's test accuracy is the best of these.
ADAMWS = tuple(f for f in BASELINES if f not in (LAMB, CAUTIOUS_LAMB, LAMB_B2_95))
# The default LO's nominal term alone (its MLP silenced): the row that shows what the
# learned part of the LO adds to the schedule it is built on.
NOMINAL = "nominal"
# The held-out family: wider, one layer deeper and another activation than the
# meta-training MLP (64-32-32-10, ReLU); chosen before any LO was evaluated on it.
HELDOUT = dict(hidden_sizes=(128, 128, 128), activation="tanh")
METRICS = {
    "train_loss_10x": "train_loss",
    "test_accuracy_10x": "test_accuracy",
    "test_loss_10x": "test_loss",
    "valid_loss_10x": "valid_loss",
    "update_norm_ratio_10x": "update_norm_ratio",
    "param_norm_ratio_10x": "param_norm_ratio",
}


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """Sizes of the study; ``quick()`` gives the CI-sized one."""

    outer_steps: int = 400
    num_pairs: int = 8
    truncation: int = 50
    n_min: int = 20
    n_max: int = 200
    hidden_sizes: tuple[int, ...] | None = None  # None: the env's default MLP
    batch_size: int | None = None
    hidden_size: int = 32
    clone_steps: int = pes_train.PESArgs.clone_steps  # BC warm start of ELO's LO
    eval_every: int = 50  # outer steps between the runs' validation evaluations
    meta_seeds: tuple[int, ...] = (0, 1, 2)
    p_th_sweep: tuple[float, ...] = (0.05, 0.2)  # the default and the paper's
    eval_seeds: int = 3
    eval_steps: int | None = None  # None: 10 x n_max
    eval_lrs: tuple[float, ...] = evaluation.ADAMW_LRS
    eval_cosine_lrs: tuple[float, ...] = evaluation.COSINE_LRS
    eval_invsqrt_lrs: tuple[float, ...] = evaluation.INVSQRT_LRS
    eval_invsqrt_taus: tuple[float, ...] = evaluation.INVSQRT_TAUS
    eval_lamb_lrs: tuple[float, ...] = evaluation.LAMB_LRS
    eval_warmup_fraction: float = 0.05  # of the evaluation length
    eval_max_grid_extensions: int = 3  # rounds a grid grows past an edge pick
    heldout_hidden_sizes: tuple[int, ...] = HELDOUT["hidden_sizes"]
    heldout_activation: str = HELDOUT["activation"]

    @classmethod
    def quick(cls) -> StudyConfig:
        return cls(
            outer_steps=2,
            num_pairs=2,
            truncation=4,
            n_min=2,
            n_max=6,
            hidden_sizes=(10,),
            batch_size=32,
            hidden_size=8,
            clone_steps=2,
            eval_every=1,
            meta_seeds=(0, 1),
            p_th_sweep=(0.1, 0.5),
            eval_seeds=2,
            eval_steps=20,
            eval_lrs=(0.01, 0.001),
            eval_cosine_lrs=(0.01,),
            eval_invsqrt_lrs=(0.01,),
            eval_invsqrt_taus=(10.0,),
            eval_lamb_lrs=(0.01,),
            eval_max_grid_extensions=0,
            heldout_hidden_sizes=(12, 12),
        )


def _base_args(config: StudyConfig) -> dict:
    return dict(
        outer_steps=config.outer_steps,
        num_pairs=config.num_pairs,
        truncation=config.truncation,
        n_min=config.n_min,
        n_max=config.n_max,
        hidden_sizes=config.hidden_sizes,
        batch_size=config.batch_size,
        hidden_size=config.hidden_size,
        clone_steps=config.clone_steps,
        eval_every=config.eval_every,
        progress=False,
        checkpoint_every=max(1, config.outer_steps // 4),
    )


def runs(config: StudyConfig) -> dict[str, pes_train.Args]:
    """Every meta-training run of the study, by name (``<method>_s<meta-seed>``)."""
    base = _base_args(config)
    out = {
        f"{mode}_s{seed}": pes_train.make_args(mode=mode, seed=seed, **base)
        for mode in METHODS
        for seed in config.meta_seeds
    }
    first = config.meta_seeds[0]
    for mode in ABLATIONS:
        out[f"{mode}_s{first}"] = pes_train.make_args(mode=mode, seed=first, **base)
    default_p_th = pes_train.make_args().inner.p_th
    for p_th in config.p_th_sweep:
        if p_th != default_p_th:  # the main ELO run is the default p_th
            out[f"elo_pth{p_th:g}_s{first}"] = pes_train.make_args(
                mode="elo", p_th=p_th, seed=first, **base
            )
    return out


def meta_train(config: StudyConfig, out: pathlib.Path) -> dict[str, float]:
    """Runs every meta-training run not finished yet; returns wall seconds per run
    (kept in ``timings.json`` across resumed studies)."""
    timings_file = out / "timings.json"
    seconds = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    todo = runs(config)
    for i, (name, args) in enumerate(todo.items()):
        run_dir = out / "runs" / name
        if (run_dir / "lo.msgpack").is_file() and name in seconds:
            continue
        print(f"[{i + 1}/{len(todo)}] meta-training {name}", file=sys.stderr)
        tic = time.perf_counter()
        pes_train.main(runs_lib.replace_flat(args, run_dir=str(run_dir)))
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - tic
        out.mkdir(parents=True, exist_ok=True)
        timings_file.write_text(json.dumps(seconds, indent=2))
    return seconds


def nominal_lo(config: StudyConfig, out: pathlib.Path) -> list[str]:
    """Writes ``out/runs/nominal`` once: the default LO with every MLP weight zero, so
    that its update is its nominal term alone; ``[]`` if the default LO has none."""
    args = pes_train.make_args(**_base_args(config)).resolved()
    if not args.lo.nominal_lr > 0:
        return []
    run_dir = out / "runs" / NOMINAL
    if not (run_dir / checkpoint.LO_FILE).is_file():
        meta = lopt.init_meta_params(jax.random.PRNGKey(0), config.hidden_size)
        silent = meta._replace(mlp=jax.tree.map(np.zeros_like, meta.mlp))
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.save_lo(run_dir, silent, args.lo)
    return [NOMINAL]


def _evaluate(
    config: StudyConfig,
    out: pathlib.Path,
    names: list[str],
    label: str,
    baselines: tuple[str, ...] = BASELINES,
    **task,
) -> dict:
    """evaluation.run over ``names`` against ``baselines``, or its earlier results if
    the config matches."""
    eval_config = evaluation.EvalConfig(
        los=tuple((n, str(out / "runs" / n)) for n in names),
        steps=config.eval_steps,
        seeds=config.eval_seeds,
        lrs=config.eval_lrs,
        baselines=baselines,
        cosine_lrs=config.eval_cosine_lrs,
        warmup_fraction=config.eval_warmup_fraction,
        invsqrt_lrs=config.eval_invsqrt_lrs,
        invsqrt_taus=config.eval_invsqrt_taus,
        lamb_lrs=config.eval_lamb_lrs,
        max_grid_extensions=config.eval_max_grid_extensions,
        progress=False,
        **task,
    )
    results_file = out / label / "results.json"
    if results_file.is_file():
        saved = json.loads(results_file.read_text())
        expected = json.loads(json.dumps(dataclasses.asdict(eval_config)))
        expected["los"] = [list(x) for x in eval_config.los]
        if saved["config"] == expected:
            return saved
    print(f"evaluating {label}", file=sys.stderr)
    return evaluation.run(eval_config, out / label)


def _per_lo(final: dict) -> dict[str, float]:
    """One LO's (or AdamW's) means over optimizee seeds, by results.json key."""
    out = {}
    for key, name in METRICS.items():
        if name.endswith("_ratio"):
            norm = name.removesuffix("_ratio")
            first, last = final[f"{norm}_first"]["mean"], final[norm]["mean"]
            value = None if first in (None, 0) or last is None else last / first
        else:
            value = final[name]["mean"]
        out[key] = math.inf if value is None else float(value)
    return out


def aggregate(
    result: dict,
    methods: tuple[str, ...],
    seeds: tuple[int, ...],
    single: tuple[str, ...] = (),
) -> dict:
    """Per method: mean and std over meta-seeds of the per-LO means; then each of the
    LOs ``single`` (no meta-seed, e.g. :data:`NOMINAL`) and each AdamW baseline the
    result holds (with its picked ``lr``, ``tau`` where it has one, and ``at_edge``:
    the grid axes whose pick sits at an edge), whose stds are over optimizee seeds."""
    table = {}
    for method in methods:
        per_seed = [_per_lo(result["final"][f"{method}_s{s}"]) for s in seeds]
        entry: dict[str, Any] = {"meta_seeds": list(seeds)}
        for key in METRICS:
            values = np.array([p[key] for p in per_seed], np.float64)
            finite = bool(np.all(np.isfinite(values)))
            entry[key] = float(values.mean()) if finite else None
            entry[f"{key}_std"] = float(values.std()) if finite else None
            entry[f"{key}_per_seed"] = [
                float(v) if np.isfinite(v) else None for v in values
            ]
        table[method] = entry
    for name in single:
        table[name] = {"meta_seeds": [], **_single_entry(result["final"][name])}
    searches = result.get("baselines", {})
    for family in BASELINES:
        key = evaluation.ADAMW if family == ADAMW else family
        if key not in result["final"]:
            continue
        search = searches.get(family, {"pick": {"lr": result["best_lr"]}})
        table[family] = {
            "meta_seeds": [],
            **search["pick"],
            "at_edge": search.get("at_edge", []),
            **_single_entry(result["final"][key]),
        }
    return table


def baseline_name(family: str, entry: dict) -> str:
    """An AdamW baseline with its picked lr (and tau), as the tables name it."""
    name = {"adamw": "AdamW", **evaluation.eval_report.SCHEDULED}[family]
    picked = f"tuned lr {entry['lr']:g}"
    if "tau" in entry:
        picked += f", tau {entry['tau']:g}"
    edge = f"; at its grid's edge in {', '.join(entry['at_edge'])}"
    return f"{name} ({picked}{edge if entry.get('at_edge') else ''})"


def _json_lo(final: dict) -> dict[str, float | None]:
    """:func:`_per_lo` with null where a run diverged or a ratio is undefined (JSON
    has no inf), as the method tables write it."""
    return {k: v if math.isfinite(v) else None for k, v in _per_lo(final).items()}


def _single_entry(final: dict) -> dict:
    """One LO's (or AdamW's) means, with stds over optimizee seeds."""
    entry = {}
    for key, value in _json_lo(final).items():
        entry[key] = value
        name = METRICS[key]
        entry[f"{key}_std"] = None if name.endswith("_ratio") else final[name]["std"]
    return entry


def _fmt(entry: dict, key: str, scale: float = 1.0, digits: int = 4) -> str:
    mean, std = entry[key], entry[f"{key}_std"]
    if mean is None:
        return "diverged"
    if std is None:
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def table_markdown(table: dict) -> str:
    lines = [
        "| method | meta-seeds | train loss @10x | test accuracy (%) @10x | "
        "test loss @10x | update norm end/start | param norm end/start |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, entry in table.items():
        name = baseline_name(method, entry) if method in BASELINES else method
        if method == NOMINAL:
            name = "nominal term alone (the LO's MLP silenced)"
        lines.append(
            f"| {name} | {len(entry['meta_seeds']) or '-'} | "
            f"{_fmt(entry, 'train_loss_10x')} | "
            f"{_fmt(entry, 'test_accuracy_10x', 100, 2)} | "
            f"{_fmt(entry, 'test_loss_10x')} | "
            f"{_fmt(entry, 'update_norm_ratio_10x', digits=3)} | "
            f"{_fmt(entry, 'param_norm_ratio_10x', digits=3)} |"
        )
    return "\n".join(lines)


def compare(table: dict, key: str, a: str, b: str, lower_is_better: bool) -> str:
    """``a`` against ``b`` on ``key``: which is better, and whether the gap exceeds
    the sum of their stds."""
    x, y = table[a], table[b]
    if x[key] is None or y[key] is None:
        return f"{a} vs {b}: a run diverged"
    better = x[key] < y[key] if lower_is_better else x[key] > y[key]
    spread = (x[f"{key}_std"] or 0.0) + (y[f"{key}_std"] or 0.0)
    exceeds = abs(x[key] - y[key]) > spread
    return (
        f"{key}: {a} {'better' if better else 'not better'} than {b} "
        f"({x[key]:.4g} vs {y[key]:.4g}; the gap "
        f"{'exceeds' if exceeds else 'is within'} the spread {spread:.2g})"
    )


def best_adamw(table: dict, key: str, lower_is_better: bool) -> str:
    """The AdamW baseline of the table that scores best on ``key``."""
    present = [f for f in ADAMWS if f in table and table[f][key] is not None]
    if not present:
        return ADAMW  # every one diverged: compare() says so
    sign = 1.0 if lower_is_better else -1.0
    return min(present, key=lambda f: sign * table[f][key])


def claims(main: dict, heldout: dict) -> list[str]:
    """The done-when claims of the study, answered from the measurements: ELO against
    its nominal term alone and every AdamW baseline on train loss, in distribution and
    held out, and against the best AdamW on test accuracy; then against the other
    methods."""
    lines = []
    for prefix, table in (("", main), ("held-out family: ", heldout)):
        # What meta-training adds to the schedule the LO is built on, then AdamW.
        others = [NOMINAL] if NOMINAL in table else []
        others += [f for f in BASELINES if f in table]
        for other in others:
            lines.append(prefix + compare(table, "train_loss_10x", "elo", other, True))
        best = best_adamw(table, "test_accuracy_10x", lower_is_better=False)
        lines.append(
            prefix
            + compare(table, "test_accuracy_10x", "elo", best, False)
            + f" ({best} is the best AdamW on it)"
        )
        for lamb in (LAMB, CAUTIOUS_LAMB, LAMB_B2_95):
            if lamb in table:
                lines.append(
                    prefix + compare(table, "test_accuracy_10x", "elo", lamb, False)
                )
    for other in ("naive", "curriculum", "buffer"):
        lines.append(compare(main, "train_loss_10x", "elo", other, True))
    for other in ("naive", "curriculum"):
        lines.append(
            "held-out family: " + compare(heldout, "train_loss_10x", "elo", other, True)
        )
    return lines


def _method_curves(result: dict, method: str, seeds, key: str) -> np.ndarray:
    """(meta-seeds, points) curves, each the mean over optimizee seeds."""
    return np.stack(
        [
            np.nanmean(np.asarray(result["curves"][f"{method}_s{s}"][key], float), 0)
            for s in seeds
        ]
    )


def plot_methods(
    result: dict, seeds, methods, path: pathlib.Path, title: str
) -> list[str]:
    """Train loss, validation loss, update and param norm against the inner step:
    each method's mean over meta-seeds with a min-max band over meta-seeds, the
    nominal term alone and each AdamW baseline; returns the legend's labels."""
    steps = result["steps"]
    window = max(1, steps // 100)
    evals = np.asarray(result["eval_steps"])
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    panels = (
        ("train_loss", "training loss (minibatch, moving average)"),
        ("valid_loss", "validation loss"),
        ("update_norm", "update norm (moving average)"),
        ("param_norm", "parameter norm"),
    )
    baselines = {
        **({NOMINAL: result["curves"][NOMINAL]} if NOMINAL in result["curves"] else {}),
        evaluation.ADAMW: result["curves"][evaluation.ADAMW][str(result["best_lr"])],
        **{f: result["curves"][f] for f in BASELINES if f in result["curves"]},
    }
    styles = {
        NOMINAL: "C7-",
        evaluation.ADAMW: "k--",
        "adamw_cosine": "k-.",
        "adamw_invsqrt": "k:",
        LAMB: "m-.",
        CAUTIOUS_LAMB: "m:",
        LAMB_B2_95: "c-.",
    }
    for ax, (key, name) in zip(axes, panels, strict=True):
        per_step = key in ("train_loss", "update_norm")
        for method in methods:
            curves = _method_curves(result, method, seeds, key)
            if per_step:
                curves = np.stack(
                    [evaluation.eval_report.moving_average(c, window) for c in curves]
                )
            x = np.arange(curves.shape[1]) + (window - 1) if per_step else evals
            ax.plot(x, curves.mean(0), label=method, lw=1.5)
            ax.fill_between(x, curves.min(0), curves.max(0), alpha=0.2, lw=0)
        for baseline, curves in baselines.items():
            curve = np.nanmean(np.asarray(curves[key], float), 0)
            if per_step:
                curve = smooth(curve, window)
            x = np.arange(curve.size) + (window - 1) if per_step else evals
            label = (
                "nominal term alone (MLP silenced)"
                if baseline == NOMINAL
                else evaluation.eval_report.method_name(result, baseline)
            )
            ax.plot(x, curve, styles[baseline], label=label, lw=1.2)
        for horizon in sorted(set(result["n_max"].values())):
            ax.axvline(horizon, color="red", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("inner step")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return axes[0].get_legend_handles_labels()[1]


def _single_seed_table(result: dict, names: list[str]) -> str:
    lines = [
        "| run | train loss @10x | test accuracy (%) | test loss | valid loss |",
        "|---|---|---|---|---|",
    ]
    baselines = [evaluation.ADAMW, *(f for f in BASELINES if f in result["final"])]
    for name in [*names, *baselines]:
        f = _per_lo(result["final"][name])
        label = evaluation.eval_report.method_name(result, name)
        lines.append(
            f"| {label} | {f['train_loss_10x']:.4f} | "
            f"{100 * f['test_accuracy_10x']:.2f} | {f['test_loss_10x']:.4f} | "
            f"{f['valid_loss_10x']:.4f} |"
        )
    return "\n".join(lines)


def run(
    config: StudyConfig,
    out: str | pathlib.Path,
    report: str | pathlib.Path,
    results_json: str | pathlib.Path | None = None,
) -> dict:
    """The whole study (resuming what is done); returns what results.json holds."""
    tic = time.perf_counter()
    out, report = pathlib.Path(out), pathlib.Path(report)
    results_json = pathlib.Path(results_json or report.with_suffix(".json"))
    seconds = meta_train(config, out)
    seeds = config.meta_seeds
    single = nominal_lo(config, out)
    names = [f"{m}_s{s}" for m in METHODS for s in seeds] + single
    main = _evaluate(config, out, names, "main")
    heldout = _evaluate(
        config,
        out,
        names,
        "heldout",
        hidden_sizes=config.heldout_hidden_sizes,
        activation=config.heldout_activation,
    )
    first = seeds[0]
    extra = [f"{m}_s{first}" for m in ABLATIONS]
    sweep = [
        f"elo_pth{p:g}_s{first}"
        if p != pes_train.make_args().inner.p_th
        else f"elo_s{first}"
        for p in config.p_th_sweep
    ]
    # One meta-seed each: the constant-lr AdamW is reference enough, and cheaper.
    ablations = _evaluate(
        config,
        out,
        [f"elo_s{first}", f"buffer_s{first}", *extra],
        "ablations",
        baselines=(ADAMW,),
    )
    p_th = _evaluate(config, out, sweep, "p_th", baselines=(ADAMW,))
    main_table = aggregate(main, METHODS, seeds, tuple(single))
    heldout_table = aggregate(heldout, METHODS, seeds, tuple(single))
    figures = report.parent / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    plot_methods(
        main, seeds, METHODS, figures / "study_main.png",
        f"ELO-Digits-MLP at 10x the horizon: mean over {len(seeds)} meta-seeds, "
        "band = min-max over meta-seeds",
    )  # fmt: skip
    plot_methods(
        heldout, seeds, METHODS, figures / "study_heldout.png",
        f"held-out MLP {config.heldout_hidden_sizes} {config.heldout_activation} "
        "(never meta-trained on)",
    )  # fmt: skip
    meta_plots.run(
        meta_plots.PlotConfig(
            elo=str(out / "runs" / f"elo_s{first}"),
            naive=str(out / "runs" / f"naive_s{first}"),
            buffer=str(out / "runs" / f"buffer_s{first}"),
        ),
        out / "meta_plots",
    )
    for name in ("inner_steps.png", "meta_loss.png"):
        shutil.copyfile(out / "meta_plots" / name, figures / name)
    meta_train_s = sum(seconds.values())
    study_s = time.perf_counter() - tic
    results = {
        "methods": main_table,
        "heldout": heldout_table,
        "task": main["task"],
        "heldout_task": heldout["task"],
        "steps_10x": main["steps"],
        "study": {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(config).items()
        },
        "pes_defaults": {
            k: v
            for k, v in runs_lib.flatten(pes_train.make_args().resolved()).items()
            if k not in ("run_dir", "progress", "seed", "mode")
        },
        "claims": claims(main_table, heldout_table),
        # Each baseline's final grid, configurations and pick, in and out.
        "methods_grids": main["baselines"],
        "heldout_grids": heldout["baselines"],
        "ablations": {n: _json_lo(ablations["final"][n]) for n in ablations["final"]},
        "p_th_sweep": {n: _json_lo(p_th["final"][n]) for n in p_th["final"]},
        "seconds": {"meta_training": meta_train_s, "meta_training_per_run": seconds},
    }
    eval_s = sum(r["compute"]["wall_seconds"] for r in (main, heldout, ablations, p_th))
    results["seconds"]["evaluation"] = eval_s
    results["seconds"]["total"] = meta_train_s + eval_s
    results["seconds"]["this_invocation"] = study_s
    results_json.parent.mkdir(parents=True, exist_ok=True)
    results_json.write_text(json.dumps(results, indent=2, allow_nan=False))
    report.write_text(_report(config, results, ablations, p_th, figures, report))
    return results


def _baseline_grids(searches: dict) -> str:
    """Each baseline's final grid, how often it grew and whether its pick is still at
    an edge, in words."""
    names = {
        "adamw": "a constant lr",
        "adamw_cosine": "linear warmup then cosine decay to 0 at the evaluation "
        "length, peak lr",
        "adamw_invsqrt": "lr / sqrt(1 + n / tau)",
        "lamb_cosine": "LAMB (eps 1e-8) with the same warmup and cosine decay, peak lr",
        CAUTIOUS_LAMB: "cautious LAMB (coordinates whose step disagrees with the "
        "gradient dropped) with the same warmup and cosine decay, peak lr",
        LAMB_B2_95: "LAMB with b2 0.95 (a gated LO's demonstrator), the same "
        "warmup and cosine decay, peak lr",
    }
    parts = []
    for family, search in searches.items():
        grid = " x ".join(
            f"{axis} in {{{', '.join(f'{v:g}' for v in values)}}}"
            for axis, values in search["grid"].items()
        )
        edge = (
            f", still at the edge in {', '.join(search['at_edge'])}"
            if search["at_edge"]
            else ""
        )
        parts.append(
            f"{names[family]} over {grid} (grown {search['extensions']} times{edge})"
        )
    return "; ".join(parts)


def _report(config, results, ablations, p_th, figures, report) -> str:
    rel = os.path.relpath(figures, report.parent)
    s = results["seconds"]
    return f"""# ELO at CPU scale, with meta-seeds

Generated by `python scripts/reproduce.py` (numbers are what the code measured).
Meta-training task: {results["task"]["dataset"]} MLP
{results["task"]["hidden_sizes"]}, {results["task"]["num_params"]:,} parameters,
batch {results["task"]["batch_size"]}. Each LO: PES for {config.outer_steps} outer
steps x {config.num_pairs} pairs x truncation {config.truncation}, horizon n_max =
{config.n_max} (the curriculum grows its n_max linearly to 10x that over the run),
every other setting at `pes_train`'s defaults (below); the exported LO is the one the
run's own validation picked. Evaluation: fresh optimizees trained
{results["steps_10x"]} steps (10x) with each LO, {config.eval_seeds} optimizee seeds;
four baselines (wd 1e-4), each tuned on the mean final validation loss, AdamW with
{_baseline_grids(results["methods_grids"])}.
Rows: mean ± std over meta-seeds of each LO's mean over optimizee seeds (AdamW, and
the LO's nominal term alone where the LO has one: std over optimizee seeds). Train
loss is the mean minibatch loss of the last {max(1, results["steps_10x"] // 50)}
steps.

## In distribution: ELO-Digits-MLP

{table_markdown(results["methods"])}

![study, in distribution]({rel}/study_main.png)

## Held-out family: MLP {results["heldout_task"]["hidden_sizes"]}, \
{results["heldout_task"]["activation"]}, {results["heldout_task"]["num_params"]:,} \
parameters (no LO saw it)

{table_markdown(results["heldout"])}

![study, held-out family]({rel}/study_heldout.png)

## Claims, answered by the numbers

{chr(10).join("- " + c for c in results["claims"])}

## Ablations (one meta-seed)

{_single_seed_table(ablations, ablations["lo_labels"])}

## p_th sweep (one meta-seed)

{_single_seed_table(p_th, p_th["lo_labels"])}

## Meta-training

![inner steps]({rel}/inner_steps.png)
![meta-loss]({rel}/meta_loss.png)

`pes_train` defaults used: `{json.dumps(results["pes_defaults"])}`.

## Compute

{os.cpu_count()} CPU cores. Meta-training {s["meta_training"] / 60:.1f} min
({len(s["meta_training_per_run"])} runs), evaluation {s["evaluation"] / 60:.1f} min,
total {s["total"] / 60:.1f} min.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="CI-sized smoke run")
    parser.add_argument("--out", default="runs/reproduce", help="run and eval outputs")
    parser.add_argument(
        "--report",
        default=None,
        help="results.md path (default docs/results.md; --quick: OUT/results.md); "
        "results.json goes beside it",
    )
    parser.add_argument("--outer-steps", type=int, default=None)
    a = parser.parse_args(argv)
    config = StudyConfig.quick() if a.quick else StudyConfig()
    if a.outer_steps is not None:
        config = dataclasses.replace(config, outer_steps=a.outer_steps)
    report = a.report or (
        pathlib.Path(a.out) / "results.md"
        if a.quick
        else pathlib.Path("docs/results.md")
    )
    run(config, a.out, report)
    print(f"report: {report}")


if __name__ == "__main__":
    main()
