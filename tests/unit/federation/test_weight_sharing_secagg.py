"""Weight sharing under ``protection: secagg`` (DESIGN §2.7): the group means come from secure
sums of the clients' updates. The attacker's questions first: does the server learn only
each group's mean update (never one client's weights, nor its training-set size, which two
sums differing by one client would give), does a client refuse a secure sum that is not its
part's (another group, a lower threshold, another encoding) and a mean no honest sum gives,
is a member's forged input caught, are groups too small to hide a member refused; then the
accuracy claim: the weights each client ends the round with equal the plaintext means
(every client weighing 1) within the fixed-point bound, also when a member drops out."""

from __future__ import annotations

from collections import deque
from dataclasses import replace

import pytest
import torch

from fedmuscle_secure.crypto.secagg.messages import SecAggSetup, ShareInbox
from fedmuscle_secure.errors import ConfigError, ProtocolError
from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.messages import (
    ExchangeAborted,
    RoundReport,
    SecAggEnvelope,
    WeightAverage,
    WeightRelease,
)
from fedmuscle_secure.server.protection.secagg_weights import SecAggWeightProtection
from fedmuscle_secure.simulator import build_federation
from helpers.tiny import tiny_config
from helpers.weight_rounds import SIX, one_round


def _cfg(method="mfed", protection="secagg", clients=SIX, **over):
    return tiny_config(clients=[dict(c) for c in clients], protection=protection,
                       data={"public_size": 64, "test_size": 30, "shard_size": 16,
                             "val_fraction": 0.25},
                       muscle={"method": method, "num_selected": 2, "batch_size": 32, "dim": 16},
                       training={"rounds": 1, "local_epochs": 1, "local_batch_size": 16}, **over)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _weights(fed):
    return {c: cl.weights.vector() for c, cl in fed.clients.items()}


def _fixed_point_bound(fed, part, group_size, total):
    """The most a decoded mean may differ from the exact one: each member's encoded value
    is rounded to half a unit of its codec, the group sum by ``group_size`` halves, divided
    by the total FedAvg weight."""
    enc = fed.server.protection.encoding_for(part, group_size)
    return group_size * 0.5 * 2.0 ** -enc.z_codec.frac_bits / total


def _float32_bound(*tensors):
    """float32 rounding of the start + mean (a few ulps of the largest magnitude)."""
    return 8 * 2.0 ** -24 * max(float(t.abs().max()) for t in tensors)


def _expected(releases, members, part_slice):
    """The plain releases' mean over ``members``, every client weighing 1 (as under secagg),
    and the count it is divided by."""
    w = torch.stack([releases[m].w[part_slice].double() for m in members])
    return w.mean(0), float(len(members))


@pytest.mark.parametrize("drop", [None, "d"])
def test_secure_means_equal_the_plaintext_means_within_the_fixed_point_bound(drop):
    """M-Fed over two tasks of three: the backbone averaged over all six, each head over its
    task. Both runs train identically up to the exchange; the plain run's releases give the
    exact means (each client weighing 1, as under secagg). With ``drop``, d withholds its masked inputs (it stops after receiving its
    shares): the backbone sum recovers without it; its task's head sum, left with two
    members, does not run (a sum of two would show each the other's head), so b and f keep
    their own heads; d keeps its own weights for the round."""
    cfg_plain, cfg_secure = _cfg(protection="plain"), _cfg()
    split = make_split(cfg_plain)
    plain, secure = build_federation(cfg_plain, split, "mfed"), build_federation(cfg_secure, split, "mfed")
    _, releases = one_round(plain)
    hold = (lambda c, m: c == drop and isinstance(m, SecAggEnvelope) and isinstance(m.body, ShareInbox))
    received, _ = one_round(secure, hold)
    assert secure.server.round == 1
    layout = secure.clients["a"].weights.layout()
    nb = layout[0][1]
    backbone, head = slice(0, nb), slice(nb, nb + layout[1][1])
    everyone = [c for c in "abcdef" if c != drop]
    mean_b, total_b = _expected(releases, everyone, backbone)
    got = _weights(secure)
    bound_b = _fixed_point_bound(secure, nb, len(everyone), total_b)
    for task_members in ("ace", "bdf"):
        members = [c for c in task_members if c != drop]
        mean_h, total_h = _expected(releases, members, head)
        bound_h = _fixed_point_bound(secure, layout[1][1], len(members), total_h)
        for c in members:
            assert (got[c][backbone].double() - mean_b).abs().max() <= bound_b + _float32_bound(mean_b)
            sums = [(m.batch, m.peers) for m in received[c] if isinstance(m, WeightAverage)]
            if len(members) >= 3:
                assert (got[c][head].double() - mean_h).abs().max() <= bound_h + _float32_bound(mean_h)
                assert sums == [(0, (tuple(everyone),)), (1, (tuple(members),))]
            else:  # too few left for a secure sum: told so, its own head kept
                assert torch.equal(got[c][head], releases[c].w[head])
                assert sums == [(0, (tuple(everyone),))]
                assert [m.batch for m in received[c] if isinstance(m, ExchangeAborted)] == [1]
    if drop is not None:  # it sat the round out with its own weights, and said so
        assert torch.equal(got[drop], releases[drop].w)
        assert [m.batch for m in received[drop] if isinstance(m, ExchangeAborted)] == [0, 1]
        assert [(e["event"], e["batch"]) for e in secure.server.protection.events] == [
            ("secagg_dropouts", 0), ("secagg_aborted", 1)]
    plain.close(), secure.close()


