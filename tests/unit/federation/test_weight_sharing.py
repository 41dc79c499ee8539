"""Weight-sharing methods in the harness (DESIGN §2.7): FedAvg, FedProx and M-Fed. Their
defining steps: the sample-weighted mean over each part's group (M-Fed's two scopes), the
common start, FedProx's proximal pull under plain and DP-SGD training, and the refusals
where their assumptions do not hold."""

from __future__ import annotations

import pytest
import torch

from fedmuscle_secure.client.weight_phase import WeightPhase, shared_parts
from fedmuscle_secure.config import validate_deployable
from fedmuscle_secure.errors import ConfigError, ProtocolError
from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.messages import WeightAverage, WeightRelease
from fedmuscle_secure.server.weights import check_weight_release, weight_averages
from fedmuscle_secure.simulator import build_federation, run_round
from helpers.tiny import tiny_config

SAME = [{"name": "a", "model": "test_resnet", "image_size": 16, "task": "coarse"},
        {"name": "b", "model": "test_resnet", "image_size": 16, "task": "digit10"},
        {"name": "c", "model": "test_resnet", "image_size": 16, "task": "digit10"}]


def _release(c, parts, w, samples):
    return WeightRelease(c, 1, 0, None, parts, torch.tensor(w, dtype=torch.float32), samples)


def test_each_part_is_the_sample_weighted_mean_over_its_group():
    parts = (("backbone", 2), ("head", 1))
    rel = {"a": _release("a", parts, [1.0, 0.0, 5.0], 1),
           "b": _release("b", parts, [0.0, 4.0, 7.0], 3),
           "c": _release("c", parts, [2.0, 2.0, 1.0], 4)}
    spaces = {"a": "coarse", "b": "digit10", "c": "digit10"}
    out = {m.client: m for m in weight_averages(1, 0, None, ["a", "b", "c"], rel, spaces,
                                                device=torch.device("cpu"))}
    backbone = [(1 * 1 + 3 * 0 + 4 * 2) / 8, (1 * 0 + 3 * 4 + 4 * 2) / 8]  # over all three
    assert out["a"].w.tolist() == pytest.approx(backbone + [5.0])          # its task alone
    assert out["b"].w.tolist() == pytest.approx(backbone + [(3 * 7 + 4 * 1) / 7])
    assert out["c"].w.tolist() == out["b"].w.tolist()
    assert out["a"].peers == (("a", "b", "c"), ("a",))
    assert out["b"].peers == (("a", "b", "c"), ("b", "c"))


def test_a_part_of_another_size_is_refused_naming_the_odd_client():
    """The odd one out is blamed, wherever it stands in the order: one malicious client
    cannot get an honest one blamed by releasing first."""
    for odd in "abc":
        rel = {c: _release(c, (("backbone", 3 if c == odd else 2),), [1.0] * (3 if c == odd else 2), 1)
               for c in "abc"}
        with pytest.raises(ProtocolError, match=f"peer '{odd}'.*backbone has 3 weights where the "
                                                "group's others have 2"):
            weight_averages(1, 0, None, ["a", "b", "c"], rel, {c: "t" for c in "abc"},
                            device=torch.device("cpu"))


@pytest.mark.parametrize("parts, w, samples, message", [
    ((("backbone", 2),), [1.0, float("nan")], 1, "finite float32"),
    ((("backbone", 3),), [1.0, 2.0], 1, r"shape \(3,\)"),
    ((("encoder", 2),), [1.0, 2.0], 1, "distinct, known"),
    ((("backbone", 1), ("backbone", 1)), [1.0, 2.0], 1, "distinct, known"),
    ((("backbone", 2),), [1.0, 2.0], 0, "an integer in"),
    ((("backbone", 2),), [1.0, 2.0], True, "an integer in"),
    ((("backbone", 2),), [1.0, 2.0], 10 ** 400, "an integer in"),
])
def test_a_malformed_weight_release_is_refused(parts, w, samples, message):
    with pytest.raises(ProtocolError, match=message):
        check_weight_release(_release("a", parts, w, samples), "collecting")


def test_a_weight_release_for_another_exchange_is_refused():
    msg = WeightRelease("a", 1, 7, 3, (("backbone", 2),), torch.zeros(2), 1)
    with pytest.raises(ProtocolError, match="belongs to exchange \\(epoch 0, batch None\\)"):
        check_weight_release(msg, "collecting")


def _fed(method, **over):
    over = {"clients": [dict(c) for c in SAME], **over}
    cfg = tiny_config(muscle={"method": method, "num_selected": 2, "batch_size": 32, "dim": 16},
                      **over)
    return build_federation(cfg, make_split(cfg), method)


