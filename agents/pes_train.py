"""PES meta-training of small_fc_lopt in the ELO environment (ELO Sec. 5.1, Alg. 1).

Persistent evolution strategies (Vicol et al., 2021) over antithetic pairs of
optimizees: copy 2i runs the LO with weights phi + eps_i, copy 2i+1 with phi - eps_i,
on the same data and resets. Each outer step unrolls one truncation (50 inner steps)
of every copy inside one jitted ``lax.scan`` over the env's pure core, then
``g = mean_i sum_t xi_i,t (L+_i,t - L-_i,t) / (2 sigma^2 T)`` where xi is the pair's
perturbation accumulated since its episode began. AdamW (lr 3e-3, clipped) applies g.

Usage: ``python agents/pes_train.py`` (ELO on ELO-Digits-MLP, CPU-sized) or
``python agents/pes_train.py --mode naive --run-dir runs/naive``. Running the same
command on an existing run directory resumes it exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import time
from collections.abc import Callable
from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tyro
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from elo_gym import checkpoint, core, env, lopt, registration, runs, schedules

MODES = ("elo", "naive", "curriculum", "uniform", "bc", "buffer")
# mode -> (env reset distribution, behavior cloning on)
MODE_SETTINGS = {
    "elo": ("elo", True),
    "naive": ("naive", False),
    "curriculum": ("curriculum", False),
    "uniform": ("uniform", False),
    "bc": ("uniform", True),
    "buffer": ("elo", False),
}
METRICS = (
    "outer_step",
    "meta_loss",
    "task_loss",
    "bc_loss",
    "alpha",
    "n_max",
    "mean_inner_step",
    "max_inner_step",
    "buffer_fill",
    "frac_from_buffer",
    "episodes_ended",
    "diverged",
    "grad_norm",
    "grad_norm_bc",
    "grad_norm_task",
    "inner_steps_per_s",
)


@dataclasses.dataclass(frozen=True)
class Args:
    """PES meta-training settings (defaults: ELO on digits, CPU-sized)."""

    env: str = "ELO-Digits-MLP"
    """Gymnasium id of the ELO env to meta-train on."""
    mode: Literal["elo", "naive", "curriculum", "uniform", "bc", "buffer"] = "elo"
    """elo (buffer + BC), naive, curriculum; Fig. 7's ablations uniform, bc, buffer."""
    preset: Literal["cpu", "paper"] = "cpu"
    """paper: ELO-ImageNet32-MLP, batch 4096, T=5000, n_max=1000 (for a GPU)."""
    outer_steps: int = 400
    """T, the number of outer (meta) steps."""
    seed: int = 0
    """Seed of the whole run."""
    run_dir: str | None = None
    """Run directory; default runs/<env>__<mode>__<seed>__<time>. Reused -> resume."""
    num_pairs: int = 8
    """Antithetic pairs (2 optimizee copies each)."""
    truncation: int = 50
    """Inner steps per outer step and copy."""
    sigma: float = 0.01
    """Std of the PES perturbations."""
    learning_rate: float = 3e-3
    """AdamW learning rate of the outer optimizer."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Global-norm clip of the meta-gradient."""
    loss_cap: float | None = None
    """Cap of the per-step meta-loss (NaN -> cap); default 2 ln(num classes)."""
    n_min: int = 20
    """Shortest inner episode."""
    n_max: int = 200
    """Longest inner episode (the meta-training horizon)."""
    n_max_final: int | None = None
    """curriculum: n_max at the last outer step (default 10 x n_max)."""
    p_th: float = 0.2
    """Probability of a fresh start instead of a buffer restore."""
    buffer_size: int = 4
    """Replay buffer capacity M."""
    buffer_scope: Literal["shared", "pair"] = "shared"
    """One buffer queue (paper) or one per antithetic pair (authors' code)."""
    push_policy: Literal["uniform", "failure_aware"] = "uniform"
    """When an episode pushes its snapshot."""
    bc_loss: Literal["l2", "cosine_norm"] = "l2"
    """Behavior-cloning loss (Eq. 9) or the authors' cosine + norm variant."""
    bc_scale: float = 1.0
    """Multiplies L_bc in the meta-loss."""
    alpha_schedule: Literal["linear", "hold_linear"] = "linear"
    """alpha_t = t/(T-1) (paper) or held at 0 first (authors' code); BC modes only."""
    hold_fraction: float = 0.2
    """hold_linear: fraction of outer steps with alpha = 0."""
    keep_accumulator_on_restore: bool = False
    """Keep the PES accumulator when an episode restarts from the buffer."""
    batch_size: int | None = None
    """Optimizee batch size (default: the env's)."""
    hidden_sizes: tuple[int, ...] | None = None
    """Optimizee MLP widths (default: the env's)."""
    data_dir: str | None = None
    """Where datasets on disk live (ImageNet-32)."""
    hidden_size: int = 32
    """Width of the LO's hidden layers."""
    checkpoint_every: int = 50
    """Outer steps between checkpoints."""
    progress: bool = True
    """Show a progress bar."""

    def resolved(self) -> Args:
        """Fills preset values and defaults that depend on other fields."""
        args = self
        if args.preset == "paper":
            args = dataclasses.replace(
                args,
                env="ELO-ImageNet32-MLP",
                batch_size=4096,
                outer_steps=5000,
                n_min=100,
                n_max=1000,
                truncation=50,
            )
        if args.n_max_final is None:
            args = dataclasses.replace(args, n_max_final=10 * args.n_max)
        return args

    def validate(self) -> None:
        if self.env not in registration.ENV_IDS:
            raise ValueError(
                f"unknown env {self.env!r}; valid: {', '.join(registration.ENV_IDS)}"
            )
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; valid: {', '.join(MODES)}")
        positive = (
            "outer_steps",
            "num_pairs",
            "truncation",
            "sigma",
            "learning_rate",
            "max_grad_norm",
            "checkpoint_every",
            "hidden_size",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.loss_cap is not None and self.loss_cap <= 0:
            raise ValueError(f"loss_cap must be > 0, got {self.loss_cap}")


def env_settings(args: Args) -> env.EnvSettings:
    """The env the agent meta-trains in: paired copies, the mode's resets."""
    reset_mode, _ = MODE_SETTINGS[args.mode]
    return env.EnvSettings(
        **registration.ENV_IDS[args.env],
        hidden_sizes=args.hidden_sizes,
        batch_size=args.batch_size,
        data_dir=args.data_dir,
        mode=reset_mode,
        p_th=args.p_th,
        buffer_size=args.buffer_size,
        n_min=args.n_min,
        n_max=args.n_max,
        n_max_final=args.n_max_final,
        bc_scale=args.bc_scale,
        buffer_scope=args.buffer_scope,
        push_policy=args.push_policy,
        bc_loss=args.bc_loss,
        paired=True,
    )


def alpha_for(args: Args, outer_step: int) -> float:
    """alpha_t: the schedule in BC modes, 1 (pure LO, no BC) otherwise."""
    if not MODE_SETTINGS[args.mode][1]:
        return 1.0
    return schedules.alpha_at(
        outer_step, args.outer_steps, args.alpha_schedule, args.hold_fraction
    )


@flax.struct.dataclass
class PESState:
    """Everything meta-training needs to continue exactly (checkpointed whole)."""

    meta: lopt.MetaParams  # phi, the LO being trained
    opt_state: optax.OptState  # AdamW state of the outer optimizer
    env: core.VecEnvState  # the 2 * num_pairs optimizee copies and the replay buffer
    accumulator: jax.Array  # (num_pairs, D) float32: perturbation since episode start
    key: jax.Array  # (2,) uint32
    outer_step: jax.Array  # () int32: outer steps done


@dataclasses.dataclass(frozen=True)
class PESConfig:
    """Static (hashable) part of an outer step."""

    env: core.EnvConfig
    truncation: int
    sigma: float
    loss_cap: float
    keep_accumulator_on_restore: bool


def outer_optimizer(args: Args) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(args.max_grad_norm),
        optax.adamw(args.learning_rate, weight_decay=args.weight_decay),
    )


