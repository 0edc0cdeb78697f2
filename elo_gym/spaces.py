"""A shape-and-dtype Gymnasium space that never allocates bound arrays.

An observation of a 0.5M-parameter optimizee is a (P, 39) array; a ``Box`` would
hold two more arrays of that size for its bounds, per env copy. ``Array`` stores only
the shape.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import batch_space


class Array(gym.Space):
    """Unbounded real arrays of a fixed shape and dtype (standard normal samples)."""

    def __init__(
        self, shape: tuple[int, ...], dtype: Any = np.float32, seed: int | None = None
    ):
        super().__init__(tuple(int(s) for s in shape), np.dtype(dtype), seed)

    @property
    def is_np_flattenable(self) -> bool:
        return True

    def sample(self, mask: Any = None, probability: Any = None) -> np.ndarray:
        if mask is not None or probability is not None:
            raise ValueError(
                "Array spaces support neither mask nor probability sampling"
            )
        return self.np_random.standard_normal(self.shape).astype(self.dtype)

    def contains(self, x: Any) -> bool:
        shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
        if shape is None or dtype is None:
            return False
        return tuple(shape) == self.shape and np.dtype(dtype) == self.dtype

    def __repr__(self) -> str:
        return f"Array({self.shape}, {self.dtype})"

    def __eq__(self, other: Any) -> bool:
        return (
            isinstance(other, Array)
            and other.shape == self.shape
            and (other.dtype == self.dtype)
        )

    def __hash__(self) -> int:
        return hash((self.shape, str(self.dtype)))


@batch_space.register(Array)
def _batch_array(space: Array, n: int = 1) -> Array:
    return Array(
        (n,) + space.shape, space.dtype, seed=int(space.np_random.integers(2**31))
    )
