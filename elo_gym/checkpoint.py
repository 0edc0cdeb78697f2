"""Saving and loading meta-training state and trained learned optimizers.

A run directory holds ``config.json``, ``metrics.csv``, ``checkpoints/<step>/`` (orbax;
the whole meta-training state, written atomically so a half-written step is never
listed) and, once training ends, ``lo.msgpack`` + ``lo.json`` (the trained LO).
:func:`load_optimizer` turns any of these into an ``optax.GradientTransformation``.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import sys
from typing import Any

import flax.serialization
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp

from elo_gym import lo_spec, lopt
from elo_gym.lo_spec import LOSpec

LO_FILE = "lo.msgpack"
LO_META_FILE = "lo.json"
CHECKPOINT_DIR = "checkpoints"


def checkpoint_manager(
    run_dir: str | pathlib.Path, max_to_keep: int = 2
) -> ocp.CheckpointManager:
    """An orbax manager for ``run_dir/checkpoints`` (synchronous, atomic steps)."""
    directory = pathlib.Path(run_dir).absolute() / CHECKPOINT_DIR
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
    )
    # The handler named up front lets item_metadata read a step's tree before restore.
    return ocp.CheckpointManager(
        directory, options=options, item_handlers=ocp.StandardCheckpointHandler()
    )


def _flat_arrays(state: Any) -> dict[str, Any]:
    """{path: array} of a pytree's non-empty leaves (orbax cannot store empty arrays;
    their shapes are known from the template on restore).

    jax.Arrays stay on their devices: orbax writes each shard from the process that
    holds it, so a state sharded over several processes is never gathered.
    """
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return {
        jax.tree_util.keystr(path): (
            leaf if isinstance(leaf, jax.Array) else np.asarray(leaf)
        )
        for path, leaf in leaves
        if np.size(leaf) > 0
    }


# orbax does not checksum array data: a flipped byte restores as a wrong number. A
# SHA-256 of the arrays saved beside them turns that into a detected corruption.
DIGEST_KEY = "__sha256__"


def _digest(flat: dict[str, Any]) -> np.ndarray:
    """SHA-256 of a {path: array} dict (names, dtypes, shapes and bytes), as uint8."""
    h = hashlib.sha256()
    for key in sorted(flat):
        a = np.ascontiguousarray(np.asarray(flat[key]))
        h.update(f"{key}|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return np.frombuffer(h.digest(), np.uint8).copy()


def save_state(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
    """Writes a pytree of arrays (flax dataclasses, NamedTuples) at ``step``, with a
    digest of them when one process holds them all; with several processes, all of
    them must call it (their arrays are never gathered, so no digest)."""
    flat = _flat_arrays(state)
    if jax.process_count() == 1:
        flat[DIGEST_KEY] = _digest(flat)
    manager.save(step, args=ocp.args.StandardSave(flat), force=True)
    manager.wait_until_finished()


def _restore_checked(
    manager: ocp.CheckpointManager, step: int, target: dict[str, Any]
) -> dict[str, Any]:
    """One step's arrays; raises ValueError if they do not match their digest."""
    target = dict(target)
    has_digest = DIGEST_KEY in manager.item_metadata(step).keys()  # noqa: SIM118
    if has_digest:
        target[DIGEST_KEY] = np.zeros(32, np.uint8)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    flat = dict(manager.restore(step, args=ocp.args.StandardRestore(abstract)))
    if has_digest:
        saved = np.asarray(flat.pop(DIGEST_KEY))
        # With several processes no one holds every array to hash them.
        if jax.process_count() == 1 and not np.array_equal(saved, _digest(flat)):
            raise ValueError("its arrays do not match the digest saved with them")
    return flat


def restore_state(
    manager: ocp.CheckpointManager, template: Any, step: int | None = None
) -> tuple[Any, int] | None:
    """Restores the latest (or given) step into ``template``'s structure, or None.

    Each restored jax.Array gets its template leaf's sharding (every process reads
    only its own shards; with several processes, all of them must call this).

    A latest checkpoint that cannot be read (bytes flipped, a half-written file) is
    reported on stderr and the one before it restored.

    Raises:
      ValueError: no checkpoint can be read into the template (corrupt, or written
        with another config).
    """
    steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
    if not steps:
        return None
    target = _flat_arrays(template)
    failures = []
    for step in steps:
        try:
            flat = _restore_checked(manager, step, target)
            break
        except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many kinds
            failures.append((step, e))
            print(
                f"checkpoint {step} in {manager.directory} cannot be read (corrupt, "
                f"or written with another config): {type(e).__name__}: {e}",
                file=sys.stderr,
            )
    else:
        raise ValueError(
            f"no checkpoint in {manager.directory} can be read into this run's state "
            f"(tried {', '.join(str(s) for s, _ in failures)}; corrupt, or written "
            "with another config): use another --run-dir"
        ) from failures[-1][1]
    if failures:
        print(
            f"resuming from checkpoint {step}, the latest readable; deleting the "
            f"unreadable {', '.join(str(s) for s, _ in failures)} so that the run "
            "writes those steps again",
            file=sys.stderr,
        )
        for bad, _ in failures:
            manager.delete(bad)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    restored = [flat.get(jax.tree_util.keystr(path), leaf) for path, leaf in leaves]
    return treedef.unflatten(restored), step


