"""elo_gym.torch_optim: parity with the golden fixture and with the optax face."""

import copy
import io
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import sklearn.datasets
import torch

import elo_gym
import elo_gym.torch_optim as torch_optim
from elo_gym import checkpoint, lo_spec, lopt
from elo_gym.lo_spec import LOSpec

FIXTURE = pathlib.Path(__file__).parents[1] / "fixtures" / "small_fc_lopt_golden.npz"
NAMES = ("w", "b", "s", "k")  # 2-D, 1-D, scalar, 4-D
# Every tensor kind a torch model has: weights (out, in), a square one (the factored
# axes' tie-break), biases, a scalar, a conv kernel and an embedding table.
SHAPES = {
    "linear": (12, 9),
    "square": (6, 6),
    "bias": (7,),
    "scalar": (),
    "conv": (8, 4, 3, 3),
    "embedding": (50, 6),
}
# The step's multipliers, large enough that the magnitude output matters, and the LO
# variants: each checked against the optax face below.
MULTIPLIERS = dict(step_mult=3e-3, exp_mult=0.05)
VARIANTS = [
    dict(raw_adam_ratio=True),
    dict(adam_scaled_step=True),
    dict(nominal_lr=0.02, nominal_decay_steps=3.0),
    dict(adam_scaled_step=True, nominal_lr=0.01),
    # A relative-time LO: the 5 steps of a 5-step run read as 0, 100, ..., 400 of 500.
    dict(time_horizon=500.0),
    dict(time_horizon=500.0, nominal_lr=0.02, nominal_schedule="cosine"),
    dict(
        time_horizon=500.0,
        nominal_lr=0.02,
        nominal_schedule="cosine",
        adam_scaled_step=True,
        scheduled_step=True,
    ),
    dict(nominal_lr=0.02, nominal_decay_steps=3.0, nominal_norm_step=True),
    dict(tangential_step=True),
    dict(
        nominal_lr=0.02,
        nominal_decay_steps=3.0,
        nominal_norm_step=True,
        tangential_step=True,
    ),
    dict(fast_second_moment=True),
    dict(fast_second_moment=True, raw_adam_ratio=True, nominal_lr=0.02),
    dict(
        time_horizon=500.0,
        nominal_lr=0.01,
        nominal_schedule="cosine",
        nominal_trust_ratio=True,
        adam_scaled_step=True,
    ),
    dict(nominal_lr=0.02, nominal_decay_steps=3.0, gated_step=True),
    dict(
        time_horizon=500.0,
        nominal_lr=0.01,
        nominal_schedule="cosine",
        nominal_trust_ratio=True,
        gated_step=True,
        nominal_norm_step=True,
    ),
]
# The run length the faces are told (a relative-time LO needs it, others ignore it).
TOTAL_STEPS = 5


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    # On the shared 2-core machine, torch's second OpenMP thread spins at barriers
    # while other jobs hold the cores: each small op then took milliseconds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(FIXTURE))


def _close(mine, ref):
    """The fixture README's check for state, features, direction, magnitude and step."""
    ref = np.asarray(ref)
    mine = np.asarray(mine).reshape(ref.shape)
    np.testing.assert_allclose(mine, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())


def _params_close(mine, ref):
    np.testing.assert_allclose(
        np.asarray(mine, np.float32).reshape(np.shape(ref)), ref, rtol=0, atol=1e-7
    )


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().numpy()


def _nontrivial_meta(seed: int = 0) -> lopt.MetaParams:
    """Meta-parameters whose outputs are far from zero.

    The random init, shrunk, plus a path that makes the direction the tensor's
    normalized momentum (feature 2): the LO then descends, and every feature and
    weight still moves the output.
    """
    meta = elo_gym.init_meta_params(jax.random.PRNGKey(seed))
    mlp = jax.tree.map(lambda w: np.asarray(w) * 0.3, meta.mlp)
    mlp["Dense_0"]["kernel"][2, :2] += [2.0, -2.0]
    mlp["Dense_1"]["kernel"][[0, 1], [0, 1]] += 1.0
    mlp["Dense_2"]["kernel"][[0, 1], 0] += [1.0, -1.0]
    mlp["Dense_2"]["bias"][1] = 20.0
    return meta._replace(mlp=mlp)


