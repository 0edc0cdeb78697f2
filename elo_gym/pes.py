"""The PES meta-gradient estimator (Vicol et al., 2021), per device under shard_map.

Copy 2i runs the LO with weights phi + eps_i, copy 2i+1 with phi - eps_i, on the same
data and resets. One outer step unrolls one truncation of every copy in a
``lax.scan`` over the env's pure core, then
``g = mean_i sum_t xi_i,t (L+_i,t - L-_i,t) / (2 sigma^2 T)`` where xi is the pair's
perturbation accumulated since its episode began.

The pairs never talk to each other during a truncation, so the unroll runs under
``jax.shard_map`` over the pairs axis of the global mesh
(:func:`elo_gym.distributed.pairs_mesh`): each device steps its own copies, PES
accumulators and, with ``buffer_scope="pair"``, its own shard of the replay buffer,
with its own ``cond`` predicates and metric sums. After the scan, one all-reduce sums
the gradient sums and the metrics over the devices, and one more takes the largest
inner step. ``buffer_scope="shared"`` keeps one FIFO queue in copy order, replicated on
every device: each inner step gathers the devices' push masks, and a step on which a
copy pushes gathers every copy's snapshot. That traffic grows with the device count, so
the shared scope does not scale; the pair scope does (docs/distributed.md).

``estimator="tbptt"`` replaces the pairs' estimate, on the same copies, buffer and
devices, by truncated backprop (learned_optimization's ``TruncatedGrad``): every
copy acts with phi itself, and ``g`` is the gradient of the truncation's mean
meta-loss through the env's pure step (its gradients, Adam's and the LO's states,
the buffer's restores), stopping at the truncation's start. Its estimates are biased
towards the truncation's horizon as PES's are not, and far less noisy
(docs/levers.md, nineteenth).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import PartitionSpec

from elo_gym import core, distributed, lopt, lopt_fused, schedules

ESTIMATORS = ("pes", "tbptt")


@dataclasses.dataclass(frozen=True)
class PESConfig:
    """Static (hashable) part of an outer step."""

    env: core.EnvConfig  # the env of all copies of all devices (2 * num_pairs)
    truncation: int
    sigma: float
    loss_cap: float
    keep_accumulator_on_restore: bool
    layout: lopt_fused.Layout  # the fused LO update's layout, chosen once
    # pes: antithetic pairs (the paper); tbptt: the gradient of the truncation's
    # meta-loss by backprop through the env, every copy acting with the LO itself.
    estimator: str = "pes"

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise ValueError(
                f"unknown estimator {self.estimator!r}; valid: {', '.join(ESTIMATORS)}"
            )
        if self.estimator == "tbptt" and self.env.paired:
            raise ValueError(
                "estimator 'tbptt' wants independent copies (paired=False): partners "
                "that act alike on the same data would only repeat each other"
            )

    @property
    def num_pairs(self) -> int:
        return self.env.num_copies // 2


@flax.struct.dataclass
class PESState:
    """Everything meta-training needs to continue exactly (checkpointed whole)."""

    meta: lopt.MetaParams  # phi, the LO being trained
    opt_state: optax.OptState  # AdamW state of the outer optimizer
    env: core.VecEnvState  # the 2 * num_pairs optimizee copies and the replay buffer
    accumulator: jax.Array  # (num_pairs, D) float32: perturbation since episode start
    key: jax.Array  # (2,) uint32
    outer_step: jax.Array  # () int32: outer steps done
    best_meta: lopt.MetaParams  # the LO with the lowest validation loss so far
    best_valid_loss: jax.Array  # () float32: its loss (inf before any validation)
    best_step: jax.Array  # () int32: outer steps done when it was validated (-1: none)
    # (env, accumulator) of each --mixture task; empty without a mixture, so that a
    # single-task checkpoint has the same leaves as before mixtures existed.
    mixture: tuple = ()


def init_state(
    key: jax.Array,
    env_key: jax.Array,
    cfg: PESConfig,
    meta: lopt.MetaParams,
    optimizer: optax.GradientTransformation,
    env_params: core.EnvParams,
    mixture: Sequence[tuple[PESConfig, core.EnvParams]] = (),
) -> PESState:
    """The state before the first outer step: the LO ``meta``, a fresh outer
    optimizer, fresh copies of the env's task from ``env_key`` (and of each
    ``mixture`` task, a config and its own env params, from ``fold_in(env_key, 1 +
    i)``) with empty buffers and zero accumulators; ``key`` becomes the state's key.
    """
    dim = ravel_pytree(meta.mlp)[0].size
    pairs = cfg.num_pairs

    def fresh(
        cfg: PESConfig, k: jax.Array, params: core.EnvParams
    ) -> tuple[core.VecEnvState, jax.Array]:
        keys = jax.vmap(jax.random.fold_in, (None, 0))(k, jnp.arange(pairs))
        env_state, _, _ = core.jit_reset(cfg.env, keys.repeat(2, axis=0), params)
        return env_state, jnp.zeros((pairs, dim))

    env_state, accumulator = fresh(cfg, env_key, env_params)
    return PESState(
        meta=meta,
        opt_state=optimizer.init(meta.mlp),
        env=env_state,
        accumulator=accumulator,
        mixture=tuple(
            fresh(c, jax.random.fold_in(env_key, 1 + i), params)
            for i, (c, params) in enumerate(mixture)
        ),
        key=key,
        outer_step=jnp.int32(0),
        # Copies: the jitted step donates its input, and a buffer can go only once.
        best_meta=jax.tree.map(jnp.copy, meta),
        best_valid_loss=jnp.float32(jnp.inf),
        best_step=jnp.int32(-1),
    )


def policy_actions(
    cfg: PESConfig,
    mlp_flat: jax.Array,
    unravel: Callable,
    copies: core.EnvState,
) -> jax.Array:
    """small_fc_lopt's actions (C, P, 2) for (C, D) weights, one set per copy.

    The same function of the copies' state as ``apply_mlp`` on their observed
    (P, 39) features (``cfg.env`` says which features), by the LO's fused path
    (``lopt_fused.mlp_outputs``, in ``cfg.layout``), which never builds those
    features: the scan below does not build observations at all.
    """

    def one(weights: jax.Array, s: core.EnvState) -> jax.Array:
        outputs = lopt_fused.mlp_outputs(
            s.grads,
            s.params,
            s.lo,
            unravel(weights),
            layout=cfg.layout,
            merged=True,
            raw_adam_ratio=cfg.env.lo.raw_adam_ratio,
            clock=core.lo_clock(cfg.env, s),
        )
        return jnp.concatenate([out.reshape(2, -1) for out in outputs], axis=1).T

    return jax.vmap(one)(mlp_flat, copies)


Policy = Callable[[jax.Array, Callable, core.EnvState], jax.Array]
# The truncation's metrics that are means over its copies and inner steps.
MEAN_METRICS = (
    "meta_loss",
    "task_loss",
    "bc_loss",
    "mean_inner_step",
    "frac_from_buffer",
)


def _env_specs(cfg: PESConfig) -> core.VecEnvState:
    """How the env state lies on the pairs mesh: copies split; the buffer split by
    pair queues (``pair``) or replicated (``shared``)."""
    split = PartitionSpec(distributed.PAIRS_AXIS)
    buffer = split if cfg.env.buffer_scope == "pair" else PartitionSpec()
    return core.VecEnvState(copies=split, buffer=buffer)


def _clip(loss: jax.Array, cap: float) -> jax.Array:
    # NaN maps to the cap, so one diverging copy cannot poison the estimate.
    return jnp.minimum(jnp.nan_to_num(loss, nan=cap, posinf=cap, neginf=-cap), cap)


def _truncation(
    cfg: PESConfig,
    policy: Policy,
    weights: jax.Array,
    unravel: Callable,
    env_state: core.VecEnvState,
    env_params: core.EnvParams,
    on_step: Callable[[Any, dict, jax.Array, dict], Any],
    per_step: Any,
):
    """One truncation of this device's copies, copy c acting with ``weights[c]``.

    ``on_step(per_step, parts, ended, info)`` folds each inner step's clipped
    meta-loss parts into ``per_step`` (PES: the accumulators and gradient sums;
    tbptt: the summed meta-loss it differentiates) and returns it.
    Returns (env_state, per_step, sums of the metrics, largest inner step).
    """
    axis = distributed.PAIRS_AXIS

    def inner(carry, _):
        state, per_step, sums, max_inner_step = carry
        actions = policy(weights, unravel, state.copies)
        state, _, reward, terminated, truncated, info = core.step(
            cfg.env, state, actions, env_params, copies_axis=axis
        )
        # The same split of the reward as core's: L_bc weighted, L_task by alpha.
        parts = {
            "meta": -reward,
            "bc": core.bc_weight(env_params) * info["bc_loss"],
            "task": env_params.alpha * info["meta_task_loss"],
        }
        parts = {k: _clip(v, cfg.loss_cap) for k, v in parts.items()}
        ended = terminated | truncated
        per_step = on_step(per_step, parts, ended, info)
        # Sums over this device's copies only: the devices add them up once, after
        # the scan.
        step_sums = {
            "meta_loss": parts["meta"].sum(),
            "task_loss": info["task_loss"].sum(),
            "bc_loss": info["bc_loss"].sum(),
            "mean_inner_step": info["inner_step"].astype(jnp.float32).sum(),
            "frac_from_buffer": info["from_buffer"].astype(jnp.float32).sum(),
            # Episodes, not copies: paired partners end together.
            "episodes_ended": (ended[0::2] if cfg.env.paired else ended).sum(
                dtype=jnp.int32
            ),
            "diverged": terminated.sum(dtype=jnp.int32),
        }
        sums = {k: sums[k] + jax.lax.stop_gradient(v) for k, v in step_sums.items()}
        max_inner_step = jnp.maximum(max_inner_step, info["inner_step"].max())
        return (state, per_step, sums, max_inner_step), None

    if cfg.estimator == "tbptt":
        # Backprop keeps each step's carry only and recomputes the rest, so memory
        # grows with the truncation by the env state, not by every intermediate.
        inner = jax.checkpoint(inner, prevent_cse=False)
    sums = {k: jnp.float32(0) for k in MEAN_METRICS}
    sums.update(episodes_ended=jnp.int32(0), diverged=jnp.int32(0))
    carry = (env_state, per_step, sums, jnp.int32(0))
    (env_state, per_step, sums, max_inner_step), _ = jax.lax.scan(
        inner, carry, None, length=cfg.truncation
    )
    return env_state, per_step, sums, max_inner_step


def _pes_on_device(
    cfg: PESConfig,
    policy: Policy,
    theta: jax.Array,
    unravel: Callable,
    env_state: core.VecEnvState,
    accumulator: jax.Array,
    key: jax.Array,
    env_params: core.EnvParams,
):
    """The PES estimate's sums over this device's pairs: (gradient sums of the meta-
    loss and its bc and task terms, env state, accumulators, metric sums, largest
    inner step)."""
    local_pairs = accumulator.shape[0]  # cfg is this device's: its pairs only
    num_pairs = local_pairs * jax.lax.axis_size(distributed.PAIRS_AXIS)
    # Every device draws all pairs' perturbations and keeps its own: the same eps_i
    # for pair i on any number of devices.
    eps = jax.lax.dynamic_slice_in_dim(
        cfg.sigma * jax.random.normal(key, (num_pairs, theta.size)),
        jax.lax.axis_index(distributed.PAIRS_AXIS) * local_pairs,
        local_pairs,
    )
    # Interleave: copy 2i runs theta + eps_i, copy 2i+1 runs theta - eps_i.
    weights = (theta + jnp.stack([eps, -eps], axis=1)).reshape(-1, theta.size)

    def on_step(carry, parts, ended, info):
        xi, grad_sums = carry
        grad_sums = {
            k: grad_sums[k] + (parts[k][0::2] - parts[k][1::2])[:, None] * xi
            for k in grad_sums
        }
        ended = ended[0::2]
        restart_xi = eps
        if cfg.keep_accumulator_on_restore:
            restart_xi = jnp.where(info["from_buffer"][0::2, None], xi, eps)
        return jnp.where(ended[:, None], restart_xi, xi), grad_sums

    zero = jnp.zeros_like(accumulator)
    start = (accumulator + eps, {"meta": zero, "bc": zero, "task": zero})
    env_state, (xi, grad_sums), sums, max_inner_step = _truncation(
        cfg, policy, weights, unravel, env_state, env_params, on_step, start
    )
    grad_sums = {k: v.sum(axis=0) for k, v in grad_sums.items()}
    return grad_sums, env_state, xi, sums, max_inner_step


def _backprop_on_device(
    cfg: PESConfig,
    policy: Policy,
    theta: jax.Array,
    unravel: Callable,
    env_state: core.VecEnvState,
    env_params: core.EnvParams,
):
    """Truncated backprop through this device's copies, all acting with ``theta``:
    (the gradient of the summed meta-loss, env state, metric sums, largest inner
    step). A gradient that is not finite (a copy that diverged inside the
    truncation) is dropped: the step applies none."""

    def summed_meta_loss(theta, env_state):
        weights = jnp.broadcast_to(theta, (cfg.env.num_copies, theta.size))

        def on_step(total, parts, ended, info):
            return total + parts["meta"].sum()

        env_state, total, sums, max_inner_step = _truncation(
            cfg, policy, weights, unravel, env_state, env_params, on_step, 0.0
        )
        return total, (env_state, sums, max_inner_step)

    grad, (env_state, sums, max_inner_step) = jax.grad(summed_meta_loss, has_aux=True)(
        theta, env_state
    )
    grad = jnp.where(jnp.all(jnp.isfinite(grad)), grad, jnp.zeros_like(grad))
    return {"meta": grad}, env_state, sums, max_inner_step


def _unroll_on_device(
    cfg: PESConfig,
    num_devices: int,
    policy: Policy | None,
    meta: lopt.MetaParams,
    env_state: core.VecEnvState,
    accumulator: jax.Array,
    key: jax.Array,
    env_params: core.EnvParams,
):
    """:func:`unroll`'s work on one device's copies (the body of its ``shard_map``)."""
    axis = distributed.PAIRS_AXIS
    local_env = dataclasses.replace(
        cfg.env, num_copies=cfg.env.num_copies // num_devices
    )
    local = dataclasses.replace(cfg, env=local_env)
    if policy is None:
        policy = functools.partial(policy_actions, local)
    theta, unravel = ravel_pytree(meta.mlp)
    if cfg.estimator == "pes":
        grad_sums, env_state, xi, sums, max_inner_step = _pes_on_device(
            local, policy, theta, unravel, env_state, accumulator, key, env_params
        )
    else:  # no perturbations, so no accumulators
        grad_sums, env_state, sums, max_inner_step = _backprop_on_device(
            local, policy, theta, unravel, env_state, env_params
        )
        xi = accumulator
    buffer_fill = env_state.buffer.size.sum()
    local_sums = {"grads": grad_sums, "metrics": sums}
    if cfg.env.buffer_scope == "pair":
        local_sums["buffer_fill"] = buffer_fill
    # The estimator's only communication: one psum of the sums (an all-reduce per
    # dtype) and the largest inner step.
    total = jax.lax.psum(local_sums, axis)
    max_inner_step = jax.lax.pmax(max_inner_step, axis)
    if cfg.estimator == "pes":
        scale = 1.0 / (2.0 * cfg.sigma**2 * cfg.truncation * cfg.num_pairs)
    else:  # the mean over copies and inner steps
        scale = 1.0 / (cfg.env.num_copies * cfg.truncation)
    grads = {k: unravel(v * scale) for k, v in total["grads"].items()}
    per_copy_step = 1.0 / (cfg.env.num_copies * cfg.truncation)
    metrics = {k: total["metrics"][k] * per_copy_step for k in MEAN_METRICS}
    metrics.update(
        max_inner_step=max_inner_step,
        buffer_fill=total.get("buffer_fill", buffer_fill)
        / (env_state.buffer.capacity * cfg.env.num_queues),
        episodes_ended=total["metrics"]["episodes_ended"],
        diverged=total["metrics"]["diverged"],
    )
    return grads, env_state, xi, metrics


def unroll(
    cfg: PESConfig,
    meta: lopt.MetaParams,
    env_state: core.VecEnvState,
    accumulator: jax.Array,
    key: jax.Array,
    env_params: core.EnvParams,
    policy: Policy | None = None,
) -> tuple[dict, core.VecEnvState, jax.Array, dict]:
    """One truncation of every copy and its meta-gradient estimate (``cfg.estimator``),
    each device on its own copies.

    ``policy`` maps (C, D) flat LO weights, their unravel function and the copies to
    (C, P, 2) actions; None is small_fc_lopt (:func:`policy_actions`;
    ``scripts/bench_pes.py`` swaps in zero actions to time everything but the LO).

    Returns:
      (grads, env_state, accumulator, metrics): the gradients of the meta-loss and
      of its ``bc`` and ``task`` terms (LO-shaped; ``tbptt``: the meta-loss's only),
      the copies and buffer after the truncation, the pairs' accumulators (``tbptt``:
      untouched), and the truncation's metrics (means over copies and inner steps,
      the largest inner step, the buffer fill, and the counts of ended episodes and
      diverged copies).
    """
    mesh = distributed.pairs_mesh(cfg.num_pairs)
    split, whole = PartitionSpec(distributed.PAIRS_AXIS), PartitionSpec()
    env_specs = _env_specs(cfg)
    per_device = jax.shard_map(
        functools.partial(_unroll_on_device, cfg, mesh.size, policy),
        mesh=mesh,
        in_specs=(whole, env_specs, split, whole, whole),
        out_specs=(whole, env_specs, split, whole),
        # The shared buffer's replicas stay equal (every device applies the same
        # gathered pushes), which the replication checker cannot see through
        # all_gather and cond.
        check_vma=False,
    )
    return per_device(meta, env_state, accumulator, key, env_params)


def outer_step(
    cfg: PESConfig,
    optimizer: optax.GradientTransformation,
    state: PESState,
    env_params: core.EnvParams,
    policy: Policy | None = None,
) -> tuple[PESState, dict]:
    """One PES meta-gradient step (jit with ``cfg``, ``optimizer`` and ``policy``
    static; ``policy`` as for :func:`unroll`)."""
    key, k_eps = jax.random.split(state.key)
    grads, env_state, accumulator, metrics = unroll(
        cfg, state.meta, state.env, state.accumulator, k_eps, env_params, policy
    )
    updates, opt_state = optimizer.update(
        grads["meta"], state.opt_state, state.meta.mlp
    )
    meta = state.meta._replace(mlp=optax.apply_updates(state.meta.mlp, updates))
    metrics = dict(
        metrics,
        # tbptt estimates the meta-loss's gradient alone, not its terms'.
        **{f"grad_norm_{k}": optax.tree.norm(g) for k, g in grads.items()},
    )
    metrics["grad_norm"] = metrics.pop("grad_norm_meta")
    new_state = state.replace(
        meta=meta,
        opt_state=opt_state,
        env=env_state,
        accumulator=accumulator,
        key=key,
        outer_step=state.outer_step + 1,
    )
    return new_state, metrics


def mixture_outer_step(
    index: int,
    cfg: PESConfig,
    optimizer: optax.GradientTransformation,
    state: PESState,
    env_params: core.EnvParams,
) -> tuple[PESState, dict]:
    """:func:`outer_step` on mixture task ``index`` (1, 2, ...): its copies and
    accumulators take the place of the env's for the step, then go back."""
    env, accumulator = state.mixture[index - 1]
    new, metrics = outer_step(
        cfg, optimizer, state.replace(env=env, accumulator=accumulator), env_params
    )
    mixture = list(state.mixture)
    mixture[index - 1] = (new.env, new.accumulator)
    new = new.replace(env=state.env, accumulator=state.accumulator)
    return new.replace(mixture=tuple(mixture)), metrics


