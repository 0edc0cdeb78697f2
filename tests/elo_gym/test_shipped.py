"""elo_gym.pretrained: the learned optimizers that ship with the package."""

import jax
import numpy as np
import pytest

import elo_gym
from elo_gym import checkpoint, lo_features, validation
from elo_gym.agents import pes_train
from elo_gym.lo_spec import LOSpec
from elo_gym.settings import EnvSettings


def test_the_shipped_lo_is_the_cpu_presets_and_its_learned_part_trains_faster():
    """The shipped LO has the cpu preset's spec (its lo.json) and a trained learned
    part, the BC agent's clone: on fresh digits MLPs at its horizon it ends below its
    silenced self."""
    meta, info = checkpoint.load_meta_params(elo_gym.pretrained("digits"))
    spec = LOSpec.from_json(info)
    assert spec == pes_train.make_args().lo
    assert (info["env"], info["agent"]) == ("ELO-Digits-MLP", "bc")
    task = EnvSettings.from_id("ELO-Digits-MLP").build_task()
    program = validation.lo_curves(task, spec, steps=200, eval_every=200)
    keys = jax.random.split(jax.random.PRNGKey(200), 4)
    data = task.load_data()

    def train_loss(m):
        return validation.seed_losses(program(m, data, keys), 40)["train_loss"]

    lo, silenced = train_loss(meta), train_loss(lo_features.silenced_output(meta))
    assert np.mean(lo) < 0.8 * np.mean(silenced), (lo, silenced)


def test_every_face_loads_it_by_path():
    path = elo_gym.pretrained()
    params = {"w": np.ones((3, 4), np.float32)}
    opt = elo_gym.load_optimizer(path, total_steps=10)
    updates, _ = opt.update(params, opt.init(params), params)
    assert np.all(np.isfinite(updates["w"]))
    torch = pytest.importorskip("torch")  # the sb3 extra
    from elo_gym import torch_optim

    torch_optim.load(path, [torch.ones(3, 4)], total_steps=10)


def test_an_unknown_name_says_what_ships():
    with pytest.raises(ValueError, match="shipped: digits"):
        elo_gym.pretrained("imagenet")
