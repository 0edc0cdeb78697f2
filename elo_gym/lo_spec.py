"""The LO spec: every setting of a small_fc_lopt beside its weights, and its step.

:class:`LOSpec` is the one place an LO variant lives. It owns the settings (hidden
size, the step's multipliers, the variants below), checks them, reads and writes them
as ``lo.json`` records them, and holds the step that turns the MLP's output (d, m)
into a parameter update (ELO Eq. 2 with the variants) and its inverse, the action
that reproduces a given update (the demonstrator's action). The optax face
(:mod:`elo_gym.lopt`), the env core, both agents and ``lo.json`` take their settings
from a spec; the PyTorch face (:mod:`elo_gym.torch_optim`) reads them from one and
repeats the math in torch, checked against this module by its tests.

The step of one parameter element, with (d, m) the MLP's output:

  update = -step_mult * d * exp(exp_mult * m) * scale + nominal

and the variants, all off by default (``docs/levers.md`` measures each):

- ``raw_adam_ratio``: features 6-8 (Adam's ratio m_k / sqrt(r)) stay unnormalized
  (``lo_features.normalizers``): the reference normalizes them per tensor, so an LO
  sees Adam's steps shrink only through its step-count features; with the raw ratio
  the shrinking is in its input.
- ``adam_scaled_step``: ``scale`` is, per tensor, the root mean square of Adam's
  ratio m_0.9 / sqrt(r) (:func:`adam_step_scale`): the factor the normalization
  divided out comes back at the output, so the LO's steps shrink where Adam's do;
  without it ``scale`` is 1.
- a nominal term (``nominal_lr`` > 0), as learned_optimization's ``adafac_nominal``
  adds one: ``nominal`` is Adam's step at the learning rate ``nominal_lr / sqrt(1 + i
  / nominal_decay_steps)``, from the LO's own accumulators (:func:`nominal_update`),
  so the MLP learns a correction to a schedule that holds at any horizon; without it
  ``nominal`` is 0.
- relative time (``time_horizon`` > 0): the LO is told how long the run is. Its 11
  step features and its nominal schedule read the *clock* ``count * time_horizon /
  total_steps`` instead of the count (:meth:`LOSpec.clock`), so a run of any length
  looks to it like one of ``time_horizon`` steps, and a schedule shape learned at the
  meta-training horizon stretches to a run 10x longer. The env's run ends with the
  episode (K + N); the optax and PyTorch faces take ``total_steps``, as a cosine
  schedule does. Only such an LO can have ``nominal_schedule="cosine"``: Adam with a
  linear warmup over the first 5% of the run and cosine decay to 0 at its end
  (:func:`elo_gym.schedules.relative_warmup_cosine`), the tuned AdamW baseline's shape.
- ``scheduled_step`` (with a nominal term): ``scale`` is also multiplied by the nominal
  schedule's factor, its lr at the clock over ``nominal_lr`` (1 at the peak, 0 at the
  start and, for ``cosine``, at the end of the run), so the learned part warms up and
  anneals with the nominal term instead of stepping where the schedule has stopped.
- ``nominal_norm_step`` (with a nominal term): each tensor's update is rescaled to the
  norm of its nominal term, so the learned part can turn the nominal step (its
  direction within the tensor) but not resize it: the hand-set schedule alone sets
  how far a tensor moves (the twentieth screen found the learned step's size, not its
  direction, to be what fails tanh nets at 10x).
- ``tangential_step``: the learned step's component along each tensor's weights is
  removed, so the learned part can turn the weights but not grow or shrink them (to
  first order); the twenty-third screen's LOs grew a test net's weights 5.5-5.8x where
  their silenced selves grew them 4.4x. Applied before ``nominal_norm_step``.
- ``nominal_trust_ratio`` (with a nominal term): each tensor's nominal term is
  LAMB's step instead of Adam's: Adam's update rescaled to the norm lr x |W| of the
  tensor's weights (``optax.scale_by_trust_ratio``; unscaled where either norm is 0),
  so the schedule sets each tensor's step relative to its weights, which no feature
  of the LO shows it (the sixteenth and seventeenth screens). One lr then serves
  nets of other widths, depths and activations (the thirty-first screen).
- ``fast_second_moment``: the LO keeps Adam's second moment at b2 0.95 beside the
  0.999 one, and its feature 8 is Adam's ratio with it (``lo_features``), so the
  MLP sees the direction of Adam at b2 0.95, a demonstrator that lowers the training
  loss at 10x on every validation family (the twenty-seventh screen) and that the
  factored moments let a clone follow only to a relative error of about 0.5 (0.4
  with this feature, the twenty-ninth screen). The nominal term and the step's scale
  keep b2 0.999.
- ``gated_step`` (with a nominal term): the learned part gates the nominal term
  instead of adding a step: each element's update is the nominal term times
  ``1 + tanh(d)``, in (0, 2), and ``m``, ``scale`` and the step's multipliers are
  unused. The learned part can reweight the nominal step's coordinates but not point
  it anywhere else, so it cannot grow the weights along a direction the nominal term
  does not take (every additive learned part that gained on digits did, and lost on
  the nets it never met: the thirty-third to thirty-sixth screens). Cautious LAMB
  (Liang et al., 2024: coordinates whose step disagrees in sign with the gradient are
  dropped) is ``d`` -> -inf on those coordinates with ``nominal_norm_step``.

Adding a variant means a field here (with its check), its term in
:meth:`LOSpec.tensor_terms` (or its feature switch, or its part of
:meth:`LOSpec.update`), the same in :mod:`elo_gym.torch_optim`, and their tests. Both
agents render the spec as their ``lo`` group of flags (its ``Attributes`` entries are
the flags' help), so a new field is a flag of theirs with no agent edit.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from elo_gym import finite_grad, lo_features, schedules

STEP_MULT = 1e-3
EXP_MULT = 1e-3
# |d| of the gated step's inverse: a gate of 1 -+ tanh(4), 0.0007 or 1.9993.
GATE_ACTION_LIMIT = 4.0


def step_from_action(
    action: jax.Array, step_mult: float = STEP_MULT, exp_mult: float = EXP_MULT
) -> jax.Array:
    """Amount subtracted from a parameter: step_mult * d * exp(exp_mult * m) (Eq. 2).

    Args:
      action: (..., 2) with direction d in [..., 0] and magnitude m in [..., 1].
    """
    return step_mult * action[..., 0] * jnp.exp(exp_mult * action[..., 1])


def adam_step_scale(acc: lo_features.TensorAccumulators) -> jax.Array:
    """sqrt(1e-5 + mean over the tensor of (m_0.9 * rsqrt(r + 1e-6))^2), a scalar: the
    factor that normalization divides feature 6 by (``adam_scaled_step``)."""
    ratio = acc.momentum[0] * jax.lax.rsqrt(acc.rms[0] + 1e-6)
    return jnp.sqrt(1e-5 + jnp.mean(ratio**2))


# optax.adam's eps, the nominal term's; the LAMB demonstrator and baseline take it too,
# so that at the nominal lr they are the silenced LO's step.
ADAM_EPS = 1e-8


@finite_grad.finite_grad
def nominal_update(
    acc: lo_features.TensorAccumulators,
    count: jax.Array,
    learning_rate: jax.Array | float,
) -> jax.Array:
    """The nominal term of one tensor, shape S': ``optax.adam``'s step at
    ``learning_rate`` (b1 0.9, b2 0.999, eps 1e-8; the spec's schedule already
    applied, :meth:`LOSpec.nominal_learning_rate`), from the accumulators m_0.9 and
    r, which are Adam's moments.

    ``acc`` must already include this step's gradient and ``count`` is the number of
    steps taken before it, as in ``lopt.lopt_update``.
    """
    t = count.astype(jnp.float32) + 1.0
    m_hat = acc.momentum[0] / (1.0 - lo_features.MOMENTUM_DECAYS[0] ** t)
    v_hat = acc.rms[0] / (1.0 - lo_features.RMS_DECAYS[0] ** t)
    return -learning_rate * m_hat / (jnp.sqrt(v_hat) + ADAM_EPS)


# The nominal term's schedules: inverse-sqrt decay (nominal_decay_steps, which only it
# reads; 0: constant) and, for a relative-time LO, warmup + cosine decay to 0 at the
# end of the run.
NOMINAL_SCHEDULES = ("inverse_sqrt", "cosine")


@dataclasses.dataclass(frozen=True)
class LOSpec:
    """Every setting of a small_fc_lopt beside its weights (frozen, hashable: a
    static argument under ``jit``). Values are checked and normalized on creation
    (ints given for floats become floats, so equal specs hash alike).

    The variants' defaults (all but the first three fields) are the reference
    small_fc_lopt.

    Attributes:
      hidden_size: width of the LO MLP's two hidden layers.
      step_mult: multiplier of the direction d in the step (Eq. 2).
      exp_mult: multiplier of the magnitude m in the step (Eq. 2).
      raw_adam_ratio: the LO sees Adam's ratio m / sqrt(r) unnormalized.
      adam_scaled_step: each tensor's step is multiplied by the RMS of Adam's ratio.
      nominal_lr: > 0: the update adds Adam's step at this lr (a nominal term).
      nominal_decay_steps: tau > 0: the nominal lr decays as 1 / sqrt(1 + n / tau).
      time_horizon: > 0: the LO reads relative time, its count scaled to a run of
        this many steps (``clock``); 0: absolute time.
      nominal_schedule: the nominal lr's schedule: inverse_sqrt, or (relative time)
        cosine, warmup + cosine decay to 0 at the end of the run.
      scheduled_step: the learned step is multiplied by the nominal schedule's
        factor (its lr over nominal_lr), so it anneals with the nominal term.
      nominal_norm_step: each tensor's update is rescaled to its nominal term's
        norm, so the learned part turns the step and the nominal schedule sizes it.
      tangential_step: the learned step's component along each tensor's weights
        is removed, so the learned part cannot grow or shrink the weights.
      fast_second_moment: the LO also keeps a second moment at decay 0.95, and its
        feature 8 is Adam's ratio m_0.9 / sqrt(r_0.95) (the direction of Adam at b2
        0.95).
      nominal_trust_ratio: the nominal term is LAMB's step: each tensor's Adam
        update rescaled to the lr times the norm of its weights.
      gated_step: the learned part gates the nominal term: each element's update
        is the nominal term times 1 + tanh(d), so it reweights the nominal step's
        coordinates (m and the step multipliers are unused).
    """

    hidden_size: int = 32
    step_mult: float = STEP_MULT
    exp_mult: float = EXP_MULT
    raw_adam_ratio: bool = False
    adam_scaled_step: bool = False
    nominal_lr: float = 0.0
    nominal_decay_steps: float = 0.0
    time_horizon: float = 0.0
    nominal_schedule: str = "inverse_sqrt"
    scheduled_step: bool = False
    nominal_norm_step: bool = False
    tangential_step: bool = False
    fast_second_moment: bool = False
    nominal_trust_ratio: bool = False
    gated_step: bool = False

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            object.__setattr__(
                self, field.name, _checked(field.name, field.type, value)
            )
        if not self.hidden_size > 0:
            raise ValueError(f"hidden_size must be > 0, got {self.hidden_size}")
        if not self.step_mult > 0:
            raise ValueError(
                f"step_mult must be a finite number > 0, got {self.step_mult}"
            )
        if not self.nominal_lr >= 0:
            raise ValueError(
                f"nominal_lr must be >= 0 (0: no nominal term), got {self.nominal_lr}"
            )
        if not self.nominal_decay_steps >= 0:
            raise ValueError(
                "nominal_decay_steps must be >= 0 (0: a constant lr), got "
                f"{self.nominal_decay_steps}"
            )
        if not self.time_horizon >= 0:
            raise ValueError(
                f"time_horizon must be >= 0 (0: absolute time), got {self.time_horizon}"
            )
        if self.nominal_schedule not in NOMINAL_SCHEDULES:
            raise ValueError(
                f"unknown nominal_schedule {self.nominal_schedule!r}; valid: "
                + ", ".join(NOMINAL_SCHEDULES)
            )
        if self.nominal_schedule == "cosine" and not self.relative_time:
            raise ValueError(
                "nominal_schedule 'cosine' decays to the end of the run, which only a "
                "relative-time LO knows: set time_horizon > 0 (e.g. the meta-training "
                "horizon n_max)"
            )
        if self.scheduled_step and not self.nominal_lr > 0:
            raise ValueError(
                "scheduled_step multiplies the learned step by the nominal term's "
                "schedule, which an LO without a nominal term lacks: set nominal_lr > 0"
            )
        if self.nominal_norm_step and not self.nominal_lr > 0:
            raise ValueError(
                "nominal_norm_step rescales each tensor's update to its nominal term's "
                "norm, which an LO without a nominal term lacks: set nominal_lr > 0"
            )
        if self.nominal_trust_ratio and not self.nominal_lr > 0:
            raise ValueError(
                "nominal_trust_ratio rescales the nominal term, which an LO without "
                "one lacks: set nominal_lr > 0, or nominal_trust_ratio False "
                "(--no-nominal-trust-ratio)"
            )

        if self.gated_step and not self.nominal_lr > 0:
            raise ValueError(
                "gated_step gates the nominal term, which an LO without one lacks: "
                "set nominal_lr > 0, or gated_step False (--no-gated-step)"
            )
        if self.gated_step and (self.tangential_step or self.scheduled_step):
            raise ValueError(
                "gated_step has no additive learned step for tangential_step or "
                "scheduled_step to act on: turn those off (--no-tangential-step, "
                "--no-scheduled-step), or gated_step off (--no-gated-step) for an "
                "additive learned step"
            )

    # -- construction and (de)serialization --------------------------------------

    @classmethod
    def for_meta_params(cls, meta_params: lo_features.MetaParams, **settings) -> LOSpec:
        """The spec of ``meta_params``' hidden size with ``settings`` (field names)."""
        return cls(hidden_size=lo_features.hidden_size_of(meta_params), **settings)

    @classmethod
    def from_json(cls, info: Mapping[str, Any]) -> LOSpec:
        """The spec that ``info`` (``lo.json``, or a run's ``config.json``) records.

        Settings a file does not record take their defaults (files written before the
        setting existed ran without it); other keys are not the spec's and are
        ignored.
        """
        return cls(**{k: info[k] for k in FIELDS if k in info})

    def to_json(self) -> dict[str, Any]:
        """The settings as ``lo.json`` records them (JSON types, field order)."""
        return dataclasses.asdict(self)

    def differences(self, other: LOSpec) -> dict[str, tuple[Any, Any]]:
        """{setting: (this spec's value, ``other``'s)} where the two differ."""
        mine, theirs = self.to_json(), other.to_json()
        return {k: (mine[k], theirs[k]) for k in FIELDS if mine[k] != theirs[k]}

    def check_meta_params(self, meta_params: lo_features.MetaParams) -> None:
        """Raises ValueError if ``meta_params`` is not an MLP of this spec's size."""
        hidden = lo_features.hidden_size_of(meta_params)
        if hidden != self.hidden_size:
            raise ValueError(
                f"the meta-parameters have hidden size {hidden}, the LO spec "
                f"{self.hidden_size}: build the spec with hidden_size={hidden} "
                "(LOSpec.for_meta_params) or load the LO it describes"
            )

    def init_state(self, params: Any) -> lo_features.SmallFcLOptState:
        """Zero accumulators for ``params``, with the rms channels this LO reads."""
        return lo_features.init_state(
            params, fast_second_moment=self.fast_second_moment
        )

    # -- time: what the step features and the nominal schedule read ---------------

    @property
    def relative_time(self) -> bool:
        """Whether the LO reads relative time and so needs the run's length."""
        return self.time_horizon > 0

    def clock(
        self, count: jax.Array, total_steps: jax.Array | float | None = None
    ) -> jax.Array:
        """What the step features and the nominal schedule read at iteration
        ``count`` of a run of ``total_steps``: the count itself, or for a
        relative-time LO ``count * time_horizon / total_steps`` (float32).

        Raises:
          ValueError: a relative-time LO without ``total_steps``.
        """
        if not self.relative_time:
            return count
        if total_steps is None:
            raise ValueError(
                f"this LO reads relative time (time_horizon {self.time_horizon:g}): "
                "it needs total_steps, the number of steps the run will take"
            )
        total = jnp.maximum(jnp.asarray(total_steps, jnp.float32), 1.0)
        return count.astype(jnp.float32) * (self.time_horizon / total)

    def nominal_learning_rate(self, clock: jax.Array) -> jax.Array:
        """The nominal term's lr at ``clock`` (:meth:`clock`)."""
        if self.nominal_schedule == "cosine":
            return schedules.relative_warmup_cosine(
                self.nominal_lr, clock, self.time_horizon
            )
        return schedules.inverse_sqrt_decay(self.nominal_lr, self.nominal_decay_steps)(
            clock
        )

    # -- the step (Eq. 2 with the variants) and its inverse ----------------------

    def tensor_terms(
        self,
        acc: lo_features.TensorAccumulators,
        count: jax.Array,
        clock: jax.Array | None = None,
        params: jax.Array | None = None,
    ) -> tuple[jax.Array | float, jax.Array | float]:
        """(scale, nominal) of one tensor's step: a scalar (1.0 unless
        ``adam_scaled_step``) and an S'-shaped nominal term (0.0 unless
        ``nominal_lr`` > 0). ``acc`` includes this step's gradient; ``count`` is the
        number of steps taken before it; ``clock`` what the schedule reads (default:
        ``count``, :meth:`clock`); ``params`` the tensor's weights, which
        ``nominal_trust_ratio`` needs (any shape of the same size).

        Raises:
          ValueError: ``nominal_trust_ratio`` without ``params``.
        """
        scale = adam_step_scale(acc) if self.adam_scaled_step else 1.0
        nominal = 0.0
        if self.nominal_lr > 0:
            lr = self.nominal_learning_rate(count if clock is None else clock)
            nominal = nominal_update(acc, count, lr)
            if self.nominal_trust_ratio:
                if params is None:
                    raise ValueError(
                        "nominal_trust_ratio scales the nominal term by the weights' "
                        "norm: pass the tensor's params"
                    )
                nominal = nominal * _trust_ratio(params, nominal, lr)
            if self.scheduled_step:
                scale = scale * (lr / self.nominal_lr)
        return scale, nominal

    def row_terms(
        self,
        params: Any,
        state: lo_features.SmallFcLOptState,
        clock: jax.Array | None = None,
    ) -> tuple[jax.Array | float, jax.Array | float]:
        """(scale, nominal) of every parameter as (P,) rows (``jax.tree.leaves``
        order, each tensor flattened in C order, as the env's rows), or 1.0 and 0.0
        where the variant is off. ``state`` includes this step's gradient; ``clock``
        as for :meth:`tensor_terms`."""
        p_leaves, treedef = jax.tree.flatten(params)
        acc_leaves = treedef.flatten_up_to(state.accumulators)
        terms = [
            self.tensor_terms(a, state.count, clock, p)
            for a, p in zip(acc_leaves, p_leaves, strict=True)
        ]
        scale, nominal = 1.0, 0.0
        if self.adam_scaled_step or self.scheduled_step:
            scale = jnp.concatenate(
                [
                    jnp.ravel(jnp.broadcast_to(s, p.shape))
                    for (s, _), p in zip(terms, p_leaves, strict=True)
                ]
            )
        if self.nominal_lr > 0:
            nominal = jnp.concatenate(
                [
                    jnp.ravel(n.reshape(p.shape))
                    for (_, n), p in zip(terms, p_leaves, strict=True)
                ]
            )
        return scale, nominal

    def update(
        self,
        action: jax.Array,
        scale: jax.Array | float = 1.0,
        nominal: jax.Array | float = 0.0,
        segments: tuple[int, ...] | None = None,
        params: jax.Array | None = None,
    ) -> jax.Array:
        """The update (new params minus params) of actions (..., 2) = (d, m):
        ``-step_mult * d * exp(exp_mult * m) * scale + nominal`` (the terms as from
        :meth:`tensor_terms` or :meth:`row_terms`), with the learned step made
        orthogonal to each tensor's weights for ``tangential_step``, then rescaled to
        the nominal term's norm per tensor for ``nominal_norm_step``.

        Args:
          segments: for rows (:meth:`row_terms`), the number of rows of each tensor
            along the last axis (:func:`row_segments`); None: one tensor.
          params: the parameters, laid out as the update (rows or one tensor);
            ``tangential_step`` needs them.

        With ``gated_step`` the update is ``nominal * (1 + tanh(d))`` instead (then
        ``nominal_norm_step`` rescales it).

        Raises:
          ValueError: ``tangential_step`` without ``params``.
        """
        if self.gated_step:
            update = nominal * (1.0 + jnp.tanh(action[..., 0]))
            if self.nominal_norm_step:
                update = _per_tensor(_rescaled_to, segments, update, nominal)
            return update
        step = -step_from_action(action, self.step_mult, self.exp_mult) * scale
        if self.tangential_step:
            if params is None:
                raise ValueError(
                    "tangential_step removes the learned step's component along the "
                    "weights: pass params, laid out as the update"
                )
            step = _per_tensor(_tangential, segments, step, params)
        update = step + nominal
        if self.nominal_norm_step:
            update = _per_tensor(_rescaled_to, segments, update, nominal)
        return update

    def action(
        self,
        update: jax.Array,
        scale: jax.Array | float = 1.0,
        nominal: jax.Array | float = 0.0,
    ) -> jax.Array:
        """The inverse of :meth:`update`: the actions (..., 2) that reproduce
        ``update`` (...,), d* = -(update - nominal) / (step_mult * scale) and m* = 0,
        since exp(exp_mult * 0) = 1 for every exp_mult. With Adam's update this is the
        demonstrator's action. Where ``scale`` is 0 (a scheduled step at the
        schedule's zeros) every action gives the same update, and d* is 0. With
        ``nominal_norm_step`` the action reproduces ``update`` where each tensor's
        norm is its nominal term's, and otherwise its direction.

        With ``gated_step``, d* = atanh(update / nominal - 1), clipped to
        +-:data:`GATE_ACTION_LIMIT` (a gate of 0 or 2, or an update against the
        nominal term, is reached only in the limit); 0 where the nominal term is 0.
        """
        if self.gated_step:
            nominal = jnp.broadcast_to(nominal, jnp.shape(update))
            nonzero = nominal != 0
            ratio = jnp.where(nonzero, update / jnp.where(nonzero, nominal, 1.0), 1.0)
            limit = math.tanh(GATE_ACTION_LIMIT)
            d = jnp.arctanh(jnp.clip(ratio - 1.0, -limit, limit))
            return jnp.stack([d, jnp.zeros_like(d)], axis=-1)
        denominator = self.step_mult * jnp.asarray(scale)
        safe = jnp.where(denominator == 0, 1.0, denominator)
        d = jnp.where(denominator == 0, 0.0, -(update - nominal) / safe)
        return jnp.stack([d, jnp.zeros_like(d)], axis=-1)


