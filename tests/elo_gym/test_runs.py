"""elo_gym.runs: flat settings of grouped dataclasses, and old config.json files."""

import dataclasses
import json

import pytest

from elo_gym import runs
from elo_gym.lo_spec import LOSpec


@dataclasses.dataclass(frozen=True)
class Group:
    width: int = 3
    """A group's field."""


@dataclasses.dataclass(frozen=True)
class Settings:
    seed: int = 0
    """A top-level field."""
    group: Group = Group()
    lo: LOSpec = LOSpec()


def test_flatten_and_replace_flat_name_fields_by_their_flags():
    settings = runs.replace_flat(Settings(), seed=1, width=5, nominal_lr=0.01)
    assert settings == Settings(seed=1, group=Group(5), lo=LOSpec(nominal_lr=0.01))
    flat = runs.flatten(settings)
    assert flat["seed"] == 1 and flat["width"] == 5 and flat["nominal_lr"] == 0.01
    assert set(flat) == {"seed", "width", *LOSpec().to_json()}
    with pytest.raises(ValueError, match="unknown setting.*widht"):
        runs.replace_flat(Settings(), widht=5)


def test_parse_with_defaults_takes_the_chosen_defaults_and_flags_win():
    def defaults(seed: str) -> Settings:
        return Settings(group=Group(width=10 * int(seed)))

    choices = dict(seed=("1", "2"))
    parsed = runs.parse_with_defaults(Settings, defaults, ["--seed", "2"], **choices)
    assert parsed == Settings(seed=2, group=Group(20))
    flags = ["--seed", "2", "--width", "7", "--nominal-lr", "0.1"]
    parsed = runs.parse_with_defaults(Settings, defaults, flags, **choices)
    assert parsed == Settings(seed=2, group=Group(7), lo=LOSpec(nominal_lr=0.1))
    assert runs.parse_with_defaults(Settings, defaults, [], **choices).group.width == 10


def test_an_old_config_resumes_or_is_refused_by_name(tmp_path):
    """A config.json that lacks an LO setting ran with its default, and a legacy
    value counts as its new spelling; any other difference is refused, named."""
    config = {"seed": 0, "decay": 0.0, **LOSpec().to_json()}
    old = {k: v for k, v in config.items() if k != "nominal_lr"}
    (tmp_path / "config.json").write_text(json.dumps(dict(old, decay=None)))
    legacy = {"decay": (None, 0.0)}
    runs.prepare_run_dir(tmp_path, config, legacy=legacy)
    with pytest.raises(ValueError, match=r"decay: saved None, now 0.0"):
        runs.prepare_run_dir(tmp_path, config)
    with pytest.raises(ValueError, match=r"nominal_lr: saved 0.0, now 0.01"):
        runs.prepare_run_dir(tmp_path, dict(config, nominal_lr=0.01), legacy=legacy)
    # Written before the setting existed: the legacy old value None stands for it.
    newer = dict(config, b2=0.999)
    runs.prepare_run_dir(tmp_path, newer, legacy={**legacy, "b2": (None, 0.999)})
    with pytest.raises(ValueError, match=r"b2: saved None, now 0.999"):
        runs.prepare_run_dir(tmp_path, newer, legacy=legacy)
    with pytest.raises(ValueError, match=r"b2: saved 0.999, now 0.95"):
        runs.prepare_run_dir(
            tmp_path, dict(config, b2=0.95), legacy={**legacy, "b2": (None, 0.999)}
        )