def _state_arrays(state: dict) -> dict:
    """A parameter's accumulators as NumPy arrays, channels first as lopt's."""
    return {k: _numpy(v) for k, v in state.items() if torch.is_tensor(v)}


def _check_accumulators(torch_state: dict, jax_acc: lopt.TensorAccumulators):
    mine = _state_arrays(torch_state)
    _close(mine["momentum"], jax_acc.momentum)
    _close(mine["rms"], jax_acc.rms)
    _close(mine["v_row"], jax_acc.v_row)
    if jax_acc.v_col.size:
        _close(mine["v_col"], jax_acc.v_col)
    else:
        assert "v_col" not in mine


def test_parity_with_reference_fixture(golden):
    """The fixture's 12 steps: raw features, MLP outputs, steps, parameters and
    accumulators within the fixture README's tolerances."""
    meta = elo_gym.meta_params_from_reference(golden)
    params = {
        n: torch.nn.Parameter(torch.tensor(golden[f"params0/{n}"])) for n in NAMES
    }
    opt = torch_optim.SmallFcLOpt(params.values(), meta)
    net = opt._net(torch.device("cpu"))
    for t in range(1, 13):
        before = {n: p.detach().clone() for n, p in params.items()}
        for n in NAMES:
            params[n].grad = torch.tensor(golden[f"grad/{t}/{n}"])
        opt.step()
        np.testing.assert_allclose(
            _numpy(net.first_bias(t - 1)),
            net.b0.numpy() + golden[f"step_feature/{t}"] @ golden["meta/nn/~/w0"][28:],
            rtol=1e-6,
            atol=1e-6,
        )
        for n in NAMES:
            state = opt.state[params[n]]
            assert state["step"] == t
            shape = state["momentum"].shape[1:]
            g = torch.tensor(golden[f"grad/{t}/{n}"]).reshape(shape)
            p = before[n].reshape(shape)
            # The per-element rows are the reference's raw features in their order.
            rows, _ = torch_optim._element_rows(g, p, state, net.w0)
            raw = golden[f"features_raw/{t}/{n}"].reshape(shape + (28,))
            order = torch_optim._ELEMENT_FEATURES
            if "v_col" not in state:
                order = order + [13, 14, 15, 19, 20, 21]
            _close(_numpy(rows), np.moveaxis(raw[..., order], -1, 0))
            out = _numpy(torch_optim._mlp_outputs(g, p, state, net, t - 1, False))
            _close(out[0], golden[f"direction/{t}/{n}"])
            _close(out[1], golden[f"magnitude/{t}/{n}"])
            _close(
                lopt.step_from_action(np.moveaxis(out, 0, -1)), golden[f"step/{t}/{n}"]
            )
            _params_close(_numpy(params[n]), golden[f"params/{t}/{n}"])
            acc = {k: np.moveaxis(v, 0, -1) for k, v in _state_arrays(state).items()}
            _close(acc["momentum"], golden[f"state/{t}/momentum/{n}"])
            _close(acc["rms"], golden[f"state/{t}/rms/{n}"])
            if n in ("w", "k"):
                _close(acc["v_row"], golden[f"state/{t}/fac_v_row/{n}"])
                _close(acc["v_col"], golden[f"state/{t}/fac_v_col/{n}"])
            else:
                _close(acc["v_row"], golden[f"state/{t}/fac_v_diag/{n}"])


def _random_tree(rng: np.random.Generator, scale: float) -> dict[str, np.ndarray]:
    return {
        k: (rng.normal(size=s) * scale).astype(np.float32) for k, s in SHAPES.items()
    }


def _jax_update(meta, spec=None):
    opt = elo_gym.small_fc_lopt(meta, spec)

    @jax.jit
    def update(grads, state, params):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return opt, update


