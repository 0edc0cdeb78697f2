"""PES meta-training of small_fc_lopt in the ELO environment (ELO Sec. 5.1, Alg. 1).

Persistent evolution strategies (Vicol et al., 2021) over antithetic pairs of
optimizees, estimated by :mod:`elo_gym.pes` (one truncation of every copy per outer
step, each device on its own pairs); AdamW (lr 3e-3, clipped) applies the estimate.
This module holds the settings, the run (checkpoints, validation, export) and the
multi-process launch.

Usage: ``python agents/pes_train.py`` (ELO on ELO-Digits-MLP, CPU-sized) or
``python agents/pes_train.py --mode naive --run-dir runs/naive``. Running the same
command on an existing run directory resumes it exactly.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import multiprocessing
import pathlib
import time
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from elo_gym import (
    checkpoint,
    core,
    distributed,
    envs,
    inner_loop,
    lopt,
    lopt_fused,
    runs,
    schedules,
)
from elo_gym.agents import bc_train
from elo_gym.lo_spec import LOSpec
from elo_gym.pes import PESConfig, PESState, mixture_outer_step, outer_step, shard_state
from elo_gym.settings import EnvSettings, mixture_shape

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
# What the periodic validation run reports of the LO, of the LO with its MLP silenced
# (its nominal term alone) and of Adam (lr 1e-3), at 10x the horizon: the task's
# validation loss, the mean of the last minibatch losses, and the update and parameter
# norms at the end over those at the start.
VALIDATION_METRICS = (
    "valid_loss",
    "train_loss",
    "update_norm_ratio",
    "param_norm_ratio",
)
# Who the periodic validation runs: the LO, its silenced self and Adam.
VALIDATED = ("lo", "silenced", "adam")
# The losses whose std over validation seeds is logged (``val_<who>_<metric>_std``), so
# that "the LO beats its silenced self by more than the spread" reads off one row.
VALIDATION_SPREAD = ("valid_loss", "train_loss")
# The paper's preset and the CPU default; a flag given explicitly wins over both.
PRESETS = {
    # The demonstrator (Adam at lr 0.02 decayed with tau 100), its clone and a BC
    # weight that never falls below 1 (BC modes only); the step scaled like Adam's and
    # that same Adam as the LO's nominal term (every mode): the best score on the
    # validation tasks among the settings screened (docs/levers.md, "Sixth screen" to
    # "Tenth screen").
    "cpu": dict(
        env="ELO-Digits-MLP",
        outer_steps=400,
        n_min=20,
        n_max=200,
        truncation=50,
        expert_lr=2e-2,
        expert_decay_steps=100.0,
        adam_scaled_step=True,
        nominal_lr=2e-2,
        nominal_decay_steps=100.0,
        init_lo="bc",
        bc_floor=1.0,
        buffer_scope="shared",
    ),
    "paper": dict(
        env="ELO-ImageNet32-MLP",
        batch_size=4096,
        outer_steps=5000,
        n_min=100,
        n_max=1000,
        truncation=50,
        expert_lr=1e-3,
        # A GPU run spans devices or hosts: the scope whose inner steps never
        # communicate.
        buffer_scope="pair",
    ),
}
# --init-lo's value that clones the demonstrator before meta-training.
CLONE_DEMONSTRATOR = "bc"
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
    "outer_lr",
    *(f"val_{who}_{what}" for who in VALIDATED for what in VALIDATION_METRICS),
    *(
        f"val_{who}_{what}_std"
        for who in ("lo", "silenced")
        for what in VALIDATION_SPREAD
    ),
    "val_best_step",
    "task_index",
)


@dataclasses.dataclass(frozen=True)
class Args:
    """PES meta-training settings (defaults: ELO on digits, CPU-sized).

    Fields left None take the preset's value (``PRESETS``); a flag given explicitly
    always wins, and ``config.json`` records what ran.
    """

    env: str | None = None
    """Gymnasium id of the ELO env to meta-train on (cpu: ELO-Digits-MLP)."""
    task: str | None = None
    """ELO-Task: package.module:factory, a function of no arguments that returns your
    task (``elo_gym.envs.from_flax``; README, "Your own model and data")."""
    mode: Literal["elo", "naive", "curriculum", "uniform", "bc", "buffer"] = "elo"
    """elo (buffer + BC), naive, curriculum; Fig. 7's ablations uniform, bc, buffer."""
    preset: Literal["cpu", "paper"] = "cpu"
    """paper: ELO-ImageNet32-MLP, batch 4096, T=5000, n_max=1000, a buffer queue per
    pair (for GPUs)."""
    outer_steps: int | None = None
    """T, the number of outer (meta) steps (cpu: 400, paper: 5000). Running a
    finished run again with a larger T extends it; alpha and the outer lr then
    follow the schedules of the new T from the step where it stopped."""
    seed: int = 0
    """Seed of the whole run."""
    run_dir: str | None = None
    """Run directory; default runs/<env>__<mode>__<seed>__<time>. Reused -> resume."""
    num_pairs: int = 8
    """Antithetic pairs (2 optimizee copies each)."""
    truncation: int | None = None
    """Inner steps per outer step and copy (50)."""
    sigma: float = 0.01
    """Std of the PES perturbations."""
    learning_rate: float = 3e-3
    """Peak AdamW learning rate of the outer optimizer."""
    lr_schedule: Literal["constant", "warmup_cosine"] = "warmup_cosine"
    """Outer lr: constant (the paper) or warmup then cosine decay (the authors' code;
    a last iterate as good as the best, docs/levers.md)."""
    warmup_fraction: float = 0.05
    """warmup_cosine: fraction of the outer steps spent warming up."""
    min_learning_rate: float = 1e-5
    """warmup_cosine: the lr at the start and at the end."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Global-norm clip of the meta-gradient."""
    loss_cap: float | None = None
    """Cap of the per-step meta-loss (NaN -> cap); default 2 ln(num classes)."""
    n_min: int | None = None
    """Shortest inner episode (cpu: 20, paper: 100)."""
    n_max: int | None = None
    """Longest inner episode, the meta-training horizon (cpu: 200, paper: 1000)."""
    n_max_final: int | None = None
    """curriculum: n_max at the last outer step (default 10 x n_max)."""
    p_th: float = 0.05
    """Probability of a fresh start instead of a buffer restore (the paper: 0.2;
    0.05 had the lowest validation loss in the p_th sweep, docs/results.md)."""
    buffer_size: int = 4
    """Replay buffer capacity M."""
    buffer_scope: Literal["shared", "pair"] | None = None
    """One buffer queue (the paper; cpu preset) or one per antithetic pair (the
    authors' code; paper preset): ``pair`` splits with the pairs and scales over
    devices and hosts, ``shared`` communicates on every inner step
    (docs/distributed.md)."""
    push_policy: Literal["uniform", "failure_aware"] = "uniform"
    """When an episode pushes its snapshot."""
    bc_loss: Literal["l2", "cosine_norm", "l2_relative"] = "cosine_norm"
    """Behavior-cloning loss: Eq. 9 (the paper), the authors' cosine + norm (whose
    weight does not shrink with the optimizee's size), or Eq. 9 / |dH|^2."""
    bc_scale: float = 1.0
    """Multiplies L_bc in the meta-loss."""
    bc_floor: float | None = None
    """Least weight of L_bc in the meta-loss, max(1 - alpha, bc_floor): 0 is Eq. 10
    (paper preset); above 0 the LO stays anchored to Adam after alpha reaches 1 (BC
    modes only; cpu preset: 1.0, docs/levers.md)."""
    meta_loss_split: Literal["train", "valid"] = "train"
    """Task term of the meta-loss on the step's training batch (Eq. 10) or on a
    held-out validation batch at the same params."""
    expert_lr: float | None = None
    """Learning rate of the Adam demonstrator that behavior cloning imitates (cpu:
    2e-2, docs/levers.md; paper: 1e-3)."""
    expert_decay_steps: float | None = None
    """tau > 0: the demonstrator's lr at inner step n is expert_lr / sqrt(1 + n / tau),
    an annealing the LO can learn from its step-count features (cpu, BC modes: 100;
    0: constant, the paper)."""
    raw_adam_ratio: bool = False
    """Give the LO Adam's ratio m / sqrt(r) (features 6-8) unnormalized, so that Adam's
    shrinking steps are in its input; off: the reference small_fc_lopt."""
    adam_scaled_step: bool | None = None
    """Multiply each tensor's LO step by the root mean square of Adam's ratio
    m / sqrt(r) over the tensor (``elo_gym.lopt.adam_step_scale``), so that the LO's
    steps shrink where Adam's do (cpu preset: True); False: the reference
    small_fc_lopt."""
    nominal_lr: float | None = None
    """> 0: the LO's update is Adam's step at this lr plus the LO's own step (a nominal
    term, as learned_optimization's ``adafac_nominal``; ``elo_gym.lopt``), so the MLP
    learns a correction to a schedule that holds at any horizon; 0: the reference
    small_fc_lopt (cpu preset, every mode: 2e-2, the demonstrator's)."""
    nominal_decay_steps: float | None = None
    """tau > 0: the nominal term's lr at inner step n is nominal_lr / sqrt(1 + n / tau)
    (cpu preset: 100, the demonstrator's; 0: constant)."""
    time_horizon: float = 0.0
    """> 0: the LO reads relative time, its step features and nominal schedule see
    the count scaled to a run of this many steps (``LOSpec.clock``; the env's run
    ends with the episode, the optax face takes total_steps); 0: absolute time."""
    nominal_schedule: Literal["inverse_sqrt", "cosine"] = "inverse_sqrt"
    """The nominal term's lr: inverse_sqrt (nominal_decay_steps) or, for a
    relative-time LO, warmup + cosine decay to 0 at the end of the run."""
    expert_schedule: Literal["inverse_sqrt", "cosine"] = "inverse_sqrt"
    """The demonstrator's lr over an episode: inverse_sqrt (expert_decay_steps) or
    warmup + cosine decay to 0 at the episode's end (set expert_decay_steps 0)."""
    init_lo: str | None = None
    """Start from this LO instead of a random init: a run dir or lo.msgpack; ``bc``:
    clone the demonstrator first with agents/bc_train.py (this run's env, expert_lr
    and features, in RUN_DIR/init_lo; cpu preset, BC modes: picked on the
    validation tasks, docs/levers.md); ``none``: a random LO. Its LO settings (hidden
    size, raw_adam_ratio, adam_scaled_step, the nominal term) must be this run's."""
    clone_steps: int = 500
    """Outer steps of the BC agent that ``--init-lo bc`` runs (500: a lower digits
    validation loss at 10x than 150, and the validation family's lowest,
    docs/levers.md)."""
    alpha_schedule: Literal["linear", "hold_linear"] = "linear"
    """alpha_t = t/(T-1) (paper) or held at 0 first (authors' code); BC modes only."""
    hold_fraction: float = 0.2
    """hold_linear: fraction of outer steps with alpha = 0."""
    alpha_end_fraction: float = 1.0
    """alpha reaches 1 at this fraction of the outer steps (1: the paper)."""
    keep_accumulator_on_restore: bool = False
    """Keep the PES accumulator when an episode restarts from the buffer."""
    batch_size: int | None = None
    """Optimizee batch size (default: the env's)."""
    hidden_sizes: tuple[int, ...] | None = None
    """Optimizee MLP widths (default: the env's)."""
    max_shift: int | None = None
    """MLP tasks: random image shifts of up to this many pixels (default: the env's)."""
    noise_std: float | None = None
    """MLP tasks: Gaussian pixel noise per training batch, so that the meta-training
    task cannot be memorized (default: none)."""
    mixture: tuple[str, ...] = ()
    """More optimizee MLPs to meta-train on beside the env's, each WIDTHS[:ACTIVATION]
    (e.g. ``--mixture 128:gelu 32-32-32-32``): outer step t trains on task t mod
    (1 + len(mixture)), each task with its own copies, buffer and PES accumulators, so
    that the LO meets several shapes (``--init-lo bc`` clones Adam on the same tasks).
    Validation and export stay on the env's task."""
    data_dir: str | None = None
    """Where datasets on disk live (ImageNet-32)."""
    hidden_size: int = 32
    """Width of the LO's hidden layers."""
    eval_every: int = 50
    """Outer steps between validation runs of the current LO at 10x the horizon
    (0: never)."""
    eval_seeds: int = 2
    """Fresh optimizees per validation run."""
    eval_horizon_factor: int = 10
    """Validation runs train for this many times n_max inner steps."""
    export: Literal["last", "best"] = "best"
    """lo.msgpack: the last LO, or the one with the lowest validation loss at 10x the
    horizon among the periodic validation runs."""
    checkpoint_every: int = 50
    """Outer steps between checkpoints."""
    progress: bool = True
    """Show a progress bar."""
    distributed: bool = False
    """Join a multi-process run (jax.distributed) even with the three settings below
    unset: JAX detects them under SLURM, Open MPI, Cloud TPU or Kubernetes."""
    coordinator_address: str | None = None
    """Multi-process run: host:port of process 0, the same for every process."""
    num_processes: int | None = None
    """Multi-process run: how many processes (the pairs are split over all devices)."""
    process_id: int | None = None
    """Multi-process run: this process's rank, 0 .. num_processes - 1 (0 writes the
    files)."""

    def resolved(self) -> Args:
        """Fills the preset's values into the fields left None, then defaults that
        depend on other fields."""
        preset = PRESETS[self.preset]
        filled = {k: v for k, v in preset.items() if getattr(self, k) is None}
        args = dataclasses.replace(self, **filled)
        if args.n_max_final is None:
            args = dataclasses.replace(args, n_max_final=10 * args.n_max)
        # The preset's demonstrator settings (its decay, its clone as the first LO and
        # the BC floor) are the BC modes' only: the baselines without behavior
        # cloning start from a random init, as in the paper, with the same LO (scaled
        # step, nominal term) as ELO's.
        # (An unknown mode is left for validate() to name.)
        if args.mode in MODE_SETTINGS and not MODE_SETTINGS[args.mode][1]:
            baseline = dict(init_lo=None, expert_decay_steps=0.0, bc_floor=0.0)
            unset = {k: v for k, v in baseline.items() if getattr(self, k) is None}
            args = dataclasses.replace(args, **unset)
        if args.init_lo == "none":
            args = dataclasses.replace(args, init_lo=None)
        defaults = dict(
            adam_scaled_step=False,
            nominal_lr=0.0,
            nominal_decay_steps=0.0,
            bc_floor=0.0,
        )
        unset = {k: v for k, v in defaults.items() if getattr(args, k) is None}
        return dataclasses.replace(args, **unset)

    def validate(self) -> None:
        """Raises ValueError naming the first bad setting (call on ``resolved()``)."""
        EnvSettings.from_id(self.env)  # an unknown id fails here, naming the valid ones
        for spec in self.mixture:
            mixture_shape(spec)
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; valid: {', '.join(MODES)}")
        runs.require_positive(
            self,
            "outer_steps",
            "num_pairs",
            "truncation",
            "sigma",
            "learning_rate",
            "max_grad_norm",
            "checkpoint_every",
            "clone_steps",
            "eval_seeds",
            "eval_horizon_factor",
        )
        if self.loss_cap is not None and self.loss_cap <= 0:
            raise ValueError(f"loss_cap must be > 0, got {self.loss_cap}")
        self.lo_spec()  # a bad LO setting fails here, named
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {self.eval_every}")
        if self.export == "best" and self.eval_every == 0:
            raise ValueError(
                "export='best' needs validation runs: set eval_every > 0, or "
                "export='last'"
            )
        launched = (self.coordinator_address, self.num_processes, self.process_id)
        if self.run_dir is None and (self.distributed or launched != (None,) * 3):
            # The default name holds the time, which differs between processes.
            raise ValueError("a multi-process run needs --run-dir, the same for all")
        if not 0.0 < self.alpha_end_fraction <= 1.0:
            raise ValueError(
                f"alpha_end_fraction must be in (0, 1], got {self.alpha_end_fraction}"
            )
        if not 0.0 <= self.bc_floor <= 1.0:
            raise ValueError(f"bc_floor must be in [0, 1], got {self.bc_floor}")
        if self.bc_floor > 0 and not MODE_SETTINGS[self.mode][1]:
            raise ValueError(
                f"--bc-floor {self.bc_floor} needs behavior cloning; mode "
                f"{self.mode!r} has none (use elo or bc, or --bc-floor 0)"
            )
        if self.expert_decay_steps and not MODE_SETTINGS[self.mode][1]:
            raise ValueError(
                f"--expert-decay-steps {self.expert_decay_steps} shapes the expert "
                f"that behavior cloning imitates; mode {self.mode!r} has none (use "
                "elo or bc, or leave it unset)"
            )
        # Builds the schedule once, so that a bad lr setting fails here.
        schedules.outer_learning_rate(
            self.learning_rate,
            self.outer_steps,
            self.lr_schedule,
            self.warmup_fraction,
            self.min_learning_rate,
        )

    def lo_spec(self) -> LOSpec:
        """The LO this run meta-trains, from its LO flags (call on ``resolved()``)."""
        return LOSpec.from_flags(self)