def init_state(args: Args, cfg: PESConfig, env_params: core.EnvParams) -> PESState:
    """Fresh LO, outer optimizer, copies and an empty buffer, from ``args.seed``."""
    key = jax.random.PRNGKey(args.seed)
    key, k_meta, k_env = jax.random.split(key, 3)
    meta = lopt.init_meta_params(k_meta, args.hidden_size)
    env_state, _, _ = jax.jit(functools.partial(core.reset, cfg.env))(
        jax.vmap(jax.random.fold_in, (None, 0))(
            k_env, jnp.arange(args.num_pairs)
        ).repeat(2, axis=0),
        env_params,
    )
    dim = ravel_pytree(meta.mlp)[0].size
    return PESState(
        meta=meta,
        opt_state=outer_optimizer(args).init(meta.mlp),
        env=env_state,
        accumulator=jnp.zeros((args.num_pairs, dim)),
        key=key,
        outer_step=jnp.int32(0),
    )


def policy_actions(mlp_flat: jax.Array, unravel, copies: core.EnvState) -> jax.Array:
    """small_fc_lopt's actions (C, P, 2) for (C, D) weights, one set per copy.

    The same function of the copies' state as ``apply_mlp`` on their observed
    (P, 39) features, by the LO's fast path (``lopt.mlp_outputs``), which never builds
    those features: the scan below does not build observations at all.
    """

    def one(weights: jax.Array, s: core.EnvState) -> jax.Array:
        outputs = lopt.mlp_outputs(
            s.grads, s.params, s.lo, unravel(weights), merged=True
        )
        return jnp.concatenate([out.reshape(2, -1) for out in outputs], axis=1).T

    return jax.vmap(one)(mlp_flat, copies)


