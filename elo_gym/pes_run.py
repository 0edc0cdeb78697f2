"""What a PES run does around its outer steps: the LO it starts from, the best LO it
keeps, what it exports and what it reports at the end (``agents/pes_train.py``)."""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import pathlib
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from elo_gym import checkpoint, distributed, lo_features, lopt, runs
from elo_gym.lo_spec import LOSpec
from elo_gym.pes import PESState

# RunArgs fields that say how a run is launched, not what it computes.
LAUNCH = ("distributed", "coordinator_address", "num_processes", "process_id")


@dataclasses.dataclass(frozen=True)
class RunArgs:
    """The run directory, validation, export and the multi-process launch."""

    run_dir: str | None = None
    """Run directory; default runs/<env>__<mode>__<seed>__<time>. Reused: resume."""
    eval_every: int = 50
    """Outer steps between validation runs at 10x the horizon (0: never)."""
    eval_seeds: int = 2
    """Fresh optimizees per validation run."""
    eval_horizon_factor: int = 10
    """Validation runs train for this many times n_max inner steps."""
    export: Literal["last", "best"] = "best"
    """lo.msgpack: the last LO, or the one of lowest validation loss."""
    checkpoint_every: int = 50
    """Outer steps between checkpoints."""
    progress: bool = True
    """Show a progress bar."""
    distributed: bool = False
    """Join a multi-process run even with the three settings below unset (JAX
    detects them under SLURM, Open MPI, Cloud TPU or Kubernetes)."""
    coordinator_address: str | None = None
    """Multi-process run: host:port of process 0, the same for every process."""
    num_processes: int | None = None
    """Multi-process run: how many processes."""
    process_id: int | None = None
    """Multi-process run: this process's rank (0 writes the files)."""

    def validate(self) -> None:
        """Raises ValueError naming the first bad setting."""
        runs.require_positive(
            self, "checkpoint_every", "eval_seeds", "eval_horizon_factor"
        )
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {self.eval_every}")
        if self.export == "best" and self.eval_every == 0:
            raise ValueError(
                "export='best' needs validation runs: set eval_every > 0, or "
                "export='last'"
            )
        if self.run_dir is None and self.launched:
            # The default name holds the time, which differs between processes.
            raise ValueError("a multi-process run needs --run-dir, the same for all")

    @property
    def launched(self) -> bool:
        """Whether this is one process of a multi-process run."""
        given = (self.coordinator_address, self.num_processes, self.process_id)
        return self.distributed or given != (None,) * 3

    def launch(self) -> bool:
        """Joins the multi-process run when one is asked for
        (:func:`distributed.initialize`); returns whether this is process 0."""
        distributed.initialize(
            self.coordinator_address,
            self.num_processes,
            self.process_id,
            auto=self.distributed,
        )
        return distributed.is_main_process()

    def directory(self, env: str, mode: str, seed: int) -> pathlib.Path:
        """``run_dir``, or runs/<env>__<mode>__<seed>__<time>."""
        return pathlib.Path(self.run_dir or runs.default_run_dir(env, mode, str(seed)))

    def validation_due(self, done: int, total: int) -> bool:
        """Whether the LO is validated after ``done`` of ``total`` outer steps."""
        return self.eval_every > 0 and (done % self.eval_every == 0 or done == total)


# --init-lo's value for the fresh LO with its output layer zeroed (its silenced self).
SILENCED = "silenced"
# Where ``--init-lo bc`` puts the clone of the demonstrator, inside the run directory.
CLONE_DIR = "init_lo"


def initial_lo(path: str, spec: LOSpec, template: lopt.MetaParams) -> lopt.MetaParams:
    """The LO at ``path`` (a run dir, lo.msgpack or checkpoints), checked against
    ``spec``, the run's LO settings; ``silenced``: ``template`` (the run's fresh LO)
    with its output layer zeroed (``lo_features.silenced_output``).

    With several processes, process 0 reads it and every process gets its bits
    (``template``, an LO of the same shape, stands in elsewhere), so the other hosts
    never read a file process 0 may have just written.

    Raises:
      ValueError: the LO was trained with other settings (naming them).
    """
    if path == SILENCED:  # every process derives it from the same seed
        return lo_features.silenced_output(template)
    if not distributed.is_main_process():
        return jax.tree.map(jnp.asarray, distributed.broadcast_from_main(template))
    meta, info = checkpoint.load_meta_params(path)
    differences = LOSpec.from_json(info).differences(spec)
    if differences:
        details = ", ".join(
            f"{k} {found!r} (this run: {wanted!r})"
            for k, (found, wanted) in differences.items()
        )
        raise ValueError(
            f"--init-lo {path} is an LO with {details}: meta-train with its "
            "settings (the flags of those names) or clone another"
        )
    return jax.tree.map(jnp.asarray, distributed.broadcast_from_main(meta))