def env_settings(args: Args) -> EnvSettings:
    """The env the agent meta-trains in: paired copies, the mode's resets."""
    reset_mode, _ = MODE_SETTINGS[args.mode]
    return EnvSettings.from_id(
        args.env,
        task=args.task,
        hidden_sizes=args.hidden_sizes,
        max_shift=args.max_shift,
        noise_std=args.noise_std,
        batch_size=args.batch_size,
        data_dir=args.data_dir,
        mode=reset_mode,
        p_th=args.p_th,
        buffer_size=args.buffer_size,
        n_min=args.n_min,
        n_max=args.n_max,
        n_max_final=args.n_max_final,
        bc_scale=args.bc_scale,
        bc_floor=args.bc_floor,
        buffer_scope=args.buffer_scope,
        push_policy=args.push_policy,
        bc_loss=args.bc_loss,
        meta_loss_split=args.meta_loss_split,
        expert_learning_rate=args.expert_lr,
        expert_decay_steps=args.expert_decay_steps,
        expert_schedule=args.expert_schedule,
        lo=args.lo_spec(),
        paired=True,
    )


def schedule_at(args: Args, outer_step: int) -> schedules.OuterStepValues:
    """alpha_t (1, pure LO, outside the BC modes) and n_max at outer step t."""
    return schedules.at_outer_step(
        outer_step,
        args.outer_steps,
        behavior_cloning=MODE_SETTINGS[args.mode][1],
        n_max=args.n_max,
        n_max_final=args.n_max_final if args.mode == "curriculum" else None,
        alpha_schedule=args.alpha_schedule,
        hold_fraction=args.hold_fraction,
        alpha_end_fraction=args.alpha_end_fraction,
    )