Policy = Callable[[jax.Array, Callable, core.EnvState], jax.Array]


def unroll(
    cfg: PESConfig,
    meta: lopt.MetaParams,
    env_state: core.VecEnvState,
    accumulator: jax.Array,
    key: jax.Array,
    env_params: core.EnvParams,
    policy: Policy = policy_actions,
):
    """One truncation of every antithetic pair; returns the PES gradient and metrics.

    ``policy`` maps (C, D) flat LO weights, their unravel function and the copies to
    (C, P, 2) actions; the default is small_fc_lopt (``scripts/bench_pes.py`` swaps in
    zero actions to time everything but the LO).
    """
    theta, unravel = ravel_pytree(meta.mlp)
    eps = cfg.sigma * jax.random.normal(key, accumulator.shape)
    # Interleave: copy 2i runs theta + eps_i, copy 2i+1 runs theta - eps_i.
    weights = (theta + jnp.stack([eps, -eps], axis=1)).reshape(-1, theta.size)

    def inner(carry, _):
        state, xi, grad_sums = carry
        actions = policy(weights, unravel, state.copies)
        state, _, reward, terminated, truncated, info = core.step(
            cfg.env, state, actions, env_params
        )
        # Clip the per-step meta-loss; NaN maps to the cap, so one diverging copy cannot
        # poison the estimate.
        alpha = env_params.alpha
        parts = {
            "meta": -reward,
            "bc": (1.0 - alpha) * env_params.bc_scale * info["bc_loss"],
            "task": alpha * info["task_loss"],
        }
        parts = {
            k: jnp.minimum(
                jnp.nan_to_num(
                    v, nan=cfg.loss_cap, posinf=cfg.loss_cap, neginf=-cfg.loss_cap
                ),
                cfg.loss_cap,
            )
            for k, v in parts.items()
        }
        grad_sums = {
            k: grad_sums[k] + (parts[k][0::2] - parts[k][1::2])[:, None] * xi
            for k in grad_sums
        }
        ended = (terminated | truncated)[0::2]
        restart_xi = eps
        if cfg.keep_accumulator_on_restore:
            restart_xi = jnp.where(info["from_buffer"][0::2, None], xi, eps)
        xi = jnp.where(ended[:, None], restart_xi, xi)
        metrics = {
            "meta_loss": parts["meta"].mean(),
            "task_loss": info["task_loss"].mean(),
            "bc_loss": info["bc_loss"].mean(),
            "inner_step": info["inner_step"].astype(jnp.float32).mean(),
            "max_inner_step": info["inner_step"].max(),
            "from_buffer": info["from_buffer"].astype(jnp.float32).mean(),
            "episodes_ended": ended.sum(),
            "diverged": terminated.sum(),
        }
        return (state, xi, grad_sums), metrics

    zero = jnp.zeros_like(accumulator)
    carry = (
        env_state,
        accumulator + eps,
        {"meta": zero, "bc": zero, "task": zero},
    )
    (env_state, xi, grad_sums), metrics = jax.lax.scan(
        inner, carry, None, length=cfg.truncation
    )
    scale = 1.0 / (2.0 * cfg.sigma**2 * cfg.truncation)
    grads = {k: unravel(v.mean(axis=0) * scale) for k, v in grad_sums.items()}
    return grads, env_state, xi, metrics


