"""elo-gym: learned-optimizer meta-training as a Gymnasium environment."""

import pathlib as _pathlib

# In a source checkout, envs/ and agents/ sit beside this package; installed,
# pyproject maps them to elo_gym.envs and elo_gym.agents. Extending __path__ gives
# the same import names in both cases (e.g. when running from the repository root,
# where the checkout shadows the installed copy).
_checkout = _pathlib.Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (
    _checkout / "envs" / "__init__.py"
).is_file():
    __path__.append(str(_checkout))

from elo_gym.checkpoint import load_optimizer  # noqa: E402
from elo_gym.lopt import (  # noqa: E402
    MetaParams,
    SmallFcLOptState,
    init_meta_params,
    meta_params_from_reference,
    small_fc_lopt,
)
from elo_gym.registration import ENV_IDS, register_envs  # noqa: E402
from elo_gym.shipped import pretrained  # noqa: E402

register_envs()

__all__ = [
    "ENV_IDS",
    "MetaParams",
    "SmallFcLOptState",
    "init_meta_params",
    "load_optimizer",
    "meta_params_from_reference",
    "pretrained",
    "small_fc_lopt",
]


def __getattr__(name: str):
    # The adapters (stable-baselines3, torch) and torch_optim (torch) import lazily so
    # `import elo_gym` stays light.
    if name in ("RowDemoStream", "SB3RowVecEnv"):
        from elo_gym import adapters

        return getattr(adapters, name)
    if name == "torch_optim":
        import importlib

        return importlib.import_module("elo_gym.torch_optim")
    raise AttributeError(f"module 'elo_gym' has no attribute {name!r}")
