"""Tests for envs/datasets.py: digits offline, ImageNet 32x32 from tfds and npz."""

import io
import pathlib
import socket

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
import sklearn.datasets
import tensorflow_datasets as tfds
from array_record.python import array_record_module
from tensorflow_datasets.testing import mocking

from elo_gym.envs import datasets

TFDS_NAME = "imagenet_resized/32x32"


@pytest.fixture(scope="module")
def digits() -> datasets.ImageData:
    return datasets.load_dataset("digits")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes any attempt to open a socket fail the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_dataset_info() -> None:
    assert datasets.dataset_info("digits") == ((8, 8, 1), 10)
    image_shape, num_classes = datasets.dataset_info("imagenet32")
    assert (image_shape, num_classes) == ((32, 32, 3), 1000)
    with pytest.raises(ValueError, match=r"'mnist'.*digits.*imagenet32"):
        datasets.dataset_info("mnist")


def test_digits_shapes_dtypes_and_splits(digits: datasets.ImageData) -> None:
    expected = {"train": 1197, "valid": 300, "test": 300}
    for split, n in expected.items():
        x, y = digits.split(split)
        assert isinstance(x, jax.Array) and isinstance(y, jax.Array)
        assert x.shape == (n, 8, 8, 1) and x.dtype == jnp.uint8
        assert y.shape == (n,) and y.dtype == jnp.int32
        assert int(y.min()) >= 0 and int(y.max()) <= 9
    assert int(digits.train_x.max()) == 255  # 16 -> 255


def test_digits_split_is_deterministic_and_a_partition(
    digits: datasets.ImageData,
) -> None:
    again = datasets.load_dataset("digits")
    for a, b in zip(jax.tree.leaves(digits), jax.tree.leaves(again)):
        np.testing.assert_array_equal(a, b)
    # Every original image appears exactly once across the three splits.
    x, y = sklearn.datasets.load_digits(return_X_y=True)
    original = sorted(
        (*np.round(xi * 255 / 16).astype(np.uint8).tolist(), yi) for xi, yi in zip(x, y)
    )
    ours = sorted(
        (*xs.reshape(-1).tolist(), int(ys))
        for split in datasets.SPLITS
        for xs, ys in zip(*jax.device_get(digits.split(split)))
    )
    assert ours == original


def test_digits_max_train_examples_and_num_valid() -> None:
    data = datasets.load_dataset("digits", max_train_examples=100, num_valid=50)
    assert data.train_x.shape[0] == 100
    assert data.valid_x.shape[0] == 50
    assert data.test_x.shape[0] == 300
    with pytest.raises(ValueError, match="max_train_examples"):
        datasets.load_dataset("digits", max_train_examples=0)


def test_unknown_split_names_valid_ones(digits: datasets.ImageData) -> None:
    with pytest.raises(ValueError, match=r"'val'.*train.*valid.*test"):
        digits.split("val")


def test_sample_batch_under_jit(digits: datasets.ImageData) -> None:
    sample = jax.jit(datasets.sample_batch, static_argnames=("batch_size", "split"))
    key = jax.random.key(0)
    x, y = sample(digits, key, batch_size=16)
    assert x.shape == (16, 8, 8, 1) and x.dtype == jnp.uint8
    assert y.shape == (16,) and y.dtype == jnp.int32
    assert bool(jnp.all((y >= 0) & (y < 10)))
    x2, y2 = sample(digits, key, batch_size=16)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    x3, _ = sample(digits, jax.random.key(1), batch_size=16)
    assert not np.array_equal(x, x3)
    # Every sampled example is a row of the requested split.
    xt, yt = jax.device_get(sample(digits, key, batch_size=8, split="test"))
    rows = {
        (*r.reshape(-1).tolist(), c)
        for r, c in zip(*jax.device_get(digits.split("test")))
    }
    assert all((*r.reshape(-1).tolist(), c) in rows for r, c in zip(xt, yt))


# ImageNet 32x32 -----------------------------------------------------------------


