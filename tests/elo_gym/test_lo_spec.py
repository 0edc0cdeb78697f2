"""The LO spec: its checks, lo.json, the step of Eq. 2 with its variants and its
inverse (the demonstrator's action)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import elo_gym
from elo_gym import checkpoint, lo_spec, lopt
from elo_gym.lo_spec import LOSpec

# lo.json as the code before the spec wrote it (a cpu-preset PES run's export): the
# settings first, then the run's entries.
OLD_LO_JSON = """{
  "hidden_size": 32,
  "step_mult": 0.001,
  "exp_mult": 0.001,
  "raw_adam_ratio": false,
  "adam_scaled_step": true,
  "nominal_lr": 0.02,
  "nominal_decay_steps": 100.0,
  "env": "ELO-Digits-MLP",
  "mode": "elo",
  "n_max": 200,
  "best_step": 2,
  "best_valid_loss": 0.14700821042060852,
  "exported": "best",
  "outer_step": 2
}"""


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(hidden_size=0), "hidden_size must be > 0, got 0"),
        (dict(hidden_size=2.5), "hidden_size must be a whole number, got 2.5"),
        (dict(step_mult=0.0), "step_mult must be a finite number > 0, got 0.0"),
        (dict(step_mult=float("nan")), "step_mult must be a finite number, got nan"),
        (dict(exp_mult=float("inf")), "exp_mult must be a finite number, got inf"),
        (dict(raw_adam_ratio="yes"), "raw_adam_ratio must be True or False"),
        (dict(adam_scaled_step=1), "adam_scaled_step must be True or False, got 1"),
        (dict(nominal_lr=-1.0), r"nominal_lr must be >= 0 \(0: no nominal term\)"),
        (dict(nominal_lr="0.02"), "nominal_lr must be a number, got '0.02'"),
        (dict(nominal_decay_steps=-5.0), "nominal_decay_steps must be >= 0"),
        (dict(time_horizon=-1.0), r"time_horizon must be >= 0 \(0: absolute time\)"),
        (dict(nominal_schedule=3), "nominal_schedule must be a string, got 3"),
        (dict(nominal_schedule="linear"), "unknown nominal_schedule 'linear'"),
        (
            dict(nominal_lr=0.02, nominal_schedule="cosine"),
            "only a relative-time LO knows: set time_horizon > 0",
        ),
        (dict(scheduled_step=True), "lacks: set nominal_lr > 0"),
        (dict(nominal_norm_step=True), "lacks: set nominal_lr > 0"),
        (dict(gated_step=True), "which an LO without one lacks.*--no-gated-step"),
        (
            dict(nominal_lr=0.01, gated_step=True, tangential_step=True),
            "no additive learned step for tangential_step.*--no-gated-step",
        ),
    ],
)
def test_bad_settings_are_named(settings, match):
    with pytest.raises(ValueError, match=match):
        LOSpec(**settings)


def test_numbers_are_normalized_so_equal_specs_hash_alike():
    spec = LOSpec(hidden_size=np.int64(8), nominal_lr=0, raw_adam_ratio=np.bool_(1))
    assert spec == LOSpec(hidden_size=8, nominal_lr=0.0, raw_adam_ratio=True)
    assert hash(spec) == hash(LOSpec(hidden_size=8, raw_adam_ratio=True))
    assert [type(v) for v in spec.to_json().values()] == [
        int,
        float,
        float,
        bool,
        bool,
        float,
        float,
        float,
        str,
        bool,
        bool,
        bool,
        bool,
        bool,
        bool,
    ]


def test_lo_json_written_before_the_spec_loads_and_is_written_alike(tmp_path):
    """An lo.json of the code before the spec gives the spec it recorded, and
    ``save_lo`` writes that spec's lo.json as that code did, with the settings added
    since (relative time) at their defaults after the old ones."""
    old = json.loads(OLD_LO_JSON)
    spec = LOSpec.from_json(old)
    assert spec == LOSpec(
        adam_scaled_step=True, nominal_lr=0.02, nominal_decay_steps=100
    )
    extra = {k: v for k, v in old.items() if k not in lo_spec.FIELDS}
    meta = elo_gym.init_meta_params(jax.random.PRNGKey(0))
    checkpoint.save_lo(tmp_path, meta, spec, extra=extra)
    added = (
        '  "time_horizon": 0.0,\n  "nominal_schedule": "inverse_sqrt",\n'
        '  "scheduled_step": false,\n  "nominal_norm_step": false,\n'
        '  "tangential_step": false,\n  "fast_second_moment": false,\n'
        '  "nominal_trust_ratio": false,\n  "gated_step": false,\n'
    )
    expected = OLD_LO_JSON.replace('  "env"', added + '  "env"')
    assert (tmp_path / "lo.json").read_text() == expected
    _, info = checkpoint.load_meta_params(tmp_path)
    assert LOSpec.from_json(info) == spec
    # A file from before the variants existed ran the reference LO.
    assert LOSpec.from_json({"hidden_size": 8, "step_mult": 0.001}) == LOSpec(8)


def test_save_lo_refuses_a_spec_of_other_weights(tmp_path):
    meta = elo_gym.init_meta_params(jax.random.PRNGKey(0), hidden_size=8)
    with pytest.raises(ValueError, match="hidden size 8, the LO spec 32"):
        checkpoint.save_lo(tmp_path, meta, LOSpec())
    assert not (tmp_path / "lo.json").exists()


def test_differences_name_each_setting_that_differs():
    spec = LOSpec(hidden_size=16, nominal_lr=0.01)
    assert spec.differences(LOSpec(hidden_size=16)) == {"nominal_lr": (0.01, 0.0)}


@pytest.mark.parametrize("step_mult", [lo_spec.STEP_MULT, 0.05])
@pytest.mark.parametrize("exp_mult", [lo_spec.EXP_MULT, 0.7])
@pytest.mark.parametrize("terms", ["none", "scale", "nominal", "both"])
def test_action_inverts_the_update(step_mult, exp_mult, terms):
    """The demonstrator's action (d*, 0) reproduces a given update through the step,
    with any multipliers, per-row scales and nominal terms."""
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    update = jax.random.normal(keys[0], (5, 7)) * 1e-3
    scale = 1.0
    nominal = 0.0
    if terms in ("scale", "both"):
        scale = jnp.exp(jax.random.normal(keys[1], (5, 7)))
    if terms in ("nominal", "both"):
        nominal = jax.random.normal(keys[2], (5, 7)) * 1e-3
    spec = LOSpec(step_mult=step_mult, exp_mult=exp_mult)
    action = spec.action(update, scale, nominal)
    assert action.shape == (5, 7, 2)
    np.testing.assert_array_equal(action[..., 1], 0.0)  # m* = 0
    expected_d = -(np.asarray(update) - nominal) / (step_mult * np.asarray(scale))
    np.testing.assert_allclose(action[..., 0], expected_d, rtol=1e-6)
    moved = spec.update(action, scale, nominal)
    np.testing.assert_allclose(moved, update, rtol=1e-5, atol=1e-11)


def test_update_is_eq_2_times_the_scale_plus_the_nominal_term():
    action = jnp.asarray([[2.0, -300.0], [-1.0, 500.0]])
    spec = LOSpec(step_mult=0.01, exp_mult=0.002)
    d, m = np.asarray(action, np.float64).T
    eq2 = -0.01 * d * np.exp(0.002 * m)
    np.testing.assert_allclose(spec.update(action), eq2, rtol=1e-6)
    scale, nominal = jnp.asarray([3.0, 0.5]), jnp.asarray([1e-3, -2e-3])
    np.testing.assert_allclose(
        spec.update(action, scale, nominal), eq2 * [3.0, 0.5] + [1e-3, -2e-3], rtol=1e-6
    )


def _accumulated(params):
    """LO state after two gradients, so both variants' terms are nonzero."""
    state = lopt.init_state(params)
    for seed in (1, 2):
        keys = iter(jax.random.split(jax.random.PRNGKey(seed), len(params)))
        grads = {
            k: jax.random.normal(next(keys), jnp.shape(v)) for k, v in params.items()
        }
        state = lopt.advance(lopt.accumulate(grads, state))
    return state


