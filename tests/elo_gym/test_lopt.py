"""small_fc_lopt: parity with learned_optimization's AdafacMLPLOpt; the optax face."""

import dataclasses
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import elo_gym
from elo_gym import lopt, lopt_fused
from elo_gym.lo_spec import LOSpec

FIXTURE = pathlib.Path(__file__).parents[1] / "fixtures" / "small_fc_lopt_golden.npz"
NAMES = ("w", "b", "s", "k")  # 2-D, 1-D, scalar, 4-D
LEAF_ORDER = sorted(NAMES)  # jax.tree.leaves orders dict keys


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(FIXTURE))


def _close(mine, ref):
    """The fixture README's check for state, features, direction, magnitude and step."""
    ref = np.asarray(ref)
    mine = np.asarray(mine).reshape(ref.shape)
    np.testing.assert_allclose(mine, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())


def _params_close(mine, ref):
    np.testing.assert_allclose(
        np.asarray(mine).reshape(ref.shape), ref, rtol=0, atol=1e-7
    )


def _step(meta, params, state, grads):
    """One update, returning every intermediate the fixture records."""
    acc_state = lopt.accumulate(grads, state)
    feats = dict(zip(LEAF_ORDER, lopt.features(grads, params, acc_state), strict=True))
    accs = {n: acc_state.accumulators[n] for n in NAMES}
    raws = {n: lopt.raw_tensor_features(grads[n], params[n], accs[n]) for n in NAMES}
    outs = {n: lopt.apply_mlp(meta.mlp, feats[n]) for n in NAMES}
    updates, new_state = lopt.lopt_update(
        meta, grads, state, params, layout=lopt_fused.default_layout()
    )
    new_params = optax.apply_updates(params, updates)
    return feats, raws, outs, accs, new_params, new_state


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_parity_with_reference_fixture(golden, jit):
    meta = elo_gym.meta_params_from_reference(golden)
    for name, key in [
        ("momentum", "momentum"),
        ("rms", "rms"),
        ("adafactor", "adafactor"),
    ]:
        np.testing.assert_array_equal(
            getattr(lopt.DECAYS, name),
            golden[f"config/effective_{key}_decays"],
        )
    for n in ("w", "k"):
        assert lopt.factored_dims(golden[f"params0/{n}"].shape) == tuple(
            golden[f"config/factored_dims/{n}"]
        )
    params = {n: jnp.asarray(golden[f"params0/{n}"]) for n in NAMES}
    state = lopt.init_state(params)
    step = jax.jit(_step) if jit else _step
    for t in range(1, 13):
        grads = {n: jnp.asarray(golden[f"grad/{t}/{n}"]) for n in NAMES}
        feats, raws, outs, accs, params, state = step(meta, params, state, grads)
        for n in NAMES:
            _close(feats[n][..., :28], golden[f"features/{t}/{n}"][..., :28])
            np.testing.assert_allclose(
                np.asarray(feats[n][..., 28:]).reshape(-1, 11),
                np.broadcast_to(
                    golden[f"step_feature/{t}"], (feats[n][..., 0].size, 11)
                ),
                atol=1e-6,
            )
            _close(raws[n], golden[f"features_raw/{t}/{n}"])
            _close(outs[n][..., 0], golden[f"direction/{t}/{n}"])
            _close(outs[n][..., 1], golden[f"magnitude/{t}/{n}"])
            _close(lopt.step_from_action(outs[n]), golden[f"step/{t}/{n}"])
            _params_close(params[n], golden[f"params/{t}/{n}"])
            # The accumulators are stored channels first; the reference's are last.
            acc = lopt.TensorAccumulators(*(np.moveaxis(x, 0, -1) for x in accs[n]))
            _close(acc.momentum, golden[f"state/{t}/momentum/{n}"])
            _close(acc.rms, golden[f"state/{t}/rms/{n}"])
            if n in ("w", "k"):
                _close(acc.v_row, golden[f"state/{t}/fac_v_row/{n}"])
                _close(acc.v_col, golden[f"state/{t}/fac_v_col/{n}"])
            else:
                _close(acc.v_row, golden[f"state/{t}/fac_v_diag/{n}"])
        assert int(state.count) == t


def test_meta_params_from_reference_names_missing_keys():
    with pytest.raises(KeyError, match="meta/nn/~/w0"):
        elo_gym.meta_params_from_reference({})


