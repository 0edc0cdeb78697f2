"""Learned optimizers that ship with the package, loadable offline.

``elo_gym.pretrained("digits")`` is the directory of a trained LO (``lo.msgpack``
and ``lo.json``), so every face that takes a run directory takes it:
``elo_gym.load_optimizer``, ``elo_gym.torch_optim.load``, ``scripts/evaluate.py --lo``
and ``pes_train --init-lo``.
"""

from __future__ import annotations

import importlib.resources
import pathlib

# name -> where it came from; docs/levers.md (forty-fourth) has its measured effect.
PRETRAINED = {
    "digits": (
        "the clone of cautious LAMB that the cpu preset's main job makes before PES "
        "(RUN_DIR/init_lo of python agents/pes_train.py, seed 0, at 3592614): on the "
        "validation families it gains more than the LOs PES makes from the clones"
    ),
}


def pretrained(name: str = "digits") -> pathlib.Path:
    """The directory of the shipped LO ``name`` (one of :data:`PRETRAINED`).

    Example:
      >>> path = elo_gym.pretrained("digits")  # doctest: +SKIP
      >>> opt = elo_gym.load_optimizer(path, total_steps=2000)  # doctest: +SKIP
    """
    if name not in PRETRAINED:
        raise ValueError(
            f"no pretrained LO named {name!r}; shipped: {', '.join(PRETRAINED)}. "
            "A run directory of your own loads with elo_gym.load_optimizer(path)."
        )
    path = pathlib.Path(str(importlib.resources.files("elo_gym") / "lo_weights"))
    return path / name
