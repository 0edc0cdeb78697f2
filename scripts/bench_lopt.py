"""Benchmark: small_fc_lopt's update against Adam, the task's gradient and a matmul.

Measures, in one run and on random data (no dataset is read), for the ImageNet-32
image MLP (3072-128-128-1000 by default, 538,856 parameters; ``--hidden-sizes
128 128 128`` gives the env's 555,368-parameter default):

- ``lo_update_ms``: one jitted small_fc_lopt step through its optax face (accumulators,
  the 39 features, the per-parameter MLP and the update, then ``optax.apply_updates``),
  with the optimizer state and params donated, as a training loop would run it;
- ``adam_update_ms``: the same for ``optax.adam(1e-3)``;
- ``fwd_bwd_ms`` / ``fwd_bwd_4096_ms``: jitted ``value_and_grad`` of the task's
  cross-entropy at batch 128 and at the paper's batch 4096;
- ``matmul_equiv_ms``: one jitted dense float32 matmul (M, K) @ (K, N), at the LO's
  precision (HIGHEST: no TF32 on a GPU), whose FLOPs
  2 * M * K * N equal those of the LO's MLP over all P parameters,
  2 * P * (39 * 32 + 32 * 32 + 32 * 2); the shape is chosen square-ish (a skinny
  (P, 39) @ (39, 32) chain would measure the problem, not the hardware's matmul speed).

Why: every env step, every PES particle and every user of the optax face pays the LO
update; issue 8's target is ``lo_over_matmul`` <= 2. All times are medians of timed
calls after warm-up (``time.perf_counter`` around the call and
``jax.block_until_ready``). Prints one JSON object on stdout; progress goes to stderr.

Usage: ``python scripts/bench_lopt.py [--repeats 21] [--hidden-sizes 128 128]``
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

import elo_gym
from elo_gym import envs as tasks
from elo_gym import lopt

# The helper sits beside this file; the script is also imported by path (tests), when
from elo_gym.timing import (
    json_cli,
    log,
    machine_info,
    median_times,
    settle_seconds,
)

# Lopsided exact factorizations (e.g. P prime) fall back to an approximate cube.
_MAX_ASPECT = 4.0


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def matmul_shape(macs: int) -> tuple[int, int, int]:
    """(M, K, N) with M * K * N == macs and the smallest largest/smallest ratio.

    Falls back to a near-cube whose product is within rounding of ``macs`` when no
    exact factorization has an aspect ratio of at most 4.
    """
    divisors = _divisors(macs)
    best: tuple[float, tuple[int, int, int]] | None = None
    for a in divisors:
        if a**3 > macs:
            break
        rest = macs // a
        for b in divisors:
            if b < a or b * b > rest:
                continue
            if rest % b == 0:
                c = rest // b
                if best is None or c / a < best[0]:
                    best = (c / a, (c, b, a))
    if best is not None and best[0] <= _MAX_ASPECT:
        return best[1]
    side = max(1, round(macs ** (1 / 3)))
    return max(1, round(macs / side**2)), side, side


def _threaded(
    step: Callable[[Any, Any, Any], tuple[Any, Any]],
    grads: Any,
    state: Any,
    params: Any,
) -> Callable[[], Any]:
    """A no-argument call of ``step(grads, state, params) -> (params, state)`` that
    feeds its outputs back in: donated inputs are dead after each call."""
    carry = [params, state]

    def call() -> Any:
        carry[0], carry[1] = step(grads, carry[1], carry[0])
        return carry

    return call


def _optimizer_step(opt: optax.GradientTransformation) -> Callable:
    def step(grads: Any, state: Any, params: Any) -> tuple[Any, Any]:
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    # Donate state and params: the update then reuses their buffers in place.
    return jax.jit(step, donate_argnums=(1, 2))


def _copy(tree: Any) -> Any:
    # Each optimizer gets its own params: donation deletes the buffers it is given.
    return jax.tree.map(jnp.copy, tree)


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3)


def run(
    hidden_sizes: Sequence[int] = (128, 128),
    repeats: int = 21,
    warmup: int = 3,
    batch_size: int = 128,
    large_batch_size: int = 4096,
    max_seconds: float = 20.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Runs every measurement once and returns the JSON-ready result.

    Args:
      hidden_sizes: widths of the image MLP's hidden layers.
      repeats: timed calls per measurement (fewer for one that exceeds
        ``max_seconds``; the result says how many).
      warmup: untimed calls before timing (the first one compiles).
      batch_size: the small forward/backward batch (``fwd_bwd_ms``).
      large_batch_size: the paper's batch (``fwd_bwd_4096_ms``).
      max_seconds: time budget of the timed calls of one measurement (per
        measurement; they are timed in turn).
      seed: PRNG seed of the random params and data.
    """
    task = tasks.make_image_mlp_task("imagenet32", hidden_sizes=tuple(hidden_sizes))
    k_params, k_meta, k_data, k_mat = jax.random.split(jax.random.PRNGKey(seed), 4)
    # The task's init needs no data: it traces the MLP on a dummy image.
    params = task.init(k_params)
    num_params = sum(x.size for x in jax.tree.leaves(params))
    log(
        f"bench_lopt: image MLP {task.hidden_sizes}, {num_params} params, "
        f"device {jax.devices()[0]}"
    )

    def batch(size: int, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        k_img, k_lab = jax.random.split(key)
        images = jax.random.randint(
            k_img, (size, *task.image_shape), 0, 256, jnp.int32
        ).astype(jnp.uint8)
        return images, jax.random.randint(k_lab, (size,), 0, task.num_classes)

    load_start = os.getloadavg()[0]
    grad_fn = jax.jit(jax.value_and_grad(task.loss))
    small, large = batch(batch_size, k_data), batch(large_batch_size, k_data)
    # A real gradient, so that the LO sees realistic magnitudes.
    grads = grad_fn(params, small)[1]
    meta = elo_gym.init_meta_params(k_meta)
    lo, adam = elo_gym.small_fc_lopt(meta), optax.adam(1e-3)

    # MACs per parameter row of the LO's MLP: 39*32 + 32*32 + 32*2 at hidden size 32,
    # the sizes of its weight matrices (the 2-D leaves; biases are 1-D).
    row_macs = sum(w.size for w in jax.tree.leaves(meta.mlp) if w.ndim == 2)
    lo_flops = 2 * num_params * row_macs
    m, k, n = matmul_shape(num_params * row_macs)
    k_a, k_b = jax.random.split(k_mat)
    a = jax.random.normal(k_a, (m, k), jnp.float32)
    b = jax.random.normal(k_b, (k, n), jnp.float32)
    # Full float32, as the LO's own matmuls (lopt.PRECISION); on CPU the default.
    matmul = jax.jit(functools.partial(jnp.matmul, precision=lopt.PRECISION))

    fns = {
        "fwd_bwd": lambda: grad_fn(params, small),
        "fwd_bwd_4096": lambda: grad_fn(params, large),
        "lo_update": _threaded(
            _optimizer_step(lo), grads, lo.init(params), _copy(params)
        ),
        "adam_update": _threaded(
            _optimizer_step(adam), grads, adam.init(params), _copy(params)
        ),
        "matmul_equiv": lambda: matmul(a, b),
    }
    # Timed in turn (round-robin), so that the ratios see the same machine load.
    log(f"  timing {', '.join(fns)} in turn ...")
    timings = median_times(fns, repeats, warmup=warmup, max_seconds=max_seconds)
    for name, t in timings.items():
        log(
            f"  {name}: {t.median_s * 1e3:.3f} ms (median of {t.repeats}; "
            f"warm-up {t.warmup_s:.1f} s)"
        )
    ms = {name: t.median_s * 1e3 for name, t in timings.items()}
    lo_ms = ms["lo_update"]

    return {
        "num_params": num_params,
        "hidden_sizes": list(task.hidden_sizes),
        **{f"{name}_ms": round(value, 4) for name, value in ms.items()},
        "lo_over_matmul": _ratio(lo_ms, ms["matmul_equiv"]),
        "lo_over_fwd_bwd_4096": _ratio(lo_ms, ms["fwd_bwd_4096"]),
        "lo_over_adam": _ratio(lo_ms, ms["adam_update"]),
        "lo_over_fwd_bwd": _ratio(lo_ms, ms["fwd_bwd"]),
        "matmul_equiv_shape": f"({m}, {k}) @ ({k}, {n})",
        "matmul_equiv_flops": 2 * m * k * n,
        "lo_mlp_flops": lo_flops,
        "fwd_bwd_batch_sizes": [batch_size, large_batch_size],
        "repeats": {name: t.repeats for name, t in timings.items()},
        "warmup": warmup,
        "warmup_s": {name: round(t.warmup_s, 2) for name, t in timings.items()},
        "statistic": "median ms per call after warm-up, blocking on the result; the "
        "measurements are timed in turn (round-robin), each after an untimed pause "
        "of settle_s seconds (none on a GPU)",
        "settle_s": settle_seconds(),
        "timed": {
            "lo_update": "jit(small_fc_lopt(meta).update + optax.apply_updates), "
            "state and params donated",
            "adam_update": "jit(optax.adam(1e-3).update + optax.apply_updates), "
            "state and params donated",
            "fwd_bwd": "jit(value_and_grad(cross-entropy)) on random uint8 images",
            "matmul_equiv": "jit(jnp.matmul), float32, precision HIGHEST (as the "
            "LO's matmuls)",
        },
        **machine_info(load_start),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: :func:`run`'s arguments as flags; prints its result as one JSON object."""
    json_cli(run, argv)


if __name__ == "__main__":
    main()
