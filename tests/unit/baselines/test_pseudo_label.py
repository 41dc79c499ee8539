"""Confident pseudo-labels and the masked task loss, against explicit per-row rules."""

import math

import torch
import torch.nn.functional as F

from fedmuscle_secure.baselines.pseudo_label import (
    confident_targets,
    masked_task_loss,
    pseudo_label_loss,
)
from fedmuscle_secure.data.tasks import get_task

DIGITS, ATTRS = get_task("digit10"), get_task("attributes")


def test_multiclass_keeps_rows_whose_top_probability_reaches_the_threshold():
    logits = torch.tensor([[5.0, 0, 0], [1.0, 0.9, 0], [0, 0, 9.0]])
    targets, mask = confident_targets(get_task("coarse"), logits, 0.9)
    for i, row in enumerate(logits):
        p = torch.softmax(row, 0)
        assert bool(mask[i]) == (float(p.max()) >= 0.9) and int(targets[i]) == int(p.argmax())


def test_multilabel_masks_each_attribute_in_the_uncertain_band():
    logits = torch.tensor([[3.0, -3.0, 0.5, -0.1], [0.0, 2.5, -2.2, 10.0]])
    targets, mask = confident_targets(ATTRS, logits, 0.9)
    for i in range(2):
        for j in range(4):
            p = 1 / (1 + math.exp(-float(logits[i, j])))
            assert bool(mask[i, j]) == (p >= 0.9 or p <= 0.1)
            assert float(targets[i, j]) == float(p >= 0.5)


def test_masked_loss_averages_only_kept_labels_and_skips_when_none():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(6, 10, generator=g), torch.randint(0, 10, (6,), generator=g)
    mask = torch.tensor([True, False, True, False, False, True])
    want = sum(F.cross_entropy(logits[i:i + 1], y[i:i + 1]) for i in (0, 2, 5)) / 3
    torch.testing.assert_close(masked_task_loss(DIGITS, logits, y, mask), want)
    assert masked_task_loss(DIGITS, logits, y, torch.zeros(6, dtype=torch.bool)) is None
    ml, yt = torch.randn(3, 4, generator=g), torch.randint(0, 2, (3, 4), generator=g).float()
    mm = torch.rand(3, 4, generator=g) > 0.4
    kept = [(i, j) for i in range(3) for j in range(4) if mm[i, j]]
    want = sum(F.binary_cross_entropy_with_logits(ml[i, j], yt[i, j]) for i, j in kept) / len(kept)
    torch.testing.assert_close(masked_task_loss(ATTRS, ml, yt, mm), want)


def test_pseudo_label_loss_trains_toward_the_models_own_confident_prediction():
    model = torch.nn.Linear(4, 10)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.arange(10.0))  # class 9 with softmax p ≈ 0.63
    x = torch.randn(5, 4)
    assert pseudo_label_loss(model, DIGITS, x, x) is None  # nothing confident at 0.9
    with torch.no_grad():
        model.bias.mul_(3)  # p(9) ≈ 0.95
    loss = pseudo_label_loss(model, DIGITS, x, x)
    torch.testing.assert_close(loss, F.cross_entropy(model(x), torch.full((5,), 9)))
