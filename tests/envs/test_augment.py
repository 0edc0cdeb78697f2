"""Tests for envs/augment.py: per-image flip, translate and noise in JAX."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from elo_gym.envs.augment import augment


def _images(dtype=jnp.uint8, batch: int = 64) -> jax.Array:
    # Strictly positive pixels, so that zero padding is recognizable.
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.integers(1, 256, (batch, 6, 5, 2)), dtype)


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.float32])
def test_all_off_is_identity(dtype) -> None:
    images = _images(dtype)
    out = augment(jax.random.key(0), images, flip=False, max_shift=0)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, images)


@pytest.mark.parametrize(
    "settings",
    [
        {"flip": True, "max_shift": 0},
        {"flip": False, "max_shift": 2},
        {"flip": True, "max_shift": 1, "noise_std": 0.1},
    ],
)
@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.float32])
def test_jit_keeps_shape_and_dtype(settings, dtype) -> None:
    images = _images(dtype)
    run = jax.jit(functools.partial(augment, **settings))
    out = run(jax.random.key(1), images)
    assert out.shape == images.shape and out.dtype == dtype
    assert bool(jnp.all(jnp.isfinite(out.astype(jnp.float32))))
    np.testing.assert_array_equal(out, run(jax.random.key(1), images))


def test_flip_is_exact_mirror_per_image() -> None:
    images = _images()
    out = augment(jax.random.key(2), images, flip=True, max_shift=0)
    mirrored = images[:, :, ::-1, :]
    flipped = jnp.all(out == mirrored, axis=(1, 2, 3))
    kept = jnp.all(out == images, axis=(1, 2, 3))
    assert bool(jnp.all(flipped | kept))
    # Decided per image: with 64 images both outcomes occur.
    assert bool(jnp.any(flipped & ~kept)) and bool(jnp.any(kept & ~flipped))


def _src(shift: int, size: int) -> slice:
    """Source rows/columns that stay inside the image after moving by `shift`."""
    return slice(max(-shift, 0), size - max(shift, 0))


def _dst(shift: int, size: int) -> slice:
    """Where those rows/columns land."""
    return slice(max(shift, 0), size + min(shift, 0))


def test_shift_translates_with_zero_fill() -> None:
    images = _images()
    max_shift = 2
    out = np.asarray(
        augment(jax.random.key(3), images, flip=False, max_shift=max_shift)
    )
    src = np.asarray(images)
    height, width = src.shape[1:3]
    seen = set()
    for image, moved in zip(src, out):
        # Find the shift (dy, dx) that explains the output exactly.
        matches = []
        for dy in range(-max_shift, max_shift + 1):
            for dx in range(-max_shift, max_shift + 1):
                expected = np.zeros_like(image)
                expected[_dst(dy, height), _dst(dx, width)] = image[
                    _src(dy, height), _src(dx, width)
                ]
                if np.array_equal(moved, expected):
                    matches.append((dy, dx))
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 5  # shifts vary from image to image


def test_noise_statistics_and_uint8_clipping() -> None:
    noise = jax.jit(functools.partial(augment, flip=False, max_shift=0, noise_std=0.1))
    images = jnp.full((256, 8, 8, 1), 0.5, jnp.float32)
    out = noise(jax.random.key(4), images)
    assert abs(float(jnp.std(out - images)) - 0.1) < 0.01
    dark = jnp.zeros((16, 8, 8, 1), jnp.uint8)
    noisy = noise(jax.random.key(5), dark)
    assert noisy.dtype == jnp.uint8
    assert int(noisy.max()) > 0  # positive noise survives, negative is clipped


def test_vmap_over_copies() -> None:
    images = jnp.stack([_images(batch=8), _images(batch=8)])
    keys = jax.random.split(jax.random.key(6), 2)
    run = jax.jit(jax.vmap(functools.partial(augment, flip=True, max_shift=1)))
    out = run(keys, images)
    assert out.shape == images.shape
    for i in range(2):
        single = augment(keys[i], images[i], flip=True, max_shift=1)
        np.testing.assert_array_equal(out[i], single)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="B, H, W, C"):
        augment(jax.random.key(0), jnp.zeros((8, 8, 1)), flip=True, max_shift=1)
    with pytest.raises(ValueError, match="max_shift"):
        augment(jax.random.key(0), _images(), flip=False, max_shift=-1)
