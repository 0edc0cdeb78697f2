"""Gymnasium faces of the ELO env: thin stateful shells over :mod:`elo_gym.core`.

``gymnasium.make("ELO-Digits-MLP")`` gives :class:`ELOEnv` (one optimizee);
``gymnasium.make_vec("ELO-Digits-MLP", num_envs=N)`` gives :class:`ELOVectorEnv`. Both
hold only the core's state, its numeric params and their spaces, jit the core once at
construction, and return JAX arrays (``metadata["jax"] = True``; wrap with
``gymnasium.wrappers.JaxToNumpy`` or ``gymnasium.wrappers.vector.JaxToNumpy`` for
numpy).
"""

from __future__ import annotations

import functools
from typing import Any

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
from gymnasium.vector import AutoresetMode
from jax.sharding import SingleDeviceSharding

from elo_gym import core, schedules, spaces
from elo_gym.settings import EnvSettings


def _spaces(cfg: core.EnvConfig) -> tuple[gym.spaces.Dict, spaces.Array]:
    p = core.num_params(cfg.task)
    scalar = gym.spaces.Box(-np.inf, np.inf, shape=(), dtype=np.float32)
    obs = gym.spaces.Dict(
        {
            "features": spaces.Array((p, 39)),
            "inner_step": scalar,
            "loss": scalar,
            "alpha": scalar,
        }
    )
    return obs, spaces.Array((p, 2))


class _Shell:
    """What both faces share: config, params, jitted core, alpha/outer-step setters."""

    def _build(self, settings: EnvSettings, num_copies: int) -> None:
        self.settings = settings
        self.config = settings.config(num_copies)
        settings.params(None)  # Bad knobs fail before a possibly long data load.
        self.params = settings.params(self.config.task.load_data())
        # The core is jitted once here; knobs live in self.params, so changing them
        # (alpha, n_max, outer step) never recompiles. Fixing the input placement to
        # the data's device keeps it so when inputs arrive both committed (e.g. from
        # the JaxToNumpy wrappers, via dlpack) and uncommitted (jnp.asarray).
        device = next(iter(jax.tree.leaves(self.params.data)[0].devices()))
        jit = functools.partial(jax.jit, in_shardings=SingleDeviceSharding(device))
        self._reset = jit(functools.partial(core.reset, self.config))
        self._reset_copies = jit(functools.partial(core.reset_copies, self.config))
        self._step = jit(functools.partial(self._step_fn, self.config))
        self.state: core.VecEnvState | None = None
        self._seed_rng = np.random.default_rng()

    def set_alpha(self, alpha: float) -> None:
        """Sets alpha (Eq. 8-10) for the following steps."""
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.params = self.params.replace(alpha=jnp.float32(alpha))

    def set_outer_step(
        self,
        outer_step: int,
        num_outer_steps: int,
        alpha_schedule: str | None = "linear",
    ) -> None:
        """Tells the env the agent's progress: alpha_t = t / (T - 1) (unless
        ``alpha_schedule`` is None), curriculum n_max, and t > 0 for buffer restores."""
        s = self.settings
        curriculum = self.config.mode == "curriculum"
        values = schedules.at_outer_step(
            outer_step,
            num_outer_steps,
            behavior_cloning=True,
            n_max=s.n_max,
            n_max_final=s.n_max_final if curriculum else None,
            alpha_schedule=alpha_schedule or "linear",
        )
        self.params = self.params.replace(
            outer_step=jnp.int32(outer_step), n_max=jnp.int32(values.n_max)
        )
        if alpha_schedule is not None:
            self.set_alpha(values.alpha)

    def _apply_options(self, options: dict | None) -> None:
        options = dict(options or {})
        if "alpha" in options:
            self.set_alpha(float(options.pop("alpha")))
        if "outer_step" in options:
            self.set_outer_step(
                int(options.pop("outer_step")),
                int(options.pop("num_outer_steps")),
                None,
            )
        if options:
            raise ValueError(
                f"unknown reset options {sorted(options)}; valid: alpha, "
                "outer_step (with num_outer_steps)"
            )

    def _check_actions(self, actions: Any, shape: tuple[int, ...]) -> jax.Array:
        if not hasattr(actions, "shape") or tuple(actions.shape) != shape:
            raise ValueError(
                f"action must be an array of shape {shape} (one (d, m) row "
                f"per optimizee parameter), got "
                f"{getattr(actions, 'shape', type(actions).__name__)}"
            )
        if not jnp.issubdtype(actions.dtype, jnp.floating):
            raise TypeError(f"action must be a float array, got dtype {actions.dtype}")
        return jnp.asarray(actions, jnp.float32)


def _first(tree: dict) -> dict:
    return jax.tree.map(lambda x: x[0], tree)


def _single_step(
    config: core.EnvConfig,
    state: core.VecEnvState,
    action: jax.Array,
    params: core.EnvParams,
):
    """:func:`core.step` for one copy, as a ``gymnasium.Env`` returns it.

    Returns the step's (state, obs, reward, terminated, truncated, info), where obs and
    its info entries are the final ones when the step ends the episode, plus
    (done, obs, info) of the episode the core started in the same call.
    """
    state, obs, reward, term, trunc, info = core.step(
        config, state, action[None], params, final_obs=True
    )
    done = term[0] | trunc[0]
    final_obs = _first(info.pop("final_obs"))
    final_info = _first(info.pop("final_info"))
    obs, info = _first(obs), _first(info)
    next_info = {k: info[k] for k in final_info}
    next_info.update(task_loss=obs["loss"], bc_loss=jnp.zeros_like(info["bc_loss"]))

    def pick(final, current):
        return jax.tree.map(lambda f, c: jnp.where(done, f, c), final, current)

    step_info = dict(info, **pick(final_info, {k: info[k] for k in final_info}))
    return (
        state,
        pick(final_obs, obs),
        reward[0],
        term[0],
        trunc[0],
        step_info,
        (done, obs, next_info),
    )


