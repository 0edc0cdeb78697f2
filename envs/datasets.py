"""Device-resident uint8 image datasets: bundled 8x8 digits and ImageNet 32x32.

A dataset is loaded once on the host, then lives on the device as uint8 arrays
(`ImageData`); batches are drawn with `jax.random` inside jitted code
(`sample_batch`), so no host data pipeline runs in the hot loop.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

SPLITS = ("train", "valid", "test")
DATA_DIR_ENV = "ELO_GYM_DATA_DIR"

_TFDS_NAME = "imagenet_resized/32x32"
_NPZ_TRAIN_FILES = tuple(f"train_data_batch_{i}.npz" for i in range(1, 11))
_NPZ_VAL_FILE = "val_data.npz"
# Records per `__getitems__` call when reading tfds: large enough to amortize the
# call, small enough to keep the decoded Python objects of one chunk cheap.
_TFDS_CHUNK = 8192


class DatasetSpec(NamedTuple):
    """Static description of a dataset: image shape and number of classes."""

    image_shape: tuple[int, int, int]  # (H, W, C)
    num_classes: int


DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(image_shape=(8, 8, 1), num_classes=10),
    "imagenet32": DatasetSpec(image_shape=(32, 32, 3), num_classes=1000),
}

# Size of the validation split carved from the end of the training data.
_DEFAULT_NUM_VALID = {"digits": 300, "imagenet32": 10_000}
_DIGITS_NUM_TEST = 300


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing; the message says how to prepare them."""


@flax.struct.dataclass
class ImageData:
    """Train/valid/test image splits held on the device as uint8."""

    train_x: jax.Array  # (N_train, H, W, C) uint8
    train_y: jax.Array  # (N_train,) int32, in [0, num_classes)
    valid_x: jax.Array  # (N_valid, H, W, C) uint8
    valid_y: jax.Array  # (N_valid,) int32
    test_x: jax.Array  # (N_test, H, W, C) uint8
    test_y: jax.Array  # (N_test,) int32

    def split(self, name: str) -> tuple[jax.Array, jax.Array]:
        """Returns `(images, labels)` of split `name` ("train", "valid" or "test")."""
        if name not in SPLITS:
            raise ValueError(f"Unknown split {name!r}; valid splits: {list(SPLITS)}.")
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")