def test_init_meta_params_shapes_and_scale():
    meta = elo_gym.init_meta_params(jax.random.key(0))
    shapes = jax.tree.map(jnp.shape, meta.mlp)
    assert shapes == {
        "Dense_0": {"kernel": (39, 32), "bias": (32,)},
        "Dense_1": {"kernel": (32, 32), "bias": (32,)},
        "Dense_2": {"kernel": (32, 2), "bias": (2,)},
    }
    w0 = np.asarray(meta.mlp["Dense_0"]["kernel"])
    # Truncated normal at 2 std of 1/sqrt(fan_in): bounded, zero-mean, right scale.
    assert np.abs(w0).max() <= 2.0 / np.sqrt(39) + 1e-6
    assert 0.6 / np.sqrt(39) < w0.std() < 1.1 / np.sqrt(39)
    assert not np.any(meta.mlp["Dense_0"]["bias"])
    wide = elo_gym.init_meta_params(jax.random.key(0), hidden_size=8)
    assert wide.mlp["Dense_1"]["kernel"].shape == (8, 8)


def test_reference_meta_params_with_learned_decays_are_refused(golden):
    """The env's features use fixed decays, so a reference LO whose decay offsets
    were meta-trained cannot be run faithfully; loading it must say so."""
    shifted = dict(golden, **{"meta/momentum_decays": np.float32([0.1, -0.1, 0.0])})
    with pytest.raises(ValueError, match="meta/momentum_decays = \\[0.1"):
        elo_gym.meta_params_from_reference(shifted)
    without = {k: v for k, v in golden.items() if k not in lopt.DECAY_OFFSET_KEYS}
    assert elo_gym.meta_params_from_reference(without).mlp.keys() == {
        "Dense_0",
        "Dense_1",
        "Dense_2",
    }


def _tiny_model():
    params = {
        "dense": {"kernel": jnp.ones((4, 3)) * 0.1, "bias": jnp.zeros(3)},
        "scale": jnp.array(1.0),
        "conv": jnp.full((2, 2, 3, 3), 0.05),
    }
    x = jax.random.normal(jax.random.key(1), (16, 4))

    def loss(p):
        h = x @ p["dense"]["kernel"] + p["dense"]["bias"]
        return jnp.mean((p["scale"] * h - 1.0) ** 2) + jnp.sum(p["conv"] ** 2)

    return params, loss


def test_optax_face_trains_any_pytree_under_jit():
    params, loss = _tiny_model()
    opt = elo_gym.small_fc_lopt(elo_gym.init_meta_params(jax.random.key(0)))
    state = opt.init(params)

    @jax.jit
    def train_step(params, state):
        grads = jax.grad(loss)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    p1, s1 = train_step(params, state)
    assert jax.tree.structure(p1) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(params), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert np.all(np.isfinite(a))
        # Each move is at most step_mult * |d| * exp(exp_mult * m): small.
        assert np.abs(np.asarray(a - b)).max() < 0.05
    assert int(s1.count) == 1


def _gradient_following_lo() -> lopt.MetaParams:
    """An LO whose output is d = its first input (the gradient normalized per tensor)
    and m = 0: relu(g) - relu(-g) through the three layers. It must descend."""
    meta = elo_gym.init_meta_params(jax.random.key(0))
    mlp = jax.tree.map(jnp.zeros_like, meta.mlp)
    mlp["Dense_0"]["kernel"] = mlp["Dense_0"]["kernel"].at[0, :2].set([1.0, -1.0])
    mlp["Dense_1"]["kernel"] = mlp["Dense_1"]["kernel"].at[[0, 1], [0, 1]].set(1.0)
    mlp["Dense_2"]["kernel"] = mlp["Dense_2"]["kernel"].at[:2, 0].set([1.0, -1.0])
    return meta._replace(mlp=mlp)


