"""Weight sharing under ``protection: ckks`` (DESIGN §2.7, §4.3): the group means come from
encrypted sums of the clients' updates. The attacker's questions first: does the server
hold no secret key and see ciphertexts only, does a client refuse what no honest sum over
its group gives (one member's ciphertext passed off as a sum, a "sum" of two, members from
outside its group, a mean beyond the clip), is a malformed release refused naming its
sender, are groups too small to hide a member refused; then the accuracy claim: the weights
each client ends the round with equal the plaintext means (every client weighing 1) within
the error bound of CKKS, also when a member drops out."""

from __future__ import annotations

from collections import deque
from dataclasses import replace

import pytest
import torch

from fedmuscle_secure.crypto.ckks import (
    EncryptedMatrix,
    PublicContext,
    add,
    decrypt_vector,
    encrypt_vector,
    fresh_error_bound,
)
from fedmuscle_secure.errors import ConfigError, ProtocolError
from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.messages import (
    EncryptedWeightSum,
    EncryptedWeightUpdate,
    ExchangeAborted,
    RoundReport,
    WeightRelease,
)
from fedmuscle_secure.records.ledger import payload_digest
from fedmuscle_secure.simulator import build_federation
from helpers.tiny import tiny_config

SIX = [{"name": n, "model": "test_resnet", "image_size": 8, "task": t}
       for n, t in (("a", "digit10"), ("b", "coarse"), ("c", "digit10"), ("d", "coarse"),
                    ("e", "digit10"), ("f", "coarse"))]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(method="mfed", protection="ckks", clients=SIX, **over):
    return tiny_config(clients=[dict(c) for c in clients], protection=protection,
                       data={"public_size": 64, "test_size": 30, "shard_size": 16,
                             "val_fraction": 0.25},
                       muscle={"method": method, "num_selected": 2, "batch_size": 32, "dim": 16},
                       training={"rounds": 1, "local_epochs": 1, "local_batch_size": 16}, **over)


def _round(fed, hold=lambda sender, msg: False, edit=lambda msg: msg):
    """One round, as the simulator drives it. ``hold(sender, msg)`` drops a message a client
    sends; ``edit`` replaces a message the server sends (an active server); whenever nothing
    moves, the server's stage deadline passes. Returns every message each client received
    and every release each client sent (by (client, exchange batch))."""
    received = {c: [] for c in fed.clients}
    sent = {}
    queue = deque(fed.server.start_round(1))
    while True:
        while queue:
            msg = edit(queue.popleft())
            received[msg.client].append(msg)
            for rep in fed.clients[msg.client].handle(msg):
                if isinstance(rep, (WeightRelease, EncryptedWeightUpdate)):
                    sent[(rep.client, rep.batch)] = rep
                if not hold(rep.client, rep):
                    queue.extend(fed.server.handle(rep))
        if fed.server.round_complete:
            return received, sent
        out = fed.server.close_stage("test deadline")
        assert out, "the round is stuck"
        queue.extend(out)


def _weights(fed):
    return {c: cl.weights.vector() for c, cl in fed.clients.items()}


def _ckks_bound(fed):
    """The most one coordinate of a decrypted mean update may differ from the exact mean: a
    sum of k fresh encryptions errs by at most k times the fresh bound per slot (values at
    most the clip), divided by the count k."""
    clip = fed.clients["a"].protection.update_clip
    return fresh_error_bound(fed.clients["a"].protection.context.params, magnitude=clip)


def _float32_bound(*tensors):
    """float32 rounding of the update, the mean and start + mean (a few ulps of the largest
    magnitude)."""
    return 8 * 2.0 ** -24 * max(float(t.abs().max()) for t in tensors)


