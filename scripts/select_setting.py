"""Which meta-training setting to keep: a score over validation tasks.

A screen meta-trains each setting with a few meta-seeds (runs named
``<setting>_s<seed>``) and evaluates the LOs with ``scripts/evaluate.py`` on several
validation tasks. This reads those evaluations and scores each setting by the
geometric mean, over the tasks, of its metric (mean over meta-seeds of each LO's mean
over optimizee seeds) divided by the best tuned baseline's on that task
(AdamW with a constant lr, warmup + cosine or inverse-sqrt, or warmup + cosine LAMB,
whichever is lowest); lower is better, 1 is that baseline. A setting missing from a
task gets no score. The rule is the one docs/levers.md pre-registers for its sixth
to tenth screens.

Prints one JSON object (each task's baseline value, each setting's per-task means and
ratios and its score, best first, and the pick); also written to ``--out``.

Usage::

    python scripts/select_setting.py \\
        --task digits:valid_loss:runs/screen/eval_digits \\
        --task relu128:train_loss:runs/screen/eval_relu128,runs/screen/eval2_relu128
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import pathlib
import re
from typing import Annotated

import tyro

from elo_gym import eval_report, runs

# Metrics of evaluate.py's results.json for which lower is better.
METRICS = ("train_loss", "valid_loss", "test_loss")
ADAMW = eval_report.ADAMW  # evaluate.py's name for its tuned constant-lr AdamW row
# Every tuned baseline of evaluate.py's results.json (AdamW's three schedules and
# LAMB); a setting is scored against the best of them on each task.
BASELINES = (ADAMW, *eval_report.SCHEDULED)


@dataclasses.dataclass(frozen=True)
class SelectConfig:
    task: Annotated[tuple[str, ...], tyro.conf.UseAppendAction]
    """One per validation task: NAME:METRIC:DIR[,DIR...], where each DIR holds an
    evaluate.py results.json and METRIC is one of train_loss, valid_loss, test_loss."""
    same: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """OTHER=SETTING: runs labeled OTHER_s<seed> in some evaluation are SETTING's
    (one setting evaluated under two labels)."""
    out: str | None = None
    """Also write the JSON here."""


def parse_task(spec: str) -> tuple[str, str, list[pathlib.Path]]:
    """``NAME:METRIC:DIR[,DIR...]`` -> (name, metric, dirs), or ValueError naming
    what is wrong."""
    parts = spec.split(":", 2)
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"--task {spec!r}: expected NAME:METRIC:DIR[,DIR...]")
    name, metric, dirs = parts
    if metric not in METRICS:
        raise ValueError(
            f"--task {spec!r}: metric {metric!r} is not one of {', '.join(METRICS)} "
            "(the score needs a metric for which lower is better)"
        )
    return name, metric, [pathlib.Path(d) for d in dirs.split(",")]


def setting_of(label: str) -> str:
    """The setting a run belongs to: its label without the ``_s<seed>`` suffix."""
    return re.sub(r"_s\d+$", "", label)


def read_task(
    metric: str, dirs: list[pathlib.Path], same: dict[str, str]
) -> tuple[float, str, dict]:
    """The best tuned baseline's value of ``metric`` (the lowest among the AdamWs
    and LAMB an evaluation holds), its name,
    and per setting the per-LO values over ``dirs`` (an LO evaluated twice under one
    label counts once)."""
    finals: dict = {}
    baselines: dict[str, float] = {}
    for d in dirs:
        path = d / "results.json"
        if not path.is_file():
            raise ValueError(f"{path} does not exist: run scripts/evaluate.py first")
        final = json.loads(path.read_text())["final"]
        for name in BASELINES:
            if name not in final:
                continue
            value = final[name][metric]["mean"]
            seen = baselines.get(name)
            if seen is not None and not math.isclose(value, seen, rel_tol=1e-6):
                raise ValueError(
                    f"{path}: {name}'s {metric} {value:.6g} differs from {seen:.6g} "
                    "in the task's other evaluations; they must be of one task"
                )
            baselines[name] = value
        finals.update({k: v for k, v in final.items() if k not in BASELINES})
    finite = {k: v for k, v in baselines.items() if v is not None and v > 0}
    if not finite:
        raise ValueError(
            f"no positive baseline {metric} in {', '.join(map(str, dirs))}"
        )
    best = min(finite, key=finite.__getitem__)
    values = collections.defaultdict(list)
    for label, final in finals.items():
        setting = setting_of(label)
        values[same.get(setting, setting)].append(final[metric]["mean"])
    return finite[best], best, values


def run(config: SelectConfig) -> dict:
    """Scores every setting found in the tasks' evaluations; returns the JSON object."""
    if not config.task:
        raise ValueError("give at least one --task")
    same = {}
    for spec in config.same:
        other, _, setting = spec.partition("=")
        if not other or not setting:
            raise ValueError(f"--same {spec!r}: expected OTHER=SETTING")
        same[other] = setting
    tasks, per_setting = {}, collections.defaultdict(dict)
    for spec in config.task:
        name, metric, dirs = parse_task(spec)
        if name in tasks:
            raise ValueError(f"task {name!r} given twice")
        adamw, baseline, values = read_task(metric, dirs, same)
        tasks[name] = {
            "metric": metric,
            "adamw": adamw,
            "baseline": baseline,
            "dirs": list(map(str, dirs)),
        }
        for setting, v in values.items():
            mean = sum(v) / len(v)
            per_setting[setting][name] = {
                "mean": mean,
                "ratio": mean / adamw,
                "meta_seeds": len(v),
            }
    settings = []
    for setting, by_task in per_setting.items():
        ratios = [x["ratio"] for x in by_task.values()]
        complete = len(by_task) == len(tasks) and all(r > 0 for r in ratios)
        score = math.exp(sum(map(math.log, ratios)) / len(ratios)) if complete else None
        settings.append({"setting": setting, "score": score, "tasks": by_task})
    settings.sort(key=lambda s: (s["score"] is None, s["score"] or 0.0))
    pick = settings[0]["setting"] if settings and settings[0]["score"] else None
    return {"tasks": tasks, "settings": settings, "pick": pick}


def main(argv: list[str] | None = None) -> None:
    """CLI: parse flags, score the settings, print (and write) the JSON."""
    runs.json_cli(SelectConfig, run, "select_setting.py", argv)


if __name__ == "__main__":
    main()
