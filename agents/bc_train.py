"""Online behavior cloning (DAgger-style) of small_fc_lopt onto Adam in the ELO env.

Each outer step rolls C optimizees ``chunk`` inner steps inside one jitted
``lax.scan`` over the env's pure core. At every step each copy follows the expert
(Adam) with probability beta, else the learner (the LO being trained); beta goes from 1
to 0 over the first ``beta_anneal`` of training (Ross et al., 2011). Every step, random
parameter rows of every copy are kept with their features and the expert's action, and
the LO is then regressed onto them with optax Adam over a few minibatches. With
``--mixture`` every task's copies roll each outer step and the regression uses the
rows of all of them.

Loss (per row): the squared error between the LO's update and Adam's, in units of
step_mult: ``(d exp(exp_mult m) - d*)^2`` with ``d* = -dtheta_H / step_mult``. This is
``L_bc / step_mult^2`` per row, so it is O(1) whatever step_mult is (the raw updates
are ~1e-3), and it is the quantity the env's own L_bc measures. Only the MLP is trained:
the env computes features with the default accumulator decays.

Usage: ``python agents/bc_train.py`` (ELO-Digits-MLP, CPU-sized: about a minute on 2
cores). Running the same command on an existing run directory resumes it;
``elo_gym.load_optimizer`` accepts the run directory.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp
import optax
import tyro

from elo_gym import adapters, checkpoint, core, demonstrator, lopt, runs
from elo_gym.lo_spec import LOSpec
from elo_gym.settings import EnvSettings, mixture_settings

METRICS = (
    "outer_step",
    "beta",
    "bc_loss",
    "relative_error",
    "task_loss",
    "learner_fraction",
    "mean_inner_step",
    "max_inner_step",
    "episodes_ended",
    "diverged",
    "inner_steps_per_s",
)


@dataclasses.dataclass(frozen=True)
class Args:
    """Online BC settings (defaults: digits, CPU-sized)."""

    env: str = "ELO-Digits-MLP"
    """Gymnasium id of the ELO env."""
    task: str | None = None
    """ELO-Task: package.module:factory, a function of no arguments that returns your
    task (``elo_gym.envs.from_flax``; README, "Your own model and data")."""
    mode: Literal["elo", "naive", "uniform"] = "elo"
    """Reset distribution of the env (elo: replay buffer of earlier states)."""
    outer_steps: int = 150
    """Outer steps (one rollout chunk + LO updates each)."""
    seed: int = 0
    """Seed of the whole run."""
    run_dir: str | None = None
    """Run directory; default runs/<env>__bc-<mode>__<seed>__<time>; reused: resume."""
    num_copies: int = 8
    """Optimizees rolled together."""
    chunk: int = 20
    """Inner steps per copy and outer step."""
    rows_per_step: int = 128
    """Parameter rows kept per copy and inner step for the regression."""
    num_minibatches: int = 4
    """LO updates per outer step (the chunk's rows split evenly)."""
    epochs: int = 1
    """Passes over the chunk's rows per outer step."""
    learning_rate: float = 1e-3
    """Adam learning rate on the LO's MLP."""
    max_grad_norm: float = 1.0
    """Global-norm clip of the LO gradient."""
    beta_anneal: float = 0.5
    """Fraction of the outer steps over which beta goes from 1 to 0 (then 0)."""
    mix: Literal["copy", "row"] = "copy"
    """Who acts: one draw per copy and step (copy) or per parameter row (row)."""
    n_min: int = 20
    """Shortest inner episode."""
    n_max: int = 200
    """Longest inner episode."""
    p_th: float = 0.2
    """Probability of a fresh start instead of a buffer restore (elo mode)."""
    batch_size: int | None = None
    """Optimizee batch size (default: the env's)."""
    hidden_sizes: tuple[int, ...] | None = None
    """Optimizee MLP widths (default: the env's)."""
    mixture: tuple[str, ...] = ()
    """More optimizee tasks to clone the expert on beside the env's: WIDTHS[:ACTIVATION]
    (another MLP on the env's data, e.g. 128:gelu) or ENV_ID[:OPTION=VALUE,...]
    (that env's task and data, e.g. ELO-Teacher-MLP; settings.mixture_settings):
    every outer step rolls each task's own copies and regresses the LO on the rows
    of all of them."""
    data_dir: str | None = None
    """Where datasets on disk live (ImageNet-32)."""
    expert_lr: float = 1e-3
    """Learning rate of the Adam expert that the LO clones."""
    expert_decay_steps: float = 0.0
    """tau > 0: the expert's lr at inner step n is expert_lr / sqrt(1 + n / tau), an
    annealing the clone reads off its step-count features (0: constant, the paper)."""
    expert_schedule: Literal["inverse_sqrt", "cosine"] = "inverse_sqrt"
    """The expert's lr over an episode: inverse_sqrt (expert_decay_steps) or warmup
    + cosine decay to 0 at the episode's end."""
    expert_b2: float = demonstrator.EXPERT_B2
    """The expert Adam's second-moment decay."""
    expert_weight_decay: float = demonstrator.EXPERT_WEIGHT_DECAY
    """> 0: the expert is AdamW with this decoupled weight decay."""
    expert_trust_ratio: bool = False
    """The expert is LAMB (Adam rescaled per tensor to lr x |W|)."""
    expert_cautious: bool = False
    """The expert drops each coordinate whose step disagrees in sign with the
    gradient (Cautious Adam/LAMB)."""
    nominal_lr_spread: float = 1.0
    """> 1: each episode scales the LO's nominal term by a factor in [1/s, s] (log-
    uniform), which the clone learns to correct toward the expert."""
    run_length_max: int = 0
    """> 0: each episode draws the step its run ends at (the relative-time LO's and the
    cosine demonstrator's end of training) log-uniform in [K + N, max(K + N, this)],
    so restored states meet the LO at a long run's clocks; 0: K + N."""
    lo: LOSpec = LOSpec()
    """The learned optimizer that clones the expert (elo_gym.lo_spec); lo.json
    records it."""
    checkpoint_every: int = 50
    """Outer steps between checkpoints."""
    progress: bool = True
    """Show a progress bar."""

    def validate(self) -> None:
        EnvSettings.from_id(self.env)  # an unknown id fails here, naming the valid ones
        for spec in self.mixture:
            mixture_settings(env_settings(self), spec)
        runs.require_positive(
            self,
            "outer_steps",
            "num_copies",
            "chunk",
            "rows_per_step",
            "num_minibatches",
            "epochs",
            "learning_rate",
            "max_grad_norm",
            "beta_anneal",
            "checkpoint_every",
            "expert_lr",
        )
        rows = self.chunk * self.num_copies * self.rows_per_step
        if rows % self.num_minibatches:
            raise ValueError(
                f"chunk * num_copies * rows_per_step ({rows}) must be a multiple of "
                f"num_minibatches ({self.num_minibatches})"
            )


def env_settings(args: Args) -> EnvSettings:
    """alpha = 1: the chosen action (expert's or learner's) alone moves the params."""
    return EnvSettings.from_id(
        args.env,
        task=args.task,
        hidden_sizes=args.hidden_sizes,
        batch_size=args.batch_size,
        data_dir=args.data_dir,
        mode=args.mode,
        p_th=args.p_th,
        n_min=args.n_min,
        n_max=args.n_max,
        expert_learning_rate=args.expert_lr,
        expert_decay_steps=args.expert_decay_steps,
        expert_schedule=args.expert_schedule,
        expert_b2=args.expert_b2,
        expert_weight_decay=args.expert_weight_decay,
        expert_trust_ratio=args.expert_trust_ratio,
        expert_cautious=args.expert_cautious,
        nominal_lr_spread=args.nominal_lr_spread,
        run_length_max=args.run_length_max,
        lo=args.lo,
        alpha=1.0,
    )


def beta_at(args: Args, outer_step: int) -> float:
    """The expert's share at an outer step: linear from 1 to 0, then 0."""
    return max(0.0, 1.0 - outer_step / (args.beta_anneal * args.outer_steps))


@flax.struct.dataclass
class BCState:
    """Everything online BC needs to continue exactly (checkpointed whole)."""

    meta: lopt.MetaParams  # the LO being trained (only .mlp changes)
    opt_state: optax.OptState  # Adam state of the LO's MLP
    env: core.VecEnvState  # the C optimizee copies and the replay buffer
    key: jax.Array  # (2,) uint32
    outer_step: jax.Array  # () int32: outer steps done
    # Copies and buffer of each --mixture task; empty without a mixture, so that a
    # single-task checkpoint has the same leaves as before mixtures existed.
    mixture: tuple = ()


@dataclasses.dataclass(frozen=True)
class BCConfig:
    """Static (hashable) part of an outer step."""

    env: core.EnvConfig
    chunk: int
    rows_per_step: int
    num_minibatches: int
    epochs: int
    mixture: tuple[core.EnvConfig, ...] = ()  # --mixture tasks (each its own params)


def optimizer(args: Args) -> optax.GradientTransformation:
    """Adam on the BC gradient, clipped by its global norm."""
    return _clipped_adam(args.max_grad_norm, args.learning_rate)


@functools.lru_cache(maxsize=32)
def _clipped_adam(max_grad_norm: float, lr: float) -> optax.GradientTransformation:
    # Cached: equal settings give the same object, so _compiled_step finds its
    # compilation again in a second run in this process.
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.adam(lr))


