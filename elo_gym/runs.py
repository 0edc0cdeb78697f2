"""Run directories shared by the agents: config.json written once, metrics.csv rows.

A run directory is named env id, agent/mode, seed and time joined by ``__`` unless the
user gives one; reusing a directory resumes its run, and only with the same config.
"""

from __future__ import annotations

import csv
import datetime
import json
import pathlib
from collections.abc import Sequence

from elo_gym import lopt


def default_run_dir(*parts: str) -> pathlib.Path:
    """runs/<part>__<part>__...__<time>."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return pathlib.Path("runs") / "__".join([*parts, stamp])


def prepare_run_dir(run_dir: pathlib.Path, config: dict) -> pathlib.Path:
    """Creates ``run_dir`` with config.json, or checks its config equals ``config``.

    Raises:
      ValueError: the directory holds a run with another config (names what differs).
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
        if diff:
            details = "; ".join(
                f"{k}: saved {saved.get(k)!r}, now {config.get(k)!r}" for k in diff
            )
            raise ValueError(
                f"{run_dir} holds a run with another config ({details}); use another "
                "--run-dir or the same settings to resume"
            )
        return run_dir
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / "config.json.tmp"
        tmp.write_text(json.dumps(config, indent=2))
        tmp.replace(config_file)  # atomic: never a half-written config
    except OSError as e:
        raise OSError(
            f"cannot write the run directory {run_dir}: {e}; "
            "choose a writable --run-dir"
        ) from e
    return run_dir


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
