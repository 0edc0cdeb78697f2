"""What every image-classification task shares: data, batches, loss and evaluation.

A task is a frozen dataclass (hashable, so static under jit) that holds no arrays.
Subclasses say which flax module they train (`_module`); this base gives them the
task interface the env core, the agents and `scripts/evaluate.py` use:

- `init(key) -> params`: what the learned optimizer updates;
- `init_with_state(key) -> (params, model_state)`: plus non-trainable state (e.g.
  BatchNorm statistics; `{}` for a model without any), kept beside the params and
  never touched by an optimizer;
- `train_loss(params, model_state, batch) -> (loss, model_state)`: the training-mode
  loss whose gradient an optimizer follows, and the updated model state;
- `evaluate(params, data, split, model_state=...)`: mean loss and accuracy over a
  whole split, in inference mode.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from . import datasets
from .augment import augment as augment_images
from .chunked_eval import chunked_means

Params = Any  # flax params pytree, float32
ModelState = dict[str, Any]  # non-trainable flax collections, e.g. {"batch_stats": ...}
Batch = tuple[jax.Array, jax.Array]  # images (B, H, W, C) uint8, labels (B,) int32


def scale_pixels(images: jax.Array) -> jax.Array:
    """uint8 pixels -> float32 in [-0.5, 0.5]: one fixed scaling for every dataset,
    so that no model needs dataset statistics."""
    return images.astype(jnp.float32) / 255.0 - 0.5


# How each dataset trains, whatever the model: batch size and augmentation.
# imagenet32 takes the paper's flips and 4-pixel shifts (pad-4 random crop); digits
# are not mirror-symmetric, so they only shift by 1 pixel.
DATASET_DEFAULTS = {
    "digits": dict(
        batch_size=128, augment=True, flip=False, max_shift=1, noise_std=0.0
    ),
    "imagenet32": dict(
        batch_size=4096, augment=True, flip=True, max_shift=4, noise_std=0.0
    ),
}


def task_with_overrides(
    task_class: type, model_defaults: dict[str, dict], dataset: str, **overrides: Any
):
    """A ``task_class`` task of ``dataset``: the dataset's :data:`DATASET_DEFAULTS`,
    then the model's defaults for it, then the overrides that are not None (an
    unknown dataset fails with the usual message)."""
    datasets.dataset_info(dataset)
    given = {k: v for k, v in overrides.items() if v is not None}
    fields = {**DATASET_DEFAULTS[dataset], **model_defaults.get(dataset, {}), **given}
    return task_class(dataset=dataset, **fields)


def require_model_state(task: Any, model_state: ModelState | None) -> ModelState:
    """`model_state`, or `{}` for a stateless task; a stateful task must get its own."""
    if model_state is not None:
        return model_state
    if task.has_model_state:
        raise ValueError(
            f"{type(task).__name__} keeps non-trainable state (BatchNorm statistics) "
            "that inference needs: pass the model_state that training returned "
            "(train_loss's second output, or EnvState.model_state)."
        )
    return {}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageClassificationTask(abc.ABC):
    """Base of the image tasks: a flax classifier of one dataset's uint8 images."""

    dataset: str  # a name in datasets.DATASETS
    batch_size: int  # training batch size
    augment: bool  # augment training batches (flip/shift/noise below)
    flip: bool  # random horizontal flips
    max_shift: int  # random translations of up to this many pixels
    noise_std: float  # Gaussian pixel noise, in units of the intensity range
    data_dir: str | None = None  # where datasets read from disk live

    model_name = "image"  # overridden by subclasses; names the family in configs
    cpu_step_loop = "scan"  # see Task.cpu_step_loop

    def __post_init__(self) -> None:
        datasets.dataset_info(self.dataset)
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}.")
        if self.max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {self.max_shift}.")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}.")

    # ------------------------------------------------------------------ the model

    @abc.abstractmethod
    def _module(self) -> nn.Module:
        """The flax module: `__call__(images uint8, train: bool) -> logits`."""

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the dataset's images."""
        return datasets.dataset_info(self.dataset).image_shape

    @property
    def num_classes(self) -> int:
        """Number of classes of the dataset."""
        return datasets.dataset_info(self.dataset).num_classes

    @property
    def has_model_state(self) -> bool:
        """Whether the model keeps non-trainable state (from shapes only)."""
        shapes = jax.eval_shape(self.init_with_state, jax.random.key(0))
        return bool(jax.tree.leaves(shapes[1]))

    def init_with_state(self, key: jax.Array) -> tuple[Params, ModelState]:
        """Fresh float32 params and the model's non-trainable state (`{}` if none)."""
        dummy = jnp.zeros((1, *self.image_shape), jnp.uint8)
        variables = dict(self._module().init(key, dummy, train=False))
        params = variables.pop("params")
        return params, variables

    def init(self, key: jax.Array) -> Params:
        """Fresh float32 params (what an optimizer updates)."""
        return self.init_with_state(key)[0]

    def num_params(self) -> int:
        """Number of scalar parameters (computed from shapes only)."""
        shapes = jax.eval_shape(self.init, jax.random.key(0))
        return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))

    def apply(
        self,
        params: Params,
        images: jax.Array,
        model_state: ModelState | None = None,
    ) -> jax.Array:
        """Inference-mode logits (B, num_classes) float32 of images (B, H, W, C)."""
        model_state = require_model_state(self, model_state)
        return self._module().apply(
            {"params": params, **model_state}, images, train=False
        )

    # ------------------------------------------------------------------ data

    def load_data(self) -> datasets.ImageData:
        """Loads the task's dataset onto the device (host I/O; call once)."""
        return datasets.load_dataset(self.dataset, self.data_dir)

    def sample_batch(
        self, data: datasets.ImageData, key: jax.Array, split: str = "train"
    ) -> Batch:
        """Draws a batch of `batch_size` examples; train batches are augmented.

        Returns:
          images (batch_size, H, W, C) uint8 and labels (batch_size,) int32.
        """
        key_sample, key_augment = jax.random.split(key)
        images, labels = datasets.sample_batch(data, key_sample, self.batch_size, split)
        if self.augment and split == "train":
            images = augment_images(
                key_augment,
                images,
                flip=self.flip,
                max_shift=self.max_shift,
                noise_std=self.noise_std,
            )
        return images, labels

    # ------------------------------------------------------------------ losses

    def train_loss(
        self, params: Params, model_state: ModelState, batch: Batch
    ) -> tuple[jax.Array, ModelState]:
        """Training-mode mean cross-entropy and the updated model state.

        BatchNorm layers normalize with the batch's statistics and fold them into
        their running averages; a stateless model returns `model_state` unchanged.
        """
        images, labels = batch
        variables = {"params": params, **model_state}
        if model_state:
            logits, model_state = self._module().apply(
                variables, images, train=True, mutable=list(model_state)
            )
        else:
            logits = self._module().apply(variables, images, train=True)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return losses.mean(), dict(model_state)

    def loss(self, params: Params, batch: Batch) -> jax.Array:
        """Training-mode mean cross-entropy of the batch, a float32 scalar (BatchNorm
        uses the batch's statistics, so no model state is needed)."""
        shapes = jax.eval_shape(self.init_with_state, jax.random.key(0))[1]
        model_state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        return self.train_loss(params, model_state, batch)[0]

    def loss_and_accuracy(
        self, params: Params, batch: Batch, model_state: ModelState | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """Inference-mode mean cross-entropy and top-1 accuracy of the batch."""
        losses, correct = self._per_example(params, batch, model_state)
        return losses.mean(), correct.mean()

    def evaluate(
        self,
        params: Params,
        data: datasets.ImageData,
        split: str,
        batch_size: int | None = None,
        model_state: ModelState | None = None,
    ) -> dict[str, jax.Array]:
        """Mean loss and accuracy over every example of `split`, exactly once.

        Jittable (`split` and `batch_size` static). The split is processed in
        `ceil(N / batch_size)` chunks of fixed size with `lax.map`; the last
        chunk repeats an example in its padding slots, which are masked out.

        Args:
          params: model params.
          data: the device-resident dataset.
          split: "train", "valid" or "test".
          batch_size: chunk size (default: the task's batch size, at most N).
          model_state: the model's non-trainable state (required if it has any).

        Returns:
          {"loss": scalar, "accuracy": scalar}, both float32.
        """
        model_state = require_model_state(self, model_state)
        images, labels = data.split(split)

        def per_example(idx: jax.Array) -> tuple[jax.Array, jax.Array]:
            batch = jnp.take(images, idx, axis=0), jnp.take(labels, idx, axis=0)
            return self._per_example(params, batch, model_state)

        batch_size = self.batch_size if batch_size is None else batch_size
        return chunked_means(per_example, labels.shape[0], batch_size)

    def _per_example(
        self, params: Params, batch: Batch, model_state: ModelState | None
    ) -> tuple[jax.Array, jax.Array]:
        """Per-example cross-entropy (B,) and correctness (B,) as float32."""
        images, labels = batch
        logits = self.apply(params, images, model_state)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
        return losses, correct

    def describe(self) -> dict[str, Any]:
        """The task's settings and size, for run configs and results files."""
        return {
            "model": self.model_name,
            **dataclasses.asdict(self),
            "num_params": self.num_params(),
        }