def _part(fed, name, part):
    phase = fed.clients[name].weights
    return torch.cat([p.detach().reshape(-1) for n, ps in phase.parts if n == part for p in ps])


def test_mfed_averages_the_encoder_over_all_and_the_head_within_each_task():
    fed = _fed("mfed")
    start = {c: fed.clients[c].weights.vector() for c in fed.clients}
    assert all(torch.equal(start["a"][:10], start[c][:10]) for c in "bc")  # a common start
    released = {}
    for c, client in fed.clients.items():  # what each client released, after LocalUpdate
        orig = client._release_weights

        def capture(r, c=c, orig=orig):
            msg = orig(r)
            released[c] = msg
            return msg
        client._release_weights = capture
    run_round(fed, 1)
    n = {c: released[c].samples for c in "abc"}
    b = {c: released[c].w[:released[c].parts[0][1]] for c in "abc"}
    expected = sum(n[c] * b[c].double() for c in "abc") / sum(n.values())
    for c in "abc":
        torch.testing.assert_close(_part(fed, c, "backbone"), expected.float(), atol=1e-6, rtol=0)
    hb, hc = _part(fed, "b", "head"), _part(fed, "c", "head")
    torch.testing.assert_close(hb, hc, atol=0, rtol=0)  # same task: one head
    heads = {c: released[c].w[released[c].parts[0][1]:] for c in "bc"}
    torch.testing.assert_close(hb, ((n["b"] * heads["b"].double() + n["c"] * heads["c"].double())
                                    / (n["b"] + n["c"])).float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(_part(fed, "a", "head"), released["a"].w[released["a"].parts[0][1]:])


def test_fedavg_with_scope_encoder_keeps_every_head_local():
    fed = _fed("fedavg")
    assert [n for n, _ in fed.clients["a"].weights.parts] == ["backbone"]
    run_round(fed, 1)
    assert torch.equal(_part(fed, "a", "backbone"), _part(fed, "b", "backbone"))
    assert not torch.equal(fed.clients["b"].model.head.weight, fed.clients["c"].model.head.weight)


def test_a_backbone_with_adapters_shares_only_its_adapters():
    from helpers.tiny import tiny_config as cfg_of

    clients = [dict(c, adapter={"rank": 2, "alpha": 4.0}) for c in SAME]
    cfg = cfg_of(clients=clients, muscle={"method": "fedavg", "num_selected": 2,
                                          "batch_size": 32, "dim": 16})
    fed = build_federation(cfg, make_split(cfg), "fedavg")
    model = fed.clients["a"].model
    shared = {id(p) for _, ps in shared_parts(model, "fedavg", "encoder") for p in ps}
    names = [n for n, p in model.backbone.named_parameters() if id(p) in shared]
    assert names and all(".lora_" in n for n in names)


@pytest.mark.parametrize("dp", [False, True])
def test_fedprox_pulls_the_local_update_towards_the_last_average(dp):
    """The proximal gradient is added before every step of the LocalUpdate (plain and DP-SGD
    training alike: under DP-SGD after the noise), so a larger mu keeps the LocalUpdate
    closer to where it started (Adam normalises step sizes, so the pull is partial)."""
    over = {"privacy": {"dp_sgd": {"enabled": True, "noise_multiplier": 0.5,
                                   "expected_batch_size": 8}}} if dp else {}
    drift = {}
    for mu in (0.0, 50.0):
        fed = _fed("fedprox", weight_sharing={"scope": "encoder", "mu": mu}, **over)
        client = fed.clients["b"]
        calls, add = [], client.weights.add_proximal_gradient

        def counted(add=add, calls=calls):
            calls.append(1)
            add()
        client.weights.add_proximal_gradient = counted
        if client.dpsgd is not None:
            client.dpsgd.after_noise = counted
        steps = []
        step = client.training.task_optimizer.step if client.dpsgd is None else None
        if step is not None:
            def counted_step(*a, step=step, steps=steps, **k):
                steps.append(1)
                return step(*a, **k)
            client.training.task_optimizer.step = counted_step
        start = client.weights.vector()
        client.training.run(1, 1)
        drift[mu] = float((client.weights.vector() - start).norm())
        expected = client.dpsgd.steps_per_epoch * 1 if client.dpsgd is not None else len(steps)
        assert len(calls) == expected > 0
    assert drift[50.0] < 0.8 * drift[0.0], drift


def _proximal_after_a_shift(phase: WeightPhase, shift: float) -> WeightPhase:
    """Start a LocalUpdate, move every shared weight by ``shift``, add the proximal gradient
    to cleared gradients."""
    phase.begin_local_update()
    with torch.no_grad():
        for p in phase.params:
            p.add_(shift)
    for p in phase.params:
        p.grad = None
    phase.add_proximal_gradient()
    return phase


def test_the_proximal_gradient_is_the_gradient_of_the_proximal_term():
    fed = _fed("fedprox", weight_sharing={"scope": "model", "mu": 0.3},
               clients=[dict(c, task="digit10") for c in SAME])
    phase = _proximal_after_a_shift(fed.clients["a"].weights, 0.01)
    got = [p.grad.clone() for p in phase.params]
    loss = 0.3 / 2 * sum(((p - a) ** 2).sum() for p, a in zip(phase.params, phase._anchor,
                                                             strict=True))
    expected = torch.autograd.grad(loss, phase.params)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("change, field, message", [
    ({"clients": [dict(SAME[0]), dict(SAME[1], model="resnet10t"), dict(SAME[2])]},
     "clients.1.model", "needs the same architecture"),
    ({"clients": [dict(SAME[0]), dict(SAME[1], image_size=32), dict(SAME[2])]},
     "clients.1.model", "or image_size"),
    ({"clients": [dict(SAME[0]), dict(SAME[1], pretrained_file="w.safetensors"), dict(SAME[2])]},
     "clients.1.pretrained_file", "would leave it in the first release"),
    ({"clients": [dict(SAME[0], pretrained=True), dict(SAME[1]), dict(SAME[2])]},
     "clients.1.pretrained", "set pretrained alike"),
    ({"weight_sharing": {"scope": "model"}}, "weight_sharing.scope", "same task"),
    ({"protection": "ckks", "muscle": {"method": "mocha", "batch_size": 32, "dim": 16}},
     "protection", "in the clear \\(plain\\); got 'ckks': its task relationship"),
    ({"privacy": {"representation_noise": {"enabled": True, "noise_multiplier": 0.1}}},
     "privacy.representation_noise.enabled", "releases weights"),
])
def test_weight_sharing_is_refused_where_its_assumptions_fail(change, field, message):
    over = {"clients": [dict(c) for c in SAME],
            "muscle": {"method": "fedavg", "num_selected": 2, "batch_size": 32, "dim": 16}}
    over.update(change)
    with pytest.raises(ConfigError, match=message) as err:
        tiny_config(**over)
    assert err.value.field == field


def test_the_deployment_refuses_weight_sharing():
    cfg = tiny_config(clients=[dict(c) for c in SAME],
                      muscle={"method": "mfed", "num_selected": 2, "batch_size": 32, "dim": 16})
    with pytest.raises(ConfigError, match="simulator only"):
        validate_deployable(cfg)


def test_a_reply_of_the_wrong_layout_is_refused():
    fed = _fed("fedavg")
    client = fed.clients["a"]
    for msg in fed.server.start_round(1):
        if msg.client == "a":
            client.handle(msg)
    bad = WeightAverage("a", 1, 0, None, (("a", "b", "c"),), torch.zeros(3))
    with pytest.raises(ProtocolError, match="WeightAverage for 'a' must be"):
        client.handle(bad)
    assert isinstance(client.weights, WeightPhase)


def test_mfed_pulls_only_the_task_head_towards_its_task_mean():
    fed = _fed("mfed", weight_sharing={"scope": "encoder", "mu": 0.5})
    phase = _proximal_after_a_shift(fed.clients["b"].weights, 0.01)
    head = {id(p) for p in fed.clients["b"].model.head.parameters()}
    for p in phase.params:
        if id(p) in head:
            torch.testing.assert_close(p.grad, torch.full_like(p, 0.5 * 0.01))
        else:
            assert p.grad is None


def test_feddea_keeps_the_strongest_dimensions_and_rescales_them():
    from fedmuscle_secure.client.weight_phase import decoupled_update

    delta = torch.tensor([0.5, -0.1, 0.05, -2.0, 0.3, 0.0, 0.0])
    out = decoupled_update(delta, keep=0.6)  # 3 of the 5 moving dimensions: |-2|, |0.5|, |0.3|
    mass, kept = 2.95, 2.8
    torch.testing.assert_close(out, torch.tensor([0.5, 0.0, 0.0, -2.0, 0.3, 0.0, 0.0])
                               * (mass / kept))
    assert float(out.abs().sum()) == pytest.approx(float(delta.abs().sum()))
    assert torch.equal(decoupled_update(delta, keep=1.0), delta)


def test_feddea_keep_is_a_share_of_the_dimensions_that_move():
    """A part where most coordinates never move (kernel taps no gradient reaches): keep 0.3
    keeps 30 % of the moving ones, so FedDEA is not FedAvg there."""
    from fedmuscle_secure.client.weight_phase import decoupled_update

    delta = torch.zeros(1000)
    delta[:200] = torch.linspace(0.01, 2.0, 200)  # 20 % of the coordinates move
    out = decoupled_update(delta, keep=0.3)
    assert int(torch.count_nonzero(out)) == 60
    assert torch.equal(out[:200] != 0, torch.arange(200) >= 140)  # the 60 largest
    assert float(out.abs().sum()) == pytest.approx(float(delta.abs().sum()))
    assert torch.equal(decoupled_update(torch.zeros(5), keep=0.3), torch.zeros(5))


def test_a_feddea_client_releases_its_start_plus_its_decoupled_update():
    from fedmuscle_secure.client.weight_phase import decoupled_update

    fed = _fed("feddea", weight_sharing={"scope": "encoder", "keep": 0.2})
    client = fed.clients["c"]
    start = client.weights.vector()
    client.training.run(1, 1)
    after = client.weights.vector()
    released = client.weights.release()
    torch.testing.assert_close(released, start + decoupled_update(after - start, 0.2))
    moved = (released != start).sum().item()
    assert 0 < moved <= round(0.2 * int(torch.count_nonzero(after - start)))
    run_round(fed, 1)  # the server averages the releases as for fedavg
    assert torch.equal(_part(fed, "a", "backbone"), _part(fed, "c", "backbone"))


def test_mira_similarity_weights():
    """cos(θ0, θ1) > 0 and the rest < 0: θ0 and θ1 lean only on each other; θ2, similar to
    nobody, leans on both others equally; the diagonal is zero, rows sum to 1."""
    from fedmuscle_secure.server.weights import similarity_matrix

    theta = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(similarity_matrix(theta), torch.tensor(
        [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], dtype=torch.float64))
    three = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    a = similarity_matrix(three)
    assert torch.all(a.diagonal() == 0) and torch.allclose(a.sum(1), torch.ones(3, dtype=a.dtype))
    assert a[0, 1] > a[0, 2]  # θ1 is closer in angle to θ0 than θ2 is


def test_mira_steps_each_clients_adapters_towards_its_similar_neighbours():
    from fedmuscle_secure.server.weights import similarity_matrix

    # a ViT: on a random ResNet the frozen zero-initialised block norms pass its adapters no
    # gradient (DESIGN §2.5)
    clients = [dict(c, model="test_vit", adapter={"rank": 2, "alpha": 4.0}) for c in SAME]
    fed = _fed("mira", clients=clients, weight_sharing={"scope": "encoder", "beta": 0.4})
    released = {}
    for c, client in fed.clients.items():
        orig = client._release_weights

        def capture(r, c=c, orig=orig):
            released[c] = orig(r)
            return released[c]
        client._release_weights = capture
    heads = {c: fed.clients[c].model.head.weight.detach().clone() for c in "abc"}
    run_round(fed, 1)
    theta = torch.stack([released[c].w for c in "abc"]).double()
    expected = 0.6 * theta + 0.4 * similarity_matrix(theta) @ theta
    for k, c in enumerate("abc"):
        assert [n for n, _ in released[c].parts] == ["backbone"]
        torch.testing.assert_close(fed.clients[c].weights.vector(), expected[k].float(),
                                   atol=1e-6, rtol=0)
        assert not torch.equal(fed.clients[c].model.head.weight, heads[c])  # its own, trained
    assert not torch.equal(fed.clients["a"].weights.vector(), fed.clients["b"].weights.vector())


def test_mira_needs_adapters():
    with pytest.raises(ConfigError, match="'mira' shares LoRA adapters") as err:
        tiny_config(clients=[dict(c) for c in SAME],
                    muscle={"method": "mira", "num_selected": 2, "batch_size": 32, "dim": 16})
    assert err.value.field == "clients.0.adapter"


@pytest.mark.parametrize("dp", [False, True])
def test_the_averaging_weight_is_the_shard_size_without_dp_and_one_with_it(dp):
    over = {"privacy": {"dp_sgd": {"enabled": True, "noise_multiplier": 1.0,
                                   "expected_batch_size": 8}}} if dp else {}
    fed = _fed("fedavg", **over)
    client = fed.clients["b"]
    for msg in fed.server.start_round(1):
        if msg.client == "b":
            (release,) = client.handle(msg)
    assert release.samples == (1 if dp else int(client.training.train.x.shape[0])) >= 1