def test_the_optax_face_descends(tmp_path):
    """The update's sign and scale: an LO that outputs the normalized gradient lowers
    the loss, through small_fc_lopt and through a saved and loaded LO alike."""
    from elo_gym import checkpoint

    params, loss = _tiny_model()
    meta = _gradient_following_lo()
    checkpoint.save_lo(tmp_path, meta)
    for opt in (elo_gym.small_fc_lopt(meta), elo_gym.load_optimizer(tmp_path)):

        @jax.jit
        def train_step(params, state, opt=opt):
            value, grads = jax.value_and_grad(loss)(params)
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state, value

        p, state = params, opt.init(params)
        losses = []
        for _ in range(200):
            p, state, value = train_step(p, state)
            losses.append(float(value))
        assert losses[-1] < 0.7 * losses[0], losses[::40]
        # Each step moves a parameter by at most step_mult x its normalized gradient.
        first, _ = opt.update(jax.grad(loss)(params), opt.init(params), params)
        assert 0 < max(float(jnp.abs(u).max()) for u in jax.tree.leaves(first)) < 0.01


def test_update_requires_params():
    opt = elo_gym.small_fc_lopt(elo_gym.init_meta_params(jax.random.key(0)))
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="needs params"):
        opt.update(params, opt.init(params))


def test_non_finite_gradients_are_contained():
    params, _ = _tiny_model()
    opt = elo_gym.small_fc_lopt(elo_gym.init_meta_params(jax.random.key(0)))
    state = opt.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    grads["dense"]["kernel"] = grads["dense"]["kernel"].at[0, 0].set(jnp.nan)
    grads["scale"] = jnp.array(jnp.inf)
    updates, state = opt.update(grads, state, params)
    for leaf in jax.tree.leaves((updates, state)):
        assert np.all(np.isfinite(leaf))


@pytest.mark.parametrize(
    "variant",
    [{}, dict(raw_adam_ratio=True), dict(fast_second_moment=True)],
    ids=["reference", "raw", "fast_second_moment"],
)
@pytest.mark.parametrize("layout", lopt_fused.LAYOUTS)
def test_fast_paths_equal_features_then_mlp(layout, variant):
    """On CPU, large tensors take the tiled path of the fast update and the others
    run one by one, or in one merged pass (the PES agent's); an accelerator runs
    every tensor whole and concatenates the rows. Every path must give what building
    the 39 features and applying the MLP gives, on every tensor kind, with the
    variants that change the features."""
    shapes = {
        "kernel": (1536, 48),  # factored, axis 0 cut into tiles
        "tall": (384, 4, 64),  # factored over axes 0 and 2: a broadcast along axis 0
        "conv": (256, 3, 3, 16),  # factored over axes 0 and 3
        "wide": (64, 600),  # factored over axes 1 and 0: the row moments are cut
        "bias": (70000,),  # rank 1: untiled; merged, long enough for column tiles
        "small": (7, 5),  # factored, untiled
        "scalar": (),
    }
    tiled = [s for s in shapes.values() if lopt_fused._tile_rows(s) is not None]
    assert len(tiled) == 4, "the test must exercise the tiled path"
    untiled = sum(
        math.prod(s) for s in shapes.values() if lopt_fused._tile_rows(s) is None
    )
    assert untiled >= 2 * lopt_fused.TILE_ELEMENTS, "the merged pass must be tiled"
    keys = iter(jax.random.split(jax.random.PRNGKey(0), 64))
    params = {k: jax.random.normal(next(keys), s) for k, s in shapes.items()}
    meta = elo_gym.init_meta_params(next(keys))
    spec = LOSpec.for_meta_params(meta, **variant)
    state = spec.init_state(params)

    # One compiled program for every path: run eagerly, the explicit features cost
    # dozens of per-op compiles (34 s of this test with a cold JAX cache, 14 s jitted).
    @jax.jit
    def paths(meta, grads, state, params):
        accumulated = lopt.accumulate(grads, state)
        raw = dict(raw_adam_ratio=spec.raw_adam_ratio)
        feats = lopt.features(grads, params, accumulated, **raw)
        fast = {
            merged: lopt_fused.mlp_outputs(
                grads,
                params,
                accumulated,
                meta.mlp,
                layout=layout,
                merged=merged,
                **raw,
            )
            for merged in (False, True)
        }
        explicit = [lopt.apply_mlp(meta.mlp, f) for f in feats]
        update = {
            merged: lopt.lopt_update(
                meta,
                grads,
                state,
                params,
                spec,
                layout=layout,
                merged=merged,
            )
            for merged in (False, True)
        }
        return explicit, fast, update

    # Three steps for nonzero accumulators, then step counts where the slow step
    # features (timescales 1,000 to 100,000) change: far past the tests' short runs.
    for count in (None, None, None, 9_999, 123_456):
        if count is not None:
            state = state._replace(count=jnp.asarray(count, state.count.dtype))
        grads = {k: jax.random.normal(next(keys), s) for k, s in shapes.items()}
        explicit, fast, update = paths(meta, grads, state, params)
        updates, new_state = update[False]
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-9),
            update[True],
            update[False],
        )
        for i, ((name, p), out) in enumerate(
            zip(sorted(params.items()), explicit, strict=True)
        ):
            for merged, outs in fast.items():
                np.testing.assert_allclose(
                    np.moveaxis(np.asarray(outs[i]), 0, -1),
                    out,
                    rtol=2e-4,
                    atol=2e-5,
                    err_msg=f"{name}, merged={merged}",
                )
            expected = -lopt.step_from_action(out, lopt.STEP_MULT, lopt.EXP_MULT)
            np.testing.assert_allclose(
                updates[name], expected.reshape(p.shape), rtol=2e-4, atol=1e-9
            )
        state, params = new_state, optax.apply_updates(params, updates)


