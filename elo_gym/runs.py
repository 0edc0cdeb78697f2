"""The harness every agent shares: its run directory (config.json, checkpoints,
metrics.csv), the outer-step loop, and the command line.

A run directory is named env id, agent/mode, seed and time joined by ``__`` unless the
user gives one; reusing a directory resumes its run, only with the same config (or a
larger number of outer steps, which extends it). An agent reads as its ``Args``, its
pure functions, and a ``main`` that calls :func:`open_run` and :func:`train_loop`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import json
import pathlib
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import orbax.checkpoint as ocp
import tyro
from tqdm import tqdm

from elo_gym import checkpoint, distributed, lo_spec, lopt


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
    legacy: Mapping[str, tuple[Any, Any]] | None = None,
) -> pathlib.Path:
    """Creates ``run_dir`` with config.json, or checks its config equals ``config``.

    A run may be extended: if ``extendable`` (the number of outer steps) is the only
    setting that differs and it grew, config.json takes the new value and the run
    continues from its last checkpoint. ``write=False`` (processes other than the
    main one) only checks an existing config.json, so that every process refuses a
    mismatched run alike. An LO setting (:class:`~elo_gym.lo_spec.LOSpec`) that an
    older config.json does not record counts as its default, and a setting named in
    ``legacy`` with its (old, new) values counts as the new value (an old value None
    also stands for a config.json written before the setting existed).

    Raises:
      ValueError: the directory holds a run with another config (names what differs),
        or ``extendable`` shrank.
      OSError: the directory cannot be written.
    """
    config = dict(dict(step_mult=lopt.STEP_MULT, exp_mult=lopt.EXP_MULT), **config)
    config = json.loads(json.dumps(config))  # tuples -> lists, as read back
    config_file = run_dir / "config.json"
    if config_file.is_file():
        saved = json.loads(config_file.read_text())
        # A run written before an LO setting existed ran with its default.
        lo_defaults = lo_spec.LOSpec().to_json()
        saved = {**{k: v for k, v in lo_defaults.items() if k in config}, **saved}
        for k, (was, now) in (legacy or {}).items():
            if k in config and saved.get(k) == was:  # None: written before k existed
                saved[k] = now
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


def flatten(args: Any) -> dict[str, Any]:
    """The fields of a settings dataclass by name, those of its dataclass-valued
    fields (its groups, e.g. the LO spec) in their place: the names of the command
    line's flags, which are unique."""
    flat = {}
    for field in dataclasses.fields(args):
        value = getattr(args, field.name)
        if dataclasses.is_dataclass(value):
            flat.update(flatten(value))
        else:
            flat[field.name] = value
    return flat


def replace_flat(args: Any, **changes: Any) -> Any:
    """``args`` with ``changes`` made, each named by its flag (a field of ``args``
    or of one of its groups, see :func:`flatten`).

    Raises:
      ValueError: a name that is no setting of ``args``.
    """
    own, groups = {}, {}
    for field in dataclasses.fields(args):
        value = getattr(args, field.name)
        if dataclasses.is_dataclass(value):
            names = set(flatten(value)) & set(changes)
            if names:
                groups[field.name] = replace_flat(
                    value, **{k: changes[k] for k in names}
                )
        elif field.name in changes:
            own[field.name] = changes[field.name]
    unknown = set(changes) - set(flatten(args))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(sorted(unknown))}")
    return dataclasses.replace(args, **own, **groups)


def args_config(args: Any, exclude: Sequence[str] = ()) -> dict:
    """An agent's settings as config.json records them, flat (:func:`flatten`;
    ``run_dir``, ``progress`` and ``exclude`` left out: they do not change what the
    run computes)."""
    skip = {"run_dir", "progress", *exclude}
    return {k: v for k, v in flatten(args).items() if k not in skip}


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
    legacy: Mapping[str, tuple[Any, Any]] | None = None,
) -> Run:
    """Prepares ``run_dir`` (config.json written, checked or extended), restores its
    latest readable checkpoint into ``template``'s structure, and opens metrics.csv
    (on the main process) with the rows of the steps already done."""
    prepare_run_dir(run_dir, config, write=main_process, legacy=legacy)
    manager = checkpoint.checkpoint_manager(run_dir)
    restored = checkpoint.restore_state(manager, template)
    state, start = restored if restored is not None else (template, 0)
    log = MetricsLog(run_dir / "metrics.csv", fields, start) if main_process else None
    return Run(run_dir, manager, state, start, log)


# tyro's setting for an agent's Args: its groups' flags without the group's prefix
# (``--n-max``, not ``--inner.n-max``).
FLAT_FLAGS = (tyro.conf.OmitArgPrefixes,)


def parse_with_defaults(
    args_type: type,
    defaults: Callable[..., Any],
    argv: Sequence[str] | None = None,
    **choices: Sequence[str],
) -> Any:
    """tyro's parse of ``args_type`` (flags without group prefixes) from the defaults
    ``defaults(**chosen)``, where ``chosen`` holds the values of the flags named in
    ``choices`` (name -> valid values, the first one when the flag is not given or
    not valid: tyro then names it). So ``--help`` shows those defaults, and every
    flag given overrides them.
    """
    first = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for name in choices:
        first.add_argument(f"--{name.replace('_', '-')}")
    given = vars(first.parse_known_args(argv)[0])
    chosen = {k: given[k] if given[k] in c else c[0] for k, c in choices.items()}
    return tyro.cli(args_type, args=argv, default=defaults(**chosen), config=FLAT_FLAGS)


def run_cli(main: Callable[[Any], pathlib.Path], parse: Callable[[], Any], name: str):
    """Parses the command line with ``parse`` (e.g. ``tyro.cli`` of an agent's Args)
    and runs ``main``; bad input (a ValueError or OSError) prints one line and exits
    2 instead of a traceback."""
    try:
        return main(parse())
    except (ValueError, OSError) as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def json_cli(
    config_type: type, run: Callable[[Any], dict], prog: str, argv: Sequence[str] | None
) -> dict:
    """The command line of a script that prints one JSON object: parses
    ``config_type`` with tyro, runs ``run(config)`` (a ValueError prints ``prog:
    error: ...`` and exits 2), prints the JSON and writes it to ``config.out``."""
    config = tyro.cli(config_type, args=argv)
    try:
        result = run(config)
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    text = json.dumps(result, indent=1, allow_nan=False)
    if config.out:
        pathlib.Path(config.out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(config.out).write_text(text)
    print(text)
    return result


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
    *,
    total: int,
    checkpoint_every: int,
    shown: Sequence[str],
    desc: str,
    progress: bool = True,
) -> Any:
    """Runs outer steps ``run.start .. total - 1`` from ``run.state``; returns the
    last state.

    ``step(state, t)`` does one outer step and returns (state, metrics row), syncing
    with the host once. Each row goes to ``run.log`` (None: processes other than the
    main one), and its ``shown`` metrics to the progress bar; the state is
    checkpointed every ``checkpoint_every`` steps and at the end.
    Ctrl-C finishes the current step, saves it and returns early (the run resumes from
    there), so no work is lost; with several processes, all stop at the same step.
    """
    state, start, manager, log = run.state, run.start, run.manager, run.log
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
