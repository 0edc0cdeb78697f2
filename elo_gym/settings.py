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

from elo_gym import core, envs, registration
from elo_gym.lo_spec import LOSpec


@dataclasses.dataclass(frozen=True)
class EnvSettings:
    """What an ELO env id is made from: keyword arguments of ``gymnasium.make``."""

    model: str = "mlp"  # task family: "mlp", "resnet18", "gpt2mini"; "custom": task
    # ELO-Task: a Task object (e.g. envs.from_flax(...)) or its "package.module:factory"
    task: envs.Task | str | None = None
    dataset: str = "digits"  # digits, imagenet32 (image models); fineweb, text (LM)
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
    expert_learning_rate: float = 1e-3  # the demonstrator Adam's lr (the paper's)
    expert_decay_steps: float = 0.0  # > 0: the expert's lr decays as 1/sqrt(1 + n/tau)
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
        """These settings with the optimizee MLP of a ``--mixture`` entry
        (:func:`mixture_shape`): the same dataset and numbers, another network."""
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
            expert_learning_rate=self.expert_learning_rate,
            expert_decay_steps=self.expert_decay_steps,
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
    """``"128-64:gelu"`` -> ((128, 64), "gelu"); the activation defaults to relu."""
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