@functools.lru_cache(maxsize=32)
def outer_optimizer(
    learning_rate: float,
    num_outer_steps: int,
    schedule: str,
    warmup_fraction: float,
    min_learning_rate: float,
    max_grad_norm: float,
    weight_decay: float,
) -> optax.GradientTransformation:
    """AdamW on the meta-gradient, clipped by its global norm, with the lr of
    :func:`schedules.outer_learning_rate` (cached: equal settings give the same
    object, so :func:`compiled_outer_step` finds its compilation again)."""
    lr = schedules.outer_learning_rate(
        learning_rate, num_outer_steps, schedule, warmup_fraction, min_learning_rate
    )
    return optax.chain(
        optax.clip_by_global_norm(max_grad_norm),
        optax.adamw(lr, weight_decay=weight_decay),
    )


@functools.lru_cache(maxsize=32)
def compiled_outer_step(
    cfg: PESConfig, optimizer: optax.GradientTransformation, task_index: int = 0
) -> Callable[[PESState, core.EnvParams], tuple[PESState, dict]]:
    """:func:`outer_step` (``task_index`` 0) or :func:`mixture_outer_step` of task
    ``task_index``, jitted and donating the state; one per settings in a process, so
    a second run with them (the study, a notebook, the tests) skips the tracing."""
    if task_index == 0:
        step = functools.partial(outer_step, cfg, optimizer)
    else:
        step = functools.partial(mixture_outer_step, task_index, cfg, optimizer)
    return jax.jit(step, donate_argnums=0)