@pytest.mark.parametrize("drop", [None, "d"])
def test_ckks_means_equal_the_plaintext_means_within_the_ckks_bound(drop):
    """M-Fed over two tasks of three: the backbone averaged over all six, each head over its
    task. Both runs train identically up to the exchange; the plain run's releases give the
    exact means (each client weighing 1, as under ckks). With ``drop``, d's release never
    reaches the server: at the deadline the server drops d; the backbone is summed over the
    other five, d's task is left with two, so its head is not summed (a sum of two would show
    each the other's head) and b and f keep their own."""
    cfg_plain, cfg_ckks = _cfg(protection="plain"), _cfg()
    split = make_split(cfg_plain)
    plain, fed = build_federation(cfg_plain, split, "mfed"), build_federation(cfg_ckks, split, "mfed")
    _, releases = _round(plain)
    received, _ = _round(fed, hold=lambda c, m: c == drop and isinstance(m, EncryptedWeightUpdate))
    assert fed.server.round == 1
    layout = fed.clients["a"].weights.layout()
    nb, nh = layout[0][1], layout[1][1]
    backbone, head = slice(0, nb), slice(nb, nb + nh)
    everyone = [c for c in "abcdef" if c != drop]
    got = _weights(fed)
    mean_b = torch.stack([releases[(m, None)].w[backbone].double() for m in everyone]).mean(0)
    for task_members in ("ace", "bdf"):
        members = [c for c in task_members if c != drop]
        mean_h = torch.stack([releases[(m, None)].w[head].double() for m in members]).mean(0)
        for c in members:
            err_b = (got[c][backbone].double() - mean_b).abs().max()
            assert err_b <= _ckks_bound(fed) + _float32_bound(mean_b)
            sums = [(m.batch, m.peers) for m in received[c] if isinstance(m, EncryptedWeightSum)]
            if len(members) >= 3:
                err_h = (got[c][head].double() - mean_h).abs().max()
                assert err_h <= _ckks_bound(fed) + _float32_bound(mean_h)
                assert sums == [(0, (tuple(everyone),)), (1, (tuple(members),))]
            else:  # too few left for an encrypted sum: told so, its own head kept
                assert torch.equal(got[c][head], releases[(c, None)].w[head])
                assert sums == [(0, (tuple(everyone),))]
                assert [m.batch for m in received[c] if isinstance(m, ExchangeAborted)] == [1]
    if drop is not None:
        assert [d["client"] for d in fed.server.departures] == [drop]
        assert [(e["event"], e["batch"], e["members"]) for e in fed.server.protection.events] == [
            ("ckks_sum_skipped", 1, ["b", "f"])]
    plain.close(), fed.close()


def test_the_server_holds_no_secret_key_and_sees_ciphertexts_only(tmp_path):
    """The curious server's view: its context has no secret key and cannot decrypt what
    it received; every message a client sends is an encrypted update or its report, none
    carries weights or a training-set size in the clear; the ledger records each part's
    ciphertexts as a ckks egress naming the part, with the digest of what the server got."""
    cfg = _cfg(method="fedavg", clients=SIX[:4])
    fed = build_federation(cfg, make_split(cfg), "fedavg", record_dir=tmp_path)
    server_ctx = fed.server.protection.context
    assert isinstance(server_ctx, PublicContext) and not server_ctx._ts.has_secret_key()
    sent = []
    queue = deque(fed.server.start_round(1))
    while queue:
        msg = queue.popleft()
        for rep in fed.clients[msg.client].handle(msg):
            sent.append(rep)
            queue.extend(fed.server.handle(rep))
    assert fed.server.round == 1
    assert {type(m) for m in sent} == {EncryptedWeightUpdate, RoundReport}
    release = next(m for m in sent if isinstance(m, EncryptedWeightUpdate) and m.client == "a")
    with pytest.raises(ConfigError, match="PublicContext has no secret key"):
        decrypt_vector(server_ctx, release.update, release.length + 1)
    egress = [e["body"] for e in fed.clients["a"].privacy.ledger.entries if e["kind"] == "egress"]
    assert [(e["exchange"], e["protection"], e["content"], e["part"], e["samples"])
            for e in egress] == [([0, 0], "ckks", "weights", "backbone", 1)]
    assert (egress[0]["sha256"], egress[0]["bytes"]) == payload_digest(*release.payload_parts())
    fed.close()


def _intercept(fed, client, edit):
    """Run a round in which the server's encrypted sum to ``client`` is replaced by
    ``edit(sum, releases so far)``; returns the error the client raises."""
    releases = {}

    def server_side(msg):
        if isinstance(msg, EncryptedWeightSum) and msg.client == client:
            return edit(msg, releases)
        return msg

    def record(sender, msg):
        if isinstance(msg, EncryptedWeightUpdate):
            releases[sender] = msg
        return False

    with pytest.raises(ProtocolError) as err:
        _round(fed, hold=record, edit=server_side)
    return err.value


