"""The pure functional core: Eq. 8-10, Algorithm 1's reset distribution, divergence."""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from elo_gym import buffer as replay
from elo_gym import core, lopt, schedules
from elo_gym.envs import ImageMLPTask, make_image_mlp_task
from elo_gym.lo_spec import LOSpec

# A linear model on digits (P = 650, one factored and one unfactored tensor) keeps the
# compiles short; nothing below depends on the model's size.
TASK = make_image_mlp_task("digits", hidden_sizes=(), batch_size=16, augment=False)
P = 64 * 10 + 10
C = 4
M = 4  # buffer capacity (the default)


@pytest.fixture(scope="module", autouse=True)
def _quick_compiles():
    """XLA's backend optimizations take most of the compile time of these programs and
    change nothing the tests check (they compare within float tolerance)."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="module")
def data():
    return TASK.load_data()


class Core(NamedTuple):
    cfg: core.EnvConfig
    reset: Any
    step: Any


def _jit_core(cfg: core.EnvConfig) -> Core:
    return Core(
        cfg,
        jax.jit(functools.partial(core.reset, cfg)),
        jax.jit(functools.partial(core.step, cfg)),
    )


@pytest.fixture(scope="module")
def elo():
    """The paper's setting: shared buffer, uniform push, L2 behavior cloning."""
    return _jit_core(core.EnvConfig(task=TASK, num_copies=C))


@pytest.fixture(scope="module")
def variants():
    """The ELO authors' code: antithetic pairs with a queue each, failure-aware push,
    cosine + norm behavior cloning."""
    return _jit_core(
        core.EnvConfig(
            task=TASK,
            num_copies=C,
            paired=True,
            buffer_scope="pair",
            push_policy="failure_aware",
            bc_loss="cosine_norm",
        )
    )


def rows(tree):
    """Batched params pytree -> (C, P) rows."""
    return np.asarray(jax.vmap(core.flatten_rows)(tree), np.float64)


def lo_update(actions):
    """-step_mult * d * exp(exp_mult * m), computed independently of the core."""
    a = np.asarray(actions, np.float64)
    return -1e-3 * a[..., 0] * np.exp(1e-3 * a[..., 1])


def _random_actions(seed, scale=1.0, m_scale=100.0):
    d, m = jax.random.normal(jax.random.PRNGKey(seed), (2, C, P))
    return jnp.stack([scale * d, m_scale * m], axis=-1)


def _snapshot_rows(buf, q, slot):
    params = jax.tree.map(lambda x: x[q, slot], buf.snapshots.params)
    return np.asarray(core.flatten_rows(params), np.float64)


def _finite(tree):
    return all(
        bool(jnp.all(jnp.isfinite(x)))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.floating)
    )


class Step(NamedTuple):
    before: core.VecEnvState
    after: core.VecEnvState
    actions: jax.Array
    prev_info: dict  # info returned with the observation acted on
    info: dict
    reward: jax.Array
    terminated: np.ndarray
    truncated: np.ndarray


def _run(c: Core, p, steps, seed=0, policy=None):
    """Steps ``steps`` times (default: the expert's action); returns the record."""
    state, obs, info = c.reset(core.copy_keys(c.cfg, seed), p)
    record = []
    for t in range(steps):
        actions = info["expert_action"] if policy is None else policy(t, info)
        new, obs, reward, term, trunc, new_info = c.step(state, actions, p)
        record.append(
            Step(
                state,
                new,
                actions,
                info,
                new_info,
                reward,
                np.asarray(term),
                np.asarray(trunc),
            )
        )
        state, info = new, new_info
    return record


def _check_bookkeeping(record):
    """Inner steps count up within an episode; episodes end after exactly N steps."""
    for s in record:
        b, a = s.before.copies, s.after.copies
        done = s.terminated | s.truncated
        n, k, length = (
            np.asarray(x) for x in (b.inner_step, b.start_step, b.episode_length)
        )
        np.testing.assert_array_equal(
            s.truncated, (n + 1 - k == length) & ~s.terminated
        )
        np.testing.assert_array_equal(np.asarray(a.inner_step)[~done], n[~done] + 1)
        np.testing.assert_array_equal(np.asarray(a.start_step)[~done], k[~done])
        np.testing.assert_array_equal(
            np.asarray(a.inner_step)[done], np.asarray(a.start_step)[done]
        )


# --- config validation ---


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            dict(mode="bogus"),
            "unknown mode 'bogus'; valid: elo, naive, uniform, curriculum",
        ),
        (dict(buffer_scope="queue"), "unknown buffer_scope 'queue'"),
        (dict(push_policy="always"), "unknown push_policy 'always'"),
        (
            dict(bc_loss="l1"),
            "unknown bc_loss 'l1'; valid: l2, cosine_norm, l2_relative",
        ),
        (dict(meta_loss_split="test"), "unknown meta_loss_split 'test'; valid: train"),
        (dict(buffer_size=0), "buffer_size must be >= 1, got 0"),
        (dict(expert_learning_rate=0.0), "expert_learning_rate must be > 0, got 0.0"),
        (dict(num_copies=0), "num_copies must be >= 1"),
        (dict(num_copies=3, paired=True), "even num_copies, got 3"),
        (dict(num_copies=4, buffer_scope="pair"), "needs paired=True"),
        (dict(nominal_lr_spread=0.5), "nominal_lr_spread must be >= 1"),
        (dict(nominal_lr_spread=2.0), "this LO has none: set the LO's nominal_lr"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        core.EnvConfig(task=TASK, **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(p_th=1.5), r"p_th must be in \[0, 1\], got 1.5"),
        (dict(p_th=-0.1), r"p_th must be in \[0, 1\], got -0.1"),
        (dict(alpha=2.0), r"alpha must be in \[0, 1\]"),
        (dict(n_min=0), "n_min must be >= 1"),
        (dict(n_min=5, n_max=3), r"n_min \(5\) must be <= n_max \(3\)"),
        (dict(bc_scale=-1.0), "bc_scale must be >= 0"),
        (dict(bc_floor=1.5), r"bc_floor must be in \[0, 1\], got 1.5"),
    ],
)
def test_param_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        core.make_params(None, **kwargs)


def test_row_layout_round_trip():
    params = TASK.init(jax.random.PRNGKey(0))
    flat = core.flatten_rows(params)
    assert flat.shape == (core.num_params(TASK),) == (P,)
    back = core.unflatten_rows(TASK, flat)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    # Rows follow jax.tree.leaves order, each tensor in C order.
    np.testing.assert_array_equal(
        flat, np.concatenate([np.ravel(x) for x in jax.tree.leaves(params)])
    )


# --- reset / step: shapes and Eq. 8-10 ---


def test_reset_and_step_shapes_finite(elo, data):
    p = core.make_params(data, n_min=2, n_max=5)
    state, obs, info = elo.reset(core.copy_keys(elo.cfg, 0), p)
    assert obs["features"].shape == (C, P, lopt.NUM_FEATURES) == (C, P, 39)
    for name in ("inner_step", "loss", "alpha"):
        assert obs[name].shape == (C,) and obs[name].dtype == jnp.float32
    assert info["expert_action"].shape == (C, P, 2)
    assert info["expert_update"].shape == (C, P)
    for name in (
        "task_loss",
        "bc_loss",
        "inner_step",
        "start_step",
        "episode_length",
        "run_length",
        "from_buffer",
    ):
        assert info[name].shape == (C,), name
    assert _finite(obs) and _finite(info)
    np.testing.assert_array_equal(info["inner_step"], 0)
    np.testing.assert_array_equal(info["task_loss"], obs["loss"])

    state, obs, reward, term, trunc, info = elo.step(state, _random_actions(1), p)
    assert obs["features"].shape == (C, P, 39)
    assert reward.shape == term.shape == trunc.shape == (C,)
    assert term.dtype == trunc.dtype == jnp.bool_
    assert _finite(obs) and _finite(info) and _finite(reward)
    assert info["diverged"].shape == info["pushed"].shape == (C,)


