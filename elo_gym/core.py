"""The pure functional core of the ELO environment (ELO Sec. 4, Alg. 1, Eq. 8-10).

One env copy is one optimizee being trained. The core always works on a batch of C
copies (the single-copy Gymnasium env uses C = 1) because copies share the replay
buffer.

Per inner step n of a copy, from parameters theta_n and the gradient g_n of the task
loss on this step's batch (computed once, fed to both Adam and the LO features):

- the observation is the LO's features of every parameter, (P, 39), rows in
  :func:`param_layout` order, plus the inner step, the task loss and alpha;
- the action (P, 2) = (d, m) proposes dtheta_O = -step_mult * d * exp(exp_mult * m)
  (Eq. 2, with the variants of the LO spec ``cfg.lo``, :class:`elo_gym.lo_spec.LOSpec`);
- Adam proposes dtheta_H; the optimizee moves to theta_n + (1-alpha) dtheta_H + alpha
  dtheta_O (Eq. 8);
- the reward is -[(1-alpha) * bc_scale * L_bc + alpha * L_task(theta_n)] (the BC
  weight never below bc_scale * bc_floor, see :func:`bc_weight`) with
  L_bc = ||dtheta_O - dtheta_H||^2 (Eq. 9-10).

Episodes start fresh (K = 0) or, in ``elo`` mode, from a replay-buffer snapshot with
probability 1 - p_th, run N inner steps, and push one snapshot into the buffer at inner
step N_push. The state is kept "prepared": it holds the gradient and the Adam
proposal for the current parameters, so that the observation can be returned before
the action.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from elo_gym import buffer as replay
from elo_gym import demonstrator, lo_spec, lopt, schedules
from elo_gym.lo_spec import LOSpec

MODES = ("elo", "naive", "uniform", "curriculum")
BUFFER_SCOPES = ("shared", "pair")
PUSH_POLICIES = ("uniform", "failure_aware")
BC_LOSSES = ("l2", "cosine_norm", "l2_relative")
META_LOSS_SPLITS = ("train", "valid")
# Keeps log L finite where a memorized batch's float32 loss reaches 0.
LOG_LOSS_FLOOR = 1e-8


def _check_choice(name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """Settings that fix shapes and code paths (static under jit; hashable).

    Attributes:
      task: the optimizee task (a hashable task spec from ``elo_gym.envs``).
      num_copies: C, the number of optimizees stepped together.
      mode: reset distribution. ``elo``: replay buffer + N ~ U[n_min, n_max];
        ``naive``: fresh init + N log-uniform in (n_min, n_max]; ``uniform``: fresh init
        + uniform N; ``curriculum``: as naive, with n_max raised by the agent over the
        outer steps (see :func:`elo_gym.schedules.curriculum_n_max`).
      buffer_size: M, capacity of each buffer queue.
      buffer_scope: ``shared`` (one queue, the paper) or ``pair`` (one queue per
        antithetic pair, the ELO authors' code; needs ``paired``).
      push_policy: ``uniform`` (push at N_push ~ U{K+1..K+N}, the paper) or
        ``failure_aware`` (push at the first step whose loss exceeds its running mean by
        ``push_tolerance``, falling back to N_push).
      bc_loss: ``l2`` (Eq. 9), ``cosine_norm`` (0.7 (1 - cos) + 0.3 |norm ratio - 1|,
        the ELO authors' code) or ``l2_relative`` (Eq. 9 divided by ||dtheta_H||^2,
        so that its weight against the task loss does not grow with the optimizee).
      meta_loss_split: the split whose minibatch gives the task term of the reward:
        ``train`` (Eq. 10, the step's own training batch) or ``valid`` (a held-out
        batch at the same params, learned_optimization's outer-valid meta-loss; it
        does not pay an LO for memorizing the training set).
      meta_loss_log: the task term is log L (L floored at ``LOG_LOSS_FLOOR``) instead
        of L, so that a task, or a stage of training, counts by its relative change:
        an easy task's loss near zero is not outweighed by a hard task's.
      paired: copies 2i and 2i+1 share keys, hence reset draws and data batches, and
        end their episodes together (antithetic pairs for PES).
      lo: the LO spec: its step (Eq. 2 and variants) turns actions into updates and
        Adam's update into the expert's action, its ``raw_adam_ratio`` picks the
        observed features; the LO acting on them must be built with the same.
      expert_learning_rate: Adam's learning rate.
      expert_decay_steps: 0 (the paper: constant) or tau > 0: the expert's learning
        rate at inner step n is expert_learning_rate / sqrt(1 + n / tau).
      expert_b2: the expert Adam's second-moment decay, in (0, 1).
      expert_weight_decay: >= 0; above 0 the expert is AdamW with this decoupled
        weight decay (times its lr, schedule included), which the LO's nominal term
        does not do.
      expert_trust_ratio: the expert is LAMB (Adam rescaled per tensor to lr x |W|),
        the demonstrator of an LO whose nominal term has ``nominal_trust_ratio``.
      expert_cautious: the expert drops each coordinate whose step disagrees in sign
        with the gradient (Cautious Adam or LAMB,
        ``demonstrator.scale_by_cautious_adam``): a demonstrator that an LO with
        ``gated_step`` can follow exactly and its nominal term does not know.
      expert_schedule: ``inverse_sqrt`` (``expert_decay_steps``) or ``cosine``:
        warmup and cosine decay to 0 at the end of the run, R (K + N unless
        ``run_length_max``; ``schedules.relative_warmup_cosine``), a schedule that
        knows when training ends, for a relative-time LO to imitate.
      nominal_lr_spread: s >= 1. Above 1, every episode multiplies the LO's nominal
        term by s**u, u ~ U(-1, 1), drawn once per episode (paired copies alike),
        while the demonstrator keeps its lr: the learned part is trained on nominal
        terms wrong by up to a factor s, which it can only correct from what the
        optimizee's dynamics show (lr augmentation). 1: off.
      run_length_max: R_max >= 0. Above 0, every episode draws its run's end R (the
        step the relative-time LO's clock and the cosine demonstrator read as the end
        of training) log-uniform in [K + N, max(K + N, R_max)] instead of R = K + N,
        so that states restored from the buffer meet the LO at the clocks a longer run
        has them; the episode still lasts N steps. 0: off.
    """

    task: Any
    num_copies: int = 1
    mode: str = "elo"
    buffer_size: int = 4
    buffer_scope: str = "shared"
    push_policy: str = "uniform"
    bc_loss: str = "l2"
    meta_loss_split: str = "train"
    meta_loss_log: bool = False
    paired: bool = False
    lo: LOSpec = LOSpec()
    expert_learning_rate: float = demonstrator.EXPERT_LEARNING_RATE
    expert_decay_steps: float = 0.0
    expert_b2: float = demonstrator.EXPERT_B2
    expert_weight_decay: float = demonstrator.EXPERT_WEIGHT_DECAY
    expert_trust_ratio: bool = False
    expert_cautious: bool = False
    expert_schedule: str = "inverse_sqrt"
    nominal_lr_spread: float = 1.0
    run_length_max: int = 0

    def __post_init__(self):
        _check_choice("mode", self.mode, MODES)
        _check_choice("buffer_scope", self.buffer_scope, BUFFER_SCOPES)
        _check_choice("push_policy", self.push_policy, PUSH_POLICIES)
        _check_choice("bc_loss", self.bc_loss, BC_LOSSES)
        _check_choice("meta_loss_split", self.meta_loss_split, META_LOSS_SPLITS)
        _check_choice(
            "expert_schedule", self.expert_schedule, schedules.EXPERT_SCHEDULES
        )
        if self.expert_schedule == "cosine" and self.expert_decay_steps:
            raise ValueError(
                "expert_decay_steps is the inverse_sqrt expert's; a cosine expert "
                "decays to the end of the episode: set expert_decay_steps to 0"
            )
        if self.num_copies < 1:
            raise ValueError(f"num_copies must be >= 1, got {self.num_copies}")
        if self.buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {self.buffer_size}")
        if self.paired and self.num_copies % 2:
            raise ValueError(
                f"paired copies need an even num_copies, got {self.num_copies}"
            )
        if not self.expert_learning_rate > 0:
            raise ValueError(
                f"expert_learning_rate must be > 0, got {self.expert_learning_rate}"
            )
        if not 0.0 < self.expert_b2 < 1.0:
            raise ValueError(
                f"expert_b2 is Adam's second-moment decay, in (0, 1); got "
                f"{self.expert_b2}"
            )
        if not self.expert_weight_decay >= 0:
            raise ValueError(
                "expert_weight_decay must be >= 0 (0: Adam, no decay), got "
                f"{self.expert_weight_decay}"
            )
        if not self.expert_decay_steps >= 0:
            raise ValueError(
                "expert_decay_steps must be >= 0 (0: a constant expert lr), got "
                f"{self.expert_decay_steps}"
            )
        if not isinstance(self.lo, LOSpec):
            raise TypeError(
                f"lo must be an elo_gym.lo_spec.LOSpec, got {type(self.lo).__name__}"
            )
        if self.buffer_scope == "pair" and not self.paired:
            raise ValueError("buffer_scope='pair' needs paired=True")
        if not self.nominal_lr_spread >= 1.0:
            raise ValueError(
                f"nominal_lr_spread must be >= 1 (1: off), got {self.nominal_lr_spread}"
            )
        if self.nominal_lr_spread > 1.0 and not self.lo.nominal_lr > 0:
            raise ValueError(
                f"nominal_lr_spread {self.nominal_lr_spread} scales the LO's nominal "
                "term, and this LO has none: set the LO's nominal_lr > 0 or the "
                "spread to 1"
            )
        if self.run_length_max < 0:
            raise ValueError(
                f"run_length_max must be >= 0 (0: off), got {self.run_length_max}"
            )
        if self.run_length_max and not (
            self.lo.relative_time or self.expert_schedule == "cosine"
        ):
            raise ValueError(
                f"run_length_max {self.run_length_max} sets where a run's clock ends, "
                "and neither the LO (absolute time) nor the demonstrator (not cosine) "
                "reads it: give the LO a time_horizon > 0, or set run_length_max to 0"
            )

    @property
    def uses_buffer(self) -> bool:
        return self.mode == "elo"

    @property
    def num_queues(self) -> int:
        return self.num_copies // 2 if self.buffer_scope == "pair" else 1


@flax.struct.dataclass
class EnvParams:
    """Numeric knobs (pytree leaves: changing them never recompiles) and the data."""

    data: Any  # the task's device-resident dataset
    alpha: jax.Array  # () float32: weight of the LO in Eq. 8 and of L_task in Eq. 10
    p_th: jax.Array  # () float32: probability of a fresh start (buffer threshold)
    n_min: jax.Array  # () int32: shortest episode
    n_max: jax.Array  # () int32: longest episode
    outer_step: jax.Array  # () int32: the agent's outer step t (buffer only when t > 0)
    bc_scale: jax.Array  # () float32: multiplies L_bc in the reward
    bc_floor: jax.Array  # () float32: least weight of L_bc (see bc_weight)
    push_tolerance: jax.Array  # () float32: relative loss rise that marks a failure


def make_params(
    data: Any,
    *,
    alpha: float = 0.0,
    p_th: float = 0.2,
    n_min: int = 1,
    n_max: int = 200,
    outer_step: int = 1,
    bc_scale: float = 1.0,
    bc_floor: float = 0.0,
    push_tolerance: float = 0.1,
) -> EnvParams:
    """Validated :class:`EnvParams`. Errors name the bad value and the valid range."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not 0.0 <= p_th <= 1.0:
        raise ValueError(f"p_th must be in [0, 1], got {p_th}")
    if n_min < 1:
        raise ValueError(f"n_min must be >= 1, got {n_min}")
    if n_min > n_max:
        raise ValueError(f"n_min ({n_min}) must be <= n_max ({n_max})")
    if bc_scale < 0:
        raise ValueError(f"bc_scale must be >= 0, got {bc_scale}")
    if not 0.0 <= bc_floor <= 1.0:
        raise ValueError(f"bc_floor must be in [0, 1], got {bc_floor}")
    return EnvParams(
        data=data,
        alpha=jnp.float32(alpha),
        p_th=jnp.float32(p_th),
        n_min=jnp.int32(n_min),
        n_max=jnp.int32(n_max),
        outer_step=jnp.int32(outer_step),
        bc_scale=jnp.float32(bc_scale),
        bc_floor=jnp.float32(bc_floor),
        push_tolerance=jnp.float32(push_tolerance),
    )


