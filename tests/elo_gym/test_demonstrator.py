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


@pytest.mark.parametrize("decay_steps", [0.0, 100.0])
def test_expert_is_differentiable_where_a_gradient_was_always_zero(decay_steps):
    """A weight whose gradient has always been 0 (a dead unit's) has Adam's moments
    at 0, where sqrt's derivative is inf: truncated backprop through the env needs
    a finite derivative there (0, as along m = 0), and the others untouched."""
    expert = demonstrator.adam_expert(3e-2, decay_steps)
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.array([0.0, -2.0, 0.5])}

    def first_step(g):
        return expert.update({"w": g}, expert.init(params), params)[0]["w"].sum()

    derivative = jax.grad(first_step)(grads["w"])
    assert np.all(np.isfinite(derivative)), derivative
    assert derivative[0] == 0.0
    if decay_steps == 0:  # optax's own derivative: NaN there, the same elsewhere
        adam = optax.adam(3e-2)
        reference = jax.grad(
            lambda g: adam.update({"w": g}, adam.init(params))[0]["w"].sum()
        )(grads["w"])
        assert np.isnan(reference[0])
        np.testing.assert_array_equal(derivative[1:], reference[1:])


@pytest.mark.parametrize("trust_ratio", [False, True])
def test_a_cautious_expert_drops_the_coordinates_that_disagree_with_the_gradient(
    trust_ratio,
):
    """cautious: Adam's direction with each coordinate whose step has the gradient's
    sign flipped set to 0, each tensor rescaled by its size over the kept count
    (Adam's size) or, with the trust ratio, to lr x |W| (LAMB's)."""
    lr = 1e-2
    expert = demonstrator.adam_expert(lr, trust_ratio=trust_ratio, cautious=True)
    adam = optax.scale_by_adam(eps=1e-8)
    params = _tree(jax.random.PRNGKey(0))
    state, adam_state = expert.init(params), adam.init(params)
    dropped = 0
    for i in range(4):
        grads = _tree(jax.random.PRNGKey(i + 1))
        update, state = expert.update(grads, state, params)
        direction, adam_state = adam.update(grads, adam_state, params)
        for name in ("w", "b"):
            u, g = np.asarray(direction[name]), np.asarray(grads[name])
            keep = u * g > 0
            dropped += int((~keep).sum())
            expected = u * keep * (u.size / keep.sum())
            if trust_ratio:
                w = np.asarray(params[name])
                expected = expected * np.linalg.norm(w) / np.linalg.norm(expected)
            np.testing.assert_allclose(update[name], -lr * expected, rtol=1e-4)
        params = optax.apply_updates(params, update)
    assert dropped > 0  # momentum disagreed with some gradient
