"""The learned optimizer's state, features and MLP: the leaf that every LO path imports.

small_fc_lopt (Metz et al., 2022) keeps per-tensor accumulators, builds 39 features per
parameter element from them and runs a per-parameter MLP on the features. This module
holds those pieces and nothing that acts on them: the step the MLP's output becomes and
its variants are :class:`elo_gym.lo_spec.LOSpec`'s, the update and the optax face are
:mod:`elo_gym.lopt`'s, the fused evaluation of the MLP is :mod:`elo_gym.lopt_fused`'s.
It imports no other module of the package, so those three import it without a cycle.

Feature order (per parameter element), as learned_optimization's ``AdafacMLPLOpt``:

====== ==========================================================================
index  feature
====== ==========================================================================
0      gradient g
1      parameter p (before this step's update)
2-4    momenta m_k, decays (0.9, 0.99, 0.999)
5      rms r (decay 0.999)
6-8    m_k * rsqrt(r + 1e-6); a fast second moment: 8 is m_0.9 * rsqrt(r_0.95 + 1e-6)
9      rsqrt(r + 1e-6)
10-12  Adafactor-preconditioned gradient, decays (0.9, 0.99, 0.999)
13-15  row second moment (factored) or v_k (not factored)
16-18  column second moment (factored) or v_k again
19-24  rsqrt(features 13-18 + 1e-8)
25-27  m_k preconditioned by the Adafactor factors
28-38  tanh(i / T_j - 1), T_j = 1, 3, 10, ..., 1e5; i = iteration count
====== ==========================================================================

Features 0-27 are normalized per tensor by their root mean square (features 6-8 stay
unnormalized with the spec's ``raw_adam_ratio``, :func:`normalizers`). Tensors of rank
>= 2 keep factored (row, column) second moments over their two largest axes.

The decays are fixed (:data:`DECAYS`, the reference's initial values): the features
are the environment's observation, computed by the env before any agent acts, so
they cannot depend on the agent's meta-parameters. The reference's learnable decay
offsets are therefore not meta-parameters here (``lopt.meta_params_from_reference``
accepts them only at zero).

An LO spec's ``fast_second_moment`` keeps a second rms channel, r_0.95 (Adam's
second moment at b2 0.95), beside r (``init_state(..., fast_second_moment=True)``);
feature 8 is then Adam's direction at b2 0.95, m_0.9 * rsqrt(r_0.95 + 1e-6), in place
of the slowest ratio m_0.999 * rsqrt(r + 1e-6), which its factored moments only
approximate; feature 6 keeps Adam's direction at b2 0.999, the nominal term's, so a
learned step toward the one from the other is a difference of two inputs. The
accumulators know how many rms channels they keep, so accumulating and building
features need no flag.

The accumulators are stored channels first, ``(decays,) + S``, where the reference
stores ``S + (decays,)``: each decay's statistics are then one contiguous array, which
the fused update (:mod:`elo_gym.lopt_fused`) reads without transposing.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

NUM_FEATURES = 39
# Features 6-8, m_k * rsqrt(r), in the reference order and in the fused path's rows.
ADAM_RATIO_FEATURES = slice(6, 9)
NUM_NORMALIZED = 28
MOMENTUM_DECAYS = (0.9, 0.99, 0.999)
RMS_DECAYS = (0.999,)
# The decay of the second rms channel, kept with a fast second moment (``init_state``).
FAST_RMS_DECAY = 0.95
ADAFACTOR_DECAYS = (0.9, 0.99, 0.999)
STEP_TIMESCALES = (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000)
# Every matmul of the LO runs in full float32. GPUs would otherwise take float32
# matmuls in TF32 (a 10-bit mantissa): on an H200 the update then moved by up to 1e-3
# relative and the golden-fixture parity failed. On CPU this is the default anyway.
PRECISION = jax.lax.Precision.HIGHEST


class SmallFcMLP(nn.Module):
    """The per-parameter network: 39 -> hidden -> ReLU -> hidden -> ReLU -> 2."""

    hidden_size: int = 32
    hidden_layers: int = 2

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for _ in range(self.hidden_layers):
            x = nn.relu(_dense(self.hidden_size)(x))
        return _dense(2)(x)


def _fan_in_truncated_normal(
    key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32
) -> jax.Array:
    # As the reference (haiku): stddev 1/sqrt(fan_in), cut at 2 stddev, no fix-up.
    return nn.initializers.truncated_normal(1.0 / np.sqrt(shape[0]))(key, shape, dtype)


def _dense(features: int) -> nn.Dense:
    return nn.Dense(features, kernel_init=_fan_in_truncated_normal, precision=PRECISION)


class MetaParams(NamedTuple):
    """Meta-parameters of small_fc_lopt (what meta-training learns)."""

    mlp: dict  # flax params of SmallFcMLP: {"Dense_0": {"kernel", "bias"}, ...}


class TensorAccumulators(NamedTuple):
    """Running statistics of one parameter tensor of shape S (scalars use S = (1,)).

    Channels first: the leading axis indexes the decays (see the module docstring).
    """

    momentum: jax.Array  # (3,) + S
    rms: jax.Array  # (1,) + S, or (2,) + S with a fast second moment
    v_row: jax.Array  # factored: (3,) + S without axis d0; else (3,) + S
    v_col: jax.Array  # factored: (3,) + S without axis d1; else (0,) (unused)


class SmallFcLOptState(NamedTuple):
    """Optimizer state: the iteration counter and per-tensor accumulators."""

    count: jax.Array  # () int32: iterations done; feeds the step features
    accumulators: Any  # params-shaped pytree whose leaves are TensorAccumulators


def init_meta_params(key: jax.Array, hidden_size: int = 32) -> MetaParams:
    """Initializes meta-parameters like the reference (truncated normal, zero bias).

    Args:
      key: PRNG key.
      hidden_size: width of the two hidden layers.

    Returns:
      Fresh :class:`MetaParams`.
    """
    mlp = SmallFcMLP(hidden_size).init(key, jnp.zeros((1, NUM_FEATURES)))["params"]
    return MetaParams(mlp=mlp)


def silenced_output(meta_params: MetaParams) -> MetaParams:
    """``meta_params`` with the MLP's output layer zeroed: the LO's update is then its
    nominal term alone (its silenced self), and a perturbation of the output layer
    moves the update at first order, as evolution strategies need."""
    mlp = dict(meta_params.mlp)
    last = f"Dense_{len(mlp) - 1}"
    mlp[last] = jax.tree.map(jnp.zeros_like, mlp[last])
    return MetaParams(mlp=mlp)


def hidden_size_of(meta_params: MetaParams) -> int:
    """The width of the hidden layers of ``meta_params``' MLP."""
    return int(np.shape(meta_params.mlp["Dense_0"]["kernel"])[1])


