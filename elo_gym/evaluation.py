"""Long-horizon evaluation: learned optimizers against tuned AdamW and LAMB (Sec. 5.2).

The library of ``scripts/evaluate.py`` (its command line); :func:`run` does the work.

Trains fresh optimizees of an env's task (same dataset, model and augmentation as the
env) for H inner steps with each learned optimizer (LO) and with six hand-set
baselines (weight decay 1e-4), each tuned by the final validation loss (mean over
seeds):

- ``adamw``: a constant lr, over the paper's 7 lrs and 0.02 and 0.03;
- ``adamw_cosine``: linear warmup over ``warmup_fraction`` of H, then cosine decay to
  0 at H (``optax.warmup_cosine_decay_schedule``), over an lr grid;
- ``adamw_invsqrt``: lr / sqrt(1 + n / tau), the LO's nominal term's schedule
  (``elo_gym.schedules.inverse_sqrt_decay``), over an lr x tau grid;
- ``lamb_cosine``: LAMB (``optax.lamb``, eps 1e-8: Adam's step rescaled per tensor
  to lr x |W|) with ``adamw_cosine``'s schedule, over an lr grid: the default LO's
  nominal term, tuned per task;
- ``cautious_lamb_cosine``: the same with Cautious Adam's direction (each coordinate
  whose step disagrees in sign with the gradient dropped,
  ``demonstrator.scale_by_cautious_adam``), over LAMB's grid: the demonstrator of a
  gated LO (``LOSpec.gated_step``), tuned per task;
- ``lamb_b2_95_cosine``: ``lamb_cosine`` with Adam's second-moment decay at 0.95
  instead of 0.999, over LAMB's grid: the demonstrator of the gated LO of
  docs/levers.md's thirty-ninth screen (``--expert-b2 0.95``), tuned per task.

A grid whose pick sits at an edge is extended past it (lr x2 or /2, tau x10 or /10),
at most ``max_grid_extensions`` times; results.json records each final grid, every
configuration's final validation loss, the pick and whether it still sits at an edge.
H defaults to 10x the meta-training horizon n_max read from the LO runs'
``config.json``.

Each (optimizer, hyper-parameters) is one jitted ``lax.scan`` over the inner steps,
vmapped over the seeds: the training loss of every step stays on the device, and the
validation loss and test accuracy are computed inside the program every
``eval_every`` steps (the scan is chunked, so no per-step host sync and no per-step
``lax.cond``); lr and tau are traced arguments, so each baseline family compiles
once. Every method sees the same seeds: the same initial params and the same batch
sequence.

Writes into the output directory:

- ``results.json``: config, the task, every curve (every constant AdamW lr too; the
  picked configuration of the scheduled baselines), each baseline's grid search
  (``baselines``), the chosen lr, final metrics and compute time;
- ``train_loss.png``, ``valid_loss.png``, ``loss_curves.png`` (like the paper's Figs.
  3-5: log-scale loss against the inner step, mean over seeds with a min-max band, the
  meta-training horizon as a dashed red line) and ``adamw_sweep.png`` (every constant
  lr);
- ``table.md``: test accuracy and test loss at the final step, mean +- std over seeds
  (like the paper's Table 1).

The command line is ``scripts/evaluate.py`` (its docstring has examples).

An LO meta-trained on another env than ``--env`` is an error unless
``--allow-task-mismatch`` is given (out-of-distribution evaluation is legitimate, but
it should be asked for, not happen by a typo).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tyro
from tqdm import tqdm

import elo_gym
from elo_gym import demonstrator, eval_report, schedules, validation
from elo_gym import envs as tasks
from elo_gym.checkpoint import load_meta_params
from elo_gym.eval_report import ADAMW
from elo_gym.inner_loop import eval_steps
from elo_gym.lo_spec import ADAM_EPS, LOSpec
from elo_gym.settings import EnvSettings

PAPER_LRS = (0.01, 0.007, 0.004, 0.001, 0.0007, 0.0004, 0.0001)
# The paper's grid and two lrs at and above the LO's nominal lr 0.02.
ADAMW_LRS = (0.03, 0.02, *PAPER_LRS)
# The scheduled baselines' lrs as dense as the constant grid's between 0.001 and 0.03:
# on the held-out family the cosine pick lies between 0.004 and 0.01 (docs/levers.md,
# the twenty-eighth screen), which a coarser grid cannot pick.
COSINE_LRS = (0.03, 0.02, 0.01, 0.007, 0.004, 0.002, 0.001)
INVSQRT_LRS = COSINE_LRS
# LAMB's loss jumps within a factor of 2 of its best lr (0.01 on every validation
# family, docs/levers.md's thirty-first screen), so its grid is denser there.
LAMB_LRS = (0.03, 0.02, 0.014, 0.01, 0.007, 0.004, 0.002, 0.001)
INVSQRT_TAUS = (10.0, 100.0, 1000.0)
WEIGHT_DECAY = 1e-4
# The results.json keys of the baseline families (``final`` and ``curves`` name the
# constant one ``AdamW``, as before there were others).
CAUTIOUS_LAMB = "cautious_lamb_cosine"
LAMB_B2_95 = "lamb_b2_95_cosine"
BASELINES = (
    "adamw",
    "adamw_cosine",
    "adamw_invsqrt",
    "lamb_cosine",
    CAUTIOUS_LAMB,
    LAMB_B2_95,
)
# Each family's grid axes and the factor an axis grows by past an edge pick.
AXES = {
    "adamw": (("lr", 2.0),),
    "adamw_cosine": (("lr", 2.0),),
    "adamw_invsqrt": (("lr", 2.0), ("tau", 10.0)),
    "lamb_cosine": (("lr", 2.0),),
    CAUTIOUS_LAMB: (("lr", 2.0),),
    LAMB_B2_95: (("lr", 2.0),),
}


def labeled_paths(
    lo: Annotated[tuple[str, ...], tyro.conf.UseAppendAction],
) -> tuple[tuple[str, str], ...]:
    """LABEL=PATH of an LO run dir or checkpoint; repeat --lo for each LO (also
    scripts/learned_part.py's ``--lo``)."""
    pairs = []
    for text in lo:
        label, sep, path = text.partition("=")
        if not sep or not label or not path:
            raise ValueError(f"--lo {text!r}: expected LABEL=PATH, e.g. elo=runs/elo")
        pairs.append((label, path))
    return tuple(pairs)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Settings of one evaluation (all of it is written to results.json)."""

    # (label, run dir or checkpoint path) per LO; on the command line --lo LABEL=PATH.
    los: Annotated[
        tuple[tuple[str, str], ...], tyro.conf.arg(name="", constructor=labeled_paths)
    ]
    env: str = "ELO-Digits-MLP"  # env id whose task the optimizees train on
    task: str | None = None  # ELO-Task: package.module:factory returning your task
    steps: int | None = None  # H; None: 10 x the largest meta-training n_max
    horizon_factor: int = 10  # H = horizon_factor x n_max when steps is None
    seeds: int = 3  # seeds seed, seed + 1, ...; each method sees the same ones
    seed: int = 0  # first seed
    lrs: tuple[float, ...] = ADAMW_LRS  # constant AdamW learning rates searched
    weight_decay: float = WEIGHT_DECAY  # AdamW weight decay (every baseline)
    baselines: tuple[str, ...] = BASELINES  # families run; "adamw" always is
    cosine_lrs: tuple[float, ...] = COSINE_LRS  # peak lrs of warmup + cosine AdamW
    warmup_fraction: float = 0.05  # of H: the cosine baseline's linear warmup
    invsqrt_lrs: tuple[float, ...] = INVSQRT_LRS  # lrs of lr / sqrt(1 + n / tau)
    invsqrt_taus: tuple[float, ...] = INVSQRT_TAUS  # its taus (inner steps)
    lamb_lrs: tuple[float, ...] = LAMB_LRS  # peak lrs of warmup + cosine LAMB
    max_grid_extensions: int = 3  # times a grid grows past an edge pick, per family
    eval_every: int | None = None  # steps between evaluations; None: about H / 50
    hidden_sizes: tuple[int, ...] | None = None  # None: the LO runs' (else the env's)
    activation: str | None = None  # MLP activation (None: the env's)
    batch_size: int | None = None  # None: the LO runs' (else the env's)
    data_dir: str | None = None  # where on-disk datasets live (ImageNet-32, FineWeb)
    dataset: str | None = None  # None: the env's; e.g. "text" for GPT-2-mini
    width: int | None = None  # ResNet-18 / GPT-2-mini width (None: the env's)
    context_length: int | None = None  # GPT-2-mini context (None: the env's)
    text_files: tuple[str, ...] | None = None  # GPT-2-mini on dataset "text"
    allow_task_mismatch: bool = False  # evaluate LOs meta-trained on another env
    smooth: int | None = None  # moving-average window of plotted train loss
    # "scan": inner steps in one compiled loop; "host": a Python loop of jitted
    # steps (HostLoop); "auto": host for conv nets on CPU, scan otherwise.
    step_loop: str = "auto"
    progress: bool = True  # tqdm progress bar over runs


# --------------------------------------------------------------------------- config


def _check_env(env_id: str) -> None:
    if env_id not in elo_gym.ENV_IDS:
        raise ValueError(
            f"unknown env id {env_id!r}; valid: {', '.join(elo_gym.ENV_IDS)}"
        )


def _find_config(path: pathlib.Path) -> dict | None:
    """The run's config.json for a run dir, its lo.msgpack or a checkpoint dir."""
    for parent in [path, *path.parents][:4]:
        file = parent / "config.json"
        if parent.is_dir() and file.is_file():
            return json.loads(file.read_text())
    return None


def _describe_los(config: EvalConfig) -> list[dict]:
    """Checks every LO path and reads its run config (None if it has none)."""
    _check_env(config.env)  # first: a typo must not read as a task mismatch
    if not config.los:
        raise ValueError("give at least one learned optimizer: --lo LABEL=PATH")
    labels = [label for label, _ in config.los]
    reserved = {ADAMW, *BASELINES}
    if len(set(labels)) != len(labels) or reserved & set(labels):
        raise ValueError(
            f"LO labels must be unique and none of {sorted(reserved)}, got {labels}"
        )
    described = []
    for label, path in config.los:
        path = pathlib.Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"learned optimizer {label!r}: no checkpoint at {path} (give a run "
                "directory with lo.msgpack or checkpoints/, or a lo.msgpack file)"
            )
        run_config = _find_config(path)
        run_env = None if run_config is None else run_config.get("env")
        mismatch = run_env is not None and run_env != config.env
        if mismatch and not config.allow_task_mismatch:
            raise ValueError(
                f"learned optimizer {label!r} was meta-trained on {run_env!r}, "
                f"not on --env {config.env!r}; pass --allow-task-mismatch to "
                "evaluate it out of distribution on purpose"
            )
        described.append(
            {"label": label, "path": str(path), "env": run_env, "config": run_config}
        )
    return described


