"""DP-SGD in LocalUpdate (DESIGN §5.2): exact per-sample gradients for every shipped
architecture, Poisson-sampled noisy training, the caller's noise source, clipping, and
refusal of models Opacus cannot train privately (whole epochs of every architecture around
the contrastive phase: tests/e2e/test_dp_sgd_epochs.py)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from opacus.grad_sample import GradSampleModule
from opacus.grad_sample.gsm_exp_weights import GradSampleModuleExpandedWeights
from timm.models.resnet import BasicBlock
from torch import nn

from fedmuscle_secure.client.dp_sgd import (
    MODE_ATTR,
    DPSGDConfig,
    DPSGDTrainer,
    csprng_gaussian,
    make_private_model,
    per_sample_gradient_error,
    recommended_grad_sample_mode,
)
from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.models import ClientModel
from helpers.dp_sgd_models import SHIPPED, TASK, private_forms
from helpers.dp_sgd_models import build_model as _build
from helpers.dp_sgd_models import random_batch as _data

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def private_models() -> dict[str, ClientModel]:
    return private_forms()


def _flat(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


# ---------------------------------------------------------------- per-sample gradients


@pytest.mark.parametrize("name", list(SHIPPED))
def test_per_sample_gradients_equal_single_sample_gradients(name, private_models):
    """The oracle: each sample's gradient computed alone, against Opacus's per-sample
    gradients of the whole batch, with the real task loss, on the returned model."""
    model = copy.deepcopy(private_models[name]).train()
    mode = recommended_grad_sample_mode(model)
    x, y = _data(4, seed=1)
    params = [p for n, p in model.named_parameters() if not n.startswith("projection.")]
    singles = []
    for i in range(len(x)):
        model.zero_grad(set_to_none=True)
        TASK.loss(model(x[i:i + 1]), y[i:i + 1]).backward()
        singles.append(_flat([p.grad for p in params]))
    model.zero_grad(set_to_none=True)
    wrapper = GradSampleModule if mode == "hooks" else GradSampleModuleExpandedWeights
    gsm = wrapper(model, batch_first=True, loss_reduction="mean")
    TASK.loss(gsm(x), y).backward()
    assert all(p.grad_sample is not None for p in params)
    for i, single in enumerate(singles):
        per_sample = _flat([p.grad_sample[i] for p in params])
        error = torch.linalg.vector_norm(per_sample - single)
        assert error <= 1e-4 * torch.linalg.vector_norm(single)


def test_timm_inplace_residual_breaks_hooks_and_is_detected(private_models):
    """DESIGN §5.2's pitfall: the unpatched timm BasicBlock (``x += shortcut``) breaks
    ``hooks``; the probe notices it and recommends ``ew``, which is exact."""
    model = copy.deepcopy(private_models["resnet10t"])
    assert recommended_grad_sample_mode(model) == "hooks"  # patched blocks
    for m in model.modules():
        if isinstance(m, BasicBlock):
            m.__class__ = BasicBlock  # back to timm's in-place forward
    delattr(model, MODE_ATTR)
    x = torch.randn(3, 1, 16, 16, dtype=torch.float64)
    try:
        err = per_sample_gradient_error(model, x, grad_sample_mode="hooks")
    except RuntimeError:  # torch refuses the in-place write on a hooked output
        err = math.inf
    assert err > 1e-3
    assert per_sample_gradient_error(model, x, grad_sample_mode="ew") < 1e-9
    assert recommended_grad_sample_mode(model) == "ew"


def test_make_private_model_replaces_batch_norm_keeps_activation_and_input():
    original = _build("regnetx_002")
    before = {k: v.clone() for k, v in original.state_dict().items()}
    private = make_private_model(original, client="lab-d")
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in private.modules())
    assert not any(getattr(m, "inplace", False) for m in private.modules())
    # BatchNormAct2d carried the ReLU: it must survive as GroupNorm → drop → act
    assert sum(isinstance(m, nn.ReLU) for m in private.modules()) == \
        sum(isinstance(m, nn.ReLU) for m in original.modules())
    assert all(torch.equal(before[k], v) for k, v in original.state_dict().items())  # untouched
    assert private.represent(torch.rand(2, 1, 8, 8)).shape == (2, 16)


# ---------------------------------------------------------------- refusal


class _BatchStatsNorm(nn.BatchNorm2d):
    """A BatchNorm subclass: ``ModuleValidator`` matches types exactly and would miss it."""


class _BatchMix(nn.Module):
    """Parameterised, buffer-free, but mixes the samples of a batch."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * (x - x.mean(0, keepdim=True))