def row_segments(params: Any) -> tuple[int, ...]:
    """The number of rows each tensor of ``params`` holds in the env's rows
    (``jax.tree.leaves`` order; a scalar is one row): :meth:`LOSpec.update`'s
    ``segments``."""
    return tuple(math.prod(jnp.shape(p)) for p in jax.tree.leaves(params))


def _per_tensor(
    fn: Callable[[jax.Array, jax.Array, int | None], jax.Array],
    segments: tuple[int, ...] | None,
    x: jax.Array,
    reference: jax.Array,
) -> jax.Array:
    """``fn(x, reference, axis)`` on each tensor: the whole arrays (``segments``
    None) or each segment of rows along the last axis (leading axes are copies)."""
    if segments is None:
        return fn(x, reference, axis=None)
    bounds = np.cumsum(segments)[:-1].tolist()
    reference = jnp.broadcast_to(reference, x.shape)
    pieces = zip(
        jnp.split(x, bounds, axis=-1),
        jnp.split(reference, bounds, axis=-1),
        strict=True,
    )
    return jnp.concatenate([fn(a, b, axis=-1) for a, b in pieces], axis=-1)


def _safe_norm(x: jax.Array, axis: int | None) -> jax.Array:
    """|x| over ``axis`` (keepdims), with a finite derivative (0) where x is 0."""
    squares = jnp.sum(x**2, axis=axis, keepdims=True)
    positive = squares > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squares, 1.0)), 0.0)