def _from_runs(described: list[dict], key: str) -> Any:
    """The runs' common value of a config key (None if none sets it)."""
    values = {
        json.dumps(d["config"].get(key))
        for d in described
        if d["config"] is not None and d["config"].get(key) is not None
    }
    if len(values) > 1:
        raise ValueError(
            f"the LO runs disagree on {key}: {sorted(values)}; pass it explicitly "
            f"(--{key.replace('_', '-')})"
        )
    return json.loads(values.pop()) if values else None


def _resolve(config: EvalConfig, described: list[dict]) -> dict:
    """Task settings, H, the meta-training horizons and the eval interval."""
    same_env = [d for d in described if d["env"] in (None, config.env)]
    hidden = config.hidden_sizes
    batch = config.batch_size
    # Only runs of this env say what its model was: an OOD run's widths belong to
    # another dataset.
    if hidden is None:
        hidden = _from_runs(same_env, "hidden_sizes")
    if batch is None:
        batch = _from_runs(same_env, "batch_size")
    n_max = {
        d["label"]: d["config"]["n_max"]
        for d in described
        if d["config"] is not None and "n_max" in d["config"]
    }
    steps = config.steps
    if steps is None:
        if not n_max:
            raise ValueError(
                "no LO run has a config.json with n_max to derive H from; pass --steps"
            )
        steps = config.horizon_factor * max(n_max.values())
    if steps <= 0:
        raise ValueError(f"steps must be > 0, got {steps}")
    eval_every = max(1, steps // 50) if config.eval_every is None else config.eval_every
    if eval_every <= 0:
        raise ValueError(f"eval_every must be > 0, got {eval_every}")
    if config.seeds <= 0:
        raise ValueError(f"seeds must be > 0, got {config.seeds}")
    _check_baselines(config)
    return {
        "hidden_sizes": None if hidden is None else tuple(hidden),
        "batch_size": batch,
        "steps": int(steps),
        "eval_every": int(eval_every),
        "n_max": n_max,
    }


def _check_baselines(config: EvalConfig) -> None:
    unknown = [b for b in config.baselines if b not in BASELINES]
    if unknown or "adamw" not in config.baselines:
        raise ValueError(
            f"baselines must include 'adamw' and be among {', '.join(BASELINES)}; "
            f"got {config.baselines}"
        )
    grids = {
        "lrs": config.lrs,
        "cosine_lrs": config.cosine_lrs,
        "invsqrt_lrs": config.invsqrt_lrs,
        "invsqrt_taus": config.invsqrt_taus,
        "lamb_lrs": config.lamb_lrs,
    }
    for name, grid in grids.items():
        if not grid or min(grid) <= 0:
            raise ValueError(f"{name} must be positive and non-empty, got {grid}")
    if not 0.0 <= config.warmup_fraction < 1.0:
        raise ValueError(
            f"warmup_fraction must be in [0, 1), got {config.warmup_fraction}"
        )
    if config.max_grid_extensions < 0:
        raise ValueError(
            f"max_grid_extensions must be >= 0, got {config.max_grid_extensions}"
        )


@functools.lru_cache(maxsize=32)
def _baseline_build(
    family: str, steps: int, warmup_fraction: float, weight_decay: float
) -> Callable[..., optax.GradientTransformation]:
    # Cached: the same object for equal settings, so that validation.seed_curves
    # finds its compiled program again in a second evaluation in this process.
    return functools.partial(
        baseline_optimizer,
        family,
        steps=steps,
        warmup_fraction=warmup_fraction,
        weight_decay=weight_decay,
    )


def make_task(env_id: str, **options: Any) -> tasks.Task:
    """The optimizee task of an env id (same model, dataset, defaults and
    augmentation); ``options`` (None: the env's) override the env's settings, e.g.
    ``hidden_sizes``, ``batch_size``, ``width``, ``dataset`` or ``text_files``."""
    _check_env(env_id)
    return EnvSettings.from_id(env_id, **options).build_task()


# --------------------------------------------------------------------------- training


def _seed_keys(config: EvalConfig) -> jax.Array:
    return jnp.stack([jax.random.PRNGKey(config.seed + i) for i in range(config.seeds)])


def _run_many(fn, *args) -> tuple[dict[str, np.ndarray], float]:
    start = time.perf_counter()
    out = jax.device_get(jax.block_until_ready(fn(*args)))
    return {k: np.asarray(v) for k, v in out.items()}, time.perf_counter() - start


def pick_best_lr(final_valid_loss: dict[Any, np.ndarray]) -> Any:
    """The lr (or any grid point) with the lowest mean final validation loss over
    seeds.

    An lr with a non-finite loss on any seed (divergence) is never picked unless
    every lr diverged.

    Args:
      final_valid_loss: lr -> (seeds,) final validation losses.
    """
    means = {
        lr: float(np.mean(v)) if np.all(np.isfinite(v)) else math.inf
        for lr, v in final_valid_loss.items()
    }
    return min(means, key=means.__getitem__)


def tune_grid(
    final_valid_loss: Any,
    axes: Sequence[tuple[str, Sequence[float], float]],
    max_extensions: int,
) -> dict:
    """Picks the grid point of lowest mean final validation loss, growing the grid
    past an edge where the pick sits, until it is inside or ``max_extensions`` rounds
    were added.

    Args:
      final_valid_loss: point -> (seeds,) final validation losses, where a point is
        a tuple of one value per axis; called once per point (it trains).
      axes: (name, values, factor) per axis: an edge pick adds ``max x factor`` or
        ``min / factor``.
      max_extensions: rounds of growth at most.

    Returns:
      ``grid`` (name -> sorted values), ``losses`` (every point's values and its
      ``valid_loss`` mean and per seed), ``pick`` (name -> value), ``extensions`` (the
      rounds run) and ``at_edge`` (the names of the axes whose pick is still the
      lowest or the highest value of that axis's final grid).
    """
    names = [name for name, _, _ in axes]
    grid = {name: sorted(set(map(float, values))) for name, values, _ in axes}
    factors = {name: factor for name, _, factor in axes}
    losses: dict[tuple[float, ...], np.ndarray] = {}
    extensions = 0
    while True:
        for point in itertools.product(*(grid[n] for n in names)):
            if point not in losses:
                losses[point] = np.asarray(final_valid_loss(point), np.float64)
        best = pick_best_lr(losses)
        at_edge = []
        for name, value in zip(names, best, strict=True):
            values = grid[name]
            if value == values[-1]:
                at_edge.append((name, values[-1] * factors[name]))
            if value == values[0]:
                at_edge.append((name, values[0] / factors[name]))
        if not at_edge or extensions == max_extensions:
            break
        for name, value in at_edge:
            grid[name] = sorted({*grid[name], value})
        extensions += 1
    return {
        "grid": grid,
        "losses": [
            {
                **dict(zip(names, point, strict=True)),
                "valid_loss": _finite_mean(v),
                "valid_loss_per_seed": [
                    float(x) if np.isfinite(x) else None for x in v
                ],
            }
            for point, v in sorted(losses.items())
        ],
        "pick": dict(zip(names, best, strict=True)),
        "extensions": extensions,
        "at_edge": sorted({name for name, _ in at_edge}),
    }


def _finite_mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if np.all(np.isfinite(values)) else None


def baseline_optimizer(
    family: str,
    hyper: jax.Array,
    *,
    steps: int,
    warmup_fraction: float,
    weight_decay: float,
) -> optax.GradientTransformation:
    """The optimizer of a baseline family; ``hyper`` is (lr,) or, for
    ``adamw_invsqrt``, (lr, tau), traced so that one compilation serves the family's
    whole grid."""
    lr = hyper[0]
    if family == "adamw":
        schedule = lr
    elif family in ("adamw_cosine", "lamb_cosine", CAUTIOUS_LAMB, LAMB_B2_95):
        # optax's schedule needs a concrete peak: the unit shape, scaled by lr.
        shape = optax.warmup_cosine_decay_schedule(
            0.0, 1.0, round(warmup_fraction * steps), steps, 0.0
        )

        def schedule(count):
            return lr * shape(count)
    elif family == "adamw_invsqrt":
        # lr / sqrt(1 + n / tau) with tau traced: the decay in units of tau.
        unit_decay = schedules.inverse_sqrt_decay(lr, 1.0)

        def schedule(count):
            return unit_decay(count / hyper[1])
    else:
        raise ValueError(f"unknown baseline {family!r}; valid: {', '.join(BASELINES)}")
    if family == "lamb_cosine":
        # At lr 0.01 and no weight decay this is the default LO's silenced self.
        return optax.lamb(schedule, eps=ADAM_EPS, weight_decay=weight_decay)
    if family == LAMB_B2_95:
        return optax.lamb(schedule, b2=0.95, eps=ADAM_EPS, weight_decay=weight_decay)
    if family == CAUTIOUS_LAMB:
        return demonstrator.cautious_adam(
            schedule, weight_decay=weight_decay, trust_ratio=True
        )
    return optax.adamw(schedule, weight_decay=weight_decay)


def _initial_axes(config: EvalConfig, family: str) -> list[tuple]:
    values = {
        "adamw": {"lr": config.lrs},
        "adamw_cosine": {"lr": config.cosine_lrs},
        "adamw_invsqrt": {"lr": config.invsqrt_lrs, "tau": config.invsqrt_taus},
        "lamb_cosine": {"lr": config.lamb_lrs},
        CAUTIOUS_LAMB: {"lr": config.lamb_lrs},
        LAMB_B2_95: {"lr": config.lamb_lrs},
    }[family]
    return [(name, values[name], factor) for name, factor in AXES[family]]


def _point_name(family: str, point: dict[str, float]) -> str:
    """A grid point as a curves key: ``str(lr)`` for the constant lr (as before the
    other families), else ``lr=..,tau=..``."""
    if family == "adamw":
        return str(point["lr"])
    return ",".join(f"{k}={v:g}" for k, v in point.items())


# --------------------------------------------------------------------------- run


STEP_LOOPS = ("auto", "scan", "host")


def _use_host_loop(config: EvalConfig, task: tasks.Task) -> bool:
    if config.step_loop not in STEP_LOOPS:
        raise ValueError(
            f"unknown step_loop {config.step_loop!r}; valid: {', '.join(STEP_LOOPS)}"
        )
    if config.step_loop != "auto":
        return config.step_loop == "host"
    return jax.default_backend() == "cpu" and task.cpu_step_loop == "host"


def run(config: EvalConfig, workdir: str | pathlib.Path) -> dict:
    """Evaluates the LOs and tunes the baselines; writes results, plots and
    table.

    Args:
      config: what to evaluate and how.
      workdir: output directory (created).

    Returns:
      The dict written to ``results.json`` (curves as nested lists).

    Raises:
      FileNotFoundError: an LO path does not exist.
      ValueError: unknown env id, a task mismatch without ``allow_task_mismatch``,
        or inconsistent settings.
    """
    wall_start = time.perf_counter()
    described = _describe_los(config)
    resolved = _resolve(config, described)
    # The same loader as elo_gym.load_optimizer; the meta-parameters are then passed
    # to one jitted program as arguments (not baked in as constants), so that every LO
    # of the same architecture shares one compilation.
    optimizers = {d["label"]: load_meta_params(d["path"]) for d in described}
    task = make_task(
        config.env,
        task=config.task,
        hidden_sizes=resolved["hidden_sizes"],
        activation=config.activation,
        batch_size=resolved["batch_size"],
        data_dir=config.data_dir,
        dataset=config.dataset,
        width=config.width,
        context_length=config.context_length,
        text_files=config.text_files,
    )
    data = task.load_data()
    steps, eval_every = resolved["steps"], resolved["eval_every"]
    keys = _seed_keys(config)

    def build_baseline(family):
        return _baseline_build(
            family, steps, config.warmup_fraction, config.weight_decay
        )

    # validation's programs, as the PES agent's validation runs them: the LO's
    # weights and the baselines' lr (and tau) are traced, so one compilation serves
    # every LO of a spec and each baseline family's whole grid.
    sizes = dict(steps=steps, eval_every=eval_every)
    host_loop = _use_host_loop(config, task)
    lo_programs: dict[LOSpec, Any] = {}

    def lo_program(meta, data, keys, *, spec):
        if spec not in lo_programs:
            lo_programs[spec] = validation.lo_curves(
                task, spec, **sizes, host_loop=host_loop
            )
        return lo_programs[spec](meta, data, keys)

    def baseline_program(family):
        build = build_baseline(family)
        return validation.seed_curves(task, build, **sizes, host_loop=host_loop)

    curves: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    bar = tqdm(
        total=len(optimizers), desc="evaluate", disable=not config.progress, unit="run"
    )
    for label, (meta, info) in optimizers.items():
        bar.set_postfix_str(label)
        # A hashable static argument: LOs with equal specs share a compile.
        program = functools.partial(lo_program, meta, spec=LOSpec.from_json(info))
        curves[label], seconds[label] = _run_many(program, data, keys)
        bar.update()
    summary = functools.partial(
        eval_report.final_summary, train_window=min(eval_every, steps)
    )
    final = {label: summary(curves[label]) for label in optimizers}
    searches, baseline_curves = {}, {}
    for family in BASELINES:
        if family not in config.baselines:
            continue
        program = baseline_program(family)
        runs: dict[str, dict] = {}

        def final_valid_loss(point, family=family, program=program, runs=runs):
            name = _point_name(family, dict(zip(dict(AXES[family]), point)))
            # The constant lr's runs keep their names from before the other families.
            constant = family == "adamw"
            run_name = f"{ADAMW} lr={point[0]:g}" if constant else f"{family} {name}"
            bar.total += 1
            bar.set_postfix_str(run_name)
            hyper = jnp.asarray(point, jnp.float32)
            runs[name], seconds[run_name] = _run_many(program, hyper, data, keys)
            bar.update()
            return runs[name]["valid_loss"][:, -1]

        search = tune_grid(
            final_valid_loss, _initial_axes(config, family), config.max_grid_extensions
        )
        search["picked"] = _point_name(family, search["pick"])
        searches[family], baseline_curves[family] = search, runs
        final[family if family != "adamw" else ADAMW] = summary(runs[search["picked"]])
    bar.close()
    best_lr = searches["adamw"]["pick"]["lr"]
    curves[ADAMW] = {float(k): v for k, v in baseline_curves["adamw"].items()}
    for family, runs in baseline_curves.items():
        if family != "adamw":
            curves[family] = runs[searches[family]["picked"]]
    config_dict = dataclasses.asdict(config)
    config_dict["los"] = [list(x) for x in config.los]
    result = {
        "config": config_dict,
        "task": task.describe(),
        "steps": steps,
        "eval_every": eval_every,
        "eval_steps": eval_steps(steps, eval_every),
        "n_max": resolved["n_max"],
        "lo_labels": list(optimizers),
        "baselines": searches,
        "lo_sources": {
            d["label"]: {"path": d["path"], "env": d["env"]} for d in described
        },
        "best_lr": best_lr,
        "adamw_final_valid_loss": {
            str(lr): summary(c)["valid_loss"] for lr, c in curves[ADAMW].items()
        },
        "final": final,
        "curves": {
            **{
                label: {k: eval_report.jsonable(v) for k, v in curves[label].items()}
                for label in optimizers
            },
            ADAMW: {
                str(lr): {k: eval_report.jsonable(v) for k, v in c.items()}
                for lr, c in curves[ADAMW].items()
            },
            **{
                family: {k: eval_report.jsonable(v) for k, v in curves[family].items()}
                for family in searches
                if family != "adamw"
            },
        },
        "compute": {
            "seconds_per_run": seconds,  # one run = all seeds, compilation included
            "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()],
        },
    }
    out_dir = pathlib.Path(workdir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result["plots"] = eval_report.write_plots(result, out_dir, config.smooth)
    (out_dir / "table.md").write_text(eval_report.table_markdown(result))
    result["compute"]["wall_seconds"] = time.perf_counter() - wall_start
    (out_dir / "results.json").write_text(json.dumps(result, allow_nan=False))
    return result
