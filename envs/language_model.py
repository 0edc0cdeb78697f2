"""GPT-2-mini task family: the paper's out-of-distribution language task (ELO Fig. 5).

The paper trains "GPT-2-mini" on FineWeb-10B with batch 512 and gives no sizes; this
project's GPT-2-mini is a GPT-2 (pre-LayerNorm decoder, learned positions, GELU MLP
4x wide, tied input/output embedding, GPT-2's init with residual projections scaled
by 1/sqrt(2 x layers)) with 4 layers, width 256, 4 heads and context 256:
16,090,880 parameters on GPT-2's 50,257 tokens (12.9M of them the embedding),
3,290,624 on bytes. It trains on FineWeb token shards or, offline, on plain-text files
as bytes or on Python's own standard-library sources as bytes (see `tokens`). The
model has no non-trainable state.

On ``pysource`` the defaults are sized for meta-training on a CPU: 2 layers, width
32, 2 heads, context 64, batch 32 (35,712 parameters).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from . import tokens as token_data
from .chunked_eval import chunked_means

LM_DATASETS = ("fineweb", "text", "pysource")
# Each dataset's defaults, over the dataclass's (GPT-2-mini's): pysource is small.
_DATASET_DEFAULTS = {
    "pysource": dict(
        batch_size=32, context_length=64, width=32, num_layers=2, num_heads=2
    ),
}
_INIT_STD = 0.02


class _Block(nn.Module):
    """Pre-LN transformer block: causal self-attention and a 4x GELU MLP."""

    width: int
    num_heads: int
    num_layers: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, length, _ = x.shape
        init = nn.initializers.normal(_INIT_STD)
        # GPT-2 scales the projections into the residual stream by 1/sqrt(2 L).
        residual_init = nn.initializers.normal(
            _INIT_STD / math.sqrt(2 * self.num_layers)
        )
        head_dim = self.width // self.num_heads
        qkv = nn.Dense(3 * self.width, kernel_init=init)(nn.LayerNorm()(x))
        q, k, v = jnp.split(
            qkv.reshape(batch, length, 3 * self.num_heads, head_dim), 3, 2
        )
        # jax.nn.dot_product_attention picks a fused (flash) kernel where the
        # backend has one and falls back to XLA elsewhere, e.g. on CPU.
        attended = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        x = x + nn.Dense(self.width, kernel_init=residual_init)(
            attended.reshape(batch, length, self.width)
        )
        h = nn.gelu(nn.Dense(4 * self.width, kernel_init=init)(nn.LayerNorm()(x)))
        return x + nn.Dense(self.width, kernel_init=residual_init)(h)


class GPT2Mini(nn.Module):
    """A GPT-2 decoder returning next-token logits (B, T, vocab_size)."""

    vocab_size: int
    context_length: int
    width: int = 256
    num_layers: int = 4
    num_heads: int = 4

    @nn.compact
    def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
        del train  # no dropout: the paper's runs are far from overfitting the data
        embed = nn.Embed(
            self.vocab_size,
            self.width,
            embedding_init=nn.initializers.normal(_INIT_STD),
        )
        positions = self.param(
            "position_embedding",
            nn.initializers.normal(0.01),
            (self.context_length, self.width),
        )
        x = embed(tokens) + positions[: tokens.shape[1]]
        for _ in range(self.num_layers):
            x = _Block(self.width, self.num_heads, self.num_layers)(x)
        return embed.attend(nn.LayerNorm()(x))  # tied output embedding


@dataclasses.dataclass(frozen=True, kw_only=True)
class LanguageModelTask:
    """GPT-2-mini on a token dataset; hashable (static under jit), holds no arrays.

    A batch is (batch_size, context_length + 1) int32 token windows; the loss is the
    mean next-token cross-entropy (nats per token) over all positions, the accuracy
    the next-token top-1 accuracy.
    """

    # "fineweb" (GPT-2 token shards), "text" (bytes of text_files) or "pysource"
    # (bytes of Python's standard-library sources, tokens.python_source_files)
    dataset: str
    batch_size: int = 512  # the paper's language batch
    context_length: int = 256
    width: int = 256
    num_layers: int = 4
    num_heads: int = 4
    text_files: tuple[str, ...] = ()  # dataset "text": the files, read as bytes
    data_dir: str | None = None  # dataset "fineweb": where the shards are
    max_train_tokens: int | None = None  # fineweb: load at most this many
    eval_windows: int = 512  # windows of each evaluation split that evaluate() uses

    model_name = "gpt2mini"
    cpu_step_loop = "scan"  # see Task.cpu_step_loop

    def __post_init__(self) -> None:
        if self.dataset not in LM_DATASETS:
            raise ValueError(
                f"Unknown language dataset {self.dataset!r}; "
                f"valid: {list(LM_DATASETS)}."
            )
        object.__setattr__(self, "text_files", tuple(str(f) for f in self.text_files))
        for name in (
            "batch_size",
            "context_length",
            "width",
            "num_layers",
            "num_heads",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if self.width % self.num_heads:
            raise ValueError(
                f"width ({self.width}) must be a multiple of "
                f"num_heads ({self.num_heads})."
            )
        if self.eval_windows <= 0:
            raise ValueError(f"eval_windows must be positive, got {self.eval_windows}.")
        if self.dataset == "text" and not self.text_files:
            raise ValueError(
                "dataset 'text' needs text_files: the plain-text files to train on."
            )
        if self.dataset == "pysource" and self.text_files:
            raise ValueError(
                "dataset 'pysource' reads Python's standard library; text_files are "
                "for dataset 'text'."
            )

    # ------------------------------------------------------------------ the model

    @property
    def vocab_size(self) -> int:
        """GPT-2's 50,257 tokens for fineweb, 256 bytes for text and pysource."""
        if self.dataset == "fineweb":
            return token_data.GPT2_VOCAB_SIZE
        return token_data.BYTE_VOCAB_SIZE

    @property
    def num_classes(self) -> int:
        """Classes of each prediction: the vocabulary size."""
        return self.vocab_size

    has_model_state = False

    def _module(self) -> GPT2Mini:
        return GPT2Mini(
            self.vocab_size,
            self.context_length,
            self.width,
            self.num_layers,
            self.num_heads,
        )

    def init_with_state(self, key: jax.Array) -> tuple[Any, dict]:
        """Fresh float32 params and the (empty) model state."""
        dummy = jnp.zeros((1, self.context_length), jnp.int32)
        return self._module().init(key, dummy)["params"], {}

    def init(self, key: jax.Array) -> Any:
        """Fresh float32 params."""
        return self.init_with_state(key)[0]

    def num_params(self) -> int:
        """Number of scalar parameters (computed from shapes only)."""
        shapes = jax.eval_shape(self.init, jax.random.key(0))
        return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))

    def apply(self, params: Any, inputs: jax.Array, model_state: dict | None = None):
        """Logits (B, T, vocab_size) of input tokens (B, T)."""
        del model_state  # none
        return self._module().apply({"params": params}, inputs)

    # ------------------------------------------------------------------ data

    def load_data(self) -> token_data.TokenData:
        """Loads the task's tokens onto the device (host I/O; call once)."""
        if self.dataset == "fineweb":
            data = token_data.load_fineweb(
                self.data_dir, max_train_tokens=self.max_train_tokens
            )
        elif self.dataset == "pysource":
            data = token_data.load_python_source()
        else:
            data = token_data.load_text(self.text_files)
        token_data.check_fits(data, self.context_length + 1)
        return data

    def sample_batch(
        self, data: token_data.TokenData, key: jax.Array, split: str = "train"
    ) -> jax.Array:
        """(batch_size, context_length + 1) int32 random windows of `split`."""
        return token_data.sample_windows(
            data.split(split), key, self.batch_size, self.context_length + 1
        )

    # ------------------------------------------------------------------ losses

    def _per_window(self, params: Any, windows: jax.Array):
        """Per-window mean cross-entropy and top-1 accuracy, (B,) each."""
        logits = self.apply(params, windows[:, :-1])
        targets = windows[:, 1:]
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
        return losses.mean(axis=1), correct.mean(axis=1)

    def train_loss(
        self, params: Any, model_state: dict, batch: jax.Array
    ) -> tuple[jax.Array, dict]:
        """Mean next-token cross-entropy; the (empty) model state passes through."""
        return self.loss(params, batch), model_state

    def loss(self, params: Any, batch: jax.Array) -> jax.Array:
        """Mean next-token cross-entropy of the batch (nats per token)."""
        return self._per_window(params, batch)[0].mean()

    def loss_and_accuracy(
        self, params: Any, batch: jax.Array, model_state: dict | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """Mean next-token cross-entropy and top-1 accuracy of the batch."""
        del model_state
        losses, correct = self._per_window(params, batch)
        return losses.mean(), correct.mean()

    def evaluate(
        self,
        params: Any,
        data: token_data.TokenData,
        split: str,
        batch_size: int | None = None,
        model_state: dict | None = None,
    ) -> dict[str, jax.Array]:
        """Mean loss and accuracy over the split's first `eval_windows` windows.

        The windows are fixed (non-overlapping, from the start of the split), so
        every evaluation of a split sees the same tokens. Jittable (`split` and
        `batch_size` static); chunks of `batch_size` windows run under `lax.map`.
        """
        del model_state
        windows = token_data.eval_windows(
            data.split(split), self.context_length + 1, self.eval_windows
        )

        def per_window(idx: jax.Array) -> tuple[jax.Array, jax.Array]:
            return self._per_window(params, jnp.take(windows, idx, axis=0))

        batch_size = self.batch_size if batch_size is None else batch_size
        return chunked_means(per_window, windows.shape[0], batch_size)

    def describe(self) -> dict[str, Any]:
        """The task's settings and size, for run configs and results files."""
        return {
            "model": self.model_name,
            **dataclasses.asdict(self),
            "vocab_size": self.vocab_size,
            "num_params": self.num_params(),
        }


def make_lm_task(
    dataset: str = "fineweb",
    *,
    batch_size: int | None = None,
    context_length: int | None = None,
    width: int | None = None,
    num_layers: int | None = None,
    num_heads: int | None = None,
    text_files: tuple[str, ...] | None = None,
    data_dir: str | None = None,
    max_train_tokens: int | None = None,
) -> LanguageModelTask:
    """Builds a `LanguageModelTask`; arguments left None keep the dataset's defaults:
    GPT-2-mini's (batch 512, context 256, width 256, 4 layers, 4 heads), on
    ``pysource`` a CPU-sized one (batch 32, context 64, width 32, 2 layers, 2 heads).

    Example:
      >>> make_lm_task("fineweb").num_params()
      16090880
    """
    overrides = {
        "batch_size": batch_size,
        "context_length": context_length,
        "width": width,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "text_files": text_files,
        "data_dir": data_dir,
        "max_train_tokens": max_train_tokens,
    }
    given = {k: v for k, v in overrides.items() if v is not None}
    return LanguageModelTask(
        dataset=dataset, **{**_DATASET_DEFAULTS.get(dataset, {}), **given}
    )
