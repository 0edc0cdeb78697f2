"""Dataset "pysource": Python's standard-library sources as bytes, offline,
deterministic, split by file."""

from __future__ import annotations

import pathlib
import socket
import sysconfig

import numpy as np
import pytest

from elo_gym import envs
from elo_gym.envs import DatasetNotFoundError, tokens

SMALL = {"train": 20_000, "valid": 4_000, "test": 4_000}


def test_selection_is_fixed_sorted_and_split_by_file() -> None:
    files = tokens.python_source_files()
    assert files == tokens.python_source_files()  # deterministic
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    paths = {s: [p for p, _ in files[s]] for s in files}
    for split, budget in tokens.PYSOURCE_SPLIT_BYTES.items():
        assert sum(n for _, n in files[split]) == budget
        assert paths[split] == sorted(paths[split])
        assert all(p.parent == stdlib and p.suffix == ".py" for p in paths[split])
        assert not any(p.name.startswith("_") for p in paths[split])
    train, valid, test = (set(paths[s]) for s in ("train", "valid", "test"))
    assert train and valid and test
    assert not (train & valid or train & test or valid & test)  # disjoint


def test_load_is_offline_and_reads_the_selected_bytes(monkeypatch) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("dataset pysource must not touch the network")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    data = tokens.load_python_source(split_bytes=SMALL)
    again = tokens.load_python_source(split_bytes=SMALL)
    files = tokens.python_source_files(split_bytes=SMALL)
    assert data.vocab_size == 256
    for split, size in SMALL.items():
        got = np.asarray(data.split(split)).reshape(-1)
        assert got.dtype == np.uint8 and got.size == size
        np.testing.assert_array_equal(got, np.asarray(again.split(split)).reshape(-1))
        want = b"".join(p.read_bytes()[:n] for p, n in files[split])
        assert got.tobytes() == want


def test_too_few_sources_is_a_clear_error(tmp_path) -> None:
    (tmp_path / "only.py").write_text("x = 1\n" * 100)
    with pytest.raises(DatasetNotFoundError, match="too few to fill"):
        tokens.python_source_files(tmp_path)
    with pytest.raises(ValueError, match="split_bytes"):
        tokens.python_source_files(split_bytes={"train": 10})


def test_pysource_task_defaults_are_cpu_sized() -> None:
    task = envs.make_task("gpt2mini", "pysource")
    assert (task.width, task.num_layers, task.num_heads) == (32, 2, 2)
    assert (task.context_length, task.batch_size, task.vocab_size) == (64, 32, 256)
    assert task.num_params() == 35_712
    assert envs.make_task("gpt2mini", "pysource", width=16).width == 16
    with pytest.raises(ValueError, match="text_files are"):
        envs.make_task("gpt2mini", "pysource", text_files=("a.txt",))