@functools.lru_cache(maxsize=32)
def _compiled_step(cfg: BCConfig, opt: optax.GradientTransformation) -> Callable:
    """:func:`outer_step` jitted, one per settings in a process."""
    return jax.jit(functools.partial(outer_step, cfg, opt), donate_argnums=0)


def init_state(
    args: Args, cfg: BCConfig, task_params: Sequence[core.EnvParams]
) -> BCState:
    """Fresh LO, optimizer and copies (of every task), from ``args.seed``;
    ``task_params``: the env params of the env's task, then of each mixture task."""
    key = jax.random.PRNGKey(args.seed)
    key, k_meta, k_env = jax.random.split(key, 3)
    meta = lopt.init_meta_params(k_meta, args.lo.hidden_size)
    env_params, *mixture_params = task_params

    def fresh(
        env_cfg: core.EnvConfig, k: jax.Array, params: core.EnvParams
    ) -> core.VecEnvState:
        keys = jax.random.split(k, args.num_copies)
        return core.jit_reset(env_cfg, keys, params)[0]

    return BCState(
        meta=meta,
        opt_state=optimizer(args).init(meta.mlp),
        env=fresh(cfg.env, k_env, env_params),
        key=key,
        outer_step=jnp.int32(0),
        mixture=tuple(
            fresh(c, jax.random.fold_in(k_env, 1 + i), params)
            for i, (c, params) in enumerate(
                zip(cfg.mixture, mixture_params, strict=True)
            )
        ),
    )


