"""The Gymnasium faces: registration, conformance, autoreset, wrappers, bad input."""

import pickle
import subprocess
import sys
import warnings

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

import elo_gym
from elo_gym import core, spaces
from elo_gym import env as elo_env
from elo_gym.envs import DATA_DIR_ENV, DatasetNotFoundError, make_image_mlp_task

ENV_ID = "ELO-Digits-MLP"
# Small and quick: a linear model on digits (P = 650), short episodes, and p_th = 1 so
# that the vector env's shared buffer never feeds a reset (single == vector slice).
KW = dict(hidden_sizes=(), batch_size=16, augment=False, n_min=2, n_max=4, p_th=1.0)
P = 650
N = 4  # vector copies

# Names of the jitted functions lowered to XLA for compilation, in order. (Lowering
# precedes every compile, also one served by the persistent compilation cache.)
COMPILES: list[str] = []
OBS_TIED = (
    "expert_update",
    "expert_action",
    "inner_step",
    "start_step",
    "episode_length",
    "run_length",
    "from_buffer",
)
STEP_KEYS = ("task_loss", "bc_loss", "diverged", "pushed")


def _on_event(name, duration, **kwargs):
    del duration
    if name == "/jax/core/compile/jaxpr_to_mlir_module_duration":
        COMPILES.append(kwargs.get("fun_name", ""))


jax.monitoring.register_event_duration_secs_listener(_on_event)


@pytest.fixture(scope="module", autouse=True)
def _quick_compiles():
    """XLA's backend optimizations take most of the compile time of these programs and
    change nothing the tests check."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="module")
def made():
    """gymnasium.make plus a first reset and step, recording warnings and compiles."""
    start = len(COMPILES)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env = gym.make(ENV_ID, **KW)
        made_warnings = [str(w.message) for w in caught]
        obs, info = env.reset(seed=0)
        env.step(info["expert_action"])
    return env, made_warnings, [str(w.message) for w in caught], start


@pytest.fixture(scope="module")
def single(made):
    return made[0].unwrapped


@pytest.fixture(scope="module")
def vec():
    start = len(COMPILES)
    env = gym.make_vec(ENV_ID, num_envs=N, **KW)
    env.compiles_from = start
    return env


def _numpy(tree):
    return jax.tree.map(np.asarray, tree)


def _slice(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def _assert_tree_close(actual, expected, what=""):
    assert set(actual) == set(expected) if isinstance(actual, dict) else True, what
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        a, e = np.asarray(a), np.asarray(e)
        assert a.shape == e.shape and a.dtype == e.dtype, what
        if np.issubdtype(a.dtype, np.floating):
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-7, err_msg=what)
        else:
            np.testing.assert_array_equal(a, e, err_msg=what)


# --- registration ---


def test_import_registers_exactly_the_seven_ids():
    ids = {name for name in gym.registry if name.startswith("ELO-")}
    expected = {
        "ELO-Digits-MLP",
        "ELO-ImageNet32-MLP",
        "ELO-ImageNet32-ResNet18",
        "ELO-FineWeb-GPT2Mini",
        "ELO-Teacher-MLP",
        "ELO-PySource-GPT2Mini",
        "ELO-Task",
    }
    assert ids == expected == set(elo_gym.ENV_IDS)
    for name in ids:
        spec = gym.spec(name)
        assert spec.version is None and spec.name == name
        assert spec.entry_point == "elo_gym.env:ELOEnv"
        assert spec.vector_entry_point == "elo_gym.env:ELOVectorEnv"
    assert gym.spec("ELO-ImageNet32-MLP").kwargs["dataset"] == "imagenet32"
    assert gym.spec("ELO-ImageNet32-ResNet18").kwargs["model"] == "resnet18"
    assert gym.spec("ELO-FineWeb-GPT2Mini").kwargs == {
        "model": "gpt2mini",
        "dataset": "fineweb",
    }


def test_make_warns_about_nothing(made):
    env, at_make, at_use, _ = made
    assert at_make == []  # no version/registration warning from make itself
    assert at_use == []  # and none from the first reset and step either
    assert isinstance(env.unwrapped, elo_env.ELOEnv)


def test_import_loads_no_data(tmp_path):
    """In a fresh interpreter, from another directory, with the loader booby-trapped;
    the adapters import neither torch nor stable-baselines3 (one interpreter for
    both checks: each start imports JAX)."""
    code = """
import sys
import sklearn.datasets
def boom(*args, **kwargs):
    raise AssertionError("data loaded at import")