def test_expert_action_reproduces_adam(elo, data):
    p = core.make_params(data, alpha=0.5, n_min=10, n_max=10, p_th=1.0)
    state, obs, info = elo.reset(core.copy_keys(elo.cfg, 1), p)
    c = state.copies
    # One gradient feeds both the expert and the LO's accumulators: after the first
    # gradient, Adam's first moment and each LO momentum are (1 - beta) * g.
    g = rows(c.grads)
    np.testing.assert_allclose(rows(c.adam[0].mu), 0.1 * g, rtol=1e-5, atol=1e-12)
    momentum = jax.tree.map(
        lambda acc: acc.momentum,
        c.lo.accumulators,
        is_leaf=lambda x: isinstance(x, lopt.TensorAccumulators),
    )
    for j, beta in enumerate(lopt.MOMENTUM_DECAYS):
        m = jax.vmap(core.flatten_rows)(
            # (copies, decays) + S: the accumulators are stored channels first.
            jax.tree.map(lambda x, j=j: x[:, j], momentum)
        )
        np.testing.assert_allclose(m, (1 - beta) * g, rtol=1e-4, atol=1e-12)

    adam = optax.adam(1e-3)
    ref_state = jax.vmap(adam.init)(c.params)
    for _ in range(3):
        update, ref_state = jax.vmap(adam.update)(
            state.copies.grads, ref_state, state.copies.params
        )
        np.testing.assert_allclose(
            info["expert_update"], rows(update), rtol=1e-4, atol=1e-10
        )
        expected = rows(state.copies.params) + rows(update)
        task_loss = np.asarray(obs["loss"])  # of the observation acted on
        state, obs, reward, term, trunc, info = elo.step(
            state, info["expert_action"], p
        )
        assert not np.any(term | trunc)
        np.testing.assert_allclose(
            rows(state.copies.params), expected, rtol=0, atol=1e-7
        )
        assert np.all(np.asarray(info["bc_loss"]) < 1e-12)
        np.testing.assert_allclose(info["task_loss"], task_loss)
        np.testing.assert_allclose(reward, -0.5 * task_loss, rtol=1e-6)


def test_alpha_one_applies_the_action_exactly(elo, data):
    p = core.make_params(data, alpha=1.0, n_min=10, n_max=10)
    state, obs, info = elo.reset(core.copy_keys(elo.cfg, 2), p)
    actions = _random_actions(3, scale=2.0, m_scale=500.0)  # exp(+-0.5..1.5) matters
    before = rows(state.copies.params)
    state, *_ = elo.step(state, actions, p)
    np.testing.assert_allclose(
        rows(state.copies.params), before + lo_update(actions), rtol=0, atol=1e-7
    )


def test_reward_is_minus_the_meta_loss(elo, data):
    p = core.make_params(data, alpha=0.3, n_min=10, n_max=10)
    state, obs, info = elo.reset(core.copy_keys(elo.cfg, 4), p)
    actions = _random_actions(5)
    lo, expert = lo_update(actions), np.asarray(info["expert_update"], np.float64)
    bc = np.sum((lo - expert) ** 2, axis=1)
    task = np.asarray(obs["loss"])  # L_task(theta_n), before the update
    before = rows(state.copies.params)
    new, _, reward, _, _, step_info = elo.step(state, actions, p)
    np.testing.assert_allclose(step_info["bc_loss"], bc, rtol=1e-5)
    np.testing.assert_allclose(step_info["task_loss"], task)
    np.testing.assert_allclose(reward, -(0.7 * bc + 0.3 * task), rtol=1e-5)
    # Eq. 8: theta_{n+1} = (1 - alpha) theta_H + alpha theta_O.
    np.testing.assert_allclose(
        rows(new.copies.params), before + 0.7 * expert + 0.3 * lo, rtol=0, atol=1e-7
    )
    # bc_scale weighs L_bc (a leaf: no recompile).
    _, _, scaled, _, _, _ = elo.step(
        state, actions, p.replace(bc_scale=jnp.float32(2.0))
    )
    np.testing.assert_allclose(scaled, -(0.7 * 2.0 * bc + 0.3 * task), rtol=1e-5)
    # bc_floor: the BC weight is max(1 - alpha, floor); below 1 - alpha it is inert.
    floored, _, at_floor, _, _, _ = elo.step(
        state, actions, p.replace(alpha=jnp.float32(0.9), bc_floor=jnp.float32(0.25))
    )
    np.testing.assert_allclose(at_floor, -(0.25 * bc + 0.9 * task), rtol=1e-5)
    # Eq. 8's mixing still follows alpha alone.
    np.testing.assert_allclose(
        rows(floored.copies.params), before + 0.1 * expert + 0.9 * lo, atol=1e-7
    )
    _, _, inert, _, _, _ = elo.step(
        state, actions, p.replace(bc_floor=jnp.float32(0.25))
    )
    np.testing.assert_allclose(inert, reward, rtol=1e-6)
    assert elo.step._cache_size() == 1


def _count_loss_calls(monkeypatch, fn, *args):
    calls = []
    original = ImageMLPTask.train_loss

    def counted(self, params, model_state, batch):
        calls.append(1)
        return original(self, params, model_state, batch)

    monkeypatch.setattr(ImageMLPTask, "train_loss", counted)
    jax.eval_shape(fn, *args)
    monkeypatch.setattr(ImageMLPTask, "train_loss", original)
    return len(calls)


def test_task_gradient_is_computed_once_per_step(elo, data, monkeypatch):
    p = core.make_params(data)
    keys = core.copy_keys(elo.cfg, 0)
    assert (
        _count_loss_calls(monkeypatch, functools.partial(core.reset, elo.cfg), keys, p)
        == 1
    )
    state, _, _ = jax.eval_shape(functools.partial(core.reset, elo.cfg), keys, p)
    actions = jax.ShapeDtypeStruct((C, P, 2), jnp.float32)
    step = functools.partial(core.step, elo.cfg)
    assert _count_loss_calls(monkeypatch, step, state, actions, p) == 1
    # final_obs adds one gradient, taken only on steps where some copy finishes.
    step_final = functools.partial(core.step, elo.cfg, final_obs=True)
    assert _count_loss_calls(monkeypatch, step_final, state, actions, p) == 2


# --- Algorithm 1: episode lengths and the reset distribution ---


def _lengths(mode, p, n=4000):
    cfg = core.EnvConfig(task=TASK, mode=mode)
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    f = jax.jit(jax.vmap(functools.partial(core._sample_length, cfg), (0, None)))
    return np.asarray(f(keys, p)), f


@pytest.mark.parametrize("mode", ["elo", "uniform"])
def test_uniform_lengths_cover_n_min_to_n_max(mode):
    n, _ = _lengths(mode, core.make_params(None, n_min=3, n_max=12))
    values, counts = np.unique(n, return_counts=True)
    assert values.tolist() == list(range(3, 13))
    assert counts.min() > 0.7 * len(n) / 10