def test_layout_is_chosen_by_the_caller():
    assert lopt_fused.default_layout("cpu") == "cpu"
    assert lopt_fused.default_layout("gpu") == lopt_fused.default_layout("tpu")
    assert lopt_fused.default_layout("gpu") == "accelerator"
    meta = elo_gym.init_meta_params(jax.random.key(0))
    with pytest.raises(ValueError, match="unknown layout 'gpu'; valid: cpu, acc"):
        elo_gym.small_fc_lopt(meta, layout="gpu")


def _adam_ratio_lo() -> lopt.MetaParams:
    """An LO whose direction is feature 6 (m_0.9 * rsqrt(r)): relu(x) - relu(-x)."""
    meta = elo_gym.init_meta_params(jax.random.PRNGKey(0))
    mlp = jax.tree.map(lambda w: np.zeros_like(w), meta.mlp)
    mlp["Dense_0"]["kernel"][6, :2] = [1.0, -1.0]
    mlp["Dense_1"]["kernel"][[0, 1], [0, 1]] = 1.0
    mlp["Dense_2"]["kernel"][[0, 1], 0] = [1.0, -1.0]
    return lopt.MetaParams(mlp=mlp)


def test_raw_ratio_and_scaled_step_let_an_lo_follow_adams_shrinking_steps():
    """An LO that steps along feature 6 steps by exactly step_mult * m / sqrt(r) with
    features 6-8 unnormalized (raw_adam_ratio) or with its step scaled back by the
    normalizer (adam_scaled_step), so its steps shrink 10x when the gradients do, as
    Adam's do; the reference keeps that LO's update RMS fixed. The raw variant's other
    36 features are the reference's."""
    params = {"w": jnp.zeros((8, 5)), "b": jnp.zeros((5,))}
    meta = _adam_ratio_lo()
    rng = np.random.default_rng(0)
    rms = {}
    variants = {"reference": {}, "raw": dict(raw_adam_ratio=True)}
    variants["scaled"] = dict(adam_scaled_step=True)
    for name, variant in variants.items():
        opt = lopt.small_fc_lopt(meta, LOSpec.for_meta_params(meta, **variant))
        update = jax.jit(opt.update)
        state, norms = opt.init(params), []
        for t in range(1_300):
            scale = 1.0 if t < 1_000 else 0.1
            grads = {
                k: jnp.asarray(scale * (0.5 + rng.normal(size=v.shape)), jnp.float32)
                for k, v in params.items()
            }
            updates, state = update(grads, state, params)
            norms.append(float(jnp.sqrt(jnp.mean(updates["w"] ** 2))))
        acc = state.accumulators["w"]
        ratio = acc.momentum[0] * jax.lax.rsqrt(acc.rms[0] + 1e-6)
        if name != "reference":
            np.testing.assert_allclose(updates["w"], -1e-3 * ratio, rtol=1e-5)
        if name == "raw":
            feats = lopt.features(grads, params, state, raw_adam_ratio=True)
            reference = lopt.features(grads, params, state)
            np.testing.assert_array_equal(feats[1][..., 6], ratio)
            keep = np.r_[0:6, 9:39]
            np.testing.assert_array_equal(feats[1][..., keep], reference[1][..., keep])
        rms[name] = np.mean(norms[-50:]) / np.mean(norms[900:1_000])
    assert rms["reference"] == pytest.approx(1.0, abs=0.02)
    assert rms["raw"] < 0.3 and rms["scaled"] < 0.3