sklearn.datasets.load_digits = boom
import gymnasium, jax
import elo_gym
assert gymnasium.spec("ELO-Digits-MLP").vector_entry_point
assert gymnasium.spec("ELO-ImageNet32-MLP").entry_point
assert "tensorflow_datasets" not in sys.modules
assert sum(a.size for a in jax.live_arrays()) < 1000, jax.live_arrays()
import elo_gym.adapters
from elo_gym.adapters import RowDemoStream
bad = {"torch", "stable_baselines3", "imitation"} & set(sys.modules)
assert not bad, bad
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


# --- single env ---


def test_check_env_passes(single):
    with warnings.catch_warnings():
        # check_env's advice on the unbounded scalar Boxes (loss, inner step, alpha).
        warnings.filterwarnings("ignore", message=".*Box observation space m")
        check_env(single)


def test_single_env_api(single):
    assert single.metadata["jax"] is True
    assert single.metadata["autoreset_mode"] == AutoresetMode.DISABLED
    assert single.observation_space["features"].shape == (P, 39)
    assert single.action_space.shape == (P, 2)
    obs, info = single.reset(seed=1)
    assert _numpy(obs) in single.observation_space
    assert set(info) >= set(OBS_TIED) | {"task_loss", "bc_loss"}
    obs, reward, term, trunc, info = single.step(info["expert_action"])
    assert isinstance(obs["features"], jax.Array)  # JAX arrays, no host round trip
    assert reward.shape == term.shape == trunc.shape == ()
    assert set(info) >= set(OBS_TIED) | set(STEP_KEYS)


def test_single_env_returns_final_obs_then_continues(single):
    """At the end of an episode step returns the final observation; reset() then
    returns the first observation of the episode the core has already started."""
    obs, info = single.reset(seed=2)
    for _ in range(KW["n_max"]):
        obs, reward, term, trunc, info = single.step(info["expert_action"])
        if term or trunc:
            break
    assert bool(trunc) and not bool(term)
    assert (
        int(info["inner_step"]) == int(info["episode_length"]) == int(obs["inner_step"])
    )
    assert KW["n_min"] <= int(info["episode_length"]) <= KW["n_max"]
    obs, info = single.reset()
    assert (
        int(obs["inner_step"])
        == int(info["inner_step"])
        == int(info["start_step"])
        == 0
    )
    # reset() mid-episode starts another episode.
    single.step(info["expert_action"])
    obs, info = single.reset()
    assert int(obs["inner_step"]) == 0 and float(info["bc_loss"]) == 0.0


# --- vector env ---


def test_make_vec(vec):
    assert isinstance(vec, elo_env.ELOVectorEnv) and vec.num_envs == N
    assert vec.metadata["jax"] is True
    assert vec.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert vec.single_observation_space["features"].shape == (P, 39)
    assert vec.observation_space["features"].shape == (N, P, 39)
    assert vec.single_action_space.shape == (P, 2)
    assert vec.action_space.shape == (N, P, 2)
    obs, info = vec.reset(seed=0)
    assert _numpy(obs) in vec.observation_space
    for name, value in info.items():
        if not name.startswith("_"):
            assert value.shape[0] == N
            np.testing.assert_array_equal(info[f"_{name}"], True)


def test_same_step_autoreset(vec):
    """As Gymnasium's test_autoreset_within_step: on the step where a copy finishes, obs
    is the new episode's first obs and info["final_obs"] the one it reached."""
    obs, info = vec.reset(seed=3)
    np.testing.assert_array_equal(obs["inner_step"], 0)
    assert "final_obs" not in info
    episodes = np.zeros(N, int)
    for t in range(10):
        prev = obs
        actions = info["expert_action"] + 0.1 * jax.random.normal(
            jax.random.PRNGKey(t), (N, P, 2)
        )
        obs, reward, term, trunc, info = vec.step(actions)
        done = np.asarray(term | trunc)
        np.testing.assert_array_equal(info["_final_obs"], done)
        np.testing.assert_array_equal(info["_final_info"], done)
        final, final_info = info["final_obs"], info["final_info"]
        for name in OBS_TIED:
            np.testing.assert_array_equal(final_info[f"_{name}"], done)
        for i in range(N):
            was = float(prev["inner_step"][i])
            if done[i]:
                # The new episode's first observation (p_th = 1: a fresh start) ...
                assert float(obs["inner_step"][i]) == 0.0
                assert int(info["inner_step"][i]) == int(info["start_step"][i]) == 0
                # ... and the final one, one step past the observation acted on.
                assert float(final["inner_step"][i]) == was + 1
                assert int(final_info["inner_step"][i]) == int(
                    final_info["start_step"][i] + final_info["episode_length"][i]
                )
                assert _numpy(_slice(final, i)) in vec.single_observation_space
                assert not np.allclose(final["features"][i], obs["features"][i])
            else:
                assert float(obs["inner_step"][i]) == was + 1
                assert int(info["episode_length"][i]) == int(
                    final_info["episode_length"][i]
                )
        np.testing.assert_array_equal(info["_task_loss"], True)
        np.testing.assert_allclose(info["task_loss"], prev["loss"])  # the step's L_task
        episodes += done
    assert episodes.min() >= 2  # N <= 4 in 10 steps: every copy restarted twice


