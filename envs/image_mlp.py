"""Image-MLP task family: an MLP classifier on device-resident uint8 images.

The ELO paper meta-trains on ImageNet 32x32 with muLO's w128-d3 MLP
(3072-128-128-128-1000, 555,368 parameters, batch 4096); the offline default is
a 64-32-32-10 MLP (3,466 parameters) on scikit-learn's 8x8 digits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from .image_task import ImageClassificationTask, scale_pixels, task_with_overrides

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
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        del train  # no dropout or normalization statistics
        x = scale_pixels(images)
        x = x.reshape(x.shape[0], -1)
        for size in self.hidden_sizes:
            x = ACTIVATIONS[self.activation](nn.Dense(size)(x))
        return nn.Dense(self.num_classes)(x)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageMLPTask(ImageClassificationTask):
    """An MLP classifying images of one dataset; hashable, so static under jit.

    Holds no arrays: the data comes from `load_data()` and is passed explicitly
    to `sample_batch` and `evaluate`. Build one with `make_image_mlp_task`. The
    model has no non-trainable state (`init_with_state` returns `{}` for it).
    """

    hidden_sizes: tuple[int, ...]  # widths of the hidden layers
    activation: str  # a name in ACTIVATIONS

    model_name = "mlp"

    def __post_init__(self) -> None:
        super().__post_init__()
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

    def _module(self) -> _MLP:
        return _MLP(self.hidden_sizes, self.activation, self.num_classes)


# imagenet32: muLO's w128-d3 (its augmentations: image_task.DATASET_DEFAULTS).
_HIDDEN_SIZES = {
    "digits": dict(hidden_sizes=(32, 32)),
    "imagenet32": dict(hidden_sizes=(128, 128, 128)),
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
    return task_with_overrides(
        ImageMLPTask,
        _HIDDEN_SIZES,
        dataset,
        hidden_sizes=hidden_sizes,
        activation=activation,
        batch_size=batch_size,
        augment=augment,
        flip=flip,
        max_shift=max_shift,
        noise_std=noise_std,
        data_dir=data_dir,
    )
