"""Benchmark: the PyTorch small_fc_lopt step against torch's Adam and the JAX update.

Measures, in one run and on random gradients (no dataset is read), for the ImageNet-32
image MLP's tensors (3072-128-128-1000 by default, 538,856 parameters; torch's
nn.Linear layout, weights (out, in), in both frameworks):

- ``torch_lo_step_ms``: ``elo_gym.torch_optim.SmallFcLOpt.step()`` (accumulators,
  features, per-parameter MLP and the in-place update);
- ``torch_adam_step_ms``: ``torch.optim.Adam(lr=1e-3).step()`` with torch's defaults;
- ``jax_lo_update_ms``: one jitted step of the optax face ``elo_gym.small_fc_lopt``
  plus ``optax.apply_updates``, state and params donated (as ``bench_lopt.py``'s
  ``lo_update_ms``).

The three are timed in turn (round-robin), so that their ratios see the same machine
load. Issue 19's target is ``torch_over_jax`` <= 2. torch runs on
``torch.get_num_threads()`` threads (``--torch-threads`` sets it): on cores busy with
other work, torch's OpenMP threads spin at barriers while a peer is descheduled, which
can cost several times the step; ``OMP_WAIT_POLICY=passive`` or one thread avoids it.
Prints one JSON object on stdout; progress goes to stderr.

Usage: ``python scripts/bench_torch_lopt.py [--repeats 21] [--torch-threads 1]``
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

import elo_gym
from elo_gym import torch_optim

# The helper sits beside this file; the script is also imported by path (tests), when
from elo_gym.timing import json_cli, log, machine_info, median_times

IMAGE_SIZE = 32 * 32 * 3
NUM_CLASSES = 1000


def mlp_shapes(hidden_sizes: Sequence[int]) -> list[tuple[int, ...]]:
    """Weight (out, in) and bias (out,) shapes of the image MLP, layer by layer."""
    sizes = [IMAGE_SIZE, *hidden_sizes, NUM_CLASSES]
    shapes: list[tuple[int, ...]] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        shapes += [(fan_out, fan_in), (fan_out,)]
    return shapes


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3)


def run(
    hidden_sizes: Sequence[int] = (128, 128),
    repeats: int = 21,
    warmup: int = 3,
    max_seconds: float = 20.0,
    seed: int = 0,
    torch_threads: int | None = None,
) -> dict[str, Any]:
    """Runs every measurement once and returns the JSON-ready result.

    Args:
      hidden_sizes: widths of the image MLP's hidden layers.
      repeats: timed calls per measurement (fewer for one that exceeds
        ``max_seconds``; the result says how many).
      warmup: untimed calls before timing (the JAX update compiles in the first).
      max_seconds: time budget of the timed calls of one measurement.
      seed: seed of the random params, gradients and meta-parameters.
      torch_threads: torch's intra-op threads; None keeps torch's default.
    """
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    shapes = mlp_shapes(hidden_sizes)
    num_params = sum(int(np.prod(s)) for s in shapes)
    log(f"bench_torch_lopt: image MLP {tuple(hidden_sizes)}, {num_params} params")
    rng = np.random.default_rng(seed)
    params = [rng.normal(0.0, 0.05, s).astype(np.float32) for s in shapes]
    # Gradient-sized random values: the LO's cost does not depend on them.
    grads = [rng.normal(0.0, 1e-3, s).astype(np.float32) for s in shapes]
    meta = elo_gym.init_meta_params(jax.random.PRNGKey(seed))

    def torch_params() -> list[torch.nn.Parameter]:
        tensors = [torch.nn.Parameter(torch.tensor(p)) for p in params]
        for t, g in zip(tensors, grads, strict=True):
            t.grad = torch.tensor(g)
        return tensors

    lo = torch_optim.SmallFcLOpt(torch_params(), meta)
    adam = torch.optim.Adam(torch_params(), lr=1e-3)

    jax_opt = elo_gym.small_fc_lopt(meta)

    def jax_step(grads: Any, state: Any, params: Any) -> tuple[Any, Any]:
        updates, state = jax_opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    # Donated state and params: the update reuses their buffers in place.
    jax_step = jax.jit(jax_step, donate_argnums=(1, 2))
    jax_grads = [jnp.asarray(g) for g in grads]
    # Copies: donated buffers must not alias the NumPy arrays.
    carry = [[jnp.array(p) for p in params]]
    carry.append(jax_opt.init(carry[0]))

    def jax_call() -> Any:
        carry[0], carry[1] = jax_step(jax_grads, carry[1], carry[0])
        return carry

    load_start = os.getloadavg()[0]
    fns = {
        "torch_lo_step": lo.step,
        "torch_adam_step": adam.step,
        "jax_lo_update": jax_call,
    }
    log(f"  timing {', '.join(fns)} in turn ...")
    timings = median_times(fns, repeats, warmup=warmup, max_seconds=max_seconds)
    for name, t in timings.items():
        log(
            f"  {name}: {t.median_s * 1e3:.3f} ms (median of {t.repeats}; "
            f"warm-up {t.warmup_s:.1f} s)"
        )
    ms = {name: t.median_s * 1e3 for name, t in timings.items()}
    return {
        "num_params": num_params,
        "hidden_sizes": list(hidden_sizes),
        "shapes": [list(s) for s in shapes],
        **{f"{name}_ms": round(value, 4) for name, value in ms.items()},
        "torch_over_jax": _ratio(ms["torch_lo_step"], ms["jax_lo_update"]),
        "torch_over_adam": _ratio(ms["torch_lo_step"], ms["torch_adam_step"]),
        "repeats": {name: t.repeats for name, t in timings.items()},
        "warmup": warmup,
        "warmup_s": {name: round(t.warmup_s, 2) for name, t in timings.items()},
        "statistic": "median ms per call after warm-up (JAX: blocking on the "
        "result); timed in turn (round-robin), each after an untimed pause",
        "timed": {
            "torch_lo_step": "elo_gym.torch_optim.SmallFcLOpt(meta).step(), float32",
            "torch_adam_step": "torch.optim.Adam(lr=1e-3).step(), torch defaults",
            "jax_lo_update": "jit(small_fc_lopt(meta).update + optax.apply_updates), "
            "state and params donated",
        },
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        **machine_info(load_start),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: :func:`run`'s arguments as flags; prints its result as one JSON object."""
    json_cli(run, argv)


if __name__ == "__main__":
    main()
