"""The Adam demonstrator (its action-space inverse: tests/elo_gym/test_lo_spec.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from elo_gym import demonstrator


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
