"""A task from your own model and arrays: meta-train and evaluate an LO on them.

:func:`from_flax` wraps a flax module, :class:`ArrayTask` any ``init``/``apply`` pair;
either takes a loss and in-memory (inputs, targets) arrays per split and gives a
:class:`~envs.tasks.Task` that ``gymnasium.make("ELO-Task", task=...)``, the agents'
and ``scripts/evaluate.py``'s ``--task package.module:factory`` accept. Everything is
checked at construction, from shapes only, so a bad task fails with what is wrong
before any compile.

Example:
  >>> import flax.linen as nn, numpy as np, optax
  >>> x, y = np.zeros((64, 8), np.float32), np.zeros(64, np.int32)
  >>> loss = lambda logits, labels: (
  ...     optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean())
  >>> task = from_flax(nn.Dense(3), loss, train=(x, y), valid=(x, y), batch_size=16)
  >>> task.num_params()
  27
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .chunked_eval import chunked_means

Split = tuple[Any, Any]  # (inputs (N, ...), targets (N, ...)), host or device arrays
SPLIT_NAMES = ("train", "valid", "test")


def top1_accuracy(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Fraction of examples whose largest output is the integer target."""
    return (jnp.argmax(outputs, axis=-1) == targets).astype(jnp.float32).mean()


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class ArrayTask:
    """An optimizee given as ``init(key, inputs) -> params``, ``apply(params, inputs)
    -> outputs`` and ``loss(outputs, targets) -> scalar``, on in-memory arrays.

    ``loss`` and ``accuracy`` reduce a batch to its mean, so that one example's value
    is the function of a batch of one. ``accuracy`` defaults to top-1 for integer
    targets; pass one (higher is better) for other targets. ``test`` defaults to
    ``valid``. Compared and hashed by identity (it holds the arrays), so one task is
    one static jit argument; ``load_data`` puts the arrays on the device.

    Raises (at construction):
      ValueError: a split whose inputs and targets differ in length, is empty, or whose
        example shapes differ from train's; params that are not all floats; a loss or
        accuracy that does not return one float scalar; a bad batch size or
        cpu_step_loop.
      TypeError: non-integer targets without an ``accuracy_fn``.
    """

    init_fn: Callable[[jax.Array, jax.Array], Any]
    apply_fn: Callable[[Any, jax.Array], jax.Array]
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array]
    train: Split
    valid: Split
    test: Split | None = None
    batch_size: int = 128
    accuracy_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None
    name: str = "custom"  # names the model in configs and results
    # How a CPU drives inner steps (Task.cpu_step_loop): "scan", one compiled loop, or
    # "host", a Python loop of jitted steps (faster for convolutions on XLA:CPU).
    cpu_step_loop: str = "scan"

    has_model_state = False  # Task protocol: no BatchNorm-like state

    def __post_init__(self) -> None:
        if self.cpu_step_loop not in ("scan", "host"):
            raise ValueError(
                f"cpu_step_loop must be 'scan' or 'host', got {self.cpu_step_loop!r}"
            )
        if not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise ValueError(
                f"batch_size must be a positive int, got {self.batch_size}"
            )
        splits = {"train": self.train, "valid": self.valid, "test": self.test}
        shapes = {}
        for split, arrays in splits.items():
            if arrays is not None:
                shapes[split] = _split_shapes(split, arrays)
        for split, (inputs, targets) in shapes.items():
            if (inputs[1:], targets[1:]) != (
                shapes["train"][0][1:],
                shapes["train"][1][1:],
            ):
                raise ValueError(
                    f"{split} examples have input shape {inputs[1:]} and target shape "
                    f"{targets[1:]}; train's are {shapes['train'][0][1:]} and "
                    f"{shapes['train'][1][1:]}: every split needs the same example "
                    "shapes"
                )
        if self.accuracy_fn is None and not np.issubdtype(
            np.asarray(self.train[1][:1]).dtype, np.integer
        ):
            raise TypeError(
                f"targets have dtype {np.asarray(self.train[1][:1]).dtype}: top-1 "
                "accuracy needs integer class labels; pass accuracy_fn(outputs, "
                "targets) -> scalar for other targets"
            )
        self._check_functions()

    # ------------------------------------------------------------------ checks

    def _example_batch(self, n: int) -> tuple[jax.ShapeDtypeStruct, ...]:
        inputs, targets = (np.asarray(a[:1]) for a in self.train)
        return tuple(
            jax.ShapeDtypeStruct((n, *a.shape[1:]), a.dtype) for a in (inputs, targets)
        )

    def _check_functions(self) -> None:
        """Params all float, loss and accuracy float scalars (shapes only)."""
        inputs, targets = self._example_batch(2)
        try:
            params = jax.eval_shape(self.init, jax.random.key(0))
        except Exception as e:
            raise ValueError(
                f"init(key, inputs) fails on inputs of shape {inputs.shape[1:]} "
                f"{inputs.dtype} (batch of one): {e}"
            ) from e
        leaves = jax.tree_util.tree_leaves_with_path(params)
        if not leaves:
            raise ValueError("init returned no params: the model has nothing to train")
        for path, leaf in leaves:
            if not jnp.issubdtype(leaf.dtype, jnp.floating):
                raise ValueError(
                    f"param {jax.tree_util.keystr(path)} has dtype {leaf.dtype}: an "
                    "optimizer updates float params only; keep integer or boolean "
                    "values out of what init returns"
                )
        try:
            outputs = jax.eval_shape(self.apply_fn, params, inputs)
        except Exception as e:
            raise ValueError(
                f"apply(params, inputs) fails on a batch of inputs of shape "
                f"{inputs.shape} {inputs.dtype}: {e}"
            ) from e
        for what, fn in (("loss", self.loss_fn), ("accuracy", self._accuracy)):
            try:
                value = jax.eval_shape(fn, outputs, targets)
            except Exception as e:
                raise ValueError(
                    f"{what}(outputs {outputs.shape}, targets {targets.shape}) "
                    f"fails: {e}"
                ) from e
            if (
                not isinstance(value, jax.ShapeDtypeStruct)
                or value.shape != ()
                or not jnp.issubdtype(value.dtype, jnp.floating)
            ):
                got = getattr(value, "shape", type(value).__name__)
                raise ValueError(
                    f"{what}(outputs {outputs.shape}, targets {targets.shape}) must "
                    f"return one float scalar (the batch's mean), got {got}"
                )

    def _accuracy(self, outputs: jax.Array, targets: jax.Array) -> jax.Array:
        fn = top1_accuracy if self.accuracy_fn is None else self.accuracy_fn
        return fn(outputs, targets)

    # ------------------------------------------------------------------ Task protocol

    @property
    def model_name(self) -> str:
        """The name given at construction."""
        return self.name

    @property
    def num_classes(self) -> int:
        """The outputs' last dimension (classes of a classifier)."""
        params = jax.eval_shape(self.init, jax.random.key(0))
        return jax.eval_shape(self.apply_fn, params, self._example_batch(1)[0]).shape[
            -1
        ]

    def init(self, key: jax.Array) -> Any:
        """Fresh params, from ``init_fn`` on a batch of one zero input."""
        inputs = self._example_batch(1)[0]
        return self.init_fn(key, jnp.zeros(inputs.shape, inputs.dtype))

    def init_with_state(self, key: jax.Array) -> tuple[Any, dict]:
        """Fresh params and ``{}`` (no non-trainable state)."""
        return self.init(key), {}

    def num_params(self) -> int:
        """Number of scalar params (from shapes only)."""
        shapes = jax.eval_shape(self.init, jax.random.key(0))
        return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))

    def load_data(self) -> dict[str, tuple[jax.Array, jax.Array]]:
        """{split: (inputs, targets)} on the device (``test``: ``valid``'s if not
        given)."""
        test = self.valid if self.test is None else self.test
        splits = {"train": self.train, "valid": self.valid, "test": test}
        return {k: tuple(jnp.asarray(a) for a in v) for k, v in splits.items()}

    def sample_batch(
        self, data: dict, key: jax.Array, split: str = "train"
    ) -> tuple[jax.Array, jax.Array]:
        """``batch_size`` examples of ``split`` drawn uniformly with replacement."""
        inputs, targets = _split_of(data, split)
        idx = jax.random.randint(key, (self.batch_size,), 0, targets.shape[0])
        return jnp.take(inputs, idx, axis=0), jnp.take(targets, idx, axis=0)

    def train_loss(
        self, params: Any, model_state: dict, batch: tuple[jax.Array, jax.Array]
    ) -> tuple[jax.Array, dict]:
        """(the batch's loss, ``model_state`` unchanged)."""
        inputs, targets = batch
        return self.loss_fn(self.apply_fn(params, inputs), targets), model_state

    def evaluate(
        self,
        params: Any,
        data: dict,
        split: str,
        batch_size: int | None = None,
        model_state: dict | None = None,
    ) -> dict[str, jax.Array]:
        """Mean loss and accuracy over every example of ``split``, exactly once
        (jittable; ``model_state`` is ignored: this task has none)."""
        del model_state
        inputs, targets = _split_of(data, split)

        def one(output: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
            return (
                self.loss_fn(output[None], target[None]),
                self._accuracy(output[None], target[None]),
            )

        def per_example(idx: jax.Array) -> tuple[jax.Array, jax.Array]:
            outputs = self.apply_fn(params, jnp.take(inputs, idx, axis=0))
            return jax.vmap(one)(outputs, jnp.take(targets, idx, axis=0))

        batch_size = self.batch_size if batch_size is None else batch_size
        return chunked_means(per_example, targets.shape[0], batch_size)

    def describe(self) -> dict[str, Any]:
        """Model name, batch size, example shapes, split sizes and parameter count."""
        inputs, targets = self._example_batch(1)
        test = self.valid if self.test is None else self.test
        return {
            "model": self.name,
            "batch_size": self.batch_size,
            "input_shape": list(inputs.shape[1:]),
            "target_shape": list(targets.shape[1:]),
            "num_examples": {
                "train": len(self.train[1]),
                "valid": len(self.valid[1]),
                "test": len(test[1]),
            },
            "test_is_valid": self.test is None,
            "num_params": self.num_params(),
        }


def from_flax(
    module: nn.Module,
    loss: Callable[[jax.Array, jax.Array], jax.Array],
    *,
    train: Split,
    valid: Split,
    test: Split | None = None,
    batch_size: int = 128,
    accuracy: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    name: str | None = None,
    cpu_step_loop: str = "scan",
) -> ArrayTask:
    """An :class:`ArrayTask` training ``module``'s params (``module(inputs) ->
    outputs``) on ``loss(outputs, targets) -> scalar``.

    Raises:
      ValueError: ``module`` keeps state besides its params (e.g. BatchNorm's
        ``batch_stats``), or anything :class:`ArrayTask` rejects.
    """

    def init(key: jax.Array, inputs: jax.Array) -> Any:
        variables = module.init(key, inputs)
        others = sorted(set(variables) - {"params"})
        if others:
            raise ValueError(
                f"{type(module).__name__} keeps state besides its params "
                f"({', '.join(others)}); from_flax trains stateless modules: drop "
                "BatchNorm (e.g. for LayerNorm or GroupNorm)"
            )
        return variables["params"]

    def apply(params: Any, inputs: jax.Array) -> jax.Array:
        return module.apply({"params": params}, inputs)

    return ArrayTask(
        init_fn=init,
        apply_fn=apply,
        loss_fn=loss,
        train=train,
        valid=valid,
        test=test,
        batch_size=batch_size,
        accuracy_fn=accuracy,
        name=name or type(module).__name__,
        cpu_step_loop=cpu_step_loop,
    )


def _split_shapes(split: str, arrays: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(input shape, target shape) of a split; fails on anything but two arrays of one
    non-zero length."""
    if not isinstance(arrays, tuple | list) or len(arrays) != 2:
        raise ValueError(f"{split} must be a pair (inputs, targets) of arrays")
    inputs, targets = (np.shape(a) for a in arrays)
    if not inputs or not targets:
        raise ValueError(
            f"{split} inputs {inputs} and targets {targets} need a leading example axis"
        )
    if inputs[0] != targets[0]:
        raise ValueError(
            f"{split} has {inputs[0]} inputs but {targets[0]} targets: one target per "
            "input (axis 0)"
        )
    if inputs[0] == 0:
        raise ValueError(f"{split} has no examples")
    return inputs, targets


def _split_of(data: dict, split: str) -> tuple[jax.Array, jax.Array]:
    if split not in SPLIT_NAMES:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLIT_NAMES)}")
    return data[split]
