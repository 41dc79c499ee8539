"""Secure aggregation against malicious members (DESIGN §4.2, §4.4): each test is an attack.

* A member reveals a wrong Shamir share at unmask. Unchecked, the server either raises an
  untyped error on whichever honest message completes the stage (and stays in UNMASK), or
  reconstructs a wrong self-mask seed or mask key and publishes a wrong sum. Defence:
  robust reconstruction (``shamir.robust_reconstruct``): up to ⌊(n − t)/2⌋ wrong shares
  per secret are corrected and their senders blamed by name; more are detected and the
  instance aborts with :class:`SecAggAborted`, blaming nobody; a reconstructed mask key is
  checked against its owner's advertised ``mask_public``.
* A member signs a low-order X25519 key (or a copy of another member's key) into its
  advertisement. Unchecked, every honest client's exchange with it fails and the instance
  dies for everyone. Defence: the server validates advertised keys and drops the member by
  name; every client validates the key book too, naming the member.

Oracles: sums are Python integers mod 2**64 (``secagg_driver.expected_sum``).
"""

from __future__ import annotations

import dataclasses
import secrets
from collections import deque

import pytest
import torch

from fedmuscle_secure.crypto import _hazmat as hz
from fedmuscle_secure.crypto.secagg.client import SecAggClient
from fedmuscle_secure.crypto.secagg.messages import (
    KeyBook,
    SecAggSetup,
    SecAggStage,
    UnmaskShares,
    exchange_label,
    frozen_map,
)
from fedmuscle_secure.crypto.secagg.server import SecAggAborted
from fedmuscle_secure.crypto.secagg.shamir import PRIME_256, robust_reconstruct
from fedmuscle_secure.crypto.secagg.sum_encoding import SumEncoding
from fedmuscle_secure.errors import ProtocolError
from fedmuscle_secure.messages import ExchangeAborted, SecAggEnvelope, SumTerms
from fedmuscle_secure.server.protection import SecAggServerProtection
from helpers.crypto.secagg_driver import (
    edge_vectors,
    expected_sum,
    identities,
    names,
    public,
    run,
    start,
)

P25519 = 2**255 - 19


def _u(v: int) -> bytes:
    return v.to_bytes(32, "little")


# Every X25519 encoding of a point of order 1, 2, 4 or 8 (RFC 7748 §6.1 asks to refuse an
# all-zero shared secret, which these give with any clamped scalar; the list is libsodium's
# blocklist): u = 0, 1, the two order-8 points, p − 1, and the non-canonical p, p + 1.
_ORDER8 = (0x00B8495F16056286FDB1329CEB8D09DA6AC49FF1FAE35616AEB8413B7C7AEBE0,
           0x57119FD0DD4E22D8868E1C58C45C44045BEF839C55B1D0B1248C50A3BC959C5F)
LOW_ORDER = [_u(0), _u(1), *map(_u, _ORDER8), _u(P25519 - 1), _u(P25519), _u(P25519 + 1)]
LOW_ORDER += [k[:31] + bytes([k[31] | 0x80]) for k in LOW_ORDER]  # the unused top bit set


# -- wrong shares at unmask ---------------------------------------------------------------
def _liar(owner: str, kind: str, how: str = "plus-one"):
    """A tamper function: the member reveals a wrong y for ``owner``'s seed or key share.
    ``plus-one`` shifts the secret by a small multiple (still a 32-byte value: a silently
    wrong secret), ``random`` is any field element (almost surely not 32 bytes)."""
    field = "seed_shares" if kind == "seed" else "key_shares"

    def tamper(msg):
        if not isinstance(msg, UnmaskShares):
            return msg
        shares = dict(getattr(msg, field))
        shares[owner] = (shares[owner] + 1) % PRIME_256 if how == "plus-one" else secrets.randbelow(PRIME_256)
        return dataclasses.replace(msg, **{field: frozen_map(shares)})

    return tamper