def outer_learning_rate(args: Args) -> optax.Schedule:
    return schedules.outer_learning_rate(
        args.learning_rate,
        args.outer_steps,
        args.lr_schedule,
        args.warmup_fraction,
        args.min_learning_rate,
    )


def outer_optimizer(args: Args) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(args.max_grad_norm),
        optax.adamw(outer_learning_rate(args), weight_decay=args.weight_decay),
    )


def clone_demonstrator(args: Args, run_dir: pathlib.Path) -> pathlib.Path:
    """``--init-lo bc``: the BC agent clones this run's demonstrator (Adam at
    expert_lr, decayed by expert_decay_steps) on this run's env and LO features, into
    RUN_DIR/init_lo (kept, so a resumed run does not clone again).

    In a multi-process run only process 0 calls this, and the BC agent runs in a
    child process of its own: a one-process JAX program, whose checkpoints need no
    other process."""
    out = run_dir / "init_lo"
    if not (out / checkpoint.LO_FILE).is_file():
        clone_args = bc_train.Args(
            env=args.env,
            task=args.task,
            seed=args.seed,
            run_dir=str(out),
            n_min=args.n_min,
            n_max=args.n_max,
            batch_size=args.batch_size,
            hidden_sizes=args.hidden_sizes,
            data_dir=args.data_dir,
            expert_lr=args.expert_lr,
            expert_decay_steps=args.expert_decay_steps or 0.0,
            expert_schedule=args.expert_schedule,
            **args.lo_spec().flags(bc_train.Args),
            mixture=args.mixture,
            outer_steps=args.clone_steps,
            progress=args.progress,
        )
        if jax.process_count() == 1:
            bc_train.main(clone_args)
        else:
            child = multiprocessing.get_context("spawn").Process(
                target=bc_train.main, args=(clone_args,)
            )
            child.start()
            child.join()
            if child.exitcode != 0:
                raise RuntimeError(
                    f"cloning the demonstrator into {out} failed (exit code "
                    f"{child.exitcode}); its output is above"
                )
    return out