class Snapshot(flax.struct.PyTreeNode):
    """An optimizee between two inner steps: what the buffer stores (theta, zeta)."""

    params: Any  # optimizee params pytree
    lo: lopt.SmallFcLOptState  # LO accumulators; lo.count = inner step index n
    adam: Any  # the expert's optax.adam state
    model_state: Any  # the model's non-trainable state (BatchNorm statistics; {})


@flax.struct.dataclass
class EnvState:
    """One env copy, prepared for its next action (a leading C axis in a batch)."""

    params: Any  # theta_n
    model_state: Any  # non-trainable model state after this step's forward pass
    grads: Any  # g_n, gradient of the task loss at theta_n on this step's batch
    lo: lopt.SmallFcLOptState  # accumulators including g_n; count = n
    adam: Any  # Adam state including g_n
    expert_update: Any  # dtheta_H for g_n (params-shaped)
    loss: jax.Array  # () float32: task loss L_task(theta_n) on this step's batch
    meta_task_loss: jax.Array  # () float32: reward's task term (meta_loss_split)
    start_step: jax.Array  # () int32: K, the inner step the episode started at
    episode_length: jax.Array  # () int32: N
    push_step: jax.Array  # () int32: N_push in {K+1..K+N}
    from_buffer: jax.Array  # () bool: episode restored from the replay buffer
    nominal_scale: jax.Array  # () float32: the episode's factor on the nominal term
    run_length: jax.Array  # () int32: R >= K + N, where the run's clock ends
    pushed: jax.Array  # () bool: this episode already pushed its snapshot
    loss_ema: jax.Array  # () float32: running mean of the loss (failure-aware push)
    key: jax.Array  # (2,) uint32 PRNG key

    @property
    def inner_step(self) -> jax.Array:
        return self.lo.count


