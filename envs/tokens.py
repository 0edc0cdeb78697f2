"""Device-resident token datasets: FineWeb binary shards and byte-level plain text.

Two sources, one layout:

- ``fineweb``: token shards in the binary format of llm.c / modded-nanogpt
  (``fineweb_train_000001.bin``, ..., ``fineweb_val_000000.bin``): a header of 256
  little-endian int32 (magic 20240520, version 1, token count, then zeros) followed by
  that many uint16 GPT-2 token ids. Shards are read through a memory map and copied,
  up to a token budget, into the device array; nothing is downloaded.
- ``text``: the user's own plain-text files as bytes (vocabulary 256), so that the
  language-model path runs offline on real text.
- ``pysource``: Python's own standard-library sources as bytes, a fixed, sorted
  selection of the running interpreter's modules (every machine that runs this has
  them), split by file into train, valid and test.

A split lives on the device as a 2-D array (num_chunks, chunk_len): each chunk is a
contiguous run of tokens, at most 2**24 long, so that every index fits in int32 even
for the 10B-token FineWeb (20 GB of uint16: an H200 holds it). Training windows of
``length`` tokens are sampled on the fly inside jit (a random chunk and offset per
window), so no host data pipeline runs in the hot loop.
"""

from __future__ import annotations

import os
import pathlib
import sysconfig
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .datasets import DATA_DIR_ENV, SPLITS, DatasetNotFoundError

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256  # int32 words before the tokens
GPT2_VOCAB_SIZE = 50257
BYTE_VOCAB_SIZE = 256
MAX_CHUNK = 2**24  # tokens per device chunk: indices stay far below 2**31
# Tokens of each evaluation split kept by default (the rest of the val shard unused).
DEFAULT_EVAL_TOKENS = 2**22
TEXT_EVAL_FRACTION = 0.05  # of a text corpus, for each of valid and test


class ShardFormatError(ValueError):
    """A token shard's header or size is not the llm.c binary format."""


@flax.struct.dataclass
class TokenData:
    """Train/valid/test token splits on the device, each (num_chunks, chunk_len)."""

    train: jax.Array  # uint16 (GPT-2 ids) or uint8 (bytes)
    valid: jax.Array
    test: jax.Array
    vocab_size: int = flax.struct.field(pytree_node=False)

    def split(self, name: str) -> jax.Array:
        """The (num_chunks, chunk_len) tokens of split `name`."""
        if name not in SPLITS:
            raise ValueError(f"Unknown split {name!r}; valid splits: {list(SPLITS)}.")
        return getattr(self, name)


# --------------------------------------------------------------------------- shards


