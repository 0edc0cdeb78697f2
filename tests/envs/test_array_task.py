"""Your own task (envs.array_task, ELO-Task, --task): the README's section run as
written, and bad tasks refused with what is wrong."""

import csv
import dataclasses
import json
import pathlib
import re
import shlex
import sys

import flax.linen as nn
import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import elo_gym
from elo_gym import envs, pes_run, settings
from elo_gym.agents import pes_train
from elo_gym.envs import array_task

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
EVALUATE = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "evaluate.py"
# The README's commands with a tiny budget appended (a flag given twice: the last wins).
TINY_PES = (
    "--outer-steps 2 --num-pairs 1 --truncation 3 --n-min 2 --n-max 6 "
    "--eval-every 2 --eval-horizon-factor 1 --eval-seeds 1 "
    "--hidden-size 8 --checkpoint-every 1 --clone-steps 2 --no-progress"
)
# AdamW alone, its grid not grown: the scheduled baselines and the grid search have
# their own tests (tests/scripts/test_evaluate.py), and compile programs of their own.
TINY_EVAL = (
    "--steps 4 --eval-every 2 --seeds 1 --lrs 0.001 --no-progress "
    "--baselines adamw --max-grid-extensions 0"
)


def _own_task_section() -> str:
    text = README.read_text()
    start = text.index("## Your own model and data")
    return text[start : text.index("\n## ", start + 1)]


def _commands(section: str, script: str) -> list[str]:
    """The README's command line of ``script`` (joined across backslash breaks)."""
    shell = "".join(re.findall(r"```bash\n(.*?)```", section, re.S))
    lines = shell.replace("\\\n", " ").splitlines()
    (line,) = [ln for ln in lines if ln.startswith(f"python {script}")]
    return shlex.split(line)[2:]


@pytest.fixture
def readme_dir(tmp_path, monkeypatch):
    """A directory holding the README's my_task.py, as the cwd and on the path."""
    section = _own_task_section()
    (module,) = re.findall(r"```python\n(# my_task\.py\n.*?)```", section, re.S)
    (tmp_path / "my_task.py").write_text(module)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("my_task", "other_task"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    settings.load_task.cache_clear()
    yield tmp_path, section
    settings.load_task.cache_clear()
    for name in ("my_task", "other_task"):
        sys.modules.pop(name, None)


def test_readme_own_task_section_runs_as_written(readme_dir, monkeypatch, capsys):
    """The README's env snippet, then its pes_train and evaluate commands (tiny
    budget): the LO meta-trains on the user's CNN, config.json records --task, the
    run resumes with the same spec and refuses another, and evaluate trains the CNN."""
    tmp, section = readme_dir
    (env_snippet,) = re.findall(r"```python\n(import gymnasium.*?)```", section, re.S)
    scope: dict = {}
    exec(compile(env_snippet, "README.md", "exec"), scope)
    env = scope["env"].unwrapped
    assert env.config.task.describe()["model"] == "CNN"
    assert scope["obs"]["features"].shape == (env.config.task.num_params(), 39)
    assert float(scope["info"]["bc_loss"]) == pytest.approx(0.0, abs=1e-6)

    flags = _commands(section, "agents/pes_train.py") + shlex.split(TINY_PES)
    run_dir = pes_train.main(pes_train.parse_args(flags))
    assert run_dir == pathlib.Path("runs/cnn")
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["env"], config["task"]) == ("ELO-Task", "my_task:make_task")
    # The cpu preset's start: a clone of the demonstrator, on the user's task.
    assert config["init_lo"] == str(run_dir / "init_lo")
    clone = json.loads((run_dir / "init_lo" / "config.json").read_text())
    assert clone["task"] == "my_task:make_task"
    # The run's summary has the clone evaluated beside the exported LO.
    assert f"--lo elo={run_dir} --lo clone={run_dir / 'init_lo'}" in pes_run.summary(
        run_dir
    )
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert len(rows) == 2 and all(np.isfinite(float(r["task_loss"])) for r in rows)
    assert np.isfinite(float(rows[-1]["val_lo_valid_loss"]))
    assert (run_dir / "lo.msgpack").is_file()

    # The same command resumes the finished run; another task spec is refused.
    pes_train.main(pes_train.parse_args(flags))
    assert len(list(csv.DictReader((run_dir / "metrics.csv").open()))) == 2
    (tmp / "other_task.py").write_text("from my_task import make_task  # noqa\n")
    other = [f.replace("my_task:", "other_task:") for f in flags]
    with pytest.raises(ValueError, match="task: saved 'my_task:make_task'"):
        pes_train.main(pes_train.parse_args(other))

    sys.path.insert(0, str(EVALUATE.parent))
    try:
        import evaluate
    finally:
        sys.path.remove(str(EVALUATE.parent))
    evaluate.main(_commands(section, "scripts/evaluate.py") + shlex.split(TINY_EVAL))
    result = json.loads((tmp / "eval" / "cnn" / "results.json").read_text())
    assert result["task"]["model"] == "CNN"
    assert result["task"]["num_examples"] == {"train": 1200, "valid": 300, "test": 297}
    assert result["config"]["task"] == "my_task:make_task"
    assert 0.0 <= result["final"]["elo"]["test_accuracy"]["mean"] <= 1.0
    (valid_loss,) = result["curves"]["elo"]["valid_loss"]  # one seed
    assert valid_loss[-1] < valid_loss[0]  # the LO trains the user's CNN
    assert "| elo |" in capsys.readouterr().out


# ------------------------------------------------------------------ the adapter


def _cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _arrays(n=10, dim=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dim)).astype(np.float32), rng.integers(0, 4, n)


