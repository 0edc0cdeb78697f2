"""Per-image data augmentation in pure JAX: flip, translate, noise."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def augment(
    key: jax.Array,
    images: jax.Array,
    *,
    flip: bool,
    max_shift: int,
    noise_std: float = 0.0,
) -> jax.Array:
    """Randomly flips, translates and perturbs each image of a batch independently.

    Jittable and vmappable; the keyword settings are static Python values. With
    every setting off, the images are returned unchanged.

    - flip: mirror left-right with probability 1/2.
    - max_shift: translate by (dy, dx), each uniform in [-max_shift, max_shift],
      filling uncovered pixels with zeros (pad with zeros, then random crop).
    - noise_std: add Gaussian noise with this standard deviation, in units of
      the full intensity range (255 for uint8 images, 1 for float images).

    Args:
      key: PRNG key.
      images: (B, H, W, C) batch, uint8 or float.
      flip: whether to apply random horizontal flips.
      max_shift: largest translation in pixels; 0 disables translation.
      noise_std: standard deviation of the additive noise; 0 disables it.

    Returns:
      (B, H, W, C) images of the input dtype (uint8 results are rounded and
      clipped to [0, 255]).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, H, W, C), got shape {images.shape}.")
    if max_shift < 0 or noise_std < 0:
        raise ValueError(
            f"max_shift and noise_std must be >= 0, got {max_shift}, {noise_std}."
        )
    key_flip, key_shift, key_noise = jax.random.split(key, 3)
    if flip:
        images = _random_flip(key_flip, images)
    if max_shift > 0:
        images = _random_translate(key_shift, images, max_shift)
    if noise_std > 0:
        images = _add_noise(key_noise, images, noise_std)
    return images


def _random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    do_flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(do_flip, images[:, :, ::-1, :], images)


def _random_translate(key: jax.Array, images: jax.Array, max_shift: int) -> jax.Array:
    batch, height, width, channels = images.shape
    pad = ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0))
    padded = jnp.pad(images, pad)
    # Crop offset o in [0, 2 * max_shift] moves the content by max_shift - o.
    offsets = jax.random.randint(key, (batch, 2), 0, 2 * max_shift + 1)

    def crop(image: jax.Array, offset: jax.Array) -> jax.Array:
        start = (offset[0], offset[1], 0)
        return lax.dynamic_slice(image, start, (height, width, channels))

    return jax.vmap(crop)(padded, offsets)


def _add_noise(key: jax.Array, images: jax.Array, noise_std: float) -> jax.Array:
    is_uint8 = images.dtype == jnp.uint8
    scale = 255.0 * noise_std if is_uint8 else noise_std
    noise = scale * jax.random.normal(key, images.shape)
    if is_uint8:
        noisy = jnp.round(images.astype(jnp.float32) + noise)
        return jnp.clip(noisy, 0, 255).astype(jnp.uint8)
    return images + noise.astype(images.dtype)
