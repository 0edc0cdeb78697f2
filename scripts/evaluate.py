"""Long-horizon evaluation: learned optimizers against tuned AdamW and LAMB (Sec. 5.2).

The work is :func:`elo_gym.evaluation.run`'s; its module docstring says what is run
and what is written into the output directory.

Usage::

    python scripts/evaluate.py --lo elo=runs/elo --lo naive=runs/naive --out eval/
    python scripts/evaluate.py --lo elo=runs/elo/lo.msgpack --steps 500 --seeds 2
    # Out of distribution: an LO meta-trained on the digits MLP, on GPT-2-mini over
    # plain-text files (bytes) and on ResNet-18.
    python scripts/evaluate.py --lo elo=runs/elo --allow-task-mismatch \
        --env ELO-FineWeb-GPT2Mini --dataset text --text-files a.txt b.txt --out lm/
    python scripts/evaluate.py --lo elo=runs/elo --allow-task-mismatch \
        --env ELO-ImageNet32-ResNet18 --data-dir ~/data --out resnet/

An LO meta-trained on another env than ``--env`` is an error unless
``--allow-task-mismatch`` is given (out-of-distribution evaluation is legitimate, but
it should be asked for, not happen by a typo).
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Sequence
from typing import Annotated

import tyro

from elo_gym.evaluation import EvalConfig, run


def cli(
    config: Annotated[EvalConfig, tyro.conf.arg(name="")],
    out: str,
) -> dict:
    """Evaluates learned optimizers at 10x their horizon against tuned AdamW and LAMB.

    Args:
      config: what to evaluate and how.
      out: output directory.
    """
    result = run(config, out)
    print((pathlib.Path(out) / "table.md").read_text())
    print(
        f"wrote {out}/results.json, table.md, {', '.join(result['plots'])} "
        f"in {result['compute']['wall_seconds']:.1f} s"
    )
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: parse flags (a bad one prints what is wrong and exits 2), run, print."""
    try:
        tyro.cli(cli, args=argv)
    except (ValueError, FileNotFoundError) as e:
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
