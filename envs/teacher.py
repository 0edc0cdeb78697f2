"""Teacher task family: an MLP student learns a fixed random teacher's labels.

Infinite data, built offline: inputs are ``x ~ N(0, I_d)`` and each label is the
argmax of a fixed random teacher MLP (``teacher_seed``) at ``x``. Training batches are
drawn fresh from the key inside jit, so there is no finite training set to memorize;
the ``valid`` and ``test`` splits are fixed sets of ``eval_examples`` inputs drawn
from split-specific seeds, so that evaluation is deterministic. Different
``teacher_seed`` values are different tasks of one family (a task distribution).

The teacher is ``d -> 64 (tanh) -> num_classes`` with weights ``N(0, 1 / fan_in)``
and no biases: tanh is odd, so no class gets a systematic head start and the labels
stay close to balanced (every class holds a few percent or more of the examples).
Teacher, valid and test inputs come from numpy's PCG64 generator and their labels
are computed in float64 on the host, so they are the same on every machine; training
labels are computed on the device at the highest matmul precision.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .chunked_eval import chunked_means
from .image_mlp import ACTIVATIONS

Params = Any  # flax params pytree, float32
Batch = tuple[jax.Array, jax.Array]  # inputs (B, input_dim) float32, labels (B,) int32

TEACHER_DATASET = "teacher"
# The options make_teacher_task takes (envs.make_task, EnvSettings).
TEACHER_OPTIONS = (
    "hidden_sizes",
    "activation",
    "batch_size",
    "input_dim",
    "num_classes",
    "teacher_seed",
)
_EVAL_SPLITS = ("valid", "test")


@flax.struct.dataclass
class TeacherData:
    """The teacher's weights and the fixed evaluation sets, on the device.

    There is no training set: training batches are drawn from the key.
    """

    teacher: tuple[tuple[jax.Array, jax.Array], ...]  # (w, b) of each Dense layer
    valid: tuple[jax.Array, jax.Array]  # inputs (N, d) float32, labels (N,) int32
    test: tuple[jax.Array, jax.Array]

    def split(self, name: str) -> tuple[jax.Array, jax.Array]:
        """(inputs, labels) of the fixed evaluation split ``name``."""
        if name not in _EVAL_SPLITS:
            raise ValueError(
                f"the teacher task's fixed splits are {list(_EVAL_SPLITS)}, got "
                f"{name!r} (training batches are drawn fresh by sample_batch)"
            )
        return getattr(self, name)


class _StudentMLP(nn.Module):
    """Dense layers of ``hidden_sizes`` with ``activation``, then a linear readout."""

    hidden_sizes: tuple[int, ...]
    activation: str
    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # no dropout or normalization statistics
        for size in self.hidden_sizes:
            x = ACTIVATIONS[self.activation](nn.Dense(size)(x))
        return nn.Dense(self.num_classes)(x)


def _teacher_logits(layers, x, xp):
    """The teacher's logits of ``x``: tanh hidden layers, a linear readout; ``xp`` is
    numpy (host, float64) or jax.numpy (device, highest precision)."""
    for i, (w, b) in enumerate(layers):
        if xp is np:
            x = x @ w + b
        else:
            x = jnp.matmul(x, w, precision=jax.lax.Precision.HIGHEST) + b
        if i < len(layers) - 1:
            x = xp.tanh(x)
    return x


@dataclasses.dataclass(frozen=True, kw_only=True)
class TeacherTask:
    """A student MLP classifying Gaussian inputs by a random teacher's argmax.

    Hashable (static under jit) and holds no arrays: the teacher and the evaluation
    sets come from :meth:`load_data` and are passed to :meth:`sample_batch` and
    :meth:`evaluate`. Build one with :func:`make_teacher_task`. No model state.
    """

    hidden_sizes: tuple[int, ...] = (64, 64)  # the student's hidden widths
    activation: str = "relu"  # the student's, a name in ACTIVATIONS
    batch_size: int = 128
    input_dim: int = 32
    num_classes: int = 10
    teacher_seed: int = 0  # which teacher (and which valid/test inputs)
    teacher_hidden_sizes: tuple[int, ...] = (64,)
    eval_examples: int = 2048  # examples in each of valid and test

    dataset = TEACHER_DATASET
    model_name = "mlp"
    cpu_step_loop = "scan"  # see Task.cpu_step_loop
    has_model_state = False

    def __post_init__(self) -> None:
        for name in ("hidden_sizes", "teacher_hidden_sizes"):
            sizes = tuple(getattr(self, name))
            object.__setattr__(self, name, sizes)  # lists -> tuples: stays hashable
            if not all(isinstance(h, int) and h > 0 for h in sizes):
                raise ValueError(f"{name} must be positive ints, got {sizes}.")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"Unknown activation {self.activation!r}; "
                f"valid activations: {list(ACTIVATIONS)}."
            )
        for name in ("batch_size", "input_dim", "eval_examples"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {self.num_classes}")
        if not isinstance(self.teacher_seed, int) or self.teacher_seed < 0:
            raise ValueError(
                f"teacher_seed must be an int >= 0, got {self.teacher_seed}"
            )

    # ------------------------------------------------------------------ the model

    def _module(self) -> _StudentMLP:
        return _StudentMLP(self.hidden_sizes, self.activation, self.num_classes)

    def init_with_state(self, key: jax.Array) -> tuple[Params, dict]:
        """Fresh float32 params of the student and the (empty) model state."""
        dummy = jnp.zeros((1, self.input_dim), jnp.float32)
        return self._module().init(key, dummy)["params"], {}

    def init(self, key: jax.Array) -> Params:
        """Fresh float32 params of the student (what an optimizer updates)."""
        return self.init_with_state(key)[0]

    def num_params(self) -> int:
        """Number of scalar parameters of the student (from shapes only)."""
        shapes = jax.eval_shape(self.init, jax.random.key(0))
        return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))

    def apply(
        self, params: Params, inputs: jax.Array, model_state: dict | None = None
    ) -> jax.Array:
        """The student's logits (B, num_classes) of inputs (B, input_dim)."""
        del model_state  # none
        return self._module().apply({"params": params}, inputs)

    # ------------------------------------------------------------------ data

    def _rng(self, stream: int) -> np.random.Generator:
        """The host generator of one stream of this teacher: 0 the teacher's
        weights, 1 the valid inputs, 2 the test inputs."""
        return np.random.default_rng([self.teacher_seed, stream])

    def _teacher_layers(self) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        rng = self._rng(0)
        sizes = (self.input_dim, *self.teacher_hidden_sizes, self.num_classes)
        return tuple(
            (rng.normal(size=(fan_in, fan_out)) / math.sqrt(fan_in), np.zeros(fan_out))
            for fan_in, fan_out in zip(sizes[:-1], sizes[1:])
        )

    def load_data(self) -> TeacherData:
        """The teacher and the fixed valid and test sets, on the device (host work
        of a few milliseconds, no I/O)."""
        layers = self._teacher_layers()
        splits = []
        for stream in (1, 2):
            x = self._rng(stream).normal(size=(self.eval_examples, self.input_dim))
            labels = _teacher_logits(layers, x, np).argmax(axis=-1)
            splits.append((x.astype(np.float32), labels.astype(np.int32)))
        teacher = tuple((w.astype(np.float32), b.astype(np.float32)) for w, b in layers)
        return jax.device_put(TeacherData(teacher, *splits))

    def sample_batch(
        self, data: TeacherData, key: jax.Array, split: str = "train"
    ) -> Batch:
        """A batch of ``batch_size`` examples; pure and jittable (``split`` static).

        ``train``: fresh Gaussian inputs drawn from ``key``, labelled by the teacher.
        ``valid`` / ``test``: examples of the fixed split, uniformly with replacement.

        Returns:
          inputs (batch_size, input_dim) float32 and labels (batch_size,) int32.
        """
        if split == "train":
            x = jax.random.normal(key, (self.batch_size, self.input_dim), jnp.float32)
            labels = jnp.argmax(_teacher_logits(data.teacher, x, jnp), axis=-1)
            return x, labels.astype(jnp.int32)
        inputs, labels = data.split(split)
        idx = jax.random.randint(key, (self.batch_size,), 0, labels.shape[0])
        return jnp.take(inputs, idx, axis=0), jnp.take(labels, idx, axis=0)

    # ------------------------------------------------------------------ losses

    def _per_example(self, params: Params, batch: Batch) -> tuple[jax.Array, jax.Array]:
        """Per-example cross-entropy (B,) and correctness (B,) as float32."""
        inputs, labels = batch
        logits = self.apply(params, inputs)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
        return losses, correct

    def train_loss(
        self, params: Params, model_state: dict, batch: Batch
    ) -> tuple[jax.Array, dict]:
        """Mean cross-entropy of the batch; the (empty) model state passes through."""
        return self.loss(params, batch), model_state

    def loss(self, params: Params, batch: Batch) -> jax.Array:
        """Mean cross-entropy of the batch, a float32 scalar."""
        return self._per_example(params, batch)[0].mean()

    def loss_and_accuracy(
        self, params: Params, batch: Batch, model_state: dict | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """Mean cross-entropy and top-1 accuracy of the batch."""
        del model_state
        losses, correct = self._per_example(params, batch)
        return losses.mean(), correct.mean()

    def evaluate(
        self,
        params: Params,
        data: TeacherData,
        split: str,
        batch_size: int | None = None,
        model_state: dict | None = None,
    ) -> dict[str, jax.Array]:
        """Mean loss and accuracy over every example of the fixed ``split``, valid or
        test, exactly once (training data is drawn fresh, so there is no training set
        to evaluate). Jittable (``split`` and ``batch_size`` static)."""
        del model_state
        inputs, labels = data.split(split)

        def per_example(idx: jax.Array) -> tuple[jax.Array, jax.Array]:
            batch = jnp.take(inputs, idx, axis=0), jnp.take(labels, idx, axis=0)
            return self._per_example(params, batch)

        batch_size = self.batch_size if batch_size is None else batch_size
        return chunked_means(per_example, labels.shape[0], batch_size)

    def describe(self) -> dict[str, Any]:
        """The task's settings and size, for run configs and results files."""
        return {
            "model": self.model_name,
            "dataset": self.dataset,
            **dataclasses.asdict(self),
            "num_params": self.num_params(),
        }


def make_teacher_task(
    dataset: str = TEACHER_DATASET,
    hidden_sizes: tuple[int, ...] | None = None,
    activation: str | None = None,
    batch_size: int | None = None,
    *,
    input_dim: int | None = None,
    num_classes: int | None = None,
    teacher_seed: int | None = None,
) -> TeacherTask:
    """Builds a :class:`TeacherTask`; arguments left None keep the defaults: student
    32-64-64-10 relu (6,922 params), batch 128, teacher 32-64-10 tanh, seed 0.

    Example:
      >>> make_teacher_task().num_params()
      6922
    """
    if dataset != TEACHER_DATASET:
        raise ValueError(f"the teacher family's dataset is 'teacher', got {dataset!r}")
    overrides = dict(
        hidden_sizes=hidden_sizes,
        activation=activation,
        batch_size=batch_size,
        input_dim=input_dim,
        num_classes=num_classes,
        teacher_seed=teacher_seed,
    )
    return TeacherTask(**{k: v for k, v in overrides.items() if v is not None})
