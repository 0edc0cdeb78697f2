"""Tests for envs/image_mlp.py: the image-MLP task family."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from elo_gym.envs import datasets, image_mlp
from elo_gym.envs.image_mlp import ImageMLPTask, make_image_mlp_task


@pytest.fixture(scope="module")
def task() -> ImageMLPTask:
    return make_image_mlp_task("digits")


@pytest.fixture(scope="module")
def digits(task: ImageMLPTask) -> datasets.ImageData:
    return task.load_data()


def test_defaults_and_param_counts() -> None:
    digits = make_image_mlp_task()
    assert digits.hidden_sizes == (32, 32) and digits.batch_size == 128
    assert digits.augment and not digits.flip and digits.max_shift == 1
    assert digits.image_shape == (8, 8, 1) and digits.num_classes == 10
    assert digits.num_params() == 64 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10 == 3466
    imagenet = make_image_mlp_task("imagenet32")
    assert imagenet.hidden_sizes == (128, 128, 128) and imagenet.batch_size == 4096
    assert imagenet.flip and imagenet.max_shift == 4
    # muLO's w128-d3: 3072-128-128-128-1000; shapes only, no data loaded.
    shapes = jax.eval_shape(imagenet.init, jax.random.key(0))
    assert sum(math.prod(x.shape) for x in jax.tree.leaves(shapes)) == 555_368
    assert imagenet.num_params() == 555_368
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(shapes))


def test_factory_overrides_and_hashable() -> None:
    task = make_image_mlp_task(
        "digits", hidden_sizes=[16], activation="tanh", augment=False, noise_std=0.02
    )
    assert task.hidden_sizes == (16,) and task.activation == "tanh"
    assert not task.augment and task.noise_std == 0.02 and task.batch_size == 128
    assert hash(task) == hash(dataclasses.replace(task))
    assert task.num_params() == 64 * 16 + 16 + 16 * 10 + 10


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"dataset": "cifar10"}, r"'cifar10'.*digits.*imagenet32"),
        ({"activation": "swish"}, r"'swish'.*relu.*gelu.*tanh.*silu"),
        ({"hidden_sizes": (32, 0)}, "hidden_sizes"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_shift": -1}, "max_shift"),
        ({"noise_std": -0.1}, "noise_std"),
    ],
)
def test_bad_configuration_fails_clearly(overrides, match) -> None:
    with pytest.raises(ValueError, match=match):
        make_image_mlp_task(**overrides)
    fields = dataclasses.asdict(make_image_mlp_task()) | overrides
    with pytest.raises(ValueError, match=match):
        ImageMLPTask(**fields)


@pytest.mark.parametrize("activation", list(image_mlp.ACTIVATIONS))
def test_loss_at_init_is_near_log_num_classes(
    task: ImageMLPTask, digits: datasets.ImageData, activation: str
) -> None:
    task = dataclasses.replace(task, activation=activation)

    @jax.jit
    def init_loss_and_accuracy(key):
        return task.loss_and_accuracy(task.init(key), (digits.test_x, digits.test_y))

    loss, accuracy = init_loss_and_accuracy(jax.random.key(0))
    assert bool(jnp.isfinite(loss))
    assert abs(float(loss) - math.log(10)) < 0.5
    assert 0.0 <= float(accuracy) <= 1.0


def test_sample_batch_augments_only_train(
    task: ImageMLPTask, digits: datasets.ImageData
) -> None:
    key = jax.random.key(2)
    plain = dataclasses.replace(task, augment=False)
    sample = jax.jit(task.sample_batch, static_argnames="split")
    sample_plain = jax.jit(plain.sample_batch, static_argnames="split")
    x, y = sample(digits, key)
    assert x.shape == (128, 8, 8, 1) and x.dtype == jnp.uint8 and y.shape == (128,)
    x_plain, y_plain = sample_plain(digits, key)
    np.testing.assert_array_equal(y, y_plain)  # same examples ...
    assert not np.array_equal(x, x_plain)  # ... shifted
    for split in ("valid", "test"):
        np.testing.assert_array_equal(
            sample(digits, key, split=split)[0],
            sample_plain(digits, key, split=split)[0],
        )


def test_adam_reduces_loss(task: ImageMLPTask, digits: datasets.ImageData) -> None:
    optimizer = optax.adam(1e-3)
    params = task.init(jax.random.key(0))

    @jax.jit
    def train(params, key):
        def step(carry, key):
            params, opt_state = carry
            batch = task.sample_batch(digits, key)
            loss, grads = jax.value_and_grad(task.loss)(params, batch)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        keys = jax.random.split(key, 100)
        (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), keys)
        return params, losses

    trained, losses = train(params, jax.random.key(3))
    assert bool(jnp.all(jnp.isfinite(losses)))
    assert float(losses[-10:].mean()) < float(losses[:10].mean()) - 0.3
    evaluate = jax.jit(task.evaluate, static_argnames=("split", "batch_size"))
    before = evaluate(params, digits, "valid")
    after = evaluate(trained, digits, "valid")
    assert float(after["loss"]) < float(before["loss"])
    assert float(after["accuracy"]) > float(before["accuracy"])


def _reference_metrics(task, params, images, labels) -> dict[str, float]:
    """Loss and accuracy of every example, computed in numpy from the params."""
    x = np.asarray(images, np.float64).reshape(len(labels), -1) / 255.0 - 0.5
    for i, _ in enumerate(task.hidden_sizes):
        layer = params[f"Dense_{i}"]
        x = np.maximum(x @ np.asarray(layer["kernel"]) + np.asarray(layer["bias"]), 0)
    last = params[f"Dense_{len(task.hidden_sizes)}"]
    logits = x @ np.asarray(last["kernel"]) + np.asarray(last["bias"])
    logits -= logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    labels = np.asarray(labels)
    return {
        "loss": -log_probs[np.arange(len(labels)), labels].mean(),
        "accuracy": (logits.argmax(axis=1) == labels).mean(),
    }


@pytest.mark.parametrize("batch_size", [None, 7, 50, 300, 1000])
def test_evaluate_covers_split_exactly(
    task: ImageMLPTask, digits: datasets.ImageData, batch_size
) -> None:
    params = task.init(jax.random.key(4))
    evaluate = jax.jit(
        functools.partial(task.evaluate, split="test", batch_size=batch_size)
    )
    metrics = evaluate(params, digits)
    expected = _reference_metrics(task, params, digits.test_x, digits.test_y)
    np.testing.assert_allclose(metrics["loss"], expected["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"], expected["accuracy"], atol=1e-6)


def test_evaluate_weights_every_example_once(task: ImageMLPTask) -> None:
    """A 10-example split in chunks of 4 (4 + 4 + 2, padding masked)."""
    rng = np.random.default_rng(5)
    images = jnp.asarray(rng.integers(0, 256, (10, 8, 8, 1)), jnp.uint8)
    labels = jnp.asarray(rng.integers(0, 10, 10), jnp.int32)
    data = datasets.ImageData(images, labels, images, labels, images, labels)
    params = task.init(jax.random.key(6))
    metrics = task.evaluate(params, data, "train", batch_size=4)
    expected = _reference_metrics(task, params, images, labels)
    np.testing.assert_allclose(metrics["loss"], expected["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"], expected["accuracy"], atol=1e-6)


def test_augmentation_strength_is_an_option_of_the_factory_and_the_env():
    from elo_gym.env import EnvSettings
    from elo_gym.envs import make_task

    task = make_task("mlp", "digits", max_shift=2, noise_std=0.1)
    assert (task.max_shift, task.noise_std, task.augment) == (2, 0.1, True)
    assert EnvSettings(noise_std=0.05).build_task().noise_std == 0.05
    assert EnvSettings().build_task().noise_std == 0.0  # the default stays noise-free
    data = task.load_data()
    key = jax.random.PRNGKey(0)
    noisy, _ = task.sample_batch(data, key)
    clean, _ = make_task("mlp", "digits", max_shift=2).sample_batch(data, key)
    assert not np.array_equal(np.asarray(noisy), np.asarray(clean))
