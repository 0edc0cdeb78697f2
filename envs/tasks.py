"""The task interface every optimizee family implements, and one factory for all.

The env core, the agents and ``scripts/evaluate.py`` only use what :class:`Task`
lists, so a new model family plugs in by implementing it (and a line in
:data:`MODELS`). A model and data of your own need no package edit:
:func:`envs.from_flax` / :class:`envs.ArrayTask` make a Task of them, which env
``ELO-Task`` (``task=``) and the agents' ``--task package.module:factory`` take.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import jax

from .image_mlp import make_image_mlp_task
from .language_model import make_lm_task
from .resnet import make_resnet_task
from .teacher import TEACHER_DATASET, TEACHER_OPTIONS, make_teacher_task


class Task(Protocol):
    """An optimizee task: a model, its data and its loss; hashable, holds no arrays."""

    batch_size: int
    model_name: str  # "mlp", "resnet18" or "gpt2mini" (the teacher task's is "mlp")
    # How a CPU best drives this model's inner steps: "scan" (one compiled loop) or
    # "host" (a Python loop of jitted steps; XLA:CPU runs convolutions inside a
    # compiled loop about 8x slower than alone).
    cpu_step_loop: str

    @property
    def num_classes(self) -> int:
        """Classes of each prediction (the vocabulary size for a language model)."""

    @property
    def has_model_state(self) -> bool:
        """Whether the model keeps non-trainable state (e.g. BatchNorm statistics)."""

    def init(self, key: jax.Array) -> Any:
        """Fresh params: what an optimizer updates."""

    def init_with_state(self, key: jax.Array) -> tuple[Any, dict]:
        """Fresh params and the model's non-trainable state (``{}`` if none)."""

    def num_params(self) -> int:
        """Number of scalar params (from shapes only)."""

    def load_data(self) -> Any:
        """The task's dataset, loaded onto the device (host I/O; call once)."""

    def sample_batch(self, data: Any, key: jax.Array, split: str = "train") -> Any:
        """A random batch of ``split``; pure and jittable."""

    def train_loss(self, params: Any, model_state: dict, batch: Any) -> tuple:
        """(training-mode loss, updated model state); differentiate the loss."""

    def evaluate(
        self,
        params: Any,
        data: Any,
        split: str,
        batch_size: int | None = None,
        model_state: dict | None = None,
    ) -> dict[str, jax.Array]:
        """{"loss", "accuracy"} over a fixed evaluation set of ``split``."""

    def describe(self) -> dict[str, Any]:
        """Settings and size, for run configs and results files."""


_IMAGE_MLP_OPTIONS = (
    "hidden_sizes",
    "activation",
    "batch_size",
    "augment",
    "max_shift",
    "noise_std",
    "data_dir",
)


def make_mlp_task(dataset: str = "digits", **options: Any) -> Task:
    """An MLP task: on images (:func:`make_image_mlp_task`) or, for dataset
    ``"teacher"``, on a random teacher's labels (:func:`make_teacher_task`).

    Raises:
      ValueError: an option the dataset's MLP does not take (image options such as
        ``augment`` for the teacher, teacher options such as ``teacher_seed`` for
        images).
    """
    teacher = dataset == TEACHER_DATASET
    factory, accepted = (
        (make_teacher_task, TEACHER_OPTIONS)
        if teacher
        else (make_image_mlp_task, _IMAGE_MLP_OPTIONS)
    )
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"model 'mlp' on dataset {dataset!r} does not take {', '.join(unknown)}; "
            f"its options there are {', '.join(accepted)}"
        )
    return factory(dataset, **options)


# Model family -> (factory, the options it takes besides the dataset).
MODELS: dict[str, tuple[Callable[..., Task], tuple[str, ...]]] = {
    "mlp": (
        make_mlp_task,
        (
            *_IMAGE_MLP_OPTIONS,
            *(o for o in TEACHER_OPTIONS if o not in _IMAGE_MLP_OPTIONS),
        ),
    ),
    "resnet18": (make_resnet_task, ("width", "batch_size", "augment", "data_dir")),
    "gpt2mini": (
        make_lm_task,
        (
            "width",
            "context_length",
            "batch_size",
            "text_files",
            "data_dir",
            "max_train_tokens",
        ),
    ),
}


def make_task(model: str = "mlp", dataset: str = "digits", **options: Any) -> Task:
    """The task of model family ``model`` on ``dataset``; options left None keep the
    family's defaults for that dataset.

    Raises:
      ValueError: an unknown model, or an option (not None) the model does not take.

    Example:
      >>> make_task("resnet18", "digits", width=8).has_model_state
      True
    """
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; valid: {', '.join(MODELS)}")
    factory, accepted = MODELS[model]
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise ValueError(
            f"model {model!r} does not take {', '.join(unknown)}; its options are "
            f"{', '.join(accepted)}"
        )
    return factory(dataset, **given)