class ELOEnv(_Shell, gym.Env):
    """One optimizee trained by whatever acts: the ELO environment, single copy.

    Observation: dict with ``features`` (P, 39), ``inner_step``, ``loss`` and ``alpha``.
    Action: (P, 2) = (d, m) per parameter. Reward: -[(1-alpha) L_bc + alpha L_task].
    ``info`` carries ``task_loss``, ``bc_loss``, ``expert_action`` ((P, 2), Adam's
    update as an action: d* = -dtheta_H / step_mult, m* = 0), ``expert_update`` ((P,)),
    ``inner_step``, ``start_step``, ``episode_length``, ``run_length`` and
    ``from_buffer``. The replay buffer persists across ``reset()`` calls;
    ``reset(seed=...)`` empties it.

    On the step that ends an episode, ``step`` returns the final observation (and its
    info). The core has already drawn the next episode then; ``reset()`` without seed
    or options returns its first observation, so that this env replays copy i of an
    :class:`ELOVectorEnv` seeded ``seed - i`` step for step.
    """

    metadata = {
        "render_modes": [],
        "jax": True,
        "autoreset_mode": AutoresetMode.DISABLED,
    }
    _step_fn = staticmethod(_single_step)

    def __init__(self, **kwargs: Any):
        self._build(EnvSettings(**kwargs), num_copies=1)
        self.observation_space, self.action_space = _spaces(self.config)
        self._next_start: tuple | None = None  # (done, obs, info) of the last step

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        next_start, self._next_start = self._next_start, None
        if (
            seed is None
            and not options
            and next_start is not None
            and bool(next_start[0])
        ):
            return next_start[1], next_start[2]
        self._apply_options(options)
        if seed is not None or self.state is None:
            seed = int(self.np_random.integers(2**31)) if seed is None else seed
            self.state, obs, info = self._reset(
                core.copy_keys(self.config, seed), self.params
            )
        else:
            self.state, obs, info = self._reset_copies(
                self.state, jnp.ones(1, bool), self.params
            )
        return _first(obs), _first(info)

    def step(self, action: Any):
        if self.state is None:
            raise RuntimeError("call reset() before step()")
        action = self._check_actions(action, self.action_space.shape)
        self.state, obs, reward, term, trunc, info, self._next_start = self._step(
            self.state, action, self.params
        )
        return obs, reward, term, trunc, info


class ELOVectorEnv(_Shell, gym.vector.VectorEnv):
    """``num_envs`` optimizees stepped together in one jitted call, sharing one buffer.

    Auto-reset is ``SAME_STEP``: a copy that finishes restarts inside the same ``step``;
    ``info["final_obs"]`` holds the observation it reached and ``info["final_info"]``
    that observation's expert action and episode fields (both masked by
    ``info["_final_obs"]`` / ``info["_final_info"]``). The step's ``task_loss``,
    ``bc_loss``, ``diverged`` and ``pushed`` stay at the top level. Every other info
    entry has shape (num_envs, ...) and a ``_name`` mask, as Gymnasium's vector envs do.
    """

    metadata = {
        "render_modes": [],
        "jax": True,
        "autoreset_mode": AutoresetMode.SAME_STEP,
    }
    _step_fn = staticmethod(functools.partial(core.step, final_obs=True))

    def __init__(self, num_envs: int = 1, **kwargs: Any):
        self.num_envs = num_envs
        self._build(EnvSettings(**kwargs), num_copies=num_envs)
        self.single_observation_space, self.single_action_space = _spaces(self.config)
        self.observation_space = gym.vector.utils.batch_space(
            self.single_observation_space, num_envs
        )
        self.action_space = gym.vector.utils.batch_space(
            self.single_action_space, num_envs
        )

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict | None = None
    ):
        if isinstance(seed, list | tuple):
            raise ValueError("ELOVectorEnv takes one int seed; copy i uses seed + i")
        if seed is not None:
            self._seed_rng = np.random.default_rng(seed)
        self._apply_options(options)
        seed = int(self._seed_rng.integers(2**31)) if seed is None else seed
        self.state, obs, info = self._reset(
            core.copy_keys(self.config, seed), self.params
        )
        return obs, _with_masks(info, self.num_envs)

    def step(self, actions: Any):
        if self.state is None:
            raise RuntimeError("call reset() before step()")
        actions = self._check_actions(actions, self.action_space.shape)
        self.state, obs, reward, term, trunc, info = self._step(
            self.state, actions, self.params
        )
        done = term | trunc
        final_info = info.pop("final_info")
        info = _with_masks(info, self.num_envs)
        info["final_info"] = {**final_info, **{f"_{k}": done for k in final_info}}
        info["_final_obs"] = info["_final_info"] = done
        return obs, reward, term, trunc, info


def _with_masks(info: dict, n: int) -> dict:
    everywhere = jnp.ones((n,), bool)
    out = dict(info)
    for name in info:
        out[f"_{name}"] = everywhere
    return out
