"""Tests for envs/resnet.py: ResNet-18 with BatchNorm statistics as model state."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from elo_gym import core
from elo_gym.envs import datasets, make_task
from elo_gym.envs.resnet import ResNetTask, make_resnet_task

WIDTH = 4  # 4-8-16-32 channels: the real architecture, CPU-cheap


@pytest.fixture(scope="module")
def task() -> ResNetTask:
    return make_resnet_task("digits", width=WIDTH, batch_size=32)


@pytest.fixture(scope="module")
def digits(task):
    return task.load_data()


def test_paper_size_and_what_the_optimizer_sees() -> None:
    task = make_resnet_task("imagenet32")
    assert task.batch_size == 4096 and task.flip and task.max_shift == 4
    params, state = jax.eval_shape(task.init_with_state, jax.random.key(0))
    assert task.num_params() == 11_681_832 == core.num_params(task)
    assert sum(math.prod(x.shape) for x in jax.tree.leaves(params)) == 11_681_832
    # BatchNorm statistics are model state, never params (never the LO's rows):
    # 20 BatchNorms (stem, 2 per block, 3 shortcut projections), mean and var each.
    assert set(state) == {"batch_stats"} and len(jax.tree.leaves(state)) == 40
    assert "batch_stats" not in params


def test_factory_and_errors() -> None:
    assert make_task("resnet18", "digits", width=8).width == 8
    with pytest.raises(ValueError, match="does not take hidden_sizes"):
        make_task("resnet18", "digits", hidden_sizes=(8,))
    with pytest.raises(ValueError, match="width must be a positive int"):
        make_resnet_task("digits", width=0)
    with pytest.raises(ValueError, match="'cifar10'"):
        make_resnet_task("cifar10")


def test_training_updates_batch_stats_and_inference_uses_them(task, digits) -> None:
    params, state = task.init_with_state(jax.random.key(0))
    batch = task.sample_batch(digits, jax.random.key(1))
    loss, new_state = jax.jit(task.train_loss)(params, state, batch)
    assert np.isfinite(float(loss))
    before, after = jax.tree.leaves(state), jax.tree.leaves(new_state)
    assert jax.tree.structure(state) == jax.tree.structure(new_state)
    assert all(not np.allclose(a, b) for a, b in zip(before, after, strict=True))
    # Training-mode loss normalizes with the batch: it ignores the running stats.
    np.testing.assert_allclose(task.loss(params, batch), loss, rtol=1e-6)
    # Inference uses them, so the stats change the result.
    eval_old = task.evaluate(params, digits, "valid", model_state=state)
    eval_new = task.evaluate(params, digits, "valid", model_state=new_state)
    assert float(eval_old["loss"]) != float(eval_new["loss"])
    with pytest.raises(ValueError, match="pass the model_state"):
        task.evaluate(params, digits, "valid")


def test_adam_trains_it(task, digits) -> None:
    params, state = task.init_with_state(jax.random.key(2))
    opt = optax.adam(1e-2)

    @jax.jit
    def step(carry, key):
        params, state, opt_state = carry
        batch = task.sample_batch(digits, key)
        (loss, state), grads = jax.value_and_grad(task.train_loss, has_aux=True)(
            params, state, batch
        )
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), state, opt_state), loss

    carry = (params, state, opt.init(params))
    carry, losses = jax.lax.scan(step, carry, jax.random.split(jax.random.key(3), 100))
    assert float(losses[-10:].mean()) < 0.6 * float(losses[:5].mean())
    metrics = task.evaluate(carry[0], digits, "test", model_state=carry[1])
    assert float(metrics["accuracy"]) > 0.5


def test_eval_on_mock_imagenet32_shapes(tmp_path) -> None:
    """The ImageNet-32 variant runs on official-format npz files (fake pixels)."""
    rng = np.random.default_rng(0)
    for name, n in [(f"train_data_batch_{i}.npz", 6) for i in range(1, 11)] + [
        ("val_data.npz", 5)
    ]:
        planar = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        np.savez(tmp_path / name, data=planar, labels=list(rng.integers(1, 1001, n)))
    task = make_resnet_task("imagenet32", width=WIDTH, batch_size=4, data_dir=tmp_path)
    data = datasets.load_dataset("imagenet32", tmp_path, num_valid=4)
    params, state = task.init_with_state(jax.random.key(0))
    loss, state = task.train_loss(
        params, state, task.sample_batch(data, jax.random.key(1))
    )
    assert np.isfinite(float(loss))
    logits = task.apply(params, data.test_x, state)
    assert logits.shape == (5, 1000) and logits.dtype == jnp.float32
