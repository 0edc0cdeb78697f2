"""small_fc_lopt: the per-parameter MLP learned optimizer of Metz et al. (2022).

This is the one implementation of the learned optimizer's accumulators, its 39 input
features, its MLP and its update. The environment, the agents and the optax face
(:func:`small_fc_lopt`) all call these functions.

It reproduces ``AdafacMLPLOpt`` of google/learned_optimization (hidden size 32, two
hidden layers, step_mult = exp_mult = 1e-3); ``tests/elo_gym/test_lopt.py`` checks it
against a golden fixture recorded from that code. Feature order (per parameter element):

====== ==========================================================================
index  feature
====== ==========================================================================
0      gradient g
1      parameter p (before this step's update)
2-4    momenta m_k, decays (0.9, 0.99, 0.999)
5      rms r (decay 0.999)
6-8    m_k * rsqrt(r + 1e-6)
9      rsqrt(r + 1e-6)
10-12  Adafactor-preconditioned gradient, decays (0.9, 0.99, 0.999)
13-15  row second moment (factored) or v_k (not factored)
16-18  column second moment (factored) or v_k again
19-24  rsqrt(features 13-18 + 1e-8)
25-27  m_k preconditioned by the Adafactor factors
28-38  tanh(i / T_j - 1), T_j = 1, 3, 10, ..., 1e5; i = iteration count
====== ==========================================================================

Features 0-27 are normalized per tensor by their root mean square. Tensors of rank >= 2
keep factored (row, column) second moments over their two largest axes.

The accumulators are stored channels first, ``(decays,) + S``, where the reference
stores ``S + (decays,)``: each decay's statistics are then one contiguous array, which
the fast update (:func:`mlp_outputs`) reads without transposing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

NUM_FEATURES = 39
NUM_NORMALIZED = 28
MOMENTUM_DECAYS = (0.9, 0.99, 0.999)
RMS_DECAYS = (0.999,)
ADAFACTOR_DECAYS = (0.9, 0.99, 0.999)
STEP_TIMESCALES = (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000)
STEP_MULT = 1e-3
EXP_MULT = 1e-3
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
    momentum_decays: jax.Array  # (3,) float32 offsets theta of the momentum decays
    rms_decays: jax.Array  # (1,) float32 offset of the RMS decay
    adafactor_decays: jax.Array  # (3,) float32 offsets of the Adafactor decays


class TensorAccumulators(NamedTuple):
    """Running statistics of one parameter tensor of shape S (scalars use S = (1,)).

    Channels first: the leading axis indexes the decays (see the module docstring).
    """

    momentum: jax.Array  # (3,) + S
    rms: jax.Array  # (1,) + S
    v_row: jax.Array  # factored: (3,) + S without axis d0; else (3,) + S
    v_col: jax.Array  # factored: (3,) + S without axis d1; else (0,) (unused)


class SmallFcLOptState(NamedTuple):
    """Optimizer state: the iteration counter and per-tensor accumulators."""

    count: jax.Array  # () int32: iterations done; feeds the step features
    accumulators: Any  # params-shaped pytree whose leaves are TensorAccumulators


def init_meta_params(key: jax.Array, hidden_size: int = 32) -> MetaParams:
    """Initializes meta-parameters like the reference (truncated normal, zero offsets).

    Args:
      key: PRNG key.
      hidden_size: width of the two hidden layers.

    Returns:
      Fresh :class:`MetaParams`.
    """
    mlp = SmallFcMLP(hidden_size).init(key, jnp.zeros((1, NUM_FEATURES)))["params"]
    return MetaParams(
        mlp=mlp,
        momentum_decays=jnp.zeros(len(MOMENTUM_DECAYS), jnp.float32),
        rms_decays=jnp.zeros(len(RMS_DECAYS), jnp.float32),
        adafactor_decays=jnp.zeros(len(ADAFACTOR_DECAYS), jnp.float32),
    )


def meta_params_from_reference(arrays: Mapping[str, Any]) -> MetaParams:
    """Builds meta-parameters from learned_optimization's haiku layout.

    Args:
      arrays: mapping with keys ``meta/nn/~/w0`` ... ``meta/nn/~/b2``,
        ``meta/momentum_decays``, ``meta/rms_decays`` and ``meta/adafactor_decays``
        (the golden fixture's keys).

    Returns:
      :class:`MetaParams`.
    """
    missing = [k for k in _REFERENCE_KEYS if k not in arrays]
    if missing:
        raise KeyError(
            f"reference meta-parameters lack keys {missing}; "
            f"expected all of {list(_REFERENCE_KEYS)}"
        )
    f32 = lambda k: jnp.asarray(np.asarray(arrays[k]), jnp.float32)  # noqa: E731
    mlp = {
        f"Dense_{i}": {"kernel": f32(f"meta/nn/~/w{i}"), "bias": f32(f"meta/nn/~/b{i}")}
        for i in range(3)
    }
    if mlp["Dense_0"]["kernel"].shape[0] != NUM_FEATURES:
        raise ValueError(
            f"meta/nn/~/w0 has shape {mlp['Dense_0']['kernel'].shape}; "
            f"expected ({NUM_FEATURES}, hidden)"
        )
    return MetaParams(
        mlp,
        f32("meta/momentum_decays"),
        f32("meta/rms_decays"),
        f32("meta/adafactor_decays"),
    )


_REFERENCE_KEYS = tuple(f"meta/nn/~/{w}{i}" for i in range(3) for w in "wb") + (
    "meta/momentum_decays",
    "meta/rms_decays",
    "meta/adafactor_decays",
)


class Decays(NamedTuple):
    """Effective decay rates (float32) after applying the meta-learned offsets."""

    momentum: jax.Array  # (3,)
    rms: jax.Array  # (1,)
    adafactor: jax.Array  # (3,)


def effective_decays(meta_params: MetaParams) -> Decays:
    """Applies the offsets: decay = 1 - exp(10 * (log(1 - d0) / 10 + theta))."""

    def shift(initial, theta):
        base = jnp.log(1.0 - jnp.asarray(initial, jnp.float32)) / 10.0
        return 1.0 - jnp.exp(10.0 * (base + theta))

    return Decays(
        momentum=shift(MOMENTUM_DECAYS, meta_params.momentum_decays),
        rms=jnp.clip(shift(RMS_DECAYS, meta_params.rms_decays), 0.0, 1.0),
        adafactor=jnp.clip(
            shift(ADAFACTOR_DECAYS, meta_params.adafactor_decays), 0.0, 1.0
        ),
    )


def default_decays() -> Decays:
    """Effective decays of untrained meta-parameters (all offsets zero)."""
    zeros = lambda n: jnp.zeros(n, jnp.float32)  # noqa: E731
    return effective_decays(MetaParams({}, zeros(3), zeros(1), zeros(3)))


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


def _init_tensor(p: jax.Array) -> TensorAccumulators:
    shape = _internal_shape(p.shape)
    dims = factored_dims(shape)
    if dims is None:
        v_row, v_col = jnp.zeros((3,) + shape), jnp.zeros((0,))
    else:
        d0, d1 = dims
        v_row = jnp.zeros((3,) + tuple(s for i, s in enumerate(shape) if i != d0))
        v_col = jnp.zeros((3,) + tuple(s for i, s in enumerate(shape) if i != d1))
    return TensorAccumulators(
        jnp.zeros((3,) + shape), jnp.zeros((1,) + shape), v_row, v_col
    )


def init_state(params: Any) -> SmallFcLOptState:
    """Zero accumulators for a params pytree (any shapes, scalars included)."""
    accumulators = jax.tree.map(_init_tensor, params)
    return SmallFcLOptState(jnp.zeros((), jnp.int32), accumulators)


def sanitize_gradient(g: jax.Array) -> jax.Array:
    """Maps non-finite gradient entries to zero, so they cannot poison the accumulators.

    The learned optimizer then makes no move on those entries; callers that care (the
    env) detect divergence from the loss and parameters instead.
    """
    return jnp.where(jnp.isfinite(g), g, 0.0)


def _per_channel(decay: jax.Array, ndim: int) -> jax.Array:
    """(c,) decays shaped (c, 1, ..., 1), to scale a channels-first rank-ndim array."""
    return decay.reshape((-1,) + (1,) * (ndim - 1))


def _ema(decay: jax.Array, old: jax.Array, new: jax.Array) -> jax.Array:
    """decay * old + (1 - decay) * new, per channel of the channels-first ``old``."""
    d = _per_channel(decay, old.ndim)
    return d * old + (1.0 - d) * new


def _accumulate_tensor(
    g: jax.Array, acc: TensorAccumulators, decays: Decays
) -> TensorAccumulators:
    g = g.reshape(acc.momentum.shape[1:])
    momentum = _ema(decays.momentum, acc.momentum, g)
    rms = _ema(decays.rms, acc.rms, g**2)
    q = g**2 + 1e-30
    dims = factored_dims(g.shape)
    if dims is None:
        v_row, v_col = _ema(decays.adafactor, acc.v_row, q), acc.v_col
    else:
        d0, d1 = dims
        v_row = _ema(decays.adafactor, acc.v_row, jnp.mean(q, axis=d0))
        v_col = _ema(decays.adafactor, acc.v_col, jnp.mean(q, axis=d1))
    return TensorAccumulators(momentum, rms, v_row, v_col)


def accumulate(grads: Any, state: SmallFcLOptState, decays: Decays) -> SmallFcLOptState:
    """Folds a gradient into the accumulators (done before features are built).

    Non-finite gradient entries are treated as zero (see :func:`sanitize_gradient`).
    The iteration counter is not advanced; :func:`lopt_update` does that.
    """
    g_leaves, treedef = jax.tree.flatten(grads)
    acc_leaves = treedef.flatten_up_to(state.accumulators)
    new = [
        _accumulate_tensor(sanitize_gradient(g), a, decays)
        for g, a in zip(g_leaves, acc_leaves, strict=True)
    ]
    return state._replace(accumulators=treedef.unflatten(new))


def step_features(count: jax.Array) -> jax.Array:
    """The 11 features tanh(i / T_j - 1) of iteration count i, shape (11,)."""
    timescales = jnp.asarray(STEP_TIMESCALES, jnp.float32)
    return jnp.tanh(count.astype(jnp.float32) / timescales - 1.0)


def raw_tensor_features(
    g: jax.Array, p: jax.Array, acc: TensorAccumulators
) -> jax.Array:
    """Features 0-27 of one tensor before normalization, shape S + (28,).

    ``acc`` must already include ``g`` (see :func:`accumulate`). The same rows as the
    fast path (:func:`mlp_outputs`) builds, put back in the reference's feature order
    and channels-last layout: this is the observation path, which stores every feature
    anyway.
    """
    inputs, _ = _tensor_inputs(g, p, acc)
    *per_element, fac_m, row, col = _rows(inputs)
    # Rows 13-24 interleave the row and column moments in the reference's order.
    rows = [jnp.moveaxis(x, 0, -1) for x in per_element]
    row, col = jnp.moveaxis(row, 0, -1), jnp.moveaxis(col, 0, -1)
    return jnp.concatenate(
        rows
        + [row[..., :3], col[..., :3], row[..., 3:], col[..., 3:]]
        + [jnp.moveaxis(fac_m, 0, -1)],
        axis=-1,
    )


def tensor_features(
    g: jax.Array, p: jax.Array, acc: TensorAccumulators, count: jax.Array
) -> jax.Array:
    """All 39 features of one tensor, shape S' + (39,); S' = S (or (1,) for scalars).

    Features 0-27 are scaled by rsqrt(1e-5 + mean over the tensor of their square).
    """
    raw = raw_tensor_features(g, p, acc)
    axes = tuple(range(raw.ndim - 1))
    normalized = raw * jax.lax.rsqrt(1e-5 + jnp.mean(raw**2, axis=axes, keepdims=True))
    steps = jnp.broadcast_to(step_features(count), raw.shape[:-1] + (11,))
    return jnp.concatenate([normalized, steps], axis=-1)


def features(grads: Any, params: Any, state: SmallFcLOptState) -> list[jax.Array]:
    """Per-tensor features, one S' + (39,) array per leaf in ``jax.tree.leaves`` order.

    ``state`` must already include ``grads`` (see :func:`accumulate`).
    """
    g_leaves, treedef = jax.tree.flatten(grads)
    p_leaves = treedef.flatten_up_to(params)
    acc_leaves = treedef.flatten_up_to(state.accumulators)
    return [
        tensor_features(g, p, a, state.count)
        for g, p, a in zip(g_leaves, p_leaves, acc_leaves, strict=True)
    ]


def apply_mlp(mlp_params: dict, x: jax.Array) -> jax.Array:
    """Runs the per-parameter network on features (..., 39) -> (..., 2) = (d, m)."""
    hidden = mlp_params["Dense_0"]["kernel"].shape[1]
    layers = len(mlp_params) - 1
    return SmallFcMLP(hidden, layers).apply({"params": mlp_params}, x)


def step_from_action(
    action: jax.Array, step_mult: float = STEP_MULT, exp_mult: float = EXP_MULT
) -> jax.Array:
    """Amount subtracted from a parameter: step_mult * d * exp(exp_mult * m) (Eq. 2).

    Args:
      action: (..., 2) with direction d in [..., 0] and magnitude m in [..., 1].
    """
    return step_mult * action[..., 0] * jnp.exp(exp_mult * action[..., 1])


# The fast path lays out the first layer's 28 input rows as: the 16 per-element
# features (0-12 and 25-27), then 6 row features (13-15, 19-21) and 6 column features
# (16-18, 22-24). For a factored tensor these 12 are broadcasts of its small row and
# column second moments; an unfactored tensor has no factors and repeats its v_k and
# their rsqrt in both, as the reference does.
_FEATURE_OF_ROW = np.asarray(
    tuple(range(13))
    + (25, 26, 27)
    + (13, 14, 15, 19, 20, 21)
    + (16, 17, 18, 22, 23, 24)
)


def _mean_square(x: jax.Array) -> jax.Array:
    """Mean of the square of a channels-first array, per channel."""
    return jnp.mean(x**2, axis=tuple(range(1, x.ndim)))


def _tensor_inputs(
    g: jax.Array, p: jax.Array, acc: TensorAccumulators
) -> tuple[dict[str, jax.Array], jax.Array]:
    """Channels-first inputs of one tensor's 28 rows, and the mean squares (12,) of its
    row and column rows.

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
        mean_squares = _mean_square(inputs["row"])
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
        mean_squares.append(_mean_square(channels))
        inputs[name] = jnp.expand_dims(channels, 1 + axis)
    return inputs, jnp.concatenate(mean_squares)


def _per_element_rows(block: dict[str, jax.Array]) -> list[jax.Array]:
    """The 16 per-element rows of a block (a tensor's inputs, or a tile of them), as
    8 arrays (c,) + block shape."""
    g, m, r = block["g"], block["m"], block["r"]
    rsqrt_r = jax.lax.rsqrt(r + 1e-6)
    if "v" in block:
        v = block["v"]
        fac_g = g * jax.lax.rsqrt(jnp.maximum(v + 1e-9, 1e-9))
        fac_m = m * jax.lax.rsqrt(v + 1e-6)
    else:
        both = block["row_factor"] * block["col_factor"]
        fac_g, fac_m = g * both, m * both
    return [g, block["p"], m, r, m * rsqrt_r, rsqrt_r, fac_g, fac_m]


def _rows(block: dict[str, jax.Array]) -> list[jax.Array]:
    """All 28 rows of a block in the fast path's order, as 10 arrays (c,) + block
    shape (the row and column ones broadcast)."""
    rows = _per_element_rows(block)
    shape = rows[0].shape[1:]
    return rows + [
        jnp.broadcast_to(block[k], block[k].shape[:1] + shape) for k in ("row", "col")
    ]


def _cpu_layout() -> bool:
    """Whether the fast path is laid out for XLA:CPU (tiles, rows written in place)."""
    return jax.default_backend() == "cpu"


def _rows_matrix(
    blocks: list[tuple[dict[str, jax.Array], jax.Array | None]],
) -> jax.Array:
    """The 28 rows of several blocks side by side: (28, n_1 + ... + n_k), n_i = block
    i's element count, each block's rows scaled by its normalization (28,) if given.

    On CPU each row group of each block is written in place into one buffer
    (dynamic_update_slice): XLA:CPU materializes every operand of a concatenate, so
    concatenating each row group across blocks and then the groups wrote the rows
    three times, which cost 5-9% of the PES agent's whole step. Elsewhere the
    concatenates stay (they fuse on GPU).
    """
    per_block = [(_rows(inputs), scale) for inputs, scale in blocks]
    dtype = jnp.result_type(*[r for rows, _ in per_block for r in rows])
    groups = [[] for _ in per_block[0][0]]  # groups[j][i]: row group j of block i
    for rows, scale in per_block:
        size, start = math.prod(rows[0].shape[1:]), 0
        for group, r in zip(groups, rows, strict=True):
            piece = r.reshape(r.shape[0], size).astype(dtype)
            if scale is not None:
                piece = piece * scale[start : start + r.shape[0], None]
            group.append(piece)
            start += r.shape[0]
    if not _cpu_layout():
        return jnp.concatenate([jnp.concatenate(group, axis=1) for group in groups])
    x = jnp.zeros((NUM_NORMALIZED, sum(p.shape[1] for p in groups[0])), dtype)
    row = 0
    for group in groups:
        column = 0
        for piece in group:
            x = jax.lax.dynamic_update_slice(x, piece, (row, column))
            column += piece.shape[1]
        row += group[0].shape[0]
    return x


def _normalization(
    inputs: dict[str, jax.Array], row_col_mean_squares: jax.Array
) -> jax.Array:
    """rsqrt(1e-5 + mean square over the tensor) of each of the 28 rows, (28,)."""
    # Each row's expression fuses into its reduction; none is stored at full size.
    mean_squares = [_mean_square(x) for x in _per_element_rows(inputs)]
    return jax.lax.rsqrt(1e-5 + jnp.concatenate(mean_squares + [row_col_mean_squares]))


def _layers(
    mlp: dict, steps: jax.Array, scale: jax.Array | None = None
) -> list[tuple[jax.Array, jax.Array]]:
    """The MLP as channels-first layers: (out, in) weights and (out,) biases.

    The first layer takes the 28 rows in the fast path's order. The 11 step features
    are equal for every element, so they fold into its bias; ``scale`` (28,), when
    given, folds a tensor's normalization into its weights.
    """
    w0, b0 = mlp["Dense_0"]["kernel"], mlp["Dense_0"]["bias"]
    w_first = w0[_FEATURE_OF_ROW]
    if scale is not None:
        w_first = w_first * scale[:, None]
    bias = b0 + jnp.matmul(steps, w0[NUM_NORMALIZED:], precision=PRECISION)
    return [(w_first.T, bias)] + [
        (mlp[name]["kernel"].T, mlp[name]["bias"]) for name in sorted(mlp)[1:]
    ]


def _run_mlp(layers: list[tuple[jax.Array, jax.Array]], x: jax.Array) -> jax.Array:
    """The MLP on channels-first rows: (28, n) -> (2, n)."""
    for i, (w, b) in enumerate(layers):
        x = jnp.matmul(w, x, precision=PRECISION) + b[:, None]
        if i < len(layers) - 1:
            x = jax.nn.relu(x)
    return x


# Elements per tile of the CPU path of the fast update (see _tiled_tensor_step).
# Measured on the 2-core CI machine, ms per update of the 538,856-param MLP: 8,192:
# 28.4; 16,384: 26.6; 24,576: 23.8; 32,768: 22.6-23.1; 49,152: 22.7; 65,536:
# 24.2-24.6; 131,072: 58.6 (the activations leave the caches); untiled: 88.4.
TILE_ELEMENTS = 32768


def _tile_rows(shape: tuple[int, ...]) -> int | None:
    """Rows of axis 0 per tile, or None to run the tensor untiled.

    Tiles cut axis 0 only; a tensor is tiled when some divisor of its first dimension
    gives tiles of TILE_ELEMENTS / 4 to TILE_ELEMENTS elements and there are at least
    two of them.
    """
    if len(shape) < 2:
        return None
    row = math.prod(shape[1:])
    rows = min(shape[0], TILE_ELEMENTS // row) if row <= TILE_ELEMENTS else 0
    while rows and shape[0] % rows:
        rows -= 1
    num_tiles = shape[0] // rows if rows else 0
    if rows * row < TILE_ELEMENTS // 4 or num_tiles < 2:
        return None
    return rows


def _tiled_tensor_step(
    inputs: dict[str, jax.Array], layers: list, rows_per_tile: int
) -> jax.Array:
    """The MLP output (2,) + S of one large tensor on CPU, tile by tile.

    Each tile of rows_per_tile rows along axis 0 builds its 28 input rows and runs all
    three layers while its (32, T) activations are in cache; full-width layers would
    stream every (32, n) activation through memory, which costs more than their FLOPs.
    ``layers`` carry the tensor's normalization in their first weights.
    """
    shape = inputs["m"].shape[1:]

    def tile(i: jax.Array, out: jax.Array) -> jax.Array:
        # Inputs that broadcast along the tensor's axis 0 are the same for every tile.
        block = {
            k: x
            if x.shape[1] == 1
            else jax.lax.dynamic_slice_in_dim(x, i * rows_per_tile, rows_per_tile, 1)
            for k, x in inputs.items()
        }
        step = _run_mlp(layers, _rows_matrix([(block, None)]))
        step = step.reshape((2, rows_per_tile) + shape[1:])
        return jax.lax.dynamic_update_slice_in_dim(out, step, i * rows_per_tile, 1)

    out = jnp.zeros((2,) + shape, layers[0][0].dtype)
    return jax.lax.fori_loop(0, shape[0] // rows_per_tile, tile, out)


def _merged_step(
    tensors: list[tuple[dict[str, jax.Array], jax.Array]], layers: list
) -> jax.Array:
    """The MLP output (2, n_1 + ... + n_k) of several tensors in one pass.

    Builds the normalized (28, n_1 + ... + n_k) rows, each tensor's scaled by its own
    normalization, so the three layers run as three wide matmuls instead of three per
    tensor: small tensors (biases, or every tensor of a small network, as in the PES
    agent's per-copy networks) would otherwise pay a skinny matmul each. On CPU, more
    than 2 * TILE_ELEMENTS columns run in column tiles, as _tiled_tensor_step does.
    """
    x = _rows_matrix(tensors)
    columns = x.shape[1]
    # XLA would fold each weight's transpose into its matmul as a transposed operand.
    # With weights that differ per vmapped copy, those batched matmuls ran 1.3-2x
    # slower on CPU than with the (out, in) weights stored contiguously, so the
    # barrier keeps the transposes (a few KB). With shared weights it costs instead.
    layers = jax.lax.optimization_barrier(layers)
    if not _cpu_layout() or columns < 2 * TILE_ELEMENTS:
        return _run_mlp(layers, x)
    num_tiles = -(-columns // TILE_ELEMENTS)
    width = -(-columns // num_tiles)
    x = jnp.pad(x, ((0, 0), (0, num_tiles * width - columns)))

    def tile(i: jax.Array, out: jax.Array) -> jax.Array:
        block = jax.lax.dynamic_slice_in_dim(x, i * width, width, 1)
        return jax.lax.dynamic_update_slice_in_dim(
            out, _run_mlp(layers, block), i * width, 1
        )

    out = jnp.zeros((2, num_tiles * width), x.dtype)
    return jax.lax.fori_loop(0, num_tiles, tile, out)[:, :columns]


def mlp_outputs(
    grads: Any,
    params: Any,
    state: SmallFcLOptState,
    mlp: dict,
    *,
    merged: bool = False,
) -> list[jax.Array]:
    """The LO's MLP output (d, m) for every tensor, without the (n, 39) features.

    Equals ``apply_mlp(mlp, f)`` for each ``f`` of :func:`features` (moved to the
    front axis); the golden-fixture test checks both. ``state`` must already include
    ``grads`` (see :func:`accumulate`). The same math, arranged for speed:

    - channels first, as the accumulators are stored: the layers are (h, k) @ (k, n)
      matmuls over a long, dense n, and no input is transposed;
    - the per-tensor normalization is a scalar per row, computed from reductions that
      fuse with each row's expression; the 11 step features fold into the first bias;
    - the normalization is folded into the first layer's weights, except in the
      merged pass;
    - on CPU a large tensor runs in tiles (_tiled_tensor_step).

    Args:
      grads, params, state, mlp: as for :func:`lopt_update` (``mlp`` is
        ``MetaParams.mlp``).
      merged: run every tensor that is not tiled in one merged pass (_merged_step):
        three wide matmuls instead of three per tensor, for the price of copying the
        inputs once. It pays off when ``mlp`` differs across a vmapped batch, as in
        the PES agent, where each tensor's matmuls become small batched ones (2.3 vs
        3.3 ms per step for 16 copies of a 3,466-parameter MLP). With one ``mlp``
        for the batch, XLA runs each tensor's matmuls as one wide matmul anyway and
        the copies cost more than they save (31.9 vs 18.5 ms for 4 copies of a
        ResNet-18 of width 4).

    Returns:
      One (2,) + S' array per leaf, in ``jax.tree.leaves`` order (S' = S, or (1,)
      for scalars).
    """
    g_leaves, treedef = jax.tree.flatten(grads)
    p_leaves = treedef.flatten_up_to(params)
    acc_leaves = treedef.flatten_up_to(state.accumulators)
    steps = step_features(state.count)
    on_cpu = _cpu_layout()
    outputs: list[jax.Array | None] = [None] * len(g_leaves)
    pending = []  # tensors for the merged pass
    for i, (g, p, acc) in enumerate(zip(g_leaves, p_leaves, acc_leaves, strict=True)):
        inputs, row_col_mean_squares = _tensor_inputs(g, p, acc)
        scale = _normalization(inputs, row_col_mean_squares)
        shape = acc.momentum.shape[1:]
        rows_per_tile = _tile_rows(shape) if on_cpu else None
        if rows_per_tile is not None:
            layers = _layers(mlp, steps, scale)
            outputs[i] = _tiled_tensor_step(inputs, layers, rows_per_tile)
        elif merged:
            pending.append((i, shape, inputs, scale))
        else:
            out = _run_mlp(_layers(mlp, steps, scale), _rows_matrix([(inputs, None)]))
            outputs[i] = out.reshape((2,) + shape)
    if pending:
        out = _merged_step([(x, s) for _, _, x, s in pending], _layers(mlp, steps))
        sizes = [math.prod(shape) for _, shape, _, _ in pending]
        pieces = jnp.split(out, np.cumsum(sizes)[:-1], axis=1)
        for (i, shape, _, _), piece in zip(pending, pieces, strict=True):
            outputs[i] = piece.reshape((2,) + shape)
    return outputs


def lopt_update(
    meta_params: MetaParams,
    grads: Any,
    state: SmallFcLOptState,
    params: Any,
    step_mult: float = STEP_MULT,
    exp_mult: float = EXP_MULT,
    *,
    merged: bool = False,
) -> tuple[Any, SmallFcLOptState]:
    """One learned-optimizer step: (updates, new_state); new params = p + updates.

    ``merged`` runs the small tensors' MLP in one pass (see :func:`mlp_outputs`): set
    it when vmapping over meta-parameters that differ per copy, as an evolution
    strategy over the LO does; leave it off for one LO over a batch.
    """
    state = accumulate(grads, state, effective_decays(meta_params))
    outputs = mlp_outputs(grads, params, state, meta_params.mlp, merged=merged)
    p_leaves, treedef = jax.tree.flatten(params)
    updates = [
        (-step_mult * out[0] * jnp.exp(exp_mult * out[1]))
        .reshape(p.shape)
        .astype(p.dtype)
        for out, p in zip(outputs, p_leaves, strict=True)
    ]
    return treedef.unflatten(updates), state._replace(count=state.count + 1)


def small_fc_lopt(
    meta_params: MetaParams,
    step_mult: float = STEP_MULT,
    exp_mult: float = EXP_MULT,
    *,
    merged: bool = False,
) -> optax.GradientTransformation:
    """small_fc_lopt as an ``optax.GradientTransformation``.

    Works on any params pytree. ``update`` needs ``params``; the returned updates are
    new params minus params. Non-finite gradient entries count as zero gradient.
    ``merged``: as for :func:`lopt_update` (for meta-parameters vmapped per copy).

    Example:
      >>> import jax, jax.numpy as jnp, optax, elo_gym
      >>> opt = elo_gym.small_fc_lopt(elo_gym.init_meta_params(jax.random.key(0)))
      >>> params = {"w": jnp.ones((3, 2))}
      >>> state = opt.init(params)
      >>> updates, state = opt.update({"w": jnp.ones((3, 2))}, state, params)
      >>> params = optax.apply_updates(params, updates)
    """

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(
                "small_fc_lopt needs params: call update(grads, state, params)"
            )
        return lopt_update(
            meta_params, updates, state, params, step_mult, exp_mult, merged=merged
        )

    return optax.GradientTransformation(init_state, update_fn)