@flax.struct.dataclass
class VecEnvState:
    """All copies and the replay buffer they share."""

    copies: EnvState  # leaves (C, ...)
    buffer: replay.ReplayBuffer


def param_layout(
    task: Any,
) -> tuple[jax.tree_util.PyTreeDef, tuple[tuple[int, ...], ...]]:
    """(treedef, leaf shapes) of the optimizee: rows of observations and actions follow
    ``jax.tree.leaves`` order, each tensor flattened in C order."""
    shapes = jax.eval_shape(task.init, jax.random.PRNGKey(0))
    leaves, treedef = jax.tree.flatten(shapes)
    return treedef, tuple(tuple(leaf.shape) for leaf in leaves)


def num_params(task: Any) -> int:
    """P, the number of optimizee parameters (rows of an observation)."""
    return sum(math.prod(s) for s in param_layout(task)[1])


def flatten_rows(tree: Any) -> jax.Array:
    """Params-shaped pytree -> (P,) in :func:`param_layout` order."""
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def unflatten_rows(task: Any, rows: jax.Array) -> Any:
    """(P, ...) rows -> params-shaped pytree (trailing axes dropped if of size 1)."""
    treedef, shapes = param_layout(task)
    sizes = [math.prod(s) for s in shapes]
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    return treedef.unflatten(
        [
            rows[o : o + n].reshape(s)
            for o, n, s in zip(offsets, sizes, shapes, strict=True)
        ]
    )