def _custom_model(layer: nn.Module) -> ClientModel:
    backbone = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), layer, nn.AdaptiveAvgPool2d(1),
                             nn.Flatten())
    return ClientModel(backbone, width=8, image_size=16, dim=16, num_outputs=10, hidden=32)


def test_unsupported_batch_statistics_layer_is_refused_naming_client_and_layer():
    with pytest.raises(ConfigError) as info:
        make_private_model(_custom_model(_BatchStatsNorm(8)), client="bank-b")
    msg = str(info.value)
    assert info.value.field == "client bank-b"
    assert "backbone.1" in msg and "_BatchStatsNorm" in msg
    assert "batch statistics" in msg and "another architecture" in msg


def test_layer_with_wrong_per_sample_gradients_is_refused():
    with pytest.raises(ConfigError) as info:
        make_private_model(_custom_model(_BatchMix(8)), client="lab-c")
    assert info.value.field == "client lab-c"
    assert "hooks" in str(info.value) and "ew" in str(info.value)


# ---------------------------------------------------------------- training


def test_noise_comes_from_noise_fn_with_std_sigma_c(private_models):
    model = copy.deepcopy(private_models["vit_tiny_patch16_224"])
    calls: list[tuple[tuple[int, ...], float]] = []

    def noise_fn(shape: tuple[int, ...], std: float) -> torch.Tensor:
        calls.append((shape, std))
        return torch.zeros(shape, dtype=torch.float64)

    x, y = _data(20)
    sigma, c = 1.3, 0.7
    trainer = DPSGDTrainer(model, TASK, x, y, lr=1e-3, weight_decay=0.0, noise_fn=noise_fn,
                           config=DPSGDConfig(sigma, c, expected_batch_size=10))
    _, steps = trainer.run(1)
    trained = [tuple(p.shape) for n, p in model.named_parameters()
               if not n.startswith("projection.")]
    assert [s for s, _ in calls] == trained * steps
    assert all(std == pytest.approx(sigma * c) for _, std in calls)


def test_noise_is_added(private_models):
    """A huge 'noise' moves the weights the other way than σ = 0 does."""
    x, y = _data(20)
    moved = {}
    sources = {"zero": lambda s, std: torch.zeros(s), "huge": lambda s, std: torch.full(s, 1e6)}
    for label, fn in sources.items():
        model = copy.deepcopy(private_models["regnetx_002"])
        head_before = model.head.bias.detach().clone()
        DPSGDTrainer(model, TASK, x, y, lr=0.1, weight_decay=0.0, noise_fn=fn,
                     config=DPSGDConfig(1.0, 1.0, expected_batch_size=20)).run(1)
        moved[label] = model.head.bias.detach() - head_before
    # Adam moves every coordinate by ≈ -lr·sign(grad): +1e6 noise makes that -lr everywhere
    assert torch.allclose(moved["huge"], torch.full_like(moved["huge"], -0.1), atol=1e-3)
    assert not torch.allclose(moved["zero"], moved["huge"])


@pytest.mark.parametrize("identical_rows", [False, True])
def test_clipping_bounds_the_summed_gradient(identical_rows, private_models, monkeypatch):
    """σ = 0: the optimizer sees Σ_i clip_C(g_i) / B_expected, so its norm times B_expected is
    at most C · |batch|.
    With identical rows every g_i is the same vector, longer than C, so the bound is met
    with equality: each sample really is clipped to exactly C, not the batch as a whole."""
    model = copy.deepcopy(private_models["vit_tiny_patch16_224"])
    x, y = _data(40)
    if identical_rows:
        x, y = x[:1].expand(40, -1, -1, -1).clone(), y[:1].expand(40).clone()
    c = 1e-3
    trainer = DPSGDTrainer(model, TASK, x, y, lr=1e-3, weight_decay=0.0,
                           config=DPSGDConfig(0.0, c, expected_batch_size=20))
    batch_sizes: list[int] = []
    model.register_forward_hook(lambda m, inp, out: batch_sizes.append(inp[0].shape[0]))
    norms: list[float] = []
    adam_step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        norms.append(float(torch.linalg.vector_norm(_flat([p.grad for g in self.param_groups
                                                           for p in g["params"]]))))
        return adam_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    _, steps = trainer.run(2)
    assert len(norms) == steps
    nonzero = [n for n in norms if n > 0]  # empty batches leave a zero gradient
    assert len(nonzero) == len(batch_sizes) > 0
    for norm, batch in zip(nonzero, batch_sizes, strict=True):
        summed = norm * trainer.expected_batch_size
        assert summed <= c * batch * (1 + 1e-4)
        if identical_rows:
            assert summed == pytest.approx(c * batch, rel=1e-3)