def test_naive_lengths_are_log_uniform_in_open_closed_range():
    p = core.make_params(None, n_min=10, n_max=1000)
    naive, _ = _lengths("naive", p)
    uniform, _ = _lengths("elo", p)
    assert naive.min() > 10 and naive.max() <= 1000 and naive.max() > 900
    # Log-uniform: P[N <= 100] = log(10) / log(100) = 0.5; uniform: about 0.09.
    assert 0.45 < np.mean(naive <= 100) < 0.55
    assert np.mean(uniform <= 100) < 0.12
    # Equal mass per decade, so far more short episodes than under uniform.
    assert 0.45 < np.mean((naive > 100) & (naive <= 1000)) < 0.55
    assert np.median(naive) < np.median(uniform) / 3


def test_curriculum_n_max_is_a_param_not_a_recompile():
    short, f = _lengths("curriculum", core.make_params(None, n_min=1, n_max=20))
    long, _ = _lengths("curriculum", core.make_params(None, n_min=1, n_max=500))
    assert short.max() == 20 and long.max() > 400
    g = jax.jit(
        jax.vmap(
            functools.partial(
                core._sample_length, core.EnvConfig(task=TASK, mode="curriculum")
            ),
            (0, None),
        )
    )
    keys = jax.random.split(jax.random.PRNGKey(0), 16)
    for n_max in (20, 50, 500):
        assert int(g(keys, core.make_params(None, n_min=1, n_max=n_max)).max()) <= n_max
    assert g._cache_size() == 1


@pytest.fixture(scope="module")
def begin_episode(data):
    """Jitted episode starts (Alg. 1) for many keys, elo and naive, and a buffer
    holding one snapshot at inner step 50."""
    starts = {}
    for mode in ("elo", "naive"):
        cfg = core.EnvConfig(task=TASK, mode=mode)
        starts[mode] = jax.jit(
            jax.vmap(functools.partial(core._begin_episode, cfg), (0, None, None, None))
        )
    cfg = core.EnvConfig(task=TASK)
    snap = core._fresh_snapshot(cfg, jax.random.PRNGKey(9))
    snap = snap.replace(lo=snap.lo._replace(count=jnp.int32(50)))
    empty = replay.init_buffer(snap, M)
    batched = jax.tree.map(lambda x: x[None], snap)
    full = replay.push(empty, batched, jnp.array([True]), jnp.zeros(1, jnp.int32))
    return starts, empty, full, snap


def test_restore_needs_a_filled_buffer_u_above_p_th_and_t_positive(begin_episode, data):
    starts, empty, full, snap = begin_episode
    keys = jax.random.split(jax.random.PRNGKey(1), 2000)
    q = jnp.int32(0)

    def frac(mode, buf, **kw):
        p = core.make_params(data, **{"p_th": 0.2, "n_min": 5, "n_max": 9, **kw})
        stored, episode = starts[mode](keys, buf, q, p)
        restored = np.asarray(episode.from_buffer)
        # Restored episodes start at the snapshot's step K with its params; fresh
        # ones at K = 0. N_push lies in {K+1, ..., K+N}.
        k, n = np.asarray(episode.start_step), np.asarray(episode.episode_length)
        np.testing.assert_array_equal(k, np.where(restored, 50, 0))
        np.testing.assert_array_equal(stored.lo.count, k)
        push = np.asarray(episode.push_step)
        assert np.all((push >= k + 1) & (push <= k + n))
        if restored.any():
            i = int(np.flatnonzero(restored)[0])
            for a, b in zip(
                jax.tree.leaves(jax.tree.map(lambda x: x[i], stored)),
                jax.tree.leaves(snap),
                strict=True,
            ):
                np.testing.assert_array_equal(a, b)
        return restored.mean()

    assert frac("elo", full, p_th=0.0) == 1.0
    assert frac("elo", full, p_th=1.0) == 0.0
    assert 0.75 < frac("elo", full, p_th=0.2) < 0.85  # P[u > 0.2] = 0.8
    assert frac("elo", full, p_th=0.0, outer_step=0) == 0.0  # t = 0: never
    assert frac("elo", empty, p_th=0.0) == 0.0  # nothing to restore
    assert frac("naive", full, p_th=0.0) == 0.0  # naive: always a fresh init
    assert starts["elo"]._cache_size() == 1


def _pushed_rows(s: Step, alpha=0.0):
    """The snapshot each copy reaches in step s: theta + (1-alpha) dH + alpha dO."""
    return (
        rows(s.before.copies.params)
        + (1 - alpha) * np.asarray(s.prev_info["expert_update"], np.float64)
        + alpha * lo_update(s.actions)
    )


def _check_fifo(record, queue_of, num_queues, alpha=0.0):
    """Replays the pushes into per-queue FIFO models and compares with the buffer."""
    model = [[] for _ in range(num_queues)]
    for s in record:
        pushed = np.asarray(s.info["pushed"])
        reached = _pushed_rows(s, alpha)
        counts = np.asarray(s.before.copies.inner_step) + 1
        for i in np.flatnonzero(pushed):  # in copy order
            model[queue_of(i)].append((reached[i], counts[i]))
        buf = s.after.buffer
        for q in range(num_queues):
            assert int(buf.size[q]) == min(len(model[q]), M)
            assert int(buf.head[q]) == len(model[q]) % M
            assert np.all(np.isfinite(rows(buf.snapshots.params)))  # never non-finite
    buf = record[-1].after.buffer
    for q in range(num_queues):
        for j, (params, count) in enumerate(model[q][-M:]):
            slot = (len(model[q]) - min(len(model[q]), M) + j) % M
            np.testing.assert_allclose(
                _snapshot_rows(buf, q, slot), params, rtol=0, atol=1e-6
            )
            assert int(buf.snapshots.lo.count[q, slot]) == count
    return model


def test_push_once_per_episode_at_n_push_fifo(elo, data):
    p = core.make_params(data, n_min=2, n_max=5, p_th=1.0)
    record = _run(elo, p, 24, seed=5)
    _check_bookkeeping(record)
    pushes_this_episode = np.zeros(C, int)
    for s in record:
        b = s.before.copies
        due = np.asarray(b.inner_step + 1 == b.push_step)
        np.testing.assert_array_equal(s.info["pushed"], due)
        pushes_this_episode += due
        done = s.terminated | s.truncated
        np.testing.assert_array_equal(pushes_this_episode[done], 1)
        pushes_this_episode[done] = 0
        assert not np.any(s.after.copies.from_buffer)  # p_th = 1: never restored
    model = _check_fifo(record, lambda i: 0, 1)
    assert len(model[0]) > M  # the FIFO wrapped around


def test_restores_once_filled_and_continue_counting_from_k(elo, data):
    p = core.make_params(data, n_min=2, n_max=5, p_th=0.0)
    record = _run(elo, p, 24, seed=6)
    _check_bookkeeping(record)
    _check_fifo(record, lambda i: 0, 1)
    assert not np.any(record[0].before.copies.from_buffer)  # empty buffer at reset
    restored = 0
    for s in record:
        done = s.terminated | s.truncated
        a = s.after.copies
        filled = int(s.after.buffer.size[0]) > 0
        np.testing.assert_array_equal(np.asarray(a.from_buffer)[done], filled)
        for i in np.flatnonzero(done & np.asarray(a.from_buffer)):
            restored += 1
            k = int(a.start_step[i])
            assert k > 0 and int(a.inner_step[i]) == k
            stored = [_snapshot_rows(s.after.buffer, 0, j) for j in range(M)]
            assert any(np.array_equal(rows(a.params)[i], x) for x in stored)
    assert restored > 3
    # The restored episodes ran N steps from K (checked by _check_bookkeeping) and
    # the inner step counts beyond any single episode's length.
    assert max(int(s.after.copies.inner_step.max()) for s in record) > 5

    # t = 0: the same run never restores, however full the buffer.
    record = _run(elo, p.replace(outer_step=jnp.int32(0)), 12, seed=6)
    assert int(record[-1].after.buffer.size[0]) > 0
    assert not any(np.any(s.after.copies.from_buffer) for s in record)