def test_terms_follow_the_variants_per_tensor_and_per_row():
    """Off, a variant's term is the neutral 1 or 0; on, it is ``adam_step_scale`` or
    ``nominal_update`` of the tensor, laid out as the env's rows (leaves in
    ``jax.tree.leaves`` order, each flattened in C order, a scalar as one row)."""
    params = {"w": jnp.zeros((3, 4)), "b": jnp.zeros((4,)), "s": jnp.float32(0.0)}
    state = _accumulated(params)
    acc = state.accumulators
    assert LOSpec().tensor_terms(acc["w"], state.count) == (1.0, 0.0)
    assert LOSpec().row_terms(params, state) == (1.0, 0.0)
    spec = LOSpec(adam_scaled_step=True, nominal_lr=0.02, nominal_decay_steps=10.0)
    scale_rows, nominal_rows = spec.row_terms(params, state)
    assert scale_rows.shape == nominal_rows.shape == (4 + 1 + 12,)
    start = 0
    for name in ("b", "s", "w"):  # jax.tree.leaves order
        scale, nominal = spec.tensor_terms(acc[name], state.count)
        np.testing.assert_array_equal(scale, lo_spec.adam_step_scale(acc[name]))
        np.testing.assert_array_equal(
            nominal,
            lo_spec.nominal_update(
                acc[name], state.count, 0.02 / jnp.sqrt(1.0 + state.count / 10.0)
            ),
        )
        size = int(np.size(params[name]))
        np.testing.assert_array_equal(scale_rows[start : start + size], scale)
        np.testing.assert_array_equal(
            nominal_rows[start : start + size], np.ravel(nominal)
        )
        start += size
    assert float(jnp.abs(nominal_rows).min()) > 0 and float(scale_rows.min()) > 0