def _rescaled_to(update: jax.Array, nominal: jax.Array, axis: int | None) -> jax.Array:
    """``update`` times |nominal| / |update| (norms over ``axis``; None: all), 0
    where ``update`` is 0, with finite derivatives there for truncated backprop."""
    norm_update = _safe_norm(update, axis)
    positive = norm_update > 0
    ratio = _safe_norm(nominal, axis) / jnp.where(positive, norm_update, 1.0)
    return update * jnp.where(positive, ratio, 0.0)


def _trust_ratio(
    params: jax.Array, nominal: jax.Array, learning_rate: jax.Array | float
) -> jax.Array:
    """LAMB's trust ratio |W| / |u| of one tensor, u = nominal / lr Adam's update
    (``optax.scale_by_trust_ratio``), 1 where either norm is 0 (a bias at init, the
    schedule's zeros), with finite derivatives there for truncated backprop."""
    norm_params = _safe_norm(params, None)
    norm_update = _safe_norm(nominal, None)
    lr = jnp.abs(jnp.asarray(learning_rate, norm_update.dtype))
    positive = (norm_params > 0) & (norm_update > 0)
    ratio = lr * norm_params / jnp.where(positive, norm_update, 1.0)
    return jnp.where(positive, ratio, 1.0).reshape(())


