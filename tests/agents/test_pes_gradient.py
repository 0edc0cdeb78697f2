"""The meta-gradient estimates themselves, against what they estimate (not against
another run of them).

Where the meta-loss is smooth (alpha = 0: behavior cloning only, one inner step, every
episode fresh), PES estimates the gradient of the mean meta-loss over pairs; autodiff
through the same env step gives that gradient exactly. And the perturbation
accumulator: reset to this truncation's perturbation when an episode ends, kept on a
buffer restore only when asked. The tbptt estimate is the derivative of the
truncation's mean meta-loss, which finite differences of that loss measure.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from elo_gym import core, lopt, pes
from elo_gym.agents import pes_train

SMALL = dict(
    hidden_sizes=(4,), batch_size=16, hidden_size=8, init_lo="none", progress=False
)


def _setup(**overrides):
    args = pes_train.make_args(**{**SMALL, "loss_cap": 1e6, **overrides}).resolved()
    cfg, env_params = pes_train.pes_config(args)
    return args, cfg, env_params, pes_train.init_state(args, cfg, env_params)


def test_pes_gradient_points_along_the_autodiff_gradient():
    # Eq. 9's L2: with the nominal term the LO's update is near the expert's, where
    # cosine_norm's |norm ratio - 1| has a kink (sigma smooths it, autodiff does not).
    args, cfg, env_params, state = _setup(
        num_pairs=256,
        truncation=1,
        n_min=5,
        n_max=5,
        mode="bc",
        bc_scale=1e4,
        bc_loss="l2",
        # Additive: a fresh episode's first step has a nominal term of 0 (warmup), so
        # the cpu preset's gate of it has no gradient there.
        gated_step=False,
    )
    env_params = env_params.replace(alpha=jnp.float32(0.0))
    grads, *_ = jax.jit(functools.partial(pes.unroll, cfg))(
        state.meta, state.env, state.accumulator, jax.random.PRNGKey(7), env_params
    )
    estimate = ravel_pytree(grads["meta"])[0]

    def mean_meta_loss(mlp):
        theta, unravel = ravel_pytree(mlp)
        weights = jnp.broadcast_to(theta, (2 * args.pes.num_pairs, theta.size))
        actions = pes.policy_actions(cfg, weights, unravel, state.env.copies)
        reward = core.step(cfg.env, state.env, actions, env_params)[2]
        return -reward.mean()

    exact = ravel_pytree(jax.jit(jax.grad(mean_meta_loss))(state.meta.mlp))[0]
    cosine = float(
        estimate @ exact / (jnp.linalg.norm(estimate) * jnp.linalg.norm(exact))
    )
    # An ES estimate from N = 256 pairs in D = 410 dimensions has cosine about
    # sqrt(N / (N + D)) = 0.62 with the gradient; a flipped sign gives about -0.62.
    assert cosine > 0.4, cosine
    projection = float(estimate @ exact / (exact @ exact))
    assert 0.6 < projection < 1.4, projection  # unbiased: scale 1 along the gradient


@pytest.mark.parametrize("keep", [False, True])
def test_accumulator_after_an_episode_end(keep):
    """Episodes of 3 steps end inside a truncation of 4. A fresh start resets the
    pair's accumulator to this truncation's perturbation; a buffer restore keeps it
    under ``keep_accumulator_on_restore`` (p_th = 0: every restart restores)."""
    args, cfg, env_params, state = _setup(
        num_pairs=2,
        truncation=4,
        n_min=3,
        n_max=3,
        p_th=0.0,
        keep_accumulator_on_restore=keep,
    )
    env_params = env_params.replace(outer_step=jnp.int32(1))
    before = jnp.ones_like(state.accumulator)
    key = jax.random.PRNGKey(3)
    _, env_state, after, _ = pes.unroll(
        cfg, state.meta, state.env, before, key, env_params
    )
    eps = cfg.sigma * jax.random.normal(key, before.shape)
    assert bool(jnp.all(env_state.copies.from_buffer))  # the restarts restored
    expected = before + eps if keep else eps
    np.testing.assert_allclose(after, expected, rtol=1e-6)
    # Without an episode end the accumulator keeps growing.
    args, cfg, env_params, state = _setup(num_pairs=2, truncation=4, n_min=10, n_max=10)
    _, _, after, _ = pes.unroll(cfg, state.meta, state.env, before, key, env_params)
    np.testing.assert_allclose(after, before + eps, rtol=1e-6)


@pytest.mark.parametrize("raw_adam_ratio", [False, True], ids=["reference", "raw"])
def test_the_agent_acts_on_what_the_env_observes(raw_adam_ratio):
    """The PES policy (fused path, no features built) gives, copy by copy, the MLP
    on the env's observed features, also when ``--raw-adam-ratio`` changes them."""
    args, cfg, env_params, state = _setup(num_pairs=2, raw_adam_ratio=raw_adam_ratio)
    assert cfg.env.lo.raw_adam_ratio is raw_adam_ratio
    mlp = jax.tree.map(lambda w: w * 3.0 + 0.1, state.meta.mlp)  # outputs far from 0
    theta, unravel = ravel_pytree(mlp)
    env_state = state.env
    zeros = jnp.zeros((2 * args.pes.num_pairs, core.num_params(cfg.env.task), 2))
    for _ in range(3):  # accumulators of several gradients
        env_state = core.step(cfg.env, env_state, zeros, env_params)[0]
    copies = env_state.copies
    weights = jnp.broadcast_to(theta, (2 * args.pes.num_pairs, theta.size))
    actions = pes.policy_actions(cfg, weights, unravel, copies)
    features = jax.vmap(core.observe, (None, 0, None))(cfg.env, copies, env_params)
    expected = lopt.apply_mlp(mlp, features["features"])
    np.testing.assert_allclose(actions, expected, rtol=2e-4, atol=2e-5)


