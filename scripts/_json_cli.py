"""Shared CLI of the scripts that print one JSON object.

Parses a config dataclass with tyro, runs, names a bad input and exits 2, prints the
JSON and writes it to ``config.out``.
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import tyro


def main(
    config_type: type, run: Callable[[Any], dict], prog: str, argv: Sequence[str] | None
) -> dict:
    """Runs ``run(config)``; a ValueError prints ``prog: error: ...`` and exits 2."""
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