def _run(n: int, t: int, tamper: dict, dropout: dict | None = None):
    vectors = edge_vectors(names(n))
    inst = start(names(n), t, vectors)
    inst.tamper.update(tamper)
    return run(inst, dropout), vectors


@pytest.mark.parametrize("how", ["plus-one", "random"])
@pytest.mark.parametrize("liar", ["c1", "c5"])  # c5's message is the one completing the stage
def test_wrong_seed_share_is_corrected_and_its_sender_blamed(liar, how):
    inst, vectors = _run(6, 3, {liar: _liar("c4", "seed", how)})  # e = ⌊(6 − 3)/2⌋ = 1
    srv = inst.server
    assert inst.error is None and srv.stage is SecAggStage.DONE
    assert srv.result.tolist() == expected_sum(vectors, names(6))  # the liar's input included
    assert set(srv.blamed) == {liar}
    err = srv.blamed[liar]
    assert isinstance(err, ProtocolError) and (err.peer, err.stage) == (liar, "unmask")
    assert "c4" in str(err) and "seed" in str(err)
    assert srv.dropped_at == {liar: "unmask"}  # out for the rest of the round


def test_wrong_key_share_of_a_dropped_client_is_corrected():
    inst, vectors = _run(7, 3, {"c5": _liar("c2", "key")}, {"c2": "masked_input"})
    srv = inst.server
    survivors = ("c0", "c1", "c3", "c4", "c5", "c6")
    assert inst.error is None and srv.stage is SecAggStage.DONE and srv.survivors == survivors
    assert srv.result.tolist() == expected_sum(vectors, survivors)
    assert set(srv.blamed) == {"c5"} and srv.blamed["c5"].stage == "unmask"
    assert srv.dropped_at == {"c2": "masked_input", "c5": "unmask"}


def test_two_liars_on_different_secrets_are_both_corrected():
    inst, vectors = _run(6, 3, {"c0": _liar("c3", "seed"), "c2": _liar("c5", "seed", "random")})
    srv = inst.server
    assert inst.error is None and srv.result.tolist() == expected_sum(vectors, names(6))
    assert set(srv.blamed) == {"c0", "c2"}


def _aborted_blaming_nobody(inst):
    srv = inst.server
    assert isinstance(inst.error, SecAggAborted)
    assert (inst.error.peer, inst.error.stage) == ("server", "unmask")
    assert srv.stage is SecAggStage.ABORTED and srv.result is None
    assert srv.blamed == {} and "unmask" not in srv.dropped_at.values()
    return str(inst.error)


def test_more_wrong_shares_than_correctable_abort_blaming_nobody():
    # n = 6, t = 3: one wrong share per secret is corrected; two on one secret are detected
    inst, _ = _run(6, 3, {"c1": _liar("c4", "seed"), "c3": _liar("c4", "seed", "random")})
    assert "c4" in _aborted_blaming_nobody(inst)


def test_without_spare_shares_a_wrong_share_aborts_blaming_nobody():
    # n = 4, t = 3: the inconsistency shows, but which share is wrong cannot be told
    inst, _ = _run(4, 3, {"c2": _liar("c0", "seed")})
    _aborted_blaming_nobody(inst)


def test_wrong_key_from_exactly_t_shares_is_caught_by_the_public_key():
    # 3 survivors, t = 3: no redundancy, but the mask key must match the advertised one
    inst, _ = _run(5, 3, {"c0": _liar("c4", "key")}, {"c3": "masked_input", "c4": "masked_input"})
    assert "mask_public" in _aborted_blaming_nobody(inst)