# --- divergence ---


def test_divergence_terminates_resets_and_isolates_the_copy(elo, data):
    p = core.make_params(data, alpha=0.5, n_min=10, n_max=10, p_th=1.0)
    state, obs, info = elo.reset(core.copy_keys(elo.cfg, 7), p)
    state, obs, _, _, _, info = elo.step(state, info["expert_action"], p)
    # Every copy is due to push in the next step, so a push by copy 0 would show.
    state = state.replace(
        copies=state.copies.replace(push_step=state.copies.inner_step + 1)
    )
    good = info["expert_action"]
    bad = good.at[0].set(jnp.stack([jnp.full((P,), 1e30), jnp.full((P,), 1e5)], -1))

    ref, ref_obs, ref_reward, ref_term, ref_trunc, ref_info = elo.step(state, good, p)
    new, new_obs, reward, term, trunc, new_info = elo.step(state, bad, p)
    assert not np.any(ref_term | ref_trunc) and np.all(ref_info["pushed"])

    np.testing.assert_array_equal(term, [True, False, False, False])
    np.testing.assert_array_equal(new_info["diverged"], term)
    assert not np.any(trunc)
    # Kept out of the buffer: only the three healthy copies pushed.
    np.testing.assert_array_equal(new_info["pushed"], [False, True, True, True])
    assert int(new.buffer.size[0]) == int(state.buffer.size[0]) + 3
    assert np.all(np.isfinite(rows(new.buffer.snapshots.params)))
    # Reset: a fresh episode (p_th = 1) with finite params and observation.
    c0 = jax.tree.map(lambda x: x[0], new.copies)
    assert int(c0.inner_step) == int(c0.start_step) == 0
    assert _finite(c0.params) and _finite(jax.tree.map(lambda x: x[0], new_obs))
    assert float(new_obs["inner_step"][0]) == 0.0
    assert not bool(c0.from_buffer)
    # The other copies are exactly as in the run without the divergence.
    for a, b in zip(
        jax.tree.leaves(new.copies), jax.tree.leaves(ref.copies), strict=True
    ):
        np.testing.assert_array_equal(a[1:], b[1:])
    for a, b in zip(jax.tree.leaves(new_obs), jax.tree.leaves(ref_obs), strict=True):
        np.testing.assert_array_equal(a[1:], b[1:])
    np.testing.assert_array_equal(reward[1:], ref_reward[1:])


# --- the official code's variants ---


def test_bc_loss_values_on_hand_examples():
    l2 = core.EnvConfig(task=TASK)
    cos = core.EnvConfig(task=TASK, num_copies=2, paired=True, bc_loss="cosine_norm")
    x, y = jnp.array([1.0, 0.0]), jnp.array([0.0, 2.0])
    assert float(core._bc_loss(l2, x, y)) == pytest.approx(5.0)
    # 0.7 (1 - cos) + 0.3 |norm ratio - 1|
    assert float(core._bc_loss(cos, x, y)) == pytest.approx(0.7 * 1 + 0.3 * 0.5)
    assert float(core._bc_loss(cos, 2 * y, y)) == pytest.approx(0.3 * 1.0)
    assert float(core._bc_loss(cos, -y, y)) == pytest.approx(0.7 * 2.0)
    assert float(core._bc_loss(cos, y, y)) == pytest.approx(0.0, abs=1e-6)
    # Eq. 9 over ||dtheta_H||^2: the same value for an optimizee 100x larger.
    rel = core.EnvConfig(task=TASK, bc_loss="l2_relative")
    assert float(core._bc_loss(rel, x, y)) == pytest.approx(5.0 / 4.0)
    big_x, big_y = jnp.tile(x, 100), jnp.tile(y, 100)
    assert float(core._bc_loss(rel, big_x, big_y)) == pytest.approx(5.0 / 4.0)
    assert float(core._bc_loss(l2, big_x, big_y)) == pytest.approx(500.0)


def test_valid_meta_loss_scores_a_held_out_batch(data):
    """meta_loss_split='valid': the reward's task term is the loss of the same params
    on a validation batch, while the gradient still comes from the training batch."""
    cfg = core.EnvConfig(task=TASK, num_copies=2, meta_loss_split="valid")
    held_out = _jit_core(cfg)
    p = core.make_params(data, alpha=0.4, n_min=10, n_max=10)
    keys = core.copy_keys(cfg, 3)
    state, obs, info = held_out.reset(keys, p)
    # The held-out batch, drawn independently of the core from the copy's batch key.
    copy = jax.tree.map(lambda x: x[0], state.copies)
    k_batch = jax.random.split(keys[0], 3)[2]
    batch = TASK.sample_batch(data, jax.random.fold_in(k_batch, 1), "valid")
    expected = TASK.train_loss(copy.params, {}, batch)[0]
    train_loss = np.asarray(obs["loss"])
    valid_loss = np.asarray(state.copies.meta_task_loss)
    np.testing.assert_allclose(valid_loss[0], expected, rtol=1e-6)
    assert not np.allclose(train_loss, valid_loss)  # another batch, another loss
    actions = _random_actions(7)[:2]
    lo, expert = lo_update(actions), np.asarray(info["expert_update"], np.float64)
    bc = np.sum((lo - expert) ** 2, axis=1)
    _, _, reward, _, _, step_info = held_out.step(state, actions, p)
    np.testing.assert_allclose(step_info["task_loss"], train_loss)
    np.testing.assert_allclose(step_info["meta_task_loss"], valid_loss)
    np.testing.assert_allclose(reward, -(0.6 * bc + 0.4 * valid_loss), rtol=1e-5)


def test_log_meta_loss_takes_the_log_of_the_task_term(data):
    """meta_loss_log: the reward's task term is log L of the same batch's loss, while
    the logged task loss and the optimizee's step stay as without it."""
    plain = _jit_core(core.EnvConfig(task=TASK, num_copies=2))
    logged = _jit_core(core.EnvConfig(task=TASK, num_copies=2, meta_loss_log=True))
    p = core.make_params(data, alpha=0.4, n_min=10, n_max=10)
    keys = core.copy_keys(plain.cfg, 3)
    state, obs, info = plain.reset(keys, p)
    log_state, log_obs, _ = logged.reset(keys, p)
    loss = np.asarray(obs["loss"])
    np.testing.assert_allclose(log_obs["loss"], loss)
    np.testing.assert_allclose(log_state.copies.meta_task_loss, np.log(loss), rtol=1e-6)
    actions = _random_actions(7)[:2]
    lo, expert = lo_update(actions), np.asarray(info["expert_update"], np.float64)
    bc = np.sum((lo - expert) ** 2, axis=1)
    new, _, _, _, _, _ = plain.step(state, actions, p)
    log_new, _, reward, _, _, step_info = logged.step(log_state, actions, p)
    np.testing.assert_allclose(step_info["task_loss"], loss)
    np.testing.assert_allclose(reward, -(0.6 * bc + 0.4 * np.log(loss)), rtol=1e-5)
    np.testing.assert_allclose(
        rows(log_new.copies.params), rows(new.copies.params), rtol=0, atol=0
    )


