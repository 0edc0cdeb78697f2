"""scripts/select_setting.py: the validation-task score that picks a setting."""

import json
import math
import os
import pathlib
import sys

import pytest

sys.path.insert(0, os.fspath(pathlib.Path(__file__).resolve().parents[2] / "scripts"))
import select_setting  # noqa: E402


def _write_eval(path: pathlib.Path, adamw: float, los: dict[str, float]) -> str:
    """An evaluate.py results.json with only what the score reads."""
    final = {"AdamW": {"train_loss": {"mean": adamw}, "valid_loss": {"mean": adamw}}}
    for label, value in los.items():
        final[label] = {"train_loss": {"mean": value}, "valid_loss": {"mean": value}}
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps({"final": final}))
    return str(path)


def test_the_score_is_the_geometric_mean_of_ratios_to_adamw(tmp_path, capsys):
    a = _write_eval(tmp_path / "a", 0.2, {"x_s0": 0.1, "x_s1": 0.3, "y_s0": 0.2})
    b1 = _write_eval(tmp_path / "b1", 0.01, {"x_s0": 0.001, "other_s0": 0.02})
    b2 = _write_eval(tmp_path / "b2", 0.01, {"x_s1": 0.003, "y_s0": 0.04})
    out = tmp_path / "select.json"
    select_setting.main(
        [
            "--task",
            f"digits:valid_loss:{a}",
            "--task",
            f"family:train_loss:{b1},{b2}",
            "--same",
            "other=y",
            "--out",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    assert set(result["tasks"]) == {"digits", "family"}
    by_name = {s["setting"]: s for s in result["settings"]}
    # x: digits mean 0.2 (x1 AdamW), family mean 0.002 (x0.2): sqrt(1 * 0.2).
    assert by_name["x"]["score"] == pytest.approx(math.sqrt(1.0 * 0.2))
    assert by_name["x"]["tasks"]["family"]["meta_seeds"] == 2
    # y's family runs are labeled y and other: means 0.03 (x3); digits x1.
    assert by_name["y"]["score"] == pytest.approx(math.sqrt(3.0))
    assert result["pick"] == "x"
    assert [s["setting"] for s in result["settings"]] == ["x", "y"]


def test_a_setting_missing_from_a_task_gets_no_score(tmp_path):
    a = _write_eval(tmp_path / "a", 0.2, {"x_s0": 0.1, "z_s0": 0.01})
    b = _write_eval(tmp_path / "b", 0.01, {"x_s0": 0.02})
    result = select_setting.run(
        select_setting.SelectConfig(
            task=(f"digits:valid_loss:{a}", f"family:train_loss:{b}")
        )
    )
    by_name = {s["setting"]: s for s in result["settings"]}
    assert by_name["z"]["score"] is None
    assert result["pick"] == "x"


@pytest.mark.parametrize(
    "task, message",
    [
        ("digits:test_accuracy:{a}", "lower is better"),
        ("digits:{a}", "NAME:METRIC:DIR"),
        ("digits:train_loss:{missing}", "run scripts/evaluate.py first"),
    ],
)
def test_bad_input_is_named(tmp_path, capsys, task, message):
    a = _write_eval(tmp_path / "a", 0.2, {"x_s0": 0.1})
    task = task.format(a=a, missing=tmp_path / "missing")
    with pytest.raises(SystemExit) as exit_info:
        select_setting.main(["--task", task])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_score_divides_by_the_best_of_the_adamw_baselines(tmp_path):
    """The ratio's denominator is the lowest of constant, cosine and inverse-sqrt
    AdamW on each task, so a setting cannot win against a weak baseline alone."""
    path = pathlib.Path(_write_eval(tmp_path / "a", 0.2, {"x_s0": 0.1}))
    result = json.loads((path / "results.json").read_text())
    result["final"]["adamw_cosine"] = {"valid_loss": {"mean": 0.05}}
    result["final"]["adamw_invsqrt"] = {"valid_loss": {"mean": 0.08}}
    (path / "results.json").write_text(json.dumps(result))
    picked = select_setting.run(
        select_setting.SelectConfig(task=(f"digits:valid_loss:{path}",))
    )
    assert picked["tasks"]["digits"]["baseline"] == "adamw_cosine"
    assert picked["settings"][0]["score"] == pytest.approx(0.1 / 0.05)
    assert [s["setting"] for s in picked["settings"]] == ["x"]  # no baseline rows