def test_tbptt_gradient_is_the_derivative_of_the_truncations_meta_loss():
    """Central differences of the truncation's mean meta-loss (the ``meta_loss``
    metric) along the estimate and across it: the derivative along it is its norm,
    across it 0. The truncation (6 steps) spans episode ends, buffer restores, the
    cosine demonstrator's zero first step and the nominal term at zero moments."""
    args, cfg, env_params, state = _setup(
        estimator="tbptt",
        num_pairs=2,
        truncation=6,
        n_min=2,
        n_max=4,
        p_th=0.5,
        bc_loss="l2",  # cosine_norm is near 1e9 at the demonstrator's zero step
    )
    assert not cfg.env.paired  # four independent copies
    env_params = env_params.replace(alpha=jnp.float32(0.5))
    unroll = jax.jit(functools.partial(pes.unroll, cfg))
    key = jax.random.PRNGKey(3)
    env_state = state.env
    for _ in range(3):  # a full buffer, copies mid-episode
        env_state = unroll(state.meta, env_state, state.accumulator, key, env_params)[1]
    grads, _, accumulator, metrics = unroll(
        state.meta, env_state, state.accumulator, key, env_params
    )
    assert set(grads) == {"meta"}
    np.testing.assert_array_equal(accumulator, state.accumulator)  # unused
    assert int(metrics["episodes_ended"]) > 0 and float(metrics["frac_from_buffer"]) > 0
    g, unravel = ravel_pytree(grads["meta"])
    g = np.asarray(g, np.float64)
    theta = np.asarray(ravel_pytree(state.meta.mlp)[0], np.float64)

    def derivative(direction: np.ndarray, h: float = 0.02) -> float:
        def loss(x: float) -> float:
            mlp = unravel(jnp.asarray(theta + x * direction, jnp.float32))
            moved = state.meta._replace(mlp=mlp)
            return float(
                unroll(moved, env_state, state.accumulator, key, env_params)[3][
                    "meta_loss"
                ]
            )

        return (loss(h) - loss(-h)) / (2 * h)

    norm = np.linalg.norm(g)
    assert np.all(np.isfinite(g)) and norm > 0
    along = derivative(g / norm)
    assert along == pytest.approx(norm, rel=0.1), (along, norm)
    across = np.random.default_rng(0).normal(size=g.size)
    across -= (across @ g) / norm**2 * g
    assert abs(derivative(across / np.linalg.norm(across))) < 0.1 * norm
