"""The expert that ELO clones: Adam with learning rate 1e-3 (ELO Sec. 5.1).

The expert runs beside the learned optimizer on the same gradient. Its update is also
exposed in the learned optimizer's action space, so a policy can act on it.
"""

import jax
import jax.numpy as jnp
import optax

from elo_gym import lopt

EXPERT_LEARNING_RATE = 1e-3


def adam_expert(
    learning_rate: float = EXPERT_LEARNING_RATE,
) -> optax.GradientTransformation:
    """The demonstrator: exactly ``optax.adam(learning_rate)``."""
    return optax.adam(learning_rate)


def expert_action(
    expert_update: jax.Array, step_mult: float = lopt.STEP_MULT
) -> jax.Array:
    """Maps a raw update dtheta_H to the LO action that reproduces it.

    The canonical inverse of Eq. 2: d* = -dtheta_H / step_mult and m* = 0, because
    theta - step_mult * d* * exp(exp_mult * 0) = theta + dtheta_H for every exp_mult.

    Args:
      expert_update: (...,) raw updates (new params minus params).
      step_mult: the LO's step multiplier.

    Returns:
      (..., 2) actions (d*, m*).
    """
    d = -expert_update / step_mult
    return jnp.stack([d, jnp.zeros_like(d)], axis=-1)