def test_empty_poisson_batches_are_noise_only_steps(private_models):
    model = copy.deepcopy(private_models["regnetx_002"])
    x, y = _data(4)
    calls: list[tuple[int, ...]] = []

    def noise_fn(shape, std):
        calls.append(shape)
        return torch.zeros(shape)

    trainer = DPSGDTrainer(model, TASK, x, y, lr=1e-3, weight_decay=0.0, noise_fn=noise_fn,
                           config=DPSGDConfig(1.0, 1.0, expected_batch_size=1))
    trainer.sampler = [[], [0, 2], []]  # force empty batches (normally ~1/3 of them here)
    per_step = len([p for n, p in model.named_parameters() if not n.startswith("projection.")])
    loss, steps = trainer.run(2)
    assert steps == 6 and len(calls) == 6 * per_step and math.isfinite(loss)


def test_real_poisson_sampler_with_frequent_empty_batches_runs(private_models):
    model = copy.deepcopy(private_models["vit_tiny_patch16_224"])
    x, y = _data(3)
    trainer = DPSGDTrainer(model, TASK, x, y, lr=1e-3, weight_decay=0.0,
                           config=DPSGDConfig(1.0, 1.0, expected_batch_size=1))
    assert trainer.sample_rate == pytest.approx(1 / 3)
    _, steps = trainer.run(4)
    assert steps == 4 * trainer.steps_per_epoch == 12


def test_sampling_is_not_seeded_from_the_experiment_seed(private_models):
    x, y = _data(60)
    drawn = []
    for _ in range(2):
        torch.manual_seed(0)
        model = copy.deepcopy(private_models["vit_tiny_patch16_224"])
        rows: list[torch.Tensor] = []
        model.register_forward_hook(
            lambda m, inp, out, rows=rows: rows.append(inp[0].sum((1, 2, 3))))
        DPSGDTrainer(model, TASK, x, y, lr=1e-3, weight_decay=0.0,
                     config=DPSGDConfig(1.0, 1.0, expected_batch_size=30)).run(1)
        drawn.append(torch.cat(rows))
    assert drawn[0].shape != drawn[1].shape or not torch.equal(drawn[0], drawn[1])


def _generators(obj, depth: int = 3) -> list[torch.Generator]:
    """Every torch.Generator reachable through ``obj``'s attributes (what a copy of the
    process, a pickled trainer or a forked data-loader worker carries along)."""
    found: list[torch.Generator] = []
    todo, seen = [(obj, 0)], set()
    while todo:
        o, d = todo.pop()
        if id(o) in seen or isinstance(o, (nn.Module, torch.Tensor, str, bytes, int, float)):
            continue
        seen.add(id(o))
        if isinstance(o, torch.Generator):
            found.append(o)
            continue
        if d < depth:
            children = o.values() if isinstance(o, dict) else o if isinstance(o, (list, tuple)) \
                else vars(o).values() if hasattr(o, "__dict__") else ()
            todo.extend((c, d + 1) for c in children)
    return found


def test_poisson_batches_cannot_be_replayed_from_captured_generator_state(private_models):
    """The attack: snapshot every PRNG state the trainer can reach, and torch's global one;
    let an epoch's batches be drawn; restore the snapshot and draw again. Were the masks
    drawn from a seeded MT19937 (Opacus's sampler), the second epoch would replay the first:
    whoever holds that state knows which records are in every batch, and the ε computed
    with amplification by subsampling no longer holds. Drawn from the ChaCha20 CSPRNG (a
    fresh os.urandom key per draw), nothing in the process determines the next batch."""
    x, y = _data(200)
    trainer = DPSGDTrainer(copy.deepcopy(private_models["regnetx_002"]), TASK, x, y, lr=1e-3,
                           weight_decay=0.0, config=DPSGDConfig(1.0, 1.0, expected_batch_size=100))
    assert trainer.sample_rate == 0.5 and trainer.steps_per_epoch == 2  # Opacus's q and steps
    generators = _generators(trainer)
    states, global_state = [g.get_state() for g in generators], torch.get_rng_state()
    first = list(trainer.sampler)
    for g, state in zip(generators, states, strict=True):
        g.set_state(state)
    torch.set_rng_state(global_state)
    second = list(trainer.sampler)
    assert len(first) == len(second) == 2
    assert first != second