def keep_best(state: PESState, valid_loss: float, done: int) -> PESState:
    """Makes the LO just validated (after ``done`` outer steps) the best one if its
    validation loss is the lowest so far."""
    if not valid_loss < float(state.best_valid_loss):
        return state
    return state.replace(
        best_meta=jax.tree.map(jnp.copy, state.meta),
        best_valid_loss=jnp.full_like(state.best_valid_loss, valid_loss),
        best_step=jnp.full_like(state.best_step, done),
    )


def export(
    run_dir: pathlib.Path, state: PESState, spec: LOSpec, which: str, info: dict
) -> None:
    """Writes ``lo.msgpack`` (the ``which`` = "last" or "best" LO; the last one if
    none was validated) and, once validated, the best LO in ``best/`` so that both
    can be evaluated; ``info`` goes into ``lo.json``."""
    validated = int(state.best_step) >= 0
    info = dict(
        info,
        best_step=int(state.best_step),
        best_valid_loss=float(state.best_valid_loss),
    )
    best = dict(info, exported="best", outer_step=int(state.best_step))
    last = dict(info, exported="last", outer_step=int(state.outer_step))
    save = functools.partial(checkpoint.save_lo, spec=spec)
    if which == "best" and validated:
        save(run_dir, state.best_meta, extra=best)
    else:
        save(run_dir, state.meta, extra=last)
    if validated:
        (run_dir / "best").mkdir(exist_ok=True)
        save(run_dir / "best", state.best_meta, extra=best)


def summary(run_dir: pathlib.Path) -> str:
    """What a finished run left: where the LO is, its final losses, what to run next."""
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    info = json.loads((run_dir / checkpoint.LO_META_FILE).read_text())
    window = rows[-max(1, len(rows) // 10) :]
    meta = np.mean([float(r["meta_loss"]) for r in window])
    task = np.mean([float(r["task_loss"]) for r in window])
    lines = [
        f"learned optimizer: {run_dir / checkpoint.LO_FILE} "
        f"({info['exported']} LO, outer step {info['outer_step']})",
        f"meta-loss {meta:.4g}, task loss {task:.4g} (mean of the last "
        f"{len(window)} outer steps)",
    ]
    validated = [r for r in rows if r["val_lo_valid_loss"] not in ("", "nan")]
    if validated:
        last = {k: float(v) for k, v in validated[-1].items() if v not in ("", None)}
        lines.append(
            f"at 10x the horizon (validation, outer step {int(last['outer_step']) + 1})"
            f": LO valid loss {last['val_lo_valid_loss']:.4g}, update norm "
            f"x{last['val_lo_update_norm_ratio']:.3g}, param norm "
            f"x{last['val_lo_param_norm_ratio']:.3g}; Adam lr 1e-3: "
            f"{last['val_adam_valid_loss']:.4g}, "
            f"x{last['val_adam_update_norm_ratio']:.3g}, "
            f"x{last['val_adam_param_norm_ratio']:.3g}"
        )
        # Rows of a run resumed from before the silenced LO's columns lack them.
        if "val_silenced_valid_loss" in last:
            lines.append(
                f"the LO with its MLP silenced: valid loss "
                f"{last['val_silenced_valid_loss']:.4g} ± "
                f"{last['val_silenced_valid_loss_std']:.2g}, the LO's "
                f"{last['val_lo_valid_loss']:.4g} ± "
                f"{last['val_lo_valid_loss_std']:.2g} (std over validation seeds)"
            )
        if "val_lo_minus_silenced_valid_loss" in last:
            lines.append(
                "the learned part, seed by seed (the LO minus its silenced self; "
                "negative: it helps): valid loss "
                f"{last['val_lo_minus_silenced_valid_loss']:+.4g} ± "
                f"{last['val_lo_minus_silenced_valid_loss_std']:.2g}, train loss "
                f"{last['val_lo_minus_silenced_train_loss']:+.4g} ± "
                f"{last['val_lo_minus_silenced_train_loss_std']:.2g}"
            )
    los = f"--lo {info['mode']}={run_dir}"
    clone = run_dir / CLONE_DIR
    if (clone / checkpoint.LO_FILE).is_file():
        # The clone PES started from can do better on unseen nets (docs/levers.md,
        # forty-fourth), so it is evaluated beside the exported LO.
        los += f" --lo clone={clone}"
        lines.append(f"the clone of the demonstrator that PES started from: {clone}")
    lines.append(
        "evaluate it at 10x its horizon against tuned AdamW and LAMB: python "
        f"scripts/evaluate.py {los} --out {run_dir / 'eval'}"
    )
    return "\n".join(lines)
