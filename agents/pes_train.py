"""PES meta-training of small_fc_lopt in the ELO environment (ELO Sec. 5.1, Alg. 1).

Persistent evolution strategies (Vicol et al., 2021) over antithetic pairs of
optimizees (:mod:`elo_gym.pes`); AdamW applies the estimate. The settings come first
(:class:`Args` and its presets; their history is in docs/levers.md), then the run
(:func:`main`); the harness is :mod:`elo_gym.runs`, :mod:`elo_gym.pes_run` and
:mod:`elo_gym.validation`.

Usage: ``python agents/pes_train.py`` (ELO on digits, CPU-sized), ``--mode naive
--run-dir runs/naive`` or ``--preset paper``. The same command on an existing run
directory resumes it exactly.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax

from elo_gym import (
    checkpoint,
    core,
    demonstrator,
    distributed,
    lopt,
    lopt_fused,
    pes,
    pes_run,
    runs,
    schedules,
    validation,
)
from elo_gym.agents import bc_train
from elo_gym.lo_spec import LOSpec
from elo_gym.settings import EnvSettings, mixture_settings

# mode -> the env's reset distribution; Fig. 7's ablations are uniform, bc, buffer.
RESETS = dict(elo="elo", naive="naive", curriculum="curriculum", uniform="uniform")
RESETS.update(bc="uniform", buffer="elo")
MODES = tuple(RESETS)
BC_MODES = ("elo", "bc")  # the modes with behavior cloning
CLONE_DEMONSTRATOR = "bc"  # --init-lo's value that clones the demonstrator first
# config.json values of older versions that mean what a value of this one does (None:
# a run written before the setting existed, which ran with that value).
LEGACY_CONFIG = {
    "expert_decay_steps": (None, 0.0),
    "expert_b2": (None, demonstrator.EXPERT_B2),
    "expert_weight_decay": (None, demonstrator.EXPERT_WEIGHT_DECAY),
    "expert_trust_ratio": (None, False),
    "expert_cautious": (None, False),
    "meta_loss_log": (None, False),
}
METRICS = (
    *("outer_step", "meta_loss", "task_loss", "bc_loss", "alpha", "n_max"),
    *("mean_inner_step", "max_inner_step", "buffer_fill", "frac_from_buffer"),
    *("episodes_ended", "diverged", "grad_norm", "grad_norm_bc", "grad_norm_task"),
    *("inner_steps_per_s", "outer_lr", *validation.COLUMNS, "val_best_step"),
    "task_index",
)


@dataclasses.dataclass(frozen=True)
class InnerArgs:
    """The ELO env: the optimizee task, its episodes, the buffer, the demonstrator."""

    task: str | None = None
    """ELO-Task: package.module:factory, a function that returns your task (README)."""
    batch_size: int | None = None
    """Optimizee batch size (None: the env's)."""
    hidden_sizes: tuple[int, ...] | None = None
    """Optimizee MLP widths (None: the env's)."""
    max_shift: int | None = None
    """MLP tasks: random image shifts of up to this many pixels (None: the env's)."""
    noise_std: float | None = None
    """MLP tasks: Gaussian pixel noise per training batch (None: none)."""
    mixture: tuple[str, ...] = ()
    """More tasks, WIDTHS[:ACTIVATION] (the env's data) or ENV_ID[:OPTION=VALUE,...]
    (its own): outer step t trains task t mod (1 + len(mixture)) on its own copies."""
    data_dir: str | None = None
    """Where datasets on disk live (ImageNet-32)."""
    n_min: int = 20
    """Shortest inner episode."""
    n_max: int = 200
    """Longest inner episode, the meta-training horizon."""
    n_max_final: int | None = None
    """curriculum: n_max at the last outer step (None: 10 x n_max)."""
    p_th: float = 0.05
    """Probability of a fresh start instead of a buffer restore."""
    buffer_size: int = 4
    """Replay buffer capacity M."""
    buffer_scope: Literal["shared", "pair"] = "shared"
    """One buffer queue, or one per antithetic pair (scales over devices and hosts)."""
    push_policy: Literal["uniform", "failure_aware"] = "uniform"
    """When an episode pushes its snapshot."""
    bc_loss: Literal["l2", "cosine_norm", "l2_relative"] = "cosine_norm"
    """Behavior-cloning loss: Eq. 9, cosine + norm, or Eq. 9 / |dH|^2."""
    bc_scale: float = 1.0
    """Multiplies L_bc in the meta-loss."""
    bc_floor: float = 0.0
    """Least weight of L_bc, max(1 - alpha, bc_floor); 0 is Eq. 10 (BC modes only)."""
    meta_loss_split: Literal["train", "valid"] = "valid"
    """Task term of the meta-loss on the training batch (Eq. 10) or a validation one."""
    meta_loss_log: bool = False
    """The task term is log L: tasks and stages of training count by relative change."""
    expert_lr: float = 1e-2
    """Learning rate of the Adam demonstrator that behavior cloning imitates."""
    expert_decay_steps: float = 0.0
    """tau > 0: the demonstrator's lr decays as 1 / sqrt(1 + n / tau) (BC modes)."""
    expert_schedule: Literal["inverse_sqrt", "cosine"] = "cosine"
    """The demonstrator's lr: inverse_sqrt, or warmup + cosine to 0 at episode end."""
    expert_b2: float = demonstrator.EXPERT_B2
    """The demonstrator Adam's second-moment decay."""
    expert_weight_decay: float = demonstrator.EXPERT_WEIGHT_DECAY
    """> 0: the demonstrator is AdamW with this decoupled weight decay (BC modes)."""
    expert_trust_ratio: bool = True
    """The demonstrator is LAMB (Adam rescaled per tensor to lr x |W|; BC modes)."""
    expert_cautious: bool = False
    """The demonstrator drops each coordinate whose step disagrees in sign with the
    gradient (Cautious Adam/LAMB; BC modes)."""
    nominal_lr_spread: float = 1.0
    """> 1: each episode scales the LO's nominal term by a factor in [1/s, s] (log-
    uniform) that the learned part must correct; the demonstrator's lr stays."""
    run_length_max: int = 0
    """> 0: each episode draws the step its run ends at (the relative-time LO's and the
    cosine demonstrator's end of training) log-uniform in [K + N, max(K + N, this)],
    so restored states meet the LO at a long run's clocks; 0: K + N."""


@dataclasses.dataclass(frozen=True)
class PESArgs:
    """PES, the outer optimizer and the schedules over outer steps."""

    outer_steps: int = 400
    """T, the number of outer steps; a finished run given a larger T extends."""
    num_pairs: int = 8
    """Antithetic pairs (2 optimizee copies each)."""
    truncation: int = 50
    """Inner steps per outer step and copy."""
    sigma: float = 0.01
    """Std of the PES perturbations."""
    estimator: Literal["pes", "tbptt"] = "pes"
    """Meta-gradient: PES (the paper), or truncated backprop through the env (2 x
    num_pairs independent copies acting with the LO itself; docs/levers.md)."""
    loss_cap: float | None = None
    """Cap of the per-step meta-loss (NaN -> cap); None: 2 ln(num classes)."""
    keep_accumulator_on_restore: bool = False
    """Keep the PES accumulator when an episode restarts from the buffer."""
    learning_rate: float = 3e-3
    """Peak AdamW learning rate of the outer optimizer."""
    lr_schedule: Literal["constant", "warmup_cosine"] = "warmup_cosine"
    """Outer lr: constant, or linear warmup then cosine decay."""
    warmup_fraction: float = 0.05
    """warmup_cosine: fraction of the outer steps spent warming up."""
    min_learning_rate: float = 1e-5
    """warmup_cosine: the lr at the start and at the end."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Global-norm clip of the meta-gradient."""
    alpha_schedule: Literal["linear", "hold_linear"] = "linear"
    """alpha_t = t / (T - 1), or held at 0 first; BC modes only."""
    hold_fraction: float = 0.2
    """hold_linear: fraction of outer steps with alpha = 0."""
    alpha_end_fraction: float = 1.0
    """alpha reaches 1 at this fraction of the outer steps."""
    init_lo: str | None = pes_run.SILENCED
    """The first LO: a run dir or lo.msgpack of this run's LO settings; bc: a clone of
    the demonstrator (agents/bc_train.py); silenced: output layer zero; none: random."""
    clone_steps: int = 500
    """Outer steps of the BC agent that ``--init-lo bc`` runs."""


@dataclasses.dataclass(frozen=True)
class Args:
    """PES meta-training settings; the defaults are the cpu preset in mode elo."""

    preset: Literal["cpu", "paper"] = "cpu"
    """The defaults of the flags not given: cpu (digits, CPU-sized) or paper
    (ELO-ImageNet32-MLP, batch 4096, T=5000, n_max=1000, for GPUs)."""
    mode: Literal["elo", "naive", "curriculum", "uniform", "bc", "buffer"] = "elo"
    """elo (buffer + BC), naive, curriculum; Fig. 7's ablations uniform, bc, buffer."""
    env: str = "ELO-Digits-MLP"
    """Gymnasium id of the ELO env to meta-train on."""
    seed: int = 0
    """Seed of the whole run."""
    # The learned part gates the nominal step, cloned from cautious LAMB at 0.014
    # before PES, whose meta-loss stays pure behavior cloning (alpha held at 0;
    # docs/levers.md, the forty-third screen).
    inner: InnerArgs = InnerArgs(expert_lr=0.014, expert_cautious=True)
    lo: LOSpec = LOSpec(
        adam_scaled_step=True,
        nominal_lr=1e-2,
        time_horizon=200.0,
        nominal_schedule="cosine",
        nominal_trust_ratio=True,
        gated_step=True,
    )
    """The learned optimizer (elo_gym.lo_spec)."""
    pes: PESArgs = PESArgs(
        init_lo=CLONE_DEMONSTRATOR, alpha_schedule="hold_linear", hold_fraction=1.0
    )
    run: pes_run.RunArgs = pes_run.RunArgs()
    """The run directory, validation, export and launch (elo_gym.pes_run)."""

    def resolved(self) -> Args:
        """The derived values, filled in once after parsing: n_max_final (None: 10 x
        n_max) and ``--init-lo none`` as None."""
        n_max_final = self.inner.n_max_final or 10 * self.inner.n_max
        init_lo = None if self.pes.init_lo == "none" else self.pes.init_lo
        return runs.replace_flat(self, n_max_final=n_max_final, init_lo=init_lo)

    def validate(self) -> None:
        """Raises ValueError naming the first bad setting (call on ``resolved()``)."""
        inner, p = self.inner, self.pes
        EnvSettings.from_id(self.env)  # an unknown id fails here, naming the valid ones
        for spec in inner.mixture:
            mixture_settings(env_settings(self), spec)
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; valid: {', '.join(MODES)}")
        runs.require_positive(p, "outer_steps", "num_pairs", "truncation", "sigma")
        runs.require_positive(p, "learning_rate", "max_grad_norm", "clone_steps")
        self.run.validate()
        if p.estimator == "tbptt" and inner.buffer_scope == "pair":
            raise ValueError(
                "--buffer-scope pair keeps one queue per antithetic pair, which "
                "--estimator tbptt does not have (use --buffer-scope shared)"
            )
        if p.loss_cap is not None and p.loss_cap <= 0:
            raise ValueError(f"loss_cap must be > 0, got {p.loss_cap}")
        if not 0.0 < p.alpha_end_fraction <= 1.0:
            raise ValueError(
                f"alpha_end_fraction must be in (0, 1], got {p.alpha_end_fraction}"
            )
        if not 0.0 <= inner.bc_floor <= 1.0:
            raise ValueError(f"bc_floor must be in [0, 1], got {inner.bc_floor}")
        for name in ("bc_floor", "expert_decay_steps", "expert_weight_decay"):
            if getattr(inner, name) and self.mode not in BC_MODES:
                flag = f"--{name.replace('_', '-')}"
                raise ValueError(
                    f"{flag} {getattr(inner, name)} needs behavior cloning; mode "
                    f"{self.mode!r} has none (use elo or bc, or {flag} 0)"
                )
        outer_learning_rate(self)  # a bad lr setting fails here


PRESETS = {
    "cpu": Args(),
    "paper": Args(
        preset="paper",
        env="ELO-ImageNet32-MLP",
        inner=InnerArgs(
            batch_size=4096,
            n_min=100,
            n_max=1000,
            expert_lr=1e-3,
            expert_schedule="inverse_sqrt",
            expert_trust_ratio=False,
            meta_loss_split="train",
            buffer_scope="pair",  # GPUs, often several: the scope that scales
        ),
        lo=LOSpec(),
        pes=PESArgs(outer_steps=5000, init_lo=None),
    ),
}


def make_args(preset: str = "cpu", mode: str = "elo", **flags: Any) -> Args:
    """The settings the command line builds: the preset in ``mode``, then ``flags``
    (named as on the command line, e.g. ``n_max=6``) overriding them.

    The modes without behavior cloning have no demonstrator to clone or anneal: their
    defaults are a random first LO (init_lo None), expert_decay_steps 0 and bc_floor
    0; their LO is the preset's.
    """
    if mode not in RESETS:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    if mode not in BC_MODES:
        flags = {"init_lo": None, "expert_decay_steps": 0.0, "bc_floor": 0.0, **flags}
    return runs.replace_flat(PRESETS[preset], mode=mode, **flags)


def parse_args(argv: Sequence[str] | None = None) -> Args:
    """:func:`make_args` from the command line: ``--preset`` and ``--mode`` pick the
    defaults (which ``--help`` shows), every other flag overrides them."""
    choices = dict(preset=tuple(PRESETS), mode=MODES)
    return runs.parse_with_defaults(Args, make_args, argv, **choices)


def env_settings(args: Args) -> EnvSettings:
    """The env the agent meta-trains in: the mode's resets, copies paired for PES."""
    inner = dataclasses.asdict(args.inner)
    del inner["mixture"]
    inner.update(expert_learning_rate=inner.pop("expert_lr"), mode=RESETS[args.mode])
    paired = args.pes.estimator == "pes"
    return EnvSettings.from_id(args.env, **inner, lo=args.lo, paired=paired)


def schedule_at(args: Args, outer_step: int) -> schedules.OuterStepValues:
    """alpha_t (1, pure LO, outside the BC modes) and n_max at outer step t."""
    p = args.pes
    return schedules.at_outer_step(
        outer_step,
        p.outer_steps,
        behavior_cloning=args.mode in BC_MODES,
        n_max=args.inner.n_max,
        n_max_final=args.inner.n_max_final if args.mode == "curriculum" else None,
        alpha_schedule=p.alpha_schedule,
        hold_fraction=p.hold_fraction,
        alpha_end_fraction=p.alpha_end_fraction,
    )


def _lr_schedule(p: PESArgs) -> tuple[Any, ...]:
    """The outer lr schedule's arguments, in the order both builders take them."""
    return (
        p.learning_rate,
        p.outer_steps,
        p.lr_schedule,
        p.warmup_fraction,
        p.min_learning_rate,
    )


def outer_learning_rate(args: Args) -> optax.Schedule:
    """The outer optimizer's learning rate over the outer steps."""
    return schedules.outer_learning_rate(*_lr_schedule(args.pes))


def outer_optimizer(args: Args) -> optax.GradientTransformation:
    """:func:`pes.outer_optimizer` of the run's ``pes`` settings."""
    p = args.pes
    return pes.outer_optimizer(*_lr_schedule(p), p.max_grad_norm, p.weight_decay)


def pes_config(
    args: Args, settings: EnvSettings | None = None
) -> tuple[pes.PESConfig, core.EnvParams]:
    """The outer-step config and loaded env params of the env (or of ``settings``)."""
    settings = settings or env_settings(args)
    env_cfg = settings.config(2 * args.pes.num_pairs)  # validates the env settings
    cfg = pes.PESConfig(
        env=env_cfg,
        truncation=args.pes.truncation,
        sigma=args.pes.sigma,
        loss_cap=args.pes.loss_cap or 2.0 * math.log(env_cfg.task.num_classes),
        keep_accumulator_on_restore=args.pes.keep_accumulator_on_restore,
        layout=lopt_fused.default_layout(),
        estimator=args.pes.estimator,
    )
    return cfg, settings.params(env_cfg.task.load_data())


def mixture_configs(args: Args) -> list[tuple[pes.PESConfig, core.EnvParams]]:
    """The config and env params of each ``--mixture`` task (its own data)."""
    base = env_settings(args)
    return [pes_config(args, mixture_settings(base, s)) for s in args.inner.mixture]


def clone_demonstrator(args: Args, run_dir: pathlib.Path) -> pathlib.Path:
    """``--init-lo bc``: the BC agent clones this run's demonstrator on its env, LO
    and mixture into RUN_DIR/init_lo (kept: a resumed run does not clone again)."""
    out = run_dir / pes_run.CLONE_DIR
    if not (out / checkpoint.LO_FILE).is_file():
        # The task's and the demonstrator's settings; the clone keeps its own p_th.
        names = ("task", "n_min", "n_max", "batch_size", "hidden_sizes", "data_dir")
        names += ("mixture", "expert_lr", "expert_decay_steps", "expert_schedule")
        names += ("expert_b2", "expert_weight_decay", "expert_trust_ratio")
        names += ("expert_cautious",)
        names += ("nominal_lr_spread", "run_length_max")
        clone_args = bc_train.Args(
            env=args.env,
            seed=args.seed,
            run_dir=str(out),
            lo=args.lo,
            outer_steps=args.pes.clone_steps,
            progress=args.run.progress,
            **{name: getattr(args.inner, name) for name in names},
        )
        distributed.run_alone(bc_train.main, clone_args)
    return out


def init_state(
    args: Args,
    cfg: pes.PESConfig,
    env_params: core.EnvParams,
    mixture: Sequence[tuple[pes.PESConfig, core.EnvParams]] = (),
) -> pes.PESState:
    """The first state (:func:`pes.init_state`) with a fresh LO from ``args.seed``,
    or the LO of ``--init-lo`` (a path: ``main`` clones for ``bc`` first)."""
    if args.pes.init_lo == CLONE_DEMONSTRATOR:
        raise ValueError("main() clones for --init-lo bc; pass the clone's run dir")
    key, k_meta, k_env = jax.random.split(jax.random.PRNGKey(args.seed), 3)
    meta = lopt.init_meta_params(k_meta, args.lo.hidden_size)
    if args.pes.init_lo is not None:
        meta = pes_run.initial_lo(args.pes.init_lo, args.lo, meta)
    optimizer = outer_optimizer(args)
    return pes.init_state(key, k_env, cfg, meta, optimizer, env_params, mixture)


def main(args: Args) -> pathlib.Path:
    """Meta-trains (or resumes) and returns the run directory."""
    args = args.resolved()
    args.validate()
    r = args.run
    main_process = r.launch()
    cfg, env_params = pes_config(args)
    mixture = mixture_configs(args)
    run_dir = r.directory(args.env, args.mode, args.seed)
    if args.pes.init_lo == CLONE_DEMONSTRATOR:
        # Process 0 clones while the others wait; they get its bits in initial_lo.
        if main_process:
            clone_demonstrator(args, run_dir)
        distributed.wait_for_all("elo_gym_init_lo_cloned")
        args = runs.replace_flat(args, init_lo=str(run_dir / pes_run.CLONE_DIR))
    # Sharded first, so that a resumed run restores each shard where it belongs.
    run = runs.open_run(
        run_dir,
        runs.args_config(args, exclude=pes_run.LAUNCH),
        pes.shard_state(cfg, init_state(args, cfg, env_params, mixture)),
        METRICS,
        main_process=main_process,
        legacy=LEGACY_CONFIG,
    )
    # The data on every device once, rather than copied from one device at each step.
    _, whole = distributed.pairs_shardings(args.pes.num_pairs)
    task_params = [env_params] + [params for _, params in mixture]
    task_params = [distributed.put(params, whole) for params in task_params]
    optimizer = outer_optimizer(args)
    # One compiled step per task (the env's, then each mixture task's).
    configs = [cfg] + [c for c, _ in mixture]
    steps = [pes.compiled_outer_step(c, optimizer, i) for i, c in enumerate(configs)]
    lr_at = outer_learning_rate(args)
    validate = r.eval_every and validation.Validation(
        cfg.env.task,
        task_params[0].data,
        args.lo,
        steps=r.eval_horizon_factor * args.inner.n_max,
        seeds=r.eval_seeds,
        seed=args.seed + 1_000,
    )

    def one_step(state: pes.PESState, t: int) -> tuple[pes.PESState, dict]:
        values = schedule_at(args, t)
        task_index = t % len(steps)
        params_t = task_params[task_index].replace(
            alpha=jnp.float32(values.alpha),
            n_max=jnp.int32(values.n_max),
            outer_step=jnp.int32(t),
        )
        tic = time.perf_counter()
        state, metrics = steps[task_index](state, params_t)
        metrics = jax.device_get(metrics)  # one host sync per outer step
        seconds = time.perf_counter() - tic
        row = dict.fromkeys(METRICS, math.nan)
        row.update({k: float(v) for k, v in metrics.items()})
        row.update(
            outer_step=t,
            alpha=values.alpha,
            n_max=values.n_max,
            inner_steps_per_s=2 * args.pes.num_pairs * args.pes.truncation / seconds,
            outer_lr=float(lr_at(t)),
            task_index=task_index,
        )
        if r.validation_due(t + 1, args.pes.outer_steps):
            # Process 0's numbers everywhere, so every process keeps the same best LO.
            row.update(distributed.broadcast_from_main(validate(state.meta)))
            state = pes_run.keep_best(state, row["val_lo_valid_loss"], t + 1)
            row["val_best_step"] = int(state.best_step)
        return state, row

    state = runs.train_loop(
        run,
        one_step,
        total=args.pes.outer_steps,
        checkpoint_every=r.checkpoint_every,
        shown=("meta_loss", "alpha", "inner_steps_per_s"),
        desc=f"PES {args.mode}",
        progress=r.progress and main_process,
    )
    if int(state.outer_step) >= args.pes.outer_steps and main_process:
        info = dict(env=args.env, mode=args.mode, n_max=args.inner.n_max)
        pes_run.export(run_dir, state, args.lo, r.export, info)
    return run_dir


if __name__ == "__main__":
    run_dir = runs.run_cli(main, parse_args, "pes_train.py")
    if not distributed.is_main_process():
        raise SystemExit(0)  # process 0 reports
    if (run_dir / checkpoint.LO_FILE).is_file():
        print(pes_run.summary(run_dir))
    else:
        print(f"run directory: {run_dir} (not finished; run again to resume)")