@pytest.mark.parametrize("tile_elements", [None, 20], ids=["whole", "tiles"])
def test_parity_with_optax_face_on_every_tensor_kind(tile_elements, monkeypatch):
    """12 steps, then 3 more from iteration 12,345, where the step features of the
    longer timescales are in their middle range; step_mult and exp_mult are large
    enough that the magnitude output matters. Tiles of 20 elements cut every tensor
    of rank >= 2 into tiles, the last one shorter."""
    if tile_elements is not None:
        monkeypatch.setattr(torch_optim, "TILE_ELEMENTS", tile_elements)
    meta = _nontrivial_meta()
    spec = LOSpec.for_meta_params(meta, **MULTIPLIERS)
    rng = np.random.default_rng(0)
    init = _random_tree(rng, 0.1)
    params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in init.items()}
    opt = torch_optim.SmallFcLOpt(params.values(), meta, spec)
    jax_opt, jax_update = _jax_update(meta, spec)
    jax_params = {k: jnp.asarray(v) for k, v in init.items()}
    jax_state = jax_opt.init(jax_params)
    for t in range(15):
        if t == 12:
            jax_state = jax_state._replace(count=jnp.int32(12_345))
            for p in params.values():
                opt.state[p]["step"] = 12_345
        grads = _random_tree(rng, 0.05)
        for k, p in params.items():
            p.grad = torch.tensor(grads[k])
        opt.step()
        jax_params, jax_state = jax_update(grads, jax_state, jax_params)
        for k, p in params.items():
            # Parameters reach about 1.5 here: allow their float32 rounding.
            np.testing.assert_allclose(_numpy(p), jax_params[k], rtol=1e-6, atol=1e-7)
            _check_accumulators(opt.state[p], jax_state.accumulators[k])
    moved = [np.abs(_numpy(p) - init[k]).max() for k, p in params.items()]
    assert min(moved) > 1e-3  # the check compares real moves, not two no-ops


def test_every_spec_setting_is_checked_against_the_optax_face():
    """Each setting of the LO spec is exercised by a parity test here: the multipliers
    by the test above, the variants by the one below, the hidden size by the weights'
    shape. A setting added to the spec without a torch parity case fails here."""
    covered = set(MULTIPLIERS) | {k for v in VARIANTS for k in v} | {"hidden_size"}
    assert covered == set(lo_spec.FIELDS)


@pytest.mark.parametrize("variant", VARIANTS)
def test_lo_variant_loads_with_its_setting_in_both_faces(tmp_path, variant):
    """An LO meta-trained with raw_adam_ratio, adam_scaled_step, a nominal term or
    relative time (with a cosine nominal term): lo.json records it, and
    ``elo_gym.load_optimizer`` and ``torch_optim.load`` both build that variant's
    update, which differs from the reference one on the same
    weights."""
    meta = _nontrivial_meta()
    # Features 6 and 8 (Adam's ratios, at b2 0.95 for 8 in fast_second_moment)
    # move the output.
    meta.mlp["Dense_0"]["kernel"][[6, 8], :2] += [2.0, -2.0]
    checkpoint.save_lo(tmp_path, meta, LOSpec.for_meta_params(meta, **variant))
    recorded = json.loads((tmp_path / "lo.json").read_text())
    assert {k: recorded[k] for k in variant} == variant
    rng = np.random.default_rng(0)
    init = _random_tree(rng, 0.1)
    params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in init.items()}
    opt = torch_optim.load(tmp_path, params.values(), total_steps=TOTAL_STEPS)
    jax_opt = elo_gym.load_optimizer(tmp_path, total_steps=TOTAL_STEPS)
    reference_opt = elo_gym.small_fc_lopt(meta)
    jax_params = reference_params = {k: jnp.asarray(v) for k, v in init.items()}
    jax_state, reference_state = jax_opt.init(jax_params), reference_opt.init(init)
    for _ in range(5):
        grads = _random_tree(rng, 0.05)
        for k, p in params.items():
            p.grad = torch.tensor(grads[k])
        opt.step()
        updates, jax_state = jax_opt.update(grads, jax_state, jax_params)
        jax_params = optax.apply_updates(jax_params, updates)
        updates, reference_state = reference_opt.update(
            grads, reference_state, reference_params
        )
        reference_params = optax.apply_updates(reference_params, updates)
    for k, p in params.items():
        np.testing.assert_allclose(_numpy(p), jax_params[k], rtol=1e-6, atol=1e-7)
    gap = max(np.abs(jax_params[k] - reference_params[k]).max() for k in init)
    assert gap > 1e-4