def _fake_imagenet(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return images, rng.integers(0, 1000, n).astype(np.int32)


def _write_npz_dir(
    root: pathlib.Path, train_sizes: list[int], num_val: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Writes official-format Imagenet32 npz files; returns the HWC images/labels."""
    train_x, train_y = _fake_imagenet(sum(train_sizes), seed=1)
    test_x, test_y = _fake_imagenet(num_val, seed=2)

    def save(name: str, x: np.ndarray, y: np.ndarray) -> None:
        planar = x.transpose(0, 3, 1, 2).reshape(len(x), 3072)  # R plane, G, B
        labels = (y + 1).tolist()  # 1-based, stored from a list as upstream
        np.savez(root / name, data=planar, labels=labels, mean=planar.mean(0))

    bounds = np.cumsum([0, *train_sizes])
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]), start=1):
        save(f"train_data_batch_{i}.npz", train_x[lo:hi], train_y[lo:hi])
    save("val_data.npz", test_x, test_y)
    return train_x, train_y, test_x, test_y


def test_imagenet32_npz_layout_and_labels(tmp_path: pathlib.Path) -> None:
    train_x, train_y, test_x, test_y = _write_npz_dir(tmp_path, [3] * 9 + [4], 5)
    data = datasets.load_dataset("imagenet32", tmp_path, num_valid=6)
    # Channel-planar rows: index c * 1024 + h * 32 + w holds channel c at (h, w).
    with np.load(tmp_path / "train_data_batch_1.npz") as npz:
        row, label = npz["data"][0], npz["labels"][0]
    image = np.asarray(data.train_x[0])
    assert image[0, 0, 0] == row[0] and image[0, 1, 0] == row[1]
    assert image[1, 0, 0] == row[32] and image[0, 0, 1] == row[1024]
    assert image[2, 3, 2] == row[2 * 1024 + 2 * 32 + 3]
    assert int(data.train_y[0]) == label - 1
    np.testing.assert_array_equal(data.train_x, train_x[:-6])
    np.testing.assert_array_equal(data.train_y, train_y[:-6])
    np.testing.assert_array_equal(data.valid_x, train_x[-6:])
    np.testing.assert_array_equal(data.valid_y, train_y[-6:])
    np.testing.assert_array_equal(data.test_x, test_x)
    np.testing.assert_array_equal(data.test_y, test_y)
    assert data.train_x.dtype == jnp.uint8 and data.train_y.dtype == jnp.int32


def test_imagenet32_npz_from_env_var_with_cap(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train_x, _, _, _ = _write_npz_dir(tmp_path, [2] * 10, 3)
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path))
    data = datasets.load_dataset("imagenet32", max_train_examples=5, num_valid=4)
    np.testing.assert_array_equal(data.train_x, train_x[:5])
    np.testing.assert_array_equal(data.valid_x, train_x[-4:])
    assert data.test_x.shape == (3, 32, 32, 3)


def _write_prepared_tfds(
    data_dir: pathlib.Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    """Writes a real array_record `imagenet_resized/32x32` as `tfds build` would.

    Records are PNG-encoded tf.Examples made with PIL (tfds' own encoder needs
    TensorFlow), with matching dataset_info.json: tfds reads this folder with no
    mocking at all.
    """
    builder = tfds.builder(TFDS_NAME, data_dir=data_dir, file_format="array_record")
    features = builder.info.features
    split_infos = []
    for split, (images, labels) in splits.items():
        template = tfds.core.ShardedFileTemplate(
            data_dir=builder.data_path,
            dataset_name=builder.name,
            split=split,
            filetype_suffix="array_record",
        )
        path = template.sharded_filepath(shard_index=0, num_shards=1)
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
        for image, label in zip(images, labels):
            png = io.BytesIO()
            PIL.Image.fromarray(image).save(png, format="PNG")
            png.seek(0)
            writer.write(features.serialize_example({"image": png, "label": label}))
        writer.close()
        split_infos.append(
            tfds.core.SplitInfo(
                name=split,
                shard_lengths=[len(images)],
                num_bytes=0,
                filename_template=template,
            )
        )
    builder.info.set_splits(tfds.core.SplitDict(split_infos))
    builder.info.write_to_directory(builder.data_path)


def test_imagenet32_prepared_tfds_dir(tmp_path: pathlib.Path, no_network) -> None:
    train_x, train_y = _fake_imagenet(23, seed=3)
    test_x, test_y = _fake_imagenet(7, seed=4)
    _write_prepared_tfds(
        tmp_path, {"train": (train_x, train_y), "validation": (test_x, test_y)}
    )
    data = datasets.load_dataset("imagenet32", tmp_path, num_valid=5)
    np.testing.assert_array_equal(data.train_x, train_x[:18])
    np.testing.assert_array_equal(data.train_y, train_y[:18])
    np.testing.assert_array_equal(data.valid_x, train_x[18:])
    np.testing.assert_array_equal(data.valid_y, train_y[18:])
    np.testing.assert_array_equal(data.test_x, test_x)
    np.testing.assert_array_equal(data.test_y, test_y)
    assert data.train_x.dtype == jnp.uint8 and data.train_y.dtype == jnp.int32


def test_imagenet32_tfds_mock_data(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, no_network
) -> None:
    """Reads fake `imagenet_resized/32x32` examples from `tfds.testing.mock_data`.

    The folder holds the real metadata (dataset_info.json) but no records, so our
    detection sees a prepared dataset and mock_data supplies the examples behind
    `tfds.data_source`. tfds 4.9.10's mock sets `__getitems__` as a plain instance
    attribute of a MagicMock, so it is called without `self` and fails; we patch
    that helper to accept the call it actually receives.
    """
    builder = tfds.builder(TFDS_NAME, data_dir=tmp_path, file_format="array_record")
    builder.data_path.mkdir(parents=True)
    builder.info.write_to_directory(builder.data_path)

    def getitems(record_keys, generator, serialized=False):
        assert not serialized
        return [generator[k] for k in record_keys]

    monkeypatch.setattr(mocking, "_getitems", getitems)
    num_examples = 12
    with tfds.testing.mock_data(
        num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE
    ):
        data = datasets.load_dataset(
            "imagenet32", tmp_path, max_train_examples=6, num_valid=4
        )
        source = tfds.data_source(TFDS_NAME, split="train", download=False)
        expected = [source[i] for i in range(num_examples)]
    expected_x = np.stack([e["image"] for e in expected])
    expected_y = np.array([e["label"] for e in expected], np.int32)
    np.testing.assert_array_equal(data.train_x, expected_x[:6])
    np.testing.assert_array_equal(data.train_y, expected_y[:6])
    np.testing.assert_array_equal(data.valid_x, expected_x[-4:])
    np.testing.assert_array_equal(data.valid_y, expected_y[-4:])
    # mock_data serves the same examples for every split.
    np.testing.assert_array_equal(data.test_x, expected_x)
    assert data.test_y.dtype == jnp.int32
    assert int(data.test_y.max()) < 1000


def test_imagenet32_missing_data_says_how_to_prepare(
    tmp_path: pathlib.Path, no_network
) -> None:
    with pytest.raises(FileNotFoundError) as error:
        datasets.load_dataset("imagenet32", tmp_path)
    message = str(error.value)
    assert isinstance(error.value, datasets.DatasetNotFoundError)
    assert "imagenet32" in message and str(tmp_path) in message
    assert "prepare" in message
    assert "tfds build imagenet_resized/32x32" in message
    assert "train_data_batch_1.npz" in message


def test_imagenet32_incomplete_npz_lists_missing(
    tmp_path: pathlib.Path, no_network
) -> None:
    _write_npz_dir(tmp_path, [1] * 10, 1)
    (tmp_path / "train_data_batch_7.npz").unlink()
    with pytest.raises(datasets.DatasetNotFoundError, match="train_data_batch_7"):
        datasets.load_dataset("imagenet32", tmp_path)


def test_imagenet32_without_data_dir_names_env_var(
    monkeypatch: pytest.MonkeyPatch, no_network
) -> None:
    monkeypatch.delenv(datasets.DATA_DIR_ENV, raising=False)
    with pytest.raises(datasets.DatasetNotFoundError, match=datasets.DATA_DIR_ENV):
        datasets.load_dataset("imagenet32")
