"""The replay buffer of optimizee states that new episodes can start from (ELO Alg. 1).

A fixed-capacity FIFO ring buffer, as a pytree, with pure ``push`` and ``sample``. It
holds ``num_queues`` independent queues: one shared by all env copies (the paper), or
one per antithetic pair (the ELO authors' code).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class ReplayBuffer:
    """FIFO queues of snapshots."""

    snapshots: Any  # pytree; each leaf (Q, M, ...): Q queues of capacity M
    size: jax.Array  # (Q,) int32: filled slots per queue (<= M)
    head: (
        jax.Array
    )  # (Q,) int32: slot the next push writes (the oldest entry when full)

    @property
    def capacity(self) -> int:
        return jax.tree.leaves(self.snapshots)[0].shape[1]


def init_buffer(example: Any, capacity: int, num_queues: int = 1) -> ReplayBuffer:
    """An empty buffer for snapshots shaped like ``example`` (one, unbatched)."""
    snapshots = jax.tree.map(
        lambda x: jnp.zeros((num_queues, capacity) + jnp.shape(x), jnp.result_type(x)),
        example,
    )
    zeros = jnp.zeros((num_queues,), jnp.int32)
    return ReplayBuffer(snapshots, zeros, zeros)


def push(
    buffer: ReplayBuffer,
    snapshots: Any,
    mask: jax.Array,
    queue: jax.Array,
    *,
    gather_axis: str | None = None,
) -> ReplayBuffer:
    """Enqueues ``snapshots[i]`` into queue ``queue[i]`` for every i with ``mask[i]``.

    Pushes happen in copy order; a full queue drops its oldest entry. Pushes are rare
    (about one per episode), so the scan over copies runs only when some copy pushes.

    Args:
      buffer: the buffer.
      snapshots: batched snapshots, leaves (C, ...).
      mask: (C,) bool, which copies push.
      queue: (C,) int32, the queue each copy pushes into.
      gather_axis: inside ``jax.shard_map``, the mesh axis that the copies are split
        over while ``buffer`` is replicated over it: every device gathers the masks
        (each call) and the snapshots (only when some copy on some device pushes) and
        applies all pushes in global copy order, so that the replicas stay equal.
    """
    if gather_axis is None:
        return jax.lax.cond(
            jnp.any(mask),
            lambda b: _push_all(b, snapshots, queue, mask),
            lambda b: b,
            buffer,
        )
    gather = functools.partial(jax.lax.all_gather, axis_name=gather_axis, tiled=True)
    mask = gather(mask)  # the same predicate on every device, small
    return jax.lax.cond(
        jnp.any(mask),
        lambda b: _push_all(b, *gather((snapshots, queue)), mask),
        lambda b: b,
        buffer,
    )


def _push_all(
    buffer: ReplayBuffer, snapshots: Any, queue: jax.Array, mask: jax.Array
) -> ReplayBuffer:
    capacity = buffer.capacity

    def push_one(buf: ReplayBuffer, item):
        snapshot, do_push, q = item
        slot = buf.head[q]

        def write(leaf, x):
            return leaf.at[q, slot].set(jnp.where(do_push, x, leaf[q, slot]))

        snaps = jax.tree.map(write, buf.snapshots, snapshot)
        size = buf.size.at[q].add(jnp.where(do_push & (buf.size[q] < capacity), 1, 0))
        head = buf.head.at[q].set(jnp.where(do_push, (slot + 1) % capacity, slot))
        return ReplayBuffer(snaps, size, head), None

    return jax.lax.scan(push_one, buffer, (snapshots, mask, queue))[0]


def sample(
    buffer: ReplayBuffer, key: jax.Array, queue: jax.Array
) -> tuple[Any, jax.Array]:
    """Draws one snapshot uniformly from queue ``queue``.

    Returns:
      (snapshot, available): ``available`` is False when the queue is empty, in which
      case the snapshot is meaningless and must not be used.
    """
    size = buffer.size[queue]
    index = jax.random.randint(key, (), 0, jnp.maximum(size, 1))
    snapshot = jax.tree.map(lambda leaf: leaf[queue, index], buffer.snapshots)
    return snapshot, size > 0
