"""Gradients through Adam-like steps where an entry's moments are exactly zero.

Adam's step m / (sqrt(v) + eps) has a finite derivative at m = v = 0 (in v it is 0
along m = 0), but the chain rule computes it as 0 x inf = NaN: sqrt's derivative at 0
is inf. Such entries are common in an optimizee (a dead ReLU unit's weights never get
a gradient, a cosine schedule's first step is zero), and one NaN spreads through a
backward pass to every meta-parameter. Truncated backprop through the env
(``pes.PESConfig.estimator="tbptt"``) differentiates these steps; PES never does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import jax
import jax.numpy as jnp

F = TypeVar("F", bound=Callable)


def _zero_nans(x: jax.Array) -> jax.Array:
    if not jnp.issubdtype(x.dtype, jnp.inexact):  # float0: an integer input's
        return x
    return jnp.where(jnp.isnan(x), jnp.zeros_like(x), x)


def finite_grad(fn: F) -> F:
    """``fn`` with the NaNs of its input cotangents set to 0 (positional arguments,
    pytrees allowed). Its values are ``fn``'s, computed by the same operations."""

    @jax.custom_vjp
    def wrapped(*args):
        return fn(*args)

    def forward(*args):
        return jax.vjp(fn, *args)

    def backward(vjp, cotangent):
        return jax.tree.map(_zero_nans, vjp(cotangent))

    wrapped.defvjp(forward, backward)
    return wrapped