class Decays(NamedTuple):
    """Decay rates of the accumulators (float32)."""

    momentum: np.ndarray  # (3,)
    rms: np.ndarray  # (1,)
    adafactor: np.ndarray  # (3,)


# The reference's initial decays, as float32 (what its zero offsets give).
DECAYS = Decays(
    momentum=np.asarray(MOMENTUM_DECAYS, np.float32),
    rms=np.asarray(RMS_DECAYS, np.float32),
    adafactor=np.asarray(ADAFACTOR_DECAYS, np.float32),
)
# Every rms channel's decay, as float32: accumulators keep the first 1 or 2.
RMS_CHANNEL_DECAYS = np.asarray(RMS_DECAYS + (FAST_RMS_DECAY,), np.float32)


def factored_dims(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """(d0, d1) = the largest and second-largest axes of a rank >= 2 shape, else None.

    Ties go to the higher axis index, as the reference's stable argsort does.
    """
    if len(shape) < 2:
        return None
    order = np.argsort(np.asarray(shape), kind="stable")
    return int(order[-1]), int(order[-2])


def _internal_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    # The reference treats scalars as shape (1,).
    return shape if shape else (1,)


def rms_channels(fast_second_moment: bool) -> int:
    """How many rms channels the accumulators keep (``RMS_CHANNEL_DECAYS``' first)."""
    return 2 if fast_second_moment else 1


def _init_tensor(p: jax.Array, fast_second_moment: bool) -> TensorAccumulators:
    shape = _internal_shape(p.shape)
    dims = factored_dims(shape)
    if dims is None:
        v_row, v_col = jnp.zeros((3,) + shape), jnp.zeros((0,))
    else:
        d0, d1 = dims
        v_row = jnp.zeros((3,) + tuple(s for i, s in enumerate(shape) if i != d0))
        v_col = jnp.zeros((3,) + tuple(s for i, s in enumerate(shape) if i != d1))
    rms = jnp.zeros((rms_channels(fast_second_moment),) + shape)
    return TensorAccumulators(jnp.zeros((3,) + shape), rms, v_row, v_col)


def init_state(params: Any, *, fast_second_moment: bool = False) -> SmallFcLOptState:
    """Zero accumulators for a params pytree (any shapes, scalars included).

    Args:
      params: the optimizee's parameters.
      fast_second_moment: also keep r_0.95, which feature 8 then reads (the LO
        spec's ``fast_second_moment``).
    """
    accumulators = jax.tree.map(lambda p: _init_tensor(p, fast_second_moment), params)
    return SmallFcLOptState(jnp.zeros((), jnp.int32), accumulators)


def sanitize_gradient(g: jax.Array) -> jax.Array:
    """Maps non-finite gradient entries to zero, so they cannot poison the accumulators.

    The learned optimizer then makes no move on those entries; callers that care (the
    env) detect divergence from the loss and parameters instead.
    """
    return jnp.where(jnp.isfinite(g), g, 0.0)


def _per_channel(decay: np.ndarray, ndim: int) -> np.ndarray:
    """(c,) decays shaped (c, 1, ..., 1), to scale a channels-first rank-ndim array."""
    return decay.reshape((-1,) + (1,) * (ndim - 1))


def _ema(decay: np.ndarray, old: jax.Array, new: jax.Array) -> jax.Array:
    """decay * old + (1 - decay) * new, per channel of the channels-first ``old``."""
    d = _per_channel(decay, old.ndim)
    return d * old + (1.0 - d) * new


def _accumulate_tensor(g: jax.Array, acc: TensorAccumulators) -> TensorAccumulators:
    decays = DECAYS
    g = g.reshape(acc.momentum.shape[1:])
    momentum = _ema(decays.momentum, acc.momentum, g)
    rms = _ema(RMS_CHANNEL_DECAYS[: acc.rms.shape[0]], acc.rms, g**2)
    q = g**2 + 1e-30
    dims = factored_dims(g.shape)
    if dims is None:
        v_row, v_col = _ema(decays.adafactor, acc.v_row, q), acc.v_col
    else:
        d0, d1 = dims
        v_row = _ema(decays.adafactor, acc.v_row, jnp.mean(q, axis=d0))
        v_col = _ema(decays.adafactor, acc.v_col, jnp.mean(q, axis=d1))
    return TensorAccumulators(momentum, rms, v_row, v_col)


def accumulate(grads: Any, state: SmallFcLOptState) -> SmallFcLOptState:
    """Folds a gradient into the accumulators (done before features are built).

    Non-finite gradient entries are treated as zero (see :func:`sanitize_gradient`).
    The iteration counter is not advanced; :func:`advance` does that once the step
    is taken.
    """
    g_leaves, treedef = jax.tree.flatten(grads)
    acc_leaves = treedef.flatten_up_to(state.accumulators)
    new = [
        _accumulate_tensor(sanitize_gradient(g), a)
        for g, a in zip(g_leaves, acc_leaves, strict=True)
    ]
    return state._replace(accumulators=treedef.unflatten(new))


def mean_square(x: jax.Array) -> jax.Array:
    """Mean of the square of a channels-first array, per channel."""
    return jnp.mean(x**2, axis=tuple(range(1, x.ndim)))


def tensor_inputs(
    g: jax.Array, p: jax.Array, acc: TensorAccumulators
) -> tuple[dict[str, jax.Array], jax.Array]:
    """Channels-first inputs of one tensor's 28 normalized features ("rows"), and the
    mean squares (12,) of its row and column rows.

    Per-element inputs are (c,) + S. A factored tensor's factors and row and column
    moments keep a size-1 axis where they broadcast, so a tile of the tensor slices
    them like the rest, and their mean squares are taken on the small arrays: a
    broadcast's mean square over the tensor is its mean square over the array.
    """
    shape = acc.momentum.shape[1:]
    inputs = {
        "g": sanitize_gradient(g).reshape((1,) + shape),
        "p": p.reshape((1,) + shape),
        "m": acc.momentum,
        "r": acc.rms,
    }
    dims = factored_dims(shape)
    if dims is None:
        v = acc.v_row
        inputs["v"] = v
        inputs["row"] = inputs["col"] = jnp.concatenate([v, jax.lax.rsqrt(v + 1e-8)])
        mean_squares = mean_square(inputs["row"])
        return inputs, jnp.concatenate([mean_squares, mean_squares])
    d0, d1 = dims
    row_mean = jnp.mean(acc.v_row, axis=d1 if d1 > d0 else d1 + 1, keepdims=True)
    row_factor = jax.lax.rsqrt(jnp.maximum(acc.v_row / (row_mean + 1e-9), 1e-9))
    inputs["row_factor"] = jnp.expand_dims(row_factor, 1 + d0)
    inputs["col_factor"] = jnp.expand_dims(
        jax.lax.rsqrt(jnp.maximum(acc.v_col, 1e-9)), 1 + d1
    )
    mean_squares = []
    for name, moments, axis in (("row", acc.v_row, d0), ("col", acc.v_col, d1)):
        channels = jnp.concatenate([moments, jax.lax.rsqrt(moments + 1e-8)])
        mean_squares.append(mean_square(channels))
        inputs[name] = jnp.expand_dims(channels, 1 + axis)
    return inputs, jnp.concatenate(mean_squares)


def per_element_rows(block: dict[str, jax.Array]) -> list[jax.Array]:
    """The 16 per-element rows of a block (a tensor's inputs, or a tile of them), as
    8 arrays (c,) + block shape."""
    g, m = block["g"], block["m"]
    r = block["r"][:1]
    rsqrt_r = jax.lax.rsqrt(r + 1e-6)
    ratios = m * rsqrt_r
    if block["r"].shape[0] > 1:  # row 8: m_0.9 over the fast second moment r_0.95
        fast = m[:1] * jax.lax.rsqrt(block["r"][1:] + 1e-6)
        ratios = jnp.concatenate([ratios[:2], fast])
    if "v" in block:
        v = block["v"]
        fac_g = g * jax.lax.rsqrt(jnp.maximum(v + 1e-9, 1e-9))
        fac_m = m * jax.lax.rsqrt(v + 1e-6)
    else:
        both = block["row_factor"] * block["col_factor"]
        fac_g, fac_m = g * both, m * both
    return [g, block["p"], m, r, ratios, rsqrt_r, fac_g, fac_m]


def feature_rows(block: dict[str, jax.Array]) -> list[jax.Array]:
    """All 28 rows of a block, as 10 arrays (c,) + block shape (the row and column
    ones broadcast): the 16 per-element rows, then the 6 row and 6 column rows."""
    rows = per_element_rows(block)
    shape = rows[0].shape[1:]
    return rows + [
        jnp.broadcast_to(block[k], block[k].shape[:1] + shape) for k in ("row", "col")
    ]


def step_features(count: jax.Array) -> jax.Array:
    """The 11 features tanh(i / T_j - 1) of iteration count i, shape (11,).

    ``count`` may be a float: a relative-time LO reads its clock
    (``LOSpec.clock``)."""
    timescales = jnp.asarray(STEP_TIMESCALES, jnp.float32)
    return jnp.tanh(count.astype(jnp.float32) / timescales - 1.0)


def raw_tensor_features(
    g: jax.Array, p: jax.Array, acc: TensorAccumulators
) -> jax.Array:
    """Features 0-27 of one tensor before normalization, shape S + (28,).

    ``acc`` must already include ``g`` (see :func:`accumulate`). The rows of
    :func:`feature_rows` (which the fused path reads directly) put in the reference's
    feature order and channels-last layout: this is the observation path, which
    stores every feature anyway.
    """
    inputs, _ = tensor_inputs(g, p, acc)
    *per_element, fac_m, row, col = feature_rows(inputs)
    # Rows 13-24 interleave the row and column moments in the reference's order.
    rows = [jnp.moveaxis(x, 0, -1) for x in per_element]
    row, col = jnp.moveaxis(row, 0, -1), jnp.moveaxis(col, 0, -1)
    return jnp.concatenate(
        rows
        + [row[..., :3], col[..., :3], row[..., 3:], col[..., 3:]]
        + [jnp.moveaxis(fac_m, 0, -1)],
        axis=-1,
    )


def normalizers(mean_squares: jax.Array, *, raw_adam_ratio: bool = False) -> jax.Array:
    """The factors (..., 28) that features 0-27 are multiplied by: rsqrt(1e-5 + their
    mean square over the tensor), or 1 for features 6-8 with ``raw_adam_ratio``."""
    scale = jax.lax.rsqrt(1e-5 + mean_squares)
    if raw_adam_ratio:
        scale = scale.at[..., ADAM_RATIO_FEATURES].set(1.0)
    return scale


def tensor_features(
    g: jax.Array,
    p: jax.Array,
    acc: TensorAccumulators,
    count: jax.Array,
    *,
    raw_adam_ratio: bool = False,
) -> jax.Array:
    """All 39 features of one tensor, shape S' + (39,); S' = S (or (1,) for scalars).

    Features 0-27 are scaled by :func:`normalizers`.
    """
    raw = raw_tensor_features(g, p, acc)
    axes = tuple(range(raw.ndim - 1))
    mean_squares = jnp.mean(raw**2, axis=axes, keepdims=True)
    normalized = raw * normalizers(mean_squares, raw_adam_ratio=raw_adam_ratio)
    steps = jnp.broadcast_to(step_features(count), raw.shape[:-1] + (11,))
    return jnp.concatenate([normalized, steps], axis=-1)


def features(
    grads: Any,
    params: Any,
    state: SmallFcLOptState,
    *,
    raw_adam_ratio: bool = False,
    clock: jax.Array | None = None,
) -> list[jax.Array]:
    """Per-tensor features, one S' + (39,) array per leaf in ``jax.tree.leaves`` order.

    ``state`` must already include ``grads`` (see :func:`accumulate`); the step
    features read ``clock`` (default ``state.count``; ``LOSpec.clock``).
    """
    clock = state.count if clock is None else clock
    g_leaves, treedef = jax.tree.flatten(grads)
    p_leaves = treedef.flatten_up_to(params)
    acc_leaves = treedef.flatten_up_to(state.accumulators)
    return [
        tensor_features(g, p, a, clock, raw_adam_ratio=raw_adam_ratio)
        for g, p, a in zip(g_leaves, p_leaves, acc_leaves, strict=True)
    ]


def apply_mlp(mlp_params: dict, x: jax.Array) -> jax.Array:
    """Runs the per-parameter network on features (..., 39) -> (..., 2) = (d, m)."""
    hidden = mlp_params["Dense_0"]["kernel"].shape[1]
    layers = len(mlp_params) - 1
    return SmallFcMLP(hidden, layers).apply({"params": mlp_params}, x)


def advance(state: SmallFcLOptState) -> SmallFcLOptState:
    """Counts one finished iteration (the step features read the count)."""
    return state._replace(count=state.count + 1)