def test_colluders_beyond_the_bound_cannot_frame_an_honest_holder_of_a_key_share():
    """Five holders (x = 1..5), t = 3, e = 1. c3 and c4 collude: they reveal g = f + δ·(x−1)(x−2)
    at x = 4, 5 instead of f. The shares are then at distance 1 from g (only honest c2, at
    x = 3, is off g) and 2 from f: decoding returns g and would name c2. g(0) ≠ f(0), so the
    reconstructed key does not match c5's mask_public: abort, nobody blamed."""
    delta = 12345

    def frame(x: int):
        def tamper(msg):
            if not isinstance(msg, UnmaskShares):
                return msg
            y = (msg.key_shares["c5"] + delta * (x - 1) * (x - 2)) % PRIME_256
            return dataclasses.replace(msg, key_shares=frozen_map({**msg.key_shares, "c5": y}))
        return tamper

    inst, _ = _run(6, 3, {"c3": frame(4), "c4": frame(5)}, {"c5": "masked_input"})
    assert "mask_public" in _aborted_blaming_nobody(inst)
    points = [(i + 1, inst.server.unmasks[f"c{i}"].key_shares["c5"]) for i in range(5)]
    assert robust_reconstruct(points, threshold=3).off == (3,)  # the frame the key check foils


# -- low-order and copied keys in advertisements -----------------------------------------------
def _advertising(client, field: str, public: bytes) -> None:
    """Make ``client`` sign ``public`` as its ``field`` key (a malicious member: its advert
    is authentic, its key is not usable)."""
    key = hz.AgreementKey()
    key.public = public
    setattr(client, "_cipher_key" if field == "cipher_public" else "_mask_key", key)


def test_every_low_order_encoding_is_refused_and_honest_keys_pass():
    for low in LOW_ORDER:
        with pytest.raises(ProtocolError, match="low-order") as info:
            hz.check_agreement_public(low, peer="c7", stage="advertise_keys", what="mask_public")
        assert (info.value.peer, info.value.stage) == ("c7", "advertise_keys")
    for bad in (b"", bytes(31), bytes(33)):
        with pytest.raises(ProtocolError, match="32 bytes"):
            hz.check_agreement_public(bad, peer="c7", stage="advertise_keys", what="mask_public")
    for _ in range(20):
        hz.check_agreement_public(hz.AgreementKey().public, peer="c7", stage="advertise_keys",
                                  what="mask_public")


@pytest.mark.parametrize("field", ["cipher_public", "mask_public"])
@pytest.mark.parametrize("low", [LOW_ORDER[0], LOW_ORDER[2], LOW_ORDER[-1]], ids=["zero", "order8", "p+1|top"])
@pytest.mark.parametrize("bad", ["c0", "c2"])
def test_member_advertising_a_low_order_key_is_dropped_and_the_others_finish(field, low, bad):
    vectors = edge_vectors(names(5))
    inst = start(names(5), 3, vectors)
    inst.transport_drops = True
    _advertising(inst.clients[bad], field, low)
    run(inst)
    srv = inst.server
    honest = tuple(c for c in names(5) if c != bad)
    assert inst.error is None and srv.stage is SecAggStage.DONE
    assert srv.result.tolist() == expected_sum(vectors, honest)
    assert len(inst.rejected) == 1
    err = inst.rejected[0]
    assert (err.peer, err.stage) == (bad, "advertise_keys") and field in str(err)
    assert srv.dropped_at == {bad: "advertise_keys"} and bad not in srv.adverts


def test_member_copying_another_members_key_is_dropped():
    vectors = edge_vectors(names(5))
    inst = start(names(5), 3, vectors)
    inst.transport_drops = True
    _advertising(inst.clients["c3"], "mask_public", inst.clients["c0"]._mask_key.public)
    run(inst)
    assert inst.error is None and inst.server.stage is SecAggStage.DONE
    assert inst.server.result.tolist() == expected_sum(vectors, ("c0", "c1", "c2", "c4"))
    (err,) = inst.rejected
    assert (err.peer, err.stage) == ("c3", "advertise_keys") and "c0" in str(err)