def test_nominal_term_is_decayed_adam_plus_the_lo_step():
    """nominal_lr: an LO whose MLP outputs zero updates exactly as optax.adam at lr /
    sqrt(1 + n / tau) over 300 steps (a scalar among the tensors); any other LO's
    update is that Adam step plus the LO's own step, unchanged."""
    rng = np.random.default_rng(0)
    params = {
        "w": jnp.asarray(rng.normal(size=(6, 4)), jnp.float32),
        "b": jnp.zeros((4,), jnp.float32),
        "s": jnp.float32(0.5),
    }
    meta = elo_gym.init_meta_params(jax.random.PRNGKey(3))
    silent = meta._replace(mlp=jax.tree.map(np.zeros_like, meta.mlp))
    plain = LOSpec(adam_scaled_step=True)
    nominal = dataclasses.replace(plain, nominal_lr=0.02, nominal_decay_steps=100.0)
    adam = optax.adam(lambda n: 0.02 / jnp.sqrt(1.0 + n / 100.0))
    opts = {
        "silent": lopt.small_fc_lopt(silent, nominal),
        "lo": lopt.small_fc_lopt(meta, nominal),
        "plain": lopt.small_fc_lopt(meta, plain),
        "adam": adam,
    }
    updates_fn = {k: jax.jit(o.update) for k, o in opts.items()}
    states = {k: o.init(params) for k, o in opts.items()}
    for t in range(300):
        grads = {
            k: jnp.asarray((1.0 + 0.01 * t) * rng.normal(size=np.shape(v)), jnp.float32)
            for k, v in params.items()
        }
        updates = {}
        for k in opts:  # the states hold only gradient statistics: params stay fixed
            updates[k], states[k] = updates_fn[k](grads, states[k], params)
        for k in params:
            expected = np.asarray(updates["adam"][k])
            np.testing.assert_allclose(
                updates["silent"][k], expected, rtol=1e-4, atol=1e-7
            )
            np.testing.assert_allclose(
                updates["lo"][k],
                expected + np.asarray(updates["plain"][k]),
                rtol=1e-4,
                atol=1e-7,
            )
    assert np.abs(np.asarray(updates["plain"]["w"])).max() > 1e-5  # the LO moves too


def test_the_optax_face_takes_only_a_spec_of_its_weights():
    """A spec of another hidden size, or settings that are not a spec, fail when the
    optimizer is built, naming what is wrong."""
    meta = elo_gym.init_meta_params(jax.random.PRNGKey(0), hidden_size=8)
    lopt.small_fc_lopt(meta)  # no spec: the reference LO of the weights' size
    with pytest.raises(ValueError, match="hidden size 8, the LO spec 32"):
        lopt.small_fc_lopt(meta, LOSpec())
    with pytest.raises(TypeError, match="spec must be an elo_gym.lo_spec.LOSpec"):
        lopt.small_fc_lopt(meta, {"nominal_lr": 0.01})


def test_a_relative_time_lo_stretches_its_schedule_to_the_run():
    """time_horizon 200: at step 10n of a 2,000-step run the step features read step
    n of a 200-step run, and so does the nominal term's lr (its bias correction
    stays the count's); time_horizon 0 reads absolute time; a relative-time LO
    without total_steps is refused."""
    rng = np.random.default_rng(1)
    params = {"w": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)}
    grads = {"w": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)}
    meta = elo_gym.init_meta_params(jax.random.PRNGKey(5))
    silent = meta._replace(mlp=jax.tree.map(np.zeros_like, meta.mlp))

    def update_at(count, weights=meta, total_steps=None, **settings):
        spec = LOSpec(adam_scaled_step=True, **settings)
        opt = lopt.small_fc_lopt(weights, spec, total_steps=total_steps)
        state = opt.init(params)._replace(count=jnp.int32(count))
        return np.asarray(opt.update(grads, state, params)[0]["w"])

    np.testing.assert_allclose(
        update_at(700, time_horizon=200.0, total_steps=2000),
        update_at(70),
        rtol=1e-5,
        atol=1e-9,
    )
    assert np.abs(update_at(700) - update_at(70)).max() > 1e-5  # time matters
    np.testing.assert_array_equal(update_at(700, total_steps=2000), update_at(700))
    nominal = dict(nominal_lr=0.02, nominal_decay_steps=100.0)
    lr_ratio = np.sqrt(1.0 + 700 / 100.0) / np.sqrt(1.0 + 70 / 100.0)
    np.testing.assert_allclose(
        update_at(700, silent, 2000, time_horizon=200.0, **nominal),
        update_at(700, silent, **nominal) * lr_ratio,
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="pass total_steps"):
        lopt.small_fc_lopt(meta, LOSpec(time_horizon=200.0))
    with pytest.raises(ValueError, match="time_horizon must be >= 0"):
        LOSpec(time_horizon=-1.0)