class Episode(NamedTuple):
    """How one episode runs (Alg. 1): where it starts and for how long."""

    start_step: jax.Array  # () int32: K
    episode_length: jax.Array  # () int32: N
    push_step: jax.Array  # () int32: N_push in {K+1..K+N}
    from_buffer: jax.Array  # () bool: restored from the replay buffer
    nominal_scale: jax.Array  # () float32: factor on the LO's nominal term
    run_length: jax.Array  # () int32: R >= K + N, where the run's clock ends


class Transition(NamedTuple):
    """What one action does to one copy (Eq. 8-10), before any reset."""

    snapshot: Snapshot  # the optimizee after the mixed update
    reward: jax.Array  # -(meta-loss)
    bc_loss: jax.Array  # L_bc of the action
    diverged: jax.Array  # non-finite loss, params or reward
    truncated: jax.Array  # the episode ran its N steps
    push: jax.Array  # the snapshot goes into the buffer
    loss_ema: jax.Array  # running mean of the loss (failure-aware push)


def _episode_of(state: EnvState) -> Episode:
    return Episode(
        state.start_step,
        state.episode_length,
        state.push_step,
        state.from_buffer,
        state.nominal_scale,
        state.run_length,
    )


def _expert(cfg: EnvConfig) -> optax.GradientTransformation:
    kinds = dict(
        weight_decay=cfg.expert_weight_decay,
        trust_ratio=cfg.expert_trust_ratio,
        cautious=cfg.expert_cautious,
    )
    if cfg.expert_schedule == "cosine":  # unit steps, times the lr in _prepare
        return demonstrator.adam_expert(1.0, b2=cfg.expert_b2, **kinds)
    return demonstrator.adam_expert(
        cfg.expert_learning_rate, cfg.expert_decay_steps, cfg.expert_b2, **kinds
    )


