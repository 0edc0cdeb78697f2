"""Row adapters: the demonstration stream and the stable-baselines3 VecEnv."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from elo_gym import adapters, core, lopt

# Tiny: a 10-unit optimizee (760 rows) and episodes of 2-3 steps, so that they end.
TINY_ENV = dict(hidden_sizes=(10,), batch_size=32, n_min=2, n_max=3)
STREAM = dict(num_copies=2, rows_per_step=8, steps_per_batch=3, **TINY_ENV)


@pytest.fixture(scope="module")
def stream():
    return adapters.RowDemoStream(seed=0, **STREAM)


def test_batch_shapes_and_values(stream):
    batch = next(iter(stream))
    b = stream.batch_size
    assert b == 3 * 2 * 8
    expected = {
        "obs": ((b, 39), jnp.float32),
        "acts": ((b, 2), jnp.float32),
        "next_obs": ((b, 39), jnp.float32),
        "dones": ((b,), jnp.bool_),
        "row": ((b,), jnp.int32),
        "copy": ((b,), jnp.int32),
        "inner_step": ((b,), jnp.int32),
    }
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected
    for k in ("obs", "acts", "next_obs"):
        assert bool(jnp.all(jnp.isfinite(batch[k])))
    assert bool(jnp.all(batch["acts"][:, 1] == 0.0))  # m* = 0
    assert bool(jnp.all((batch["row"] >= 0) & (batch["row"] < stream.num_params)))
    assert bool(jnp.any(batch["dones"]))  # episodes of 2-3 steps end within 3 steps


def test_rows_carry_the_experts_actions_and_are_deterministic(stream):
    fresh = adapters.RowDemoStream(seed=0, **STREAM)
    first = jax.device_get(fresh.next_batch())
    # The first step's rows come from the reset observation of each copy.
    cfg, p = fresh.config, fresh.params
    _, obs, info = jax.jit(functools.partial(core.reset, cfg))(
        core.copy_keys(cfg, 0), p
    )
    n = cfg.num_copies * 8
    copy, row = first["copy"][:n], first["row"][:n]
    # Equal up to fusion rounding (another compiled program).
    tol = dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(first["obs"][:n], obs["features"][copy, row], **tol)
    np.testing.assert_allclose(
        first["acts"][:n], info["expert_action"][copy, row], **tol
    )
    # Same seed, same batches; another seed, other batches.
    again = adapters.RowDemoStream(seed=0, **STREAM).numpy_batch()
    for k in ("obs", "acts", "next_obs", "dones", "row"):
        np.testing.assert_array_equal(first[k], again[k])
    other = adapters.RowDemoStream(seed=1, **STREAM).numpy_batch()
    assert not np.array_equal(first["obs"], other["obs"])


def test_a_learner_can_act_while_the_labels_stay_the_experts():
    meta = lopt.init_meta_params(jax.random.PRNGKey(0), 8)
    learner = adapters.RowDemoStream(seed=0, policy=meta, **STREAM)
    expert = adapters.RowDemoStream(seed=0, **STREAM)
    a, b = learner.numpy_batch(), expert.numpy_batch()
    # Same first observation, then the learner takes the optimizee elsewhere.
    n = 2 * 8
    np.testing.assert_array_equal(a["obs"][:n], b["obs"][:n])
    assert not np.array_equal(a["obs"][n:], b["obs"][n:])
    assert np.all(a["acts"][:, 1] == 0.0) and np.all(np.isfinite(a["acts"]))
    with pytest.raises(TypeError, match="policy must be"):
        adapters.RowDemoStream(policy="adam", **STREAM)


def test_numpy_batch_is_transitions_shaped(stream):
    b = stream.numpy_batch(num_batches=2)
    n = 2 * stream.batch_size
    assert b["obs"].shape == (n, 39) and b["next_obs"].shape == (n, 39)
    assert b["acts"].shape == (n, 2) and b["dones"].dtype == np.bool_
    assert b["infos"].shape == (n,) and b["infos"][0] == {}


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="unknown env"):
        adapters.RowDemoStream("ELO-Nope")
    with pytest.raises(ValueError, match="rows_per_step must be >= 1"):
        adapters.RowDemoStream(rows_per_step=0)


def test_a_torch_policy_learns_from_the_stream(stream):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    policy = torch.nn.Sequential(
        torch.nn.Linear(39, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2)
    )
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    b = stream.numpy_batch(num_batches=2)
    obs, acts = torch.from_numpy(b["obs"]), torch.from_numpy(b["acts"])
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(policy(obs), acts)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_imitation_bc_trains_on_the_stream(stream):
    pytest.importorskip("imitation")
    from imitation.algorithms import bc

    rng = np.random.default_rng(0)
    trainer = bc.BC(
        observation_space=stream.observation_space,
        action_space=stream.action_space,
        demonstrations=stream.transitions(num_batches=2),
        rng=rng,
        batch_size=32,
    )
    trainer.train(n_batches=4)
    # The endless stream works too, one stream batch per BC batch.
    streaming = bc.BC(
        observation_space=stream.observation_space,
        action_space=stream.action_space,
        demonstrations=stream.numpy_batches(),
        rng=rng,
        batch_size=stream.batch_size,
    )
    streaming.train(n_batches=2)
    acts, _ = streaming.policy.predict(stream.numpy_batch()["obs"], deterministic=True)
    assert acts.shape == (stream.batch_size, 2) and np.all(np.isfinite(acts))


# --- stable-baselines3 ---------------------------------------------------------------


@pytest.fixture(scope="module")
def sb3_env():
    pytest.importorskip("stable_baselines3")
    env = adapters.SB3RowVecEnv(num_rows=4, seed=0, **TINY_ENV)
    yield env
    env.close()


def test_sb3_vec_env_api(sb3_env):
    from stable_baselines3.common.utils import check_for_correct_spaces
    from stable_baselines3.common.vec_env import VecEnv

    env = sb3_env
    assert isinstance(env, VecEnv) and env.num_envs == 4
    check_for_correct_spaces(env, adapters.ROW_OBSERVATION_SPACE, env.action_space)
    env.seed(3)
    obs = env.reset()
    rows = env.rows
    assert obs.shape == (4, 39) and obs.dtype == np.float32
    assert len(set(rows.tolist())) == 4
    env.seed(3)
    np.testing.assert_array_equal(env.reset(), obs)  # seeded reset is reproducible
    ended = 0
    for _ in range(4):
        obs, rewards, dones, infos = env.step(np.zeros((4, 2), np.float32))
        assert obs.shape == (4, 39) and rewards.shape == (4,) and dones.shape == (4,)
        assert np.all(rewards == rewards[0]) and np.all(dones == dones[0])
        if dones[0]:
            ended += 1
            assert all(info["terminal_observation"].shape == (39,) for info in infos)
            assert all(info["TimeLimit.truncated"] for info in infos)
    assert ended >= 1  # 2-3 step episodes
    assert env.get_attr("render_mode") == [None] * 4
    assert env.env_is_wrapped(object) == [False] * 4


def test_sb3_wrappers_and_ppo_act_in_it(sb3_env):
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecCheckNan, VecMonitor, VecNormalize

    # VecCheckNan checks every action and observation; VecMonitor needs the done flags.
    env = VecCheckNan(
        VecNormalize(VecMonitor(sb3_env), norm_reward=False), raise_exception=True
    )
    model = PPO("MlpPolicy", env, n_steps=4, batch_size=8, n_epochs=1, seed=0)
    model.learn(total_timesteps=32)
    obs = env.reset()
    actions, _ = model.predict(obs, deterministic=True)
    assert actions.shape == (4, 2)
    obs, rewards, dones, infos = env.step(actions)
    assert np.all(np.isfinite(obs)) and np.all(np.isfinite(rewards))
    assert env.venv.venv.episode_count >= 1  # VecMonitor saw episodes end