def test_member_reusing_its_cipher_key_as_mask_key_is_dropped():
    vectors = edge_vectors(names(4))
    inst = start(names(4), 3, vectors)
    inst.transport_drops = True
    _advertising(inst.clients["c1"], "mask_public", inst.clients["c1"]._cipher_key.public)
    run(inst)
    assert inst.error is None and inst.server.result.tolist() == expected_sum(vectors, ("c0", "c2", "c3"))
    assert [(e.peer, e.stage) for e in inst.rejected] == [("c1", "advertise_keys")]


@pytest.mark.parametrize("field", ["cipher_public", "mask_public"])
@pytest.mark.parametrize("recipient", ["c0", "c3"])  # names sorting before and after "c2"
def test_clients_refuse_a_low_order_key_in_the_key_book_naming_the_member(field, recipient):
    """A server that forwards the key anyway (here: the book is built by hand)."""
    inst = start(names(4), 3, edge_vectors(names(4)))
    _advertising(inst.clients["c2"], field, LOW_ORDER[2])
    adverts = tuple(inst.clients[c].advertise() for c in names(4))
    client = inst.clients[recipient]
    with pytest.raises(ProtocolError, match="low-order") as info:
        client.handle(KeyBook(recipient, client.instance_id, adverts))
    assert (info.value.peer, info.value.stage) == ("c2", "advertise_keys")
    assert client.stage is SecAggStage.ADVERTISE_KEYS


def test_derived_key_errors_name_the_peer():
    key = hz.AgreementKey()
    for me, peer in (("c0", "c2"), ("c3", "c2")):
        with pytest.raises(ProtocolError) as info:
            hz.pair_mask_seed(key, LOW_ORDER[0], instance_id=bytes(32), me=me, peer=peer)
        assert info.value.peer == peer


def test_blame_is_recorded_in_the_round_events_and_the_liar_stays_out():
    """Through the server's exchange driver (what ``run`` and the gRPC server use): the
    liar's name reaches events.jsonl, and the round's next exchange is opened without it."""
    clients, ids = names(6), identities(names(6))
    ex = SecAggServerProtection(threshold=3, identities=public(ids), tau=0.2, gamma=1.0, device="cpu",
                                encoding_for=lambda nb, g: SumEncoding(nb, 2, 3, g, 1.0, 1.0))
    queue = deque(ex.start_round(1, torch.zeros(2, 1), "per_epoch", clients))  # two exchanges
    instances, lie, delivered = {}, _liar("c4", "seed"), []
    while queue:
        env = queue.popleft()
        delivered.append(env)
        if isinstance(env, (SumTerms, ExchangeAborted)) or env.epoch != 0:
            continue
        if isinstance(env.body, SecAggSetup):
            vector = env.encoding.encode(torch.zeros(1, 2, 3), torch.zeros(1, 2))[0]
            instances[env.client] = SecAggClient(env.client, ids[env.client], public(ids), env.body,
                                                 vector, label=exchange_label(1, 0, None))
            reply = instances[env.client].advertise()
        else:
            reply = instances[env.client].handle(env.body)
        if env.client == "c1":
            reply = lie(reply)
        queue.extend(ex.handle(SecAggEnvelope(env.client, 1, env.epoch, None, reply), clients))
    blamed = [e for e in ex.events if e["event"] == "secagg_blamed"]
    assert [(e["epoch"], list(e["blamed"])) for e in blamed] == [(0, ["c1"])]
    assert "c4" in blamed[0]["blamed"]["c1"]
    # the liar is out for the rest of the round: told so for each exchange, no sum, no setup
    assert {e.client for e in delivered if isinstance(e, SumTerms)} == set(clients) - {"c1"}
    told = [(e.epoch, e.reason) for e in delivered if isinstance(e, ExchangeAborted)]
    assert [t[0] for t in told] == [0, 1] and "revealed wrong shares" in told[0][1]
    second = {e.client for e in delivered if e.epoch == 1 and isinstance(e, SecAggEnvelope)
              and isinstance(e.body, SecAggSetup)}
    assert second == set(clients) - {"c1"}