def outer_step(
    cfg: PESConfig,
    optimizer: optax.GradientTransformation,
    state: PESState,
    env_params: core.EnvParams,
    policy: Policy = policy_actions,
) -> tuple[PESState, dict]:
    """One PES meta-gradient step (jit with ``cfg``, ``optimizer`` and ``policy``
    static; ``policy`` as for :func:`unroll`)."""
    key, k_eps = jax.random.split(state.key)
    grads, env_state, accumulator, m = unroll(
        cfg, state.meta, state.env, state.accumulator, k_eps, env_params, policy
    )
    updates, opt_state = optimizer.update(
        grads["meta"], state.opt_state, state.meta.mlp
    )
    meta = state.meta._replace(mlp=optax.apply_updates(state.meta.mlp, updates))
    buf = env_state.buffer
    metrics = {
        "meta_loss": m["meta_loss"].mean(),
        "task_loss": m["task_loss"].mean(),
        "bc_loss": m["bc_loss"].mean(),
        "mean_inner_step": m["inner_step"].mean(),
        "max_inner_step": m["max_inner_step"].max(),
        "buffer_fill": buf.size.sum() / (buf.capacity * buf.size.shape[0]),
        "frac_from_buffer": m["from_buffer"].mean(),
        "episodes_ended": m["episodes_ended"].sum(),
        "diverged": m["diverged"].sum(),
        "grad_norm": optax.tree.norm(grads["meta"]),
        "grad_norm_bc": optax.tree.norm(grads["bc"]),
        "grad_norm_task": optax.tree.norm(grads["task"]),
    }
    new_state = PESState(
        meta=meta,
        opt_state=opt_state,
        env=env_state,
        accumulator=accumulator,
        key=key,
        outer_step=state.outer_step + 1,
    )
    return new_state, metrics


