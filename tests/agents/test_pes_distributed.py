"""PES over two processes (jax.distributed, one CPU device each, on localhost): the
same LO as one process with two devices, files from process 0 only, an exact resume
after both processes are killed, and the demonstrator's clone shared by process 0.

The two-process tests are slow on a 2-core machine (a few minutes together): process 1
compiles every program itself, since JAX's persistent cache is written by process 0
only and keyed by device.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import flax.serialization
import jax
import numpy as np
import pytest

from elo_gym import checkpoint, distributed
from elo_gym.agents import pes_train

SCRIPT = pathlib.Path(pes_train.__file__)
# TINY of test_pes_train.py, with validation at outer steps 3 and 6 and the best LO
# exported, so that both processes run validation and agree on the best LO.
TINY_FLAGS = [
    "--num-pairs",
    "2",
    "--truncation",
    "4",
    "--outer-steps",
    "6",
    "--n-min",
    "2",
    "--n-max",
    "6",
    "--hidden-sizes",
    "10",
    "--batch-size",
    "32",
    "--hidden-size",
    "8",
    "--checkpoint-every",
    "1",
    "--no-progress",
    "--eval-every",
    "3",
    "--export",
    "best",
    "--init-lo",
    "none",  # the cpu preset's clone of the demonstrator: its own test below
]
TIMEOUT_S = 600  # per run: a hung collective fails the test instead of hanging CI
LAUNCH_FLAGS = ("distributed", "coordinator_address", "num_processes", "process_id")


def _env(devices: int) -> dict[str, str]:
    """This session's environment (its XLA flags and compilation cache, so that the
    runs compile alike) with ``devices`` CPU devices per process."""
    flags = [
        f
        for f in os.environ.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    ]
    flags.append(f"--xla_force_host_platform_device_count={devices}")
    return dict(os.environ, XLA_FLAGS=" ".join(flags))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(
    run_dir: pathlib.Path, flags: list[str] = TINY_FLAGS
) -> list[subprocess.Popen]:
    """Starts process 0 and process 1 of a two-process run; output goes to files."""
    address = f"localhost:{_free_port()}"
    procs = []
    for rank in range(2):
        log = (run_dir.parent / f"{run_dir.name}.{rank}.log").open("ab")
        cmd = [
            sys.executable,
            str(SCRIPT),
            "--run-dir",
            str(run_dir),
            *flags,
            "--coordinator-address",
            address,
            "--num-processes",
            "2",
            "--process-id",
            str(rank),
        ]
        procs.append(
            subprocess.Popen(cmd, env=_env(1), stdout=log, stderr=subprocess.STDOUT)
        )
    return procs


def _kill(procs: list[subprocess.Popen]) -> None:
    # SIGKILL: JAX's preemption notifier catches SIGTERM.
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
    for p in procs:
        p.wait()


def _logs(run_dir: pathlib.Path) -> str:
    return "\n".join(
        f"--- process {rank}:\n"
        + (run_dir.parent / f"{run_dir.name}.{rank}.log").read_text()[-3000:]
        for rank in range(2)
    )


def _run_two_processes(run_dir: pathlib.Path, flags: list[str] = TINY_FLAGS) -> None:
    procs = _launch(run_dir, flags)
    deadline = time.time() + TIMEOUT_S
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        _kill(procs)
        pytest.fail(f"two-process run timed out\n{_logs(run_dir)}")
    codes = [p.returncode for p in procs]
    assert codes == [0, 0], f"exit codes {codes}\n{_logs(run_dir)}"


def _lo_arrays(run_dir: pathlib.Path) -> list[np.ndarray]:
    meta, _ = checkpoint.load_meta_params(run_dir)
    return jax.tree.leaves(flax.serialization.to_state_dict(meta))


def _outer_steps_logged(run_dir: pathlib.Path) -> list[int]:
    rows = (run_dir / "metrics.csv").read_text().strip().splitlines()[1:]
    return [int(r.split(",")[0]) for r in rows]


def _assert_one_process_gives(
    two_process_run: pathlib.Path, run_dir: pathlib.Path, flags: list[str]
) -> None:
    """One process with two devices, run with ``flags``, gives the two-process LO."""
    subprocess.run(
        [sys.executable, str(SCRIPT), "--run-dir", str(run_dir), *flags],
        env=_env(2),
        check=True,
        capture_output=True,
        timeout=TIMEOUT_S,
    )
    for a, b in zip(_lo_arrays(run_dir), _lo_arrays(two_process_run), strict=True):
        # The tolerance of test_two_devices_match_one (gloo's reductions may round
        # differently from in-process ones).
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> pathlib.Path:
    """One uninterrupted run of two processes with one CPU device each."""
    run_dir = tmp_path_factory.mktemp("two_processes") / "run"
    _run_two_processes(run_dir)
    return run_dir


@pytest.mark.slow
def test_two_processes_match_one_process_with_two_devices(two_process_run, tmp_path):
    _assert_one_process_gives(two_process_run, tmp_path / "two_devices", TINY_FLAGS)
    # Process 0 alone wrote the files, and the launch settings are not the run's
    # config (another launch resumes the same run).
    assert _outer_steps_logged(two_process_run) == list(range(6))
    config = json.loads((two_process_run / "config.json").read_text())
    assert not set(LAUNCH_FLAGS) & set(config)
    info = json.loads((two_process_run / "lo.json").read_text())
    assert info["exported"] == "best" and info["best_step"] in (3, 6)
    assert (two_process_run / "best" / "lo.msgpack").is_file()


@pytest.mark.slow
def test_killed_two_process_run_resumes_exactly(two_process_run, tmp_path):
    run_dir = tmp_path / "killed"
    procs = _launch(run_dir)
    ckpts = run_dir / "checkpoints"
    deadline = time.time() + TIMEOUT_S
    try:
        while time.time() < deadline and all(p.poll() is None for p in procs):
            if ckpts.is_dir() and any(
                p.name.isdigit() and int(p.name) >= 1 for p in ckpts.iterdir()
            ):
                break
            time.sleep(0.01)
        running = [p.poll() is None for p in procs]
    finally:
        _kill(procs)
    assert all(running), f"a process ended before the kill\n{_logs(run_dir)}"
    assert not (run_dir / "lo.msgpack").exists()
    _run_two_processes(run_dir)  # the same command: resumes
    for a, b in zip(_lo_arrays(two_process_run), _lo_arrays(run_dir), strict=True):
        np.testing.assert_array_equal(a, b)
    assert _outer_steps_logged(run_dir) == list(range(6))


@pytest.mark.slow
def test_two_processes_start_from_process_0s_clone(tmp_path):
    """``--init-lo bc`` on two processes: process 0 clones
    the demonstrator once into RUN_DIR/init_lo and both processes start from its
    bits, so the run matches one process with two devices started from that clone."""
    run_dir = tmp_path / "cloned"
    flags = [*TINY_FLAGS[:-2], "--init-lo", "bc", "--clone-steps", "2"]
    _run_two_processes(run_dir, flags)
    clone = run_dir / "init_lo"
    assert (clone / "lo.msgpack").is_file()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["init_lo"] == str(clone)
    one_process_flags = [*TINY_FLAGS[:-2], "--init-lo", str(clone)]
    _assert_one_process_gives(run_dir, tmp_path / "one_process", one_process_flags)


@pytest.mark.parametrize(
    "launch",
    [dict(distributed=True), dict(coordinator_address="localhost:1", process_id=0)],
)
def test_multi_process_run_needs_a_run_dir(launch, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the default run directory would go
    with pytest.raises(ValueError, match="needs --run-dir"):
        pes_train.main(pes_train.make_args(num_pairs=2, outer_steps=1, **launch))
    assert not list(tmp_path.iterdir())


def test_single_process_is_left_as_is():
    """Without the distributed settings nothing joins a cluster, and the helpers are
    identities (bit for bit) on one process."""
    assert distributed.initialize() is False
    assert distributed.is_main_process()
    row = {"val_lo_valid_loss": 2.302585092994046, "val_best_step": 6}
    assert distributed.broadcast_from_main(row) is row
    assert distributed.any_process(True) and not distributed.any_process(False)
    split, whole = distributed.pairs_shardings(len(jax.devices()))
    x = np.random.default_rng(0).normal(size=(len(jax.devices()), 3)).astype("f4")
    put = distributed.put({"x": x}, split)["x"]
    np.testing.assert_array_equal(np.asarray(put), x)
    assert put.sharding == split
    scalar = distributed.put(np.int32(7), whole)
    assert scalar.sharding == whole and scalar.dtype == np.int32 and int(scalar) == 7
