"""Adapters that let row-wise agents from other libraries act in the ELO env.

The LO acts row by row: every optimizee parameter is one row of features (39,) and
gets one action row (d, m) (2,). These adapters expose that per-row view:

- :class:`RowDemoStream`: batches of (features row, expert action row) drawn on the
  device from the vector env core, as demonstrations for behavior cloning, e.g. with
  ``imitation``'s BC (:meth:`RowDemoStream.transitions`) or a plain torch policy
  (:meth:`RowDemoStream.numpy_batch`).
- ``SB3RowVecEnv``: a stable-baselines3 ``VecEnv`` whose K sub-envs are K parameter
  rows of one optimizee; the other rows follow a fill policy (the expert by default).

Neither stable-baselines3 nor torch is imported by ``import elo_gym.adapters``:
``SB3RowVecEnv`` is built on first access (PEP 562 module ``__getattr__``).

Install the extras with ``pip install torch==2.13.0`` (a CPU build; install it first so
that pip does not pull a CUDA build) then ``pip install ".[sb3]"``; imitation 1.0.1 pins
an old gymnasium, so install it without its dependencies:
``pip install --no-deps imitation==1.0.1``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np

from elo_gym import core, lopt
from elo_gym.settings import EnvSettings

# A row-wise policy: features (..., P, 39) -> actions (..., P, 2), traceable by JAX.
# None means the expert (Adam's action); MetaParams means small_fc_lopt's MLP.
Policy = Callable[[jax.Array], jax.Array] | lopt.MetaParams | None

ROW_OBSERVATION_SPACE = gym.spaces.Box(
    -np.inf, np.inf, shape=(lopt.NUM_FEATURES,), dtype=np.float32
)


def _settings(env_id: str, env_kwargs: dict[str, Any]) -> EnvSettings:
    # alpha = 1 by default: the acting policy alone moves the optimizee (alpha = 0
    # would let Adam move it whatever the policy does).
    return EnvSettings.from_id(env_id, **{"alpha": 1.0, **env_kwargs})


def _policy_fn(policy: Policy) -> Callable[[jax.Array], jax.Array] | None:
    if isinstance(policy, lopt.MetaParams):
        return functools.partial(lopt.apply_mlp, policy.mlp)
    if policy is not None and not callable(policy):
        raise TypeError(
            "policy must be None (the expert), lopt.MetaParams or a JAX-traceable "
            f"callable features (..., P, 39) -> actions (..., P, 2); got {policy!r}"
        )
    return policy


def current_rows(
    cfg: core.EnvConfig, state: core.VecEnvState, p: core.EnvParams
) -> tuple[jax.Array, jax.Array]:
    """Features (C, P, 39) and expert actions (C, P, 2) of the copies' current obs."""
    obs = jax.vmap(core.observe, (None, 0, None))(cfg, state.copies, p)
    return obs["features"], jax.vmap(core.expert_action, (None, 0))(cfg, state.copies)


def _act(
    policy_fn: Callable[[jax.Array], jax.Array] | None,
    features: jax.Array,
    expert: jax.Array,
) -> jax.Array:
    return expert if policy_fn is None else policy_fn(features).astype(jnp.float32)