def test_default_noise_is_gaussian_from_os_entropy():
    torch.manual_seed(0)
    a = csprng_gaussian((100_000,), 2.0)
    torch.manual_seed(0)
    b = csprng_gaussian((100_000,), 2.0)
    assert not torch.equal(a, b)
    assert abs(float(a.mean())) < 0.05 and float(a.std()) == pytest.approx(2.0, rel=0.02)
    assert csprng_gaussian((3, 5), 1.0).shape == (3, 5)
    assert csprng_gaussian((7,), 1.0).shape == (7,)


def test_state_dict_round_trip(private_models):
    x, y = _data(20)
    cfg = DPSGDConfig(1.0, 1.0, expected_batch_size=10)
    a = DPSGDTrainer(copy.deepcopy(private_models["regnetx_002"]), TASK, x, y, lr=1e-3,
                     weight_decay=0.0, config=cfg)
    a.run(1)
    state = a.state_dict()
    b = DPSGDTrainer(copy.deepcopy(private_models["regnetx_002"]), TASK, x, y, lr=1e-3,
                     weight_decay=0.0, config=cfg)
    b.load_state_dict(state)
    sa, sb = a.state_dict()["state"], b.state_dict()["state"]
    assert sa.keys() == sb.keys() and len(sa) > 0
    assert all(torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"]) for k in sa)
    b.run(1)


@pytest.mark.parametrize("field,kwargs", [
    ("dp_sgd.noise_multiplier", {"noise_multiplier": -1.0}),
    ("dp_sgd.max_grad_norm", {"max_grad_norm": 0.0}),
    ("dp_sgd.expected_batch_size", {"expected_batch_size": 0}),
    ("dp_sgd.grad_sample_mode", {"grad_sample_mode": "ghost"}),
])
def test_config_is_validated(field, kwargs):
    base = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "expected_batch_size": 8}
    with pytest.raises(ConfigError) as info:
        DPSGDConfig(**{**base, **kwargs})
    assert info.value.field == field


def test_trainer_requires_a_private_model_and_an_exact_mode(private_models):
    x, y = _data(10)
    cfg = DPSGDConfig(1.0, 1.0, expected_batch_size=5)
    with pytest.raises(ConfigError, match="make_private_model"):
        DPSGDTrainer(_build("vit_tiny_patch16_224"), TASK, x, y, lr=1e-3, weight_decay=0.0,
                     config=cfg)
    vit = copy.deepcopy(private_models["vit_tiny_patch16_224"])  # cls_token: no ExpandedWeights
    with pytest.raises(ConfigError) as info:
        DPSGDTrainer(vit, TASK, x, y, lr=1e-3, weight_decay=0.0,
                     config=DPSGDConfig(1.0, 1.0, expected_batch_size=5, grad_sample_mode="ew"))
    assert info.value.field == "dp_sgd.grad_sample_mode" and "'hooks'" in str(info.value)


def test_a_record_whose_gradient_overflows_contributes_zero(private_models, monkeypatch):
    """An active server can send weights on which one record's forward pass overflows;
    Opacus would clip its inf gradient to NaN and poison the whole noised sum, so whether
    that record is in the shard would show as a NaN model. The record contributes zero
    instead: the step equals the step without it (zero noise here to compare)."""
    x, y = _data(4)
    x[1] = 1e38  # overflows in the first convolution
    out, grads = {}, []
    adam_step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        grads.append(torch.cat([p.grad.reshape(-1) for g in self.param_groups
                                for p in g["params"] if p.grad is not None]).clone())
        return adam_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    for label, rows in (("with", [0, 1, 2, 3]), ("without", [0, 2, 3])):
        model = copy.deepcopy(private_models["regnetx_002"])
        trainer = DPSGDTrainer(model, TASK, x, y, lr=1e-3, weight_decay=0.0,
                               noise_fn=lambda shape, std: torch.zeros(shape),
                               config=DPSGDConfig(1.0, 1.0, expected_batch_size=4))
        trainer.sampler = [rows]
        trainer.run(1)
        out[label] = (torch.cat([p.detach().reshape(-1) for p in model.parameters()]),
                      trainer.nonfinite_samples)
    assert (out["with"][1], out["without"][1]) == (1, 0)
    assert torch.isfinite(out["with"][0]).all() and torch.isfinite(grads[0]).all()
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)  # the same clipped sum
