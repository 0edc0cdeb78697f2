"""The teacher task family: the Task protocol, infinite training data, fixed
evaluation sets, balanced and learnable labels."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from elo_gym import envs
from elo_gym.envs.teacher import TeacherTask, make_teacher_task

SMALL = dict(hidden_sizes=(8,), batch_size=16)


@pytest.fixture(scope="module")
def task() -> TeacherTask:
    return make_teacher_task(**SMALL)


@pytest.fixture(scope="module")
def data(task):
    return task.load_data()


def test_defaults_and_factory() -> None:
    task = envs.make_task("mlp", "teacher")
    assert isinstance(task, TeacherTask) and hash(task) == hash(make_teacher_task())
    assert (task.input_dim, task.num_classes, task.batch_size) == (32, 10, 128)
    assert task.hidden_sizes == (64, 64) and task.num_params() == 6922
    assert task.model_name == "mlp" and task.cpu_step_loop == "scan"
    assert not task.has_model_state
    described = task.describe()
    assert described["dataset"] == "teacher" and described["num_params"] == 6922
    with pytest.raises(ValueError, match="does not take augment"):
        envs.make_task("mlp", "teacher", augment=True)
    with pytest.raises(ValueError, match="does not take teacher_seed"):
        envs.make_task("mlp", "digits", teacher_seed=1)


def test_protocol_shapes_and_pure_sampling(task, data) -> None:
    params, state = task.init_with_state(jax.random.key(0))
    assert state == {}
    sample = jax.jit(task.sample_batch, static_argnums=2)
    x, y = sample(data, jax.random.key(1), "train")
    assert x.shape == (16, 32) and x.dtype == jnp.float32
    assert y.shape == (16,) and y.dtype == jnp.int32
    # Pure: the same key gives the same batch, another key another batch.
    x2, y2 = sample(data, jax.random.key(1), "train")
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    x3, _ = sample(data, jax.random.key(2), "train")
    assert not np.allclose(x, x3)
    # Training inputs are N(0, I) draws of the key, labelled by the teacher's
    # argmax (recomputed here in float64 from the teacher's weights).
    xs, ys = make_teacher_task(batch_size=1000).sample_batch(data, jax.random.key(4))
    want = np.asarray(xs, np.float64)
    np.testing.assert_array_equal(xs, jax.random.normal(jax.random.key(4), (1000, 32)))
    layers = task._teacher_layers()
    for i, (w, b) in enumerate(layers):
        want = want @ w + b
        want = np.tanh(want) if i < len(layers) - 1 else want
    assert (np.asarray(ys) == want.argmax(1)).mean() > 0.99
    # valid: examples of the fixed split.
    xv, yv = sample(data, jax.random.key(5), "valid")
    rows = {tuple(r) for r in np.asarray(data.valid[0])}
    assert all(tuple(r) in rows for r in np.asarray(xv))
    loss, state = task.train_loss(params, {}, (x, y))
    assert loss.shape == () and np.isfinite(float(loss))


def test_eval_splits_are_fixed_and_disjoint(task, data) -> None:
    again = task.load_data()
    for split in ("valid", "test"):
        xs, ys = data.split(split)
        assert xs.shape == (2048, 32) and ys.shape == (2048,)
        np.testing.assert_array_equal(xs, again.split(split)[0])
        np.testing.assert_array_equal(ys, again.split(split)[1])
    assert not np.allclose(data.valid[0][:8], data.test[0][:8])
    params = task.init(jax.random.key(0))
    first = task.evaluate(params, data, "valid")
    second = jax.jit(task.evaluate, static_argnums=2)(params, data, "valid")
    assert set(first) == {"loss", "accuracy"}
    np.testing.assert_allclose(first["loss"], second["loss"], rtol=1e-6)
    with pytest.raises(ValueError, match="fixed splits are"):
        task.evaluate(params, data, "train")
    # Another teacher labels the same inputs otherwise.
    other = make_teacher_task(teacher_seed=1, **SMALL).load_data()
    assert (np.asarray(other.valid[1]) != np.asarray(data.valid[1])).mean() > 0.5


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_labels_are_not_degenerate(seed) -> None:
    labels = np.asarray(make_teacher_task(teacher_seed=seed).load_data().valid[1])
    fractions = np.bincount(labels, minlength=10) / labels.size
    assert fractions.min() > 0.03 and fractions.max() < 0.25, fractions


def test_labels_are_learnable(task, data) -> None:
    """200 Adam steps on a 32-16-10 student take the valid loss far below ln(10)."""
    task = make_teacher_task(hidden_sizes=(16,), batch_size=64)
    params = task.init(jax.random.key(0))
    opt = optax.adam(1e-2)

    @jax.jit
    def train(params, key):
        def step(carry, k):
            p, s = carry
            grads = jax.grad(task.loss)(p, task.sample_batch(data, k))
            updates, s = opt.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), None

        keys = jax.random.split(key, 200)
        return jax.lax.scan(step, (params, opt.init(params)), keys)[0][0]

    before = float(task.evaluate(params, data, "valid")["loss"])
    after = task.evaluate(train(params, jax.random.key(1)), data, "valid")
    assert before > 0.9 * math.log(10)
    assert float(after["loss"]) < 0.5 * math.log(10) and after["accuracy"] > 0.6