def lo_clock(cfg: EnvConfig, state: EnvState) -> jax.Array:
    """What the LO's step features and nominal schedule read for one prepared copy
    (``LOSpec.clock``): its count, or for a relative-time LO the count relative to
    the end of its run, R (K + N unless ``run_length_max``)."""
    return cfg.lo.clock(state.lo.count, state.run_length)


def _fresh_snapshot(cfg: EnvConfig, key: jax.Array) -> Snapshot:
    params, model_state = cfg.task.init_with_state(key)
    adam = _expert(cfg).init(params)
    return Snapshot(params, cfg.lo.init_state(params), adam, model_state)


def _sample_length(cfg: EnvConfig, key: jax.Array, p: EnvParams) -> jax.Array:
    if cfg.mode in ("naive", "curriculum"):
        # Log-uniform on (n_min, n_max] (ELO Sec. 4.1).
        lo, hi = p.n_min.astype(jnp.float32), p.n_max.astype(jnp.float32)
        n = jnp.ceil(
            jnp.exp(jax.random.uniform(key, (), minval=jnp.log(lo), maxval=jnp.log(hi)))
        )
        return jnp.clip(n.astype(jnp.int32), jnp.minimum(p.n_min + 1, p.n_max), p.n_max)
    return jax.random.randint(key, (), p.n_min, p.n_max + 1)


def _begin_episode(
    cfg: EnvConfig,
    key: jax.Array,
    buf: replay.ReplayBuffer,
    queue: jax.Array,
    p: EnvParams,
) -> tuple[Snapshot, Episode]:
    """Draws the start state and episode length (Alg. 1): one copy."""
    k_u, k_pick, k_init, k_len, k_push = jax.random.split(key, 5)
    snapshot = _fresh_snapshot(cfg, k_init)
    from_buffer = jnp.bool_(False)
    if cfg.uses_buffer:
        stored, available = replay.sample(buf, k_pick, queue)
        from_buffer = (
            (jax.random.uniform(k_u) > p.p_th) & available & (p.outer_step > 0)
        )
        snapshot = jax.tree.map(
            lambda s, f: jnp.where(from_buffer, s, f), stored, snapshot
        )
    start = snapshot.lo.count
    length = _sample_length(cfg, k_len, p)
    # Its own fold of the key: the other draws stay those of a run without the spread.
    u = jax.random.uniform(jax.random.fold_in(key, 1), (), minval=-1.0, maxval=1.0)
    end = start + length
    run_length = end
    if cfg.run_length_max:  # its own fold of the key, as the spread's
        lo = jnp.log(end.astype(jnp.float32))
        hi = jnp.log(jnp.maximum(end, cfg.run_length_max).astype(jnp.float32))
        drawn = jnp.exp(lo + jax.random.uniform(jax.random.fold_in(key, 2)) * (hi - lo))
        run_length = jnp.maximum(jnp.round(drawn).astype(jnp.int32), end)
    episode = Episode(
        start_step=start,
        episode_length=length,
        push_step=start + jax.random.randint(k_push, (), 1, length + 1),
        from_buffer=from_buffer,
        nominal_scale=jnp.float32(cfg.nominal_lr_spread) ** u,
        run_length=run_length,
    )
    return snapshot, episode


def _prepare(
    cfg: EnvConfig,
    snapshot: Snapshot,
    key: jax.Array,
    p: EnvParams,
    episode: Episode,
    pushed: jax.Array,
    loss_ema: jax.Array,
    next_key: jax.Array,
) -> EnvState:
    """Computes the gradient at the snapshot once and feeds Adam and the LO with it.

    The training-mode forward pass also updates the model state (BatchNorm running
    statistics), which no optimizer touches."""
    batch = cfg.task.sample_batch(p.data, key)
    (loss, model_state), grads = jax.value_and_grad(cfg.task.train_loss, has_aux=True)(
        snapshot.params, snapshot.model_state, batch
    )
    meta_task_loss = loss
    if cfg.meta_loss_split == "valid":
        held_out = cfg.task.sample_batch(p.data, jax.random.fold_in(key, 1), "valid")
        meta_task_loss = cfg.task.train_loss(
            snapshot.params, snapshot.model_state, held_out
        )[0]
    if cfg.meta_loss_log:
        meta_task_loss = jnp.log(jnp.maximum(meta_task_loss, LOG_LOSS_FLOOR))
    lo_state = lopt.accumulate(grads, snapshot.lo)
    expert_update, adam = _expert(cfg).update(grads, snapshot.adam, snapshot.params)
    if cfg.expert_schedule == "cosine":
        lr = schedules.relative_warmup_cosine(
            cfg.expert_learning_rate, snapshot.lo.count, episode.run_length
        )
        expert_update = jax.tree.map(lambda u: (lr * u).astype(u.dtype), expert_update)
    return EnvState(
        params=snapshot.params,
        model_state=model_state,
        grads=grads,
        lo=lo_state,
        adam=adam,
        expert_update=expert_update,
        loss=loss,
        meta_task_loss=meta_task_loss,
        pushed=pushed,
        loss_ema=loss_ema,
        key=next_key,
        **episode._asdict(),
    )


