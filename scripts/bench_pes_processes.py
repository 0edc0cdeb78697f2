"""Benchmark: does a second process (standing for a second host) make PES scale?

Two processes on localhost (jax.distributed, one CPU device each) are timed against
one process with one device and one process with two devices, each process pinned to
its own core and held to one XLA thread, so that two processes on a 2-core machine
stand for two hosts (the two-device process gets both cores, one per device):

- weak scaling, pairs per process fixed (``--pairs-per-process``, P):
  ``weak_efficiency_2`` = t(1 process, P pairs) / t(2 processes, 2P pairs); 1.0 means
  a second process runs twice the pairs in the same time per outer step;
- strong scaling, total pairs fixed (2P): ``strong_efficiency_2`` =
  t(1 process, 2P) / (2 t(2 processes, 2P)); 1.0 means twice as fast.

The ``_2_devices`` entries are the same ratios for one process with two devices. The
setting is bench_pes's reference (ELO-Digits-MLP, MLP 64-32-32-10, batch 128,
truncation 50, ELO mode: replay buffer and BC), for each replay-buffer scope (``pair``:
a queue per pair, split with the pairs; ``shared``: one queue replicated on every
device, see ``elo_gym.pes``). Every configuration of a scope is started and compiled
once, then timed in ``--rounds`` rounds, its order rotated each round so that a drift
in the machine's load hits all alike; each round times ``--repeats`` outer steps, and
the efficiencies use the medians over all rounds (every round is in the JSON).
``collectives`` counts, in the compiled outer step of two processes, the collectives
per outer step and those inside the inner-step loop (once per inner step each).

Usage: ``python scripts/bench_pes_processes.py [--rounds 3] [--repeats 5]``; prints one
JSON object (progress on stderr).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from elo_gym import distributed, pes
from elo_gym.agents import pes_train

# The helper sits beside this file (scripts/ is not a package).
from elo_gym.timing import log, machine_info, median_time

SCOPES = ("pair", "shared")
# With the affinity (which sizes XLA's CPU thread pool), one thread per device: a
# process stands for a host with one core per device.
ONE_THREAD_FLAGS = ("--xla_cpu_multi_thread_eigen=false",)


def _pes_step(args: pes_train.Args) -> tuple[Callable[[], dict], dict[str, int]]:
    """A no-argument call of one jitted outer step on the global pairs mesh, set up
    like ``pes_train.main`` (sharded state, replicated data), that carries its state
    along; and the collectives of its compiled program."""
    args = args.resolved()
    cfg, env_params = pes_train.pes_config(args)
    state = pes.shard_state(cfg, pes_train.init_state(args, cfg, env_params))
    _, whole = distributed.pairs_shardings(args.pes.num_pairs)
    values = pes_train.schedule_at(args, 1)
    # Outer step 1, so that new episodes may start from the buffer.
    params = distributed.put(env_params, whole).replace(
        alpha=jnp.float32(values.alpha),
        n_max=jnp.int32(values.n_max),
        outer_step=jnp.int32(1),
    )
    step = jax.jit(
        functools.partial(pes.outer_step, cfg, pes_train.outer_optimizer(args)),
        donate_argnums=0,
    )
    hlo = step.lower(state, params).compile().as_text()
    holder = {"state": state}

    def call() -> dict:
        holder["state"], metrics = step(holder["state"], params)
        return metrics

    return call, pes.count_collectives(hlo, cfg.truncation)


def _worker(a: argparse.Namespace) -> None:
    """One process of a configuration: compiles and warms up, prints ``ready``, then
    times ``repeats`` outer steps per ``time`` line on stdin (process 0 prints the
    median and the buffer fill as JSON) until stdin closes."""
    # Before JAX's backend starts: XLA sizes its CPU thread pool from these cores.
    os.sched_setaffinity(0, set(a.cores))
    if a.num_processes > 1:
        distributed.initialize(f"localhost:{a.port}", a.num_processes, a.rank)
    args = pes_train.make_args(
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
    call, collectives = _pes_step(args)
    # The processes compile at their own pace; gloo waits only 30 s for a peer.
    distributed.wait_for_all("bench_pes_processes_compiled")
    for _ in range(2):  # compiled above; these fill the buffer and warm the caches
        jax.block_until_ready(call())
    print(json.dumps({"ready": True, "collectives": collectives}), flush=True)
    for line in sys.stdin:
        if line.strip() != "time":
            continue
        # Every process makes the same calls: a collective runs in each.
        timing = median_time(call, a.repeats, warmup=0)
        metrics = jax.device_get(call())
        result = {
            "s_per_outer_step": timing.median_s,
            "buffer_fill": float(metrics["buffer_fill"]),
        }
        print(json.dumps(result), flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _child_env(devices: int) -> dict[str, str]:
    """This environment with ``devices`` CPU devices and one XLA thread each."""
    flags = [
        f
        for f in os.environ.get("XLA_FLAGS", "").split()
        if not f.startswith(
            ("--xla_force_host_platform_device_count", *ONE_THREAD_FLAGS)
        )
    ]
    flags += [f"--xla_force_host_platform_device_count={devices}", *ONE_THREAD_FLAGS]
    return dict(os.environ, XLA_FLAGS=" ".join(flags))


def _next_json_line(proc: subprocess.Popen) -> str:
    """The next line of ``proc``'s stdout that holds a JSON object, skipping what
    gloo prints there ("[Gloo] Rank 0 is connected ..."); "" once it has ended."""
    while (line := proc.stdout.readline()) and not line.startswith("{"):
        pass
    return line


class Configuration:
    """The worker processes of one configuration, started and compiled once."""

    def __init__(
        self,
        processes: int,
        devices: int,
        num_pairs: int,
        scope: str,
        cores: Sequence[int],
        a: argparse.Namespace,
    ):
        self.name = f"{processes}p{devices}d_{num_pairs}pairs"
        port = _free_port()
        self.procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    *("--rank", str(rank), "--num-processes", str(processes)),
                    # Process r on core r; a two-device process on one core each.
                    "--cores",
                    ",".join(str(c) for c in cores[rank : rank + devices]),
                    *("--port", str(port), "--scope", scope),
                    *("--num-pairs", str(num_pairs), "--truncation", str(a.truncation)),
                    *("--repeats", str(a.repeats)),
                ],
                env=_child_env(devices),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for rank in range(processes)
        ]

    def _read(self) -> dict:
        """Process 0's next JSON line (the others' are read and dropped)."""
        lines = [_next_json_line(p) for p in self.procs]
        if not all(lines):
            self.kill()
            codes = [p.wait() for p in self.procs]
            raise RuntimeError(f"{self.name}: workers ended, exit codes {codes}")
        return json.loads(lines[0])

    def ready(self) -> dict:
        return self._read()

    def time(self) -> dict:
        for p in self.procs:
            p.stdin.write("time\n")
            p.stdin.flush()
        return self._read()

    def kill(self) -> None:
        # SIGKILL: JAX's preemption notifier catches SIGTERM.
        for p in self.procs:
            if p.poll() is None:
                p.kill()

    def close(self) -> None:
        """Ends the workers (stdin closed), killing those that do not end."""
        for p in self.procs:
            if p.poll() is None:
                p.stdin.close()
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _scope(scope: str, cores: Sequence[int], a: argparse.Namespace) -> dict:
    """Weak and strong scaling of one scope: 4 configurations, timed in rounds."""
    per, total = a.pairs_per_process, 2 * a.pairs_per_process
    shapes = {  # (processes, devices, pairs)
        "one_device_half": (1, 1, per),
        "one_device": (1, 1, total),
        "two_processes": (2, 1, total),
        "two_devices": (1, 2, total),
    }
    log(f"buffer_scope={scope}: starting and compiling {len(shapes)} configurations")
    configs = {k: Configuration(*s, scope, cores, a) for k, s in shapes.items()}
    # A hung collective ends here: killed workers make the read below fail.
    watchdog = threading.Timer(a.timeout, lambda: [c.kill() for c in configs.values()])
    watchdog.start()
    try:
        collectives = {k: c.ready()["collectives"] for k, c in configs.items()}
        rounds = []
        names = list(configs)
        for r in range(a.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            log(f"buffer_scope={scope}: round {r + 1}/{a.rounds} ({', '.join(order)})")
            rounds.append({k: configs[k].time() for k in order})
    finally:
        watchdog.cancel()
        for c in configs.values():
            c.close()
    t = {
        k: statistics.median(rnd[k]["s_per_outer_step"] for rnd in rounds)
        for k in names
    }
    return {
        "s_per_outer_step": {k: round(v, 4) for k, v in t.items()},
        "weak_efficiency_2": round(t["one_device_half"] / t["two_processes"], 3),
        "strong_efficiency_2": round(t["one_device"] / (2 * t["two_processes"]), 3),
        "weak_efficiency_2_devices": round(t["one_device_half"] / t["two_devices"], 3),
        "strong_efficiency_2_devices": round(
            t["one_device"] / (2 * t["two_devices"]), 3
        ),
        "collectives": collectives["two_processes"],
        "rounds": [
            {k: round(v["s_per_outer_step"], 4) for k, v in rnd.items()}
            for rnd in rounds
        ],
        "buffer_fill": {k: rounds[-1][k]["buffer_fill"] for k in names},
    }


def run(a: argparse.Namespace) -> dict:
    """Times every scope; returns the JSON dict."""
    load_start = os.getloadavg()[0]
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise ValueError(f"two processes need two cores; {len(cores)} allowed")
    out: dict = {
        "setting": f"ELO-Digits-MLP, MLP 64-32-32-10, batch 128, "
        f"{a.pairs_per_process} pairs (+/-) per process (weak) or "
        f"{2 * a.pairs_per_process} in all (strong), truncation {a.truncation}, elo "
        "mode; one core and one XLA thread per device",
    }
    for scope in a.scopes:
        out[scope] = _scope(scope, cores, a)
    return {
        **out,
        "rounds": a.rounds,
        "repeats": a.repeats,
        "cores": cores[:2],
        **machine_info(load_start),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scopes",
        type=lambda s: tuple(x for x in s.split(",") if x),
        default=SCOPES,
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pairs-per-process", type=int, default=4)
    parser.add_argument("--truncation", type=int, default=50)
    parser.add_argument(
        "--timeout", type=float, default=1200.0, help="seconds per scope, at most"
    )
    # A worker process of a configuration (started by this script).
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--num-processes", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument(
        "--cores",
        type=lambda s: [int(c) for c in s.split(",")],
        default=[0],
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--scope", default="pair", help=argparse.SUPPRESS)
    parser.add_argument("--num-pairs", type=int, default=8, help=argparse.SUPPRESS)
    a = parser.parse_args()
    for name in ("rounds", "repeats", "pairs_per_process", "truncation"):
        if getattr(a, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.worker:
        _worker(a)
        return
    print(json.dumps(run(a), indent=2))


if __name__ == "__main__":
    main()