def test_the_server_sees_masked_inputs_only_and_the_ledger_says_what_left(tmp_path):
    """The curious server's view: every message a client sends during the exchange is a
    stage of a secure sum, none carries its weights or its training-set size in the clear;
    the client's ledger records each part's masked input as a secagg egress."""
    cfg = _cfg(method="fedavg", clients=SIX[:3] + SIX[4:5])
    split = make_split(cfg)
    fed = build_federation(cfg, split, "fedavg", record_dir=tmp_path)
    sent = []
    queue = deque(fed.server.start_round(1))
    while queue:
        msg = queue.popleft()
        for rep in fed.clients[msg.client].handle(msg):
            sent.append(rep)
            queue.extend(fed.server.handle(rep))
    assert {type(m) for m in sent} == {SecAggEnvelope, RoundReport}
    assert not any(isinstance(m, WeightRelease) for m in sent)
    egress = [e["body"] for e in fed.clients["a"].privacy.ledger.entries if e["kind"] == "egress"]
    assert [(e["exchange"], e["protection"], e["content"], e["part"]) for e in egress] == [
        ([0, 0], "secagg", "weights", "backbone")]
    assert egress[0]["server_learns"] == "sum over >= 3 of 4 clients"
    fed.close()


@pytest.mark.parametrize("forge, message", [
    ("participants", "outside the part's group"),
    ("threshold", "threshold 2 for part 'head' differ"),
    ("encoding", "encoding .* for part 'head' differ"),
])
def test_a_client_refuses_a_secure_sum_that_is_not_its_parts(forge, message):
    """An active server opens a head sum over members of another task (to average across
    tasks, or to build a small group it can difference), with a threshold below the
    federation's (t = 4 of six: a task of three needs all three, so fewer colluders cannot
    rebuild a member's masks nor an equivocating server split its survivors' views), or with
    an encoding of another length: the client refuses before anything of its own is
    encoded."""
    cfg = _cfg()
    fed = build_federation(cfg, make_split(cfg), "mfed")
    client = fed.clients["a"]
    to_a = [m for m in fed.server.start_round(1) if m.client == "a"]
    assert client.handle(to_a[0]) == []  # the plan: LocalUpdate, then wait for the setups
    body: SecAggSetup = next(m for m in to_a if isinstance(m, SecAggEnvelope)).body  # to forge from
    enc = fed.server.protection.encoding_for(client.weights.layout()[1][1], 3)
    body = replace(body, participants=("a", "c", "e"), threshold=3, vector_length=enc.vector_length)
    if forge == "participants":
        body = replace(body, participants=("a", "b", "c"))
    elif forge == "threshold":
        body = replace(body, threshold=2)
    else:
        enc = replace(enc, dim=enc.dim + 1)
    # the backbone sum happened (or not): the client now waits for its head's
    client._exchange, client._part_means = (0, 1), [None]
    forged = SecAggEnvelope("a", 1, 0, 1, body, enc)
    with pytest.raises(ProtocolError, match=message):
        client.handle(forged)
    assert client.protection.instance is None
    fed.close()


def test_groups_too_small_to_hide_a_member_are_refused():
    """Under secagg each averaged head needs three clients of its task: with two, each
    learns the other's head from the sum; with one, the server does."""
    two = [dict(c, task="digit10" if c["name"] in "ab" else "coarse") for c in SIX[:5]]
    with pytest.raises(ConfigError, match="task 'digit10' has \\['a', 'b'\\]"):
        _cfg(clients=two)
    _cfg(clients=two, method="fedavg")  # the encoder alone: one group of five
    with pytest.raises(ConfigError, match="'mira' aggregates weights in the clear \\(plain\\); "
                                          "got 'secagg': its step needs every client's adapters"):
        _cfg(method="mira", clients=[dict(c, adapter={"kind": "lora", "rank": 2}) for c in SIX])


def test_the_sums_carry_no_training_set_size(monkeypatch):
    """Clients with different training-set sizes: every sum's count is the number of its
    members, so two sums whose groups differ by one client (a head sum after a dropout, a
    later round) tell the server nothing but that the client was there."""
    cfg = _cfg(method="fedavg", clients=SIX[:4])
    split = make_split(cfg)
    fed = build_federation(cfg, split, "fedavg")
    for k, c in enumerate("abcd"):  # 12, 10, 8, 6 training records
        tr = fed.clients[c].training.train
        fed.clients[c].training.train = type(tr)(tr.x[:12 - 2 * k], tr.targets[:12 - 2 * k])
    counts = []
    original = SecAggWeightProtection._results

    def spy(self, inst, enc, epoch, batch, to):
        counts.append((float(enc.decode(inst.result)[1].reshape(-1)[0]), len(inst.survivors)))
        return original(self, inst, enc, epoch, batch, to)

    monkeypatch.setattr(SecAggWeightProtection, "_results", spy)
    one_round(fed)
    assert counts == [(4.0, 4)]
    fed.close()


