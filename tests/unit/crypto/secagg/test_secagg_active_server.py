"""Attacks by an active server on one secure-aggregation instance (DESIGN §4.4).

* two-member groups: a sum over two members is each one's input to the other, so no stage
  may continue with fewer than max(3, t) members, on the client side as on the server side;
* equivocation: a server that shows different clients different survivor sets, to collect a
  client's self-mask-seed shares from some and its mask-key shares from others, is refused
  by the consistency round (every survivor signs the one view it was shown and reveals
  only against max(3, t) signatures over that same view).
"""

from __future__ import annotations

import dataclasses

import pytest

from fedmuscle_secure.crypto.secagg.client import SecAggClient
from fedmuscle_secure.crypto.secagg.messages import (
    ConsistencyCheck,
    ConsistencySignature,
    SecAggSetup,
    SecAggStage,
    UnmaskRequest,
    UnmaskShares,
    frozen_map,
)
from fedmuscle_secure.crypto.secagg.server import SecAggAborted, SecAggServer
from fedmuscle_secure.errors import ProtocolError
from helpers.crypto.secagg_driver import (
    LENGTH,
    edge_vectors,
    identities,
    names,
    public,
    run,
    run_instance,
    start,
)


def _refused(fn, peer: str, stage: str, match: str) -> ProtocolError:
    with pytest.raises(ProtocolError, match=match) as info:
        fn()
    assert (info.value.peer, info.value.stage) == (peer, stage)
    return info.value


# -- two-member groups ---------------------------------------------------------------------
def test_client_refuses_a_setup_of_two_members():
    """The server sets up an instance of c0 and c1 (t = 2): c1 would learn c0's input."""
    ids = identities(names(2))
    setup = SecAggSetup("c0", b"\x01" * 32, ("c0", "c1"), 2, LENGTH)
    _refused(lambda: SecAggClient("c0", ids["c0"], public(ids), setup, edge_vectors(["c0"])["c0"]),
             "server", "setup", "at least 3")


def _three_with_t2():
    """N=3, t=2: allowed at setup (three members), so every later stage must hold three."""
    return start(names(3), 2, edge_vectors(names(3)), server_identities=False)


def test_client_refuses_a_key_book_of_two():
    inst = _three_with_t2()
    ads = [inst.clients[c].advertise() for c in ("c0", "c1")]
    from fedmuscle_secure.crypto.secagg.messages import KeyBook

    book = KeyBook("c0", inst.server.instance_id, tuple(ads))
    _refused(lambda: inst.clients["c0"].handle(book), "server", "advertise_keys", "at least 3")


def test_client_refuses_a_survivor_set_of_two():
    inst = _three_with_t2()
    run(inst, stop_at="consistency")
    check = next(m for m in inst.pending if m.recipient == "c0")
    two = ConsistencyCheck("c0", check.instance_id, ("c0", "c1"), ("c2",))
    _refused(lambda: inst.clients["c0"].handle(two), "server", "masked_input", "at least 3")
    assert inst.clients["c0"].revealed == {}


@pytest.mark.parametrize("stage", ["masked_input", "consistency", "unmask"])
def test_server_never_unmasks_two_survivors(stage):
    """N=3, t=2 and one member goes silent: the two others would each learn the other's
    input from the sum; the server aborts instead of unmasking."""
    inst = run_instance(3, 2, dropout={"c2": stage})
    assert isinstance(inst.error, SecAggAborted) and inst.server.result is None
    assert "at least 3" in str(inst.error)


# -- equivocation ------------------------------------------------------------------------------
@pytest.fixture
def split_views():
    """N=5, t=3, every masked input in. A malicious server shows c3 a view in which c4
    dropped (to collect c4's mask-key shares from it) and everyone else one in which c4
    survived (to collect c4's self-mask-seed shares): with both it would unmask c4."""
    inst = start(names(5), 3, edge_vectors(names(5)))
    run(inst, stop_at="consistency")
    assert inst.error is None
    iid = inst.server.instance_id
    v1 = (tuple(names(5)), ())
    v2 = (("c0", "c1", "c2", "c3"), ("c4",))
    views = {c: (v2 if c == "c3" else v1) for c in names(5)}
    sigs = {}
    for c, view in views.items():
        reply = inst.clients[c].handle(ConsistencyCheck(c, iid, *view))
        assert isinstance(reply, ConsistencySignature)
        sigs[c] = reply.signature
    return inst, iid, v1, v2, sigs