@pytest.mark.parametrize("adam_scaled_step", [False, True])
def test_a_scheduled_step_warms_up_and_anneals_with_the_nominal_term(adam_scaled_step):
    """scheduled_step multiplies each tensor's scale by the nominal lr over its peak:
    0 at the run's first step and end, 1 at the end of the warmup; the nominal term is
    unchanged, and the demonstrator's action stays finite where the scale is 0."""
    params = {"w": jnp.zeros((3, 4)), "b": jnp.zeros((4,))}
    state = _accumulated(params)
    settings = dict(
        adam_scaled_step=adam_scaled_step,
        nominal_lr=0.02,
        time_horizon=200.0,
        nominal_schedule="cosine",
    )
    plain, scheduled = LOSpec(**settings), LOSpec(scheduled_step=True, **settings)
    for clock, factor in [
        (0.0, 0.0),
        (5.0, 0.5),
        (10.0, 1.0),
        (105.0, 0.5),
        (200.0, 0.0),
    ]:
        clock = jnp.float32(clock)
        scale, nominal = plain.row_terms(params, state, clock)
        scheduled_scale, scheduled_nominal = scheduled.row_terms(params, state, clock)
        np.testing.assert_array_equal(scheduled_nominal, nominal)
        np.testing.assert_allclose(
            scheduled_scale, np.broadcast_to(scale, (16,)) * factor, atol=1e-7
        )
        update = jnp.full((16,), 1e-3)
        action = scheduled.action(update, scheduled_scale, scheduled_nominal)
        assert np.isfinite(np.asarray(action)).all()
        if factor == 0.0:
            np.testing.assert_array_equal(action, 0.0)


