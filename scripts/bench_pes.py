"""Benchmark: seconds per PES outer step on ELO-Digits-MLP, against the optimizee floor.

Reference setting (issue 4): MLP 64-32-32-10, batch 128, 8 antithetic pairs (16 copies),
truncation 50, i.e. 800 optimizee steps per outer step. Measured in one run, timed in
turn (round-robin) so that all numbers see the same machine load:

- ``s_per_outer_step_elo`` / ``_naive``: one jitted PES outer step in each mode;
- ``s_per_outer_step_no_lo``: the ELO outer step with zero actions in place of the LO:
  the env (gradients, accumulators, the Adam expert, the mixed update, the buffer) and
  PES's bookkeeping, without the LO's inputs or network;
- ``optimizee_floor_s``: a jitted 50-step ``lax.scan`` of plain Adam steps over the same
  16 copies: what the optimizee compute alone costs;
- ``s_per_outer_step_tbptt``: the ELO outer step with ``--estimator tbptt`` (the
  gradient by backprop through the same 16 copies' truncation), and
  ``tbptt_over_elo`` its cost over the PES step's;
- ``temp_mb_elo`` / ``_tbptt``: the compiled outer step's temporary memory, as XLA
  reports it (backprop keeps what its backward pass needs).

``elo_over_floor`` is issue 8's ratio (target 3.0); ``no_lo_over_floor`` is what the
ratio would be if the LO cost nothing, and ``lo_share_of_elo`` the fraction of the ELO
step the LO takes. Prints one JSON object; medians after warm-up.

Usage: ``python scripts/bench_pes.py [--repeats 10]``
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from elo_gym import core, pes
from elo_gym.agents import pes_train

# The helper sits beside this file (scripts/ is not a package).
from elo_gym.timing import log, machine_info, median_times


def _zero_actions(
    weights: jax.Array, unravel: Callable, copies: core.EnvState
) -> jax.Array:
    """A policy that costs nothing: zero (d, m) for every parameter of every copy."""
    size = sum(x[0].size for x in jax.tree.leaves(copies.params))
    # Tied to the weights so that the PES machinery stays in the program.
    return jnp.zeros((weights.shape[0], size, 2)) + 0.0 * weights[:, :1, None]


def _pes_step(
    args: pes_train.Args, policy: pes.Policy | None
) -> tuple[Callable[[], dict], float]:
    """A no-argument call of one compiled outer step that carries its state along
    (``policy`` None: the LO itself), and the step's temporary memory in MB as the
    compiler reports it (NaN where the backend does not)."""
    args = args.resolved()
    cfg, env_params = pes_train.pes_config(args)
    state = pes_train.init_state(args, cfg, env_params)
    step = jax.jit(
        functools.partial(
            pes.outer_step, cfg, pes_train.outer_optimizer(args), policy=policy
        ),
        donate_argnums=0,
    )
    params = env_params.replace(alpha=jnp.float32(pes_train.schedule_at(args, 1).alpha))
    compiled = step.lower(state, params).compile()
    memory = compiled.memory_analysis()
    temp_mb = memory.temp_size_in_bytes / 2**20 if memory is not None else math.nan
    holder = {"state": state}

    def call() -> dict:
        holder["state"], metrics = compiled(holder["state"], params)
        return metrics

    return call, temp_mb


def _adam_floor(args: pes_train.Args) -> Callable[[], object]:
    """A 50-step scan of plain Adam on the same task and number of copies."""
    args = args.resolved()
    task = pes_train.env_settings(args).build_task()
    data = task.load_data()
    adam = optax.adam(1e-3)
    copies = 2 * args.pes.num_pairs
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
            body, (params, opt_state), jax.random.split(key, args.pes.truncation)
        )[0]

    scan = jax.jit(jax.vmap(one_copy))
    return lambda: scan(params, opt_state, keys)


def run(repeats: int = 10, num_pairs: int = 8, truncation: int = 50) -> dict:
    """Measures everything in one process, timed in turn; returns the JSON dict."""
    load_start = os.getloadavg()[0]
    base = dict(
        num_pairs=num_pairs,
        truncation=truncation,
        hidden_sizes=(32, 32),
        batch_size=128,
        outer_steps=1000,
        init_lo="none",  # the step's cost does not depend on the LO's weights
        progress=False,
    )
    elo_args = pes_train.make_args(mode="elo", **base)
    log("building the programs ...")
    calls, temp_mb = {}, {}
    for name, args, policy in [
        ("elo", elo_args, None),
        ("naive", pes_train.make_args(mode="naive", **base), None),
        ("no_lo", elo_args, _zero_actions),
        ("tbptt", pes_train.make_args(estimator="tbptt", **base), None),
    ]:
        calls[name], temp_mb[name] = _pes_step(args, policy)
    calls["floor"] = _adam_floor(elo_args)
    log(f"timing {len(calls)} programs in turn, {repeats} rounds ...")
    t = {name: timing.median_s for name, timing in median_times(calls, repeats).items()}
    steps = 2 * num_pairs * truncation
    return {
        "setting": f"ELO-Digits-MLP, MLP 64-32-32-10, batch 128, {num_pairs} pairs "
        f"(+/-), truncation {truncation}: {steps} optimizee steps/outer step",
        "s_per_outer_step_elo": round(t["elo"], 5),
        "s_per_outer_step_naive": round(t["naive"], 5),
        "s_per_outer_step_no_lo": round(t["no_lo"], 5),
        "optimizee_floor_s": round(t["floor"], 5),
        "s_per_outer_step_tbptt": round(t["tbptt"], 5),
        "tbptt_over_elo": round(t["tbptt"] / t["elo"], 3),
        "temp_mb_elo": round(temp_mb["elo"], 1),
        "temp_mb_tbptt": round(temp_mb["tbptt"], 1),
        "trajectory_steps_per_s_elo": round(steps / t["elo"], 1),
        "elo_over_naive_cost": round(t["elo"] / t["naive"], 3),
        "elo_over_floor": round(t["elo"] / t["floor"], 3),
        "no_lo_over_floor": round(t["no_lo"] / t["floor"], 3),
        "lo_share_of_elo": round(1.0 - t["no_lo"] / t["elo"], 3),
        "repeats": repeats,
        **machine_info(load_start),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--num-pairs", type=int, default=8)
    parser.add_argument("--truncation", type=int, default=50)
    a = parser.parse_args()
    print(json.dumps(run(a.repeats, a.num_pairs, a.truncation), indent=2))


if __name__ == "__main__":
    main()
