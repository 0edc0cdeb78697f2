"""Tests for envs/tokens.py: FineWeb binary shards, byte-level text, windows."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from elo_gym.envs import tokens
from elo_gym.envs.datasets import DATA_DIR_ENV, DatasetNotFoundError


def _write_fineweb(root: pathlib.Path, train: list[np.ndarray], val: np.ndarray):
    for i, shard in enumerate(train, start=1):
        tokens.write_token_shard(root / f"fineweb_train_{i:06d}.bin", shard)
    tokens.write_token_shard(root / "fineweb_val_000000.bin", val)


def test_shard_round_trip_and_header(tmp_path: pathlib.Path) -> None:
    ids = np.array([50256, 0, 1, 65535, 42], np.int64)
    path = tmp_path / "s.bin"
    tokens.write_token_shard(path, ids)
    raw = path.read_bytes()
    header = np.frombuffer(raw[:1024], "<i4")
    assert list(header[:3]) == [20240520, 1, 5] and not header[3:].any()
    assert len(raw) == 1024 + 2 * 5
    shard = tokens.read_token_shard(path)
    assert isinstance(shard, np.memmap) and shard.dtype == np.uint16
    np.testing.assert_array_equal(shard, ids)


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (lambda b: b"\x00" * 4 + b[4:], "magic number 20240520"),
        (lambda b: b[:4] + np.int32(7).tobytes() + b[8:], "version 7"),
        (lambda b: b[:-2], "truncated or corrupt"),
        (lambda b: b[:100], "magic number"),
    ],
)
def test_bad_shards_fail_clearly(tmp_path: pathlib.Path, corrupt, match) -> None:
    path = tmp_path / "fineweb_train_000001.bin"
    tokens.write_token_shard(path, np.arange(10))
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(tokens.ShardFormatError, match=match):
        tokens.read_token_shard(path)


def test_write_rejects_ids_that_do_not_fit(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="65536"):
        tokens.write_token_shard(tmp_path / "x.bin", np.array([70000]))


def test_load_fineweb_layout_budget_and_chunks(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokens, "MAX_CHUNK", 64)  # several chunks from small shards
    train = [np.arange(100) % 50257, (np.arange(150) + 100) % 50257]
    val = np.arange(300) + 1000
    (tmp_path / "fineweb10B").mkdir()
    _write_fineweb(tmp_path / "fineweb10B", train, val)
    data = tokens.load_fineweb(tmp_path, max_train_tokens=200, max_eval_tokens=100)
    assert data.vocab_size == 50257 and data.train.dtype == jnp.uint16
    # 200 tokens across both shards -> 3 chunks of 64 (the 8-token tail dropped).
    assert data.train.shape == (3, 64)
    np.testing.assert_array_equal(
        np.asarray(data.train).reshape(-1), np.concatenate(train)[:192]
    )
    # valid: the first 100 val tokens (1 chunk of 64); test: the next 100.
    np.testing.assert_array_equal(np.asarray(data.valid).reshape(-1), val[:64])
    np.testing.assert_array_equal(np.asarray(data.test).reshape(-1), val[100:164])


def test_load_fineweb_from_env_var(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_fineweb(tmp_path, [np.arange(40)], np.arange(20))
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    data = tokens.load_fineweb()
    assert data.train.shape == (1, 40) and data.valid.shape == data.test.shape == (
        1,
        10,
    )


def test_missing_fineweb_says_how_to_prepare(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"fineweb\.py.*write_token_shard"):
        tokens.load_fineweb(tmp_path)
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with pytest.raises(DatasetNotFoundError, match=DATA_DIR_ENV):
        tokens.load_fineweb()


def test_load_text_is_bytes_split_contiguously(tmp_path: pathlib.Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("hello world, " * 30)
    b.write_bytes("naïve café\n".encode() * 20)
    data = tokens.load_text([a, b], eval_fraction=0.1)
    everything = a.read_bytes() + b.read_bytes()
    joined = b"".join(
        np.asarray(data.split(s)).reshape(-1).tobytes()
        for s in ("train", "valid", "test")
    )
    assert joined == everything and data.vocab_size == 256
    assert data.train.dtype == jnp.uint8
    assert data.valid.size == data.test.size == int(len(everything) * 0.1)


def test_load_text_errors(tmp_path: pathlib.Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="text_files"):
        tokens.load_text([])
    with pytest.raises(DatasetNotFoundError, match="no file at"):
        tokens.load_text([tmp_path / "missing.txt"])
    short = tmp_path / "short.txt"
    short.write_text("x" * 100)
    data = tokens.load_text([short])
    with pytest.raises(ValueError, match="fewer than one window of 65"):
        tokens.check_fits(data, 65)


def test_windows_are_contiguous_runs_of_one_chunk() -> None:
    chunks = jnp.arange(4 * 50, dtype=jnp.int32).reshape(4, 50)
    windows = jax.jit(tokens.sample_windows, static_argnums=(2, 3))(
        chunks, jax.random.key(0), 256, 9
    )
    assert windows.shape == (256, 9) and windows.dtype == jnp.int32
    w = np.asarray(windows)
    assert (np.diff(w, axis=1) == 1).all()  # contiguous
    assert (w[:, 0] // 50 == w[:, -1] // 50).all()  # never across a chunk boundary
    assert len(np.unique(w[:, 0] // 50)) == 4  # every chunk is drawn
    assert w[:, 0].min() % 50 == 0 or w[:, -1].max() % 50 == 49  # edges reachable


def test_eval_windows_are_fixed_and_non_overlapping() -> None:
    chunks = jnp.arange(2 * 20).reshape(2, 20)
    w = np.asarray(tokens.eval_windows(chunks, 6, 100))
    # 3 windows per chunk of 20 (the last 2 tokens of each chunk unused).
    np.testing.assert_array_equal(w[:, 0], [0, 6, 12, 20, 26, 32])
    assert tokens.eval_windows(chunks, 6, 4).shape == (4, 6)
