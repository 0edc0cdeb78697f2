"""Schedules: alpha_t (Eq. 8), the curriculum's n_max, the demonstrator's lr decay."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from elo_gym import schedules


def test_linear_alpha_is_t_over_t_minus_one():
    T = 7
    alphas = [schedules.alpha_at(t, T) for t in range(T)]
    np.testing.assert_allclose(alphas, np.arange(T) / (T - 1))
    assert alphas[0] == 0.0 and alphas[-1] == 1.0
    assert schedules.alpha_at(T + 3, T) == 1.0  # past the end: stays at 1
    assert schedules.alpha_at(0, 1) == 1.0  # a single outer step


def test_hold_linear_holds_then_ramps():
    T = 11
    alphas = [
        schedules.alpha_at(t, T, "hold_linear", hold_fraction=0.5) for t in range(T)
    ]
    assert alphas[:6] == [0.0] * 6  # held for int(0.5 * 11) = 5 steps, then from 0
    assert alphas[-1] == 1.0
    assert all(b > a for a, b in zip(alphas[5:], alphas[6:], strict=False))
    np.testing.assert_allclose(alphas[5:], np.linspace(0.0, 1.0, 6))
    # Without a hold it is the paper's linear schedule.
    np.testing.assert_allclose(
        [schedules.alpha_at(t, T, "hold_linear") for t in range(T)],
        [schedules.alpha_at(t, T) for t in range(T)],
    )


def test_constant_alpha():
    assert schedules.alpha_at(0, 10, "constant") == 1.0
    assert schedules.alpha_at(5, 10, "constant", constant=0.25) == 0.25


def test_unknown_schedule_names_valid_ones():
    with pytest.raises(ValueError, match="unknown alpha schedule 'cosine'.*linear"):
        schedules.alpha_at(0, 10, "cosine")


def test_curriculum_n_max_grows_linearly():
    T = 5
    values = [schedules.curriculum_n_max(t, T, 100, 500) for t in range(T)]
    assert values == [100, 200, 300, 400, 500]
    assert all(isinstance(v, int) for v in values)
    assert schedules.curriculum_n_max(99, T, 100, 500) == 500
    assert schedules.curriculum_n_max(0, 1, 100, 500) == 500


def test_alpha_reaches_one_at_the_end_fraction():
    T = 11
    alphas = [schedules.alpha_at(t, T, end_fraction=0.5) for t in range(T)]
    np.testing.assert_allclose(alphas[:6], np.linspace(0.0, 1.0, 6))
    assert alphas[5:] == [1.0] * 6
    held = [
        schedules.alpha_at(t, T, "hold_linear", hold_fraction=0.2, end_fraction=0.6)
        for t in range(T)
    ]
    assert held[:2] == [0.0, 0.0] and held[6:] == [1.0] * 5
    np.testing.assert_allclose(held[2:7], np.linspace(0.0, 1.0, 5))
    with pytest.raises(ValueError, match=r"end_fraction must be in \(0, 1\], got 0"):
        schedules.alpha_at(0, T, end_fraction=0.0)


def test_outer_learning_rate_schedules():
    constant = schedules.outer_learning_rate(3e-3, 100)
    assert float(constant(0)) == float(constant(99)) == pytest.approx(3e-3)
    cosine = schedules.outer_learning_rate(
        3e-3, 100, "warmup_cosine", warmup_fraction=0.1, min_learning_rate=1e-5
    )
    lrs = np.array([float(cosine(t)) for t in range(101)])
    assert lrs[0] == pytest.approx(1e-5, rel=1e-4)
    assert lrs[10] == pytest.approx(3e-3)  # peak after the warmup
    assert np.all(np.diff(lrs[:11]) > 0) and np.all(np.diff(lrs[10:]) < 0)
    assert lrs[100] == pytest.approx(1e-5, rel=1e-4)
    # Halfway through the decay: the mean of peak and floor.
    assert lrs[55] == pytest.approx((3e-3 + 1e-5) / 2, rel=1e-3)
    with pytest.raises(ValueError, match="unknown lr schedule 'step'"):
        schedules.outer_learning_rate(3e-3, 100, "step")


def test_at_outer_step_is_what_env_and_agent_read():
    values = schedules.at_outer_step(
        5, 11, behavior_cloning=True, n_max=100, n_max_final=1100
    )
    assert values == (0.5, 600)
    no_bc = schedules.at_outer_step(5, 11, behavior_cloning=False, n_max=100)
    assert no_bc == (1.0, 100)


def test_inverse_sqrt_decay_is_the_demonstrators_inner_step_schedule():
    """lr / sqrt(1 + n / tau): halved at n = 3 tau; tau 0 is a constant lr."""
    decay = schedules.inverse_sqrt_decay(0.02, 100.0)
    assert float(decay(0)) == pytest.approx(0.02)
    assert float(decay(300)) == pytest.approx(0.01)
    assert float(schedules.inverse_sqrt_decay(0.02, 0.0)(10_000)) == 0.02
    with pytest.raises(ValueError, match="decay_steps must be >= 0"):
        schedules.inverse_sqrt_decay(0.02, -1.0)


def test_relative_warmup_cosine_is_optax_warmup_cosine_over_the_run():
    """A run of T steps: linear warmup over 5% of T, cosine to 0 at T, as
    optax.warmup_cosine_decay_schedule over the same T; read in relative time, step
    10k of 2,000 steps gets the lr of step k of 200."""
    for total in (40, 200):
        reference = optax.warmup_cosine_decay_schedule(
            0.0, 0.02, int(0.05 * total), total, 0.0
        )
        n = jnp.arange(total + 5)
        got = schedules.relative_warmup_cosine(0.02, n, jnp.int32(total))
        np.testing.assert_allclose(got, reference(n), rtol=1e-5, atol=1e-9)
    short = schedules.relative_warmup_cosine(0.02, jnp.arange(200), 200)
    long = schedules.relative_warmup_cosine(0.02, 10 * jnp.arange(200), 2000)
    np.testing.assert_allclose(short, long, rtol=1e-5, atol=1e-9)
