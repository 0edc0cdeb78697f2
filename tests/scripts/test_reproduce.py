"""scripts/reproduce.py --quick: the whole study pipeline at CI size."""

import importlib.util
import pathlib
import sys

SCRIPTS = pathlib.Path(__file__).parents[2] / "scripts"


def _load(name: str):
    sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def test_quick_study_writes_a_report_with_real_figures(tmp_path):
    reproduce = _load("reproduce")
    config = reproduce.StudyConfig.quick()
    report = tmp_path / "docs" / "results.md"
    text = reproduce.run(config, tmp_path / "out", report)
    assert report.read_text() == text
    for heading in (
        "Claims of the paper",
        "Table 1",
        "Fig. 7",
        "Fig. 6",
        "Fig. 2",
        "Compute",
    ):
        assert heading in text
    # Every claim is answered from the measurements, yes or no.
    claims = text.split("## Claims of the paper, checked at this scale")[1].split("##")[
        0
    ]
    assert claims.count(": yes") + claims.count(": no") == 4
    figures = sorted(p.name for p in (report.parent / "figures").iterdir())
    assert figures == [
        "ablation_loss.png",
        "inner_steps.png",
        "main_loss.png",
        "meta_loss.png",
        "p_th_sweep.png",
    ]
    for png in (report.parent / "figures").iterdir():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = sorted(p.name for p in (tmp_path / "out" / "runs").iterdir())
    assert runs == sorted(
        [
            "elo",
            "naive",
            "curriculum",
            "uniform",
            "bc",
            "buffer",
            "elo_pth0.1",
            "elo_pth0.5",
        ]
    )
    for run in runs:
        assert (tmp_path / "out" / "runs" / run / "lo.msgpack").is_file()