def copy_keys(cfg: EnvConfig, seed: int) -> jax.Array:
    """(C, 2) keys: copy i gets PRNGKey(seed + i), or PRNGKey(seed + i // 2) if paired,
    so that copy i of a vector env replays a single env seeded like it."""
    offsets = jnp.arange(cfg.num_copies) // (2 if cfg.paired else 1)
    return jax.vmap(jax.random.PRNGKey)(seed + offsets)


def _queues(cfg: EnvConfig) -> jax.Array:
    if cfg.buffer_scope == "pair":
        return jnp.arange(cfg.num_copies, dtype=jnp.int32) // 2
    return jnp.zeros((cfg.num_copies,), jnp.int32)


def observe(cfg: EnvConfig, state: EnvState, p: EnvParams) -> dict:
    """The observation of one prepared copy."""
    feats = lopt.features(
        state.grads,
        state.params,
        state.lo,
        raw_adam_ratio=cfg.lo.raw_adam_ratio,
        clock=lo_clock(cfg, state),
    )
    return {
        "features": jnp.concatenate([f.reshape(-1, lopt.NUM_FEATURES) for f in feats]),
        "inner_step": state.lo.count.astype(jnp.float32),
        "loss": state.loss.astype(jnp.float32),
        "alpha": p.alpha.astype(jnp.float32),
    }


def lo_terms(
    cfg: EnvConfig, state: EnvState
) -> tuple[jax.Array | float, jax.Array | float]:
    """(scale, nominal) rows of the LO's step for one prepared copy
    (:meth:`LOSpec.row_terms`), the nominal term times the episode's factor."""
    scale, nominal = cfg.lo.row_terms(state.params, state.lo, lo_clock(cfg, state))
    if cfg.nominal_lr_spread > 1.0:  # without a spread XLA compiles the step as before
        nominal = nominal * state.nominal_scale
    return scale, nominal


def expert_action(cfg: EnvConfig, state: EnvState) -> jax.Array:
    """(P, 2): the action of one prepared copy that moves it as Adam does (the
    inverse of the LO spec's step, :meth:`LOSpec.action`)."""
    return cfg.lo.action(flatten_rows(state.expert_update), *lo_terms(cfg, state))


def _info(cfg: EnvConfig, state: EnvState) -> dict:
    update = flatten_rows(state.expert_update)
    return {
        "expert_update": update,
        "expert_action": expert_action(cfg, state),
        "inner_step": state.lo.count,
        "start_step": state.start_step,
        "episode_length": state.episode_length,
        "run_length": state.run_length,
        "from_buffer": state.from_buffer,
    }


def _start_copy(
    cfg: EnvConfig,
    key: jax.Array,
    buf: replay.ReplayBuffer,
    queue: jax.Array,
    p: EnvParams,
) -> EnvState:
    k_next, k_episode, k_batch = jax.random.split(key, 3)
    snapshot, episode = _begin_episode(cfg, k_episode, buf, queue, p)
    return _prepare(
        cfg, snapshot, k_batch, p, episode, jnp.bool_(False), jnp.float32(0.0), k_next
    )


def _observe_all(cfg: EnvConfig, copies: EnvState, p: EnvParams) -> tuple[dict, dict]:
    obs = jax.vmap(observe, (None, 0, None))(cfg, copies, p)
    info = jax.vmap(_info, (None, 0))(cfg, copies)
    return obs, info


