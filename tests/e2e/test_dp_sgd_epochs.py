"""DP-SGD in LocalUpdate (DESIGN §5.2) around the contrastive phase: whole noisy epochs of
every shipped architecture, then a contrastive step on the same model, and a DP epoch again
after one. The per-sample gradients, clipping, noise and refusals are in
tests/unit/client/test_dp_sgd.py."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from fedmuscle_secure.client.dp_sgd import (
    DPSGDConfig,
    DPSGDTrainer,
    recommended_grad_sample_mode,
)
from fedmuscle_secure.models import ClientModel
from helpers.dp_sgd_models import SHIPPED, TASK, private_forms, random_batch

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def private_models() -> dict[str, ClientModel]:
    return private_forms()


def _contrastive_step(model: ClientModel) -> None:
    """What the contrastive phase does: any loss on represent(public x), own optimizer."""
    encoder = model.encoder_parameters()
    before = [p.detach().clone() for p in encoder]
    opt = torch.optim.Adam(encoder, lr=1e-2)
    opt.zero_grad()
    model.represent(torch.rand(8, 1, 8, 8))[:, 0].sum().backward()
    opt.step()
    assert all(getattr(p, "grad_sample", None) is None for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, encoder, strict=True))


def _trainer(model: ClientModel, n: int, batch: int) -> DPSGDTrainer:
    x, y = random_batch(n)
    config = DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=batch,
                         grad_sample_mode=recommended_grad_sample_mode(model))
    return DPSGDTrainer(model, TASK, x, y, lr=1e-3, weight_decay=1e-4, config=config)


@pytest.mark.parametrize("name", list(SHIPPED))
def test_two_epochs_then_a_contrastive_step(name, private_models):
    model = copy.deepcopy(private_models[name])
    trainer = _trainer(model, 60, 32)
    assert trainer.steps_per_epoch == round(1 / trainer.sample_rate) == 2  # ceil(60 / 32)
    loss, steps = trainer.run(2)
    assert steps == 2 * trainer.steps_per_epoch
    assert math.isfinite(loss)
    # run() leaves the per-sample hooks off: the contrastive phase needs nothing else
    assert all(getattr(p, "grad_sample", None) is None for p in model.parameters())
    _contrastive_step(model)


@pytest.mark.parametrize("name", ["regnetx_002", "vit_tiny_patch16_224"])  # hooks / functorch
def test_dp_epoch_contrastive_step_dp_epoch(name, private_models):
    model = copy.deepcopy(private_models[name])
    trainer = _trainer(model, 30, 15)
    trainer.run(1)
    trainer.disable_per_sample_hooks()
    _contrastive_step(model)
    trainer.enable_per_sample_hooks()
    before = model.head.weight.detach().clone()
    loss, steps = trainer.run(1)
    assert steps == trainer.steps_per_epoch and math.isfinite(loss)
    assert not torch.equal(before, model.head.weight)
