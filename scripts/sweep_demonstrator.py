"""Which demonstrator to clone: the expert Adam over a grid of lr and lr decay.

ELO's LO imitates an Adam demonstrator (``elo_gym.demonstrator.adam_expert``: lr, and
optionally lr / sqrt(1 + n / tau) at inner step n). Before meta-training an LO on one,
this runs the demonstrator itself on fresh optimizees of a task for H inner steps (the
same program as ``scripts/evaluate.py``'s AdamW), so that its lr and tau are picked on
validation loss like any other setting (docs/levers.md, "Fifth screen").

Prints one JSON object: per (lr, tau) the final training loss (mean of the last
``eval_every`` minibatch losses) and the final validation loss, mean and std over
seeds; also written to ``--out`` when given.

Usage::

    python scripts/sweep_demonstrator.py --lrs 0.002 0.007 0.02 --decay-steps 0 100 300
    python scripts/sweep_demonstrator.py --hidden-sizes 128 128 --activation relu
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from elo_gym import demonstrator, eval_report, evaluation, runs
from elo_gym.inner_loop import train_curves


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """The grid and the task (all of it is written into the output)."""

    lrs: tuple[float, ...] = (0.002, 0.004, 0.007, 0.01, 0.02)  # expert lrs
    decay_steps: tuple[float, ...] = (0.0, 30.0, 100.0, 300.0)  # tau; 0: constant lr
    env: str = "ELO-Digits-MLP"  # env id whose task the optimizees train on
    hidden_sizes: tuple[int, ...] | None = None  # None: the env's MLP
    activation: str | None = None  # None: the env's
    batch_size: int | None = None  # None: the env's
    steps: int = 2000  # H: 10x the cpu preset's n_max
    eval_every: int = 100  # the training loss is the mean over the last this many
    seeds: int = 3  # seeds 0 .. seeds - 1, as scripts/evaluate.py
    out: str | None = None  # also write the JSON here
    progress: bool = True  # tqdm progress bar over the grid


def run(config: SweepConfig) -> dict:
    """Runs every (lr, tau) of the grid; returns the JSON-ready result."""
    if not config.lrs or min(config.lrs) <= 0:
        raise ValueError(f"lrs must be positive and non-empty, got {config.lrs}")
    if min(config.decay_steps, default=0.0) < 0:
        raise ValueError(f"decay_steps must be >= 0, got {config.decay_steps}")
    if config.steps <= 0 or config.eval_every <= 0 or config.seeds <= 0:
        raise ValueError("steps, eval_every and seeds must be > 0")
    task = evaluation.make_task(
        config.env,
        hidden_sizes=config.hidden_sizes,
        activation=config.activation,
        batch_size=config.batch_size,
    )
    data = task.load_data()
    keys = jnp.stack([jax.random.PRNGKey(i) for i in range(config.seeds)])
    train = functools.partial(
        train_curves, task, steps=config.steps, eval_every=config.eval_every
    )

    @functools.partial(jax.jit, static_argnames="decay_steps")
    def program(lr, data, keys, *, decay_steps):
        expert = demonstrator.adam_expert(lr, decay_steps)
        return jax.vmap(functools.partial(train, expert), (None, 0))(data, keys)

    start = time.perf_counter()
    grid = [(lr, tau) for lr in config.lrs for tau in config.decay_steps]
    rows = []
    for lr, tau in tqdm(grid, desc="demonstrators", disable=not config.progress):
        curves = jax.device_get(
            program(jnp.float32(lr), data, keys, decay_steps=float(tau))
        )
        final = eval_report.final_summary(
            {k: np.asarray(v) for k, v in curves.items()},
            train_window=min(config.eval_every, config.steps),
        )
        rows.append(
            {
                "lr": lr,
                "decay_steps": tau,
                **{k: final[k] for k in ("train_loss", "valid_loss", "test_accuracy")},
            }
        )
    best = min(
        rows,
        key=lambda r: (
            np.inf if r["valid_loss"]["mean"] is None else r["valid_loss"]["mean"]
        ),
    )
    return {
        "config": dataclasses.asdict(config),
        "task": task.describe(),
        "rows": rows,
        "best_by_valid_loss": {"lr": best["lr"], "decay_steps": best["decay_steps"]},
        "wall_seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> None:
    """CLI: parse flags, run the grid, print (and write) the JSON."""
    runs.json_cli(SweepConfig, run, "sweep_demonstrator.py", argv)


if __name__ == "__main__":
    main()