def reset(
    cfg: EnvConfig, keys: jax.Array, p: EnvParams
) -> tuple[VecEnvState, dict, dict]:
    """Starts every copy with an empty replay buffer.

    Args:
      cfg: static config.
      keys: (C, 2) per-copy PRNG keys (see :func:`copy_keys`); paired copies must get
        equal keys.
      p: numeric knobs and data.

    Returns:
      (state, obs, info); obs["features"] is (C, P, 39), info["expert_action"]
        (C, P, 2).
    """
    example = jax.eval_shape(
        functools.partial(_fresh_snapshot, cfg), jax.random.PRNGKey(0)
    )
    buf = replay.init_buffer(example, cfg.buffer_size, cfg.num_queues)
    copies = jax.vmap(_start_copy, (None, 0, None, 0, None))(
        cfg, keys, buf, _queues(cfg), p
    )
    obs, info = _observe_all(cfg, copies, p)
    info.update(
        task_loss=copies.loss,
        meta_task_loss=copies.meta_task_loss,
        bc_loss=jnp.zeros_like(copies.loss),
    )
    return VecEnvState(copies, buf), obs, info


# reset jitted with its config static, once per process: the agents' runs share its
# compilations instead of each jitting a closure of its own.
jit_reset = jax.jit(reset, static_argnums=0)


def reset_copies(
    cfg: EnvConfig, state: VecEnvState, mask: jax.Array, p: EnvParams
) -> tuple[VecEnvState, dict, dict]:
    """Starts new episodes in the copies where ``mask`` (C,) is True (buffer kept)."""
    restarted = jax.vmap(_start_copy, (None, 0, None, 0, None))(
        cfg, state.copies.key, state.buffer, _queues(cfg), p
    )
    copies = _select(mask, restarted, state.copies)
    obs, info = _observe_all(cfg, copies, p)
    info.update(
        task_loss=copies.loss,
        meta_task_loss=copies.meta_task_loss,
        bc_loss=jnp.zeros_like(copies.loss),
    )
    return VecEnvState(copies, state.buffer), obs, info


def _select(mask: jax.Array, new: Any, old: Any) -> Any:
    def pick(n, o):
        return jnp.where(mask.reshape(mask.shape + (1,) * (n.ndim - 1)), n, o)

    return jax.tree.map(pick, new, old)


def _bc_loss(
    cfg: EnvConfig, lo_update: jax.Array, expert_update: jax.Array
) -> jax.Array:
    diff = lo_update - expert_update
    if cfg.bc_loss == "l2":
        return jnp.sum(diff**2)
    if cfg.bc_loss == "l2_relative":
        return jnp.sum(diff**2) / (jnp.sum(expert_update**2) + 1e-12)
    norm_lo, norm_ex = jnp.linalg.norm(lo_update), jnp.linalg.norm(expert_update)
    cosine = jnp.dot(lo_update, expert_update) / (norm_lo * norm_ex + 1e-12)
    return 0.7 * (1.0 - cosine) + 0.3 * jnp.abs(norm_lo / (norm_ex + 1e-12) - 1.0)


def bc_weight(p: EnvParams) -> jax.Array:
    """Weight of L_bc in the reward: bc_scale * max(1 - alpha, bc_floor).

    With ``bc_floor`` 0 this is Eq. 10's (1 - alpha). A floor keeps the LO anchored
    to Adam after alpha reaches 1, while Eq. 8's update is already the LO's alone.
    """
    return p.bc_scale * jnp.maximum(1.0 - p.alpha, p.bc_floor)


def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(
        jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)] + [True])
    )


def _apply_action(
    cfg: EnvConfig, s: EnvState, action: jax.Array, p: EnvParams
) -> Transition:
    """Eq. 8-10 for one copy: the mixed update, the reward and the push decision."""
    param_rows = flatten_rows(s.params)
    lo_update_rows = cfg.lo.update(
        action, *lo_terms(cfg, s), lo_spec.row_segments(s.params), param_rows
    )
    expert_rows = flatten_rows(s.expert_update)
    moved = param_rows + ((1.0 - p.alpha) * expert_rows + p.alpha * lo_update_rows)
    params = jax.tree.map(
        lambda new, old: new.astype(old.dtype),
        unflatten_rows(cfg.task, moved),
        s.params,
    )
    bc = _bc_loss(cfg, lo_update_rows, expert_rows)
    reward = -(bc_weight(p) * bc + p.alpha * s.meta_task_loss)
    snapshot = Snapshot(params, lopt.advance(s.lo), s.adam, s.model_state)
    diverged = (
        ~jnp.isfinite(s.loss)
        | ~_all_finite((params, s.model_state))
        | ~jnp.isfinite(reward)
    )
    ema = jnp.where(s.lo.count == s.start_step, s.loss, 0.9 * s.loss_ema + 0.1 * s.loss)
    due = snapshot.lo.count >= s.push_step
    if cfg.push_policy == "failure_aware":
        due |= s.loss > ema * (1.0 + p.push_tolerance)
    push = cfg.uses_buffer & due & ~s.pushed & ~diverged
    truncated = snapshot.lo.count - s.start_step >= s.episode_length
    return Transition(snapshot, reward, bc, diverged, truncated, push, ema)