def test_a_cosine_nominal_term_is_adam_with_warmup_cosine_to_the_run_end():
    """nominal_schedule cosine (relative time): an LO whose MLP outputs zero is
    optax.adam with linear warmup over 5% of total_steps and cosine decay to 0, for a
    run of any length."""
    rng = np.random.default_rng(2)
    params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
    meta = elo_gym.init_meta_params(jax.random.PRNGKey(3))
    silent = meta._replace(mlp=jax.tree.map(np.zeros_like, meta.mlp))
    spec = LOSpec(nominal_lr=0.02, nominal_schedule="cosine", time_horizon=200.0)
    for total in (60, 20):
        lo = lopt.small_fc_lopt(silent, spec, total_steps=total)
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, 0.02, 0.05 * total, total, 0.0
        )
        adam = optax.adam(schedule)
        states = [lo.init(params), adam.init(params)]
        steps = [jax.jit(lo.update), jax.jit(adam.update)]
        for _ in range(total):
            grads = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
            (u_lo, states[0]), (u_adam, states[1]) = (
                f(grads, s, params) for f, s in zip(steps, states, strict=True)
            )
            np.testing.assert_allclose(u_lo["w"], u_adam["w"], rtol=2e-4, atol=1e-8)
    with pytest.raises(ValueError, match="only a relative-time LO knows"):
        LOSpec(nominal_lr=0.02, nominal_schedule="cosine")
    with pytest.raises(ValueError, match="unknown nominal_schedule"):
        LOSpec(nominal_schedule="linear")


def test_a_trust_ratio_nominal_term_is_lamb():
    """nominal_trust_ratio: an LO whose MLP outputs zero is optax.lamb (Adam's update
    rescaled per tensor to lr x |W|; unscaled where |W| is 0, as a bias at init)
    under the nominal schedule, not optax.adam; it needs a nominal term and, in
    ``tensor_terms``, the tensor's params."""
    rng = np.random.default_rng(5)
    params = {
        "w": jnp.asarray(rng.normal(size=(6, 3)), jnp.float32),
        "b": jnp.zeros((3,), jnp.float32),
    }
    meta = elo_gym.init_meta_params(jax.random.PRNGKey(3))
    silent = meta._replace(mlp=jax.tree.map(np.zeros_like, meta.mlp))
    total = 30
    spec = LOSpec(
        nominal_lr=0.02,
        nominal_schedule="cosine",
        time_horizon=200.0,
        nominal_trust_ratio=True,
    )
    schedule = optax.warmup_cosine_decay_schedule(0.0, 0.02, 0.05 * total, total, 0.0)
    lo = lopt.small_fc_lopt(silent, spec, total_steps=total)
    others = [optax.lamb(schedule, eps=1e-8, weight_decay=0.0), optax.adam(schedule)]
    lo_state, states = lo.init(params), [o.init(params) for o in others]
    lo_step = jax.jit(lo.update)
    for _ in range(8):
        grads = jax.tree.map(
            lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params
        )
        u_lo, lo_state = lo_step(grads, lo_state, params)
        outs = [o.update(grads, s, params) for o, s in zip(others, states)]
        states = [state for _, state in outs]
        (u_lamb, _), (u_adam, _) = outs
        for name in params:
            np.testing.assert_allclose(u_lo[name], u_lamb[name], rtol=2e-4, atol=1e-8)
        params = optax.apply_updates(params, u_lo)
    assert not np.allclose(u_lo["w"], u_adam["w"], rtol=1e-2)
    with pytest.raises(ValueError, match="nominal_trust_ratio rescales"):
        LOSpec(nominal_trust_ratio=True)
    acc = lo_state.accumulators["w"]
    with pytest.raises(ValueError, match="pass the tensor's params"):
        spec.tensor_terms(acc, lo_state.count)