@pytest.mark.parametrize("slots", ["values", "count"])
def test_a_members_forged_input_is_caught_and_nobody_applies_it(slots):
    """A member replaces its encoded input with huge values (or a count that is not 1): the
    mean would move every model arbitrarily far. The decoded sum is not one of clipped
    updates, so the server drops it (``secagg_invalid_sum``) and every member keeps its own
    weights."""
    cfg = _cfg(method="fedavg", clients=SIX[:4])
    fed = build_federation(cfg, make_split(cfg), "fedavg")
    evil = fed.clients["d"].protection
    begin = evil.begin_weights

    def forged(env, part, update):
        advert = begin(env, part, update)
        v = evil.instance._vector.clone()  # changed after the client's own checks
        if slots == "values":
            v[:-1] += 2 ** 58  # about 2 per coordinate, far beyond a clipped update
        else:
            v[-1] += v[-1]  # a count of 2: it would weigh twice
        evil.instance._vector = v
        return advert

    evil.begin_weights = forged
    before = _weights(fed)
    received, _ = one_round(fed)
    assert [e["event"] for e in fed.server.protection.events] == ["secagg_invalid_sum"]
    for c in "abc":
        assert not any(isinstance(m, WeightAverage) for m in received[c])
        assert [m.batch for m in received[c] if isinstance(m, ExchangeAborted)] == [0]
        assert not torch.equal(_weights(fed)[c], before[c])  # its own LocalUpdate, kept
    fed.close()


def test_a_client_refuses_a_mean_update_beyond_the_clip_and_a_diverged_update():
    """An active server replaces the mean of a real secure sum with weights of its choosing:
    no mean of updates clipped to C has a norm above C, so the client refuses it. A client
    whose own training diverged releases nothing and says why."""
    cfg = _cfg(method="fedavg", clients=SIX[:4], weight_sharing={"update_clip": 0.5})
    fed = build_federation(cfg, make_split(cfg), "fedavg")
    a = fed.clients["a"]
    n = a.weights.layout()[0][1]
    queue = deque(fed.server.start_round(1))
    with pytest.raises(ProtocolError, match=r"norm 1, above 0\.500005 \(weight_sharing.update_clip = 0.5"):
        while queue:
            msg = queue.popleft()
            if isinstance(msg, WeightAverage) and msg.client == "a":
                msg = replace(msg, w=torch.full((n,), 1.0 / n ** 0.5))  # norm 1 > 0.5
            for rep in fed.clients[msg.client].handle(msg):
                queue.extend(fed.server.handle(rep))
    fed.close()
    fed = build_federation(cfg, make_split(cfg), "fedavg")
    a = fed.clients["a"]
    to_a = [m for m in fed.server.start_round(1) if m.client == "a"]
    a.handle(to_a[0])
    setup = next(m for m in to_a if isinstance(m, SecAggEnvelope))
    with pytest.raises(ProtocolError, match="peer 'a'.*update of part 'backbone' is not finite"):
        a.protection.begin_weights(setup, "backbone", torch.full((n,), float("nan")))
    assert a.protection.instance is None
    fed.close()


@pytest.mark.parametrize("peers, setup_first", [
    (("a", "b", "c", "d"), False),   # no secure sum behind it: nothing was sent
    (("a", "b"), True),              # a "sum" of two
    (("a", "b", "c", "x"), True),    # a member from outside the sum
])
def test_a_mean_update_with_no_sum_of_this_clients_behind_it_is_refused(peers, setup_first):
    """An active server pushes a vector below the clip as a "mean update": with no setup,
    before the client's masked input left, or naming a group no sum of it had."""
    cfg = _cfg(method="fedavg", clients=SIX[:4])
    fed = build_federation(cfg, make_split(cfg), "fedavg")
    a = fed.clients["a"]
    to_a = [m for m in fed.server.start_round(1) if m.client == "a"]
    a.handle(to_a[0])
    if setup_first:
        a.handle(next(m for m in to_a if isinstance(m, SecAggEnvelope)))
    n = a.weights.layout()[0][1]
    push = WeightAverage("a", 1, 0, 0, (peers,), torch.full((n,), 1e-4))
    with pytest.raises(ProtocolError, match="no secure sum of this client's gave"):
        a.handle(push)
    fed.close()


def test_an_encoding_that_cannot_hold_the_weight_sums_is_refused_when_the_federation_is_built():
    cfg = _cfg(method="fedavg", clients=SIX, secagg={"frac_bits": 58})
    with pytest.raises(ConfigError, match="secagg: no safe fixed-point encoding"):
        build_federation(cfg, make_split(cfg), "fedavg")
