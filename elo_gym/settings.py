"""One way from an env id and overrides to everything an ELO env is made of.

:class:`EnvSettings` is what an env id plus keyword arguments mean (the keyword
arguments of ``gymnasium.make``); it builds the optimizee task, the static
:class:`~elo_gym.core.EnvConfig` and the numeric :class:`~elo_gym.core.EnvParams`.
The Gymnasium shells, the agents, the adapters and ``scripts/evaluate.py`` all start
from :meth:`EnvSettings.from_id`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import sys
from typing import Any

from elo_gym import core, demonstrator, envs, registration
from elo_gym.lo_spec import LOSpec


@dataclasses.dataclass(frozen=True)
class EnvSettings:
    """What an ELO env id is made from: keyword arguments of ``gymnasium.make``."""

    model: str = "mlp"  # task family: "mlp", "resnet18", "gpt2mini"; "custom": task
    # ELO-Task: a Task object (e.g. envs.from_flax(...)) or its "package.module:factory"
    task: envs.Task | str | None = None
    # digits, imagenet32 (image models), teacher (mlp); fineweb, text, pysource (LM)
    dataset: str = "digits"
    hidden_sizes: tuple[int, ...] | None = None  # mlp: None -> the dataset's default
    activation: str | None = None  # mlp: None -> relu
    batch_size: int | None = None  # None: the task's default
    augment: bool | None = None  # image models: None -> the dataset's default
    max_shift: int | None = None  # mlp: random shifts of up to this many pixels
    noise_std: float | None = None  # mlp: Gaussian pixel noise (None: none)
    width: int | None = None  # resnet18: first-stage channels; gpt2mini: model width
    context_length: int | None = None  # gpt2mini: tokens per window
    text_files: tuple[str, ...] | None = None  # gpt2mini on dataset "text"
    data_dir: str | None = None
    input_dim: int | None = None  # mlp on teacher: input dimensions (None: 32)
    num_classes: int | None = None  # mlp on teacher: classes (None: 10)
    teacher_seed: int | None = None  # mlp on teacher: which teacher (None: 0)
    mode: str = "elo"
    p_th: float = 0.2
    buffer_size: int = 4
    n_min: int = 1
    n_max: int = 200
    n_max_final: int | None = None  # curriculum: n_max reached at the last outer step
    alpha: float = 0.0
    bc_scale: float = 1.0
    bc_floor: float = 0.0  # least weight of L_bc once alpha passes 1 - bc_floor
    buffer_scope: str = "shared"
    push_policy: str = "uniform"
    push_tolerance: float = 0.1
    bc_loss: str = "l2"
    meta_loss_split: str = "train"
    meta_loss_log: bool = False  # the task term is log L
    expert_learning_rate: float = 1e-3  # the demonstrator Adam's lr (the paper's)
    expert_decay_steps: float = 0.0  # > 0: the expert's lr decays as 1/sqrt(1 + n/tau)
    expert_schedule: str = "inverse_sqrt"  # or "cosine" to the end of the episode
    expert_b2: float = demonstrator.EXPERT_B2  # the demonstrator Adam's b2
    expert_weight_decay: float = demonstrator.EXPERT_WEIGHT_DECAY  # > 0: AdamW's decay
    expert_trust_ratio: bool = False  # the demonstrator is LAMB
    expert_cautious: bool = False  # the demonstrator drops sign-disagreeing coordinates
    nominal_lr_spread: float = 1.0  # > 1: episodes scale the LO's nominal term
    run_length_max: int = 0  # > 0: episodes draw where their run's clock ends
    lo: LOSpec = LOSpec()  # the LO's step (actions, expert action) and features
    paired: bool = False

    @classmethod
    def from_id(cls, env_id: str, **overrides: Any) -> EnvSettings:
        """The settings of a registered env id; overrides left None keep its
        defaults.

        Raises:
          ValueError: an unknown env id (naming the valid ones) or setting.
        """
        if env_id not in registration.ENV_IDS:
            raise ValueError(
                f"unknown env {env_id!r}; valid: {', '.join(registration.ENV_IDS)}"
            )
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown env setting(s) {', '.join(unknown)}")
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(**{**registration.ENV_IDS[env_id], **given})

    def reshaped(self, spec: str) -> EnvSettings:
        """These settings with the optimizee MLP of a ``WIDTHS[:ACTIVATION]``
        ``--mixture`` entry (:func:`mixture_shape`): the same dataset and numbers,
        another network. :func:`mixture_settings` takes every form of entry."""
        sizes, activation = mixture_shape(spec)
        return dataclasses.replace(self, hidden_sizes=sizes, activation=activation)

    def build_task(self) -> envs.Task:
        """The optimizee task: ``task`` for ELO-Task, else the model family's
        (options left None keep the family's defaults).

        Raises:
          ValueError: ``task`` given to another env, missing for ELO-Task, or given
            with options that shape a package task (its own arrays and model set them).
        """
        if self.model == CUSTOM_MODEL or self.task is not None:
            return self._custom_task()
        return envs.make_task(
            self.model,
            self.dataset,
            hidden_sizes=None
            if self.hidden_sizes is None
            else tuple(self.hidden_sizes),
            activation=self.activation,
            batch_size=self.batch_size,
            augment=self.augment,
            max_shift=self.max_shift,
            noise_std=self.noise_std,
            width=self.width,
            context_length=self.context_length,
            text_files=None if self.text_files is None else tuple(self.text_files),
            data_dir=self.data_dir,
            input_dim=self.input_dim,
            num_classes=self.num_classes,
            teacher_seed=self.teacher_seed,
        )

    def config(self, num_copies: int) -> core.EnvConfig:
        return core.EnvConfig(
            task=self.build_task(),
            num_copies=num_copies,
            mode=self.mode,
            buffer_size=self.buffer_size,
            buffer_scope=self.buffer_scope,
            push_policy=self.push_policy,
            bc_loss=self.bc_loss,
            meta_loss_split=self.meta_loss_split,
            meta_loss_log=self.meta_loss_log,
            expert_learning_rate=self.expert_learning_rate,
            expert_decay_steps=self.expert_decay_steps,
            expert_schedule=self.expert_schedule,
            expert_b2=self.expert_b2,
            expert_weight_decay=self.expert_weight_decay,
            expert_trust_ratio=self.expert_trust_ratio,
            expert_cautious=self.expert_cautious,
            nominal_lr_spread=self.nominal_lr_spread,
            run_length_max=self.run_length_max,
            lo=self.lo,
            paired=self.paired,
        )

    def params(self, data: Any) -> core.EnvParams:
        if self.n_max_final is not None and self.n_max_final < self.n_max:
            raise ValueError(
                f"n_max_final ({self.n_max_final}) must be >= n_max ({self.n_max})"
            )
        return core.make_params(
            data,
            alpha=self.alpha,
            p_th=self.p_th,
            n_min=self.n_min,
            n_max=self.n_max,
            bc_scale=self.bc_scale,
            bc_floor=self.bc_floor,
            push_tolerance=self.push_tolerance,
        )

    def _custom_task(self) -> envs.Task:
        if self.model != CUSTOM_MODEL:
            raise ValueError(
                f"task= trains your own model on env {registration.CUSTOM_TASK_ENV}; "
                f"this env's model is {self.model!r} (use "
                f"gymnasium.make({registration.CUSTOM_TASK_ENV!r}, task=...) or "
                f"--env {registration.CUSTOM_TASK_ENV} --task package.module:factory)"
            )
        if self.task is None:
            raise ValueError(
                f"{registration.CUSTOM_TASK_ENV} trains a task you build: pass "
                "task=envs.from_flax(...) (an envs.ArrayTask or any envs.Task) or, on "
                "the command line, --task package.module:factory"
            )
        shaping = [
            name for name in _PACKAGE_TASK_OPTIONS if getattr(self, name) is not None
        ]
        if shaping:
            raise ValueError(
                f"{', '.join(shaping)} shape(s) the package's tasks; a task of your "
                "own sets its model, batch size and data itself (build it so)"
            )
        return load_task(self.task) if isinstance(self.task, str) else self.task


# The env id's model family that takes its Task from EnvSettings.task.
CUSTOM_MODEL = "custom"
# EnvSettings fields that only configure the package's own task families: the
# options of envs.MODELS that are settings.
_PACKAGE_TASK_OPTIONS = tuple(
    field.name
    for field in dataclasses.fields(EnvSettings)
    if any(field.name in options for _, options in envs.MODELS.values())
)


@functools.cache
def load_task(spec: str) -> envs.Task:
    """The Task that ``"package.module:factory"`` returns (``factory()``, called once
    per spec and process, so every user of the spec shares one task and its compiled
    programs). The module is imported from the Python path or the current directory.

    Raises:
      ValueError: a malformed spec, a module or factory not found, or a factory that
        does not return a Task.
    """
    module_name, sep, factory_name = spec.partition(":")
    if not sep or not module_name or not factory_name:
        raise ValueError(
            f"--task expects package.module:factory (a function of no arguments "
            f"returning a Task), got {spec!r}"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: the user's modules
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ValueError(
            f"--task {spec}: cannot import {module_name!r} ({e}); run from the "
            "directory that holds it or add it to PYTHONPATH"
        ) from e
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ValueError(f"--task {spec}: {module_name} has no function {factory_name}")
    task = factory()
    missing = [
        name
        for name in ("init_with_state", "sample_batch", "train_loss", "evaluate")
        if not callable(getattr(task, name, None))
    ]
    if missing:
        raise ValueError(
            f"--task {spec}: {factory_name}() returned a {type(task).__name__}, not a "
            f"Task (it lacks {', '.join(missing)}); return envs.from_flax(...) or an "
            "envs.ArrayTask"
        )
    return task


def mixture_shape(spec: str) -> tuple[tuple[int, ...], str]:
    """``"128-64:gelu"`` -> ((128, 64), "gelu"); the activation defaults to relu.

    Only the ``WIDTHS[:ACTIVATION]`` form; :func:`mixture_settings` parses every
    ``--mixture`` entry (an env id with options too) and checks it fully.
    """
    widths, _, activation = spec.partition(":")
    try:
        sizes = tuple(int(w) for w in widths.split("-"))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise ValueError(
            f"--mixture entry {spec!r} must be WIDTHS[:ACTIVATION], positive widths "
            "joined by '-', e.g. 128-64:gelu"
        )
    return sizes, activation or "relu"


def _widths(value: str) -> tuple[int, ...]:
    sizes = tuple(int(w) for w in value.split("-"))
    if min(sizes) < 1:
        raise ValueError(value)
    return sizes


def _bool(value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("true", "false", "1", "0"):
        raise ValueError(value)
    return lowered in ("true", "1")


# What a ``--mixture ENV_ID:OPTION=VALUE,...`` entry may set: the task's options, each
# parsed from its text (widths joined by '-', files by '+').
_MIXTURE_OPTIONS = {
    "dataset": str,
    "task": str,
    "hidden_sizes": _widths,
    "activation": str,
    "batch_size": int,
    "augment": _bool,
    "max_shift": int,
    "noise_std": float,
    "width": int,
    "context_length": int,
    "text_files": lambda value: tuple(value.split("+")),
    "data_dir": str,
    "input_dim": int,
    "num_classes": int,
    "teacher_seed": int,
}
# EnvSettings fields that make the task; a mixture entry's are its own, the others
# (the ELO settings) it takes from the env it is mixed into.
_TASK_FIELDS = ("model", *_MIXTURE_OPTIONS)


def mixture_settings(base: EnvSettings, spec: str) -> EnvSettings:
    """The full settings of one ``--mixture`` entry, a task meta-trained beside
    ``base``'s.

    An entry is either

    - ``WIDTHS[:ACTIVATION]`` (e.g. ``128-64:gelu``): ``base``'s task with another
      MLP, the same data (:meth:`EnvSettings.reshaped`); or
    - ``ENV_ID[:OPTION=VALUE,...]`` (e.g. ``ELO-Teacher-MLP`` or
      ``ELO-Teacher-MLP:hidden_sizes=32-32,activation=tanh,teacher_seed=3``): the
      registered env id's own task and data, with these task options (``dataset``,
      ``task``, ``hidden_sizes`` as widths joined by ``-``, ``activation``,
      ``batch_size``, ``augment`` (true/false), ``max_shift``, ``noise_std``,
      ``width``, ``context_length``, ``text_files`` joined by ``+``, ``data_dir``,
      ``input_dim``, ``num_classes``, ``teacher_seed``); options not given keep the
      env id's defaults, not ``base``'s (``data_dir`` too; ``$ELO_GYM_DATA_DIR`` is
      read as usual).

    Either way the entry keeps ``base``'s ELO settings: mode, p_th, buffer, n_min /
    n_max, alpha, the BC and expert settings, the LO spec, paired, ... The task is
    built once here (from shapes and names only, no data is loaded), so that a bad
    entry fails now.

    Raises:
      ValueError: naming the entry and what is wrong with it (an unknown env id or
        option, a malformed value, an ELO setting, or a task the options cannot make).

    Example:
      >>> base = EnvSettings.from_id("ELO-Digits-MLP", p_th=0.1)
      >>> entry = mixture_settings(base, "ELO-Teacher-MLP:hidden_sizes=32-32")
      >>> entry.dataset, entry.hidden_sizes, entry.p_th
      ('teacher', (32, 32), 0.1)
    """
    head, _, rest = spec.partition(":")
    if head in registration.ENV_IDS:
        options = _mixture_options(spec, rest)
        elo = {
            f.name: getattr(base, f.name)
            for f in dataclasses.fields(base)
            if f.name not in _TASK_FIELDS
        }
        settings = EnvSettings(**{**elo, **registration.ENV_IDS[head], **options})
    elif head[:1].isdigit():
        settings = base.reshaped(spec)
    else:
        raise ValueError(
            f"--mixture entry {spec!r} must be WIDTHS[:ACTIVATION] (e.g. 128-64:gelu) "
            f"or ENV_ID[:OPTION=VALUE,...] with ENV_ID one of "
            f"{', '.join(registration.ENV_IDS)}; {head!r} is neither"
        )
    try:
        settings.build_task()
    except ValueError as e:
        raise ValueError(f"--mixture entry {spec!r}: {e}") from e
    return settings


def _mixture_options(spec: str, text: str) -> dict[str, Any]:
    """The OPTION=VALUE,... of a mixture entry, parsed (see mixture_settings)."""
    options: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ValueError(
                f"--mixture entry {spec!r}: {item!r} is not OPTION=VALUE (options "
                "are joined by ',', e.g. ELO-Teacher-MLP:hidden_sizes=32-32,"
                "activation=tanh)"
            )
        if name not in _MIXTURE_OPTIONS:
            what = (
                "an ELO setting, which every mixture task takes from the env"
                if name in {f.name for f in dataclasses.fields(EnvSettings)}
                else "not an option"
            )
            raise ValueError(
                f"--mixture entry {spec!r}: {name!r} is {what}; an entry sets task "
                f"options only: {', '.join(_MIXTURE_OPTIONS)}"
            )
        if name in options:
            raise ValueError(f"--mixture entry {spec!r} sets {name!r} twice")
        try:
            options[name] = _MIXTURE_OPTIONS[name](value)
        except ValueError:
            raise ValueError(
                f"--mixture entry {spec!r}: bad {name} {value!r}"
                + (" (positive widths joined by '-')" if name == "hidden_sizes" else "")
            ) from None
    return options
