"""The fused update of small_fc_lopt: its MLP outputs without building the features.

:mod:`elo_gym.lopt` defines the learned optimizer as the reference does: 39 features
per parameter, normalized per tensor, then a 39 -> 32 -> 32 -> 2 MLP. Built like that,
a step writes a (P, 39) matrix. This module computes the same outputs, arranged for
speed:

- channels first, as the accumulators are stored: the layers are (h, k) @ (k, n)
  matmuls over a long, dense n, and no input is transposed;
- the per-tensor normalization is a scalar per row, computed from reductions that
  fuse with each row's expression, and folded into the first layer's weights; the 11
  step features are equal for every element and fold into the first bias;
- the ``cpu`` layout runs a large tensor in cache-sized tiles and writes rows in
  place; the ``accelerator`` layout runs every tensor whole and concatenates.

The layout is a static argument, chosen once by the caller (:func:`default_layout`
reads the default backend outside any trace). Timings behind these choices are in
``docs/performance.md``; ``scripts/bench_lopt.py`` measures them.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from elo_gym import lo_features

Layout = Literal["cpu", "accelerator"]
LAYOUTS = ("cpu", "accelerator")


def default_layout(backend: str | None = None) -> Layout:
    """The layout for ``backend`` (default: ``jax.default_backend()``): cpu tiles on
    CPU, whole tensors on GPU and TPU. Call it outside ``jit`` and pass the result."""
    backend = jax.default_backend() if backend is None else backend
    return "cpu" if backend == "cpu" else "accelerator"


def check_layout(layout: str) -> None:
    """Raises ValueError for a layout that is not one of :data:`LAYOUTS`."""
    if layout not in LAYOUTS:
        raise ValueError(
            f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)} "
            "(elo_gym.lopt_fused.default_layout() picks the default backend's)"
        )


# The first layer's 28 input rows, in this order: the 16 per-element features (0-12
# and 25-27), then 6 row features (13-15, 19-21) and 6 column features (16-18,
# 22-24), as lo_features.feature_rows builds them; _FEATURE_OF_ROW maps each row to its
# reference feature index (the row of the first layer's kernel it multiplies).
_FEATURE_OF_ROW = np.asarray(
    tuple(range(13))
    + (25, 26, 27)
    + (13, 14, 15, 19, 20, 21)
    + (16, 17, 18, 22, 23, 24)
)


def _rows_matrix(
    blocks: list[tuple[dict[str, jax.Array], jax.Array | None]], layout: Layout
) -> jax.Array:
    """The 28 rows of several blocks side by side: (28, n_1 + ... + n_k), n_i = block
    i's element count, each block's rows scaled by its normalization (28,) if given.

    In the cpu layout each row group of each block is written in place into one
    buffer, because XLA:CPU materializes every operand of a concatenate (the rows
    would be written three times); on accelerators the concatenates fuse.
    """
    per_block = [(lo_features.feature_rows(inputs), scale) for inputs, scale in blocks]
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
    if layout != "cpu":
        return jnp.concatenate([jnp.concatenate(group, axis=1) for group in groups])
    x = jnp.zeros(
        (lo_features.NUM_NORMALIZED, sum(p.shape[1] for p in groups[0])), dtype
    )
    row = 0
    for group in groups:
        column = 0
        for piece in group:
            x = jax.lax.dynamic_update_slice(x, piece, (row, column))
            column += piece.shape[1]
        row += group[0].shape[0]
    return x


def _normalization(
    inputs: dict[str, jax.Array],
    row_col_mean_squares: jax.Array,
    raw_adam_ratio: bool,
) -> jax.Array:
    """``lo_features.normalizers`` of the 28 rows, (28,)."""
    # Each row's expression fuses into its reduction; none is stored at full size.
    mean_squares = [
        lo_features.mean_square(x) for x in lo_features.per_element_rows(inputs)
    ]
    return lo_features.normalizers(
        jnp.concatenate(mean_squares + [row_col_mean_squares]),
        raw_adam_ratio=raw_adam_ratio,
    )


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
    bias = b0 + jnp.matmul(
        steps, w0[lo_features.NUM_NORMALIZED :], precision=lo_features.PRECISION
    )
    return [(w_first.T, bias)] + [
        (mlp[name]["kernel"].T, mlp[name]["bias"]) for name in sorted(mlp)[1:]
    ]


def _run_mlp(layers: list[tuple[jax.Array, jax.Array]], x: jax.Array) -> jax.Array:
    """The MLP on channels-first rows: (28, n) -> (2, n)."""
    for i, (w, b) in enumerate(layers):
        x = jnp.matmul(w, x, precision=lo_features.PRECISION) + b[:, None]
        if i < len(layers) - 1:
            x = jax.nn.relu(x)
    return x


# Elements per tile of the cpu layout: the fastest size of the sweep in
# docs/performance.md, whose (32, tile) activations still fit the caches.
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
        step = _run_mlp(layers, _rows_matrix([(block, None)], "cpu"))
        step = step.reshape((2, rows_per_tile) + shape[1:])
        return jax.lax.dynamic_update_slice_in_dim(out, step, i * rows_per_tile, 1)

    out = jnp.zeros((2,) + shape, layers[0][0].dtype)
    return jax.lax.fori_loop(0, shape[0] // rows_per_tile, tile, out)


def _merged_step(
    tensors: list[tuple[dict[str, jax.Array], jax.Array]], layers: list, layout: Layout
) -> jax.Array:
    """The MLP output (2, n_1 + ... + n_k) of several tensors in one pass.

    Builds the normalized (28, n_1 + ... + n_k) rows, each tensor's scaled by its own
    normalization, so the three layers run as three wide matmuls instead of three per
    tensor: small tensors (biases, or every tensor of a small network, as in the PES
    agent's per-copy networks) would otherwise pay a skinny matmul each. In the cpu
    layout, more than 2 * TILE_ELEMENTS columns run in column tiles, as
    _tiled_tensor_step does.
    """
    x = _rows_matrix(tensors, layout)
    columns = x.shape[1]
    # The barrier keeps the (out, in) weights stored contiguously: XLA would fold
    # their transposes into batched matmuls that run slower on CPU
    # (docs/performance.md).
    layers = jax.lax.optimization_barrier(layers)
    if layout != "cpu" or columns < 2 * TILE_ELEMENTS:
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
    state: lo_features.SmallFcLOptState,
    mlp: dict,
    *,
    layout: Layout,
    merged: bool = False,
    raw_adam_ratio: bool = False,
    clock: jax.Array | None = None,
) -> list[jax.Array]:
    """The LO's MLP output (d, m) for every tensor, without the (n, 39) features.

    Equals ``lo_features.apply_mlp(mlp, f)`` for each ``f`` of
    ``lo_features.features`` (moved to the front axis); ``tests/elo_gym/test_lopt.py``
    checks both against the golden fixture. ``state`` must already include ``grads``
    (``lo_features.accumulate``).

    Args:
      grads, params, state, mlp: as for ``lopt.lopt_update`` (``mlp`` is
        ``MetaParams.mlp``).
      layout: ``"cpu"`` (large tensors in cache-sized tiles, rows written in place)
        or ``"accelerator"`` (every tensor whole); see :func:`default_layout`.
      merged: run every tensor that is not tiled in one merged pass (_merged_step):
        three wide matmuls instead of three per tensor, for the price of copying the
        inputs once. It pays off when ``mlp`` differs across a vmapped batch, as in
        the PES agent; with one ``mlp`` for the batch XLA already runs each tensor's
        matmuls as one wide matmul, and the copies cost more than they save
        (docs/performance.md).
      raw_adam_ratio: features 6-8 unnormalized (``lo_features.normalizers``).
      clock: what the step features read (``LOSpec.clock``); default the count.

    Returns:
      One (2,) + S' array per leaf, in ``jax.tree.leaves`` order (S' = S, or (1,)
      for scalars).
    """
    check_layout(layout)
    g_leaves, treedef = jax.tree.flatten(grads)
    p_leaves = treedef.flatten_up_to(params)
    acc_leaves = treedef.flatten_up_to(state.accumulators)
    steps = lo_features.step_features(state.count if clock is None else clock)
    outputs: list[jax.Array | None] = [None] * len(g_leaves)
    pending = []  # tensors for the merged pass
    for i, (g, p, acc) in enumerate(zip(g_leaves, p_leaves, acc_leaves, strict=True)):
        inputs, row_col_mean_squares = lo_features.tensor_inputs(g, p, acc)
        scale = _normalization(inputs, row_col_mean_squares, raw_adam_ratio)
        shape = acc.momentum.shape[1:]
        rows_per_tile = _tile_rows(shape) if layout == "cpu" else None
        if rows_per_tile is not None:
            layers = _layers(mlp, steps, scale)
            outputs[i] = _tiled_tensor_step(inputs, layers, rows_per_tile)
        elif merged:
            pending.append((i, shape, inputs, scale))
        else:
            rows = _rows_matrix([(inputs, None)], layout)
            out = _run_mlp(_layers(mlp, steps, scale), rows)
            outputs[i] = out.reshape((2,) + shape)
    if pending:
        tensors = [(x, s) for _, _, x, s in pending]
        out = _merged_step(tensors, _layers(mlp, steps), layout)
        sizes = [math.prod(shape) for _, shape, _, _ in pending]
        pieces = jnp.split(out, np.cumsum(sizes)[:-1], axis=1)
        for (i, shape, _, _), piece in zip(pending, pieces, strict=True):
            outputs[i] = piece.reshape((2,) + shape)
    return outputs