def _jax_mlp_loss(params, x, y):
    """The torch model below, on its named_parameters (weights (out, in))."""
    h = jax.nn.relu(x @ params["0.weight"].T + params["0.bias"])
    h = jax.nn.relu(h @ params["2.weight"].T + params["2.bias"])
    logits = h @ params["4.weight"].T + params["4.bias"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def test_digits_mlp_trains_as_with_the_optax_face(tmp_path):
    """A 64-32-32-10 MLP on scikit-learn's digits, the same init and batches in both
    frameworks: the losses agree step by step within float32 noise, and fall."""
    meta = _nontrivial_meta()
    spec = LOSpec.for_meta_params(meta, step_mult=2e-3, exp_mult=1e-2)
    checkpoint.save_lo(tmp_path, meta, spec)
    x, y = sklearn.datasets.load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 10),
    )
    params = {n: jnp.asarray(_numpy(p)) for n, p in model.named_parameters()}
    opt = torch_optim.load(tmp_path, model.parameters())
    jax_opt = elo_gym.load_optimizer(tmp_path)
    assert opt.defaults == {"step_mult": 2e-3, "exp_mult": 1e-2}

    @jax.jit
    def jax_step(params, state, x, y):
        loss, grads = jax.value_and_grad(_jax_mlp_loss)(params, x, y)
        updates, state = jax_opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    state = jax_opt.init(params)
    order = np.random.default_rng(0).permutation(np.tile(np.arange(len(x)), 9))
    losses, jax_losses = [], []
    for i in range(250):
        batch = order[64 * i : 64 * (i + 1)]
        loss = torch.nn.functional.cross_entropy(
            model(torch.tensor(x[batch])), torch.tensor(y[batch])
        )
        loss.backward()
        opt.step()
        opt.zero_grad()
        params, state, jax_loss = jax_step(params, state, x[batch], y[batch])
        losses.append(loss.item())
        jax_losses.append(float(jax_loss))
    np.testing.assert_allclose(losses, jax_losses, rtol=2e-5)
    for n, p in model.named_parameters():
        np.testing.assert_allclose(_numpy(p), params[n], rtol=0, atol=1e-5)
    assert np.mean(losses[-20:]) < 0.2 * np.mean(losses[:20])


def _grads_for(step: int, params) -> None:
    gen = torch.Generator().manual_seed(step)
    for p in params:
        p.grad = (torch.randn(p.shape, generator=gen) * 0.05).to(p.dtype)


def _groups(params: dict) -> list[dict]:
    """Two groups, the second with its own step_mult and a bf16 parameter."""
    return [
        {"params": [params[k] for k in ("linear", "square", "scalar", "conv")]},
        {"params": [params["bias"], params["embedding"]], "step_mult": 5e-3},
    ]


def _fresh_params(init: dict) -> dict:
    params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in init.items()}
    params["embedding"] = torch.nn.Parameter(params["embedding"].detach().bfloat16())
    return params