def test_one_members_ciphertext_passed_off_as_the_sum_is_refused_by_its_count():
    """A curious server (or one colluding with a) sends a, in place of the sum over
    (a, b, c, d), b's own ciphertext: a would decrypt b's update. Its count slot says 1
    update, not the 4 members named: a refuses it before using anything."""
    cfg = _cfg(method="fedavg", clients=SIX[:4])
    fed = build_federation(cfg, make_split(cfg), "fedavg")
    err = _intercept(fed, "a", lambda s, rel: replace(s, total=rel["b"].update))
    assert (err.peer, err.stage) == ("server", "reply")
    assert "does not count the 4 members it names" in str(err)
    assert "counts 1" not in str(err)  # no decrypted value leaves in the message
    assert fed.clients["a"].weights.vector().ne(fed.clients["b"].weights.vector()).any()
    fed.close()


@pytest.mark.parametrize("peers, why", [
    (("a", "b"), "a sum over at least 3 distinct members"),
    (("a", "b", "c", "x"), "a sum over at least 3 distinct members"),
    (("b", "c", "d"), "over a group that includes it"),
], ids=["two", "outsider", "without-recipient"])
def test_a_sum_over_too_few_or_foreign_members_is_refused(peers, why):
    """The server sums honestly but over a group no configured sum has: two members (each
    would learn the other's update), a client from outside the group, or a group without
    the recipient. The count matches the members named, so only the group check stops it."""
    cfg = _cfg(method="fedavg", clients=SIX[:4])
    fed = build_federation(cfg, make_split(cfg), "fedavg")
    pub = fed.server.protection.context

    def regroup(s, rel):  # an outsider's place taken by d's update: the count still matches
        updates = [rel[m].update if m in rel else rel["d"].update for m in peers]
        return replace(s, peers=(tuple(peers),), total=add(pub, updates))

    err = _intercept(fed, "a", regroup)
    assert err.peer == "server" and why in str(err)
    fed.close()


def test_a_mean_update_beyond_the_clip_is_refused_and_a_diverged_update_is_not_released():
    """The server holds the public key, so it can encrypt a sum of its choosing with the
    right count: a mean of norm 1 against update_clip 0.5 moves the model further than any
    mean of clipped updates, and is refused (CKKS's error allowance is far below the
    difference). A client whose own training diverged releases nothing and says why."""
    cfg = _cfg(method="fedavg", clients=SIX[:4], weight_sharing={"update_clip": 0.5})
    fed = build_federation(cfg, make_split(cfg), "fedavg")
    secret = fed.clients["d"].protection.context  # any key holder encrypts as the server can

    def push(s, rel):
        n = s.length
        return replace(s, total=encrypt_vector(secret, torch.cat(
            [torch.full((n,), 4.0 / n ** 0.5), torch.tensor([4.0])])))  # mean of norm 1

    err = _intercept(fed, "a", push)
    assert "is above weight_sharing.update_clip = 0.5" in str(err)
    fed.close()
    fed = build_federation(cfg, make_split(cfg), "fedavg")
    a = fed.clients["a"]
    n = a.weights.layout()[0][1]
    with pytest.raises(ProtocolError, match="peer 'a'.*update of part 'backbone' is not finite"):
        a.protection.seal_weights(1, 0, "backbone", torch.full((n,), float("nan")))
    fed.close()


@pytest.mark.parametrize("forge, match", [
    ("ciphertexts", "must hold its \\d+ weights and a count in \\d+ ciphertexts"),
    ("part", "an encrypted update of part 'head' at exchange \\(epoch 0, batch 0\\)"),
    ("exchange", "\\(epoch 0, batch 1\\)"),
    ("length", "got length 5"),
    ("bytes", "its encrypted update of part 0 is not a ciphertext of this federation"),
], ids=["ciphertexts", "part", "exchange", "length", "bytes"])
def test_a_malformed_release_is_refused_naming_its_sender(forge, match):
    """A member's release with a ciphertext missing (the layout of a shorter part), for a
    part it does not share at that exchange, at another exchange, with another length, or
    with bytes TenSEAL does not read as this federation's ciphertext: a ProtocolError naming
    that member, before (or instead of) adding anything."""
    cfg = _cfg(method="fedavg", clients=SIX[:4])
    fed = build_federation(cfg, make_split(cfg), "fedavg")

    def forged(m):
        u = m.update
        if forge == "ciphertexts":
            return replace(m, update=EncryptedMatrix(replace(u.layout, rows=u.layout.rows - 1),
                                                     u.ciphertexts[:-1]))
        if forge == "part":
            return replace(m, part="head")
        if forge == "exchange":
            return replace(m, batch=1)
        if forge == "length":
            return replace(m, length=5)
        return replace(m, update=EncryptedMatrix(u.layout, (b"\x00" * 64,) + u.ciphertexts[1:]))

    queue = deque(fed.server.start_round(1))
    with pytest.raises(ProtocolError) as err:
        while queue:
            msg = queue.popleft()
            for rep in fed.clients[msg.client].handle(msg):
                if isinstance(rep, EncryptedWeightUpdate) and rep.client == "c":
                    rep = forged(rep)
                queue.extend(fed.server.handle(rep))
    assert err.value.peer == "c"
    assert err.match(match)
    fed.close()


