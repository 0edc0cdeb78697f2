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


# --- --mixture entries ---


def _base() -> EnvSettings:
    return EnvSettings.from_id(
        "ELO-Digits-MLP",
        hidden_sizes=(8,),
        max_shift=2,
        p_th=0.1,
        n_max=37,
        bc_floor=0.25,
        expert_learning_rate=3e-3,
        paired=True,
        mode="curriculum",
    )


ELO_KEPT = dict(
    p_th=0.1,
    n_max=37,
    bc_floor=0.25,
    expert_learning_rate=3e-3,
    paired=True,
    mode="curriculum",
)


@pytest.mark.parametrize(
    "spec, task_fields",
    [
        # The old form: the env's own data and options, another network.
        (
            "16-16:tanh",
            dict(
                dataset="digits", hidden_sizes=(16, 16), activation="tanh", max_shift=2
            ),
        ),
        ("32", dict(dataset="digits", hidden_sizes=(32,), activation="relu")),
        # An env id: its own data and defaults, not the base's task options.
        (
            "ELO-Teacher-MLP",
            dict(model="mlp", dataset="teacher", hidden_sizes=None, max_shift=None),
        ),
        (
            "ELO-Teacher-MLP:hidden_sizes=32-32,activation=tanh,teacher_seed=3",
            dict(
                dataset="teacher",
                hidden_sizes=(32, 32),
                activation="tanh",
                teacher_seed=3,
            ),
        ),
        (
            "ELO-PySource-GPT2Mini:width=16,context_length=8,batch_size=4",
            dict(model="gpt2mini", dataset="pysource", width=16, context_length=8),
        ),
        (
            "ELO-Digits-MLP:dataset=teacher,num_classes=4,augment=false",
            None,  # augment is an image option: an error (below)
        ),
        (
            "ELO-FineWeb-GPT2Mini:dataset=text,text_files=a.txt+b.txt",
            dict(dataset="text", text_files=("a.txt", "b.txt")),
        ),
    ],
)
def test_mixture_settings_keep_the_elo_settings(spec, task_fields):
    from elo_gym.settings import mixture_settings

    if task_fields is None:
        with pytest.raises(ValueError, match="does not take augment"):
            mixture_settings(_base(), spec)
        return
    entry = mixture_settings(_base(), spec)
    for name, value in {**ELO_KEPT, **task_fields}.items():
        assert getattr(entry, name) == value, name
    assert entry.lo == _base().lo


def test_mixture_entry_builds_its_own_task():
    from elo_gym.settings import mixture_settings

    entry = mixture_settings(_base(), "ELO-Teacher-MLP:hidden_sizes=4,input_dim=6")
    task = entry.build_task()
    assert task.dataset == "teacher" and task.num_params() == 6 * 4 + 4 + 4 * 10 + 10
    assert entry.config(2).num_copies == 2 and entry.params(None).n_max == 37


@pytest.mark.parametrize(
    "spec, match",
    [
        ("ELO-Nope", "ELO-Teacher-MLP.*'ELO-Nope' is neither"),
        ("gelu", "must be WIDTHS"),
        ("0-3", "positive widths"),
        ("ELO-Teacher-MLP:hidden_sizes", "'hidden_sizes' is not OPTION=VALUE"),
        ("ELO-Teacher-MLP:hidden_sizes=3-x", "bad hidden_sizes '3-x'"),
        ("ELO-Teacher-MLP:batch_size=many", "bad batch_size 'many'"),
        ("ELO-Teacher-MLP:p_th=0.3", "'p_th' is an ELO setting"),
        ("ELO-Teacher-MLP:depth=3", "'depth' is not an option"),
        ("ELO-Teacher-MLP:teacher_seed=1,teacher_seed=2", "sets 'teacher_seed' twice"),
        ("ELO-Teacher-MLP:augment=maybe", "bad augment 'maybe'"),
        ("ELO-Teacher-MLP:activation=bogus", "Unknown activation 'bogus'"),
        ("ELO-Teacher-MLP:num_classes=1", "num_classes must be"),
        ("ELO-PySource-GPT2Mini:hidden_sizes=8", "does not take hidden_sizes"),
        ("ELO-Task", "ELO-Task trains a task you build"),
    ],
)
def test_mixture_settings_errors_name_the_entry(spec, match):
    from elo_gym.settings import mixture_settings

    with pytest.raises(ValueError, match=f"--mixture entry '{spec}'.*{match}"):
        mixture_settings(_base(), spec)


def test_every_task_option_is_a_mixture_option():
    """A task option a mixture entry could not set would be inherited from the base
    env as if it were an ELO setting."""
    from elo_gym import settings

    assert set(settings._PACKAGE_TASK_OPTIONS) <= set(settings._MIXTURE_OPTIONS)
