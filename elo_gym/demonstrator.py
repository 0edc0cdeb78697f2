"""The expert that ELO clones: Adam with learning rate 1e-3 (ELO Sec. 5.1).

The expert runs beside the learned optimizer on the same gradient. Its update is also
exposed in the learned optimizer's action space (the inverse of the LO's step,
``elo_gym.lo_spec.LOSpec.action``), so a policy can act on it.

Its second-moment decay ``b2`` is a setting (default Adam's 0.999).

Optionally the expert's learning rate decays with the optimizee's inner step n as
lr / sqrt(1 + n / decay_steps) (the cpu preset's demonstrator, docs/levers.md). An LO
with a nominal term (``elo_gym.lo_spec``, ``nominal_lr``) takes this very step itself
and learns what to add to it.
"""

import optax

from elo_gym import finite_grad, schedules

EXPERT_LEARNING_RATE = 1e-3
# Adam's own second-moment decay. A faster one (0.95, as LLM training uses) lowers
# the training loss at 10x by 30-97% on digits and every validation family
# (docs/levers.md, the twenty-seventh): a demonstrator that knows what the nominal
# term does not.
EXPERT_B2 = 0.999


def adam_expert(
    learning_rate: float = EXPERT_LEARNING_RATE,
    decay_steps: float = 0.0,
    b2: float = EXPERT_B2,
) -> optax.GradientTransformation:
    """The demonstrator: ``optax.adam`` at ``learning_rate`` (``decay_steps`` 0, the
    paper) or at ``schedules.inverse_sqrt_decay`` of it (``decay_steps`` > 0, which
    refuses a negative one), with second-moment decay ``b2``. Its update is
    differentiable where Adam's moments are 0 (:mod:`elo_gym.finite_grad`), for
    truncated backprop through the env."""
    if decay_steps == 0:  # a float lr: optax.adam's state has no schedule count
        adam = optax.adam(learning_rate, b2=b2)
    else:
        adam = optax.adam(
            schedules.inverse_sqrt_decay(learning_rate, decay_steps), b2=b2
        )
    return optax.GradientTransformation(adam.init, finite_grad.finite_grad(adam.update))
