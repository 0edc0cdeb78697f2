"""A meta-trained small_fc_lopt as a ``torch.optim.Optimizer``.

The same math as :mod:`elo_gym.lopt` (accumulators, 39 features, per-parameter MLP,
update), written with torch ops; ``tests/elo_gym/test_torch_optim.py`` checks it
against the golden fixture and against the optax face :func:`elo_gym.small_fc_lopt`.

Example:
  >>> import elo_gym.torch_optim  # doctest: +SKIP
  >>> opt = elo_gym.torch_optim.load("runs/run", model.parameters(), total_steps=1000)
  >>> loss.backward(); opt.step(); opt.zero_grad()

Like the JAX fused path (:func:`elo_gym.lopt_fused.mlp_outputs`), it never builds the
(n, 39) feature matrix: the 11 step features fold into the first layer's bias, each
tensor's normalization into the first layer's weights, and the row and column
features of a factored tensor (broadcasts of its small second moments) enter the
first layer as small (hidden,) + S products, added by broadcasting. Large tensors run
the MLP in tiles along axis 0, so that each tile's activations stay in cache.
"""

from __future__ import annotations

import functools
import math
import pathlib
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from elo_gym import checkpoint, lo_spec, lopt, schedules
from elo_gym.lo_spec import LOSpec

# The per-element input rows, in the order _element_rows builds them: features 0-12,
# then the Adafactor-preconditioned momenta 25-27.
_ELEMENT_FEATURES = list(range(13)) + [25, 26, 27]
# (v_k, rsqrt(v_k + 1e-8)) of a factored tensor's row moments are features 13-15 and
# 19-21, of its column moments 16-18 and 22-24. An unfactored tensor has no factors:
# both are its own v_k, so it feeds the sum of the two weights.
_ROW_FEATURES = [13, 14, 15, 19, 20, 21]
_COL_FEATURES = [16, 17, 18, 22, 23, 24]
# Elements per MLP tile: a tile's (32, tile) float32 activations (1 MiB) then stay in
# a core's L2 cache. 4,096-16,384 timed alike on the busy 2-core CI machine.
TILE_ELEMENTS = 8192


class _Net:
    """The LO's MLP and decays as float32 tensors on one device."""

    def __init__(self, meta_params: lopt.MetaParams, device: torch.device) -> None:
        def tensor(x: Any) -> torch.Tensor:
            return torch.tensor(np.array(x, np.float32), device=device)

        mlp = meta_params.mlp
        names = sorted(mlp, key=lambda name: int(name.rsplit("_", 1)[1]))
        self.w0 = tensor(mlp[names[0]]["kernel"])  # (39, hidden)
        self.b0 = tensor(mlp[names[0]]["bias"])
        # Later layers as (out, in) weights and (out, 1) biases, for addmm on (in, n).
        self.layers = [
            (tensor(mlp[n]["kernel"]).T.contiguous(), tensor(mlp[n]["bias"])[:, None])
            for n in names[1:]
        ]
        # The optax face's own float32 decays d, so that both faces use the same
        # bits; each with 1 - d, the weight of the new value. The rms decays are
        # every channel's: a state keeps the first 1 or 2 (lo_features).
        self.momentum, self.rms, self.adafactor = (
            (tensor(d), 1.0 - tensor(d))
            for d in lopt.DECAYS._replace(rms=lopt.RMS_CHANNEL_DECAYS)
        )
        self.timescales = tensor(lopt.STEP_TIMESCALES)
        self._first_bias = (-1, self.b0)

    def first_bias(self, count: int, clock: torch.Tensor | None = None) -> torch.Tensor:
        """b0 plus the 11 step features of iteration ``count`` times their weights;
        the features read ``clock`` (``LOSpec.clock``; default the count)."""
        # Every tensor of a step asks for the same count: compute it once.
        if self._first_bias[0] != count:
            if clock is None:
                clock = torch.tensor(count, dtype=torch.float32, device=self.w0.device)
            steps = torch.tanh(clock / self.timescales - 1.0)
            bias = self.b0 + steps @ self.w0[lopt.NUM_NORMALIZED :]
            self._first_bias = (count, bias)
        return self._first_bias[1]


