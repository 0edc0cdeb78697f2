"""Benchmark: seconds per PES outer step on ELO-Digits-MLP, and the optimizee floor.

Reference setting (issue 4): MLP 64-32-32-10, batch 128, 8 antithetic pairs (16 copies),
truncation 50, i.e. 800 optimizee steps per outer step. ``optimizee_floor_s`` is a
jitted 50-step ``lax.scan`` of plain Adam steps over the same 16 copies, measured in
the same run: what the optimizee compute alone costs. Prints one JSON object; medians
after warm-up.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import optax

from elo_gym.agents import pes_train

# The helper sits beside this file (scripts/ is not a package).
sys.path.insert(0, os.fspath(pathlib.Path(__file__).resolve().parent))
from _timing import median_time  # noqa: E402


def _median_seconds(fn, repeats: int) -> float:
    return median_time(fn, repeats).median_s


def _pes_step_seconds(args: pes_train.Args, repeats: int) -> float:
    args = args.resolved()
    settings = pes_train.env_settings(args)
    env_cfg = settings.config(2 * args.num_pairs)
    env_params = settings.params(env_cfg.task.load_data())
    cfg = pes_train.PESConfig(
        env=env_cfg,
        truncation=args.truncation,
        sigma=args.sigma,
        loss_cap=4.6,
        keep_accumulator_on_restore=False,
    )
    state = pes_train.init_state(args, cfg, env_params)
    step = jax.jit(
        functools.partial(pes_train.outer_step, cfg, pes_train.outer_optimizer(args)),
        donate_argnums=0,
    )
    params = env_params.replace(alpha=jnp.float32(pes_train.alpha_for(args, 1)))
    holder = {"state": state}

    def run():
        holder["state"], metrics = step(holder["state"], params)
        jax.block_until_ready(metrics)

    return _median_seconds(run, repeats)


def _adam_floor_seconds(args: pes_train.Args, repeats: int) -> float:
    """A 50-step scan of plain Adam on the same task and number of copies."""
    args = args.resolved()
    task = pes_train.env_settings(args).task()
    data = task.load_data()
    adam = optax.adam(1e-3)
    copies = 2 * args.num_pairs
    keys = jax.random.split(jax.random.PRNGKey(0), copies)
    params = jax.vmap(task.init)(keys)
    opt_state = jax.vmap(adam.init)(params)

    def one_copy(params, opt_state, key):
        def body(carry, k):
            p, s = carry
            grads = jax.grad(task.loss)(p, task.sample_batch(data, k))
            updates, s = adam.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), None

        return jax.lax.scan(
            body, (params, opt_state), jax.random.split(key, args.truncation)
        )[0]

    scan = jax.jit(jax.vmap(one_copy))

    def run():
        jax.block_until_ready(scan(params, opt_state, keys))

    return _median_seconds(run, repeats)


def run(repeats: int = 10, num_pairs: int = 8, truncation: int = 50) -> dict:
    """Measures both modes and the floor in one process; returns the JSON dict."""
    base = dict(
        num_pairs=num_pairs,
        truncation=truncation,
        hidden_sizes=(32, 32),
        batch_size=128,
        outer_steps=1000,
        progress=False,
    )
    print("timing elo ...", file=sys.stderr)
    elo = _pes_step_seconds(pes_train.Args(mode="elo", **base), repeats)
    print("timing naive ...", file=sys.stderr)
    naive = _pes_step_seconds(pes_train.Args(mode="naive", **base), repeats)
    print("timing the Adam floor ...", file=sys.stderr)
    floor = _adam_floor_seconds(pes_train.Args(**base), repeats)
    steps = 2 * num_pairs * truncation
    return {
        "setting": f"ELO-Digits-MLP, MLP 64-32-32-10, batch 128, {num_pairs} pairs "
        f"(+/-), truncation {truncation}: {steps} optimizee steps/outer step",
        "s_per_outer_step_elo": elo,
        "s_per_outer_step_naive": naive,
        "trajectory_steps_per_s_elo": steps / elo,
        "elo_over_naive_cost": elo / naive,
        "optimizee_floor_s": floor,
        "elo_over_floor": elo / floor,
        "repeats": repeats,
        "jax": jax.__version__,
        "device": str(jax.devices()[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--num-pairs", type=int, default=8)
    parser.add_argument("--truncation", type=int, default=50)
    a = parser.parse_args()
    print(json.dumps(run(a.repeats, a.num_pairs, a.truncation), indent=2))


if __name__ == "__main__":
    main()
