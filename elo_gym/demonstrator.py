"""The expert that ELO clones: Adam with learning rate 1e-3 (ELO Sec. 5.1).

The expert runs beside the learned optimizer on the same gradient. Its update is also
exposed in the learned optimizer's action space (the inverse of the LO's step,
``elo_gym.lo_spec.LOSpec.action``), so a policy can act on it.

Its second-moment decay ``b2``, a decoupled weight decay (AdamW's, default 0) and
LAMB's per-tensor trust ratio (off by default; the demonstrator of an LO whose
nominal term has it) and the cautious mask (Liang et al., 2024; off by default: a
demonstrator whose step an LO with ``gated_step`` can take) are settings.

Optionally the expert's learning rate decays with the optimizee's inner step n as
lr / sqrt(1 + n / decay_steps) (the cpu preset's demonstrator, docs/levers.md). An LO
with a nominal term (``elo_gym.lo_spec``, ``nominal_lr``) takes this very step itself
and learns what to add to it.
"""

import jax
import jax.numpy as jnp
import optax

from elo_gym import finite_grad, schedules
from elo_gym.lo_spec import ADAM_EPS

EXPERT_LEARNING_RATE = 1e-3
# Adam's own second-moment decay. A faster one (0.95, as LLM training uses) lowers
# the training loss at 10x by 30-97% on digits and every validation family
# (docs/levers.md, the twenty-seventh): a demonstrator that knows what the nominal
# term does not.
EXPERT_B2 = 0.999
# No weight decay: the paper's Adam. AdamW's decoupled decay is something the LO's
# nominal term (Adam) does not do, so behavior cloning has something to teach.
EXPERT_WEIGHT_DECAY = 0.0


def scale_by_cautious_adam(b2: float = EXPERT_B2) -> optax.GradientTransformation:
    """``optax.scale_by_adam`` (eps 1e-8) with each coordinate whose step disagrees
    in sign with its gradient set to 0, and each tensor divided by the fraction kept
    (at least 1e-3), so the step's size stays Adam's (Cautious Adam, Liang et al.,
    2024, their code's rescale)."""
    adam = optax.scale_by_adam(b2=b2, eps=ADAM_EPS)

    def update(grads, state, params=None):
        direction, state = adam.update(grads, state, params)

        def masked(u: jax.Array, g: jax.Array) -> jax.Array:
            keep = (u * g > 0).astype(u.dtype)
            return u * keep / jnp.maximum(jnp.mean(keep), 1e-3)

        return jax.tree.map(masked, direction, grads), state

    return optax.GradientTransformation(adam.init, update)


def cautious_adam(
    learning_rate: optax.ScalarOrSchedule,
    b2: float = EXPERT_B2,
    weight_decay: float = 0.0,
    trust_ratio: bool = False,
) -> optax.GradientTransformation:
    """``optax.adamw`` (``optax.lamb`` with ``trust_ratio``) with
    :func:`scale_by_cautious_adam`'s direction: the cautious demonstrator, and the
    study's cautious LAMB baseline."""
    return optax.chain(
        scale_by_cautious_adam(b2),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_trust_ratio() if trust_ratio else optax.identity(),
        optax.scale_by_learning_rate(learning_rate),
    )


def adam_expert(
    learning_rate: float = EXPERT_LEARNING_RATE,
    decay_steps: float = 0.0,
    b2: float = EXPERT_B2,
    weight_decay: float = EXPERT_WEIGHT_DECAY,
    trust_ratio: bool = False,
    cautious: bool = False,
) -> optax.GradientTransformation:
    """The demonstrator: ``optax.adam`` at ``learning_rate`` (``decay_steps`` 0, the
    paper) or at ``schedules.inverse_sqrt_decay`` of it (``decay_steps`` > 0, which
    refuses a negative one), with second-moment decay ``b2``; ``optax.adamw`` with
    ``weight_decay`` > 0 (decoupled, on every parameter, scaled by the lr);
    ``optax.lamb`` with ``trust_ratio`` (each tensor's update rescaled to lr x |W|;
    eps 1e-8, Adam's, as the LO's nominal term); with ``cautious`` the Adam direction
    is :func:`scale_by_cautious_adam`'s (:func:`cautious_adam`). Its update is
    differentiable where Adam's moments are 0 (:mod:`elo_gym.finite_grad`), for
    truncated backprop through the env."""
    # A float lr: optax.adam's state has no schedule count.
    lr = learning_rate
    if decay_steps:
        lr = schedules.inverse_sqrt_decay(learning_rate, decay_steps)
    if cautious:
        adam = cautious_adam(lr, b2, weight_decay, trust_ratio)
    elif trust_ratio:
        adam = optax.lamb(lr, b2=b2, eps=ADAM_EPS, weight_decay=weight_decay)
    elif weight_decay:
        adam = optax.adamw(lr, b2=b2, weight_decay=weight_decay)
    else:  # optax.adam: the default's state and update stay the paper's Adam's
        adam = optax.adam(lr, b2=b2)
    return optax.GradientTransformation(adam.init, finite_grad.finite_grad(adam.update))