def shard_state(cfg: PESConfig, state: PESState) -> PESState:
    """Spreads the particle pairs over all devices of all processes as :func:`unroll`
    wants them: copies, accumulators and a ``pair`` buffer split by pairs; the LO, the
    outer optimizer and a ``shared`` buffer replicated. Each process feeds only the
    shards its devices hold (see :func:`elo_gym.distributed.put`)."""
    mesh = distributed.pairs_mesh(cfg.num_pairs)
    split, whole = distributed.pairs_shardings(cfg.num_pairs)
    specs = _env_specs(cfg)

    def env(env_state: core.VecEnvState) -> core.VecEnvState:
        return env_state.replace(
            copies=distributed.put(env_state.copies, split),
            buffer=distributed.put(
                env_state.buffer, jax.sharding.NamedSharding(mesh, specs.buffer)
            ),
        )

    return state.replace(
        meta=distributed.put(state.meta, whole),
        opt_state=distributed.put(state.opt_state, whole),
        env=env(state.env),
        accumulator=distributed.put(state.accumulator, split),
        mixture=tuple((env(e), distributed.put(a, split)) for e, a in state.mixture),
        key=distributed.put(state.key, whole),
        outer_step=distributed.put(state.outer_step, whole),
        best_meta=distributed.put(state.best_meta, whole),
        best_valid_loss=distributed.put(state.best_valid_loss, whole),
        best_step=distributed.put(state.best_step, whole),
    )