def rollout(
    cfg: BCConfig,
    env_cfg: core.EnvConfig,
    mlp: dict,
    env_state: core.VecEnvState,
    beta: jax.Array,
    row_mix: jax.Array,
    key: jax.Array,
    env_params: core.EnvParams,
) -> tuple[core.VecEnvState, dict, dict]:
    """Rolls every copy of the task ``env_cfg`` (the env's or a mixture task)
    ``cfg.chunk`` steps, the expert acting with probability beta (one draw per copy
    and step, or per row if ``row_mix``, a () bool).

    Returns:
      (env_state, rows, metrics): rows ``obs`` (N, 39) and ``acts`` (N, 2) (the
      expert's actions), N = chunk * C * rows_per_step; per-step metrics (chunk, ...).
    """
    c = env_cfg.num_copies
    num_params = core.num_params(env_cfg.task)

    def body(carry, key):
        state, feats, expert = carry
        k_mix, k_rows = jax.random.split(key)
        # row_mix is traced, not static, so both mixes share one compiled program.
        u = jax.random.uniform(k_mix, (c, num_params))
        use_expert = jnp.where(row_mix, u, u[:, :1]) < beta
        learner = lopt.apply_mlp(mlp, feats)
        actions = jnp.where(use_expert[..., None], expert, learner)
        idx = jax.random.randint(k_rows, (c, cfg.rows_per_step), 0, num_params)
        rows = {
            "obs": jnp.take_along_axis(feats, idx[..., None], axis=1),
            "acts": jnp.take_along_axis(expert, idx[..., None], axis=1),
        }
        inner = state.copies.lo.count
        state, obs, _, term, trunc, info = core.step(
            env_cfg, state, actions, env_params
        )
        metrics = {
            "task_loss": info["task_loss"].mean(),
            "learner_fraction": (~use_expert).mean(),
            "inner_step": inner.astype(jnp.float32).mean(),
            "max_inner_step": inner.max(),
            "episodes_ended": (term | trunc).sum(),
            "diverged": term.sum(),
        }
        return (state, obs["features"], info["expert_action"]), (rows, metrics)

    feats, expert = adapters.current_rows(env_cfg, env_state, env_params)
    (env_state, _, _), (rows, metrics) = jax.lax.scan(
        body, (env_state, feats, expert), jax.random.split(key, cfg.chunk)
    )
    rows = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[3:]), rows)
    return env_state, rows, metrics


