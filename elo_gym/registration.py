"""Registers the ELO env ids with Gymnasium (on ``import elo_gym``; loads no data)."""

import gymnasium as gym

ENV_IDS = {
    # The embedded default: scikit-learn's 8x8 digits, offline; MLP 64-32-32-10.
    "ELO-Digits-MLP": {"model": "mlp", "dataset": "digits"},
    # The paper's task: ImageNet-1K 32x32, muLO's MLP 3072-128-128-128-1000 (555,368
    # params), batch 4096, from a local data dir.
    "ELO-ImageNet32-MLP": {"model": "mlp", "dataset": "imagenet32"},
    # The paper's OOD vision task: ResNet-18 (small-image stem, 11,681,832 params,
    # BatchNorm statistics as model state) on ImageNet-1K 32x32, batch 4096.
    "ELO-ImageNet32-ResNet18": {"model": "resnet18", "dataset": "imagenet32"},
    # The paper's OOD language task: GPT-2-mini (4 layers, width 256, 4 heads,
    # context 256; 16,090,880 params) on FineWeb-10B token shards, batch 512.
    # dataset="text", text_files=[...] trains it on plain-text files as bytes.
    "ELO-FineWeb-GPT2Mini": {"model": "gpt2mini", "dataset": "fineweb"},
    # Offline task families beyond digits, for meta-training on a task distribution:
    # an MLP 32-64-64-10 (6,922 params, batch 128) learning the argmax labels of a
    # fixed random teacher MLP on x ~ N(0, I_32), fresh data every batch
    # (teacher_seed= picks the teacher, input_dim= and num_classes= its shape) ...
    "ELO-Teacher-MLP": {"model": "mlp", "dataset": "teacher"},
    # ... and a byte-level GPT-2-mini sized for CPUs (2 layers, width 32, 2 heads,
    # context 64; 35,712 params, batch 32) on Python's own standard-library sources.
    "ELO-PySource-GPT2Mini": {"model": "gpt2mini", "dataset": "pysource"},
    # Your own model and data: gymnasium.make("ELO-Task", task=envs.from_flax(...)),
    # or --env ELO-Task --task package.module:factory in the agents and evaluate.py.
    "ELO-Task": {"model": "custom", "dataset": "custom"},
}
# The env id whose task the user builds (EnvSettings.task).
CUSTOM_TASK_ENV = "ELO-Task"


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
