"""Benchmark: seconds per PES outer step with the pairs split over 1, 2, ... processes.

The multi-process runs use jax.distributed on localhost with one CPU device per
process, each process pinned to its own core (``os.sched_setaffinity``); the
one-process baseline runs alone on the first core. The setting is bench_pes's
reference (ELO-Digits-MLP, MLP 64-32-32-10, batch 128, 8 antithetic pairs, truncation
50, ELO mode: replay buffer and BC), timed for each replay-buffer scope:

- ``shared``: one queue replicated on every device; a push gathers the pushing copies'
  snapshots from all processes;
- ``pair``: one queue per pair (still replicated, see docs/distributed.md).

The total number of pairs is fixed (strong scaling): ``speedup_n`` is t_1 / t_n and
``efficiency_n`` is t_1 / (n t_n), 1.0 for perfect scaling. Every process makes the
same timed calls (a collective runs in each); process 0 reports the medians after
warm-up. Prints one JSON object.

Usage: ``python scripts/bench_pes_processes.py [--processes 1,2] [--repeats 10]``
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from elo_gym import distributed
from elo_gym.agents import pes_train

# The helper sits beside this file (scripts/ is not a package).
sys.path.insert(0, os.fspath(pathlib.Path(__file__).resolve().parent))
from _timing import log, machine_info, median_time  # noqa: E402

SCOPES = ("shared", "pair")


def _pes_step(args: pes_train.Args) -> Callable[[], dict]:
    """A no-argument call of one jitted outer step on the global pairs mesh, set up
    like ``pes_train.main`` (sharded state, replicated data), that carries its state
    along."""
    args = args.resolved()
    cfg, env_params = pes_train.pes_config(args)
    state = pes_train.init_state(args, cfg, env_params)
    state = pes_train.shard_state(state, args.num_pairs)
    _, whole = distributed.pairs_shardings(args.num_pairs)
    values = pes_train.schedule_at(args, 1)
    # Outer step 1, so that new episodes may start from the buffer.
    params = distributed.put(env_params, whole).replace(
        alpha=jnp.float32(values.alpha),
        n_max=jnp.int32(values.n_max),
        outer_step=jnp.int32(1),
    )
    step = jax.jit(
        functools.partial(pes_train.outer_step, cfg, pes_train.outer_optimizer(args)),
        donate_argnums=0,
    )
    holder = {"state": state}

    def call() -> dict:
        holder["state"], metrics = step(holder["state"], params)
        return metrics

    return call


def _worker(a: argparse.Namespace) -> None:
    """One process of a run: times the outer step; process 0 prints a JSON line."""
    # Before JAX's backend starts: XLA sizes its CPU thread pool from these cores.
    os.sched_setaffinity(0, {a.core})
    if a.num_processes > 1:
        distributed.initialize(f"localhost:{a.port}", a.num_processes, a.rank)
    args = pes_train.Args(
        mode="elo",
        num_pairs=a.num_pairs,
        truncation=a.truncation,
        hidden_sizes=(32, 32),
        batch_size=128,
        outer_steps=1000,
        buffer_scope=a.scope,
        init_lo="none",  # the step's cost does not depend on the LO's weights
        progress=False,
    )
    call = _pes_step(args)
    # No time limit: every process must make the same number of calls.
    timing = median_time(call, a.repeats)
    metrics = jax.device_get(call())
    # One scalar all-reduce over all devices: the latency every inner step pays a few
    # times (the copies' episode ends, pushes and metrics are reduced over them).
    split, whole = distributed.pairs_shardings(len(jax.devices()))
    ones = distributed.put(np.ones(len(jax.devices()), np.float32), split)
    total = jax.jit(jnp.sum, out_shardings=whole)
    allreduce = median_time(lambda: total(ones), 5 * a.repeats, settle_s=0.0)
    if distributed.is_main_process():
        result = {
            "s_per_outer_step": timing.median_s,
            "warmup_s": timing.warmup_s,
            "allreduce_ms": 1e3 * allreduce.median_s,
            "devices": len(jax.devices()),
            "buffer_fill": float(metrics["buffer_fill"]),
            "frac_from_buffer": float(metrics["frac_from_buffer"]),
        }
        print(json.dumps(result), flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _child_env() -> dict[str, str]:
    """This environment with one CPU device per process."""
    flags = [
        f
        for f in os.environ.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    ]
    flags.append("--xla_force_host_platform_device_count=1")
    return dict(os.environ, XLA_FLAGS=" ".join(flags))


def _time_processes(
    n: int, scope: str, cores: Sequence[int], a: argparse.Namespace
) -> dict:
    """Runs ``n`` worker processes together; returns process 0's result."""
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                *("--rank", str(rank), "--core", str(cores[rank])),
                *("--num-processes", str(n), "--port", str(port), "--scope", scope),
                *("--num-pairs", str(a.num_pairs), "--truncation", str(a.truncation)),
                *("--repeats", str(a.repeats)),
            ],
            env=_child_env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        for rank in range(n)
    ]
    deadline = time.time() + a.timeout
    try:
        outputs = [
            p.communicate(timeout=max(1.0, deadline - time.time()))[0] for p in procs
        ]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()  # SIGKILL: JAX's preemption notifier catches SIGTERM
                p.wait()
    if any(p.returncode for p in procs):
        raise RuntimeError(
            f"{n} processes ({scope}): exit codes {[p.returncode for p in procs]}"
        )
    return json.loads(outputs[0].strip().splitlines()[-1])


def run(a: argparse.Namespace) -> dict:
    """Times every scope at every process count; returns the JSON dict."""
    load_start = os.getloadavg()[0]
    cores = sorted(os.sched_getaffinity(0))
    if max(a.processes) > len(cores):
        raise ValueError(
            f"{max(a.processes)} processes need as many cores; {len(cores)} allowed"
        )
    out: dict = {
        "setting": f"ELO-Digits-MLP, MLP 64-32-32-10, batch 128, {a.num_pairs} pairs "
        f"(+/-), truncation {a.truncation}, elo mode; pairs split over the processes, "
        "one CPU device and one core each",
    }
    for scope in a.scopes:
        times = {}
        for n in a.processes:
            log(f"buffer_scope={scope}: {n} process(es) ...")
            times[n] = _time_processes(n, scope, cores, a)
        base = times[min(a.processes)]["s_per_outer_step"] * min(a.processes)
        out[scope] = {
            "s_per_outer_step": {
                str(n): round(t["s_per_outer_step"], 4) for n, t in times.items()
            },
            **{
                f"speedup_{n}": round(base / t["s_per_outer_step"], 3)
                for n, t in times.items()
            },
            **{
                f"efficiency_{n}": round(base / (n * t["s_per_outer_step"]), 3)
                for n, t in times.items()
            },
            "allreduce_ms": {
                str(n): round(t["allreduce_ms"], 3) for n, t in times.items()
            },
            "buffer_fill": {str(n): t["buffer_fill"] for n, t in times.items()},
        }
    return {
        **out,
        "repeats": a.repeats,
        "cores": cores[: max(a.processes)],
        **machine_info(load_start),
    }


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split(",") if s.strip())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--processes", type=_ints, default=(1, 2))
    parser.add_argument(
        "--scopes",
        type=lambda s: tuple(x for x in s.split(",") if x),
        default=SCOPES,
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--num-pairs", type=int, default=8)
    parser.add_argument("--truncation", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=1800.0)
    # A worker process of a run (started by this script).
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--num-processes", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--core", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--scope", default="shared", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.worker:
        _worker(a)
        return
    print(json.dumps(run(a), indent=2))


if __name__ == "__main__":
    main()
