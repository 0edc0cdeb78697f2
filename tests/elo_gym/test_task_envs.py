"""The out-of-distribution envs, ELO-ImageNet32-ResNet18 and ELO-FineWeb-GPT2Mini,
and the offline task families ELO-Teacher-MLP and ELO-PySource-GPT2Mini.

Small widths of the real architectures, on digits (ResNet-18), bundled real text and
a generated FineWeb-format shard (GPT-2-mini); the full-size ids are only checked for
their clear errors when their data is missing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import elo_gym
from elo_gym import checkpoint, core, env
from elo_gym.envs import DATA_DIR_ENV, DatasetNotFoundError, tokens

RESNET = dict(dataset="digits", width=4, batch_size=16)
LM = dict(width=16, context_length=16, batch_size=4)


@pytest.fixture
def no_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


@pytest.mark.parametrize(
    ("env_id", "match"),
    [
        ("ELO-ImageNet32-ResNet18", "imagenet32.*tfds build"),
        ("ELO-FineWeb-GPT2Mini", "fineweb.*fineweb.py"),
    ],
)
def test_missing_data_says_how_to_prepare(env_id, match, no_data_dir) -> None:
    import gymnasium as gym

    with pytest.raises(DatasetNotFoundError, match=f"(?s){match}"):
        gym.make(env_id)


def _expert_rollout(e, steps: int):
    obs, info = e.reset(seed=0)
    rewards = []
    for _ in range(steps):
        obs, reward, term, trunc, info = e.step(info["expert_action"])
        rewards.append(float(reward))
    return obs, info, rewards


def test_resnet_core_pushes_and_restores_batch_stats() -> None:
    """Episodes of one step: each pushes its snapshot, the next restores one."""
    settings = env.EnvSettings(model="resnet18", p_th=0.0, n_min=1, n_max=1, **RESNET)
    cfg = settings.config(1)
    p = settings.params(cfg.task.load_data())
    fresh = cfg.task.init_with_state(jax.random.key(0))[1]["batch_stats"]
    state, obs, info = jax.jit(core.reset, static_argnums=0)(
        cfg, core.copy_keys(cfg, 0), p
    )
    num_params = core.num_params(cfg.task)
    assert obs["features"].shape == (1, num_params, 39)
    step = jax.jit(core.step, static_argnums=0)
    for _ in range(4):
        state, obs, reward, *_, info = step(cfg, state, info["expert_action"], p)
        assert np.isfinite(reward).all()
    # Pushed snapshots hold the statistics their forward passes produced.
    buf = state.buffer
    assert int(buf.size[0]) == 4
    pushed = buf.snapshots.model_state["batch_stats"]["BatchNorm_0"]["var"][0]
    assert not np.allclose(pushed, fresh["BatchNorm_0"]["var"])
    # The current episode came from the buffer, with a snapshot's statistics moved
    # by one more forward pass: finite and not the fresh init.
    copy = state.copies
    assert bool(copy.from_buffer[0]) and int(copy.start_step[0]) >= 1
    restored = copy.model_state["batch_stats"]["BatchNorm_0"]["var"][0]
    assert np.isfinite(restored).all()
    assert not np.allclose(restored, fresh["BatchNorm_0"]["var"])


def test_gpt2mini_env_on_real_text(real_text_files) -> None:
    import gymnasium as gym

    e = gym.make(
        "ELO-FineWeb-GPT2Mini", dataset="text", text_files=real_text_files, **LM
    )
    obs, info, rewards = _expert_rollout(e, 4)
    p = core.num_params(e.unwrapped.config.task)
    assert obs["features"].shape == (p, 39) and info["expert_action"].shape == (p, 2)
    assert np.isfinite(rewards).all() and 4.0 < float(obs["loss"]) < 6.0


@pytest.mark.slow  # 39 s cold; the shard reader and the LM on a shard run in CI
def test_gpt2mini_vector_env_on_a_fineweb_shard(tmp_path) -> None:
    import gymnasium as gym

    corpus = np.random.default_rng(0).integers(0, 50257, 3000)
    tokens.write_token_shard(tmp_path / "fineweb_train_000001.bin", corpus)
    tokens.write_token_shard(tmp_path / "fineweb_val_000000.bin", corpus[:1000])
    e = gym.make_vec("ELO-FineWeb-GPT2Mini", num_envs=2, data_dir=str(tmp_path), **LM)
    obs, info = e.reset(seed=0)
    obs, reward, term, trunc, info = e.step(info["expert_action"])
    assert obs["features"].shape[0] == 2 and np.isfinite(reward).all()
    assert abs(float(obs["loss"][0]) - np.log(50257)) < 0.5


@pytest.mark.slow  # 34 s cold; CI's evaluate smoke runs a loaded LO on both models
def test_load_optimizer_trains_both_models(tmp_path, real_text_files) -> None:
    """A saved LO, loaded as an optax transformation, steps both OOD models."""
    meta = elo_gym.init_meta_params(jax.random.PRNGKey(0), hidden_size=8)
    checkpoint.save_lo(tmp_path, meta)
    opt = elo_gym.load_optimizer(tmp_path)
    tasks = [
        env.EnvSettings(model="resnet18", **RESNET).build_task(),
        env.EnvSettings(
            model="gpt2mini", dataset="text", text_files=real_text_files, **LM
        ).build_task(),
    ]
    for task in tasks:
        data = task.load_data()
        params, model_state = task.init_with_state(jax.random.key(0))
        opt_state = opt.init(params)

        @jax.jit
        def step(params, model_state, opt_state, key, task=task, data=data):
            (loss, model_state), grads = jax.value_and_grad(
                task.train_loss, has_aux=True
            )(params, model_state, task.sample_batch(data, key))
            updates, opt_state = opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), model_state, opt_state, loss

        new, model_state, opt_state, loss = step(
            params, model_state, opt_state, jax.random.key(1)
        )
        assert np.isfinite(float(loss))
        moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), new, params)
        assert 0 < max(jax.tree.leaves(moved)) < 1.0


@pytest.mark.parametrize(
    ("env_id", "dataset", "options", "initial_loss"),
    [
        # Balanced labels among 10 classes: about ln(10) at init.
        (
            "ELO-Teacher-MLP",
            "teacher",
            dict(hidden_sizes=(8,), batch_size=16),
            np.log(10),
        ),
        # Bytes of Python: near ln(256) at init.
        (
            "ELO-PySource-GPT2Mini",
            "pysource",
            dict(width=8, context_length=8),
            np.log(256),
        ),
    ],
)
def test_offline_family_env_resets_and_steps(
    env_id, dataset, options, initial_loss
) -> None:
    import gymnasium as gym

    e = gym.make(env_id, **options)
    obs, info, rewards = _expert_rollout(e, 2)
    task = e.unwrapped.config.task
    assert task.dataset == dataset
    p = core.num_params(task)
    assert obs["features"].shape == (p, 39) and info["expert_action"].shape == (p, 2)
    assert np.isfinite(rewards).all()
    assert abs(float(obs["loss"]) - initial_loss) < 0.5
