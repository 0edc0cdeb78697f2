"""Registers the ELO env ids with Gymnasium (on ``import elo_gym``; loads no data)."""

import gymnasium as gym

ENV_IDS = {
    # The embedded default: scikit-learn's 8x8 digits, offline; MLP 64-32-32-10.
    "ELO-Digits-MLP": {"dataset": "digits"},
    # The paper's task: ImageNet-1K 32x32, muLO's MLP 3072-128-128-128-1000 (555,368
    # params), batch 4096, from a local data dir.
    "ELO-ImageNet32-MLP": {"dataset": "imagenet32"},
}


def register_envs() -> None:
    """Registers every id in :data:`ENV_IDS` (idempotent)."""
    for env_id, kwargs in ENV_IDS.items():
        if env_id in gym.registry:
            continue
        # No PassiveEnvChecker: it expects numpy/Python values and warns on every JAX
        # array this env returns by design (metadata["jax"]); the full
        # gymnasium.utils.env_checker.check_env passes and runs in the tests.
        gym.register(
            id=env_id,
            entry_point="elo_gym.env:ELOEnv",
            vector_entry_point="elo_gym.env:ELOVectorEnv",
            kwargs=dict(kwargs),
            disable_env_checker=True,
        )