def test_a_nominal_norm_step_turns_the_nominal_step_but_keeps_its_size():
    """nominal_norm_step: each tensor's update is the nominal term plus the learned
    step, rescaled to the nominal term's norm; rows rescale each tensor (segment) on
    its own, leading axes are copies; a silenced LO's update is the nominal term; a
    zero update stays 0 with finite derivatives."""
    params = {"w": jnp.zeros((3, 4)), "b": jnp.zeros((4,)), "s": jnp.float32(0.0)}
    state = _accumulated(params)
    plain = LOSpec(nominal_lr=0.02, nominal_decay_steps=10.0)
    spec = LOSpec(nominal_lr=0.02, nominal_decay_steps=10.0, nominal_norm_step=True)
    segments = lo_spec.row_segments(params)
    assert segments == (4, 1, 12)
    scale, nominal = spec.row_terms(params, state)
    action = jax.random.normal(jax.random.PRNGKey(0), (2, 17, 2)) * 3.0
    free = np.asarray(plain.update(action, scale, nominal), np.float64)
    rows_update = spec.update(action, scale, nominal, segments)
    start = 0
    for size in segments:
        piece = slice(start, start + size)
        target = np.linalg.norm(np.asarray(nominal, np.float64)[piece])
        for copy in range(2):
            expected = free[copy, piece] * target / np.linalg.norm(free[copy, piece])
            np.testing.assert_allclose(rows_update[copy, piece], expected, rtol=1e-5)
            tensor_update = spec.update(action[copy, piece], scale, nominal[piece])
            np.testing.assert_allclose(tensor_update, expected, rtol=1e-5)
        start += size
    silenced = spec.update(jnp.zeros((17, 2)), scale, nominal, segments)
    np.testing.assert_allclose(silenced, nominal, rtol=1e-6)

    def total(d, nominal):
        action = jnp.stack([d, jnp.zeros_like(d)], -1)
        return spec.update(action, 1.0, nominal, segments).sum()

    zero_nominal = jnp.zeros(17)
    assert float(jnp.abs(spec.update(jnp.zeros((17, 2)), 1.0, zero_nominal)).max()) == 0
    grads = jax.grad(total, argnums=(0, 1))(jnp.zeros(17), zero_nominal)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)


def test_a_tangential_step_cannot_grow_or_shrink_the_weights():
    """tangential_step: the learned step of each tensor loses its component along the
    tensor's params (rows: each segment on its own, leading axes are copies) before
    the nominal term is added, and before nominal_norm_step rescales; a tensor of
    zeros keeps its step, with finite derivatives; without params it is an error."""
    params = {"w": jnp.zeros((3, 4)), "b": jnp.zeros((4,)), "s": jnp.float32(0.0)}
    state = _accumulated(params)
    terms = dict(nominal_lr=0.02, nominal_decay_steps=10.0)
    segments = lo_spec.row_segments(params)
    scale, nominal = LOSpec(**terms).row_terms(params, state)
    key_w, key_a = jax.random.split(jax.random.PRNGKey(1))
    w = jax.random.normal(key_w, (17,)).at[4].set(0.0)  # the scalar "s" is 0
    action = jax.random.normal(key_a, (2, 17, 2)) * 3.0
    free = np.asarray(LOSpec().update(action), np.float64)  # the learned step alone
    w64, nominal64 = np.asarray(w, np.float64), np.asarray(nominal, np.float64)
    expected, start = free.copy(), 0
    for size in segments:
        piece = slice(start, start + size)
        squares = np.sum(w64[piece] ** 2)
        if squares > 0:
            along = free[:, piece] @ w64[piece] / squares
            expected[:, piece] -= along[:, None] * w64[piece]
        np.testing.assert_allclose(expected[:, piece] @ w64[piece], 0.0, atol=1e-9)
        start += size
    assert not np.allclose(expected, free, atol=1e-3)  # the projection did something
    tangential = LOSpec(tangential_step=True)
    rows_update = tangential.update(action, segments=segments, params=w)
    np.testing.assert_allclose(rows_update, expected, rtol=1e-5, atol=1e-7)
    whole = tangential.update(action[0, :4], params=w[:4])  # one tensor: "b"
    np.testing.assert_allclose(whole, expected[0, :4], rtol=1e-5, atol=1e-7)

    both = LOSpec(**terms, tangential_step=True, nominal_norm_step=True)
    combined = np.asarray(both.update(action, scale, nominal, segments, w), np.float64)
    start = 0
    for size in segments:
        piece = slice(start, start + size)
        direction = expected[:, piece] * np.asarray(scale) + nominal64[piece]
        norm = np.linalg.norm(direction, axis=1, keepdims=True)
        target = np.linalg.norm(nominal64[piece])
        np.testing.assert_allclose(
            combined[:, piece], direction * target / norm, rtol=1e-5, atol=1e-7
        )
        start += size
    silenced = both.update(jnp.zeros((17, 2)), scale, nominal, segments, w)
    np.testing.assert_allclose(silenced, nominal, rtol=1e-6)

    def total(d, w):
        action = jnp.stack([d, jnp.zeros_like(d)], -1)
        return tangential.update(action, segments=segments, params=w).sum()

    zeros = jnp.zeros(17)
    grads = jax.grad(total, argnums=(0, 1))(jnp.ones(17), zeros)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    with pytest.raises(ValueError, match="pass params"):
        tangential.update(action)