def _dense_task(**overrides):
    x, y = _arrays()
    kwargs = dict(train=(x, y), valid=(x[:7], y[:7]), batch_size=4)
    return envs.from_flax(nn.Dense(4), _cross_entropy, **{**kwargs, **overrides})


def test_evaluate_is_the_mean_over_every_example():
    """evaluate's chunks (7 examples in chunks of 3, padded) give the loss and top-1
    accuracy of the whole split; train_loss is the loss of apply's outputs."""
    task = _dense_task()
    data = task.load_data()
    params = task.init(jax.random.key(1))
    x, y = data["valid"]
    logits = nn.Dense(4).apply({"params": params}, x)
    want_loss = _cross_entropy(logits, y)
    want_accuracy = (jnp.argmax(logits, -1) == y).mean()
    got = jax.jit(task.evaluate, static_argnums=(2, 3))(params, data, "valid", 3)
    np.testing.assert_allclose(got["loss"], want_loss, rtol=1e-6)
    np.testing.assert_allclose(got["accuracy"], want_accuracy, rtol=1e-6)
    assert data["test"] is data["valid"] or np.array_equal(data["test"][1], y)
    batch = task.sample_batch(data, jax.random.key(2))
    assert batch[0].shape == (4, 3) and batch[1].shape == (4,)
    loss, state = task.train_loss(params, {}, batch)
    np.testing.assert_allclose(
        loss, _cross_entropy(nn.Dense(4).apply({"params": params}, batch[0]), batch[1])
    )
    assert state == {} and task.num_classes == 4 and task.num_params() == 16


def test_any_init_apply_pair_with_its_own_accuracy():
    """A regression task of a plain init/apply pair: float targets need an accuracy
    function, which evaluate then averages per example."""
    x, _ = _arrays(n=6)
    y = x.sum(-1, keepdims=True)

    def mse(outputs, targets):
        return ((outputs - targets) ** 2).mean()

    task = array_task.ArrayTask(
        init_fn=lambda key, inputs: {"w": jax.random.normal(key, (3, 1))},
        apply_fn=lambda params, inputs: inputs @ params["w"],
        loss_fn=mse,
        accuracy_fn=lambda o, t: (jnp.abs(o - t) < 0.5).astype(jnp.float32).mean(),
        train=(x, y),
        valid=(x, y),
        batch_size=2,
    )
    params = {"w": jnp.ones((3, 1))}  # exact: loss 0, accuracy 1
    got = task.evaluate(params, task.load_data(), "test", batch_size=4)
    assert float(got["loss"]) == pytest.approx(0.0, abs=1e-10)
    assert float(got["accuracy"]) == 1.0
    with pytest.raises(ValueError, match="apply\\(params, inputs\\) fails"):
        dataclasses.replace(task, apply_fn=lambda params, inputs: inputs @ jnp.ones(4))
    with pytest.raises(TypeError, match="pass accuracy_fn"):
        array_task.ArrayTask(
            init_fn=task.init_fn,
            apply_fn=task.apply_fn,
            loss_fn=mse,
            train=(x, y),
            valid=(x, y),
        )


class _WithBatchNorm(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.BatchNorm(use_running_average=True)(nn.Dense(4)(x))


class _IntegerParam(nn.Module):
    @nn.compact
    def __call__(self, x):
        self.param("count", lambda key: jnp.zeros((), jnp.int32))
        return nn.Dense(4)(x)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(valid=_arrays(n=5)[:1] + (np.zeros(4),)), "5 inputs but 4 targets"),
        (dict(valid=(np.zeros((5, 2)), np.zeros(5, int))), "same example shapes"),
        (dict(valid=(np.zeros((0, 3)), np.zeros(0, int))), "valid has no examples"),
        (dict(train=np.zeros((5, 3))), "pair \\(inputs, targets\\)"),
        (dict(batch_size=0), "batch_size must be a positive int"),
        (dict(cpu_step_loop="gpu"), "cpu_step_loop must be 'scan' or 'host'"),
        (dict(module=_IntegerParam()), "param \\['count'\\] has dtype int32"),
        (dict(module=_WithBatchNorm()), "state besides its params \\(batch_stats\\)"),
        (dict(loss=lambda o, t: o.sum(-1)), "must return one float scalar"),
        (dict(module=nn.Conv(4, (3, 3))), "init\\(key, inputs\\) fails"),
    ],
)
def test_bad_tasks_say_what_is_wrong(change, message):
    x, y = _arrays()
    kwargs = dict(train=(x, y), valid=(x, y), batch_size=4)
    module = change.pop("module", nn.Dense(4))
    loss = change.pop("loss", _cross_entropy)
    with pytest.raises(ValueError, match=message):
        envs.from_flax(module, loss, **{**kwargs, **change})


def test_env_ids_and_task_specs_say_what_is_wrong(tmp_path, monkeypatch):
    task = _dense_task()
    with pytest.raises(ValueError, match="ELO-Task trains a task you build"):
        gym.make("ELO-Task")
    with pytest.raises(ValueError, match="this env's model is 'mlp'"):
        gym.make("ELO-Digits-MLP", task=task)
    with pytest.raises(ValueError, match="hidden_sizes shape"):
        gym.make("ELO-Task", task=task, hidden_sizes=(8,))
    assert "ELO-Task" in elo_gym.ENV_IDS
    (tmp_path / "user_tasks.py").write_text("def not_a_task():\n    return 3\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "user_tasks", raising=False)
    settings.load_task.cache_clear()
    for spec, message in [
        ("user_tasks", "expects package.module:factory"),
        ("no_such_module:f", "cannot import 'no_such_module'"),
        ("user_tasks:missing", "has no function missing"),
        ("user_tasks:not_a_task", "returned a int, not a Task"),
    ]:
        with pytest.raises(ValueError, match=message):
            settings.load_task(spec)
    settings.load_task.cache_clear()
