"""Optimizee tasks: device-resident datasets, augmentation and task families.

Everything here is pure JAX over explicit arrays and keys, and imports nothing
from `elo_gym` or `agents`.
"""

from .augment import augment
from .datasets import (
    DATA_DIR_ENV,
    DATASETS,
    SPLITS,
    DatasetNotFoundError,
    DatasetSpec,
    ImageData,
    dataset_info,
    load_dataset,
    sample_batch,
)
from .image_mlp import ACTIVATIONS, ImageMLPTask, make_image_mlp_task

__all__ = [
    "ACTIVATIONS",
    "DATASETS",
    "DATA_DIR_ENV",
    "SPLITS",
    "DatasetNotFoundError",
    "DatasetSpec",
    "ImageData",
    "ImageMLPTask",
    "augment",
    "dataset_info",
    "load_dataset",
    "make_image_mlp_task",
    "sample_batch",
]