def test_client_refuses_a_view_other_than_the_one_it_signed(split_views):
    inst, iid, _v1, v2, sigs = split_views
    req = UnmaskRequest("c0", iid, *v2, frozen_map(sigs))
    _refused(lambda: inst.clients["c0"].handle(req), "server", "consistency", "different views")
    assert inst.clients["c0"].revealed == {}


def test_client_refuses_signatures_made_over_another_view(split_views):
    """c3 is sent its own view with every signature the server holds: the others signed a
    view in which c4 survived, so their signatures do not verify over c3's."""
    inst, iid, _v1, v2, sigs = split_views
    req = UnmaskRequest("c3", iid, *v2, frozen_map({c: s for c, s in sigs.items() if c != "c4"}))
    _refused(lambda: inst.clients["c3"].handle(req), "c0", "consistency", "does not verify")
    listed = UnmaskRequest("c3", iid, *v2, frozen_map(sigs))  # c4 is dropped in c3's view
    _refused(lambda: inst.clients["c3"].handle(listed), "server", "consistency", "not survivors")
    alone = UnmaskRequest("c3", iid, *v2, frozen_map({"c3": sigs["c3"]}))
    _refused(lambda: inst.clients["c3"].handle(alone), "server", "consistency", "at least 3")
    assert inst.clients["c3"].revealed == {} and inst.clients["c3"].stage is SecAggStage.CONSISTENCY


def test_equivocating_server_never_holds_both_kinds_for_a_client(split_views):
    """Played to the end: the server collects whatever each client reveals. It gets c4's
    seed shares from the clients shown v1, and no mask-key share of c4 from anyone."""
    inst, iid, v1, v2, sigs = split_views
    v1_sigs = frozen_map({c: s for c, s in sigs.items() if c != "c3"})
    revealed: dict[str, UnmaskShares] = {}
    v2_sigs = frozen_map({c: s for c, s in sigs.items() if c != "c4"})
    for c in names(5):
        view, pool = (v2, v2_sigs) if c == "c3" else (v1, v1_sigs)
        try:
            revealed[c] = inst.clients[c].handle(UnmaskRequest(c, iid, *view, frozen_map(pool)))
        except ProtocolError:
            pass
    assert set(revealed) == {"c0", "c1", "c2", "c4"}
    assert not any("c4" in r.key_shares for r in revealed.values())


def test_server_rejects_a_signature_over_another_view():
    inst = start(names(4), 3, edge_vectors(names(4)))
    run(inst, stop_at="consistency")
    check = next(m for m in inst.pending if m.recipient == "c1")
    other = dataclasses.replace(check, survivors=check.survivors[:-1],
                                dropped=(*check.dropped, check.survivors[-1]))
    forged = inst.clients["c1"].handle(other)
    _refused(lambda: inst.server.receive(forged), "c1", "consistency", "bad survivor-set signature")
    assert inst.server.signatures == {}


def test_honest_instance_carries_every_signers_signature():
    inst = run_instance(5, 3, dropout={"c2": "consistency"})
    assert inst.error is None and inst.server.stage is SecAggStage.DONE
    assert set(inst.server.signatures) == {"c0", "c1", "c3", "c4"}
    assert set(inst.server.unmasks) == {"c0", "c1", "c3", "c4"}


def test_server_instance_refuses_fewer_than_three_participants():
    with pytest.raises(ValueError, match="max\\(3, threshold\\)"):
        SecAggServer(names(2), 2, LENGTH)


def test_survivor_signatures_are_bound_to_the_exchange():
    """A server that reuses an instance id for another exchange (e.g. after the clients
    restarted and forgot the ids they had seen) cannot replay the survivor-view signatures
    it collected: the exchange label is signed into the view."""
    from fedmuscle_secure.crypto import _hazmat as hz
    from fedmuscle_secure.crypto.secagg.messages import exchange_label
    from fedmuscle_secure.errors import IdentityError

    ids = identities(names(3))
    iid, view = b"\x07" * 32, (("c0", "c1", "c2"), ())
    first, second = exchange_label(1, 0, None), exchange_label(1, 1, None)
    sig = hz.sign_survivor_set(ids["c0"], iid, first, "c0", *view)
    hz.verify_survivor_set(ids["c0"].public_key(), sig, iid, first, "c0", *view)
    with pytest.raises(IdentityError):
        hz.verify_survivor_set(ids["c0"].public_key(), sig, iid, second, "c0", *view)