def save_lo(
    run_dir: str | pathlib.Path,
    meta_params: lopt.MetaParams,
    spec: LOSpec | None = None,
    *,
    extra: dict | None = None,
) -> pathlib.Path:
    """Writes the trained LO as ``lo.msgpack`` + ``lo.json`` into ``run_dir``.

    Args:
      run_dir: an existing directory.
      meta_params: the LO's weights.
      spec: the settings it was trained with (None: the reference LO of its hidden
        size); ``lo.json`` records them (:meth:`LOSpec.to_json`).
      extra: more entries for ``lo.json`` (the run's env, mode, ...).
    """
    spec = LOSpec.for_meta_params(meta_params) if spec is None else spec
    spec.check_meta_params(meta_params)
    run_dir = pathlib.Path(run_dir)
    state = flax.serialization.to_state_dict(jax.device_get(meta_params))
    tmp = run_dir / (LO_FILE + ".tmp")
    tmp.write_bytes(flax.serialization.msgpack_serialize(state))
    tmp.replace(run_dir / LO_FILE)  # atomic: a reader never sees half a file
    info = {**spec.to_json(), **(extra or {})}
    (run_dir / LO_META_FILE).write_text(json.dumps(info, indent=2))
    return run_dir / LO_FILE


def load_meta_params(path: str | pathlib.Path) -> tuple[lopt.MetaParams, dict]:
    """Loads LO meta-parameters and the settings recorded beside them (``lo.json``,
    or the run's ``config.json`` for a checkpoint): :meth:`LOSpec.from_json` reads
    the LO's spec from them.

    Args:
      path: a run directory (its ``lo.msgpack``, else its latest checkpoint), a
        ``lo.msgpack`` file, a ``checkpoints`` directory or one checkpoint step
        directory.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no learned optimizer at {path}: give a run directory, "
            f"its {LO_FILE}, or a checkpoint directory"
        )
    if path.is_file():
        return _load_lo_file(path)
    if (path / LO_FILE).is_file():
        return _load_lo_file(path / LO_FILE)
    return _load_from_checkpoint(path)


def _load_lo_file(file: pathlib.Path) -> tuple[lopt.MetaParams, dict]:
    info_file = file.parent / LO_META_FILE
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    state = flax.serialization.msgpack_restore(file.read_bytes())
    return _meta_from_state(state, info), info


# Fields that MetaParams had before its decays were fixed (see elo_gym.lopt); files
# written then still load, as long as the offsets are zero (they were never trained).
_OLD_DECAY_FIELDS = ("momentum_decays", "rms_decays", "adafactor_decays")


def _meta_from_state(state: dict, info: dict) -> lopt.MetaParams:
    hidden = int(np.shape(state["mlp"]["Dense_0"]["kernel"])[1])
    template = lopt.init_meta_params(jax.random.PRNGKey(0), hidden_size=hidden)
    info.setdefault("hidden_size", hidden)
    lopt.check_decay_offsets({k: state[k] for k in _OLD_DECAY_FIELDS if k in state})
    state = {k: v for k, v in state.items() if k not in _OLD_DECAY_FIELDS}
    return flax.serialization.from_state_dict(template, state)


def _load_from_checkpoint(path: pathlib.Path) -> tuple[lopt.MetaParams, dict]:
    run_dir, step_dir = path, None
    if path.name != CHECKPOINT_DIR and not (path / CHECKPOINT_DIR).is_dir():
        if path.parent.name != CHECKPOINT_DIR:
            raise FileNotFoundError(
                f"{path} holds neither {LO_FILE} nor orbax checkpoints"
            )
        run_dir, step_dir = path.parent.parent, int(path.name)
    elif path.name == CHECKPOINT_DIR:
        run_dir = path.parent
    manager = checkpoint_manager(run_dir)
    step = manager.latest_step() if step_dir is None else step_dir
    if step is None:
        raise FileNotFoundError(
            f"{run_dir} has no {LO_FILE} and no finished checkpoint"
        )
    # A checkpoint written on other devices (another process or device count) lands
    # on this process's first device.
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    flat = manager.restore(step, args=ocp.args.StandardRestore(fallback_sharding=local))
    hidden = int(np.shape(flat[".meta.mlp['Dense_0']['kernel']"])[1])
    lopt.check_decay_offsets(
        {k: flat[f".meta.{k}"] for k in _OLD_DECAY_FIELDS if f".meta.{k}" in flat}
    )
    template = lopt.init_meta_params(jax.random.PRNGKey(0), hidden_size=hidden)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    meta = treedef.unflatten(
        [np.asarray(flat[".meta" + jax.tree_util.keystr(path)]) for path, _ in leaves]
    )
    info = {}
    config_file = run_dir / "config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        info.update({k: config[k] for k in lo_spec.FIELDS if k in config})
    info["hidden_size"] = hidden  # the weights' (an agent's config records it too)
    return meta, info


def load_optimizer(
    path: str | pathlib.Path, total_steps: int | None = None
) -> optax.GradientTransformation:
    """A trained learned optimizer as an ``optax.GradientTransformation``.

    ``total_steps``: the number of steps the run will take. A relative-time LO
    (``time_horizon`` > 0 in its ``lo.json``) needs it, as a cosine schedule does;
    others ignore it.

    Example:
      >>> opt = elo_gym.load_optimizer("runs/run", total_steps=2000)  # doctest: +SKIP
      >>> state = opt.init(params)
      >>> updates, state = opt.update(grads, state, params)
    """
    meta, info = load_meta_params(path)
    return lopt.small_fc_lopt(meta, LOSpec.from_json(info), total_steps=total_steps)