def dataset_info(name: str) -> DatasetSpec:
    """Returns `(image_shape, num_classes)` of dataset `name`.

    Raises:
      ValueError: `name` is not a known dataset.
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; valid datasets: {list(DATASETS)}.")
    return DATASETS[name]


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    max_train_examples: int | None = None,
    num_valid: int | None = None,
) -> ImageData:
    """Loads dataset `name` from the host and puts it on the default device as uint8.

    Splits: "digits" (scikit-learn's bundled 1,797 images, offline) is permuted
    with a fixed seed and cut into 1,197 train / 300 valid / 300 test. For
    "imagenet32", train is the source's training set minus its last `num_valid`
    (10,000) examples, valid is those last examples, and test is the official
    50,000-image validation set. Nothing is ever downloaded.

    "imagenet32" is read from `data_dir` (default: `$ELO_GYM_DATA_DIR`), which
    holds either a tensorflow-datasets `imagenet_resized/32x32` prepared in
    array_record format (read with `tfds.data_source`; preferred when both are
    present) or the official Imagenet32 npz files (`train_data_batch_1.npz` ..
    `train_data_batch_10.npz`, `val_data.npz`).

    Args:
      name: one of `DATASETS`.
      data_dir: folder with the dataset files; unused by "digits" (bundled).
      max_train_examples: keep only the first this many training examples (for
        tests and smoke runs); the valid and test splits are unchanged.
      num_valid: size of the validation split (default 300 for digits, 10,000
        for imagenet32).

    Returns:
      The splits as device arrays: images (N, H, W, C) uint8, labels (N,) int32.

    Raises:
      ValueError: unknown `name` or bad sizes.
      DatasetNotFoundError: the files of "imagenet32" are missing.
    """
    dataset_info(name)
    if max_train_examples is not None and max_train_examples <= 0:
        raise ValueError(
            f"max_train_examples must be positive, got {max_train_examples}."
        )
    num_valid = _DEFAULT_NUM_VALID[name] if num_valid is None else num_valid
    if num_valid <= 0:
        raise ValueError(f"num_valid must be positive, got {num_valid}.")
    if name == "digits":
        splits = _load_digits(num_valid, max_train_examples)
    else:
        splits = _load_imagenet32(
            _resolve_data_dir(data_dir), num_valid, max_train_examples
        )
    return jax.device_put(ImageData(*splits))


def sample_batch(
    data: ImageData, key: jax.Array, batch_size: int, split: str = "train"
) -> tuple[jax.Array, jax.Array]:
    """Draws `batch_size` examples of `split` uniformly, with replacement.

    Pure and jittable (`batch_size` and `split` static).

    Returns:
      images (batch_size, H, W, C) uint8 and labels (batch_size,) int32.
    """
    images, labels = data.split(split)
    idx = jax.random.randint(key, (batch_size,), 0, labels.shape[0])
    return jnp.take(images, idx, axis=0), jnp.take(labels, idx, axis=0)


_Splits = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _cut_train_valid(
    n: int, num_valid: int, max_train_examples: int | None, what: str
) -> tuple[range, range]:
    """Index ranges of train (capped) and valid (the last `num_valid`) out of `n`."""
    if num_valid >= n:
        raise ValueError(
            f"num_valid={num_valid} leaves no training data in {what} ({n})."
        )
    num_train = n - num_valid
    if max_train_examples is not None:
        num_train = min(num_train, max_train_examples)
    return range(num_train), range(n - num_valid, n)


def _load_digits(num_valid: int, max_train_examples: int | None) -> _Splits:
    """scikit-learn's 8x8 digits: pixel values 0..16 rescaled to uint8 0..255."""
    import sklearn.datasets  # Deferred: only this dataset needs scikit-learn.

    x, y = sklearn.datasets.load_digits(return_X_y=True)
    x = np.round(x * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 8, 8, 1)
    y = y.astype(np.int32)
    perm = np.random.default_rng(0).permutation(len(y))
    pool, test = perm[:-_DIGITS_NUM_TEST], perm[-_DIGITS_NUM_TEST:]
    train, valid = _cut_train_valid(len(pool), num_valid, max_train_examples, "digits")
    train, valid = pool[train.start : train.stop], pool[valid.start : valid.stop]
    return x[train], y[train], x[valid], y[valid], x[test], y[test]


def _resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> pathlib.Path:
    """`data_dir`, else `$ELO_GYM_DATA_DIR`; an error says how to set either."""
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV)
    if data_dir is None:
        raise DatasetNotFoundError(
            f"Dataset 'imagenet32' needs a data directory: pass data_dir or set "
            f"${DATA_DIR_ENV}.\n{_how_to_prepare('DIR')}"
        )
    return pathlib.Path(data_dir).expanduser()


def _how_to_prepare(data_dir: str) -> str:
    """Instructions for preparing ImageNet 32x32 offline in `data_dir`."""
    return (
        "To prepare it (nothing is downloaded at run time), do one of:\n"
        "  (a) tensorflow-datasets: on a machine with TensorFlow, with the archives\n"
        "      Imagenet32_train_npz.zip and Imagenet32_val_npz.zip in a folder ZIPS,\n"
        f"      run `tfds build {_TFDS_NAME} --data_dir {data_dir} "
        "--manual_dir ZIPS --file_format array_record`;\n"
        f"      or copy a prepared tfds folder {_TFDS_NAME}/ into {data_dir}/;\n"
        f"  (b) npz: put the official Imagenet32 npz files ({_NPZ_TRAIN_FILES[0]} .. "
        f"{_NPZ_TRAIN_FILES[-1]}, {_NPZ_VAL_FILE}) directly in {data_dir}."
    )