def test_methods_and_groups_a_sum_cannot_carry_are_refused():
    """MIRA's step needs every client's adapters and MOCHA's Ω every client's head: no sum
    gives them. Under ckks every client holds the secret key, so a sum over two members
    shows each the other's update: a federation of two, or an averaged head whose task has
    two clients, is refused; the encoder alone over five is fine."""
    with pytest.raises(ConfigError, match="'mira' aggregates weights in the clear \\(plain\\); "
                                          "got 'ckks': its step needs every client's adapters"):
        _cfg(method="mira", clients=[dict(c, adapter={"kind": "lora", "rank": 2}) for c in SIX])
    with pytest.raises(ConfigError, match="'mocha' aggregates weights in the clear \\(plain\\); "
                                          "got 'ckks': its task relationship"):
        _cfg(method="mocha", clients=[dict(c, task="digit10") for c in SIX])
    two = [dict(c, task="digit10" if c["name"] in "ab" else "coarse") for c in SIX[:5]]
    with pytest.raises(ConfigError, match="encrypted sum .*task 'digit10' has \\['a', 'b'\\]"):
        _cfg(clients=two)
    _cfg(clients=two, method="fedavg")
    with pytest.raises(ConfigError, match="needs at least 3; got 2"):
        _cfg(method="fedprox", clients=SIX[:2])


def test_a_clip_the_ckks_parameters_cannot_hold_summed_is_refused_with_the_config():
    """Six updates of coordinates up to 10⁵ sum beyond 2¹⁸, what the first prime of
    (60, 40, 60) holds above the scale: refused naming the field, before anything is
    encrypted."""
    with pytest.raises(ConfigError, match="ckks.coeff_mod_bit_sizes\\[0\\].*values up to 600000"):
        _cfg(method="fedavg", weight_sharing={"update_clip": 1e5})
    _cfg(method="fedavg", weight_sharing={"update_clip": 1e4})  # 6·10⁴ < 2¹⁸


@pytest.mark.parametrize("scale, message", [(21, "decrypts its count to within"),
                                            (28, "CKKS's error over a part of")])
def test_a_scale_too_small_for_the_checks_is_refused(scale, message):
    """At a small CKKS scale the decrypted count is no longer an integer to within 1/4, so
    one member's ciphertext passed off as a sum of three passes the count check; a little
    larger, and CKKS's error over a whole part widens the clip a mean is held to by more
    than 1 %. Both are refused before anything is encrypted, naming the scale."""
    with pytest.raises(ConfigError) as err:  # at parse time or when the sums are sized
        cfg = _cfg(method="fedavg", clients=SIX[:3],
                   ckks={"coeff_mod_bit_sizes": [60, scale, 60], "global_scale_bits": scale})
        build_federation(cfg, make_split(cfg), "fedavg")
    assert err.value.field == "ckks.global_scale_bits" and message in str(err.value)


def test_the_weight_sums_context_has_no_galois_keys():
    """Weight sums only add ciphertexts; Galois keys would let the server rotate one
    member's coordinates into the count slot of a "sum"."""
    cfg = _cfg(method="fedavg", clients=SIX[:3])
    fed = build_federation(cfg, make_split(cfg), "fedavg")
    assert not fed.server.protection.context._ts.has_galois_keys()
    assert not fed.clients["a"].protection.context._ts.has_galois_keys()
