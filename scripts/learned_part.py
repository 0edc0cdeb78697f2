"""What an LO's learned part does, seed by seed, on MLP families it may never have seen.

Each LO and its silenced self (every MLP weight zero: its nominal term alone, or no
update for an LO without one) train the same fresh optimizees (seeds ``--seed`` ...
``--seed + --seeds - 1``) for ``--steps`` inner steps on each family. The learned part's
effect on a seed is the LO's loss minus its silenced self's on that seed: the training
loss (mean of the last 40 minibatches, as ``scripts/evaluate.py``), the final
validation loss and the final validation accuracy. Reported per family and LO: mean,
std and standard error over seeds of that difference, and the mean as a percentage of
the silenced mean (and, in the JSON, every seed's values, to pair two LOs
afterwards). Beside it,
each run's weight growth (parameter norm at the end over the start, mean over seeds):
a training loss lowered by growing the weights, which scales up the logits, is not a
better optimizer (docs/levers.md, the twenty-fourth screen). This is the paired
measurement of docs/levers.md's screens: at 10x the two runs of a seed are
nearly uncorrelated, so an effect is read against its standard error over many seeds.

A family is ``default`` (the env's own MLP), ``WIDTHS[:ACTIVATION]`` (the env's data
with another MLP, e.g. ``64-64-64:tanh``) or ``ENV_ID[:OPTION=VALUE,...]``, exactly as
``pes_train --mixture`` reads it.

Prints a markdown table and writes every number (and the config) as JSON to ``--out``.

Usage::

    python scripts/learned_part.py --lo bplong=runs/bplong \\
        --family default 64-64-64:tanh 128-128:relu 64-64-64:gelu --out part.json
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import sys
from typing import Annotated

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
import tyro

from elo_gym import checkpoint, settings, validation
from elo_gym.evaluation import labeled_paths
from elo_gym.lo_spec import LOSpec

DEFAULT = "default"  # the family that is the env's own task
TRAIN_WINDOW = 40  # minibatches averaged into the final training loss (evaluate.py's)
# The per-seed metrics whose LO-minus-silenced effect is reported.
EFFECTS = ("train_loss", "valid_loss", "valid_accuracy")


@dataclasses.dataclass(frozen=True)
class PartConfig:
    lo: Annotated[tuple[str, ...], tyro.conf.UseAppendAction]
    """LABEL=PATH, one per LO: a run directory, its lo.msgpack or a checkpoint."""
    out: str
    """Where the JSON goes."""
    env: str = "ELO-Digits-MLP"
    """The env id whose data (and, for family ``default``, MLP) the optimizees use."""
    family: tuple[str, ...] = (DEFAULT,)
    """default, WIDTHS[:ACTIVATION] or ENV_ID[:OPTION=VALUE,...] (see the docstring)."""
    steps: int = 2000
    """Inner steps per run (the screens: 10x the meta-training horizon of 200)."""
    seeds: int = 16
    """Fresh optimizees per family, each trained by every LO and its silenced self."""
    seed: int = 200
    """The first seed (the screens': 200, apart from evaluate.py's and the agent's)."""
    progress: bool = True
    """A progress bar over the (family, LO) runs."""


def parse_los(specs: tuple[str, ...]) -> list[tuple[str, pathlib.Path]]:
    """``LABEL=PATH`` per LO -> (label, path), or an error naming what is wrong."""
    los = [(label, pathlib.Path(path)) for label, path in labeled_paths(specs)]
    for label, path in los:
        if not path.exists():
            raise FileNotFoundError(
                f"--lo {label}={path}: no learned optimizer at {path} (give a run "
                "directory, its lo.msgpack or a checkpoint)"
            )
    if len({label for label, _ in los}) != len(los):
        raise ValueError(f"--lo labels must be unique, got {list(specs)}")
    return los


def family_task(env: str, family: str):
    """The task of one ``--family`` entry, built from ``env``'s settings."""
    base = settings.EnvSettings.from_id(env)
    chosen = base if family == DEFAULT else settings.mixture_settings(base, family)
    return chosen.build_task()


def per_seed_losses(
    task, spec: LOSpec, meta, data, keys: jax.Array, steps: int
) -> dict[str, np.ndarray]:
    """Each seed's final validation loss and accuracy, training loss (last 40
    minibatches) and weight growth (parameter norm at the end over the start)."""
    program = validation.lo_curves(task, spec, steps=steps, eval_every=steps)
    # One transfer to the host serves every metric.
    curves = jax.device_get(program(meta, data, keys))
    return {
        **validation.seed_losses(curves, TRAIN_WINDOW),
        "valid_accuracy": np.asarray(curves["valid_accuracy"], np.float64)[:, -1],
        "param_norm_ratio": validation.seed_weight_growth(curves),
    }


def paired(lo: dict[str, np.ndarray], silenced: dict[str, np.ndarray]) -> dict:
    """The LO's and its silenced self's means over seeds and the effect (LO minus
    silenced, seed by seed): mean, std, standard error, and mean in % of silenced;
    both runs' mean weight growth (inf where a seed diverged); and both runs' values
    seed by seed (``per_seed``, inf where diverged)."""
    runs = {"lo": lo["param_norm_ratio"], "silenced": silenced["param_norm_ratio"]}
    out = {
        "param_norm_ratio": {
            who: float(np.mean(x)) if np.all(np.isfinite(x)) else math.inf
            for who, x in runs.items()
        },
        # Every seed's values, so that two LOs measured on the same seeds (a trained LO
        # and the clone it started from) can be paired with each other afterwards.
        "per_seed": {
            who: {
                metric: [float(v) if np.isfinite(v) else math.inf for v in x[metric]]
                for metric in (*EFFECTS, "param_norm_ratio")
            }
            for who, x in (("lo", lo), ("silenced", silenced))
        },
    }
    for metric in EFFECTS:
        # A diverged optimizee scores inf, as in the agent's validation, so that the
        # sign of the difference says which of the two diverged.
        lo_m, sil_m = (
            np.where(np.isfinite(x), x, np.inf) for x in (lo[metric], silenced[metric])
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            diff = lo_m - sil_m
            row = {
                "lo": lo_m.mean(),
                "silenced": sil_m.mean(),
                "minus_silenced": diff.mean(),
                "std": diff.std(),
                "stderr": diff.std() / np.sqrt(len(diff)),
                "percent": 100 * diff.mean() / sil_m.mean(),
            }
        # NaN is left only where both diverged on a seed (inf - inf): no effect can be
        # read there, and strict JSON has no NaN.
        out[metric] = {k: math.inf if np.isnan(v) else float(v) for k, v in row.items()}
    return out


def run(config: PartConfig) -> dict:
    """Every (family, LO) pair measured; the result also goes to ``config.out``."""
    if config.steps < TRAIN_WINDOW or config.seeds < 2:
        raise ValueError(
            f"--steps must be >= {TRAIN_WINDOW} (the training-loss window) and "
            f"--seeds >= 2 (an effect needs its spread), got {config.steps} and "
            f"{config.seeds}"
        )
    los = []
    for label, path in parse_los(config.lo):
        meta, info = checkpoint.load_meta_params(path)
        los.append((label, meta, LOSpec.from_json(info)))
    tasks = {family: family_task(config.env, family) for family in config.family}
    keys = jax.vmap(jax.random.PRNGKey)(
        jnp.arange(config.seed, config.seed + config.seeds)
    )
    result = {"config": dataclasses.asdict(config), "families": {}}
    bar = tqdm.tqdm(
        total=len(tasks) * len(los), disable=not config.progress, desc="runs"
    )
    for family, task in tasks.items():
        data = task.load_data()
        rows, silenced = {}, {}  # silenced runs by spec: LOs of one spec share them
        for label, meta, spec in los:
            if spec not in silenced:
                zero = jax.tree.map(jnp.zeros_like, meta)
                silenced[spec] = per_seed_losses(
                    task, spec, zero, data, keys, config.steps
                )
            lo = per_seed_losses(task, spec, meta, data, keys, config.steps)
            rows[label] = paired(lo, silenced[spec])
            bar.update()
        result["families"][family] = rows
    bar.close()
    out = pathlib.Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return result


def table_markdown(result: dict) -> str:
    """One row per (family, LO): the effect on training loss, validation loss and
    validation accuracy, and both runs' weight growth."""
    lines = [
        "| family | LO | silenced train loss | LO minus silenced (% ± SE) "
        "| validation loss: LO minus silenced ± SE "
        "| validation accuracy: LO minus silenced ± SE "
        "| weight growth: LO / silenced |",
        "|---|---|---|---|---|---|---|",
    ]
    for family, rows in result["families"].items():
        for label, row in rows.items():
            train, valid = row["train_loss"], row["valid_loss"]
            accuracy = row["valid_accuracy"]
            growth = row["param_norm_ratio"]
            se = 100 * train["stderr"] / train["silenced"]
            lines.append(
                f"| {family} | {label} | {train['silenced']:.5f} "
                f"| {train['percent']:+.1f}% ± {se:.1f}% "
                f"| {valid['minus_silenced']:+.4f} ± {valid['stderr']:.4f} "
                f"| {accuracy['minus_silenced']:+.4f} ± {accuracy['stderr']:.4f} "
                f"| {growth['lo']:.2f}x / {growth['silenced']:.2f}x |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """CLI: parse flags (a bad one prints what is wrong and exits 2), run, print."""
    try:
        result = run(tyro.cli(PartConfig, args=argv))
    except (ValueError, FileNotFoundError) as e:
        print(f"learned_part.py: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(table_markdown(result))
    return result


if __name__ == "__main__":
    main()
