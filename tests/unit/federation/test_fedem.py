"""FedEM in the harness (DESIGN §2.7): its defining steps against hand computations. The
E-step's responsibilities are π_k exp(−ℓ_k) normalised over k; π's M-step is their mean; a
component's gradient is the responsibility-weighted gradient of its loss; the server's step
is each component's sample-weighted mean over the clients; the client predicts with the
π-weighted mixture of the components' probabilities (not of their logits); a run goes end
to end, resumes from its checkpoint as if never stopped, and keeps its mixture; under
secagg each component is the plaintext mean within the fixed-point bound; where its
assumptions fail it is refused."""

from __future__ import annotations

import io
import math
from collections import deque

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedmuscle_secure.client.fedem import expectation_step, responsibilities, weighted_nll
from fedmuscle_secure.client.weight_phase import WeightPhase
from fedmuscle_secure.crypto.ckks import fresh_error_bound
from fedmuscle_secure.data.tasks import get_task
from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.federation.clients import final_model_spec
from fedmuscle_secure.federation.setup import federation_setup
from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.messages import WeightRelease
from fedmuscle_secure.models import ClientModel, load_final, save_final
from fedmuscle_secure.models.mixture import MixtureModel, mixture_logits
from fedmuscle_secure.server.weights import weight_averages
from fedmuscle_secure.simulator import build_federation, run_round
from helpers.tiny import tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SAME_TASK = [{"name": n, "model": "test_resnet", "image_size": 8, "task": "digit10"}
             for n in ("a", "b", "c")]


def _toy(k=2, outputs=3, multilabel=False, seed=0):
    """A mixture of ``k`` tiny models on 1 x 2 x 2 inputs: a linear backbone of width 4 and
    a linear head, each component with its own random weights."""
    torch.manual_seed(seed)
    comps = [ClientModel(nn.Sequential(nn.Flatten(), nn.Linear(4, 4)), width=4, image_size=2,
                         dim=2, num_outputs=outputs) for _ in range(k)]
    return MixtureModel(comps, multilabel=multilabel)


def _inputs(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 2, 2, generator=g)


def test_responsibilities_sum_to_one_and_equal_the_closed_form():
    pi = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    losses = torch.tensor([[0.1, 2.0, 0.7], [3.0, 0.2, 0.2], [1.0, 1.0, 1.0]], dtype=torch.float64)
    q = responsibilities(pi.log(), losses)
    for i in range(3):
        weights = [pi[k].item() * math.exp(-losses[i, k].item()) for k in range(3)]
        assert q[i].tolist() == pytest.approx([w / sum(weights) for w in weights], rel=1e-12)
    assert q[2].tolist() == pytest.approx(pi.tolist())  # equal losses: q is the prior
    # in log space: losses whose exp(−ℓ) underflows still give a distribution
    far = responsibilities(pi.log(), torch.tensor([[1000.0, 1001.0, 1100.0]], dtype=torch.float64))
    assert float(far.sum()) == pytest.approx(1.0)
    assert far[0].tolist() == pytest.approx([0.5 / (0.5 + 0.3 / math.e), 0.3 / math.e / (0.5 + 0.3 / math.e), 0.0])