def test_state_dict_round_trip_continues_exactly():
    """3 steps, torch.save and torch.load into fresh parameters and optimizer, 3
    more: bit for bit the uninterrupted run, a bf16 parameter's state still float32."""
    meta = _nontrivial_meta()
    init = _random_tree(np.random.default_rng(1), 0.1)
    through = _fresh_params(init)
    uninterrupted = torch_optim.SmallFcLOpt(_groups(through), meta)
    first = _fresh_params(init)
    interrupted = torch_optim.SmallFcLOpt(_groups(first), meta)
    for step in range(3):
        for params, opt in ((through, uninterrupted), (first, interrupted)):
            _grads_for(step, params.values())
            opt.step()
    buffer = io.BytesIO()
    torch.save({"params": first, "opt": interrupted.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = {k: torch.nn.Parameter(v.detach()) for k, v in saved["params"].items()}
    opt = torch_optim.SmallFcLOpt(_groups(resumed), meta)
    opt.load_state_dict(saved["opt"])
    assert opt.param_groups[1]["step_mult"] == 5e-3
    assert opt.state[resumed["embedding"]]["momentum"].dtype == torch.float32
    for step in range(3, 6):
        for params, o in ((through, uninterrupted), (resumed, opt)):
            _grads_for(step, params.values())
            o.step()
    for k in SHAPES:
        assert torch.equal(through[k], resumed[k]), k
        a, b = uninterrupted.state[through[k]], opt.state[resumed[k]]
        assert a.keys() == b.keys() and a["step"] == b["step"] == 6
        for key in a:
            if torch.is_tensor(a[key]):
                assert torch.equal(a[key], b[key]), (k, key)


def test_param_groups_have_their_own_step_mult():
    """Two groups step as two optimizers would, each with its group's step_mult."""
    meta = _nontrivial_meta()
    init = _random_tree(np.random.default_rng(2), 0.1)
    grouped, alone = _fresh_params(init), _fresh_params(init)
    first, second = _groups(alone)
    optimizers = {
        "grouped": [torch_optim.SmallFcLOpt(_groups(grouped), meta)],
        "alone": [
            torch_optim.SmallFcLOpt(first["params"], meta),
            torch_optim.SmallFcLOpt(
                second["params"], meta, LOSpec.for_meta_params(meta, step_mult=5e-3)
            ),
        ],
    }
    for step in range(2):
        for params, opts in zip((grouped, alone), optimizers.values(), strict=True):
            _grads_for(step, params.values())
            for opt in opts:
                opt.step()
    for k in SHAPES:
        assert torch.equal(grouped[k], alone[k]), k


def test_bf16_params_update_from_a_float32_computation():
    """bf16 parameters and gradients: float32 accumulators equal to the optax face's
    on the same values, and each new parameter is bf16(p + update) of its float32
    update, within one bf16 rounding step."""
    meta = _nontrivial_meta()
    rng = np.random.default_rng(3)
    params = {
        k: torch.nn.Parameter(torch.tensor(v).bfloat16())
        for k, v in _random_tree(rng, 0.1).items()
    }
    init = {k: p.detach().clone() for k, p in params.items()}
    opt = torch_optim.SmallFcLOpt(params.values(), meta)
    jax_opt = elo_gym.small_fc_lopt(meta)
    update = jax.jit(jax_opt.update)
    jax_state = jax_opt.init({k: _numpy(p) for k, p in params.items()})
    for _ in range(4):
        grads = {
            k: torch.tensor(v).bfloat16() for k, v in _random_tree(rng, 0.05).items()
        }
        for k, p in params.items():
            p.grad = grads[k]
        before = {k: _numpy(p) for k, p in params.items()}
        opt.step()
        updates, jax_state = update(
            {k: _numpy(g) for k, g in grads.items()}, jax_state, before
        )
        for k, p in params.items():
            assert p.dtype == torch.bfloat16
            assert opt.state[p]["momentum"].dtype == torch.float32
            _check_accumulators(opt.state[p], jax_state.accumulators[k])
            expected = torch.tensor(before[k] + np.asarray(updates[k])).bfloat16()
            # Float32 noise may cross a rounding boundary: one bf16 step, rarely.
            ulp = torch.finfo(torch.bfloat16).eps * expected.float().abs()
            assert torch.all((p.float() - expected.float()).abs() <= ulp), k
            assert (p != expected).float().mean() < 0.05, k
    for k, p in params.items():
        assert (p != init[k]).float().mean() > 0.5, k


def test_non_finite_gradients_count_as_zero_as_in_jax():
    """NaN and +-inf entries update exactly as zero entries do, on both faces (the
    entry still moves: its momentum and parameter feed the MLP), and the state stays
    finite."""
    meta = _nontrivial_meta()
    rng = np.random.default_rng(4)
    init = _random_tree(rng, 0.1)
    warmup, grads = _random_tree(rng, 0.05), _random_tree(rng, 0.05)
    bad = {k: v.copy() for k, v in grads.items()}
    bad["linear"][0, 0], bad["linear"][3, 2] = np.nan, np.inf
    bad["scalar"] = np.float32(-np.inf)
    bad["conv"][1, 2, 0, 1] = np.nan
    zeroed = {
        k: np.where(np.isfinite(v), v, 0.0).astype(np.float32) for k, v in bad.items()
    }

    def torch_run(last):
        params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in init.items()}
        opt = torch_optim.SmallFcLOpt(params.values(), meta)
        for g in (warmup, last):
            for k, p in params.items():
                p.grad = torch.tensor(g[k])
            opt.step()
        return params, opt

    params, opt = torch_run(bad)
    zero_params, zero_opt = torch_run(zeroed)
    jax_opt, jax_update = _jax_update(meta)
    jax_params = {k: jnp.asarray(v) for k, v in init.items()}
    jax_state = jax_opt.init(jax_params)
    for g in (warmup, bad):
        jax_params, jax_state = jax_update(g, jax_state, jax_params)
    for k, p in params.items():
        assert torch.equal(p, zero_params[k]), k
        for key, value in opt.state[p].items():
            if torch.is_tensor(value):
                assert torch.isfinite(value).all() and torch.equal(
                    value, zero_opt.state[zero_params[k]][key]
                )
        _params_close(_numpy(p), jax_params[k])
    assert _numpy(params["linear"])[0, 0] != init["linear"][0, 0]


def test_skips_params_without_grad_and_returns_the_closure_loss():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2))
    opt = torch_optim.SmallFcLOpt([a, b], _nontrivial_meta())

    def closure():
        opt.zero_grad()
        loss = (a**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 3.0
    assert not torch.equal(a, torch.ones(3)) and torch.equal(b, torch.ones(2, 2))
    assert b not in opt.state


def test_lazy_attribute_of_elo_gym():
    assert elo_gym.torch_optim is torch_optim


def test_bad_input_is_rejected_clearly(tmp_path):
    params = [torch.nn.Parameter(torch.ones(3))]
    meta = elo_gym.init_meta_params(jax.random.PRNGKey(0))
    with pytest.raises(TypeError, match="MetaParams"):
        torch_optim.SmallFcLOpt(params, elo_gym.small_fc_lopt(meta))
    with pytest.raises(TypeError, match="MetaParams"):
        torch_optim.SmallFcLOpt(params, meta.mlp)
    wide = copy.deepcopy(jax.device_get(meta))
    wide.mlp["Dense_0"]["kernel"] = np.zeros((28, 32), np.float32)
    with pytest.raises(ValueError, match=r"expected \(39, hidden\)"):
        torch_optim.SmallFcLOpt(params, wide)
    with pytest.raises(ValueError, match="hidden size 32, the LO spec 8"):
        torch_optim.SmallFcLOpt(params, meta, LOSpec(hidden_size=8))
    with pytest.raises(TypeError, match="spec must be an elo_gym.lo_spec.LOSpec"):
        torch_optim.SmallFcLOpt(params, meta, {"step_mult": 5e-3})
    with pytest.raises(ValueError, match="floating-point"):
        torch_optim.SmallFcLOpt([torch.zeros(3, dtype=torch.int64)], meta)
    with pytest.raises(FileNotFoundError, match="no learned optimizer"):
        torch_optim.load(tmp_path / "missing", params)
    with pytest.raises(FileNotFoundError, match="neither lo.msgpack nor"):
        torch_optim.load(tmp_path, params)
    embedding = torch.nn.Embedding(10, 4, sparse=True)
    embedding(torch.tensor([1, 2])).sum().backward()
    opt = torch_optim.SmallFcLOpt(embedding.parameters(), meta)
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()