def test_vector_slice_equals_single_env(single, vec):
    """Copy i of a vector env reset with seed s replays a single env reset with s + i,
    across episode boundaries (SAME_STEP vs final obs + reset())."""
    seed, steps = 11, 9
    rng = np.random.default_rng(0)
    actions = [rng.normal(size=(N, P, 2)).astype(np.float32) for _ in range(steps)]
    vec_trace = [vec.reset(seed=seed, options={"alpha": 0.5})]
    vec_trace += [vec.step(a) for a in actions]
    for i in range(N):
        obs, info = single.reset(seed=seed + i, options={"alpha": 0.5})
        v_obs, v_info = vec_trace[0]
        _assert_tree_close(obs, _slice(v_obs, i), f"reset obs, copy {i}")
        _assert_tree_close(info, {k: _slice(v_info[k], i) for k in info}, "reset info")
        for t, a in enumerate(actions):
            obs, reward, term, trunc, info = single.step(a[i])
            v_obs, v_reward, v_term, v_trunc, v_info = vec_trace[t + 1]
            what = f"copy {i} step {t}"
            assert bool(term) == bool(v_term[i]) and bool(trunc) == bool(v_trunc[i]), (
                what
            )
            np.testing.assert_allclose(reward, v_reward[i], rtol=1e-5, err_msg=what)
            done = bool(term or trunc)
            tied = v_info["final_info"] if done else v_info
            expected = {
                k: _slice((tied if k in OBS_TIED else v_info)[k], i) for k in info
            }
            _assert_tree_close(
                obs, _slice(v_info["final_obs"] if done else v_obs, i), what
            )
            _assert_tree_close(info, expected, what)
            if done:
                obs, info = single.reset()
                _assert_tree_close(obs, _slice(v_obs, i), what + " reset")
                _assert_tree_close(
                    {k: info[k] for k in OBS_TIED},
                    {k: _slice(v_info[k], i) for k in OBS_TIED},
                    what,
                )
    assert any(bool(np.any(tr[3])) for tr in vec_trace[1:])  # episodes did end


# --- wrappers, compiles, spaces ---


def _all_numpy(tree):
    leaves = jax.tree.leaves(tree)
    return bool(leaves) and all(
        isinstance(x, np.ndarray | np.generic | bool | float | int)
        and not isinstance(x, jax.Array)
        for x in leaves
    )


def test_jax_to_numpy_single(single):
    env = gym.wrappers.JaxToNumpy(single)
    obs, info = env.reset(seed=0)
    assert _all_numpy(obs) and _all_numpy(info)
    assert isinstance(obs["features"], np.ndarray) and obs["features"].shape == (P, 39)
    for _ in range(5):  # crosses an episode end (N <= 4)
        obs, reward, term, trunc, info = env.step(info["expert_action"])
        assert _all_numpy(obs) and _all_numpy(info)
        assert _all_numpy([reward, term, trunc])
        if term or trunc:
            obs, info = env.reset()


def test_jax_to_numpy_vector(vec):
    env = gym.wrappers.vector.JaxToNumpy(vec)
    obs, info = env.reset(seed=0)
    assert _all_numpy(obs) and _all_numpy(info)
    for _ in range(5):
        obs, reward, term, trunc, info = env.step(info["expert_action"])
        assert (
            _all_numpy(obs) and _all_numpy(info) and _all_numpy([reward, term, trunc])
        )
        assert isinstance(info["final_obs"]["features"], np.ndarray)
    assert obs["features"].shape == (N, P, 39)


