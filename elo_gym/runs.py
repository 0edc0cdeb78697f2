"""The harness every agent shares: its run directory (config.json, checkpoints,
metrics.csv), the outer-step loop, and the command line.

A run directory is named env id, agent/mode, seed and time joined by ``__`` unless the
user gives one; reusing a directory resumes its run, only with the same config (or a
larger number of outer steps, which extends it). An agent reads as its ``Args``, its
pure functions, and a ``main`` that calls :func:`open_run` and :func:`train_loop`.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import pathlib
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import orbax.checkpoint as ocp
import tyro
from tqdm import tqdm

from elo_gym import checkpoint, distributed, lopt


def default_run_dir(*parts: str) -> pathlib.Path:
    """runs/<part>__<part>__...__<time>."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return pathlib.Path("runs") / "__".join([*parts, stamp])


def prepare_run_dir(
    run_dir: pathlib.Path,
    config: dict,
    *,
    write: bool = True,
    extendable: str | None = "outer_steps",
) -> pathlib.Path:
    """Creates ``run_dir`` with config.json, or checks its config equals ``config``.

    A run may be extended: if ``extendable`` (the number of outer steps) is the only
    setting that differs and it grew, config.json takes the new value and the run
    continues from its last checkpoint. ``write=False`` (processes other than the
    main one) only checks an existing config.json, so that every process refuses a
    mismatched run alike.

    Raises:
      ValueError: the directory holds a run with another config (names what differs),
        or ``extendable`` shrank.
      OSError: the directory cannot be written.
    """
    config = dict(config, step_mult=lopt.STEP_MULT, exp_mult=lopt.EXP_MULT)
    config = json.loads(json.dumps(config))  # tuples -> lists, as read back
    config_file = run_dir / "config.json"
    if config_file.is_file():
        saved = json.loads(config_file.read_text())
        diff = sorted(
            k for k in set(saved) | set(config) if saved.get(k) != config.get(k)
        )
        if diff == [extendable] and extendable is not None:
            if config[extendable] < saved[extendable]:
                raise ValueError(
                    f"{run_dir} holds a run of {saved[extendable]} {extendable}; it "
                    f"can be extended, not shortened to {config[extendable]}"
                )
            if write:
                _write_config(run_dir, config)
            return run_dir
        if diff:
            details = "; ".join(
                f"{k}: saved {saved.get(k)!r}, now {config.get(k)!r}" for k in diff
            )
            raise ValueError(
                f"{run_dir} holds a run with another config ({details}); use another "
                "--run-dir or the same settings to resume"
            )
        return run_dir
    if write:
        _write_config(run_dir, config)
    return run_dir


def _write_config(run_dir: pathlib.Path, config: dict) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / "config.json.tmp"
        tmp.write_text(json.dumps(config, indent=2))
        tmp.replace(run_dir / "config.json")  # atomic: never a half-written config
    except OSError as e:
        raise OSError(
            f"cannot write the run directory {run_dir}: {e}; "
            "choose a writable --run-dir"
        ) from e


def require_positive(args: Any, *names: str) -> None:
    """Raises ValueError naming the first field of ``args`` in ``names`` not > 0."""
    for name in names:
        if not getattr(args, name) > 0:
            raise ValueError(f"{name} must be > 0, got {getattr(args, name)}")


def args_config(args: Any, exclude: Sequence[str] = ()) -> dict:
    """An agent's settings as config.json records them (``run_dir``, ``progress`` and
    ``exclude`` left out: they do not change what the run computes)."""
    skip = {"run_dir", "progress", *exclude}
    return {k: v for k, v in dataclasses.asdict(args).items() if k not in skip}


class Run(NamedTuple):
    """An opened run directory: where to save, what to continue from, where to log."""

    directory: pathlib.Path
    manager: ocp.CheckpointManager
    state: Any  # the restored state, or the fresh template
    start: int  # outer steps already done
    log: MetricsLog | None  # None on processes other than the main one


def open_run(
    run_dir: pathlib.Path,
    config: dict,
    template: Any,
    fields: Sequence[str],
    *,
    main_process: bool = True,
) -> Run:
    """Prepares ``run_dir`` (config.json written, checked or extended), restores its
    latest readable checkpoint into ``template``'s structure, and opens metrics.csv
    (on the main process) with the rows of the steps already done."""
    prepare_run_dir(run_dir, config, write=main_process)
    manager = checkpoint.checkpoint_manager(run_dir)
    restored = checkpoint.restore_state(manager, template)
    state, start = restored if restored is not None else (template, 0)
    log = MetricsLog(run_dir / "metrics.csv", fields, start) if main_process else None
    return Run(run_dir, manager, state, start, log)


def run_cli(main: Callable[[Any], pathlib.Path], args_type: type, name: str):
    """Parses ``args_type`` from the command line and runs ``main``; bad input (a
    ValueError or OSError) prints one line and exits 2 instead of a traceback."""
    try:
        return main(tyro.cli(args_type))
    except (ValueError, OSError) as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


class MetricsLog:
    """metrics.csv, a row per outer step; rows past a resumed checkpoint are dropped."""

    def __init__(self, path: pathlib.Path, fields: Sequence[str], resume_step: int):
        rows = []
        if path.is_file() and resume_step > 0:
            with path.open() as f:
                rows = [
                    r for r in csv.DictReader(f) if int(r["outer_step"]) < resume_step
                ]
        self._fields = tuple(fields)
        self._file = path.open("w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=self._fields)
        self._writer.writeheader()
        self._writer.writerows(rows)
        self._file.flush()

    def write(self, row: dict) -> None:
        self._writer.writerow({k: row[k] for k in self._fields})
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def train_loop(
    run: Run,
    step: Callable[[Any, int], tuple[Any, dict]],
    args: Any,
    *,
    shown: Sequence[str],
    desc: str,
    progress: bool = True,
) -> Any:
    """Runs outer steps ``run.start .. args.outer_steps - 1`` from ``run.state``;
    returns the last state.

    ``step(state, t)`` does one outer step and returns (state, metrics row), syncing
    with the host once. Each row goes to ``run.log`` (None: processes other than the
    main one), and its ``shown`` metrics to the progress bar; the state is
    checkpointed every ``args.checkpoint_every`` steps and at the end (``args``: the
    agent's settings).
    Ctrl-C finishes the current step, saves it and returns early (the run resumes from
    there), so no work is lost; with several processes, all stop at the same step.
    """
    state, start, manager, log = run.state, run.start, run.manager, run.log
    total, checkpoint_every = args.outer_steps, args.checkpoint_every
    interrupted = False

    def on_sigint(signum, frame):
        nonlocal interrupted
        interrupted = True

    previous = signal.signal(signal.SIGINT, on_sigint)
    bar = tqdm(
        total=total, initial=start, disable=not progress, desc=desc, dynamic_ncols=True
    )
    try:
        for t in range(start, total):
            state, row = step(state, t)
            if log is not None:
                log.write(row)
            bar.set_postfix({k: f"{row[k]:.3g}" for k in shown})
            bar.update(1)
            done = t + 1
            # Every process must take part in the same saves: one Ctrl-C stops all.
            interrupted = distributed.any_process(interrupted)
            if done % checkpoint_every == 0 or done == total or interrupted:
                checkpoint.save_state(manager, done, state)
            if interrupted:
                if distributed.is_main_process():
                    print(
                        f"\ninterrupted: saved outer step {done} to "
                        f"{manager.directory.parent}",
                        file=sys.stderr,
                    )
                break
    finally:
        bar.close()
        if log is not None:
            log.close()
        signal.signal(signal.SIGINT, previous)
    return state