def _validate_meta_params(meta_params: Any) -> None:
    if not isinstance(meta_params, lopt.MetaParams):
        raise TypeError(
            "meta_params must be an elo_gym.lopt.MetaParams (from "
            "elo_gym.init_meta_params, elo_gym.meta_params_from_reference or "
            f"elo_gym.checkpoint.load_meta_params), got {type(meta_params).__name__}"
        )
    kernel = np.shape(meta_params.mlp.get("Dense_0", {}).get("kernel"))
    if len(kernel) != 2 or kernel[0] != lopt.NUM_FEATURES:
        raise ValueError(
            f"meta_params.mlp['Dense_0']['kernel'] has shape {kernel}; "
            f"expected ({lopt.NUM_FEATURES}, hidden)"
        )


def _internal_shape(shape: torch.Size) -> tuple[int, ...]:
    # As the reference, a scalar is a tensor of shape (1,).
    return tuple(shape) if len(shape) else (1,)


def _init_state(p: torch.Tensor, fast_second_moment: bool) -> dict[str, Any]:
    """Zero float32 accumulators, channels first as in :mod:`elo_gym.lopt` (with
    the rms channels ``lo_features.rms_channels`` keeps)."""
    shape = _internal_shape(p.shape)

    def zeros(*s: int) -> torch.Tensor:
        return torch.zeros(s, dtype=torch.float32, device=p.device)

    rms = zeros(lopt.rms_channels(fast_second_moment), *shape)
    state = {"step": 0, "momentum": zeros(3, *shape), "rms": rms}
    dims = lopt.factored_dims(shape)
    if dims is None:
        state["v_row"] = zeros(3, *shape)
    else:
        d0, d1 = dims
        state["v_row"] = zeros(3, *(s for i, s in enumerate(shape) if i != d0))
        state["v_col"] = zeros(3, *(s for i, s in enumerate(shape) if i != d1))
    return state


def _ema_(
    acc: torch.Tensor, decay: tuple[torch.Tensor, torch.Tensor], new: torch.Tensor
) -> None:
    """acc = d * acc + (1 - d) * new, per channel of the channels-first acc, for
    ``decay`` = (d, 1 - d)."""
    shape = (-1,) + (1,) * (acc.ndim - 1)
    acc.mul_(decay[0].view(shape)).addcmul_(decay[1].view(shape), new)


def _accumulate(g: torch.Tensor, state: dict[str, Any], net: _Net) -> None:
    """Folds the (sanitized, float32, internal-shaped) gradient into the state."""
    _ema_(state["momentum"], net.momentum, g)
    g2 = g * g
    channels = state["rms"].shape[0]  # as lo_features: the first channel decays
    _ema_(state["rms"], tuple(d[:channels] for d in net.rms), g2)
    q = g2 + 1e-30
    dims = lopt.factored_dims(tuple(g.shape))
    if dims is None:
        _ema_(state["v_row"], net.adafactor, q)
    else:
        _ema_(state["v_row"], net.adafactor, q.mean(dims[0]))
        _ema_(state["v_col"], net.adafactor, q.mean(dims[1]))


def _mean_squares(x: torch.Tensor) -> torch.Tensor:
    """Mean of the square of each channel of a channels-first array, (c,)."""
    flat = x.reshape(x.shape[0], -1)
    return torch.linalg.vector_norm(flat, dim=1).square() / flat.shape[1]


def _moments_rows(v: torch.Tensor) -> torch.Tensor:
    """(v_k, rsqrt(v_k + 1e-8)): 6 channels of a (3,) + S second moment."""
    return torch.cat([v, torch.rsqrt(v + 1e-8)])


