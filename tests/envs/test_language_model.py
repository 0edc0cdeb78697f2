"""Tests for envs/language_model.py: GPT-2-mini on FineWeb shards and on real text."""

from __future__ import annotations

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from elo_gym.envs import make_task, tokens
from elo_gym.envs.language_model import LanguageModelTask, make_lm_task

SMALL = dict(width=32, num_layers=2, num_heads=2, context_length=32, batch_size=16)


@pytest.fixture(scope="module")
def task(real_text_files) -> LanguageModelTask:
    return make_lm_task("text", text_files=tuple(real_text_files), **SMALL)


@pytest.fixture(scope="module")
def text(task):
    return task.load_data()


def test_gpt2_mini_size() -> None:
    task = make_lm_task("fineweb")
    assert (task.width, task.num_layers, task.num_heads) == (256, 4, 4)
    assert (task.context_length, task.batch_size, task.vocab_size) == (256, 512, 50257)
    # Tied embedding 50257 x 256, positions 256 x 256, 4 blocks of 789,760, final LN.
    assert task.num_params() == 50257 * 256 + 256 * 256 + 4 * 789_760 + 512
    assert task.num_params() == 16_090_880
    assert make_lm_task("text", text_files=("x",)).num_params() == 3_290_624
    assert not task.has_model_state and task.init_with_state(jax.random.key(0))[1] == {}


def test_factory_and_errors() -> None:
    assert make_task("gpt2mini", "text", text_files=("a",), width=64).width == 64
    with pytest.raises(ValueError, match="does not take augment"):
        make_task("gpt2mini", "fineweb", augment=True)
    with pytest.raises(ValueError, match="needs text_files"):
        make_lm_task("text")
    with pytest.raises(ValueError, match="multiple of num_heads"):
        make_lm_task("fineweb", width=30, num_heads=4)
    with pytest.raises(ValueError, match="'wiki'"):
        make_lm_task("wiki")


def test_attention_is_causal(task) -> None:
    params = task.init(jax.random.key(0))
    x = jax.random.randint(jax.random.key(1), (2, task.context_length), 0, 256)
    y = x.at[:, 20].set((x[:, 20] + 1) % 256)
    lx, ly = task.apply(params, x), task.apply(params, y)
    assert lx.shape == (2, task.context_length, 256)
    np.testing.assert_allclose(lx[:, :20], ly[:, :20], atol=1e-5)
    assert not np.allclose(lx[:, 20:], ly[:, 20:], atol=1e-3)


def test_loss_at_init_and_adam_learns_real_text(task, text) -> None:
    params = task.init(jax.random.key(0))
    batch = task.sample_batch(text, jax.random.key(1))
    assert batch.shape == (16, 33) and batch.dtype == jnp.int32
    assert abs(float(task.loss(params, batch)) - math.log(256)) < 0.3
    opt = optax.adam(3e-3)

    @jax.jit
    def step(carry, key):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(task.loss)(
            params, task.sample_batch(text, key)
        )
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    (params, _), losses = jax.lax.scan(
        step, (params, opt.init(params)), jax.random.split(jax.random.key(2), 150)
    )
    # Byte frequencies alone take 5.55 nats to about 3.3; the model must get there.
    assert float(losses[-20:].mean()) < 3.4
    metrics = jax.jit(task.evaluate, static_argnames="split")(params, text, "valid")
    assert float(metrics["loss"]) < 3.6 and float(metrics["accuracy"]) > 0.15


def test_evaluate_uses_fixed_windows(task, text) -> None:
    params = task.init(jax.random.key(3))
    evaluate = jax.jit(task.evaluate, static_argnames=("split", "batch_size"))
    a = evaluate(params, text, "test")
    b = evaluate(params, text, "test", batch_size=7)  # other chunking, same windows
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    windows = tokens.eval_windows(text.test, task.context_length + 1, task.eval_windows)
    expected = task.loss_and_accuracy(params, windows)
    np.testing.assert_allclose(a["loss"], expected[0], rtol=1e-5)
    np.testing.assert_allclose(a["accuracy"], expected[1], rtol=1e-5)


def test_fineweb_shards_train(tmp_path: pathlib.Path) -> None:
    """A generated FineWeb-format corpus with structure: token t+1 = token t + 1."""
    starts = np.random.default_rng(0).integers(0, 50000, 400)
    corpus = (starts[:, None] + np.arange(25)).reshape(-1) % 50257
    tokens.write_token_shard(tmp_path / "fineweb_train_000001.bin", corpus)
    tokens.write_token_shard(tmp_path / "fineweb_val_000000.bin", corpus[:2000])
    task = make_lm_task("fineweb", data_dir=str(tmp_path), **SMALL)
    data = task.load_data()
    assert data.vocab_size == 50257 and data.train.dtype == jnp.uint16
    params = task.init(jax.random.key(0))
    batch = task.sample_batch(data, jax.random.key(1))
    assert batch.max() < 50257
    loss, grads = jax.value_and_grad(task.loss)(params, batch)
    assert abs(float(loss) - math.log(50257)) < 0.5
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
