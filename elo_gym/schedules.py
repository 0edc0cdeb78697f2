"""What changes over the steps: over the outer steps of meta-training alpha (Eq. 8),
the curriculum's n_max and the outer learning rate; over the inner steps the
demonstrator's learning rate (:func:`inverse_sqrt_decay`).

:func:`at_outer_step` is the one place that says what holds at outer step t; the
Gymnasium env (``set_outer_step``) and the agents both read it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

ALPHA_SCHEDULES = ("linear", "hold_linear", "constant")
LR_SCHEDULES = ("constant", "warmup_cosine")


def alpha_at(
    outer_step: int,
    num_outer_steps: int,
    schedule: str = "linear",
    hold_fraction: float = 0.0,
    constant: float = 1.0,
    end_fraction: float = 1.0,
) -> float:
    """alpha_t for outer step t of T.

    ``linear``: t / (T - 1) (the paper), reaching 1 at the last step, or at step
    ``end_fraction`` (T - 1) and held there. ``hold_linear``: 0 for the first
    ``hold_fraction`` of the steps, then linear to 1 (the ELO authors' code).
    ``constant``: always ``constant`` (alpha = 1 means no behavior cloning).
    """
    if schedule not in ALPHA_SCHEDULES:
        raise ValueError(
            f"unknown alpha schedule {schedule!r}; valid: {', '.join(ALPHA_SCHEDULES)}"
        )
    if not 0.0 < end_fraction <= 1.0:
        raise ValueError(f"alpha end_fraction must be in (0, 1], got {end_fraction}")
    if schedule == "constant":
        return float(constant)
    if num_outer_steps <= 1:
        return 1.0
    end = end_fraction * (num_outer_steps - 1)
    hold = int(hold_fraction * num_outer_steps) if schedule == "hold_linear" else 0
    if outer_step < hold:
        return 0.0
    return min(1.0, (outer_step - hold) / max(1.0, end - hold))


def curriculum_n_max(
    outer_step: int, num_outer_steps: int, n_max: int, n_max_final: int
) -> int:
    """n_max growing linearly from ``n_max`` to ``n_max_final`` over the outer steps."""
    if num_outer_steps <= 1:
        return int(n_max_final)
    frac = min(1.0, outer_step / (num_outer_steps - 1))
    return int(round(n_max + frac * (n_max_final - n_max)))


def outer_learning_rate(
    learning_rate: float,
    num_outer_steps: int,
    schedule: str = "constant",
    warmup_fraction: float = 0.05,
    min_learning_rate: float = 1e-5,
) -> optax.Schedule:
    """The meta-optimizer's lr per outer step: ``constant`` (the paper's AdamW), or
    ``warmup_cosine`` (linear warmup over ``warmup_fraction`` of the steps, then
    cosine decay to ``min_learning_rate``, as the ELO authors' code)."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(
            f"unknown lr schedule {schedule!r}; valid: {', '.join(LR_SCHEDULES)}"
        )
    if schedule == "constant":
        return optax.constant_schedule(learning_rate)
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
    return optax.warmup_cosine_decay_schedule(
        init_value=min(min_learning_rate, learning_rate),
        peak_value=learning_rate,
        warmup_steps=math.floor(warmup_fraction * num_outer_steps),
        decay_steps=max(1, num_outer_steps),
        end_value=min(min_learning_rate, learning_rate),
    )


def inverse_sqrt_decay(learning_rate: float, decay_steps: float) -> optax.Schedule:
    """lr / sqrt(1 + n / decay_steps) at inner step n; ``decay_steps`` 0: constant lr.

    The demonstrator's schedule and the LO's nominal term's (``elo_gym.lopt``): it needs
    no end of training, so it holds at any horizon.
    """
    if decay_steps < 0:
        raise ValueError(f"decay_steps must be >= 0 (0: constant), got {decay_steps}")
    if decay_steps == 0:
        return lambda count: learning_rate
    return lambda count: learning_rate * jax.lax.rsqrt(1.0 + count / decay_steps)


# The demonstrator's lr over an episode: inverse-sqrt decay (expert_decay_steps) or
# warmup + cosine decay to 0 at the episode's end, for a relative-time LO to imitate.
EXPERT_SCHEDULES = ("inverse_sqrt", "cosine")
# Warmup share of a cosine run: the adamw_cosine baseline's (scripts/evaluate.py).
COSINE_WARMUP_FRACTION = 0.05


def relative_warmup_cosine(
    learning_rate: float,
    count: jax.Array,
    total_steps: jax.Array | float,
    warmup_fraction: float = COSINE_WARMUP_FRACTION,
) -> jax.Array:
    """The lr at step ``count`` of a run of ``total_steps``: linear warmup over the
    first ``warmup_fraction`` of the run, then cosine decay to 0 at its end.

    ``count`` may be a float (a relative-time LO's clock); one rule serves a run of
    any length: the nominal term and the demonstrator of a relative-time LO.
    """
    n = jnp.asarray(count, jnp.float32)
    total = jnp.maximum(jnp.asarray(total_steps, jnp.float32), 1.0)
    warmup = warmup_fraction * total
    ramp = n / jnp.maximum(warmup, 1.0)
    progress = jnp.clip((n - warmup) / jnp.maximum(total - warmup, 1.0), 0.0, 1.0)
    decay = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return learning_rate * jnp.where(n < warmup, ramp, decay)


class OuterStepValues(NamedTuple):
    """What holds at one outer step."""

    alpha: float
    n_max: int


def at_outer_step(
    outer_step: int,
    num_outer_steps: int,
    *,
    behavior_cloning: bool,
    n_max: int,
    n_max_final: int | None = None,
    alpha_schedule: str = "linear",
    hold_fraction: float = 0.0,
    alpha_end_fraction: float = 1.0,
) -> OuterStepValues:
    """alpha_t and n_max at outer step t of T.

    Without behavior cloning alpha is 1 (the LO alone moves the optimizee and the
    reward is the task loss); with it, :func:`alpha_at`. n_max grows by
    :func:`curriculum_n_max` when ``n_max_final`` is given (the curriculum mode).
    """
    alpha = 1.0
    if behavior_cloning:
        alpha = alpha_at(
            outer_step,
            num_outer_steps,
            alpha_schedule,
            hold_fraction,
            end_fraction=alpha_end_fraction,
        )
    if n_max_final is not None:
        n_max = curriculum_n_max(outer_step, num_outer_steps, n_max, n_max_final)
    return OuterStepValues(alpha=alpha, n_max=int(n_max))
