"""CoFED's client side: strict-majority labels from vote shares, own-confidence fallback."""

import torch
import torch.nn.functional as F

from fedmuscle_secure.baselines.cofed import cofed_loss, hard_predictions, vote_targets
from fedmuscle_secure.baselines.pseudo_label import pseudo_label_loss
from fedmuscle_secure.data.tasks import get_task

DIGITS, ATTRS = get_task("digit10"), get_task("attributes")


def test_hard_predictions_are_one_hot_or_thresholded():
    logits = torch.tensor([[0.1, 2.0, -1.0, 0.0]])
    assert hard_predictions(get_task("coarse"), logits[:, :3]).tolist() == [[0.0, 1.0, 0.0]]
    assert hard_predictions(ATTRS, logits).tolist() == [[1.0, 1.0, 0.0, 0.0]]


def test_vote_keeps_strict_majorities_only():
    shares = torch.tensor([[2 / 3, 1 / 3, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    targets, mask = vote_targets(get_task("coarse"), shares)
    assert mask.tolist() == [True, False, True] and targets[[0, 2]].tolist() == [0, 2]
    t, m = vote_targets(ATTRS, torch.tensor([[1.0, 0.5, 0.0, 2 / 3]]))
    assert m.tolist() == [[True, False, True, True]] and t.tolist() == [[1.0, 0.0, 0.0, 1.0]]


def test_loss_uses_votes_or_falls_back_to_own_confident_predictions():
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(4, 10)
    x = torch.randn(6, 4, generator=g)
    labels = torch.randint(0, 10, (6,), generator=g)
    shares = F.one_hot(labels, 10).float()
    torch.testing.assert_close(cofed_loss(model, DIGITS, x, x, shares, alone=False),
                               F.cross_entropy(model(x), labels))
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.arange(10.0) * 3)
    alone = cofed_loss(model, DIGITS, x, x, shares, alone=True)
    torch.testing.assert_close(alone, pseudo_label_loss(model, DIGITS, x, x))