def step(
    cfg: EnvConfig,
    state: VecEnvState,
    actions: jax.Array,
    p: EnvParams,
    *,
    final_obs: bool = False,
    copies_axis: str | None = None,
) -> tuple[VecEnvState, dict, jax.Array, jax.Array, jax.Array, dict]:
    """One inner step of every copy, with auto-reset of finished copies.

    Args:
      cfg: static config.
      state: the copies and the buffer.
      actions: (C, P, 2) LO actions (d, m) per parameter.
      p: numeric knobs and data.
      final_obs: also return, in info["final_obs"], the observation a finished copy
        reached before its reset, and in info["final_info"] the observation-tied info
        entries (``expert_update``, ``expert_action``, ``inner_step``, ``start_step``,
        ``episode_length``, ``from_buffer``) of that observation and of the episode it
        ended (costs one extra gradient, only on steps where some copy finishes).
      copies_axis: inside ``jax.shard_map``, the mesh axis the copies are split over
        (``cfg.num_copies`` then counts one device's copies): a ``shared`` buffer is
        replicated over it and gathers the pushes of all devices; a ``pair`` buffer is
        split with its pairs and needs nothing from other devices.

    Returns:
      (state, obs, reward (C,), terminated (C,), truncated (C,), info). ``terminated``
      marks a diverged copy (non-finite loss, reward or params); ``truncated`` an
      episode that ran its N steps. Both restart the copy in the same call.
    """
    c = state.copies
    moved = jax.vmap(_apply_action, (None, 0, 0, None))(cfg, c, actions, p)
    snapshots, reward, bc, diverged, truncated, push, ema = moved
    buf = state.buffer
    if cfg.uses_buffer:
        shared = cfg.buffer_scope == "shared"
        gather_axis = copies_axis if shared else None
        buf = replay.push(buf, snapshots, push, _queues(cfg), gather_axis=gather_axis)
    done = diverged | truncated
    if cfg.paired:
        # Antithetic partners end together so they keep sharing data and resets.
        done = jnp.repeat(done.reshape(-1, 2).any(axis=1), 2)
    keys = jax.vmap(lambda k: jax.random.split(k, 3))(c.key)
    k_next, k_batch, k_episode = keys[:, 0], keys[:, 1], keys[:, 2]
    episode = _episode_of(c)

    def restart(_):
        fresh, new_episode = jax.vmap(_begin_episode, (None, 0, None, 0, None))(
            cfg, k_episode, buf, _queues(cfg), p
        )
        return _select(done, fresh, snapshots), _select(done, new_episode, episode)

    start, next_episode = jax.lax.cond(
        jnp.any(done), restart, lambda _: (snapshots, episode), None
    )
    copies = jax.vmap(_prepare, (None, 0, 0, None, 0, 0, 0, 0))(
        cfg,
        start,
        k_batch,
        p,
        next_episode,
        (c.pushed | push) & ~done,
        jnp.where(done, 0.0, ema),
        k_next,
    )
    obs, info = _observe_all(cfg, copies, p)
    if final_obs:

        def reached(_):
            # The ended episode's fields (not the next one's) go with the final obs.
            before = jax.vmap(_prepare, (None, 0, 0, None, 0, 0, 0, 0))(
                cfg, snapshots, k_batch, p, episode, c.pushed | push, ema, k_next
            )
            return _observe_all(cfg, before, p)

        final = jax.lax.cond(jnp.any(done), reached, lambda _: (obs, dict(info)), None)
        info["final_obs"], info["final_info"] = final
    info.update(
        task_loss=c.loss,
        meta_task_loss=c.meta_task_loss,
        bc_loss=bc,
        diverged=diverged,
        pushed=push,
    )
    return VecEnvState(copies, buf), obs, reward, diverged, done & ~diverged, info