def _tangential(step: jax.Array, params: jax.Array, axis: int | None) -> jax.Array:
    """``step`` less its projection on ``params`` (over ``axis``; None: all); where
    the params are 0 (a bias at init) there is no direction to remove."""
    squares = jnp.sum(params**2, axis=axis, keepdims=True)
    positive = squares > 0
    along = jnp.sum(step * params, axis=axis, keepdims=True)
    coefficient = jnp.where(positive, along / jnp.where(positive, squares, 1.0), 0.0)
    return step - coefficient * params


def spec_for(
    spec: LOSpec | None,
    meta_params: lo_features.MetaParams,
    total_steps: int | None = None,
) -> LOSpec:
    """The spec an LO face builds with (None: the reference LO of the weights' size),
    checked against its weights and, for a relative-time LO, against ``total_steps``.

    Raises:
      TypeError: ``spec`` is not an LOSpec.
      ValueError: weights of another size, or a relative-time LO without
        ``total_steps`` > 0.
    """
    spec = LOSpec.for_meta_params(meta_params) if spec is None else spec
    if not isinstance(spec, LOSpec):
        raise TypeError(
            f"spec must be an elo_gym.lo_spec.LOSpec, got {type(spec).__name__}"
        )
    spec.check_meta_params(meta_params)
    if spec.relative_time and not (total_steps or 0) > 0:
        raise ValueError(
            f"this LO reads relative time (time_horizon {spec.time_horizon:g}): pass "
            "total_steps > 0, the number of steps the run will take, got "
            f"{total_steps!r}"
        )
    return spec


FIELDS = tuple(f.name for f in dataclasses.fields(LOSpec))


def _checked(name: str, kind: str, value: Any) -> Any:
    """``value`` as the field's type (bool, int, str or a finite float), or
    ValueError."""
    if kind == "str":
        if isinstance(value, str):
            return value
        raise ValueError(f"{name} must be a string, got {value!r}")
    if kind == "bool":
        if isinstance(value, bool | np.bool_):
            return bool(value)
        raise ValueError(f"{name} must be True or False, got {value!r}")
    if isinstance(value, bool | np.bool_) or not isinstance(
        value, int | float | np.integer | np.floating
    ):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if kind == "int":
        if not isinstance(value, int | np.integer):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        return int(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return float(value)
