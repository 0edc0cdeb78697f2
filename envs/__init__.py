"""Optimizee tasks: device-resident datasets, augmentation and task families.

Everything here is pure JAX over explicit arrays and keys, and imports nothing
from `elo_gym` or `agents`. Families: image MLP and ResNet-18 (`digits`,
`imagenet32`), an MLP learning a random teacher's labels (`teacher`, infinite data),
GPT-2-mini (`fineweb` token shards, `text` files as bytes, `pysource`: Python's
standard library as bytes); all implement `tasks.Task` and are built by `make_task`.
`from_flax` / `ArrayTask` make a `Task` of your own model, loss and arrays (env
ELO-Task).
"""

from .array_task import ArrayTask, from_flax, top1_accuracy
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
from .image_task import ImageClassificationTask
from .language_model import LanguageModelTask, make_lm_task
from .resnet import ResNetTask, make_resnet_task
from .tasks import MODELS, Task, make_task
from .teacher import TeacherData, TeacherTask, make_teacher_task
from .tokens import (
    TokenData,
    load_fineweb,
    load_python_source,
    load_text,
    python_source_files,
    write_token_shard,
)

__all__ = [
    "ACTIVATIONS",
    "ArrayTask",
    "DATASETS",
    "DATA_DIR_ENV",
    "MODELS",
    "SPLITS",
    "DatasetNotFoundError",
    "DatasetSpec",
    "ImageClassificationTask",
    "ImageData",
    "ImageMLPTask",
    "LanguageModelTask",
    "ResNetTask",
    "Task",
    "TeacherData",
    "TeacherTask",
    "TokenData",
    "augment",
    "dataset_info",
    "from_flax",
    "load_dataset",
    "load_fineweb",
    "load_python_source",
    "load_text",
    "make_image_mlp_task",
    "make_lm_task",
    "make_resnet_task",
    "make_teacher_task",
    "make_task",
    "python_source_files",
    "sample_batch",
    "top1_accuracy",
    "write_token_shard",
]
