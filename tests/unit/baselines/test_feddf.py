"""FedDF's distillation loss against torch's KL and an explicit Bernoulli KL."""

import pytest
import torch
import torch.nn.functional as F

from fedmuscle_secure.baselines.feddf import distillation_loss
from fedmuscle_secure.data.tasks import get_task

DIGITS, ATTRS = get_task("digit10"), get_task("attributes")


def test_zero_when_the_student_equals_the_ensemble_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, 10, generator=g)
    assert float(distillation_loss(DIGITS, s, s.clone())) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(ATTRS, s[:, :4], s[:, :4].clone())) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(DIGITS, s, torch.randn(5, 10, generator=g))) > 0


def test_multiclass_matches_torch_kl_div_times_t_squared():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 10, generator=g), torch.randn(4, 10, generator=g)
    want = F.kl_div(F.log_softmax(s / 3, -1), F.log_softmax(t / 3, -1), log_target=True,
                    reduction="batchmean") * 9
    torch.testing.assert_close(distillation_loss(DIGITS, s, t, 3.0), want)


def test_multilabel_is_the_mean_bernoulli_kl():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    total = 0.0
    for i in range(3):
        for j in range(4):
            p, q = torch.sigmoid(t[i, j] / 2), torch.sigmoid(s[i, j] / 2)
            total += float(p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q)))
    assert float(distillation_loss(ATTRS, s, t, 2.0)) == pytest.approx(total / 12 * 4, rel=1e-9)