def test_each_env_compiles_its_step_once(made, single, vec):
    names = ("jit(step)", "jit(_single_step)", "jit(reset)", "jit(reset_copies)")
    # Warm up every jitted entry point once.
    obs, info = single.reset(seed=0)
    single.step(info["expert_action"])
    single.reset()
    v_obs, v_info = vec.reset(seed=0)
    vec.step(v_info["expert_action"])
    start = len(COMPILES)
    for t in range(12):
        single.set_outer_step(t, 12)
        vec.set_outer_step(t, 12, alpha_schedule="hold_linear")
        single.set_alpha(t / 11)
        # Actions as JAX float32 (uncommitted and committed), numpy float32 and float64.
        a = info["expert_action"]
        committed = jax.device_put(a, jax.devices()[0])
        action = (a, committed, np.asarray(a), np.asarray(a, np.float64))[t % 4]
        obs, reward, term, trunc, info = single.step(action)
        if term or trunc:
            obs, info = single.reset(options={"alpha": 0.3} if t % 2 else None)
        if t % 2:
            v_obs, *_, v_info = vec.step(np.asarray(v_info["expert_action"]))
        else:  # through the wrapper: numpy in, dlpack-committed JAX arrays to the env
            *_, v_info = gym.wrappers.vector.JaxToNumpy(vec).step(
                np.asarray(v_info["expert_action"])
            )
        if t == 6:
            obs, info = single.reset(
                seed=5, options={"outer_step": 2, "num_outer_steps": 9}
            )
            v_obs, v_info = vec.reset(options={"alpha": 0.9})
    assert [n for n in COMPILES[start:] if n in names] == []
    # Over each env's whole life in this module: one compile of its step.
    assert COMPILES[made[3] :].count("jit(_single_step)") == 1
    assert COMPILES[vec.compiles_from :].count("jit(step)") == 1


def test_spaces_hold_no_per_parameter_arrays():
    """The ImageNet-32 MLP's observation is (555368, 39); its spaces stay tiny."""
    cfg = core.EnvConfig(task=make_image_mlp_task("imagenet32"))  # no data needed
    obs_space, act_space = elo_env._spaces(cfg)
    assert obs_space["features"].shape == (555_368, 39)
    assert act_space.shape == (555_368, 2)
    for space in (
        obs_space,
        act_space,
        batch_space(obs_space, 16),
        batch_space(act_space, 16),
    ):
        assert len(pickle.dumps(space)) < 20_000

    def array_bytes(obj, seen=()):
        if isinstance(obj, np.ndarray):
            return obj.nbytes
        if isinstance(obj, gym.Space) and id(obj) not in seen:
            return sum(array_bytes(v, (*seen, id(obj))) for v in vars(obj).values())
        if isinstance(obj, dict):
            return sum(array_bytes(v, seen) for v in obj.values())
        return 0

    assert array_bytes(batch_space(obs_space, 16)) < 1_000


def test_array_space():
    space = spaces.Array((3, 2), seed=0)
    x = space.sample()
    assert x.shape == (3, 2) and x.dtype == np.float32 and x in space
    assert np.zeros((3, 2), np.float64) not in space
    assert np.zeros((2, 3), np.float32) not in space
    assert jnp.zeros((3, 2)) in space
    assert [1.0] not in space
    assert space == spaces.Array((3, 2)) and space != spaces.Array((3, 2), np.float64)
    assert hash(space) == hash(spaces.Array((3, 2)))
    np.testing.assert_array_equal(spaces.Array((3, 2), seed=0).sample(), x)
    batched = batch_space(space, 5)
    assert isinstance(batched, spaces.Array) and batched.shape == (5, 3, 2)
    with pytest.raises(ValueError, match="mask"):
        space.sample(mask=np.ones(3))


# --- options and bad input ---


def test_alpha_and_outer_step_controls(single, vec):
    obs, info = single.reset(seed=0, options={"alpha": 0.25})
    assert float(obs["alpha"]) == 0.25 == float(single.params.alpha)
    single.set_alpha(0.75)
    obs, *_ = single.step(info["expert_action"])
    assert float(obs["alpha"]) == 0.75
    single.set_outer_step(3, 7)  # alpha_t = t / (T - 1)
    assert float(single.params.alpha) == 0.5 and int(single.params.outer_step) == 3
    assert int(single.params.n_max) == KW["n_max"]  # elo mode: n_max stays
    single.set_outer_step(6, 7, alpha_schedule=None)
    assert float(single.params.alpha) == 0.5 and int(single.params.outer_step) == 6
    single.reset(seed=0, options={"outer_step": 1, "num_outer_steps": 9})
    assert int(single.params.outer_step) == 1 and float(single.params.alpha) == 0.5
    obs, _ = vec.reset(seed=0, options={"alpha": 0.6})
    np.testing.assert_allclose(obs["alpha"], 0.6)
    vec.set_outer_step(6, 7)
    assert float(vec.params.alpha) == 1.0
    single.set_alpha(0.0)
    vec.set_alpha(0.0)


