"""The paper's study at CPU scale, end to end, on ELO-Digits-MLP (Sec. 5, Figs. 2-7).

Meta-trains, with the same compute each (outer steps x pairs x truncation):
naive, curriculum and ELO LOs (Table 1, Fig. 3), the Fig. 7 ablations (uniform, bc and
buffer-only) and the Fig. 6 p_th sweep (ELO with p_th in 0.01 ... 0.7); evaluates them
at 10x the meta-training horizon against LR-tuned AdamW (``scripts/evaluate.py``); draws
Fig. 2 with ``scripts/plot_meta_training.py``; and writes ``results.md`` with the
tables, figures and compute cost the code produced, whatever they show.

Usage:
  python scripts/reproduce.py                  # full study -> docs/results.md (~1 h)
  python scripts/reproduce.py --quick --out /tmp/smoke   # CI-sized smoke run
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

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from elo_gym.agents import pes_train  # noqa: E402

sys.path.insert(0, os.fspath(pathlib.Path(__file__).resolve().parent))
import evaluate  # noqa: E402
import plot_meta_training  # noqa: E402

P_TH_SWEEP = (0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7)
MAIN = ("elo", "naive", "curriculum")
ABLATIONS = ("naive", "uniform", "bc", "buffer", "elo")


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """Sizes of the study; ``quick()`` gives the CI-sized one."""

    outer_steps: int = 300
    num_pairs: int = 8
    truncation: int = 50
    n_min: int = 20
    n_max: int = 200
    hidden_sizes: tuple[int, ...] | None = None  # None: the env's default MLP
    batch_size: int | None = None
    hidden_size: int = 32
    p_th_sweep: tuple[float, ...] = P_TH_SWEEP
    eval_seeds: int = 3
    eval_steps: int | None = None  # None: 10 x n_max
    eval_lrs: tuple[float, ...] = evaluate.PAPER_LRS
    seed: int = 0

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
            p_th_sweep=(0.1, 0.2, 0.5),
            eval_seeds=2,
            eval_steps=20,
            eval_lrs=(0.01, 0.001),
        )


def _runs(config: StudyConfig) -> dict[str, pes_train.Args]:
    """Every meta-training run of the study, by name."""
    base = dict(
        outer_steps=config.outer_steps,
        num_pairs=config.num_pairs,
        truncation=config.truncation,
        n_min=config.n_min,
        n_max=config.n_max,
        hidden_sizes=config.hidden_sizes,
        batch_size=config.batch_size,
        hidden_size=config.hidden_size,
        seed=config.seed,
        progress=False,
        checkpoint_every=max(1, config.outer_steps // 4),
    )
    runs = {
        mode: pes_train.Args(mode=mode, **base)
        for mode in dict.fromkeys(MAIN + ABLATIONS)
    }
    for p_th in config.p_th_sweep:
        if p_th != 0.2:  # the main ELO run is p_th = 0.2 (the paper's default)
            runs[f"elo_pth{p_th:g}"] = pes_train.Args(mode="elo", p_th=p_th, **base)
    return runs


def _pth_label(name: str) -> float:
    return 0.2 if name == "elo" else float(name.removeprefix("elo_pth"))


def meta_train(config: StudyConfig, out: pathlib.Path) -> dict[str, float]:
    """Runs (or resumes) every meta-training run; returns wall seconds per run."""
    seconds = {}
    for i, (name, args) in enumerate(_runs(config).items()):
        print(f"[{i + 1}/{len(_runs(config))}] meta-training {name}", file=sys.stderr)
        tic = time.perf_counter()
        pes_train.main(dataclasses.replace(args, run_dir=str(out / "runs" / name)))
        seconds[name] = time.perf_counter() - tic
    return seconds


def _evaluate(config: StudyConfig, out: pathlib.Path, names, label: str) -> dict:
    eval_config = evaluate.EvalConfig(
        los=tuple((n, str(out / "runs" / n)) for n in names),
        steps=config.eval_steps,
        seeds=config.eval_seeds,
        lrs=config.eval_lrs,
        progress=False,
    )
    return evaluate.run(eval_config, out / label)


def _plot_p_th(results: dict, path: pathlib.Path) -> dict[str, dict]:
    points = sorted(
        ((_pth_label(n), results["final"][n]) for n in results["lo_labels"]),
        key=lambda point: point[0],
    )
    xs = [p for p, _ in points]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, key, title in zip(
        axes,
        ("valid_loss", "test_loss", "test_accuracy"),
        ("validation loss", "test loss", "test accuracy"),
        strict=True,
    ):
        means = [f[key]["mean"] for _, f in points]
        stds = [f[key]["std"] for _, f in points]
        ax.errorbar(
            xs,
            [m if m is not None else float("nan") for m in means],
            yerr=[s if s is not None else 0.0 for s in stds],
            marker="o",
        )
        ax.set_xscale("log")
        ax.set_xlabel("p_th")
        ax.set_title(f"{title} at step {results['steps']}")
        ax.grid(alpha=0.3)
    fig.suptitle("ELO p_th sweep (Fig. 6), mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {f"{p:g}": f for p, f in points}


def _final_meta(run_dir: pathlib.Path) -> dict[str, float]:
    columns = plot_meta_training.read_metrics(run_dir, ("meta_loss", "task_loss"))
    columns = columns["columns"]
    window = max(1, len(columns["meta_loss"]) // 10)
    return {k: float(columns[k][-window:].mean()) for k in ("meta_loss", "task_loss")}


def _stat(final: dict, key: str) -> float:
    value = final[key]["mean"]
    return float("nan") if value is None else float(value)


def _yes(condition: bool) -> str:
    return "yes" if condition else "no"


def _claims(main: dict, sweep: dict, meta: dict) -> list[str]:
    """The paper's qualitative claims, checked on the measured numbers."""
    f = main["final"]
    elo, naive, adamw = f["elo"], f["naive"], f[evaluate.ADAMW]

    def pair(key: str, a: dict, b: dict, scale: float = 1.0) -> str:
        return f"{scale * _stat(a, key):.4g} vs {scale * _stat(b, key):.4g}"

    better_train = _stat(elo, "train_loss") < _stat(naive, "train_loss")
    better_acc = _stat(elo, "test_accuracy") > _stat(naive, "test_accuracy")
    lines = [
        f"ELO-LO beats naive LO at {main['steps']} steps (10x): {_yes(better_train)} "
        f"on final train loss ({pair('train_loss', elo, naive)}); {_yes(better_acc)} "
        f"on test accuracy ({pair('test_accuracy', elo, naive, 100)} %)."
    ]
    as_good_loss = _stat(elo, "test_loss") <= _stat(adamw, "test_loss")
    as_good_acc = _stat(elo, "test_accuracy") >= _stat(adamw, "test_accuracy")
    lines.append(
        f"ELO-LO at least as good as tuned AdamW (lr {main['best_lr']:g}): "
        f"{_yes(as_good_loss)} on test loss ({pair('test_loss', elo, adamw)}); "
        f"{_yes(as_good_acc)} on test accuracy "
        f"({pair('test_accuracy', elo, adamw, 100)} %)."
    )
    buffer_task, elo_task = meta["buffer"]["task_loss"], meta["elo"]["task_loss"]
    collapsed = buffer_task > 0.9 * math.log(10) or buffer_task > 2 * elo_task
    lines.append(
        f"Buffer-only collapses: {_yes(collapsed)} (task loss over the last 10% of "
        f"meta-training {buffer_task:.4g}, ELO {elo_task:.4g}, chance ln 10 = 2.303; "
        "collapse = above 90% of chance or twice ELO's)."
    )
    values = {p: _stat(v, "valid_loss") for p, v in sweep.items()}
    best = min(values, key=values.get)
    ends = (min(values, key=float), max(values, key=float))
    lines.append(
        f"p_th has an interior optimum: {_yes(best not in ends)} (lowest final "
        f"validation loss at p_th = {best}; the sweep spans {ends[0]} to {ends[1]})."
    )
    return lines


