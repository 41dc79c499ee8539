"""Server aggregation per output space (cofed votes, feddf ensembles): batched vs loops."""

import pytest
import torch

from fedmuscle_secure.baselines.group_outputs import (
    group_means,
    group_output_replies,
    output_space_membership,
)
from fedmuscle_secure.messages import TaskOutputs

SPACES = ["digit10", "coarse", "digit10", "attributes", "digit10", "coarse"]
WIDTH = {"digit10": 10, "coarse": 3, "attributes": 4}


def _releases(seed=0, nb=2, b=5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(nb, b, WIDTH[s], generator=g) for s in SPACES]


def test_group_means_match_a_per_client_loop():
    outs = _releases()
    for include_self in (True, False):
        got = group_means(outs, output_space_membership(SPACES, include_self=include_self))
        for n, s in enumerate(SPACES):
            members = [m for m, t in enumerate(SPACES) if t == s and (include_self or m != n)]
            want = sum(outs[m] for m in members) / len(members) if members else torch.zeros_like(outs[n])
            torch.testing.assert_close(got[n], want)


def _replies(method, outs):
    order = [f"c{i}" for i in range(len(outs))]
    rel = {c: TaskOutputs(c, 1, 0, None, o) for c, o in zip(order, outs, strict=True)}
    return group_output_replies(method, 1, 0, None, order, rel, dict(zip(order, SPACES, strict=True)),
                                device="cpu")


def test_feddf_ensemble_leaves_the_recipient_out():
    outs = _releases(1)
    reps = _replies("feddf", outs)
    assert reps[0].peers == ("c2", "c4") and reps[3].peers == ()
    torch.testing.assert_close(reps[0].mean, (outs[2] + outs[4]) / 2)
    torch.testing.assert_close(reps[1].mean, outs[5])


def test_cofed_votes_include_the_recipient_and_give_vote_shares():
    g = torch.Generator().manual_seed(2)
    outs = []
    for s in SPACES:  # hard predictions: one-hot for single-label, 0/1 for attributes
        if s == "attributes":
            outs.append(torch.randint(0, 2, (1, 4, 4), generator=g).float())
        else:
            outs.append(torch.nn.functional.one_hot(torch.randint(0, WIDTH[s], (1, 4), generator=g),
                                                    WIDTH[s]).float())
    reps = _replies("cofed", outs)
    assert reps[0].peers == ("c0", "c2", "c4") and reps[3].peers == ("c3",)
    for k in range(4):
        for c in range(10):
            votes = sum(int(outs[m][0, k].argmax() == c) for m in (0, 2, 4))
            assert float(reps[2].mean[0, k, c]) == pytest.approx(votes / 3)