@pytest.mark.parametrize("cls", [elo_env.ELOEnv, elo_env.ELOVectorEnv])
def test_curriculum_n_max_grows_to_n_max_final(cls):
    env = cls(**{**KW, "mode": "curriculum", "n_max": 10, "n_max_final": 100})
    env.set_outer_step(0, 10)
    assert int(env.params.n_max) == 10 and float(env.params.alpha) == 0.0
    env.set_outer_step(3, 10)
    assert int(env.params.n_max) == 40
    env.set_outer_step(9, 10)
    assert int(env.params.n_max) == 100 and float(env.params.alpha) == 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            dict(mode="bogus"),
            r"unknown mode 'bogus'; valid: elo, naive, uniform, curriculum",
        ),
        (dict(p_th=1.5), r"p_th must be in \[0, 1\], got 1.5"),
        (dict(p_th=-0.2), r"p_th must be in \[0, 1\], got -0.2"),
        (dict(buffer_size=0), r"buffer_size must be >= 1, got 0"),
        (dict(n_min=5, n_max=3), r"n_min \(5\) must be <= n_max \(3\)"),
        (dict(alpha=1.5), r"alpha must be in \[0, 1\], got 1.5"),
        (dict(dataset="cifar10"), r"Unknown dataset 'cifar10'; valid datasets"),
        (
            dict(mode="curriculum", n_max=50, n_max_final=10),
            r"n_max_final \(10\) must be >= n_max \(50\)",
        ),
        (dict(bc_loss="l1"), r"unknown bc_loss 'l1'"),
        (dict(buffer_scope="pair"), r"buffer_scope='pair' needs paired=True"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gym.make(ENV_ID, **kwargs)
    with pytest.raises(ValueError, match=match):
        gym.make_vec(ENV_ID, num_envs=2, **kwargs)


def test_bad_knobs_fail_before_loading_data(tmp_path):
    # The ImageNet data dir is empty: a bad knob must be reported, not the dataset.
    with pytest.raises(ValueError, match="p_th"):
        gym.make("ELO-ImageNet32-MLP", data_dir=str(tmp_path), p_th=2.0)


def test_odd_num_envs_with_pairs():
    with pytest.raises(ValueError, match="even num_copies, got 3"):
        gym.make_vec(ENV_ID, num_envs=3, paired=True, **KW)


def test_missing_imagenet_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(DatasetNotFoundError) as error:
        gym.make("ELO-ImageNet32-MLP", data_dir=str(tmp_path))
    message = str(error.value)
    assert "imagenet32" in message and str(tmp_path) in message
    assert "tfds build" in message and "npz" in message  # how to prepare it
    with pytest.raises(DatasetNotFoundError):
        gym.make_vec("ELO-ImageNet32-MLP", num_envs=2, data_dir=str(tmp_path))
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with pytest.raises(
        DatasetNotFoundError, match=f"pass data_dir or set .{DATA_DIR_ENV}"
    ):
        gym.make("ELO-ImageNet32-MLP")


def test_bad_actions_and_calls(single, vec):
    with pytest.raises(RuntimeError, match="reset"):
        elo_env.ELOEnv(**KW).step(np.zeros((P, 2), np.float32))
    single.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(650, 2\).*got \(650, 3\)"):
        single.step(np.zeros((P, 3), np.float32))
    with pytest.raises(ValueError, match=r"shape \(650, 2\)"):
        single.step(np.zeros((N, P, 2), np.float32))
    with pytest.raises(ValueError, match="got list"):
        single.step([[0.0, 0.0]] * P)
    with pytest.raises(TypeError, match="float array, got dtype int32"):
        single.step(np.zeros((P, 2), np.int32))
    with pytest.raises(TypeError, match="float"):
        single.step(jnp.zeros((P, 2), bool))
    with pytest.raises(ValueError, match=r"unknown reset options \['bogus'\]"):
        single.reset(options={"bogus": 1})
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        single.set_alpha(1.5)
    vec.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(4, 650, 2\)"):
        vec.step(np.zeros((P, 2), np.float32))
    with pytest.raises(TypeError, match="float"):
        vec.step(np.zeros((N, P, 2), np.int64))
    with pytest.raises(ValueError, match="one int seed"):
        vec.reset(seed=[1, 2, 3, 4])
