"""The Adam demonstrator and its action-space inverse."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from elo_gym import demonstrator, lopt


def _tree(key):
    k1, k2 = jax.random.split(key)
    return {"w": jax.random.normal(k1, (4, 3)), "b": jax.random.normal(k2, (3,))}


@pytest.mark.parametrize("lr", [demonstrator.EXPERT_LEARNING_RATE, 3e-2])
def test_adam_expert_is_optax_adam(lr):
    assert demonstrator.EXPERT_LEARNING_RATE == 1e-3
    expert, reference = demonstrator.adam_expert(lr), optax.adam(lr)
    params = _tree(jax.random.PRNGKey(0))
    s_expert, s_ref = expert.init(params), reference.init(params)
    for i in range(4):
        grads = _tree(jax.random.PRNGKey(i + 1))
        u_expert, s_expert = expert.update(grads, s_expert, params)
        u_ref, s_ref = reference.update(grads, s_ref, params)
        for a, b in zip(jax.tree.leaves(u_expert), jax.tree.leaves(u_ref), strict=True):
            np.testing.assert_array_equal(a, b)
        params = optax.apply_updates(params, u_ref)


def test_default_expert_uses_lr_1e3():
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.array([1.0, -2.0, 0.5])}
    expert = demonstrator.adam_expert()
    update, _ = expert.update(grads, expert.init(params), params)
    # Adam's first step is -lr * sign(g) (up to eps and float32 bias correction).
    np.testing.assert_allclose(update["w"], -1e-3 * np.sign(grads["w"]), rtol=1e-4)


@pytest.mark.parametrize("step_mult", [lopt.STEP_MULT, 0.05])
@pytest.mark.parametrize("exp_mult", [lopt.EXP_MULT, 0.7])
def test_expert_action_inverts_the_lo_update(step_mult, exp_mult):
    update = jax.random.normal(jax.random.PRNGKey(3), (5, 7)) * 1e-3
    action = demonstrator.expert_action(update, step_mult)
    assert action.shape == (5, 7, 2)
    np.testing.assert_array_equal(action[..., 1], 0.0)  # m* = 0
    np.testing.assert_allclose(action[..., 0], -update / step_mult, rtol=1e-6)
    # theta - step_mult * d* * exp(exp_mult * m*) = theta + dtheta_H for any exp_mult.
    moved = -lopt.step_from_action(action, step_mult, exp_mult)
    np.testing.assert_allclose(moved, update, rtol=1e-6, atol=1e-12)
