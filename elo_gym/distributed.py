"""Multi-process (multi-host) meta-training with JAX's multi-controller runtime.

Every process runs the same program; ``jax.distributed.initialize`` joins them into one
runtime whose ``jax.devices()`` lists the devices of all processes, so that one global
mesh spans them and XLA's collectives (gloo over TCP on CPU, NCCL on GPU) carry the
cross-process traffic. A single process (nothing asked) is left exactly as it was.

Pytrees put on the global mesh with :func:`put` are fed by each process from its own
host copy, one addressable shard at a time: no process gathers a sharded array.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from orbax.checkpoint import multihost

PAIRS_AXIS = "pairs"


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool = False,
) -> bool:
    """Joins the jax.distributed runtime when asked; returns whether it did.

    Call before any other JAX call. Nothing happens when all three settings are None
    and ``auto`` is False. Settings left None are detected by JAX from the cluster
    environment (SLURM, Open MPI, Cloud TPU, Kubernetes); JAX raises ValueError when it
    finds none.

    Args:
      coordinator_address: ``host:port`` of process 0, reachable from every process.
      num_processes: how many processes take part.
      process_id: this process's rank, 0 .. num_processes - 1.
      auto: initialize even with all three None (cluster auto-detection).
    """
    if not auto and (coordinator_address, num_processes, process_id) == (None,) * 3:
        return False
    if jax.distributed.is_initialized():
        return True  # a second run in the same process (tests) keeps the runtime
    # Cross-process collectives on the CPU backend (the default in recent JAX, set
    # anyway so that a CPU run never falls back to none).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return True


def is_main_process() -> bool:
    """Whether this process writes files, logs and prints (process 0)."""
    return jax.process_index() == 0


def pairs_mesh(num_pairs: int) -> Mesh:
    """A 1-D mesh, axis ``pairs``, over every device of every process.

    Raises:
      ValueError: ``num_pairs`` is not a multiple of the global device count.
    """
    devices = jax.devices()
    if num_pairs % len(devices):
        raise ValueError(
            f"num_pairs ({num_pairs}) must be a multiple of the number of "
            f"devices ({len(devices)}, all processes) so pairs stay on one device"
        )
    return Mesh(np.asarray(devices), (PAIRS_AXIS,))


def pairs_shardings(num_pairs: int) -> tuple[NamedSharding, NamedSharding]:
    """(split, whole) on :func:`pairs_mesh`: arrays split along their leading (pairs
    or copies) axis, and replicated.

    Raises:
      ValueError: ``num_pairs`` is not a multiple of the global device count.
    """
    mesh = pairs_mesh(num_pairs)
    return NamedSharding(mesh, PartitionSpec(PAIRS_AXIS)), NamedSharding(
        mesh, PartitionSpec()
    )


def put(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """Each leaf as a global array with ``sharding``, from this process's host value.

    Every process must hold the same value of each leaf (the same seed and program);
    each one transfers only the shards its own devices hold.
    """

    def one(x: Any) -> jax.Array:
        host = np.asarray(x)
        return jax.make_array_from_callback(
            host.shape, sharding, lambda index: host[index], dtype=host.dtype
        )

    return jax.tree.map(one, tree)


def broadcast_from_main(tree: Any) -> Any:
    """Process 0's value of a small pytree of numbers on every process (a collective:
    all must call it), so that host-side decisions agree across processes.

    Bit-exact in any dtype (float64 too, which JAX would truncate); 0-d leaves come
    back as Python scalars. With one process, ``tree`` is returned as it is.
    """
    if jax.process_count() == 1:
        return tree
    leaves, treedef = jax.tree.flatten(tree)
    hosts = [np.asarray(x) for x in leaves]
    # As raw bytes: the broadcast sums zeros into process 0's bytes, which is exact.
    raw = multihost_utils.broadcast_one_to_all(
        [np.frombuffer(h.tobytes(), np.uint8) for h in hosts]
    )
    values = [
        np.frombuffer(r.tobytes(), h.dtype).reshape(h.shape)
        for r, h in zip(raw, hosts, strict=True)
    ]
    return treedef.unflatten([v.item() if v.ndim == 0 else v for v in values])


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is True on some process (a collective: all must call it)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.bool_(flag))))


def wait_for_all(name: str, timeout_s: int = 6 * 3600) -> None:
    """Blocks until every process has called this with ``name`` (once per run).

    A barrier of the coordination service, not a device collective: gloo gives up on
    a peer after 30 s, so one process's minutes of work alone (cloning the
    demonstrator) must be waited for here, before the next collective.
    """
    if jax.process_count() == 1:
        return
    multihost.get_barrier_sync_fn()(key=name, timeout_ms=1000 * timeout_s)


def run_alone(fn: Callable[..., Any], *args: Any) -> None:
    """Calls ``fn(*args)`` as a one-process JAX program: here when this is the only
    process, else in a spawned child process (whose checkpoints need no other
    process), waited for.

    Raises:
      RuntimeError: the child process failed (its output is above).
    """
    if jax.process_count() == 1:
        fn(*args)
        return
    child = multiprocessing.get_context("spawn").Process(target=fn, args=args)
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(
            f"{getattr(fn, '__qualname__', fn)} failed in a child process (exit code "
            f"{child.exitcode}); its output is above"
        )