def shard_state(state: PESState, num_pairs: int) -> PESState:
    """Spreads the particle pairs over all visible devices (JAX SPMD); the LO, the
    outer optimizer and the buffer are replicated."""
    devices = jax.devices()
    if num_pairs % len(devices):
        raise ValueError(
            f"num_pairs ({num_pairs}) must be a multiple of the number of "
            f"devices ({len(devices)}) so pairs stay on one device"
        )
    mesh = Mesh(np.asarray(devices), ("pairs",))
    split = NamedSharding(mesh, PartitionSpec("pairs"))
    whole = NamedSharding(mesh, PartitionSpec())
    return state.replace(
        meta=jax.device_put(state.meta, whole),
        opt_state=jax.device_put(state.opt_state, whole),
        env=state.env.replace(
            copies=jax.device_put(state.env.copies, split),
            buffer=jax.device_put(state.env.buffer, whole),
        ),
        accumulator=jax.device_put(state.accumulator, split),
        key=jax.device_put(state.key, whole),
        outer_step=jax.device_put(state.outer_step, whole),
    )


def main(args: Args) -> pathlib.Path:
    """Meta-trains (or resumes) and returns the run directory."""
    args = args.resolved()
    args.validate()
    settings = env_settings(args)
    env_cfg = settings.config(2 * args.num_pairs)  # validates the env settings
    data = env_cfg.task.load_data()
    env_params = settings.params(data)
    loss_cap = args.loss_cap or 2.0 * math.log(env_cfg.task.num_classes)
    cfg = PESConfig(
        env=env_cfg,
        truncation=args.truncation,
        sigma=args.sigma,
        loss_cap=loss_cap,
        keep_accumulator_on_restore=args.keep_accumulator_on_restore,
    )
    run_dir = pathlib.Path(
        args.run_dir or runs.default_run_dir(args.env, args.mode, str(args.seed))
    )
    config = {
        k: v
        for k, v in dataclasses.asdict(args).items()
        if k not in ("run_dir", "progress")
    }
    runs.prepare_run_dir(run_dir, config)
    manager = checkpoint.checkpoint_manager(run_dir)
    state = init_state(args, cfg, env_params)
    restored = checkpoint.restore_state(manager, state)
    start = 0
    if restored is not None:
        state, start = restored
    state = shard_state(state, args.num_pairs)
    log = runs.MetricsLog(run_dir / "metrics.csv", METRICS, start)
    step_fn = jax.jit(
        functools.partial(outer_step, cfg, outer_optimizer(args)), donate_argnums=0
    )

    def one_step(state: PESState, t: int) -> tuple[PESState, dict]:
        alpha = alpha_for(args, t)
        n_max = args.n_max
        if args.mode == "curriculum":
            n_max = schedules.curriculum_n_max(
                t, args.outer_steps, args.n_max, args.n_max_final
            )
        params_t = env_params.replace(
            alpha=jnp.float32(alpha), n_max=jnp.int32(n_max), outer_step=jnp.int32(t)
        )
        tic = time.perf_counter()
        state, metrics = step_fn(state, params_t)
        metrics = jax.device_get(metrics)  # one host sync per outer step
        seconds = time.perf_counter() - tic
        row = {k: float(v) for k, v in metrics.items()}
        row.update(
            outer_step=t,
            alpha=alpha,
            n_max=n_max,
            inner_steps_per_s=2 * args.num_pairs * args.truncation / seconds,
        )
        return state, row

    def postfix(row: dict) -> dict[str, str]:
        return {
            "meta_loss": f"{row['meta_loss']:.3g}",
            "alpha": f"{row['alpha']:.2f}",
            "steps_s": f"{row['inner_steps_per_s']:.0f}",
        }

    state = runs.train_loop(
        state,
        one_step,
        start=start,
        total=args.outer_steps,
        manager=manager,
        log=log,
        checkpoint_every=args.checkpoint_every,
        postfix=postfix,
        desc=f"PES {args.mode}",
        progress=args.progress,
    )
    if int(state.outer_step) >= args.outer_steps:
        checkpoint.save_lo(
            run_dir,
            state.meta,
            extra={"env": args.env, "mode": args.mode, "n_max": args.n_max},
        )
    return run_dir


if __name__ == "__main__":
    run_dir = main(tyro.cli(Args))
    print(f"run directory: {run_dir}")