def initial_lo(args: Args, template: lopt.MetaParams) -> lopt.MetaParams:
    """The LO of ``--init-lo``, checked against this run's LO settings.

    With several processes, process 0 reads it and every process gets its bits
    (``template``, an LO of the same shape, stands in elsewhere), so the other hosts
    never read a file process 0 may have just written."""
    if args.init_lo == CLONE_DEMONSTRATOR:
        raise ValueError(
            "--init-lo bc is run by pes_train.main, which clones the demonstrator "
            "first; outside it pass the clone's run dir, or init_lo='none'"
        )
    if not distributed.is_main_process():
        return jax.tree.map(jnp.asarray, distributed.broadcast_from_main(template))
    meta, info = checkpoint.load_meta_params(args.init_lo)
    differences = LOSpec.from_json(info).differences(args.lo_spec())
    if differences:
        details = ", ".join(
            f"{k} {found!r} (this run: {wanted!r})"
            for k, (found, wanted) in differences.items()
        )
        raise ValueError(
            f"--init-lo {args.init_lo} is an LO with {details}: meta-train with its "
            "settings (the flags of those names) or clone another"
        )
    return jax.tree.map(jnp.asarray, distributed.broadcast_from_main(meta))


def init_state(
    args: Args,
    cfg: PESConfig,
    env_params: core.EnvParams,
    mixture: Sequence[PESConfig] = (),
) -> PESState:
    """Fresh LO, outer optimizer, copies and an empty buffer, from ``args.seed``
    (and fresh copies of each ``mixture`` task, see :func:`mixture_configs`)."""
    key = jax.random.PRNGKey(args.seed)
    key, k_meta, k_env = jax.random.split(key, 3)
    meta = lopt.init_meta_params(k_meta, args.hidden_size)
    if args.init_lo is not None:
        meta = initial_lo(args, meta)
    dim = ravel_pytree(meta.mlp)[0].size

    def fresh(cfg: PESConfig, k: jax.Array):
        env_state, _, _ = jax.jit(functools.partial(core.reset, cfg.env))(
            jax.vmap(jax.random.fold_in, (None, 0))(
                k, jnp.arange(args.num_pairs)
            ).repeat(2, axis=0),
            env_params,
        )
        return env_state, jnp.zeros((args.num_pairs, dim))

    env_state, accumulator = fresh(cfg, k_env)
    extra = tuple(
        fresh(c, jax.random.fold_in(k_env, 1 + i)) for i, c in enumerate(mixture)
    )
    return PESState(
        meta=meta,
        opt_state=outer_optimizer(args).init(meta.mlp),
        env=env_state,
        accumulator=accumulator,
        mixture=extra,
        key=key,
        outer_step=jnp.int32(0),
        # Copies: the jitted step donates its input, and a buffer can go only once.
        best_meta=jax.tree.map(jnp.copy, meta),
        best_valid_loss=jnp.float32(jnp.inf),
        best_step=jnp.int32(-1),
    )


