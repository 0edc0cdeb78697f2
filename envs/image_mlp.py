"""Image-MLP task family: an MLP classifier on device-resident uint8 images.

The ELO paper meta-trains on ImageNet 32x32 with muLO's w128-d3 MLP
(3072-128-128-128-1000, 555,368 parameters, batch 4096); the offline default is
a 64-32-32-10 MLP (3,466 parameters) on scikit-learn's 8x8 digits.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from . import datasets
from .augment import augment as augment_images

# Flax params: {"Dense_0": {"kernel": (in, out), "bias": (out,)}, ...}, float32.
Params = dict[str, dict[str, jax.Array]]
Batch = tuple[jax.Array, jax.Array]  # images (B, H, W, C) uint8, labels (B,) int32

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "gelu": nn.gelu,
    "tanh": jnp.tanh,
    "silu": nn.silu,
}


class _MLP(nn.Module):
    """Dense layers of `hidden_sizes` with `activation`, then a linear classifier."""

    hidden_sizes: tuple[int, ...]
    activation: str
    num_classes: int

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        # uint8 pixels -> [-0.5, 0.5]: one fixed scaling for every dataset, so the
        # model needs no dataset statistics.
        x = images.astype(jnp.float32) / 255.0 - 0.5
        x = x.reshape(x.shape[0], -1)
        for size in self.hidden_sizes:
            x = ACTIVATIONS[self.activation](nn.Dense(size)(x))
        return nn.Dense(self.num_classes)(x)


@dataclasses.dataclass(frozen=True)
class ImageMLPTask:
    """An MLP classifying images of one dataset; hashable, so static under jit.

    Holds no arrays: the data comes from `load_data()` and is passed explicitly
    to `sample_batch` and `evaluate`. Build one with `make_image_mlp_task`.
    """

    dataset: str  # a name in datasets.DATASETS
    hidden_sizes: tuple[int, ...]  # widths of the hidden layers
    activation: str  # a name in ACTIVATIONS
    batch_size: int  # training batch size
    augment: bool  # augment training batches (flip/shift/noise below)
    flip: bool  # random horizontal flips
    max_shift: int  # random translations of up to this many pixels
    noise_std: float  # Gaussian pixel noise, in units of the intensity range
    data_dir: str | None = None  # where datasets read from disk live

    def __post_init__(self) -> None:
        datasets.dataset_info(self.dataset)
        # Normalize lists to tuples so that the task stays hashable.
        object.__setattr__(self, "hidden_sizes", tuple(self.hidden_sizes))
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"Unknown activation {self.activation!r}; "
                f"valid activations: {list(ACTIVATIONS)}."
            )
        if not all(isinstance(h, int) and h > 0 for h in self.hidden_sizes):
            raise ValueError(
                f"hidden_sizes must be positive ints, got {self.hidden_sizes}."
            )
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}.")
        if self.max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {self.max_shift}.")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}.")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the dataset's images."""
        return datasets.dataset_info(self.dataset).image_shape

    @property
    def num_classes(self) -> int:
        """Number of classes of the dataset."""
        return datasets.dataset_info(self.dataset).num_classes

    def _model(self) -> _MLP:
        return _MLP(self.hidden_sizes, self.activation, self.num_classes)

    def init(self, key: jax.Array) -> Params:
        """Fresh float32 params: LeCun-normal kernels, zero biases."""
        dummy = jnp.zeros((1, *self.image_shape), jnp.uint8)
        return self._model().init(key, dummy)["params"]

    def num_params(self) -> int:
        """Number of scalar parameters (computed from shapes only)."""
        shapes = jax.eval_shape(self.init, jax.random.key(0))
        return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))

    def apply(self, params: Params, images: jax.Array) -> jax.Array:
        """Logits (B, num_classes) float32 of images (B, H, W, C) uint8."""
        return self._model().apply({"params": params}, images)

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

    def loss(self, params: Params, batch: Batch) -> jax.Array:
        """Mean softmax cross-entropy of the batch, a float32 scalar."""
        return self.loss_and_accuracy(params, batch)[0]

    def loss_and_accuracy(
        self, params: Params, batch: Batch
    ) -> tuple[jax.Array, jax.Array]:
        """Mean cross-entropy and mean top-1 accuracy of the batch (scalars)."""
        losses, correct = self._per_example(params, batch)
        return losses.mean(), correct.mean()

    def evaluate(
        self,
        params: Params,
        data: datasets.ImageData,
        split: str,
        batch_size: int | None = None,
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

        Returns:
          {"loss": scalar, "accuracy": scalar}, both float32.
        """
        images, labels = data.split(split)
        num = labels.shape[0]
        batch_size = self.batch_size if batch_size is None else batch_size
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        chunk = min(batch_size, num)
        num_chunks = -(-num // chunk)

        def chunk_sums(start: jax.Array) -> tuple[jax.Array, jax.Array]:
            idx = start + jnp.arange(chunk)
            valid = idx < num
            idx = jnp.minimum(idx, num - 1)
            batch = jnp.take(images, idx, axis=0), jnp.take(labels, idx, axis=0)
            losses, correct = self._per_example(params, batch)
            losses, correct = (
                jnp.where(valid, losses, 0.0),
                jnp.where(valid, correct, 0.0),
            )
            return losses.sum(), correct.sum()

        starts = jnp.arange(num_chunks) * chunk
        loss_sums, correct_sums = lax.map(chunk_sums, starts)
        return {"loss": loss_sums.sum() / num, "accuracy": correct_sums.sum() / num}

    def _per_example(self, params: Params, batch: Batch) -> tuple[jax.Array, jax.Array]:
        """Per-example cross-entropy (B,) and correctness (B,) as float32."""
        images, labels = batch
        logits = self.apply(params, images)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
        return losses, correct


_DEFAULT_TASKS = {
    "digits": ImageMLPTask(
        dataset="digits",
        hidden_sizes=(32, 32),
        activation="relu",
        batch_size=128,
        augment=True,
        flip=False,  # digits are not mirror-symmetric
        max_shift=1,
        noise_std=0.0,
    ),
    # muLO's w128-d3 with the paper's "flipping, cropping, translation".
    "imagenet32": ImageMLPTask(
        dataset="imagenet32",
        hidden_sizes=(128, 128, 128),
        activation="relu",
        batch_size=4096,
        augment=True,
        flip=True,
        max_shift=4,
        noise_std=0.0,
    ),
}


def make_image_mlp_task(
    dataset: str = "digits",
    hidden_sizes: tuple[int, ...] | None = None,
    activation: str = "relu",
    batch_size: int | None = None,
    augment: bool | None = None,
    *,
    flip: bool | None = None,
    max_shift: int | None = None,
    noise_std: float | None = None,
    data_dir: str | None = None,
) -> ImageMLPTask:
    """Builds an `ImageMLPTask`; arguments left None take the dataset's defaults.

    Defaults: digits: hidden (32, 32), batch 128, augment with 1-pixel shifts
    and no flips. imagenet32: hidden (128, 128, 128), batch 4096, augment with
    flips and 4-pixel shifts (pad-4 random crop). No noise by default.

    Example:
      >>> task = make_image_mlp_task("digits")
      >>> task.num_params()
      3466
    """
    datasets.dataset_info(dataset)  # Unknown names fail here with the usual message.
    overrides = {
        "hidden_sizes": hidden_sizes,
        "activation": activation,
        "batch_size": batch_size,
        "augment": augment,
        "flip": flip,
        "max_shift": max_shift,
        "noise_std": noise_std,
        "data_dir": data_dir,
    }
    return dataclasses.replace(
        _DEFAULT_TASKS[dataset], **{k: v for k, v in overrides.items() if v is not None}
    )