def _load_imagenet32(
    data_dir: pathlib.Path, num_valid: int, max_train_examples: int | None
) -> _Splits:
    """ImageNet 32x32 from a prepared tfds folder or the official npz files."""
    if any((data_dir / _TFDS_NAME).glob("*/dataset_info.json")):
        return _load_imagenet32_tfds(data_dir, num_valid, max_train_examples)
    npz_files = [data_dir / f for f in (*_NPZ_TRAIN_FILES, _NPZ_VAL_FILE)]
    missing = [p.name for p in npz_files if not p.is_file()]
    if not missing:
        return _load_imagenet32_npz(data_dir, num_valid, max_train_examples)
    found = "" if len(missing) == len(npz_files) else f" (missing npz: {missing})"
    raise DatasetNotFoundError(
        f"Dataset 'imagenet32' not found in {data_dir}: no prepared tfds "
        f"{_TFDS_NAME} and no complete set of Imagenet32 npz files{found}.\n"
        f"{_how_to_prepare(str(data_dir))}"
    )


def _load_imagenet32_tfds(
    data_dir: pathlib.Path, num_valid: int, max_train_examples: int | None
) -> _Splits:
    """Reads a prepared tfds `imagenet_resized/32x32` with `tfds.data_source`."""
    # Deferred: tensorflow_datasets is slow to import and only this path needs it.
    import tensorflow_datasets as tfds

    def source(split: str) -> Sequence[dict[str, np.ndarray]]:
        return tfds.data_source(
            _TFDS_NAME, split=split, data_dir=data_dir, download=False
        )

    train_source, test_source = source("train"), source("validation")
    train, valid = _cut_train_valid(
        len(train_source), num_valid, max_train_examples, _TFDS_NAME
    )
    return (
        *_read_tfds(train_source, train, "train"),
        *_read_tfds(train_source, valid, "valid"),
        *_read_tfds(test_source, range(len(test_source)), "test"),
    )


def _read_tfds(
    source: Sequence[dict[str, np.ndarray]], indices: range, desc: str
) -> tuple[np.ndarray, np.ndarray]:
    """Records `indices` of a tfds data source, read in chunks into numpy arrays."""
    images = np.empty((len(indices), *DATASETS["imagenet32"].image_shape), np.uint8)
    labels = np.empty((len(indices),), np.int32)
    bar = tqdm.tqdm(total=len(indices), desc=f"imagenet32 {desc}", unit="img")
    with bar:
        for start in range(0, len(indices), _TFDS_CHUNK):
            keys = indices[start : start + _TFDS_CHUNK]
            for i, record in enumerate(source.__getitems__(list(keys)), start):
                images[i] = record["image"]
                labels[i] = record["label"]
            bar.update(len(keys))
    return images, labels


def _load_imagenet32_npz(
    data_dir: pathlib.Path, num_valid: int, max_train_examples: int | None
) -> _Splits:
    """Reads the official Imagenet32 npz files (channel-planar rows, 1-based labels)."""
    train_files = [data_dir / f for f in _NPZ_TRAIN_FILES]
    # Labels are small and npz members load one by one: count rows without images.
    lengths = [len(_npz_member(path, "labels")) for path in train_files]
    train, valid = _cut_train_valid(sum(lengths), num_valid, max_train_examples, "npz")
    val_file = data_dir / _NPZ_VAL_FILE
    return (
        *_read_npz_rows(train_files, lengths, train, "train"),
        *_read_npz_rows(train_files, lengths, valid, "valid"),
        *_read_npz_rows(
            [val_file], [len(_npz_member(val_file, "labels"))], None, "test"
        ),
    )


def _npz_member(path: pathlib.Path, member: str) -> np.ndarray:
    with np.load(path) as npz:
        return npz[member]


def _read_npz_rows(
    paths: Sequence[pathlib.Path], lengths: Sequence[int], rows: range | None, desc: str
) -> tuple[np.ndarray, np.ndarray]:
    """Rows `rows` (all if None) of the concatenated npz files, as HWC and 0-based."""
    rows = range(sum(lengths)) if rows is None else rows
    images, labels = [], []
    offset = 0
    for path, n in zip(
        tqdm.tqdm(paths, desc=f"imagenet32 {desc}", unit="file"), lengths
    ):
        lo, hi = max(rows.start - offset, 0), min(rows.stop - offset, n)
        offset += n
        if lo >= hi:
            continue
        with np.load(path) as npz:
            planar = npz["data"][lo:hi].reshape(-1, 3, 32, 32)
            images.append(planar.transpose(0, 2, 3, 1).astype(np.uint8))
            labels.append(np.asarray(npz["labels"][lo:hi], np.int32) - 1)
    return np.concatenate(images), np.concatenate(labels)