def test_an_lo_with_its_output_layer_silenced_is_its_nominal_term():
    """``--init-lo silenced``: the fresh LO with its output layer zeroed updates by its
    nominal term alone, as the LO with every MLP weight zero does, while its hidden
    layers stay the fresh ones (so a perturbation of the output layer moves it)."""
    from elo_gym import lo_features, pes_run

    rng = np.random.default_rng(4)
    params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
    grads = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
    fresh = elo_gym.init_meta_params(jax.random.PRNGKey(7))
    silenced = pes_run.initial_lo(pes_run.SILENCED, LOSpec(), fresh)
    zero = fresh._replace(mlp=jax.tree.map(np.zeros_like, fresh.mlp))
    spec = LOSpec(nominal_lr=0.02, time_horizon=200.0, nominal_schedule="cosine")
    updates = [
        lopt.small_fc_lopt(m, spec, total_steps=50).update(
            grads, lopt.init_state(params)._replace(count=jnp.int32(9)), params
        )[0]["w"]
        for m in (silenced, zero, fresh)
    ]
    np.testing.assert_array_equal(updates[0], updates[1])
    assert np.abs(updates[2] - updates[1]).max() > 1e-6  # the fresh LO is not silent
    np.testing.assert_array_equal(
        silenced.mlp["Dense_0"]["kernel"], fresh.mlp["Dense_0"]["kernel"]
    )
    assert not lo_features.silenced_output(fresh).mlp["Dense_2"]["kernel"].any()


def test_a_fast_second_moment_shows_the_lo_adams_direction_at_b2_095():
    """With ``fast_second_moment`` the LO keeps r_0.95 beside r_0.999, and feature 8
    is m_0.9 / sqrt(r_0.95): optax's Adam at b2 0.95 (its moments before bias
    correction). Feature 6 is still Adam's at b2 0.999, every other feature and the
    nominal term are the reference LO's."""
    keys = iter(jax.random.split(jax.random.PRNGKey(3), 16))
    params = {"w": jax.random.normal(next(keys), (12, 5)), "b": jnp.zeros((5,))}
    fast = LOSpec(nominal_lr=0.01, fast_second_moment=True)
    state, reference = fast.init_state(params), LOSpec().init_state(params)
    assert state.accumulators["w"].rms.shape == (2, 12, 5)
    assert reference.accumulators["w"].rms.shape == (1, 12, 5)
    adams = {b2: optax.scale_by_adam(b1=0.9, b2=b2) for b2 in (0.95, 0.999)}
    adam_states = {b2: adam.init(params) for b2, adam in adams.items()}
    for _ in range(6):
        grads = jax.tree.map(
            lambda p: jax.random.normal(next(keys), p.shape) * 3.0, params
        )
        state = lopt.accumulate(grads, state)
        reference = lopt.accumulate(grads, reference)
        for b2, adam in adams.items():
            _, adam_states[b2] = adam.update(grads, adam_states[b2])
    for name in params:
        raw = lopt.raw_tensor_features(
            grads[name], params[name], state.accumulators[name]
        )
        mu, nu = adam_states[0.95].mu[name], adam_states[0.95].nu[name]
        np.testing.assert_allclose(
            raw[..., 8], mu * jax.lax.rsqrt(nu + 1e-6), rtol=1e-4, atol=1e-7
        )
        slow = adam_states[0.999]
        np.testing.assert_allclose(
            raw[..., 6],
            slow.mu[name] * jax.lax.rsqrt(slow.nu[name] + 1e-6),
            rtol=1e-4,
            atol=1e-7,
        )
        same = lopt.raw_tensor_features(
            grads[name], params[name], reference.accumulators[name]
        )
        np.testing.assert_allclose(raw[..., :8], same[..., :8], rtol=1e-6)
        np.testing.assert_allclose(raw[..., 9:], same[..., 9:], rtol=1e-6)
        assert not np.allclose(raw[..., 8], same[..., 8], rtol=1e-2)
        # The nominal term is Adam at b2 0.999 with either state.
        np.testing.assert_allclose(
            fast.tensor_terms(state.accumulators[name], state.count)[1],
            fast.tensor_terms(reference.accumulators[name], reference.count)[1],
            rtol=1e-6,
        )
