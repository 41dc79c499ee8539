"""Secure aggregation (DESIGN §4.2): exact sums in Z_(2^64), share-reveal rules, protocol
errors naming the peer and stage, fresh keys per instance, masks hiding inputs.

Oracles are Python integers reduced mod 2**64 (see ``secagg_driver.expected_sum``).
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmuscle_secure.crypto import _hazmat as hz
from fedmuscle_secure.crypto.secagg.client import SecAggClient
from fedmuscle_secure.crypto.secagg.messages import (
    ConsistencyCheck,
    KeyBook,
    MaskedInput,
    SecAggStage,
    ShareInbox,
    UnmaskShares,
)
from fedmuscle_secure.crypto.secagg.server import unmask_sum
from fedmuscle_secure.crypto.secagg.shamir import int_to_bytes32, reconstruct
from fedmuscle_secure.errors import ProtocolError
from helpers.crypto.secagg_driver import (
    INT64_MAX,
    INT64_MIN,
    LENGTH,
    edge_vectors,
    expected_sum,
    identities,
    names,
    run,
    run_instance,
    start,
    to_signed,
)

INT64 = st.integers(INT64_MIN, INT64_MAX)


def flip(b: bytes, i: int = -1) -> bytes:
    raw = bytearray(b)
    raw[i] ^= 0x01
    return bytes(raw)


# -- 1. exact sums -----------------------------------------------------------------------
def test_full_instance_sums_exactly_with_wraparound():
    inst = run_instance(5, 3)
    srv = inst.server
    assert inst.error is None and srv.stage is SecAggStage.DONE
    assert srv.survivors == tuple(names(5)) and inst.closes == 0
    cols = zip(*(v.tolist() for v in inst.vectors.values()), strict=True)
    assert any(not INT64_MIN <= sum(c) <= INT64_MAX for c in cols), "inputs must make sums wrap"
    assert srv.result.dtype == torch.int64 and tuple(srv.result.shape) == (LENGTH,)
    assert srv.result.tolist() == expected_sum(inst.vectors, names(5))


@st.composite
def unmask_problems(draw):
    s, k, n = draw(st.integers(1, 4)), draw(st.integers(0, 5)), draw(st.integers(1, 6))
    masked = draw(st.lists(st.lists(INT64, min_size=n, max_size=n), min_size=s, max_size=s))
    masks = draw(st.lists(st.lists(INT64, min_size=n, max_size=n), min_size=k, max_size=k))
    coef = draw(st.lists(st.sampled_from([-1, 1]) | INT64, min_size=k, max_size=k))
    return masked, masks, coef, n


def _unmask_oracle(masked, masks, coef, n):
    pairs = list(zip(coef, masks, strict=True))
    return [to_signed(sum(r[j] for r in masked) - sum(c * m[j] for c, m in pairs))
            for j in range(n)]


def _as_tensors(masked, masks, coef, n):
    return (torch.tensor(masked, dtype=torch.int64),
            torch.tensor(masks, dtype=torch.int64).reshape(len(masks), n),
            torch.tensor(coef, dtype=torch.int64))


@settings(max_examples=60, deadline=None)
@given(unmask_problems())
def test_unmask_sum_is_arithmetic_mod_2_64(problem):
    masked, masks, coef, n = problem
    out = unmask_sum(*_as_tensors(masked, masks, coef, n))
    assert out.dtype == torch.int64
    assert out.tolist() == _unmask_oracle(masked, masks, coef, n)


def test_unmask_sum_extremes():
    masked = [[INT64_MAX, INT64_MIN, INT64_MIN, -1], [1, INT64_MIN, -1, INT64_MAX]]
    masks = [[INT64_MIN, 1, INT64_MAX, INT64_MIN], [INT64_MAX, INT64_MAX, INT64_MIN, 2]]
    coef = [-1, 1]
    out = unmask_sum(*_as_tensors(masked, masks, coef, 4))
    assert out.tolist() == _unmask_oracle(masked, masks, coef, 4)


# -- 5. never both kinds of share ---------------------------------------------------------
@pytest.fixture
def at_consistency():
    """N=6, t=4, everyone sent a masked input; the survivor-set checks are pending."""
    inst = start(names(6), 4, edge_vectors(names(6)))
    run(inst, stop_at="consistency")
    assert inst.error is None and len(inst.pending) == 6
    assert all(isinstance(m, ConsistencyCheck) for m in inst.pending)
    return inst


@pytest.fixture
def at_unmask():
    """N=6, t=4, everyone signed the survivor set; the unmask requests are pending."""
    inst = start(names(6), 4, edge_vectors(names(6)))
    run(inst, stop_at="unmask")
    assert inst.error is None and len(inst.pending) == 6
    return inst


def _refused(client, check, match):
    with pytest.raises(ProtocolError, match=match) as info:
        client.handle(check)
    assert (info.value.peer, info.value.stage) == ("server", "masked_input")
    assert client.revealed == {} and client.stage is SecAggStage.MASKED_INPUT


def test_client_refuses_peer_listed_as_survivor_and_dropped(at_consistency):
    c0 = at_consistency.clients["c0"]
    check = ConsistencyCheck("c0", c0.instance_id, tuple(names(6)), ("c3",))
    _refused(c0, check, "both")


def test_client_refuses_survivors_below_threshold(at_consistency):
    c0 = at_consistency.clients["c0"]
    check = ConsistencyCheck("c0", c0.instance_id, ("c0", "c2", "c5"), ("c1", "c3", "c4"))
    _refused(c0, check, "threshold 4")


def test_client_answers_one_unmask_request_only(at_unmask):
    req = next(m for m in at_unmask.pending if m.recipient == "c1")
    c1 = at_unmask.clients["c1"]
    assert isinstance(c1.handle(req), UnmaskShares)
    before = dict(c1.revealed)
    with pytest.raises(ProtocolError) as info:
        c1.handle(req)
    assert (info.value.peer, info.value.stage) == ("server", "done")
    assert c1.revealed == before


def test_each_peer_revealed_exactly_one_kind():
    inst = run_instance(6, 4, dropout={"c2": "masked_input", "c4": "share_keys"})
    assert inst.error is None
    holders = {"c0", "c1", "c2", "c3", "c5"}  # c4 never sent shares
    for c in inst.server.survivors:
        assert inst.clients[c].revealed == {p: "key" if p == "c2" else "seed" for p in holders}
        sent = inst.server.unmasks[c]
        assert not set(sent.seed_shares) & set(sent.key_shares)
        assert set(sent.seed_shares) | set(sent.key_shares) == holders


def test_server_refuses_unmask_shares_of_both_kinds(at_unmask):
    srv = at_unmask.server
    req = next(m for m in at_unmask.pending if m.recipient == "c0")
    sent = at_unmask.clients["c0"].handle(req)
    greedy = dataclasses.replace(sent, key_shares={"c3": sent.seed_shares["c3"]})
    with pytest.raises(ProtocolError, match="exactly") as info:
        srv.receive(greedy)
    assert (info.value.peer, info.value.stage) == ("c0", "unmask") and srv.unmasks == {}
    assert srv.receive(sent) == [] and set(srv.unmasks) == {"c0"}


# -- 6. protocol errors name the peer and the stage ---------------------------------------
def _raises(fn, peer, stage, match=None):
    with pytest.raises(ProtocolError, match=match) as info:
        fn()
    assert (info.value.peer, info.value.stage) == (peer, stage)
    return info.value


def test_server_rejects_message_for_a_later_stage():
    inst = start(names(4), 3, edge_vectors(names(4)))
    srv = inst.server
    bogus = MaskedInput("c2", srv.instance_id, torch.zeros(LENGTH, dtype=torch.int64))
    _raises(lambda: srv.receive(bogus), "c2", "advertise_keys", "MaskedInput")
    assert srv.masked == {}


def test_client_rejects_inbox_before_key_book():
    inst = start(names(4), 3, edge_vectors(names(4)))
    c0 = inst.clients["c0"]
    _raises(lambda: c0.handle(ShareInbox("c0", c0.instance_id, {})), "server", "advertise_keys")
    assert c0.stage is SecAggStage.ADVERTISE_KEYS


def test_server_rejects_duplicates_in_and_after_the_stage():
    inst = start(names(4), 3, edge_vectors(names(4)))
    srv, ads = inst.server, {c: cl.advertise() for c, cl in inst.clients.items()}
    srv.receive(ads["c1"])
    _raises(lambda: srv.receive(ads["c1"]), "c1", "advertise_keys", "duplicate")
    for c in ("c0", "c2", "c3"):
        srv.receive(ads[c])
    assert srv.stage is SecAggStage.SHARE_KEYS
    _raises(lambda: srv.receive(ads["c3"]), "c3", "share_keys", "duplicate")


def test_replay_from_another_instance_is_rejected():
    ids = identities(names(4))
    a = start(names(4), 3, edge_vectors(names(4)), ids=ids)
    b = start(names(4), 3, edge_vectors(names(4)), ids=ids)
    _raises(lambda: b.server.receive(a.clients["c2"].advertise()), "c2", "advertise_keys",
            "another instance")
    assert b.server.adverts == {}
    run(a, stop_at="share_keys")
    book_a = next(m for m in a.pending if m.recipient == "c1")
    _raises(lambda: b.clients["c1"].handle(book_a), "server", "advertise_keys", "another instance")


def test_setup_replaying_a_used_instance_id_is_rejected():
    seen = {c: set() for c in names(3)}
    inst = start(names(3), 2, edge_vectors(names(3)), seen_instances=seen)
    setup = inst.server.start()[0]
    pubs = {c: k.public_key() for c, k in inst.ids.items()}
    _raises(lambda: SecAggClient("c0", inst.ids["c0"], pubs, setup, inst.vectors["c0"],
                                 seen_instances=seen["c0"]), "server", "setup", "already used")


@pytest.mark.parametrize("field", ["signature", "mask_public"])
def test_tampered_advert_is_rejected_by_server_and_client(field):
    inst = start(names(4), 3, edge_vectors(names(4)))
    ad = inst.clients["c2"].advertise()
    bad = dataclasses.replace(ad, **{field: flip(getattr(ad, field))})
    _raises(lambda: inst.server.receive(bad), "c2", "advertise_keys", "bad key advertisement")
    # a server that does not check identities forwards it; every client checks the book
    lax = start(names(4), 3, edge_vectors(names(4)), server_identities=False)
    ads = {c: cl.advertise() for c, cl in lax.clients.items()}
    ads["c2"] = dataclasses.replace(ads["c2"], **{field: flip(getattr(ads["c2"], field))})
    books = [m for c in names(4) for m in lax.server.receive(ads[c])]
    book = next(m for m in books if m.recipient == "c0")
    _raises(lambda: lax.clients["c0"].handle(book), "c2", "advertise_keys", "does not verify")
    assert lax.clients["c0"].stage is SecAggStage.ADVERTISE_KEYS


def test_share_that_fails_to_decrypt_names_the_sender():
    inst = start(names(4), 3, edge_vectors(names(4)))
    run(inst, stop_at="masked_input")
    inbox = next(m for m in inst.pending if m.recipient == "c0")
    bad = ShareInbox("c0", inbox.instance_id, {**inbox.ciphertexts,
                                               "c3": flip(inbox.ciphertexts["c3"], 20)})
    c0 = inst.clients["c0"]
    _raises(lambda: c0.handle(bad), "c3", "share_keys", "fails to decrypt")
    assert c0.stage is SecAggStage.SHARE_KEYS
    assert isinstance(c0.handle(inbox), MaskedInput)  # the genuine inbox still works


def test_key_book_without_own_keys_is_rejected():
    inst = start(names(4), 3, edge_vectors(names(4)))
    run(inst, stop_at="share_keys")
    book = next(m for m in inst.pending if m.recipient == "c1")
    bad = KeyBook("c1", book.instance_id, tuple(a for a in book.adverts if a.sender != "c1"))
    _raises(lambda: inst.clients["c1"].handle(bad), "server", "advertise_keys", "own keys")


# -- 7. fresh keys and seeds per instance --------------------------------------------------
def _revealed_mask_key(srv, owner):
    pts = [(srv.participants.index(h) + 1, u.key_shares[owner]) for h, u in srv.unmasks.items()]
    secret = reconstruct(pts, threshold=srv.threshold)
    return hz.AgreementKey.from_private_bytes(int_to_bytes32(secret))


def test_fresh_keys_and_seeds_per_instance():
    ids, vectors, plan = identities(names(5)), edge_vectors(names(5)), {"c2": "masked_input"}
    a = run_instance(5, 3, ids=ids, vectors=vectors, dropout=plan)
    b = run_instance(5, 3, ids=ids, vectors=vectors, dropout=plan)
    survivors = ("c0", "c1", "c3", "c4")
    for inst in (a, b):
        assert inst.error is None and inst.server.survivors == survivors
        assert inst.server.result.tolist() == expected_sum(vectors, survivors)
    assert a.server.instance_id != b.server.instance_id
    for c in names(5):
        ad_a, ad_b = a.server.adverts[c], b.server.adverts[c]
        assert ad_a.cipher_public != ad_b.cipher_public and ad_a.mask_public != ad_b.mask_public
    for c in survivors:
        assert not torch.equal(a.server.masked[c].masked, b.server.masked[c].masked)
    key_a, key_b = _revealed_mask_key(a.server, "c2"), _revealed_mask_key(b.server, "c2")
    assert key_a.public == a.server.adverts["c2"].mask_public  # the reveal worked
    assert key_b.public == b.server.adverts["c2"].mask_public
    for s in survivors:
        peer_pub = b.server.adverts[s].mask_public
        kw = {"instance_id": b.server.instance_id, "me": "c2", "peer": s}
        seed_a = hz.pair_mask_seed(key_a, peer_pub, **kw)
        seed_b = hz.pair_mask_seed(key_b, peer_pub, **kw)
        assert seed_a != seed_b
        assert not torch.equal(hz.mask_stream(seed_a, LENGTH), hz.mask_stream(seed_b, LENGTH))


# -- 8. masks hide the input ----------------------------------------------------------------
def test_masked_inputs_do_not_reveal_inputs():
    rng = random.Random(7)
    vectors = {"c0": torch.zeros(LENGTH, dtype=torch.int64),
               "c1": torch.tensor([rng.randrange(-1000, 1000) for _ in range(LENGTH)]),
               "c2": torch.zeros(LENGTH, dtype=torch.int64)}
    inst = run_instance(3, 2, vectors=vectors)
    assert inst.error is None
    masked = {c: m.masked for c, m in inst.server.masked.items()}
    for c, x in vectors.items():
        assert (masked[c] != x).all(), f"{c}'s masked input leaks elements of its input"
        negative = (masked[c] < 0).float().mean().item()
        assert 0.35 < negative < 0.65, f"{c}'s masked input is not sign-balanced: {negative}"
    assert (masked["c0"] != masked["c2"]).all()  # same input, independent masks
    assert inst.server.result.tolist() == expected_sum(vectors, names(3))


# -- 9. the server's math on the GPU ---------------------------------------------------------
@pytest.mark.gpu
def test_unmask_sum_on_cuda_matches_cpu_and_oracle():
    rng = random.Random(3)
    n = 4099
    masked = [[rng.randint(INT64_MIN, INT64_MAX) for _ in range(n)] for _ in range(5)]
    masks = [[rng.randint(INT64_MIN, INT64_MAX) for _ in range(n)] for _ in range(7)]
    coef = [rng.choice((-1, 1)) for _ in range(7)]
    args = _as_tensors(masked, masks, coef, n)
    gpu, cpu = unmask_sum(*args, device="cuda"), unmask_sum(*args, device="cpu")
    assert gpu.device.type == "cpu" and torch.equal(gpu, cpu)
    assert gpu.tolist() == _unmask_oracle(masked, masks, coef, n)
    vectors = edge_vectors(names(5))
    inst = run(start(names(5), 3, vectors, device="cuda"), {"c1": "masked_input"})
    assert inst.error is None
    assert inst.server.result.tolist() == expected_sum(vectors, ("c0", "c2", "c3", "c4"))
