"""MOCHA in the harness (DESIGN §2.7): its defining steps. The Ω update is the closed-form
minimiser of tr(W Ω⁻¹ Wᵀ) under tr Ω = 1, checked against an independent matrix square
root; each client's head target minimises that regulariser with the others fixed; the
client pulls its own head towards the target (it does not load it) and averages the
backbone; a run goes end to end; where its assumptions fail it is refused."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.messages import WeightRelease
from fedmuscle_secure.server.weights import mocha_steps, mocha_targets, task_relationship
from fedmuscle_secure.simulator import build_federation, run_round
from helpers.tiny import tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SAME_TASK = [{"name": n, "model": "test_resnet", "image_size": 8, "task": "digit10"}
             for n in ("a", "b", "c")]


def _heads(seed=0, m=4, p=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, p, generator=g, dtype=torch.float64)


def test_omega_is_the_normalised_square_root_of_the_heads_gram_matrix():
    w = _heads()
    omega, prec = task_relationship(w)
    root = np.real(scipy.linalg.sqrtm((w @ w.T).numpy()))
    np.testing.assert_allclose(omega.numpy(), root / np.trace(root), atol=1e-10)
    assert float(torch.trace(omega)) == pytest.approx(1.0)
    torch.testing.assert_close(prec @ omega, torch.eye(4, dtype=torch.float64), atol=1e-8, rtol=0)


def test_omega_minimises_the_regulariser_among_unit_trace_relationships():
    """tr(W Ω⁻¹ Wᵀ) at the closed form is below its value at random PSD Ω of trace 1."""
    w = _heads(1)
    omega, prec = task_relationship(w)
    best = float(torch.trace(w.T @ prec @ w))
    g = torch.Generator().manual_seed(2)
    for _ in range(50):
        a = torch.randn(4, 4, generator=g, dtype=torch.float64)
        other = a @ a.T + 1e-3 * torch.eye(4, dtype=torch.float64)
        other = other / torch.trace(other)
        assert best <= float(torch.trace(w.T @ torch.linalg.inv(other) @ w)) + 1e-9


def test_each_target_minimises_the_regulariser_with_the_other_heads_fixed():
    w = _heads(3)
    _, prec = task_relationship(w)
    targets = mocha_targets(w)
    for k in range(w.shape[0]):
        moved = w.clone()
        moved[k] = targets[k]
        moved.requires_grad_(True)
        reg = torch.trace(moved.T @ prec @ moved)
        (grad,) = torch.autograd.grad(reg, moved)
        assert float(grad[k].abs().max()) < 1e-9 * float(w.abs().max())


def test_related_clients_pull_each_other_more_than_unrelated_ones():
    """Two clients with nearly the same head and one orthogonal to both: a's target is
    close to b's head, c's target does not lean on a's or b's."""
    w = torch.tensor([[1.0, 0.0, 0.0], [0.95, 0.05, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    t = mocha_targets(w)
    assert float(torch.dot(t[0], w[1])) > 0.5
    assert float(t[2, :2].abs().max()) < 1e-6


def test_the_server_step_averages_the_backbone_and_sends_each_client_its_head_target():
    parts = (("backbone", 2), ("head", 3))
    heads = _heads(4, m=3, p=3).float()
    rel = {c: WeightRelease(c, 1, 0, None, parts,
                            torch.cat([torch.tensor([float(i), 2.0 * i]), heads[i]]), i + 1)
           for i, c in enumerate("abc")}
    out = {m.client: m for m in mocha_steps(1, 0, None, ["a", "b", "c"], rel,
                                            device=torch.device("cpu"))}
    backbone = [(0 * 1 + 1 * 2 + 2 * 3) / 6, (0 * 1 + 2 * 2 + 4 * 3) / 6]
    targets = mocha_targets(heads.double()).float()
    for i, c in enumerate("abc"):
        assert out[c].w[:2].tolist() == pytest.approx(backbone)
        torch.testing.assert_close(out[c].w[2:], targets[i])
        assert out[c].peers == (("a", "b", "c"), ("a", "b", "c"))


def _fed(clients=SAME_TASK, **over):
    cfg = tiny_config(clients=[dict(c) for c in clients],
                      data={"public_size": 64, "test_size": 30, "shard_size": 16, "val_fraction": 0.25},
                      muscle={"method": "mocha", "num_selected": 2, "batch_size": 32, "dim": 16},
                      training={"rounds": 2, "local_epochs": 1, "local_batch_size": 16},
                      weight_sharing={"mu": 0.5}, **over)
    return build_federation(cfg, make_split(cfg), "mocha")


def test_a_round_loads_the_backbone_mean_and_keeps_the_head_pulled_towards_its_target():
    fed = _fed()
    run_round(fed, 1)
    a = fed.clients["a"].weights
    backbones = [fed.clients[c].weights.segments(fed.clients[c].weights.vector())[0] for c in "abc"]
    assert all(torch.equal(backbones[0], b) for b in backbones[1:])  # the mean, loaded by all
    heads = [fed.clients[c].weights.segments(fed.clients[c].weights.vector())[1] for c in "abc"]
    assert not torch.equal(heads[0], heads[1])  # heads stay each client's own
    target = torch.cat([t.reshape(-1) for t in a._target])
    expected = mocha_targets(torch.stack(heads).double())[0].float()
    torch.testing.assert_close(target, expected, atol=1e-6, rtol=1e-5)
    a.begin_local_update()  # the next LocalUpdate pulls the head towards the target
    head_params = [p for name, ps in a.parts if name == "head" for p in ps]
    for p in head_params:
        p.grad = None
    a.add_proximal_gradient()
    got = torch.cat([p.grad.reshape(-1) for p in head_params])
    torch.testing.assert_close(got, 0.5 * (heads[0] - target))
    state = a.state_dict()  # the target survives a checkpoint
    a.load_state_dict({"target": None})
    a.load_state_dict(state)
    torch.testing.assert_close(torch.cat([t.reshape(-1) for t in a._target]), target)
    run_round(fed, 2)
    fed.close()


def test_mocha_is_refused_where_its_assumptions_fail():
    with pytest.raises(ConfigError, match="every client needs the same task") as err:
        _fed(clients=[dict(SAME_TASK[0]), dict(SAME_TASK[1], task="coarse"), dict(SAME_TASK[2])])
    assert err.value.field == "clients.1.task"
    with pytest.raises(ConfigError, match="Ω needs every client's head"):
        _fed(protection="secagg")