def test_cosine_norm_bc_is_zero_for_the_expert_action(variants, data):
    p = core.make_params(data, alpha=0.25, n_min=10, n_max=10, p_th=1.0)
    state, obs, info = variants.reset(core.copy_keys(variants.cfg, 0), p)
    state, _, reward, _, _, step_info = variants.step(state, info["expert_action"], p)
    assert np.all(np.abs(np.asarray(step_info["bc_loss"])) < 1e-5)
    np.testing.assert_allclose(
        reward,
        -(0.75 * np.asarray(step_info["bc_loss"]) + 0.25 * np.asarray(obs["loss"])),
        rtol=1e-6,
    )
    _, _, _, _, _, step_info = variants.step(state, _random_actions(2), p)
    assert np.all(np.asarray(step_info["bc_loss"]) > 0.1)


def _antithetic(t, info):
    """Partners get expert +- noise, as PES perturbations would make them differ."""
    noise = _random_actions(100 + t, scale=0.5, m_scale=50.0)[::2]
    signs = jnp.array([1.0, -1.0] * (C // 2))[:, None, None]
    return info["expert_action"] + signs * jnp.repeat(noise, 2, axis=0)


def test_paired_copies_share_draws_and_end_together(variants, data):
    p = core.make_params(data, alpha=0.5, n_min=2, n_max=6, p_th=0.0)
    record = _run(variants, p, 24, seed=3, policy=_antithetic)
    _check_bookkeeping(record)
    first = record[0].before.copies
    np.testing.assert_array_equal(rows(first.params)[0], rows(first.params)[1])
    assert not np.array_equal(rows(first.params)[0], rows(first.params)[2])
    np.testing.assert_array_equal(first.loss[0], first.loss[1])  # same batch
    ended = 0
    for s in record:
        for x in (
            s.terminated | s.truncated,
            s.after.copies.start_step,
            s.after.copies.episode_length,
            s.after.copies.push_step,
            s.after.copies.from_buffer,
            s.after.copies.key,
            s.after.copies.inner_step,
        ):
            x = np.asarray(x)
            np.testing.assert_array_equal(x[0::2], x[1::2])
        done = s.terminated | s.truncated
        ended += int(np.sum(done))
        if not done[0]:  # the perturbations make partners' params differ
            after = rows(s.after.copies.params)
            assert not np.array_equal(after[0], after[1])
    assert ended >= C


def test_pair_scope_keeps_one_queue_per_pair(variants, data):
    p = core.make_params(data, alpha=0.5, n_min=2, n_max=6, p_th=0.0)
    record = _run(variants, p, 24, seed=4, policy=_antithetic)
    model = _check_fifo(record, lambda i: i // 2, C // 2, alpha=0.5)
    assert all(len(q) > 0 for q in model)
    restored = 0
    for s in record:
        a = s.after.copies
        for i in np.flatnonzero(
            (s.terminated | s.truncated) & np.asarray(a.from_buffer)
        ):
            restored += 1
            own = [
                _snapshot_rows(s.after.buffer, i // 2, j)
                for j in range(int(s.after.buffer.size[i // 2]))
            ]
            assert any(np.array_equal(rows(a.params)[i], x) for x in own)
    assert restored > 0


def test_failure_aware_push_at_a_loss_rise(variants, data):
    p = core.make_params(data, alpha=1.0, n_min=50, n_max=50, p_th=1.0)
    state, obs, info = variants.reset(core.copy_keys(variants.cfg, 0), p)
    # With this seed, the uniform fallback N_push comes much later.
    assert np.all(np.asarray(state.copies.push_step) > 5)

    def ascend(info):  # move along +grad: d = -100 d*, so theta += 0.1 sign(g)
        return info["expert_action"] * jnp.array([-100.0, 1.0])

    losses, pushed = [], []
    for actions in (lambda i: i["expert_action"], ascend, lambda i: i["expert_action"]):
        state, obs, _, term, trunc, step_info = variants.step(state, actions(info), p)
        info = step_info
        losses.append(np.asarray(step_info["task_loss"]))
        pushed.append(np.asarray(step_info["pushed"]))
        assert not np.any(term | trunc)
    # Step 2 moved theta uphill; step 3 sees the rise in its pre-update loss.
    assert np.all(losses[2] > 1.2 * losses[1])
    assert not pushed[0].any() and not pushed[1].any()
    assert pushed[2].all()
    np.testing.assert_array_equal(state.buffer.size, [2, 2])
    np.testing.assert_array_equal(state.buffer.snapshots.lo.count[:, :2], 3)


def test_the_demonstrator_learning_rate_scales_the_expert(data):
    """Adam's first step moves every parameter with a nonzero gradient by about its
    learning rate: the expert follows ``expert_learning_rate``."""
    p = core.make_params(data, n_min=10, n_max=10)
    for lr in (1e-3, 4e-3):
        cfg = core.EnvConfig(task=TASK, num_copies=2, expert_learning_rate=lr)
        _, _, info = jax.jit(functools.partial(core.reset, cfg))(
            core.copy_keys(cfg, 0), p
        )
        moves = np.abs(np.asarray(info["expert_update"]))
        assert moves.max() == pytest.approx(lr, rel=1e-3)
        assert np.median(moves[moves > 0]) == pytest.approx(lr, rel=0.05)


def test_the_expert_learning_rate_decays_with_the_inner_step(data):
    """expert_decay_steps tau: at inner step n the expert's update is the constant
    expert's times 1 / sqrt(1 + n / tau). With alpha = 1 and zero actions the params
    never move, so both experts see the same gradients and only the lr differs."""
    p = core.make_params(data, n_min=50, n_max=50, alpha=1.0)
    tau, steps = 4.0, 6
    updates = {}
    for decay in (0.0, tau):
        cfg = core.EnvConfig(task=TASK, num_copies=2, expert_decay_steps=decay)
        state, _, info = core.reset(cfg, core.copy_keys(cfg, 0), p)
        zeros = jnp.zeros((2, core.num_params(TASK), 2))
        step = jax.jit(functools.partial(core.step, cfg))
        for _ in range(steps):
            state, _, _, _, _, info = step(state, zeros, p)
        np.testing.assert_array_equal(info["inner_step"], steps)
        updates[decay] = np.asarray(info["expert_update"])
    moving = np.abs(updates[0.0]) > 1e-7
    np.testing.assert_allclose(
        updates[tau][moving] / updates[0.0][moving],
        1.0 / np.sqrt(1.0 + steps / tau),
        rtol=1e-4,
    )
    with pytest.raises(ValueError, match="expert_decay_steps must be >= 0"):
        core.EnvConfig(task=TASK, expert_decay_steps=-1.0)


def _after_two_expert_steps(cfg, data):
    """(jitted step, params, state, info) after two steps along the expert's actions,
    so that the LO's accumulators hold several gradients."""
    reset = jax.jit(functools.partial(core.reset, cfg))
    step = jax.jit(functools.partial(core.step, cfg))
    p = core.make_params(data, alpha=1.0, n_min=10, n_max=10, p_th=1.0)
    state, _, info = reset(core.copy_keys(cfg, 3), p)
    for _ in range(2):
        state, _, _, _, _, info = step(state, info["expert_action"], p)
    return step, p, state, info


def _accumulator_leaves(state):
    """The copies' per-tensor ``lopt.TensorAccumulators``, in ``flatten_rows`` order."""
    return jax.tree.leaves(
        state.copies.lo.accumulators,
        is_leaf=lambda x: isinstance(x, lopt.TensorAccumulators),
    )


def test_adam_scaled_step_scales_the_action_and_the_expert(data):
    """adam_scaled_step: an action moves each tensor by the Eq. 2 step times the RMS
    over the tensor of m_0.9 / sqrt(r + 1e-6) (computed here from the accumulators),
    and the expert's action, divided by that factor, still reproduces Adam."""
    cfg = core.EnvConfig(task=TASK, num_copies=C, lo=LOSpec(adam_scaled_step=True))
    step, p, state, info = _after_two_expert_steps(cfg, data)
    factors = []
    for acc, param in zip(
        _accumulator_leaves(state), jax.tree.leaves(state.copies.params), strict=True
    ):
        m0 = np.asarray(acc.momentum[:, 0], np.float64)
        ratio = m0 / np.sqrt(np.asarray(acc.rms[:, 0], np.float64) + 1e-6)
        axes = tuple(range(1, ratio.ndim))
        rms = np.sqrt(1e-5 + np.mean(ratio**2, axis=axes))  # (C,)
        factors.append(np.repeat(rms[:, None], param[0].size, axis=1))
    factor = np.concatenate(factors, axis=1)  # (C, P), in flatten_rows' order
    assert not np.allclose(factor, 1.0, rtol=0.05)  # the factor is not a no-op
    actions = _random_actions(4, scale=2.0, m_scale=500.0)
    before = rows(state.copies.params)
    expert_update = np.asarray(info["expert_update"], np.float64)
    expert_action = info["expert_action"]
    moved, *_ = step(state, actions, p)
    np.testing.assert_allclose(
        rows(moved.copies.params),
        before + lo_update(actions) * factor,
        rtol=0,
        atol=1e-7,
    )
    moved, _, _, _, _, step_info = step(state, expert_action, p)
    np.testing.assert_allclose(
        rows(moved.copies.params), before + expert_update, rtol=0, atol=1e-7
    )
    assert np.all(np.asarray(step_info["bc_loss"]) < 1e-12)


NOMINAL_LR, NOMINAL_TAU = 0.02, 100.0


def _nominal_as_expert(nominal_norm_step=False, tangential_step=False, **settings):
    """An env whose LO's nominal term is the expert (Adam at the same lr and decay)."""
    lo = LOSpec(
        nominal_lr=NOMINAL_LR,
        nominal_decay_steps=NOMINAL_TAU,
        nominal_norm_step=nominal_norm_step,
        tangential_step=tangential_step,
    )
    return core.EnvConfig(
        task=TASK,
        num_copies=C,
        expert_learning_rate=NOMINAL_LR,
        expert_decay_steps=NOMINAL_TAU,
        lo=lo,
        **settings,
    )


@pytest.mark.parametrize("spread", [1.0, 4.0])
def test_nominal_term_is_added_to_the_action_and_taken_from_the_expert(data, spread):
    """nominal_lr: an action moves the params by Adam's step at the nominal lr
    (computed here from the accumulators) plus the Eq. 2 step; with the expert's own
    lr and decay as the nominal term, the expert's action is what the nominal term
    leaves of the expert's update (zero without a spread) and still moves the params
    as Adam does. With a spread, each copy's nominal term is scaled by its episode's
    factor in [1/spread, spread], paired copies alike."""
    lr, tau = NOMINAL_LR, NOMINAL_TAU
    cfg = _nominal_as_expert(paired=True, nominal_lr_spread=spread)
    step, p, state, info = _after_two_expert_steps(cfg, data)
    factor = np.asarray(state.copies.nominal_scale, np.float64)  # (C,)
    assert np.all((1.0 / spread <= factor) & (factor <= spread))
    np.testing.assert_array_equal(factor[0::2], factor[1::2])
    if spread > 1.0:
        assert len(np.unique(factor)) == C // 2  # the pairs' episodes draw their own
    n = np.asarray(state.copies.lo.count, np.float64)  # (C,) steps taken: 2
    t = (n + 1.0)[:, None]
    nominal = []
    for acc in _accumulator_leaves(state):
        m = np.asarray(acc.momentum[:, 0], np.float64).reshape(C, -1)
        r = np.asarray(acc.rms[:, 0], np.float64).reshape(C, -1)
        adam = (m / (1 - 0.9**t)) / (np.sqrt(r / (1 - 0.999**t)) + 1e-8)
        nominal.append(-lr / np.sqrt(1.0 + n / tau)[:, None] * adam)
    nominal = np.concatenate(nominal, axis=1)  # (C, P), in flatten_rows' order
    assert np.abs(nominal).max() > 1e-3
    before = rows(state.copies.params)
    expert_update = np.asarray(info["expert_update"], np.float64)
    np.testing.assert_allclose(expert_update, nominal, rtol=1e-4, atol=1e-7)
    if spread == 1.0:
        assert np.abs(np.asarray(info["expert_action"])).max() < 1e-2
    actions = _random_actions(4, scale=2.0, m_scale=500.0)
    moved, *_ = step(state, actions, p)
    np.testing.assert_allclose(
        rows(moved.copies.params),
        before + factor[:, None] * nominal + lo_update(actions),
        rtol=0,
        atol=1e-6,
    )
    moved, _, _, _, _, step_info = step(state, info["expert_action"], p)
    np.testing.assert_allclose(
        rows(moved.copies.params), before + expert_update, rtol=0, atol=1e-7
    )
    assert np.all(np.asarray(step_info["bc_loss"]) < 1e-10)


@pytest.mark.parametrize("tangential_step", [False, True])
def test_nominal_norm_step_moves_each_tensor_by_its_nominal_norm(data, tangential_step):
    """nominal_norm_step: an action moves each tensor of each copy along the nominal
    term plus the Eq. 2 step, rescaled to the nominal term's norm (computed here per
    tensor from the expert, which is the nominal term); with tangential_step the Eq. 2
    step first loses its component along the tensor's params. The expert's action
    still moves the params as Adam does."""
    cfg = _nominal_as_expert(nominal_norm_step=True, tangential_step=tangential_step)
    step, p, state, info = _after_two_expert_steps(cfg, data)
    nominal = np.asarray(info["expert_update"], np.float64)  # (C, P)
    before = rows(state.copies.params)
    actions = _random_actions(4, scale=20.0, m_scale=500.0)
    learned = lo_update(actions)
    sizes = [param[0].size for param in jax.tree.leaves(state.copies.params)]
    assert len(sizes) >= 2
    expected = []
    for start, stop in zip(np.cumsum([0] + sizes[:-1]), np.cumsum(sizes)):
        piece, target = learned[:, start:stop], nominal[:, start:stop]
        if tangential_step:
            w = before[:, start:stop]
            along = np.sum(piece * w, axis=1, keepdims=True)
            piece = piece - along / np.sum(w * w, axis=1, keepdims=True) * w
        piece = piece + target
        norm = np.linalg.norm(piece, axis=1, keepdims=True)
        expected.append(piece * np.linalg.norm(target, axis=1, keepdims=True) / norm)
    expected = np.concatenate(expected, axis=1)
    assert not np.allclose(expected, nominal, atol=1e-4)  # the action turned it
    moved, *_ = step(state, actions, p)
    np.testing.assert_allclose(
        rows(moved.copies.params), before + expected, rtol=0, atol=1e-6
    )
    moved, *_ = step(state, info["expert_action"], p)  # rescaled by 1 +- float32 eps
    np.testing.assert_allclose(
        rows(moved.copies.params), before + nominal, rtol=0, atol=1e-6
    )


def test_a_cosine_expert_and_a_relative_time_lo_read_the_episode_length(data):
    """expert_schedule cosine: at inner step n of an episode of N steps the expert's
    update is the constant expert's times relative_warmup_cosine(n, N) / lr; a
    relative-time LO observes the step features of n * time_horizon / N, and its
    cosine nominal term's lr is read there too (the expert's action is what the
    nominal term leaves of the expert's update)."""
    n_steps, steps = 40, 6
    clock = steps * 200.0 / n_steps
    p = core.make_params(data, n_min=n_steps, n_max=n_steps, alpha=1.0)
    nominal = LOSpec(time_horizon=200.0, nominal_lr=0.02, nominal_schedule="cosine")
    specs = {
        "inverse_sqrt": LOSpec(),
        "cosine": LOSpec(time_horizon=200.0),
        "nominal": nominal,
    }
    updates, features, actions = {}, {}, {}
    for name, spec in specs.items():
        cfg = core.EnvConfig(
            task=TASK,
            num_copies=2,
            expert_schedule="inverse_sqrt" if name == "inverse_sqrt" else "cosine",
            lo=spec,
        )
        state, obs, info = core.reset(cfg, core.copy_keys(cfg, 0), p)
        zeros = jnp.zeros((2, core.num_params(TASK), 2))
        step = jax.jit(functools.partial(core.step, cfg))
        for _ in range(steps):
            state, obs, _, _, _, info = step(state, zeros, p)
        updates[name] = np.asarray(info["expert_update"])
        features[name] = np.asarray(obs["features"])
        actions[name] = np.asarray(info["expert_action"])
    moving = np.abs(updates["inverse_sqrt"]) > 1e-7
    lr = float(schedules.relative_warmup_cosine(1e-3, steps, n_steps))
    np.testing.assert_allclose(
        updates["cosine"][moving] / updates["inverse_sqrt"][moving],
        lr / 1e-3,
        rtol=1e-4,
    )
    np.testing.assert_allclose(
        features["cosine"][..., 28:],
        np.broadcast_to(
            lopt.step_features(jnp.float32(clock)),
            features["cosine"][..., 28:].shape,
        ),
        rtol=1e-6,
    )
    np.testing.assert_array_equal(
        features["cosine"][..., :28], features["inverse_sqrt"][..., :28]
    )
    # The expert and the nominal term are both Adam on the same gradients: the
    # nominal term is the expert's update times the ratio of their lrs.
    nominal_lr = float(schedules.relative_warmup_cosine(0.02, clock, 200.0))
    np.testing.assert_allclose(
        actions["nominal"][..., 0] * -nominal.step_mult,
        updates["nominal"] * (1.0 - nominal_lr / lr),
        rtol=1e-3,
        atol=1e-9,
    )
    with pytest.raises(ValueError, match="cosine expert decays"):
        core.EnvConfig(task=TASK, expert_schedule="cosine", expert_decay_steps=10.0)


def test_expert_b2_is_the_demonstrator_adams_second_moment_decay(data):
    """expert_b2: the expert's update is ``optax.adam`` at that b2 on the gradients
    the copy met (first steps of Adam do not depend on b2, so several are taken),
    and a b2 outside (0, 1) is refused."""
    p = core.make_params(data, n_min=20, n_max=20, alpha=1.0)
    updates = {}
    for b2 in (0.95, 0.999):
        cfg = core.EnvConfig(task=TASK, expert_learning_rate=1e-3, expert_b2=b2)
        state, _, info = core.reset(cfg, core.copy_keys(cfg, 0), p)
        step = jax.jit(functools.partial(core.step, cfg))
        grads = [jax.tree.map(lambda g: g[0], state.copies.grads)]
        for _ in range(5):
            state, _, _, _, _, info = step(state, info["expert_action"], p)
            grads.append(jax.tree.map(lambda g: g[0], state.copies.grads))
        adam = optax.adam(1e-3, b2=b2)
        params = jax.tree.map(lambda x: x[0], state.copies.params)
        opt_state = adam.init(params)
        for g in grads:
            expected, opt_state = adam.update(g, opt_state)
        updates[b2] = np.asarray(info["expert_update"])[0]
        np.testing.assert_allclose(
            updates[b2], np.asarray(core.flatten_rows(expected)), rtol=1e-4, atol=1e-9
        )
    assert not np.allclose(updates[0.95], updates[0.999], rtol=1e-2, atol=0)
    for b2 in (0.0, 1.0):
        with pytest.raises(ValueError, match="expert_b2 is Adam's second-moment"):
            core.EnvConfig(task=TASK, expert_b2=b2)


@pytest.mark.parametrize(
    ("wd", "trust_ratio"), [(0.1, False), (0.0, True), (0.1, True)]
)
def test_expert_weight_decay_and_trust_ratio_make_the_demonstrator_adamw_or_lamb(
    data, wd, trust_ratio
):
    """expert_weight_decay, expert_trust_ratio: the expert's update is
    ``optax.adamw`` at that decay, or ``optax.lamb`` (eps 1e-8) with it, on the
    gradients and params the copy met, with a constant lr and under the cosine
    schedule (times the scheduled lr); neither is Adam; a negative decay is
    refused."""
    p = core.make_params(data, n_min=20, n_max=20, alpha=1.0)
    lr = 1e-2

    def expected_optimizer(schedule):
        if trust_ratio:
            return optax.lamb(schedule, eps=1e-8, weight_decay=wd)
        return optax.adamw(schedule, weight_decay=wd)

    def first(tree):
        return jax.tree.map(lambda x: x[0], tree)

    for schedule in ("inverse_sqrt", "cosine"):
        cfg = core.EnvConfig(
            task=TASK,
            expert_learning_rate=lr,
            expert_schedule=schedule,
            expert_weight_decay=wd,
            expert_trust_ratio=trust_ratio,
        )
        state, _, info = core.reset(cfg, core.copy_keys(cfg, 0), p)
        step = jax.jit(functools.partial(core.step, cfg))
        seen = [(first(state.copies.grads), first(state.copies.params))]
        for _ in range(4):
            state, _, _, _, _, info = step(state, info["expert_action"], p)
            seen.append((first(state.copies.grads), first(state.copies.params)))
        if schedule == "cosine":
            lrs = schedules.relative_warmup_cosine(lr, jnp.arange(5), 20)
            adamw = expected_optimizer(lambda n: lrs[n])
        else:
            adamw = expected_optimizer(lr)
        opt_state = adamw.init(seen[0][1])
        for g, params in seen:
            expected, opt_state = adamw.update(g, opt_state, params)
        got = np.asarray(info["expert_update"])[0]
        np.testing.assert_allclose(
            got, np.asarray(core.flatten_rows(expected)), rtol=1e-4, atol=1e-9
        )
        adam, _ = optax.adam(lr).update(g, optax.adam(lr).init(params))
        assert not np.allclose(got, np.asarray(core.flatten_rows(adam)), atol=1e-6)
    with pytest.raises(ValueError, match="expert_weight_decay must be >= 0"):
        core.EnvConfig(task=TASK, expert_weight_decay=-0.1)


def test_a_trust_ratio_lo_moves_the_copies_as_lamb(data):
    """nominal_trust_ratio in the env's rows (``LOSpec.row_terms``): a zero action
    moves every copy by its nominal term, optax.lamb's step on the gradients and
    params it met."""
    p = core.make_params(data, n_min=20, n_max=20, alpha=1.0)
    spec = LOSpec(nominal_lr=0.01, nominal_trust_ratio=True)
    cfg = core.EnvConfig(task=TASK, num_copies=2, lo=spec)
    state, _, info = core.reset(cfg, core.copy_keys(cfg, 0), p)
    step = jax.jit(functools.partial(core.step, cfg))
    lamb = optax.lamb(0.01, eps=1e-8, weight_decay=0.0)
    lamb_states = [
        lamb.init(jax.tree.map(lambda x: x[c], state.copies.params)) for c in range(2)
    ]
    zeros = jnp.zeros((2, core.num_params(TASK), 2))
    for _ in range(4):
        before = state.copies
        state, *_ = step(state, zeros, p)
        for c in range(2):
            params, grads = (
                jax.tree.map(lambda x: x[c], tree)
                for tree in (before.params, before.grads)
            )
            expected, lamb_states[c] = lamb.update(grads, lamb_states[c], params)
            moved = jax.tree.map(lambda x: x[c], state.copies.params)
            np.testing.assert_allclose(
                np.asarray(core.flatten_rows(moved) - core.flatten_rows(params)),
                np.asarray(core.flatten_rows(expected)),
                rtol=1e-3,
                atol=1e-8,
            )


def test_a_gated_lo_follows_a_cautious_lamb_demonstrator(data):
    """gated_step with nominal_norm_step, whose nominal term is LAMB at the
    demonstrator's lr: the expert action moves every copy as cautious LAMB does, up to
    the dropped coordinates' gate limit (1 - tanh(GATE_ACTION_LIMIT)). From the
    second step: at init the biases are 0, where LAMB's trust ratio is 1 and the
    cautious step keeps Adam's size, not the nominal term's norm."""
    p = core.make_params(data, n_min=20, n_max=20, alpha=1.0)
    spec = LOSpec(
        nominal_lr=0.01,
        nominal_trust_ratio=True,
        gated_step=True,
        nominal_norm_step=True,
    )
    cfg = core.EnvConfig(
        task=TASK,
        num_copies=2,
        lo=spec,
        expert_learning_rate=0.01,
        expert_trust_ratio=True,
        expert_cautious=True,
    )
    state, _, info = core.reset(cfg, core.copy_keys(cfg, 0), p)
    step = jax.jit(functools.partial(core.step, cfg))
    state, _, _, _, _, info = step(state, info["expert_action"], p)
    dropped = 0
    for _ in range(4):
        before = state.copies
        expert = np.asarray(info["expert_update"])
        dropped += int((expert == 0).sum())
        state, _, _, _, _, info = step(state, info["expert_action"], p)
        moved = np.asarray(
            jax.vmap(core.flatten_rows)(state.copies.params)
            - jax.vmap(core.flatten_rows)(before.params)
        )
        np.testing.assert_allclose(moved, expert, rtol=2e-3, atol=2e-6)
    assert dropped > 0


def test_run_length_max_draws_where_the_clock_ends(data):
    """run_length_max: each copy's run ends at R, log-uniform in [K + N, R_max]
    (``info["run_length"]``), and both the relative-time LO's step features and the
    cosine expert read the clock against R, not the episode's end K + N; off, R is
    K + N."""
    n_steps, steps, r_max, copies = 40, 6, 400, 8
    p = core.make_params(data, n_min=n_steps, n_max=n_steps, alpha=1.0)
    spec = LOSpec(time_horizon=200.0)
    zeros = jnp.zeros((copies, core.num_params(TASK), 2))
    runs = {}
    for r in (0, r_max):
        cfg = core.EnvConfig(
            task=TASK,
            num_copies=copies,
            expert_schedule="cosine",
            lo=spec,
            run_length_max=r,
        )
        state, obs, info = core.reset(cfg, core.copy_keys(cfg, 0), p)
        step = jax.jit(functools.partial(core.step, cfg))
        for _ in range(steps):
            state, obs, _, _, _, info = step(state, zeros, p)
        runs[r] = (obs, info)
    off = np.asarray(runs[0][1]["run_length"])
    np.testing.assert_array_equal(off, n_steps)
    obs, info = runs[r_max]
    drawn = np.asarray(info["run_length"])
    assert np.all((drawn >= n_steps) & (drawn <= r_max)), drawn
    assert len(set(drawn.tolist())) == copies, drawn  # a draw per copy
    updates_off = np.asarray(runs[0][1]["expert_update"])
    updates = np.asarray(info["expert_update"])
    for c, r in enumerate(drawn.tolist()):
        np.testing.assert_allclose(
            np.asarray(obs["features"])[c, :, 28:],
            np.broadcast_to(
                lopt.step_features(jnp.float32(steps * 200.0 / r)),
                obs["features"][c, :, 28:].shape,
            ),
            rtol=1e-6,
        )
        # The same gradients (same keys, the LO silent), the cosine read at R.
        moving = np.abs(updates_off[c]) > 1e-7
        ratio = float(
            schedules.relative_warmup_cosine(1e-3, steps, r)
            / schedules.relative_warmup_cosine(1e-3, steps, n_steps)
        )
        np.testing.assert_allclose(
            updates[c][moving] / updates_off[c][moving], ratio, rtol=1e-4
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(run_length_max=-1), "run_length_max must be >= 0"),
        (dict(run_length_max=2000), "neither the LO"),
    ],
)
def test_run_length_max_is_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        core.EnvConfig(task=TASK, **kwargs)


def test_an_lo_with_a_fast_second_moment_reads_adams_b2_095_direction(data):
    """With the spec's fast_second_moment, the env's copies keep r_0.95 and observation
    feature 8 is Adam's direction at b2 0.95 (optax's moments on the gradients the
    copy met, before bias correction), normalized per tensor; the reference LO's
    feature 8 on the same copies is another number."""
    p = core.make_params(data, n_min=20, n_max=20, alpha=1.0)
    obs = {}
    for fast in (False, True):
        cfg = core.EnvConfig(task=TASK, lo=LOSpec(fast_second_moment=fast))
        state, _, info = core.reset(cfg, core.copy_keys(cfg, 0), p)
        step = jax.jit(functools.partial(core.step, cfg))
        grads = [jax.tree.map(lambda g: g[0], state.copies.grads)]
        for _ in range(4):
            state, obs[fast], _, _, _, info = step(state, info["expert_action"], p)
            grads.append(jax.tree.map(lambda g: g[0], state.copies.grads))
    accumulators = jax.tree.leaves(
        state.copies.lo.accumulators,
        is_leaf=lambda x: isinstance(x, lopt.TensorAccumulators),
    )
    assert all(acc.rms.shape[1] == 2 for acc in accumulators)  # (copies, 2) + S
    adam = optax.scale_by_adam(b1=0.9, b2=0.95)
    params = jax.tree.map(lambda x: x[0], state.copies.params)
    adam_state = adam.init(params)
    for g in grads:
        _, adam_state = adam.update(g, adam_state)
    ratio = jax.tree.map(
        lambda m, v: m * jax.lax.rsqrt(v + 1e-6), adam_state.mu, adam_state.nu
    )
    normalized = jax.tree.map(lambda x: x * jax.lax.rsqrt(1e-5 + jnp.mean(x**2)), ratio)
    expected = np.asarray(core.flatten_rows(normalized))
    np.testing.assert_allclose(obs[True]["features"][0, :, 8], expected, rtol=1e-3)
    assert not np.allclose(obs[False]["features"][0, :, 8], expected, rtol=0.1)