def rollout_tasks(
    cfg: BCConfig,
    mlp: dict,
    env_states: tuple[core.VecEnvState, ...],
    beta: jax.Array,
    row_mix: jax.Array,
    key: jax.Array,
    task_params: tuple[core.EnvParams, ...],
) -> tuple[list[core.VecEnvState], dict, dict]:
    """:func:`rollout` of the env's task and of each mixture task (``env_states`` in
    that order), with the rows of all of them concatenated in that order.

    Returns:
      (env_states, rows, metrics): the metrics are the env's task's, except that
      episodes ended and diverged are counted over every task.
    """
    tasks = (cfg.env, *cfg.mixture)
    # The env's task keeps ``key``, so a run without a mixture is what it was before.
    keys = [key] + [jax.random.fold_in(key, 1 + i) for i in range(len(cfg.mixture))]
    rolled = [
        rollout(cfg, c, mlp, s, beta, row_mix, k, p)
        for c, s, k, p in zip(tasks, env_states, keys, task_params, strict=True)
    ]
    # One regression on the rows of every task: the clone fits Adam on all shapes.
    rows = jax.tree.map(lambda *x: jnp.concatenate(x), *[r[1] for r in rolled])
    metrics = dict(rolled[0][2])
    for name in ("episodes_ended", "diverged"):  # per step, summed over tasks
        metrics[name] = sum(r[2][name] for r in rolled)
    return [r[0] for r in rolled], rows, metrics


def bc_loss(
    mlp: dict, obs: jax.Array, acts: jax.Array, exp_mult: float
) -> tuple[jax.Array, jax.Array]:
    """Mean squared update error in units of step_mult, and its relative size.

    Args:
      mlp: the LO's MLP params.
      obs: (N, 39) feature rows.
      acts: (N, 2) expert actions (d*, m*).
      exp_mult: the LO's magnitude multiplier.

    Returns:
      (loss, relative error = sum sq. error / sum sq. expert step). Rows with
      non-finite inputs (a diverged copy) are left out.
    """
    pred = lopt.step_from_action(lopt.apply_mlp(mlp, obs), 1.0, exp_mult)
    target = lopt.step_from_action(acts, 1.0, exp_mult)
    ok = jnp.isfinite(target) & jnp.all(jnp.isfinite(obs), axis=-1)
    err = jnp.where(ok, (pred - jnp.where(ok, target, 0.0)) ** 2, 0.0)
    count = jnp.maximum(ok.sum(), 1)
    relative = err.sum() / jnp.maximum(jnp.where(ok, target**2, 0.0).sum(), 1e-12)
    return err.sum() / count, relative