def _copy_figure(src: pathlib.Path, figures: pathlib.Path, name: str) -> str:
    figures.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, figures / name)
    return f"figures/{name}"


def write_report(
    config: StudyConfig,
    out: pathlib.Path,
    report: pathlib.Path,
    seconds: dict,
    main: dict,
    ablations: dict,
    sweep_eval: dict,
    total_s: float,
) -> str:
    """Writes results.md (and its figures beside it) from what the study measured."""
    figures = report.parent / "figures"
    plot_meta_training.run(
        plot_meta_training.PlotConfig(
            elo=str(out / "runs" / "elo"),
            naive=str(out / "runs" / "naive"),
            buffer=str(out / "runs" / "buffer"),
        ),
        out / "meta_plots",
    )
    sweep = _plot_p_th(sweep_eval, out / "p_th_sweep.png")
    meta = {n: _final_meta(out / "runs" / n) for n in seconds}
    figs = {
        "curves": _copy_figure(
            out / "main" / "loss_curves.png", figures, "main_loss.png"
        ),
        "ablations": _copy_figure(
            out / "ablations" / "loss_curves.png", figures, "ablation_loss.png"
        ),
        "p_th": _copy_figure(out / "p_th_sweep.png", figures, "p_th_sweep.png"),
        "inner": _copy_figure(
            out / "meta_plots" / "inner_steps.png", figures, "inner_steps.png"
        ),
        "meta": _copy_figure(
            out / "meta_plots" / "meta_loss.png", figures, "meta_loss.png"
        ),
    }
    settings = json.dumps(dataclasses.asdict(config))
    cost_rows = "\n".join(f"| {n} | {s:.0f} |" for n, s in seconds.items())
    meta_rows = "\n".join(
        f"| {n} | {m['meta_loss']:.4g} | {m['task_loss']:.4g} |"
        for n, m in meta.items()
    )
    text = f"""# ELO at CPU scale: results on ELO-Digits-MLP

Produced by `python scripts/reproduce.py` (this file is generated; numbers are whatever
the code measured). Task: {main["task"]["dataset"]} MLP, {main["task"]["num_params"]:,}
parameters, batch {main["task"]["batch_size"]}, augmentation {main["task"]["augment"]}.
Each LO was meta-trained with PES for {config.outer_steps} outer steps x
{config.num_pairs} antithetic pairs x truncation {config.truncation} (the same compute
for every run), meta-training horizon n_max = {config.n_max}; evaluation trains fresh
optimizees for {main["steps"]} steps (10x) over {config.eval_seeds} seeds; AdamW (weight
decay 1e-4) with the best of {len(config.eval_lrs)} learning rates picked on validation
loss. Study settings: `{settings}`.

## Claims of the paper, checked at this scale

{chr(10).join("- " + line for line in _claims(main, sweep, meta))}

## Table 1: ELO vs baselines at 10x the meta-training horizon

{(out / "main" / "table.md").read_text()}
![train and validation loss]({figs["curves"]})

## Fig. 7: ablations

{(out / "ablations" / "table.md").read_text()}
![ablations]({figs["ablations"]})

## Fig. 6: effect of p_th

{(out / "p_th" / "table.md").read_text()}
![p_th sweep]({figs["p_th"]})

## Fig. 2: inner steps trained on, and meta-training stability

![inner steps, elo vs naive]({figs["inner"]})
![meta-loss, elo vs buffer-only]({figs["meta"]})

Mean meta-loss and task loss over the last 10% of outer steps:

| run | meta-loss | task loss |
| --- | --- | --- |
{meta_rows}

## Compute

Wall-clock seconds per meta-training run on this machine ({os.cpu_count()} CPU cores):

| run | seconds |
| --- | --- |
{cost_rows}

Total study time, evaluation included: {total_s / 60:.1f} minutes.
"""
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text)
    return text


def run(
    config: StudyConfig, out: str | pathlib.Path, report: str | pathlib.Path
) -> str:
    """The whole study; returns the report's text."""
    tic = time.perf_counter()
    out, report = pathlib.Path(out), pathlib.Path(report)
    seconds = meta_train(config, out)
    sweep_names = ["elo" if p == 0.2 else f"elo_pth{p:g}" for p in config.p_th_sweep]
    print("evaluating", file=sys.stderr)
    main = _evaluate(config, out, MAIN, "main")
    ablations = _evaluate(config, out, ABLATIONS, "ablations")
    sweep_eval = _evaluate(config, out, sweep_names, "p_th")
    return write_report(
        config,
        out,
        report,
        seconds,
        main,
        ablations,
        sweep_eval,
        time.perf_counter() - tic,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="CI-sized smoke run")
    parser.add_argument("--out", default="runs/reproduce", help="run and eval outputs")
    parser.add_argument(
        "--report",
        default=None,
        help="results.md path (default docs/results.md; --quick: OUT)",
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