class Validation:
    """The current LO, the LO with its MLP silenced and Adam (lr 1e-3) training fresh
    optimizees of the meta-training task for ``eval_horizon_factor`` x n_max steps,
    scored on the validation split, all on the same seeds.

    This is how a user meets the LO (a plain optax loop, :mod:`elo_gym.inner_loop`),
    so it shows what the meta-loss hides: whether the LO keeps improving past the
    horizon and anneals its steps like Adam, or takes big constant steps while its
    weights grow. The silenced LO (every MLP weight zero: the nominal term alone, or a
    zero update for an LO without one) is what the learned part is measured against.
    One compiled program serves every LO run (the LO's weights are an argument); the
    silenced LO's and Adam's runs do not change, so they happen once.
    """

    def __init__(self, args: Args, task: envs.Task, data: Any):
        self.steps = args.eval_horizon_factor * args.n_max
        self.window = max(1, self.steps // 10)
        keys = jax.random.split(jax.random.PRNGKey(args.seed + 1_000), args.eval_seeds)
        layout = lopt_fused.default_layout()
        curves = functools.partial(
            inner_loop.train_curves, task, steps=self.steps, eval_every=self.window
        )

        @jax.jit
        def lo_curves(meta: lopt.MetaParams) -> dict:
            optimizer = lopt.small_fc_lopt(
                meta, args.lo_spec(), layout=layout, total_steps=self.steps
            )
            return jax.vmap(functools.partial(curves, optimizer), (None, 0))(data, keys)

        self._lo_curves = lo_curves
        silenced = jax.tree.map(
            jnp.zeros_like,
            lopt.init_meta_params(jax.random.PRNGKey(0), args.hidden_size),
        )
        self.silenced = self._summary(lo_curves(silenced))
        adam = jax.vmap(functools.partial(curves, optax.adam(1e-3)), (None, 0))
        self.adam = self._summary(jax.jit(adam)(data, keys))

    def _summary(self, curves: dict) -> dict[str, float]:
        """:data:`VALIDATION_METRICS` (means over seeds) and the stds over seeds of
        :data:`VALIDATION_SPREAD` (``<metric>_std``)."""
        c = {k: np.asarray(v, np.float64) for k, v in jax.device_get(curves).items()}
        w = self.window
        with np.errstate(invalid="ignore", divide="ignore"):
            per_seed = {
                "valid_loss": c["valid_loss"][:, -1],
                "train_loss": c["train_loss"][:, -w:].mean(axis=1),
            }
            out = {
                **{k: v.mean() for k, v in per_seed.items()},
                "update_norm_ratio": (
                    c["update_norm"][:, -w:].mean() / c["update_norm"][:, :w].mean()
                ),
                "param_norm_ratio": (
                    c["param_norm"][:, -1] / c["param_norm"][:, 0]
                ).mean(),
                **{f"{k}_std": per_seed[k].std() for k in VALIDATION_SPREAD},
            }
        # A diverged optimizee scores inf, so it is never picked as the best LO.
        return {k: float(v) if np.isfinite(v) else math.inf for k, v in out.items()}

    def __call__(self, meta: lopt.MetaParams) -> dict[str, float]:
        """The row entries ``val_lo_*``, ``val_silenced_*`` and ``val_adam_*`` for the
        LO ``meta``."""
        lo = self._summary(self._lo_curves(meta))
        adam = {k: v for k, v in self.adam.items() if not k.endswith("_std")}
        return {
            **{f"val_lo_{k}": v for k, v in lo.items()},
            **{f"val_silenced_{k}": v for k, v in self.silenced.items()},
            **{f"val_adam_{k}": v for k, v in adam.items()},
        }


def _validation_due(args: Args, done: int) -> bool:
    return args.eval_every > 0 and (
        done % args.eval_every == 0 or done == args.outer_steps
    )


def _keep_best(state: PESState, row: dict, done: int) -> PESState:
    """Makes the LO just validated the best one if its validation loss is lowest."""
    loss = row["val_lo_valid_loss"]
    if not loss < float(state.best_valid_loss):
        return state
    return state.replace(
        best_meta=jax.tree.map(jnp.copy, state.meta),
        best_valid_loss=jnp.full_like(state.best_valid_loss, loss),
        best_step=jnp.full_like(state.best_step, done),
    )


def pes_config(args: Args) -> tuple[PESConfig, core.EnvParams]:
    """The static outer-step config and the env's numeric params (with the task's
    data loaded) for resolved ``args``."""
    settings = env_settings(args)
    env_cfg = settings.config(2 * args.num_pairs)  # validates the env settings
    env_params = settings.params(env_cfg.task.load_data())
    cfg = PESConfig(
        env=env_cfg,
        truncation=args.truncation,
        sigma=args.sigma,
        loss_cap=args.loss_cap or 2.0 * math.log(env_cfg.task.num_classes),
        keep_accumulator_on_restore=args.keep_accumulator_on_restore,
        layout=lopt_fused.default_layout(),
    )
    return cfg, env_params


def mixture_configs(args: Args, cfg: PESConfig) -> list[PESConfig]:
    """The config of each ``--mixture`` task: ``cfg`` with the optimizee MLP's widths
    and activation replaced. They share the env's params: the same dataset and
    numeric settings, only the network differs."""
    settings = env_settings(args)
    return [
        dataclasses.replace(cfg, env=settings.reshaped(spec).config(2 * args.num_pairs))
        for spec in args.mixture
    ]


def main(args: Args) -> pathlib.Path:
    """Meta-trains (or resumes) and returns the run directory."""
    args = args.resolved()
    args.validate()
    distributed.initialize(
        args.coordinator_address,
        args.num_processes,
        args.process_id,
        auto=args.distributed,
    )
    main_process = distributed.is_main_process()
    cfg, env_params = pes_config(args)
    mixture = mixture_configs(args, cfg)
    env_cfg, data = cfg.env, env_params.data
    run_dir = pathlib.Path(
        args.run_dir or runs.default_run_dir(args.env, args.mode, str(args.seed))
    )
    if args.init_lo == CLONE_DEMONSTRATOR:
        # Process 0 clones while the others wait; they get its bits in initial_lo.
        if main_process:
            clone_demonstrator(args, run_dir)
        distributed.wait_for_all("elo_gym_init_lo_cloned")
        args = dataclasses.replace(args, init_lo=str(run_dir / "init_lo"))
    launch = ("distributed", "coordinator_address", "num_processes", "process_id")
    # Sharded first, so that a resumed run restores each shard where it belongs.
    run = runs.open_run(
        run_dir,
        runs.args_config(args, exclude=launch),
        shard_state(cfg, init_state(args, cfg, env_params, mixture)),
        METRICS,
        main_process=main_process,
    )
    # The data on every device once, rather than copied from one device at each step.
    _, whole = distributed.pairs_shardings(args.num_pairs)
    env_params = distributed.put(env_params, whole)
    optimizer = outer_optimizer(args)
    # One compiled step per task; the mixture tasks share the env's params.
    steps = [jax.jit(functools.partial(outer_step, cfg, optimizer), donate_argnums=0)]
    steps += [
        jax.jit(
            functools.partial(mixture_outer_step, i + 1, c, optimizer),
            donate_argnums=0,
        )
        for i, c in enumerate(mixture)
    ]
    lr_at = outer_learning_rate(args)
    validate = Validation(args, env_cfg.task, data) if args.eval_every else None

    def one_step(state: PESState, t: int) -> tuple[PESState, dict]:
        values = schedule_at(args, t)
        task_index = t % len(steps)
        params_t = env_params.replace(
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
            inner_steps_per_s=2 * args.num_pairs * args.truncation / seconds,
            outer_lr=float(lr_at(t)),
            task_index=task_index,
        )
        if validate is not None and _validation_due(args, t + 1):
            # Process 0's numbers everywhere, so every process keeps the same best LO.
            row.update(distributed.broadcast_from_main(validate(state.meta)))
            state = _keep_best(state, row, t + 1)
            row["val_best_step"] = int(state.best_step)
        return state, row

    state = runs.train_loop(
        run,
        one_step,
        args,
        shown=("meta_loss", "alpha", "inner_steps_per_s"),
        desc=f"PES {args.mode}",
        progress=args.progress and main_process,
    )
    if int(state.outer_step) >= args.outer_steps and main_process:
        export(args, run_dir, state)
    return run_dir


def export(args: Args, run_dir: pathlib.Path, state: PESState) -> None:
    """Writes ``lo.msgpack`` (the last or the best LO, per ``args.export``) and, once
    validated, the best LO in ``best/`` so that both can be evaluated."""
    validated = int(state.best_step) >= 0
    info = {
        "env": args.env,
        "mode": args.mode,
        "n_max": args.n_max,
        "best_step": int(state.best_step),
        "best_valid_loss": float(state.best_valid_loss),
    }
    best = dict(info, exported="best", outer_step=int(state.best_step))
    last = dict(info, exported="last", outer_step=int(state.outer_step))
    save = functools.partial(checkpoint.save_lo, spec=args.lo_spec())
    if args.export == "best" and validated:
        save(run_dir, state.best_meta, extra=best)
    else:
        save(run_dir, state.meta, extra=last)
    if validated:
        (run_dir / "best").mkdir(exist_ok=True)
        save(run_dir / "best", state.best_meta, extra=best)


def summary(run_dir: pathlib.Path) -> str:
    """What a finished run left: where the LO is, its final losses, what to run next."""
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    info = json.loads((run_dir / checkpoint.LO_META_FILE).read_text())
    window = rows[-max(1, len(rows) // 10) :]
    meta = np.mean([float(r["meta_loss"]) for r in window])
    task = np.mean([float(r["task_loss"]) for r in window])
    lines = [
        f"learned optimizer: {run_dir / checkpoint.LO_FILE} "
        f"({info['exported']} LO, outer step {info['outer_step']})",
        f"meta-loss {meta:.4g}, task loss {task:.4g} (mean of the last "
        f"{len(window)} outer steps)",
    ]
    validated = [r for r in rows if r["val_lo_valid_loss"] not in ("", "nan")]
    if validated:
        last = validated[-1]
        lines.append(
            f"at 10x the horizon (validation, outer step {int(last['outer_step']) + 1})"
            f": LO valid loss {float(last['val_lo_valid_loss']):.4g}, update norm "
            f"x{float(last['val_lo_update_norm_ratio']):.3g}, param norm "
            f"x{float(last['val_lo_param_norm_ratio']):.3g}; Adam lr 1e-3: "
            f"{float(last['val_adam_valid_loss']):.4g}, "
            f"x{float(last['val_adam_update_norm_ratio']):.3g}, "
            f"x{float(last['val_adam_param_norm_ratio']):.3g}"
        )
    # Rows of a run resumed from before the silenced LO's columns lack them.
    if validated and last.get("val_silenced_valid_loss") not in (None, ""):
        lines.append(
            f"the LO with its MLP silenced: valid loss "
            f"{float(last['val_silenced_valid_loss']):.4g} ± "
            f"{float(last['val_silenced_valid_loss_std']):.2g}, the LO's "
            f"{float(last['val_lo_valid_loss']):.4g} ± "
            f"{float(last['val_lo_valid_loss_std']):.2g} (std over validation seeds)"
        )
    lines.append(
        "evaluate it at 10x its horizon against tuned AdamW: python "
        f"scripts/evaluate.py --lo {info['mode']}={run_dir} --out {run_dir / 'eval'}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    run_dir = runs.run_cli(main, Args, "pes_train.py")
    if not distributed.is_main_process():
        raise SystemExit(0)  # process 0 reports
    if (run_dir / checkpoint.LO_FILE).is_file():
        print(summary(run_dir))
    else:
        print(f"run directory: {run_dir} (not finished; run again to resume)")
