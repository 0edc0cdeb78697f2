"""Training fresh optimizees on many seeds with an LO or a baseline, and scoring them.

:func:`seed_curves` is the one program both long-horizon evaluations run: the PES
agent's periodic validation (:class:`Validation`) and ``scripts/evaluate.py``. It
trains a fresh optimizee per seed with an optax optimizer built from a traced
hyper-parameter (an LO's meta-parameters, an AdamW lr), so one compilation serves
every LO of a spec or every point of a baseline's grid.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from elo_gym import envs, inner_loop, lopt, lopt_fused
from elo_gym.lo_spec import LOSpec

# What a validation row reports of each optimizer: the task's final validation loss,
# the mean of the last minibatch losses, and the update and parameter norms at the
# end over those at the start.
METRICS = ("valid_loss", "train_loss", "update_norm_ratio", "param_norm_ratio")
# Who :class:`Validation` runs: the LO, its silenced self (every MLP weight zero) and
# Adam at lr 1e-3.
VALIDATED = ("lo", "silenced", "adam")
# The losses whose std over seeds is reported too (``<metric>_std``).
SPREAD = ("valid_loss", "train_loss")
# The learned part's effect, seed by seed: the LO's loss minus its silenced self's on
# the same fresh optimizee (negative: the learned part helps), mean and std over seeds:
# the effect's own spread (at 10x the two runs of a seed are nearly uncorrelated, so
# it is about the runs' spreads, not less; docs/levers.md, eighteenth).
GAIN = "lo_minus_silenced"
# The metrics.csv columns of a validation row.
COLUMNS = (
    *(f"val_{who}_{what}" for who in VALIDATED for what in METRICS),
    *(f"val_{who}_{what}_std" for who in ("lo", "silenced") for what in SPREAD),
    *(f"val_{GAIN}_{what}{end}" for what in SPREAD for end in ("", "_std")),
)
ADAM_LR = 1e-3


Curves = dict[str, jax.Array]  # name -> (seeds, steps) or (seeds, evaluations)


@functools.lru_cache(maxsize=32)
def seed_curves(
    task: envs.Task,
    build: Callable[[Any], optax.GradientTransformation],
    *,
    steps: int,
    eval_every: int,
    host_loop: bool = False,
) -> Callable[[Any, Any, jax.Array], Curves]:
    """``program(hyper, data, keys)``: :func:`inner_loop.train_curves` of the
    optimizer ``build(hyper)`` on each seed key, vmapped and jitted (or driven from
    the host, :class:`inner_loop.HostLoop`, with ``host_loop``).

    Args:
      task: the optimizee task.
      build: hyper -> optax transformation; ``hyper`` is traced.
      steps: inner steps H.
      eval_every: inner steps between evaluations of the validation and test splits.
      host_loop: a Python loop of jitted steps instead of one ``lax.scan``.
    """
    if host_loop:
        return inner_loop.HostLoop(task, build, steps=steps, eval_every=eval_every)
    train = functools.partial(
        inner_loop.train_curves, task, steps=steps, eval_every=eval_every
    )

    @jax.jit
    def program(hyper: Any, data: Any, keys: jax.Array) -> Curves:
        return jax.vmap(functools.partial(train, build(hyper)), (None, 0))(data, keys)

    return program


@functools.lru_cache(maxsize=32)
def lo_curves(
    task: envs.Task,
    spec: LOSpec,
    *,
    steps: int,
    eval_every: int,
    host_loop: bool = False,
) -> Callable[[lopt.MetaParams, Any, jax.Array], Curves]:
    """:func:`seed_curves` of the small_fc_lopt of ``spec``; hyper: its weights. The
    LO is told the run's length (``steps``), which a relative-time LO reads."""
    build = functools.partial(
        lopt.small_fc_lopt,
        spec=spec,
        layout=lopt_fused.default_layout(),
        total_steps=steps,
    )
    return seed_curves(
        task, build, steps=steps, eval_every=eval_every, host_loop=host_loop
    )