@pytest.mark.parametrize("multilabel", [False, True])
def test_the_e_step_sets_pi_to_the_mean_responsibility(multilabel):
    model = _toy(k=3, outputs=4 if multilabel else 3, multilabel=multilabel)
    task = get_task("attributes" if multilabel else "coarse")
    x = _inputs()
    targets = task.targets(torch.tensor([0, 1, 2, 5, 7, 9]))
    with torch.no_grad():
        model.pi.copy_(torch.tensor([0.6, 0.3, 0.1]))
        logits = torch.stack([m.eval()(x) for m in model.components])  # (K, N, C)
    if multilabel:  # −log p(y|x), independent outputs: Σ_j −[y log σ(l) + (1−y) log σ(−l)]
        nll = -(targets * torch.sigmoid(logits).log() + (1 - targets) * torch.sigmoid(-logits).log()).sum(-1)
    else:  # −log softmax(l)[y]
        nll = torch.logsumexp(logits, -1) - logits.gather(-1, targets.expand(3, -1)[..., None])[..., 0]
    unnorm = torch.tensor([0.6, 0.3, 0.1])[:, None] * torch.exp(-nll)  # (K, N)
    expected = (unnorm / unnorm.sum(0)).T
    q = expectation_step(model, task, x, targets)
    torch.testing.assert_close(q, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(q.sum(1), torch.ones(6))
    torch.testing.assert_close(model.pi, expected.mean(0), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("multilabel", [False, True])
def test_a_components_gradient_is_the_responsibility_weighted_gradient(multilabel):
    """For a linear head on features h, ∂ℓ/∂l = softmax(l) − e_y (multiclass) or σ(l) − y
    summed over outputs (multilabel), so ∇W_k = Σ_i q_ik (∂ℓ/∂l_ik) h_iᵀ / B."""
    model = _toy(k=2, outputs=4 if multilabel else 3, multilabel=multilabel)
    task = get_task("attributes" if multilabel else "coarse")
    x = _inputs(5)
    targets = task.targets(torch.tensor([0, 3, 2, 8, 4]))
    q = torch.softmax(torch.randn(5, 2, generator=torch.Generator().manual_seed(3)), dim=1)
    weighted_nll(model, task, x, targets, q).backward()
    for k, comp in enumerate(model.components):
        with torch.no_grad():
            h = comp.features(x)
            logits = comp.head(h)
            dl = (torch.sigmoid(logits) - targets) if multilabel \
                else torch.softmax(logits, -1) - F.one_hot(targets, 3).float()
            grad_w = (q[:, k, None] * dl).T @ h / 5
            grad_b = (q[:, k, None] * dl).sum(0) / 5
        torch.testing.assert_close(comp.head.weight.grad, grad_w, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(comp.head.bias.grad, grad_b, atol=1e-6, rtol=1e-5)


def test_the_server_averages_each_component_over_the_clients():
    """Three clients' mixtures released through their WeightPhase and averaged by the
    server: after loading, each client's component k holds Σ_c n_c θ_k,c / Σ_c n_c, read
    from the clients' own components; π and the projection heads are not shared."""
    models = {c: _toy(k=3, seed=s) for s, c in enumerate("abc")}
    for c, m in models.items():
        with torch.no_grad():
            m.pi.copy_(torch.tensor([0.2, 0.3, 0.5]) if c == "a" else torch.full((3,), 1 / 3))
    phases = {c: WeightPhase(m, "fedem", "encoder", 0.0) for c, m in models.items()}
    per_component = 4 * 4 + 4 + 3 * 4 + 3  # backbone linear, head linear
    assert sum(n for _, n in phases["a"].layout()) == 3 * per_component
    samples = {"a": 1, "b": 2, "c": 5}
    before = {c: {k: v.clone() for k, v in m.state_dict().items()} for c, m in models.items()}
    releases = {c: WeightRelease(c, 1, 0, None, phases[c].layout(), phases[c].release(), samples[c])
                for c in "abc"}
    out = weight_averages(1, 0, None, ["a", "b", "c"], releases, {c: "digit10" for c in "abc"},
                          device=torch.device("cpu"))
    for msg in out:
        phases[msg.client].load(msg.w)
    for name in before["a"]:
        mean = sum(samples[c] * before[c][name] for c in "abc") / sum(samples.values())
        for c in "abc":
            got = models[c].state_dict()[name]
            if name.startswith("components.") and (".backbone." in name or ".head." in name):
                torch.testing.assert_close(got, mean.float(), atol=1e-6, rtol=1e-6)
            else:  # π and the projection heads stay each client's own
                assert torch.equal(got, before[c][name]), name


def test_the_mixture_prediction_mixes_probabilities_not_logits():
    logits = torch.tensor([[[0.0, 1.0, -100.0]], [[0.0, -100.0, 1.01]]])  # (K=2, N=1, C=3)
    pi = torch.tensor([0.5, 0.5])
    mixed = mixture_logits(logits, pi.log(), multilabel=False)
    expected = 0.5 * torch.softmax(logits[0], -1) + 0.5 * torch.softmax(logits[1], -1)
    torch.testing.assert_close(torch.softmax(mixed, -1), expected)
    assert int(mixed.argmax()) == 2 and int((0.5 * logits[0] + 0.5 * logits[1]).argmax()) == 0
    g = torch.Generator().manual_seed(4)
    many = torch.randn(3, 5, 4, generator=g) * 3
    pi3 = torch.tensor([0.1, 0.6, 0.3])
    torch.testing.assert_close(torch.softmax(mixture_logits(many, pi3.log(), multilabel=False), -1),
                               (pi3[:, None, None] * torch.softmax(many, -1)).sum(0))
    torch.testing.assert_close(torch.sigmoid(mixture_logits(many, pi3.log(), multilabel=True)),
                               (pi3[:, None, None] * torch.sigmoid(many)).sum(0))
    model = _toy(k=3, outputs=4)
    with torch.no_grad():
        model.pi.copy_(pi3)
        x = _inputs()
        by_hand = sum(pi3[k] * torch.softmax(m.eval()(x), -1) for k, m in enumerate(model.components))
        torch.testing.assert_close(torch.softmax(model.eval()(x), -1), by_hand)


def _cfg(clients=SAME_TASK, **over):
    over["weight_sharing"] = {"components": 2, **over.get("weight_sharing", {})}
    return tiny_config(clients=[dict(c) for c in clients],
                       data={"public_size": 64, "test_size": 30, "shard_size": 16, "val_fraction": 0.25},
                       muscle={"method": "fedem", "num_selected": 2, "batch_size": 32, "dim": 16},
                       training={"rounds": 2, "local_epochs": 1, "local_batch_size": 16},
                       **over)


def _fed(**over):
    cfg = _cfg(**over)
    return build_federation(cfg, make_split(cfg), "fedem")


def _checkpointed(state):
    """``state`` through a checkpoint file's bytes, read back as ``run --resume`` reads it."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, map_location="cpu", weights_only=True)


def test_two_rounds_run_and_a_resumed_run_continues_as_if_never_stopped():
    fed = _fed()
    run_round(fed, 1)
    vectors = [fed.clients[c].weights.vector() for c in "abc"]
    assert all(torch.equal(vectors[0], v) for v in vectors[1:])  # the components' means, loaded
    a = fed.clients["a"]
    assert a.model.pi.shape == (2,) and float(a.model.pi.sum()) == pytest.approx(1.0)
    assert not torch.equal(a.model.pi, torch.full((2,), 0.5))  # π moved with the E-step
    assert not torch.equal(a.model.pi, fed.clients["b"].model.pi)  # and is each client's own
    with torch.no_grad():  # the metric is the mixture's, Σ π_k softmax(l_k), per client
        x, y = a.training.test.x, a.training.test.targets
        probs = sum(a.model.pi[k] * torch.softmax(m.eval()(x), -1)
                    for k, m in enumerate(a.model.components))
    assert a.evaluate()["test_metric"] == pytest.approx(float((probs.argmax(-1) == y).float().mean()))
    states = {c: _checkpointed(cl.state_dict()) for c, cl in fed.clients.items()}
    server = _checkpointed(fed.server.state_dict())
    resumed = _fed()
    for c, cl in resumed.clients.items():
        cl.load_state_dict(states[c])
    resumed.server.load_state_dict(server)
    first, second = run_round(fed, 2), run_round(resumed, 2)
    for c in "abc":
        assert first[c]["test_metric"] == second[c]["test_metric"]
        want, got = fed.clients[c].model.state_dict(), resumed.clients[c].model.state_dict()
        assert want.keys() == got.keys() and "pi" in want
        assert all(torch.equal(want[k], got[k]) for k in want), c
    fed.close(), resumed.close()


def test_the_model_an_organisation_keeps_is_its_mixture(tmp_path):
    cfg = _cfg()
    split = make_split(cfg)
    setup = federation_setup(cfg, split, "fedem")
    fed = build_federation(cfg, split, "fedem")
    run_round(fed, 1)
    client = fed.clients["b"]
    save_final(client.model, final_model_spec(cfg, "b", setup, client), tmp_path)
    kept = load_final(tmp_path)
    assert kept.spec["mixture"] == {"components": 2, "multilabel": False}
    assert torch.equal(kept.model.pi, client.model.pi)
    x = client.training.test.x[:8]
    with torch.no_grad():
        assert torch.equal(kept.model(x), client.model.eval()(x))
    fed.close()


@pytest.mark.parametrize(("over", "field", "message"), [
    ({"clients": [dict(SAME_TASK[0]), dict(SAME_TASK[1], task="coarse"), dict(SAME_TASK[2])]},
     "clients.1.task", "every client needs the same task"),
    ({"privacy": {"representation_noise": {"enabled": True, "noise_multiplier": 1.0}}},
     "privacy.representation_noise.enabled", "releases weights"),
    ({"privacy": {"dp_sgd": {"enabled": True, "noise_multiplier": 1.0}}},
     "privacy.dp_sgd.enabled", "outside DP-SGD's steps"),
    ({"weight_sharing": {"components": 1}}, "weight_sharing.components", "2"),
    ({"weight_sharing": {"components": 17}}, "weight_sharing.components", "16"),
])
def test_fedem_is_refused_where_its_assumptions_fail(over, field, message):
    with pytest.raises(ConfigError, match=message) as err:
        _cfg(**over)
    assert err.value.field == field


@pytest.mark.parametrize("protection", ["secagg", "ckks"])
def test_under_protection_each_component_is_the_plaintext_mean_within_the_encoding_bound(
        protection):
    """The same round plain and through secure or encrypted sums (DESIGN §2.7): both train
    identically up to the exchange; every client ends the round with each component the
    mean of the plain releases (every client weighing 1, as in every sum) to within the
    encoding's bound (fixed point, or CKKS's derived error), and its π its own."""
    cfg_plain, cfg_secure = _cfg(), _cfg(protection=protection)
    split = make_split(cfg_plain)
    plain, secure = build_federation(cfg_plain, split, "fedem"), build_federation(cfg_secure, split, "fedem")
    releases = {}
    queue = deque(plain.server.start_round(1))
    while queue:
        msg = queue.popleft()
        for rep in plain.clients[msg.client].handle(msg):
            if isinstance(rep, WeightRelease):
                releases[rep.client] = rep
            queue.extend(plain.server.handle(rep))
    run_round(secure, 1)
    assert secure.server.protection.events == []  # no dropout, no forged sum
    layout = secure.clients["a"].weights.layout()
    offset = 0
    for part, n in layout:
        exact = torch.stack([releases[c].w[offset:offset + n].double() for c in "abc"]).mean(0)
        if protection == "secagg":
            enc = secure.server.protection.encoding_for(n, 3)
            coding = 3 * 0.5 * 2.0 ** -enc.z_codec.frac_bits / 3
        else:  # a sum of 3 fresh encryptions over a count of 3: the fresh bound per slot
            coding = fresh_error_bound(secure.clients["a"].protection.context.params,
                                       magnitude=secure.clients["a"].protection.update_clip)
        bound = coding + 8 * 2.0 ** -24 * float(exact.abs().max())
        for c in "abc":
            got = secure.clients[c].weights.vector()[offset:offset + n].double()
            assert float((got - exact).abs().max()) <= bound, (part, c)
        offset += n
    for c in "abc":
        torch.testing.assert_close(secure.clients[c].model.pi, plain.clients[c].model.pi)
    plain.close(), secure.close()
