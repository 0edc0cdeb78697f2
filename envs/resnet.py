"""ResNet-18 task family: the paper's out-of-distribution vision task (ELO Fig. 4).

ResNet-18 (He et al., 2016) in its small-image form: a 3x3 stride-1 stem and no
max-pool (32x32 inputs would be 8x8 after ImageNet's 7x7/2 stem and pool), then four
stages of two basic blocks with widths w, 2w, 4w, 8w (w = 64: 11,681,832 parameters
with 1000 classes) and strides 1, 2, 2, 2, global average pooling and a linear
classifier. BatchNorm statistics are non-trainable model state (the flax
``batch_stats`` collection): an optimizer never sees them, training updates them
(momentum 0.9, PyTorch's 0.1) and inference uses them.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax

from .image_task import ImageClassificationTask, scale_pixels, task_with_overrides

# He-normal over fan-out, torchvision's ResNet init for convolutions.
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
STAGE_BLOCKS = (2, 2, 2, 2)  # basic blocks per stage: ResNet-18
STAGE_STRIDES = (1, 2, 2, 2)


class _BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a residual (1x1 conv-BN when the shape changes)."""

    features: int
    strides: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        norm = functools.partial(
            nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5
        )
        conv = functools.partial(nn.Conv, use_bias=False, kernel_init=_CONV_INIT)
        y = conv(self.features, (3, 3), self.strides, padding=1)(x)
        y = nn.relu(norm()(y))
        y = conv(self.features, (3, 3), padding=1)(y)
        y = norm()(y)
        if x.shape != y.shape:
            x = norm()(conv(self.features, (1, 1), self.strides)(x))
        return nn.relu(x + y)


class ResNet18(nn.Module):
    """ResNet-18 for small images; ``width`` is the first stage's channel count."""

    num_classes: int
    width: int = 64

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        x = scale_pixels(images)
        x = nn.Conv(
            self.width, (3, 3), padding=1, use_bias=False, kernel_init=_CONV_INIT
        )(x)
        x = nn.relu(
            nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
        )
        for stage, (blocks, stride) in enumerate(
            zip(STAGE_BLOCKS, STAGE_STRIDES, strict=True)
        ):
            for block in range(blocks):
                x = _BasicBlock(self.width * 2**stage, stride if block == 0 else 1)(
                    x, train
                )
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResNetTask(ImageClassificationTask):
    """ResNet-18 classifying one dataset's images; hashable, holds no arrays.

    Its BatchNorm statistics are model state: get them with `init_with_state`,
    carry them through `train_loss`, pass them to `evaluate`.
    """

    width: int = 64  # channels of the first stage (64: the standard ResNet-18)

    model_name = "resnet18"
    cpu_step_loop = "host"  # convolutions: see Task.cpu_step_loop

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.width, int) or self.width <= 0:
            raise ValueError(f"width must be a positive int, got {self.width}.")

    @property
    def has_model_state(self) -> bool:
        return True

    def _module(self) -> ResNet18:
        return ResNet18(self.num_classes, self.width)


def make_resnet_task(
    dataset: str = "imagenet32",
    *,
    width: int | None = None,
    batch_size: int | None = None,
    augment: bool | None = None,
    flip: bool | None = None,
    max_shift: int | None = None,
    noise_std: float | None = None,
    data_dir: str | None = None,
) -> ResNetTask:
    """Builds a `ResNetTask`; arguments left None take the dataset's defaults.

    Defaults: imagenet32: width 64, batch 4096, flips and 4-pixel shifts (the
    paper's augmentations); digits: width 64, batch 128, 1-pixel shifts.

    Example:
      >>> make_resnet_task("imagenet32").num_params()
      11681832
    """
    return task_with_overrides(
        ResNetTask,
        {},
        dataset,
        width=width,
        batch_size=batch_size,
        augment=augment,
        flip=flip,
        max_shift=max_shift,
        noise_std=noise_std,
        data_dir=data_dir,
    )