def outer_step(
    cfg: BCConfig,
    opt: optax.GradientTransformation,
    state: BCState,
    beta: jax.Array,
    row_mix: jax.Array,
    task_params: tuple[core.EnvParams, ...],
) -> tuple[BCState, dict]:
    """One rollout chunk and the LO updates on its rows (jit, cfg and opt static);
    ``task_params``: the env params of the env's task, then of each mixture task."""
    key, k_roll, k_perm = jax.random.split(state.key, 3)
    env_states, rows, m = rollout_tasks(
        cfg,
        state.meta.mlp,
        (state.env, *state.mixture),
        beta,
        row_mix,
        k_roll,
        task_params,
    )
    exp_mult = cfg.env.lo.exp_mult
    _, relative = bc_loss(state.meta.mlp, rows["obs"], rows["acts"], exp_mult)
    n = rows["obs"].shape[0]
    perms = jax.vmap(lambda k: jax.random.permutation(k, n))(
        jax.random.split(k_perm, cfg.epochs)
    )
    batches = jax.tree.map(
        lambda x: x[perms.reshape(-1)].reshape(
            (-1, n // cfg.num_minibatches) + x.shape[1:]
        ),
        rows,
    )

    def update(carry, batch):
        mlp, opt_state = carry
        (loss, _), grads = jax.value_and_grad(bc_loss, has_aux=True)(
            mlp, batch["obs"], batch["acts"], exp_mult
        )
        updates, opt_state = opt.update(grads, opt_state, mlp)
        return (optax.apply_updates(mlp, updates), opt_state), loss

    (mlp, opt_state), losses = jax.lax.scan(
        update, (state.meta.mlp, state.opt_state), batches
    )
    metrics = {
        "bc_loss": losses.mean(),
        "relative_error": relative,
        "task_loss": m["task_loss"].mean(),
        "learner_fraction": m["learner_fraction"].mean(),
        "mean_inner_step": m["inner_step"].mean(),
        "max_inner_step": m["max_inner_step"].max(),
        "episodes_ended": m["episodes_ended"].sum(),
        "diverged": m["diverged"].sum(),
    }
    new_state = BCState(
        meta=state.meta._replace(mlp=mlp),
        opt_state=opt_state,
        env=env_states[0],
        key=key,
        outer_step=state.outer_step + 1,
        mixture=tuple(env_states[1:]),
    )
    return new_state, metrics


def bc_config(args: Args, settings: EnvSettings) -> BCConfig:
    """The static config of an outer step: the env's task and each mixture task."""
    return BCConfig(
        env=settings.config(args.num_copies),
        chunk=args.chunk,
        rows_per_step=args.rows_per_step,
        num_minibatches=args.num_minibatches,
        epochs=args.epochs,
        mixture=tuple(
            mixture_settings(settings, spec).config(args.num_copies)
            for spec in args.mixture
        ),
    )


def load_task_params(
    args: Args, settings: EnvSettings, cfg: BCConfig
) -> tuple[core.EnvParams, ...]:
    """The env params of the env's task, then of each mixture task, each with its
    own data loaded (a mixture entry may name another env's)."""
    mixture = [mixture_settings(settings, spec) for spec in args.mixture]
    return tuple(
        s.params(c.task.load_data())
        for s, c in zip([settings, *mixture], [cfg.env, *cfg.mixture], strict=True)
    )


def main(args: Args) -> pathlib.Path:
    """Trains (or resumes) and returns the run directory."""
    args.validate()
    settings = env_settings(args)
    cfg = bc_config(args, settings)
    settings.params(None)  # bad knobs fail before the data load and the run dir
    task_params = load_task_params(args, settings, cfg)
    run_dir = pathlib.Path(
        args.run_dir
        or runs.default_run_dir(args.env, f"bc-{args.mode}", str(args.seed))
    )
    run = runs.open_run(
        run_dir,
        dict(runs.args_config(args), agent="bc"),
        init_state(args, cfg, task_params),
        METRICS,
    )
    step_fn = _compiled_step(cfg, optimizer(args))

    def one_step(state: BCState, t: int) -> tuple[BCState, dict]:
        beta = beta_at(args, t)
        params_t = tuple(p.replace(outer_step=jnp.int32(t)) for p in task_params)
        tic = time.perf_counter()
        state, metrics = step_fn(
            state, jnp.float32(beta), jnp.bool_(args.mix == "row"), params_t
        )
        metrics = jax.device_get(metrics)  # one host sync per outer step
        seconds = time.perf_counter() - tic
        row = {k: float(v) for k, v in metrics.items()}
        row.update(
            outer_step=t,
            beta=beta,
            inner_steps_per_s=args.num_copies * args.chunk / seconds,
        )
        return state, row

    state = runs.train_loop(
        run,
        one_step,
        total=args.outer_steps,
        checkpoint_every=args.checkpoint_every,
        shown=("bc_loss", "beta", "task_loss"),
        desc="BC",
        progress=args.progress,
    )
    if int(state.outer_step) >= args.outer_steps:
        checkpoint.save_lo(
            run_dir,
            state.meta,
            args.lo,
            extra={"env": args.env, "agent": "bc", "mode": args.mode},
        )
    return run_dir


if __name__ == "__main__":
    parse = functools.partial(tyro.cli, Args, config=runs.FLAT_FLAGS)
    run_dir = runs.run_cli(main, parse, "bc_train.py")
    print(f"run directory: {run_dir}")
