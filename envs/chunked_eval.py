"""Mean loss and accuracy over a fixed evaluation set, in chunks of static size."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax


def chunked_means(
    per_example: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
    num: int,
    batch_size: int,
) -> dict[str, jax.Array]:
    """Means of ``per_example``'s (loss, correct) over examples ``0 .. num - 1``.

    Jittable. The examples run in ``ceil(num / batch_size)`` chunks of one static
    size under ``lax.map``; the last chunk repeats example ``num - 1`` in its padding
    slots, which are masked out, so every example counts exactly once.

    Args:
      per_example: example indices (chunk,) int32 -> (losses, correct), (chunk,) each.
      num: number of examples.
      batch_size: chunk size (at most ``num`` is used).

    Returns:
      {"loss": scalar, "accuracy": scalar}, both float32.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    chunk = min(batch_size, num)

    def chunk_sums(start: jax.Array) -> tuple[jax.Array, jax.Array]:
        idx = start + jnp.arange(chunk)
        valid = idx < num
        losses, correct = per_example(jnp.minimum(idx, num - 1))
        return jnp.where(valid, losses, 0.0).sum(), jnp.where(valid, correct, 0.0).sum()

    starts = jnp.arange(-(-num // chunk)) * chunk
    loss_sums, correct_sums = lax.map(chunk_sums, starts)
    return {"loss": loss_sums.sum() / num, "accuracy": correct_sums.sum() / num}
