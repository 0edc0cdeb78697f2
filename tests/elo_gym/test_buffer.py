"""The replay buffer: a pytree of FIFO ring queues with pure push and sample."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from elo_gym import buffer as replay

EXAMPLE = {"w": jnp.zeros((3,), jnp.float32), "n": jnp.zeros((), jnp.int32)}


def _items(values, queue=None):
    """Batched snapshots: item i has w = [v, v, v] and n = v."""
    values = jnp.asarray(values, jnp.float32)
    snaps = {"w": jnp.repeat(values[:, None], 3, axis=1), "n": values.astype(jnp.int32)}
    queue = jnp.zeros(len(values), jnp.int32) if queue is None else jnp.asarray(queue)
    return snaps, queue


push = jax.jit(replay.push)
sample = jax.jit(replay.sample)


def _queue_contents(buf, q):
    """Stored n values of queue q, oldest first."""
    size, head = int(buf.size[q]), int(buf.head[q])
    cap = buf.capacity
    start = (head - size) % cap
    return [int(buf.snapshots["n"][q, (start + i) % cap]) for i in range(size)]


def test_init_shapes_and_empty():
    buf = replay.init_buffer(EXAMPLE, capacity=4, num_queues=2)
    assert buf.capacity == 4
    assert buf.snapshots["w"].shape == (2, 4, 3)
    assert buf.snapshots["n"].shape == (2, 4)
    assert buf.snapshots["n"].dtype == jnp.int32
    np.testing.assert_array_equal(buf.size, [0, 0])
    _, available = sample(buf, jax.random.PRNGKey(0), jnp.int32(0))
    assert not bool(available)


def test_push_respects_mask_and_copy_order():
    buf = replay.init_buffer(EXAMPLE, capacity=4)
    snaps, queue = _items([1, 2, 3])
    buf = push(buf, snaps, jnp.array([True, False, True]), queue)
    assert int(buf.size[0]) == 2
    assert _queue_contents(buf, 0) == [1, 3]
    np.testing.assert_array_equal(buf.snapshots["w"][0, 1], [3.0, 3.0, 3.0])
    # Nothing pushed: the buffer is unchanged.
    same = push(buf, snaps, jnp.zeros(3, bool), queue)
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(buf), strict=True):
        np.testing.assert_array_equal(a, b)


def test_fifo_wraparound_drops_oldest():
    buf = replay.init_buffer(EXAMPLE, capacity=3)
    for start in range(0, 8, 2):  # pushes 0..7, two per call
        snaps, queue = _items([start, start + 1])
        buf = push(buf, snaps, jnp.ones(2, bool), queue)
    assert int(buf.size[0]) == 3
    assert _queue_contents(buf, 0) == [5, 6, 7]
    assert int(buf.head[0]) == 8 % 3  # the slot of the oldest entry, written next
    # One call with more pushes than capacity keeps the last ones, in order.
    buf = replay.init_buffer(EXAMPLE, capacity=2)
    snaps, queue = _items([10, 11, 12, 13, 14])
    buf = push(buf, snaps, jnp.ones(5, bool), queue)
    assert _queue_contents(buf, 0) == [13, 14]


def test_queues_are_independent():
    buf = replay.init_buffer(EXAMPLE, capacity=2, num_queues=3)
    snaps, queue = _items([1, 2, 3, 4, 5], queue=[0, 2, 0, 2, 0])
    buf = push(buf, snaps, jnp.ones(5, bool), queue)
    assert _queue_contents(buf, 0) == [3, 5]
    assert _queue_contents(buf, 1) == []
    assert _queue_contents(buf, 2) == [2, 4]
    _, available = sample(buf, jax.random.PRNGKey(0), jnp.int32(1))
    assert not bool(available)
    for q, allowed in ((0, {3, 5}), (2, {2, 4})):
        for k in range(8):
            snap, available = sample(buf, jax.random.PRNGKey(k), jnp.int32(q))
            assert bool(available)
            assert int(snap["n"]) in allowed
            np.testing.assert_array_equal(snap["w"], np.full(3, float(snap["n"])))


def test_sample_uniform_over_filled_slots_only():
    buf = replay.init_buffer(EXAMPLE, capacity=4)
    snaps, queue = _items([7, 8, 9])
    buf = push(buf, snaps, jnp.ones(3, bool), queue)
    keys = jax.random.split(jax.random.PRNGKey(1), 3000)
    draws, available = jax.vmap(replay.sample, (None, 0, None))(buf, keys, jnp.int32(0))
    assert bool(jnp.all(available))
    values, counts = np.unique(np.asarray(draws["n"]), return_counts=True)
    assert values.tolist() == [7, 8, 9]  # never the empty fourth slot
    assert counts.min() > 850  # ~1000 each


@pytest.mark.parametrize("capacity", [1, 4])
def test_push_is_jittable_under_scan(capacity):
    """Pushes inside a scanned loop, as the PES agent runs them."""
    buf = replay.init_buffer(EXAMPLE, capacity=capacity)

    def body(b, v):
        snaps, queue = _items(jnp.stack([v]))
        return replay.push(b, snaps, jnp.array([True]), queue), None

    buf, _ = jax.lax.scan(body, buf, jnp.arange(6.0))
    assert _queue_contents(buf, 0) == list(range(6 - capacity, 6))