def _element_rows(
    g: torch.Tensor, p: torch.Tensor, state: dict[str, Any], w0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-element input rows of one tensor, (rows,) + S', and the first layer's
    weights (rows, hidden) that multiply them."""
    shape = g.shape
    m, r, v = state["momentum"], state["rms"], state["v_row"]
    factored = "v_col" in state
    x = torch.empty(
        (16 if factored else 22,) + shape, dtype=torch.float32, device=g.device
    )
    x[0] = g
    x[1] = p
    x[2:5] = m
    x[5:6] = r[:1]
    rsqrt_r = torch.add(r[:1], 1e-6, out=x[9:10]).rsqrt_()
    torch.mul(m, rsqrt_r, out=x[6:9])
    if r.shape[0] > 1:  # as lo_features.per_element_rows: row 8 reads r_0.95
        torch.mul(m[:1], torch.rsqrt(r[1:] + 1e-6), out=x[8:9])
    if factored:
        d0, d1 = lopt.factored_dims(tuple(shape))
        row_mean = v.mean(d1 if d1 > d0 else d1 + 1, keepdim=True)
        row_factor = torch.clamp(v / (row_mean + 1e-9), min=1e-9).rsqrt_()
        col_factor = torch.clamp(state["v_col"], min=1e-9).rsqrt_()
        both = row_factor.unsqueeze(1 + d0) * col_factor.unsqueeze(1 + d1)
        torch.mul(g, both, out=x[10:13])
        torch.mul(m, both, out=x[13:16])
        return x, w0[_ELEMENT_FEATURES]
    torch.mul(g, torch.clamp(v + 1e-9, min=1e-9).rsqrt_(), out=x[10:13])
    torch.mul(m, torch.rsqrt(v + 1e-6), out=x[13:16])
    x[16:22] = _moments_rows(v)
    w_moments = w0[_ROW_FEATURES] + w0[_COL_FEATURES]
    return x, torch.cat([w0[_ELEMENT_FEATURES], w_moments])


def _broadcast_terms(state: dict[str, Any], w0: torch.Tensor) -> list[torch.Tensor]:
    """A factored tensor's row and column features' part of the first layer.

    Each is (hidden,) + S' with size 1 on the axis its moments broadcast along; its
    normalization is taken over the small moments, as a broadcast's mean square over
    the tensor equals theirs.
    """
    if "v_col" not in state:
        return []
    shape = state["momentum"].shape[1:]
    d0, d1 = lopt.factored_dims(tuple(shape))
    terms = []
    for features, moments, axis in (
        (_ROW_FEATURES, state["v_row"], d0),
        (_COL_FEATURES, state["v_col"], d1),
    ):
        rows = _moments_rows(moments)
        w = w0[features] * torch.rsqrt(1e-5 + _mean_squares(rows))[:, None]
        terms.append(torch.tensordot(w.T, rows, dims=1).unsqueeze(1 + axis))
    return terms


def _mlp_outputs(
    g: torch.Tensor,
    p: torch.Tensor,
    state: dict[str, Any],
    net: _Net,
    count: int,
    raw_adam_ratio: bool,
    clock: torch.Tensor | None = None,
) -> torch.Tensor:
    """The MLP output (direction, magnitude) for every element, (2,) + S'.

    ``g`` and ``p`` are float32 with the internal shape S'; ``state`` already
    includes ``g``. Equals applying the MLP to :func:`elo_gym.lopt.tensor_features`.
    """
    shape = g.shape
    x, w_first = _element_rows(g, p, state, net.w0)
    scale = torch.rsqrt(1e-5 + _mean_squares(x))
    if raw_adam_ratio:  # as lopt.normalizers; rows 6-8 are m_k * rsqrt(r) here too
        scale[lopt.ADAM_RATIO_FEATURES] = 1.0
    w_first = (w_first * scale[:, None]).T.contiguous()  # (hidden, rows)
    hidden = w_first.shape[0]
    # Tiles cut axis 0: the terms that broadcast along it are equal in every tile and
    # enter as addmm's input; the others are sliced and added tile by tile.
    terms = _broadcast_terms(state, net.w0)
    fixed = net.first_bias(count, clock).view((hidden,) + (1,) * len(shape))
    fixed = fixed + sum(t for t in terms if t.shape[1] == 1)
    sliced = [t for t in terms if t.shape[1] != 1]
    row = math.prod(shape[1:])
    rows_per_tile = max(1, min(shape[0], TILE_ELEMENTS // row))
    if fixed.shape[1:] == (1,) * len(shape):
        fixed = fixed.view(hidden, 1)
    else:
        fixed = fixed.expand((hidden, rows_per_tile) + shape[1:]).reshape(hidden, -1)
    x = x.view(x.shape[0], -1)
    out = torch.empty((2, x.shape[1]), dtype=torch.float32, device=g.device)
    for start in range(0, shape[0], rows_per_tile):
        stop = min(start + rows_per_tile, shape[0])
        columns = slice(start * row, stop * row)
        h = torch.addmm(fixed[:, : (stop - start) * row], w_first, x[:, columns])
        for t in sliced:
            h.view((hidden, stop - start) + shape[1:]).add_(t[:, start:stop])
        h.relu_()
        for w, b in net.layers[:-1]:
            h = torch.addmm(b, w, h).relu_()
        w, b = net.layers[-1]
        torch.addmm(b, w, h, out=out[:, columns])
    return out.view((2,) + shape)


class SmallFcLOpt(torch.optim.Optimizer):
    """small_fc_lopt with given meta-parameters, as a ``torch.optim.Optimizer``.

    The update equals the optax face :func:`elo_gym.small_fc_lopt` with the same
    meta-parameters and spec: new p = p - step_mult * d * exp(exp_mult * m) (times
    the spec's scale, plus its nominal term: :class:`elo_gym.lo_spec.LOSpec`), (d, m)
    the MLP's output on each element's 39 features. Accumulators are float32 whatever
    the parameter dtype; a bf16 or float16 parameter is updated from the float32
    computation with one rounding. Non-finite gradient entries count as zero, as in
    :func:`elo_gym.lopt.sanitize_gradient`. Each parameter keeps its own
    iteration count (state ``step``); parameters without a gradient are skipped.

    Args:
      params: parameters or parameter groups, as for any torch optimizer; a group may
        set its own ``step_mult`` and ``exp_mult`` (default: the spec's).
      meta_params: the LO's :class:`elo_gym.lopt.MetaParams`.
      spec: the settings the LO was meta-trained with (None: the reference LO of its
        hidden size). Every setting of :class:`elo_gym.lo_spec.LOSpec` is honoured
        here, in torch ops (``tests/elo_gym/test_torch_optim.py`` checks each
        against the optax face).
      total_steps: the number of steps the run will take, which a relative-time LO
        (``spec.time_horizon`` > 0) needs, as a cosine schedule does.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        meta_params: lopt.MetaParams,
        spec: LOSpec | None = None,
        total_steps: int | None = None,
    ) -> None:
        _validate_meta_params(meta_params)
        spec = lo_spec.spec_for(spec, meta_params, total_steps)
        defaults = {"step_mult": spec.step_mult, "exp_mult": spec.exp_mult}
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if not p.is_floating_point():
                    raise ValueError(
                        f"SmallFcLOpt updates floating-point parameters, got {p.dtype}"
                    )
        self.meta_params = meta_params
        self.spec = spec
        self.total_steps = total_steps
        self._nets: dict[torch.device, _Net] = {}

    def _net(self, device: torch.device) -> _Net:
        if device not in self._nets:
            self._nets[device] = _Net(self.meta_params, device)
        return self._nets[device]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One LO step on every parameter with a gradient; returns closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("SmallFcLOpt does not support sparse gradients")
                self._update(p, group["step_mult"], group["exp_mult"])
        return loss

    def _update(self, p: torch.Tensor, step_mult: float, exp_mult: float) -> None:
        state = self.state[p]
        if not state:
            state.update(_init_state(p, self.spec.fast_second_moment))
        net = self._net(p.device)
        shape = _internal_shape(p.shape)
        g = torch.nan_to_num(
            p.grad.reshape(shape).float(), nan=0.0, posinf=0.0, neginf=0.0
        )
        _accumulate(g, state, net)
        clock = self._clock(state["step"], g.device)
        out = _mlp_outputs(
            g,
            p.reshape(shape).float(),
            state,
            net,
            state["step"],
            self.spec.raw_adam_ratio,
            clock,
        )
        if not self.spec.gated_step:  # a gated LO has no learned step of its own
            update = (out[0] * -step_mult).mul_(torch.exp(out[1] * exp_mult))
            if self.spec.adam_scaled_step:  # as lo_spec.adam_step_scale
                ratio = state["momentum"][0] * torch.rsqrt(state["rms"][0] + 1e-6)
                update.mul_(torch.sqrt(1e-5 + ratio.square().mean()))
            if self.spec.tangential_step:  # as lo_spec._tangential
                w = p.reshape(shape).float()
                squares = w.square().sum()
                along = (update * w).sum() / squares.clamp_min(1e-30)
                update.sub_(
                    torch.where(squares > 0, along, torch.zeros_like(along)) * w
                )
        if self.spec.nominal_lr > 0:
            lr = self._nominal_lr(clock)
            if self.spec.scheduled_step:  # as LOSpec.tensor_terms
                update.mul_(lr / self.spec.nominal_lr)
            nominal = self._nominal(state, lr)
            if self.spec.nominal_trust_ratio:  # as lo_spec._trust_ratio
                norm_w = torch.linalg.vector_norm(p.float())
                norm_n = torch.linalg.vector_norm(nominal)
                positive = (norm_w > 0) & (norm_n > 0)
                ratio = lr.abs() * norm_w / torch.where(positive, norm_n, 1.0)
                nominal.mul_(torch.where(positive, ratio, torch.ones_like(ratio)))
            if self.spec.gated_step:  # as LOSpec.update
                update = nominal * (1.0 + torch.tanh(out[0]))
            else:
                update.add_(nominal)
            if self.spec.nominal_norm_step:  # as LOSpec.update
                norm = torch.linalg.vector_norm(update)
                ratio = torch.linalg.vector_norm(nominal) / norm.clamp_min(1e-30)
                update.mul_(torch.where(norm > 0, ratio, torch.zeros_like(ratio)))
        update = update.view(p.shape)
        if torch.finfo(p.dtype).bits >= 32:
            p.add_(update)
        else:  # bf16, float16: round p + update once
            p.copy_(update.add_(p))
        state["step"] += 1

    def _clock(self, count: int, device: torch.device) -> torch.Tensor:
        """As ``LOSpec.clock``, float32: the count, or relative to total_steps."""
        f32 = functools.partial(torch.tensor, dtype=torch.float32, device=device)
        clock = f32(count)
        if self.spec.relative_time:
            total = torch.clamp(f32(self.total_steps), min=1.0)
            clock = clock * (f32(self.spec.time_horizon) / total)
        return clock

    def _nominal_lr(self, clock: torch.Tensor) -> torch.Tensor:
        """As ``LOSpec.nominal_learning_rate``, in its float32 order of operations."""
        lr = torch.full_like(clock, self.spec.nominal_lr)
        if self.spec.nominal_schedule == "cosine":  # schedules.relative_warmup_cosine
            total = torch.clamp(torch.full_like(clock, self.spec.time_horizon), min=1.0)
            warmup = schedules.COSINE_WARMUP_FRACTION * total
            ramp = clock / torch.clamp(warmup, min=1.0)
            progress = torch.clamp(
                (clock - warmup) / torch.clamp(total - warmup, min=1.0), 0.0, 1.0
            )
            decay = 0.5 * (1.0 + torch.cos(math.pi * progress))
            return lr * torch.where(clock < warmup, ramp, decay)
        if self.spec.nominal_decay_steps > 0:
            lr = lr * torch.rsqrt(1.0 + clock / self.spec.nominal_decay_steps)
        return lr

    def _nominal(self, state: dict[str, Any], lr: torch.Tensor) -> torch.Tensor:
        """As ``elo_gym.lo_spec.nominal_update``, in its float32 order of operations:
        Adam's step from m_0.9 and r at the lr ``lr`` (:meth:`_nominal_lr`)."""
        device = state["rms"].device
        count = torch.tensor(state["step"], dtype=torch.float32, device=device)
        t = count + 1.0
        m_hat = state["momentum"][0] / (1.0 - lopt.MOMENTUM_DECAYS[0] ** t)
        v_hat = state["rms"][0] / (1.0 - lopt.RMS_DECAYS[0] ** t)
        return -lr * m_hat / (torch.sqrt(v_hat) + 1e-8)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads :meth:`state_dict`, keeping the float32 accumulators float32."""
        super().load_state_dict(state_dict)
        # torch casts floating state to its parameter's dtype (bf16 would lose bits).
        saved = (i for g in state_dict["param_groups"] for i in g["params"])
        params = (p for g in self.param_groups for p in g["params"])
        for i, p in zip(saved, params, strict=True):
            for key, value in state_dict["state"].get(i, {}).items():
                if torch.is_tensor(value):
                    self.state[p][key] = value.to(p.device)


def load(
    path: str | pathlib.Path,
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    total_steps: int | None = None,
) -> SmallFcLOpt:
    """A trained LO as a :class:`SmallFcLOpt` over ``params``.

    Args:
      path: anything :func:`elo_gym.load_optimizer` accepts: a run directory, its
        ``lo.msgpack``, a ``checkpoints`` directory or one checkpoint step directory.
      params: the parameters (or groups) to optimize.
      total_steps: the number of steps the run will take (a relative-time LO needs
        it; others ignore it).

    Returns:
      The optimizer, with the settings the LO was trained with (its
      :class:`elo_gym.lo_spec.LOSpec`, from ``lo.json``).
    """
    meta_params, info = checkpoint.load_meta_params(path)
    return SmallFcLOpt(params, meta_params, LOSpec.from_json(info), total_steps)