def collect_rows(
    cfg: core.EnvConfig,
    policy_fn: Callable[[jax.Array], jax.Array] | None,
    num_steps: int,
    rows_per_step: int,
    state: core.VecEnvState,
    key: jax.Array,
    p: core.EnvParams,
) -> tuple[core.VecEnvState, dict[str, jax.Array]]:
    """Rolls every copy ``num_steps`` steps and draws ``rows_per_step`` rows per copy
    and step (uniformly, with replacement); jit with the first four arguments static.

    Returns:
      (state, batch) with batch entries of leading size B = num_steps * C *
      rows_per_step: ``obs`` (B, 39), ``acts`` (B, 2) the expert's action for that row
      (whatever policy acted), ``next_obs`` (B, 39) the row's features after the step
      (the final ones when the episode ended), ``dones`` (B,) bool, ``row`` (B,) int32
      the parameter index, ``copy`` (B,) int32 and ``inner_step`` (B,) int32.
    """
    num_params = core.num_params(cfg.task)
    copies = jnp.broadcast_to(
        jnp.arange(cfg.num_copies, dtype=jnp.int32)[:, None],
        (cfg.num_copies, rows_per_step),
    )

    def body(carry, key):
        state, feats, expert = carry
        idx = jax.random.randint(key, copies.shape, 0, num_params, dtype=jnp.int32)

        def take(x):
            return jnp.take_along_axis(x, idx[..., None], axis=1)

        actions = _act(policy_fn, feats, expert)
        inner = state.copies.lo.count
        state, obs, _, term, trunc, info = core.step(
            cfg, state, actions, p, final_obs=True
        )
        rows = {
            "obs": take(feats),
            "acts": take(expert),
            "next_obs": take(info["final_obs"]["features"]),
            "dones": jnp.broadcast_to((term | trunc)[:, None], idx.shape),
            "row": idx,
            "copy": copies,
            "inner_step": jnp.broadcast_to(inner[:, None], idx.shape),
        }
        return (state, obs["features"], info["expert_action"]), rows

    feats, expert = current_rows(cfg, state, p)
    (state, _, _), rows = jax.lax.scan(
        body, (state, feats, expert), jax.random.split(key, num_steps)
    )
    batch = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[3:]), rows)
    return state, batch


