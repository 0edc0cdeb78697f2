"""small_fc_lopt: the per-parameter MLP learned optimizer of Metz et al. (2022).

This is the LO's update and its optax face :func:`small_fc_lopt`, which the env, the
agents and users call. Its pieces live in two modules that this one re-exports: the
accumulators, the 39 features and the MLP in :mod:`elo_gym.lo_features`, the settings
with the step of Eq. 2, its variants and its inverse in :class:`elo_gym.lo_spec.LOSpec`.

It reproduces ``AdafacMLPLOpt`` of google/learned_optimization (hidden size 32, two
hidden layers, step_mult = exp_mult = 1e-3, the default :class:`LOSpec`);
``tests/elo_gym/test_lopt.py`` checks it against a golden fixture recorded from that
code. The update evaluates the MLP with the fused path (:mod:`elo_gym.lopt_fused`),
which equals :func:`apply_mlp` on :func:`features` (``tests/elo_gym/test_lopt.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from elo_gym import lopt_fused
from elo_gym.lo_features import (  # noqa: F401 - the LO's math, re-exported
    ADAFACTOR_DECAYS,
    ADAM_RATIO_FEATURES,
    DECAYS,
    MOMENTUM_DECAYS,
    NUM_FEATURES,
    NUM_NORMALIZED,
    PRECISION,
    RMS_CHANNEL_DECAYS,
    RMS_DECAYS,
    STEP_TIMESCALES,
    Decays,
    MetaParams,
    SmallFcLOptState,
    SmallFcMLP,
    TensorAccumulators,
    accumulate,
    advance,
    apply_mlp,
    factored_dims,
    feature_rows,
    features,
    hidden_size_of,
    init_meta_params,
    init_state,
    mean_square,
    normalizers,
    per_element_rows,
    raw_tensor_features,
    rms_channels,
    sanitize_gradient,
    step_features,
    tensor_features,
    tensor_inputs,
)
from elo_gym.lo_spec import (  # noqa: F401 - the step and its settings, re-exported
    EXP_MULT,
    STEP_MULT,
    LOSpec,
    adam_step_scale,
    nominal_update,
    spec_for,
    step_from_action,
)


def meta_params_from_reference(arrays: Mapping[str, Any]) -> MetaParams:
    """Builds meta-parameters from learned_optimization's haiku layout.

    Args:
      arrays: mapping with keys ``meta/nn/~/w0`` ... ``meta/nn/~/b2`` (the golden
        fixture's keys), and optionally the decay offsets ``meta/momentum_decays``,
        ``meta/rms_decays`` and ``meta/adafactor_decays``, which must be zero.

    Returns:
      :class:`MetaParams`.

    Raises:
      ValueError: a decay offset is not zero (this LO's decays are fixed, see the
        elo_gym.lo_features), or the first layer does not take 39 features.
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
    check_decay_offsets({k: arrays[k] for k in DECAY_OFFSET_KEYS if k in arrays})
    return MetaParams(mlp)


_REFERENCE_KEYS = tuple(f"meta/nn/~/{w}{i}" for i in range(3) for w in "wb")
# The reference's learnable decay offsets (fixed here, see elo_gym.lo_features).
DECAY_OFFSET_KEYS = (
    "meta/momentum_decays",
    "meta/rms_decays",
    "meta/adafactor_decays",
)


def check_decay_offsets(offsets: Mapping[str, Any]) -> None:
    """Raises ValueError if any of the reference's decay offsets is nonzero."""
    for name, value in offsets.items():
        if np.any(np.asarray(value) != 0):
            raise ValueError(
                f"{name} = {np.asarray(value).tolist()}: this small_fc_lopt keeps its "
                "decays fixed (they define the env's observation), so only zero decay "
                "offsets can be loaded; an LO trained with learned decays needs "
                "learned_optimization itself"
            )


def lopt_update(
    meta_params: MetaParams,
    grads: Any,
    state: SmallFcLOptState,
    params: Any,
    spec: LOSpec = LOSpec(),
    *,
    layout: lopt_fused.Layout,
    merged: bool = False,
    total_steps: jax.Array | float | None = None,
) -> tuple[Any, SmallFcLOptState]:
    """One learned-optimizer step: (updates, new_state); new params = p + updates.

    :func:`accumulate`, the MLP's (d, m) for every parameter, the step of ``spec``
    (:meth:`LOSpec.update`, Eq. 2 with its variants), and :func:`advance`: the rule
    the env applies to an agent's action, with the action computed by the fused path
    (:func:`elo_gym.lopt_fused.mlp_outputs`).

    Args:
      spec: the LO's settings; the meta-parameters must have been trained with them.
      layout: the fused path's layout, ``"cpu"`` or ``"accelerator"``; chosen once by
        the caller, e.g. ``lopt_fused.default_layout()`` outside ``jit``.
      merged: run the small tensors' MLP in one pass; set it when vmapping over
        meta-parameters that differ per copy, as an evolution strategy over the LO
        does; leave it off for one LO over a batch.
      total_steps: the number of steps of the run, which a relative-time LO needs
        (``spec.time_horizon`` > 0, :meth:`LOSpec.clock`); others ignore it.
    """
    state = accumulate(grads, state)
    clock = spec.clock(state.count, total_steps)
    outputs = lopt_fused.mlp_outputs(
        grads,
        params,
        state,
        meta_params.mlp,
        layout=layout,
        merged=merged,
        raw_adam_ratio=spec.raw_adam_ratio,
        clock=clock,
    )
    p_leaves, treedef = jax.tree.flatten(params)
    acc_leaves = treedef.flatten_up_to(state.accumulators)
    updates = [
        spec.update(
            jnp.moveaxis(out, 0, -1),
            *spec.tensor_terms(acc, state.count, clock, p),
            params=p.reshape(out.shape[1:]),
        )
        .reshape(p.shape)
        .astype(p.dtype)
        for out, p, acc in zip(outputs, p_leaves, acc_leaves, strict=True)
    ]
    return treedef.unflatten(updates), advance(state)


def small_fc_lopt(
    meta_params: MetaParams,
    spec: LOSpec | None = None,
    *,
    layout: lopt_fused.Layout | None = None,
    merged: bool = False,
    total_steps: int | None = None,
) -> optax.GradientTransformation:
    """small_fc_lopt as an ``optax.GradientTransformation``.

    Works on any params pytree. ``update`` needs ``params``; the returned updates are
    new params minus params. Non-finite gradient entries count as zero gradient.

    Args:
      meta_params: the LO's weights.
      spec: the settings it was trained with; None: the reference LO of its hidden
        size (``LOSpec.for_meta_params``). Its hidden size must be the weights'.
      layout: as for :func:`lopt_update`; None takes the default backend's, read
        here, once.
      merged: as for :func:`lopt_update`.
      total_steps: the number of steps the run will take. A relative-time LO
        (``spec.time_horizon`` > 0) needs it, as a cosine schedule does; others
        ignore it.

    Example:
      >>> import jax, jax.numpy as jnp, optax, elo_gym
      >>> opt = elo_gym.small_fc_lopt(elo_gym.init_meta_params(jax.random.key(0)))
      >>> params = {"w": jnp.ones((3, 2))}
      >>> state = opt.init(params)
      >>> updates, state = opt.update({"w": jnp.ones((3, 2))}, state, params)
      >>> params = optax.apply_updates(params, updates)
    """
    layout = lopt_fused.default_layout() if layout is None else layout
    lopt_fused.check_layout(layout)
    spec = spec_for(spec, meta_params, total_steps)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(
                "small_fc_lopt needs params: call update(grads, state, params)"
            )
        return lopt_update(
            meta_params,
            updates,
            state,
            params,
            spec,
            layout=layout,
            merged=merged,
            total_steps=total_steps,
        )

    return optax.GradientTransformation(spec.init_state, update_fn)
