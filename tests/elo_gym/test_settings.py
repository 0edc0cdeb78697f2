"""EnvSettings.from_id: the one way from an env id and overrides to an env's parts."""

import pytest

from elo_gym.settings import EnvSettings


def test_from_id_applies_overrides_and_keeps_defaults_for_none():
    settings = EnvSettings.from_id(
        "ELO-Digits-MLP", hidden_sizes=(8,), n_max=None, p_th=0.1
    )
    assert (settings.model, settings.dataset) == ("mlp", "digits")
    assert settings.hidden_sizes == (8,) and settings.p_th == 0.1
    assert settings.n_max == EnvSettings().n_max  # None keeps the default
    task = settings.build_task()
    assert task.hidden_sizes == (8,) and task.num_params() == 64 * 8 + 8 + 8 * 10 + 10
    resnet = EnvSettings.from_id("ELO-ImageNet32-ResNet18", dataset="digits", width=4)
    assert resnet.build_task().model_name == "resnet18"


@pytest.mark.parametrize(
    "env_id, overrides, match",
    [
        ("ELO-Nope", {}, "unknown env 'ELO-Nope'; valid: ELO-Digits-MLP"),
        ("ELO-Digits-MLP", {"hidden": (8,)}, r"unknown env setting\(s\) hidden"),
    ],
)
def test_from_id_errors_name_what_is_wrong(env_id, overrides, match):
    with pytest.raises(ValueError, match=match):
        EnvSettings.from_id(env_id, **overrides)