def seed_losses(curves: Curves, window: int) -> dict[str, np.ndarray]:
    """:data:`SPREAD` of each seed, (seeds,): the final validation loss and the mean
    of the last ``window`` training losses."""
    c = jax.device_get(curves)
    return {
        "valid_loss": np.asarray(c["valid_loss"], np.float64)[:, -1],
        "train_loss": np.asarray(c["train_loss"], np.float64)[:, -window:].mean(1),
    }


def seed_weight_growth(curves: Curves) -> np.ndarray:
    """Each seed's parameter norm at the last evaluation over the first, (seeds,)."""
    norm = np.asarray(jax.device_get(curves["param_norm"]), np.float64)
    return norm[:, -1] / norm[:, 0]


def summary(curves: Curves, window: int) -> dict[str, float]:
    """:data:`METRICS` (means over seeds) and the stds over seeds of :data:`SPREAD`
    (``<metric>_std``); ``window``: the inner steps averaged at each end. A diverged
    optimizee scores inf."""
    c = {k: np.asarray(v, np.float64) for k, v in jax.device_get(curves).items()}
    per_seed = seed_losses(c, window)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {
            **{k: v.mean() for k, v in per_seed.items()},
            "update_norm_ratio": (
                c["update_norm"][:, -window:].mean()
                / c["update_norm"][:, :window].mean()
            ),
            "param_norm_ratio": seed_weight_growth(c).mean(),
            **{f"{k}_std": per_seed[k].std() for k in SPREAD},
        }
    return {k: float(v) if np.isfinite(v) else math.inf for k, v in out.items()}


class Validation:
    """The LO, the LO with its MLP silenced and Adam (lr 1e-3) training fresh
    optimizees of a task for ``steps`` inner steps on the same seeds, scored on the
    validation split (:func:`summary`).

    This is how a user meets the LO (a plain optax loop), so it shows what a
    meta-loss hides: whether the LO keeps improving past its horizon and anneals its
    steps like Adam. The silenced LO (its nominal term alone, or a zero update for an
    LO without one) is what the learned part is measured against. The silenced LO's
    and Adam's runs do not change, so they run once.

    Args:
      task: the optimizee task; ``data`` its loaded data.
      spec: the LO's settings.
      steps: inner steps H (the agent's: 10 x its horizon).
      seeds: fresh optimizees per run; ``seed``: their keys' seed.
    """

    def __init__(
        self,
        task: envs.Task,
        data: Any,
        spec: LOSpec,
        *,
        steps: int,
        seeds: int,
        seed: int,
    ):
        self.window = max(1, steps // 10)
        self._data = data
        self._keys = jax.random.split(jax.random.PRNGKey(seed), seeds)
        runs = functools.partial(seed_curves, task, steps=steps, eval_every=self.window)
        self._lo = lo_curves(task, spec, steps=steps, eval_every=self.window)
        silenced = jax.tree.map(
            jnp.zeros_like,
            lopt.init_meta_params(jax.random.PRNGKey(0), spec.hidden_size),
        )
        self.silenced, self._silenced_seeds = self._score(self._lo, silenced)
        adam = runs(optax.adam)
        self.adam = self._score(adam, jnp.float32(ADAM_LR))[0]

    def _score(
        self, program: Callable, hyper: Any
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        # One transfer to the host serves both.
        curves = jax.device_get(program(hyper, self._data, self._keys))
        return summary(curves, self.window), seed_losses(curves, self.window)

    def __call__(self, meta: lopt.MetaParams) -> dict[str, float]:
        """The row entries :data:`COLUMNS` for the LO ``meta``."""
        lo, lo_seeds = self._score(self._lo, meta)
        adam = {k: v for k, v in self.adam.items() if not k.endswith("_std")}
        gain = {}
        for what in SPREAD:
            with np.errstate(invalid="ignore"):
                diff = lo_seeds[what] - self._silenced_seeds[what]
            finite = bool(np.all(np.isfinite(diff)))
            gain[what] = float(diff.mean()) if finite else math.inf
            gain[f"{what}_std"] = float(diff.std()) if finite else math.inf
        return {
            **{f"val_lo_{k}": v for k, v in lo.items()},
            **{f"val_silenced_{k}": v for k, v in self.silenced.items()},
            **{f"val_adam_{k}": v for k, v in adam.items()},
            **{f"val_{GAIN}_{k}": v for k, v in gain.items()},
        }
