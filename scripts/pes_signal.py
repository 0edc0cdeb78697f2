"""How much signal a PES meta-gradient holds, and whether it points where 10x pays.

Holds the LO fixed at its start (the run's ``--init-lo``: the cpu preset's clone of its
demonstrator, made first in a scratch directory) and runs ``--estimates`` PES outer
steps of the agent's settings at outer step ``--at-step`` (its alpha and n_max; default
the last: behavior cloning alone in the cpu preset, the task term alone under Eq. 10's
``--alpha-schedule linear``) without updating it: the copies, buffer and accumulators
go on as in meta-training, and each step's meta-gradient estimate is kept. Reports:

- ``agreement``: for k = 1, 2, 4, ... the cosine between the means of two disjoint
  blocks of k consecutive estimates (k x num_pairs antithetic pairs each). Near 0: the
  estimates are noise at that size; an outer optimizer that normalizes steps (Adam)
  then walks the LO away from its start at its learning rate whatever the signal.
- ``along_mean``: the LO moved against the mean estimate (descent), by RMS steps of
  ``--moves`` per weight, and the same moves along a random direction, each scored by
  the agent's validation (10x the horizon) on ``--val-seeds`` seeds, paired with the
  unmoved LO on the same seeds: ``diff`` is the moved LO's validation loss minus the
  start's, mean and std over seeds (negative: better); ``train_diff`` the same for
  the training loss (mean of the last 40 minibatches, as ``scripts/evaluate.py``).

Usage: ``python scripts/pes_signal.py --estimates 64 --val-seeds 8 [pes_train flags]``
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from elo_gym import distributed, pes, runs, validation
from elo_gym.agents import pes_train


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def agreement(estimates: np.ndarray) -> dict[str, float]:
    """Mean cosine between the means of disjoint neighbouring blocks of k estimates."""
    out, k = {}, 1
    while 2 * k <= len(estimates):
        blocks = [
            estimates[i : i + k].mean(0) for i in range(0, len(estimates) - k + 1, k)
        ]
        pairs = range(0, len(blocks) - 1, 2)
        out[str(k)] = float(np.mean([_cosine(blocks[i], blocks[i + 1]) for i in pairs]))
        k *= 2
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--estimates", type=int, default=64)
    parser.add_argument("--at-step", type=int, default=None, help="default: the last")
    parser.add_argument("--val-seeds", type=int, default=8)
    parser.add_argument("--moves", type=float, nargs="+", default=[0.01, 0.03, 0.1])
    a, rest = parser.parse_known_args(argv)
    args = pes_train.parse_args([*rest, "--no-progress"]).resolved()
    cfg, env_params = pes_train.pes_config(args)
    with tempfile.TemporaryDirectory() as scratch:
        if args.pes.init_lo == pes_train.CLONE_DEMONSTRATOR:
            clone = pes_train.clone_demonstrator(args, pathlib.Path(scratch))
            args = runs.replace_flat(args, init_lo=str(clone))
        state = pes.shard_state(cfg, pes_train.init_state(args, cfg, env_params))
    _, whole = distributed.pairs_shardings(args.pes.num_pairs)
    at = args.pes.outer_steps - 1 if a.at_step is None else a.at_step
    values = pes_train.schedule_at(args, at)
    params = distributed.put(
        env_params.replace(
            alpha=jnp.float32(values.alpha),
            n_max=jnp.int32(values.n_max),
            outer_step=jnp.int32(at),
        ),
        whole,
    )
    flat0, unravel = ravel_pytree(state.meta.mlp)

    @jax.jit
    def estimate(state: pes.PESState) -> tuple[pes.PESState, jax.Array]:
        key, k_eps = jax.random.split(state.key)
        grads, env, accumulator, _ = pes.unroll(
            cfg, state.meta, state.env, state.accumulator, k_eps, params
        )
        state = state.replace(env=env, accumulator=accumulator, key=key)
        return state, ravel_pytree(grads["meta"])[0]

    tic = time.perf_counter()
    estimates = []
    for _ in range(a.estimates):
        state, g = estimate(state)
        estimates.append(np.asarray(g, np.float64))
    estimates = np.stack(estimates)
    seconds_estimates = time.perf_counter() - tic
    mean = estimates.mean(0)

    # The agent's validation program and seeds (validation.Validation's).
    steps = args.run.eval_horizon_factor * args.inner.n_max
    program = validation.lo_curves(
        cfg.env.task, args.lo, steps=steps, eval_every=max(1, steps // 10)
    )
    keys = jax.random.split(jax.random.PRNGKey(args.seed + 1_000), a.val_seeds)

    def per_seed(flat: np.ndarray) -> dict[str, np.ndarray]:
        meta = state.meta._replace(mlp=unravel(jnp.asarray(flat, jnp.float32)))
        return validation.seed_losses(program(meta, env_params.data, keys), 40)

    start = per_seed(np.asarray(flat0))
    rng = np.random.default_rng(0)
    random_dir = rng.normal(size=mean.shape)
    moved = {}
    for name, direction in (("descent", -mean), ("random", random_dir)):
        unit = direction / np.sqrt(np.mean(direction**2))  # RMS 1 per weight
        for move in a.moves:
            losses = per_seed(np.asarray(flat0) + move * unit)
            diff = losses["valid_loss"] - start["valid_loss"]
            train_diff = losses["train_loss"] - start["train_loss"]
            moved[f"{name}_{move:g}"] = {
                "diff_mean": float(diff.mean()),
                "diff_std": float(diff.std()),
                "train_diff_mean": float(train_diff.mean()),
                "train_diff_std": float(train_diff.std()),
            }
    result = {
        "env": args.env,
        "at_step": at,
        "alpha": float(values.alpha),
        "n_max": int(values.n_max),
        "num_pairs": args.pes.num_pairs,
        "truncation": args.pes.truncation,
        "estimates": a.estimates,
        "num_weights": int(mean.size),
        "seconds_per_estimate": seconds_estimates / a.estimates,
        "agreement": agreement(estimates),
        **{
            f"start_{k}": {"mean": float(v.mean()), "std": float(v.std())}
            for k, v in start.items()
        },
        "along_mean": moved,
    }
    json.dump(result, sys.stdout, indent=2)
    print()
    return result


if __name__ == "__main__":
    main()