# HLO ops that move data between devices (async pairs count once, by their start).
_COLLECTIVE = re.compile(
    r"\s(all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter"
    r"|collective-broadcast|ragged-all-to-all)(-start)?\("
)
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$")
_CALLS = re.compile(
    r"(?:body|condition|to_apply|calls|true_computation|false_computation"
    r"|branch_computations)=\{?([%\w.\-, ]+)\}?"
)
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def count_collectives(hlo_text: str, truncation: int) -> dict[str, int]:
    """Collectives in a compiled outer step (``jit(...).lower(...).compile()
    .as_text()``): ``total`` in the whole program and ``inner_step`` in the body of
    the inner-step loop (the while loop that runs ``truncation`` times) and whatever
    it calls, so once per inner step at most.

    Raises:
      ValueError: no while loop runs ``truncation`` times.
    """
    bodies: dict[str, list[str]] = {}
    name = None
    for line in hlo_text.splitlines():
        match = _COMPUTATION.match(line)
        if match:
            name = match.group(1)
            bodies[name] = []
        elif name is not None:
            bodies[name].append(line)

    def own(computation: str) -> int:
        return sum(bool(_COLLECTIVE.search(line)) for line in bodies[computation])

    def reachable(computation: str) -> set[str]:
        seen, todo = set(), [computation]
        while todo:
            c = todo.pop()
            if c in seen or c not in bodies:
                continue
            seen.add(c)
            for line in bodies[c]:
                for names in _CALLS.findall(line):
                    todo += [n.strip().lstrip("%") for n in names.split(",")]
        return seen

    loops = [
        (computation, re.search(r"body=%?([\w.\-]+)", line).group(1))
        for computation, lines in bodies.items()
        for line in lines
        if " while(" in line
        and (trips := _TRIP_COUNT.search(line))
        and int(trips.group(1)) == truncation
    ]
    nested = set().union(*(reachable(body) for _, body in loops))
    # Outermost: the loops of the PRNG (threefry rounds) may run as often, inside.
    outermost = [
        reachable(body) for computation, body in loops if computation not in nested
    ]
    if not outermost:
        raise ValueError(
            f"no while loop of {truncation} trips (the inner steps) in the program"
        )
    # The inner-step loop holds the whole env step: the largest of them.
    inner_step = max(outermost, key=len)
    return {
        "total": sum(own(c) for c in bodies),
        "inner_step": sum(own(c) for c in inner_step),
    }
