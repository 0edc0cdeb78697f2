"""Shared timing helper for the bench scripts: median wall time after warm-up.

JAX dispatches asynchronously, so every timed call ends in ``jax.block_until_ready``;
the first calls compile and fill caches, so they are run untimed first.

On CPU, each timed call starts after a short pause (``SETTLE_S``). XLA's CPU worker
threads stay busy for a few milliseconds after a long call returns, and slow down
whatever runs next: on the 2-core CI machine the LO update timed right after the 100 ms
batch-4096 forward/backward took 28.5-30.2 ms, and 23.6 ms after a 5 ms pause. Without
the pause, a round-robin would charge that to whichever measurement follows the longest
one. A GPU gets no pause: an idle GPU lowers its clocks (on an H200, every timing of
bench_lopt rose by 1.5-2x with it).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import tyro

SETTLE_S = 0.01  # pause before each timed call on CPU (see the module docstring)


def settle_seconds() -> float:
    """The pause before each timed call: SETTLE_S on CPU, none on an accelerator."""
    return SETTLE_S if jax.default_backend() == "cpu" else 0.0


class Timing(NamedTuple):
    """Median seconds per call, how many timed calls it is the median of, and the
    seconds the untimed warm-up calls took (mostly compilation)."""

    median_s: float
    repeats: int
    warmup_s: float


def median_time(
    fn: Callable[[], Any],
    repeats: int,
    *,
    warmup: int = 2,
    max_seconds: float | None = None,
    min_repeats: int = 5,
    settle_s: float | None = None,
) -> Timing:
    """Times ``fn()`` (blocking on its result) ``repeats`` times after ``warmup`` calls.

    Args:
      fn: a no-argument callable returning JAX arrays (any pytree) to wait for.
      repeats: timed calls wanted.
      warmup: untimed calls first (compilation, allocator warm-up).
      max_seconds: stop early once the timed calls have taken this long, but not
        before ``min_repeats`` calls; keeps slow measurements within budget.
      min_repeats: the fewest timed calls when ``max_seconds`` cuts the run short.
      settle_s: untimed pause before each timed call; None: :func:`settle_seconds`.

    Returns:
      :class:`Timing`: the median, the number of timed calls actually made and the
      warm-up time.
    """
    return median_times(
        {"fn": fn},
        repeats,
        warmup=warmup,
        max_seconds=max_seconds,
        min_repeats=min_repeats,
        settle_s=settle_s,
    )["fn"]


def median_times(
    fns: Mapping[str, Callable[[], Any]],
    repeats: int,
    *,
    warmup: int = 2,
    max_seconds: float | None = None,
    min_repeats: int = 5,
    settle_s: float | None = None,
) -> dict[str, Timing]:
    """Like :func:`median_time` for several callables, timed in turn (round-robin).

    Interleaving makes their ratio robust to a machine whose load drifts during the
    run (other jobs on shared cores): each one sees the same conditions.
    ``max_seconds`` is per callable, as in :func:`median_time`.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if settle_s is None:
        settle_s = settle_seconds()
    warmup_s = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        for _ in range(warmup):
            jax.block_until_ready(fn())
        warmup_s[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in fns}
    spent = 0.0
    for done in range(1, repeats + 1):
        for name, fn in fns.items():
            time.sleep(settle_s)
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
            spent += times[name][-1]
        if (
            max_seconds is not None
            and spent > max_seconds * len(fns)
            and done >= min(min_repeats, repeats)
        ):
            break
    return {
        name: Timing(statistics.median(t), len(t), warmup_s[name])
        for name, t in times.items()
    }


def log(message: str) -> None:
    """Progress goes to stderr, so that stdout holds only the JSON result."""
    print(message, file=sys.stderr, flush=True)


def machine_info(load_start: float) -> dict:
    """Versions, device and machine load to attach to a benchmark's JSON.

    Other processes on a shared machine slow every number; the 1-minute load averages
    when the run started and ended show how busy it was.
    """
    import os

    import jaxlib

    device = jax.devices()[0]
    return {
        "jax_version": jax.__version__,
        "jaxlib_version": jaxlib.__version__,
        "device": str(device),
        "device_kind": device.device_kind,
        "platform": device.platform,
        "cpu_count": os.cpu_count(),
        "load_avg_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],
    }


def json_cli(run: Callable[..., dict], argv: Sequence[str] | None = None) -> None:
    """A benchmark's CLI: ``run``'s keyword arguments as flags (tyro; the help comes
    from its docstring), its result printed as one JSON object."""
    print(json.dumps(tyro.cli(run, args=argv), indent=2))
