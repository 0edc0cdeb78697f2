"""The expert that ELO clones: Adam with learning rate 1e-3 (ELO Sec. 5.1).

The expert runs beside the learned optimizer on the same gradient. Its update is also
exposed in the learned optimizer's action space, so a policy can act on it.

Optionally the expert's learning rate decays with the optimizee's inner step n as
lr / sqrt(1 + n / decay_steps) (the cpu preset's demonstrator, docs/levers.md). An LO
with a nominal term (``elo_gym.lopt``, ``nominal_lr``) takes this very step itself and
learns what to add to it.
"""

import jax
import jax.numpy as jnp
import optax

from elo_gym import lopt, schedules

EXPERT_LEARNING_RATE = 1e-3


def adam_expert(
    learning_rate: float = EXPERT_LEARNING_RATE, decay_steps: float = 0.0
) -> optax.GradientTransformation:
    """The demonstrator: ``optax.adam`` at ``learning_rate`` (``decay_steps`` 0, the
    paper) or at ``schedules.inverse_sqrt_decay`` of it (``decay_steps`` > 0, which
    refuses a negative one)."""
    if decay_steps == 0:  # a float lr: optax.adam's state has no schedule count
        return optax.adam(learning_rate)
    return optax.adam(schedules.inverse_sqrt_decay(learning_rate, decay_steps))


def expert_action(
    expert_update: jax.Array,
    step_mult: float = lopt.STEP_MULT,
    step_scale: jax.Array | float = 1.0,
    nominal_update: jax.Array | float = 0.0,
) -> jax.Array:
    """Maps a raw update dtheta_H to the LO action that reproduces it.

    The canonical inverse of Eq. 2: d* = -(dtheta_H - nominal) / (step_mult *
    step_scale) and m* = 0, because theta + nominal - step_scale * step_mult * d* *
    exp(exp_mult * 0) = theta + dtheta_H for every exp_mult.

    Args:
      expert_update: (...,) raw updates (new params minus params).
      step_mult: the LO's step multiplier.
      step_scale: (...,) or scalar; the factor the env applies to the LO's step
        (``lopt.adam_step_scale`` with ``adam_scaled_step``, else 1).
      nominal_update: (...,) or scalar; the nominal term the env adds to the LO's
        step (``lopt.nominal_update`` with ``nominal_lr`` > 0, else 0).

    Returns:
      (..., 2) actions (d*, m*).
    """
    d = -(expert_update - nominal_update) / (step_mult * step_scale)
    return jnp.stack([d, jnp.zeros_like(d)], axis=-1)