def write_token_shard(path: str | os.PathLike[str], tokens: np.ndarray) -> None:
    """Writes `tokens` (< 65,536 ids) as one shard in the llm.c binary format.

    Use it to convert your own tokenized corpus; the tests write their shards with it.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or (
        tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16)
    ):
        raise ValueError("tokens must be a 1-D array of ids in [0, 65536)")
    header = np.zeros(HEADER_INTS, "<i4")
    header[:3] = SHARD_MAGIC, SHARD_VERSION, tokens.size
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2").tobytes())


def read_token_shard(path: str | os.PathLike[str]) -> np.ndarray:
    """A shard's tokens as a read-only uint16 memory map (no copy).

    Raises:
      ShardFormatError: wrong magic number, version, or a size that does not match
        the header's token count.
    """
    path = pathlib.Path(path)
    header = np.fromfile(path, "<i4", count=HEADER_INTS)
    if header.size < HEADER_INTS or header[0] != SHARD_MAGIC:
        raise ShardFormatError(
            f"{path} is not a token shard: expected a {HEADER_INTS} x int32 header "
            f"starting with magic number {SHARD_MAGIC} (llm.c's fineweb.py format)"
        )
    if header[1] != SHARD_VERSION:
        raise ShardFormatError(
            f"{path}: shard version {header[1]}, expected {SHARD_VERSION}"
        )
    num_tokens = int(header[2])
    expected = 4 * HEADER_INTS + 2 * num_tokens
    if path.stat().st_size != expected:
        raise ShardFormatError(
            f"{path}: header says {num_tokens} tokens ({expected} bytes), but the "
            f"file has {path.stat().st_size} bytes (truncated or corrupt)"
        )
    return np.memmap(path, "<u2", mode="r", offset=4 * HEADER_INTS, shape=(num_tokens,))


def _find_shards(data_dir: pathlib.Path, split: str) -> list[pathlib.Path]:
    for folder in (data_dir, data_dir / "fineweb10B"):
        shards = sorted(folder.glob(f"fineweb_{split}_*.bin"))
        if shards:
            return shards
    return []


def _how_to_prepare_fineweb(data_dir: str) -> str:
    return (
        "To prepare FineWeb-10B offline (nothing is downloaded at run time): on a "
        "machine with internet, run llm.c's `python dev/data/fineweb.py -v 10B` (or "
        "modded-nanogpt's `python data/cached_fineweb10B.py`), then copy the "
        f"fineweb_train_*.bin and fineweb_val_*.bin shards into {data_dir}/ (or "
        f"{data_dir}/fineweb10B/). Your own token ids can be written in the same "
        "format with elo_gym.envs.tokens.write_token_shard. To train on plain-text "
        "files instead, use dataset='text' with text_files=[...]."
    )


# --------------------------------------------------------------------------- layout


def _chunked(pieces: Sequence[np.ndarray], budget: int | None, dtype) -> np.ndarray:
    """Concatenates `pieces` (up to `budget` tokens) into (num_chunks, chunk_len).

    The tail that does not fill a last chunk (< MAX_CHUNK tokens) is dropped; a
    corpus shorter than MAX_CHUNK is one chunk. The pieces are copied straight into
    the output (memory maps are read once, never concatenated first).
    """
    total = sum(len(p) for p in pieces)
    if budget is not None:
        total = min(total, budget)
    chunk_len = min(total, MAX_CHUNK)
    num_chunks = total // chunk_len if chunk_len else 0
    out = np.empty((num_chunks, chunk_len), dtype)
    flat = out.reshape(-1)
    filled = 0
    for piece in pieces:
        take = min(len(piece), flat.size - filled)
        if take <= 0:
            break
        flat[filled : filled + take] = piece[:take]
        filled += take
    return out


def _skip(pieces: Sequence[np.ndarray], count: int) -> list[np.ndarray]:
    """The pieces without their first `count` tokens (views, no copies)."""
    out = []
    for piece in pieces:
        out.append(piece[min(count, len(piece)) :])
        count = max(0, count - len(piece))
    return out


def load_fineweb(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    max_train_tokens: int | None = None,
    max_eval_tokens: int = DEFAULT_EVAL_TOKENS,
) -> TokenData:
    """FineWeb token shards from `data_dir` (default `$ELO_GYM_DATA_DIR`).

    train: the ``fineweb_train_*.bin`` shards in order, up to `max_train_tokens`.
    valid and test: the first and the next `max_eval_tokens` tokens of the
    ``fineweb_val_*.bin`` shards (llm.c's held-out 100M tokens).

    Raises:
      DatasetNotFoundError: no data dir, or no train/val shards in it.
      ShardFormatError: a shard is not in the binary format.
    """
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV)
    if data_dir is None:
        raise DatasetNotFoundError(
            "Dataset 'fineweb' needs a data directory: pass data_dir or set "
            f"${DATA_DIR_ENV}.\n{_how_to_prepare_fineweb('DIR')}"
        )
    data_dir = pathlib.Path(data_dir).expanduser()
    train_files, val_files = (
        _find_shards(data_dir, "train"),
        _find_shards(data_dir, "val"),
    )
    if not train_files or not val_files:
        raise DatasetNotFoundError(
            f"Dataset 'fineweb': no fineweb_train_*.bin and fineweb_val_*.bin shards "
            f"in {data_dir}.\n{_how_to_prepare_fineweb(str(data_dir))}"
        )
    if max_eval_tokens <= 0:
        raise ValueError(f"max_eval_tokens must be positive, got {max_eval_tokens}")
    val = [read_token_shard(f) for f in val_files]
    val_tokens = sum(len(v) for v in val)
    per_split = min(max_eval_tokens, val_tokens // 2)
    valid = _chunked(val, per_split, np.uint16)
    test = _chunked(_skip(val, per_split), per_split, np.uint16)
    train = _chunked(
        [read_token_shard(f) for f in train_files], max_train_tokens, np.uint16
    )
    return jax.device_put(TokenData(train, valid, test, GPT2_VOCAB_SIZE))


def load_text(
    files: Sequence[str | os.PathLike[str]],
    *,
    eval_fraction: float = TEXT_EVAL_FRACTION,
) -> TokenData:
    """Plain-text files as byte tokens (vocabulary 256), concatenated in order.

    The last `eval_fraction` of the bytes is the test split, the `eval_fraction`
    before it the valid split, the rest train (contiguous, so no text is shared).

    Raises:
      DatasetNotFoundError: no files given, or a file does not exist.
    """
    if not files:
        raise DatasetNotFoundError(
            "Dataset 'text' needs plain-text files: pass text_files=[path, ...] "
            "(any UTF-8 or ASCII text; it is read as bytes)."
        )
    if not 0.0 < eval_fraction < 0.5:
        raise ValueError(f"eval_fraction must be in (0, 0.5), got {eval_fraction}")
    pieces = []
    for name in files:
        path = pathlib.Path(name).expanduser()
        if not path.is_file():
            raise DatasetNotFoundError(f"Dataset 'text': no file at {path}.")
        pieces.append(np.frombuffer(path.read_bytes(), np.uint8))
    tokens = np.concatenate(pieces)
    num_eval = int(len(tokens) * eval_fraction)
    num_train = len(tokens) - 2 * num_eval
    splits = (
        tokens[:num_train],
        tokens[num_train : num_train + num_eval],
        tokens[num_train + num_eval :],
    )
    return jax.device_put(
        TokenData(*(_chunked([s], None, np.uint8) for s in splits), BYTE_VOCAB_SIZE)
    )


# Bytes of each split of dataset "pysource": about 450 KB of Python, enough for the
# small byte-level models a CPU meta-trains.
PYSOURCE_SPLIT_BYTES = {"train": 384 * 1024, "valid": 32 * 1024, "test": 32 * 1024}
# The i-th file of the sorted selection goes to this split (i mod 10), until that
# split has its bytes: whole files per split, so that no module is in two splits.
_PYSOURCE_SPLIT_OF = ("train",) * 8 + ("valid", "test")


def python_source_files(
    stdlib_dir: str | os.PathLike[str] | None = None,
    split_bytes: dict[str, int] | None = None,
) -> dict[str, list[tuple[pathlib.Path, int]]]:
    """The files of dataset ``"pysource"`` and how many bytes of each it reads.

    The candidates are the top-level modules of the standard library (``*.py``
    directly in ``stdlib_dir``, default ``sysconfig.get_paths()["stdlib"]``) whose
    names do not start with ``_``, sorted by name. File ``i`` goes to split
    ``("train",) * 8 + ("valid", "test")`` at ``i mod 10`` while that split has fewer
    than ``split_bytes[split]`` bytes (default :data:`PYSOURCE_SPLIT_BYTES`), its last
    file cut to fit; so the selection is deterministic for a given interpreter (its
    sources differ between Python versions) and no file is in two splits.

    Returns:
      {"train": [(path, bytes to read), ...], "valid": [...], "test": [...]}.

    Raises:
      DatasetNotFoundError: no standard-library sources (e.g. a zipped stdlib), or
        too few to fill the splits.
    """
    budget = dict(PYSOURCE_SPLIT_BYTES if split_bytes is None else split_bytes)
    if sorted(budget) != sorted(SPLITS) or min(budget.values()) <= 0:
        raise ValueError(
            f"split_bytes must give a positive size to each of {list(SPLITS)}, "
            f"got {budget}"
        )
    folder = pathlib.Path(stdlib_dir or sysconfig.get_paths()["stdlib"])
    candidates = sorted(
        p for p in folder.glob("*.py") if p.is_file() and not p.name.startswith("_")
    )
    chosen: dict[str, list[tuple[pathlib.Path, int]]] = {s: [] for s in SPLITS}
    for i, path in enumerate(candidates):
        split = _PYSOURCE_SPLIT_OF[i % len(_PYSOURCE_SPLIT_OF)]
        if budget[split] > 0:
            take = min(path.stat().st_size, budget[split])
            chosen[split].append((path, take))
            budget[split] -= take
        if max(budget.values()) == 0:
            return chosen
    raise DatasetNotFoundError(
        f"Dataset 'pysource': the standard library at {folder} has "
        f"{len(candidates)} top-level *.py modules, too few to fill the splits "
        f"(still missing {budget} bytes); is the stdlib installed as source?"
    )


def load_python_source(
    stdlib_dir: str | os.PathLike[str] | None = None,
    split_bytes: dict[str, int] | None = None,
) -> TokenData:
    """Python's standard-library sources as byte tokens (vocabulary 256), offline:
    the files of :func:`python_source_files`, each split's concatenated in order.

    Raises:
      DatasetNotFoundError: see :func:`python_source_files`.
    """
    files = python_source_files(stdlib_dir, split_bytes)
    splits = []
    for name in SPLITS:
        pieces = []
        for path, size in files[name]:
            with open(path, "rb") as f:
                pieces.append(np.frombuffer(f.read(size), np.uint8))
        splits.append(_chunked(pieces, None, np.uint8))
    return jax.device_put(TokenData(*splits, BYTE_VOCAB_SIZE))


def check_fits(data: TokenData, length: int) -> None:
    """Raises a clear error if some split is shorter than one window of `length`."""
    for name in SPLITS:
        chunk_len = data.split(name).shape[1]
        if data.split(name).shape[0] == 0 or chunk_len < length:
            raise ValueError(
                f"the {name} split has {data.split(name).size} tokens, fewer than one "
                f"window of {length} (context + 1): give more text or a shorter "
                "context_length"
            )


# --------------------------------------------------------------------------- windows


def sample_windows(
    tokens: jax.Array, key: jax.Array, batch_size: int, length: int
) -> jax.Array:
    """`batch_size` random windows of `length` tokens; pure and jittable.

    Args:
      tokens: (num_chunks, chunk_len) device tokens of one split.
      key: PRNG key.
      batch_size, length: static output shape.

    Returns:
      (batch_size, length) int32; each window lies inside one chunk.
    """
    num_chunks, chunk_len = tokens.shape
    key_chunk, key_start = jax.random.split(key)
    chunks = jax.random.randint(key_chunk, (batch_size,), 0, num_chunks)
    starts = jax.random.randint(key_start, (batch_size,), 0, chunk_len - length + 1)

    def window(chunk: jax.Array, start: jax.Array) -> jax.Array:
        return lax.dynamic_slice(tokens, (chunk, start), (1, length))[0]

    return jax.vmap(window)(chunks, starts).astype(jnp.int32)


def eval_windows(tokens: jax.Array, length: int, max_windows: int) -> jax.Array:
    """The first `max_windows` non-overlapping windows of a split, in order.

    Returns:
      (W, length) int32, W = min(max_windows, windows that fit in the split).
    """
    num_chunks, chunk_len = tokens.shape
    per_chunk = chunk_len // length
    windows = tokens[:, : per_chunk * length].reshape(num_chunks * per_chunk, length)
    return windows[:max_windows].astype(jnp.int32)