class RowDemoStream:
    """An endless stream of per-row demonstrations (features row, expert action row).

    Each batch rolls the C env copies ``steps_per_batch`` inner steps with ``policy``
    (the expert by default; with a learner this is DAgger-style relabeling) and draws
    ``rows_per_step`` random rows per copy and step, all in one jitted call on the
    device. A row is one optimizee parameter; its label is Adam's action for it,
    ``(d*, m*) = (-dtheta_H / step_mult, 0)``.

    Iterating yields dicts of JAX arrays (see :func:`collect_rows`); :meth:`numpy_batch`
    and :meth:`transitions` give numpy arrays and ``imitation`` ``Transitions``.

    Example:
      >>> stream = RowDemoStream(num_copies=2, rows_per_step=16, seed=0)
      >>> batch = next(iter(stream))
      >>> batch["obs"].shape, batch["acts"].shape
      ((256, 39), (256, 2))
    """

    observation_space = ROW_OBSERVATION_SPACE
    action_space = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)

    def __init__(
        self,
        env_id: str = "ELO-Digits-MLP",
        *,
        num_copies: int = 4,
        rows_per_step: int = 64,
        steps_per_batch: int = 8,
        policy: Policy = None,
        seed: int = 0,
        **env_kwargs: Any,
    ):
        """Builds the env core for ``env_id`` (``env_kwargs``: :class:`EnvSettings`
        fields; ``alpha`` defaults to 1 so that the acting policy moves the optimizee).
        """
        for name, value in (
            ("num_copies", num_copies),
            ("rows_per_step", rows_per_step),
            ("steps_per_batch", steps_per_batch),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        settings = _settings(env_id, env_kwargs)
        self.config = settings.config(num_copies)
        self.params = settings.params(self.config.task.load_data())
        self.num_params = core.num_params(self.config.task)
        self.batch_size = steps_per_batch * num_copies * rows_per_step
        self._collect = jax.jit(
            functools.partial(
                collect_rows,
                self.config,
                _policy_fn(policy),
                steps_per_batch,
                rows_per_step,
            )
        )
        self._state, _, _ = jax.jit(functools.partial(core.reset, self.config))(
            core.copy_keys(self.config, seed), self.params
        )
        # Row draws use their own stream, apart from the copies' keys.
        self._key = jax.random.fold_in(jax.random.PRNGKey(seed), 0x726F77)

    def next_batch(self) -> dict[str, jax.Array]:
        """The next batch, as JAX arrays on the device (no host transfer)."""
        self._key, key = jax.random.split(self._key)
        self._state, batch = self._collect(self._state, key, self.params)
        return batch

    def __iter__(self) -> Iterator[dict[str, jax.Array]]:
        return self

    def __next__(self) -> dict[str, jax.Array]:
        return self.next_batch()

    def numpy_batch(self, num_batches: int = 1) -> dict[str, np.ndarray]:
        """``num_batches`` batches concatenated, as numpy arrays, plus ``infos`` (an
        object array of empty dicts), the layout of ``imitation``'s ``Transitions``."""
        batches = jax.device_get([self.next_batch() for _ in range(num_batches)])
        out = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
        out["infos"] = np.array([{} for _ in range(len(out["obs"]))], dtype=object)
        return out

    def numpy_batches(self) -> Iterator[dict[str, np.ndarray]]:
        """Endless numpy batches with ``obs`` and ``acts`` (and the rest): usable as
        ``imitation`` BC demonstrations with ``batch_size=self.batch_size``."""
        while True:
            yield self.numpy_batch()

    def transitions(self, num_batches: int = 1) -> Any:
        """``imitation.data.types.Transitions`` of ``num_batches`` batches.

        Raises:
          ImportError: imitation is not installed (``pip install --no-deps
            imitation==1.0.1``).
        """
        try:
            from imitation.data import types
        except ImportError as e:
            raise ImportError(
                "RowDemoStream.transitions needs imitation: pip install --no-deps "
                "imitation==1.0.1 (after the sb3 extra)"
            ) from e
        b = self.numpy_batch(num_batches)
        return types.Transitions(
            obs=b["obs"],
            acts=b["acts"],
            infos=b["infos"],
            next_obs=b["next_obs"],
            dones=b["dones"],
        )


def _row_vec_env_step(
    cfg: core.EnvConfig,
    fill_fn: Callable[[jax.Array], jax.Array] | None,
    num_rows: int,
    state: core.VecEnvState,
    rows: jax.Array,
    row_actions: jax.Array,
    key: jax.Array,
    p: core.EnvParams,
):
    """One step of ``SB3RowVecEnv``: the fill policy's actions with the K subsampled
    rows replaced by the agent's, then a fresh row subsample where the episode ended."""
    feats, expert = current_rows(cfg, state, p)
    actions = _act(fill_fn, feats, expert)
    actions = actions.at[0, rows].set(row_actions.astype(jnp.float32))
    state, obs, reward, term, trunc, info = core.step(
        cfg, state, actions, p, final_obs=True
    )
    done = (term | trunc)[0]
    new_rows = jnp.where(done, _draw_rows(cfg, key, num_rows), rows)
    final = info["final_obs"]["features"][0, rows]
    return (
        state,
        new_rows,
        obs["features"][0, new_rows],
        reward[0],
        term[0],
        done,
        final,
    )


def _draw_rows(cfg: core.EnvConfig, key: jax.Array, num_rows: int) -> jax.Array:
    num_params = core.num_params(cfg.task)
    return jax.random.choice(key, num_params, (num_rows,), replace=False).astype(
        jnp.int32
    )


def _row_vec_env_reset(
    cfg: core.EnvConfig, num_rows: int, keys: jax.Array, p: core.EnvParams
):
    state, obs, _ = core.reset(cfg, keys, p)
    rows = _draw_rows(cfg, jax.random.fold_in(keys[0], 1), num_rows)
    return state, rows, obs["features"][0, rows]


class _RowVecEnv:
    """The logic of ``SB3RowVecEnv``; the class itself adds the SB3 ``VecEnv`` base.

    One optimizee; K of its parameter rows, drawn without replacement at every episode
    start, are the K sub-envs. Observation: the row's features, Box(39,); action: the
    row's (d, m), Box(2,) clipped to ``[-action_bound, action_bound]``. Every row gets
    the env's reward (shared by the rows of the optimizee) and ends its episode with
    it; ``infos[i]["terminal_observation"]`` then holds the row's final features and
    ``"TimeLimit.truncated"`` whether the episode was cut by its length (not diverged).
    """

    render_mode = None

    def __init__(
        self,
        env_id: str = "ELO-Digits-MLP",
        *,
        num_rows: int = 8,
        fill_policy: Policy = None,
        action_bound: float = 100.0,
        seed: int = 0,
        **env_kwargs: Any,
    ):
        settings = _settings(env_id, {"paired": False, **env_kwargs})
        self.config = settings.config(1)
        num_params = core.num_params(self.config.task)
        if not 1 <= num_rows <= num_params:
            raise ValueError(
                f"num_rows must be in [1, {num_params}] (the optimizee's parameter "
                f"count), got {num_rows}"
            )
        if not action_bound > 0:
            raise ValueError(f"action_bound must be > 0, got {action_bound}")
        self.params = settings.params(self.config.task.load_data())
        self._reset_fn = jax.jit(
            functools.partial(_row_vec_env_reset, self.config, num_rows)
        )
        self._step_fn = jax.jit(
            functools.partial(
                _row_vec_env_step, self.config, _policy_fn(fill_policy), num_rows
            )
        )
        action_space = gym.spaces.Box(
            -action_bound, action_bound, shape=(2,), dtype=np.float32
        )
        super().__init__(num_rows, ROW_OBSERVATION_SPACE, action_space)
        self._next_seed = seed
        self._state: core.VecEnvState | None = None
        self._rows: jax.Array | None = None
        self._key = jax.random.PRNGKey(seed)
        self._actions: np.ndarray | None = None

    @property
    def rows(self) -> np.ndarray:
        """(K,) parameter indices of the current sub-envs."""
        return np.asarray(self._rows)

    def reset(self) -> np.ndarray:
        seed = self._seeds[0] if self._seeds[0] is not None else self._next_seed
        self._next_seed = seed + 1  # a new optimizee on each plain reset()
        self._key = jax.random.PRNGKey(seed)
        self._state, self._rows, obs = self._reset_fn(
            core.copy_keys(self.config, seed), self.params
        )
        self._reset_seeds()
        self._reset_options()
        return np.asarray(obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, np.float32).reshape(self.num_envs, 2)

    def step_wait(self):
        if self._state is None or self._actions is None:
            raise RuntimeError("call reset() and step_async() before step_wait()")
        bound = self.action_space.high
        actions = np.clip(self._actions, -bound, bound)
        self._key, key = jax.random.split(self._key)
        self._state, self._rows, obs, reward, term, done, final = self._step_fn(
            self._state, self._rows, actions, key, self.params
        )
        obs, reward, term, done, final = jax.device_get(
            (obs, reward, term, done, final)
        )  # one host transfer per step
        k = self.num_envs
        rewards = np.full(k, reward, np.float32)
        dones = np.full(k, bool(done))
        infos: list[dict[str, Any]] = [{} for _ in range(k)]
        if done:
            for i, info in enumerate(infos):
                info["terminal_observation"] = final[i]
                info["TimeLimit.truncated"] = not bool(term)
        self._actions = None
        return np.asarray(obs), rewards, dones, infos

    def close(self) -> None:
        self._state = None

    def _indices(self, indices: Any) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        if isinstance(indices, int):
            return [indices]
        return list(indices)

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        value = getattr(self, attr_name)
        return [value for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        # The sub-envs are rows of one optimizee: an attribute is shared by all.
        setattr(self, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: Any = None, **kwargs: Any
    ) -> list[Any]:
        method = getattr(self, method_name)
        return [method(*method_args, **kwargs) for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        return [False for _ in self._indices(indices)]


@functools.cache
def _sb3_row_vec_env() -> type:
    from stable_baselines3.common.vec_env import VecEnv

    return type(
        "SB3RowVecEnv",
        (_RowVecEnv, VecEnv),
        {"__module__": __name__, "__doc__": _RowVecEnv.__doc__},
    )


def __getattr__(name: str) -> Any:
    # SB3RowVecEnv subclasses SB3's VecEnv: build it on first use, so that importing
    # this module (and RowDemoStream) needs neither stable-baselines3 nor torch.
    if name == "SB3RowVecEnv":
        try:
            return _sb3_row_vec_env()
        except ImportError as e:
            raise ImportError(
                "SB3RowVecEnv needs stable-baselines3: pip install torch==2.13.0 "
                'then pip install ".[sb3]"'
            ) from e
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# SB3RowVecEnv comes from __getattr__ above.
__all__ = [  # noqa: F822
    "RowDemoStream",
    "SB3RowVecEnv",
    "collect_rows",
    "current_rows",
]