def test_nominal_term_is_differentiable_at_zero_moments():
    """The nominal term (Adam's step) of an entry whose gradient was always 0 has a
    finite derivative (0) for truncated backprop; elsewhere it is Adam's own."""
    from elo_gym.lo_features import TensorAccumulators

    def step(momentum, rms):
        acc = TensorAccumulators(momentum, rms, jnp.zeros((3, 2)), jnp.zeros((0,)))
        return lo_spec.nominal_update(acc, jnp.int32(4), 0.02).sum()

    momentum = jnp.array([[0.0, 0.3]] * 3)
    rms = jnp.array([[0.0, 0.2]])
    d_momentum, d_rms = jax.grad(step, argnums=(0, 1))(momentum, rms)
    assert np.all(np.isfinite(d_momentum)) and np.all(np.isfinite(d_rms))
    assert d_rms[0, 0] == 0.0
    t = 5.0  # Adam's step at the live entry: -lr m_hat / sqrt(v_hat), by hand
    bias_m, bias_v = 1 - 0.9**t, 1 - 0.999**t
    expected = 0.02 * 0.5 * 0.3 / bias_m * (0.2 / bias_v) ** -1.5 / bias_v
    np.testing.assert_allclose(d_rms[0, 1], expected, rtol=1e-3)


def test_a_gated_step_reweights_the_nominal_step_and_its_action_inverts_it():
    """gated_step: each element's update is the nominal term times 1 + tanh(d), so a
    silenced LO takes the nominal step, d -> -inf drops an element and the update never
    leaves the nominal term's signs; ``action`` inverts a gate in (0, 2) and clips
    beyond it; with nominal_norm_step each tensor keeps the nominal term's norm."""
    params = {"w": jnp.ones((3, 4)), "b": jnp.zeros((4,)), "s": jnp.float32(0.0)}
    state = _accumulated(params)
    spec = LOSpec(nominal_lr=0.02, nominal_decay_steps=10.0, gated_step=True)
    scale, nominal = spec.row_terms(params, state)
    nominal = np.asarray(nominal, np.float64)
    d = np.linspace(-3.0, 3.0, 17)
    action = jnp.stack([d, np.full(17, 5.0)], -1)  # m is unused
    update = np.asarray(spec.update(action, scale, nominal), np.float64)
    np.testing.assert_allclose(update, nominal * (1 + np.tanh(d)), rtol=1e-5)
    silenced = spec.update(jnp.zeros((17, 2)), scale, nominal)
    np.testing.assert_allclose(silenced, nominal, rtol=1e-6)
    assert np.all(update * nominal >= 0)
    np.testing.assert_allclose(spec.action(update, scale, nominal)[:, 0], d, atol=1e-3)
    # A cautious demonstrator's 0 and an update against the nominal term: the limit.
    target = np.where(np.arange(17) % 2 == 0, 0.0, -nominal)
    limit = lo_spec.GATE_ACTION_LIMIT
    np.testing.assert_allclose(
        spec.action(target, scale, nominal)[:, 0], -limit, rtol=1e-3
    )
    normed = LOSpec(
        nominal_lr=0.02,
        nominal_decay_steps=10.0,
        gated_step=True,
        nominal_norm_step=True,
    )
    segments = lo_spec.row_segments(params)
    rows = np.asarray(normed.update(action, scale, nominal, segments), np.float64)
    start = 0
    for size in segments:
        piece = slice(start, start + size)
        gated = update[piece]
        expected = gated * np.linalg.norm(nominal[piece]) / np.linalg.norm(gated)
        np.testing.assert_allclose(rows[piece], expected, rtol=1e-5)
        start += size
