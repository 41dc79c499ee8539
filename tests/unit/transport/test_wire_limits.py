"""What a receiving end refuses before it parses (DESIGN §6): direction, caps, payload size.

The adversary is an authenticated peer (a client, or the server as seen by a client) that
sends well-formed protobuf the receiver should never have to hold: a message only the other
side sends (a client posing as the server: a ``RoundPlan``, a ``KeyBook`` it forged), a list
with millions of one-byte names (a 38 MB ``UnmaskRequest`` cost 811 MB of RSS), or a payload
far larger than anything this federation legitimately sends. Oracles: the direction table
against the protocol's message flow, caps and bounds recomputed from the config, and one
real round of each protection mode whose every message must still pass its receiver's checks.
"""

from __future__ import annotations

import hashlib
import types

import pytest
import torch

from fedmuscle_secure.crypto.secagg.messages import (
    AdvertiseKeys,
    ConsistencyCheck,
    ConsistencySignature,
    EncryptedShares,
    KeyBook,
    MaskedInput,
    SecAggSetup,
    ShareInbox,
    UnmaskRequest,
    UnmaskShares,
    frozen_map,
)
from fedmuscle_secure.errors import ProtocolError
from fedmuscle_secure.federation.ckks import ckks_parameters
from fedmuscle_secure.messages import (
    EncryptedRepresentations,
    PeerTerms,
    RoundReport,
    SecAggEnvelope,
)
from fedmuscle_secure.transport import codec as wire
from fedmuscle_secure.transport.chunks import Chunk
from fedmuscle_secure.transport.codec import DIRECTION, Direction
from fedmuscle_secure.transport.limits import CAPS, WireLimits, message_bounds, wire_limits
from fedmuscle_secure.transport.streams import Inbound, TransportOptions
from fedmuscle_secure.transport.wire_pb import fedmuscle_pb2 as pb
from helpers.tiny import tiny_config
from helpers.wire_samples import CKKS, PLAIN, fake_matrix

UP, DOWN = Direction.TO_SERVER, Direction.TO_CLIENT
CFG = tiny_config()              # N = 3 clients, per_batch: nb = 1
LIMITS = wire_limits(CFG)
ID = b"\x05" * 16


def _env(body, client: str = "c1") -> SecAggEnvelope:
    return SecAggEnvelope(client, 1, 0, 0, body)


ADVERT = AdvertiseKeys("c1", ID, b"\x01" * 32, b"\x02" * 32, b"\x03" * 64)
SECAGG = {
    "setup": _env(SecAggSetup("c1", ID, ("c1", "c2", "c3"), 2, 8)),
    "key_book": _env(KeyBook("c1", ID, (ADVERT,))),
    "share_inbox": _env(ShareInbox("c1", ID, frozen_map({"c2": b"x" * 40}))),
    "consistency_check": _env(ConsistencyCheck("c1", ID, ("c1", "c2"), ("c3",))),
    "unmask_request": _env(UnmaskRequest("c1", ID, ("c1", "c2"), ("c3",),
                                         frozen_map({"c1": b"\x04" * 64, "c2": b"\x05" * 64}))),
    "consistency_signature": _env(ConsistencySignature("c1", ID, b"\x06" * 64)),
    "advertise_keys": _env(ADVERT),
    "encrypted_shares": _env(EncryptedShares("c1", ID, frozen_map({"c2": b"y" * 40}))),
    "masked_input": _env(MaskedInput("c1", ID, torch.zeros(8, dtype=torch.int64))),
    "unmask_shares": _env(UnmaskShares("c1", ID, frozen_map({"c2": 7}), frozen_map({}))),
}
#: The protocol's flow, written out by hand: what a client sends.
CLIENT_SENDS = {"representations_per_epoch", "representations_batch_0", "round_report",
                "round_report_empty", "round_report_withheld", "leave", "advertise_keys",
                "encrypted_shares",
                "masked_input", "unmask_shares", "consistency_signature", "sit_out",
                "sit_out_per_epoch", "ckks:representations",
                "ckks:representations_no_q"}
ALL = {**PLAIN, **SECAGG, **{f"ckks:{k}": v for k, v in CKKS.items()}}


def _sent_by(name: str) -> Direction:
    return UP if name in CLIENT_SENDS else DOWN


def test_every_message_type_has_a_direction():
    """One entry per type that can travel: every Envelope member and every secagg stage."""
    assert set(DIRECTION) == (set(wire._ENVELOPE) - {SecAggEnvelope}) | set(wire._BODY)
    assert len({DIRECTION[type(m.body if isinstance(m, SecAggEnvelope) else m)]
                for m in ALL.values()}) == 2


@pytest.mark.parametrize("name", sorted(ALL))
def test_each_end_refuses_the_other_ends_messages(name):
    """A client that sends a server message (a forged RoundPlan, KeyBook, UnmaskRequest,
    SumTerms...) would have it decoded and handed on; now it is refused as from its sender."""
    msg = ALL[name]
    data = wire.encode(msg)
    sent = _sent_by(name)
    wire.decode(data, expect=sent, sender="peer")  # its own direction passes
    kind = type(msg.body if isinstance(msg, SecAggEnvelope) else msg).__name__
    with pytest.raises(ProtocolError, match=f"{kind} travels {sent.value}") as info:
        wire.decode(data, expect=UP if sent is DOWN else DOWN, sender="mallory")
    assert (info.value.peer, info.value.stage) == ("mallory", "decode")


def test_direction_is_refused_before_any_body_is_read(monkeypatch):
    """A wrong-direction message is refused from its tags alone: its (here broken, and over
    every cap) body is never walked, parsed or decoded."""
    plan = pb.Envelope.FromString(wire.encode(PLAIN["round_plan"]))
    plan.round_plan.batches.dtype = "float16"  # would be a body error
    plan.round_plan.batches.shape.extend([1] * 40)
    def forbidden(*args, **kwargs):
        raise AssertionError("the body was looked at")

    monkeypatch.setattr(wire, "scan", forbidden)
    monkeypatch.setattr(wire, "_from_proto", forbidden)
    with pytest.raises(ProtocolError, match="RoundPlan travels server → client"):
        wire.decode(plan.SerializeToString(), expect=UP, sender="a", limits=LIMITS)


def _names(n: int) -> tuple[str, ...]:
    return tuple(f"p{i}" for i in range(n))


N = len(CFG.clients)
OVER_CAP = {  # message over one cap of the tiny config, receiving direction, field at fault
    "survivors": (_env(UnmaskRequest("c1", ID, _names(N + 1), (), frozen_map({}))), DOWN,
                  "unmask_request.survivors: more than 3"),
    "signatures": (_env(UnmaskRequest("c1", ID, (), (), frozen_map(
        dict.fromkeys(_names(N + 1), b"s")))), DOWN, "unmask_request.signatures: more than 3"),
    "view": (_env(ConsistencyCheck("c1", ID, _names(N + 1), ())), DOWN,
             "consistency_check.survivors: more than 3"),
    "participants": (_env(SecAggSetup("c1", ID, _names(N + 1), 2, 8)), DOWN,
                     "setup.participants: more than 3"),
    "key_book": (_env(KeyBook("c1", ID, (ADVERT,) * (N + 1))), DOWN, "adverts: more than 3"),
    "seed_shares": (_env(UnmaskShares("c1", ID, frozen_map(dict.fromkeys(_names(N + 1), 1)),
                                      frozen_map({}))), UP, "seed_shares: more than 3"),
    "share_map": (_env(EncryptedShares("c1", ID, frozen_map(dict.fromkeys(_names(N + 1), b"z")))),
                  UP, "encrypted_shares.ciphertexts: more than 3"),
    "metrics": (RoundReport("c1", 1, {f"m{i}": 0.0 for i in range(65)}), UP,
                "metrics: more than 64"),
    "peer_groups": (PeerTerms("c1", 1, 0, 0, (("c2",),) * 2, torch.zeros(2, 1, 2, 2),
                              torch.zeros(2, 0, 2, 2)), DOWN, "peer_terms.peers: more than 1"),
    "group_names": (PeerTerms("c1", 1, 0, 0, (_names(N + 1),), torch.zeros(1, 1, 2, 2),
                              torch.zeros(1, 0, 2, 2)), DOWN, r"peers\[0\].names: more than 3"),
    "ciphertexts_outside_ckks": (EncryptedRepresentations("c1", 1, 0, 0, (fake_matrix(1),), ()),
                                 UP, "z\\[0\\].ciphertexts: more than 0"),
}


@pytest.mark.parametrize("case", sorted(OVER_CAP))
def test_repeated_fields_over_the_federations_caps_are_refused_before_parsing(case, monkeypatch):
    msg, direction, match = OVER_CAP[case]
    data = wire.encode(msg)
    parsed = types.SimpleNamespace(Envelope=_NeverParsed, SecAggEnvelope=pb.SecAggEnvelope)
    monkeypatch.setattr(wire, "pb", parsed)
    with pytest.raises(ProtocolError, match=match) as info:
        wire.decode(data, expect=direction, sender="peer", limits=LIMITS)
    assert (info.value.peer, info.value.stage) == ("wire", "decode")
    monkeypatch.undo()
    wire.decode(data, expect=direction, sender="peer")  # no limits: it would be accepted


class _NeverParsed:
    """Stands in for ``pb.Envelope``: its schema for the walk, no parser."""

    DESCRIPTOR = pb.Envelope.DESCRIPTOR

    def __init__(self) -> None:
        raise AssertionError("parsed although a cap was exceeded")


def test_a_packed_shape_over_its_cap_is_refused_before_parsing(monkeypatch):
    env = pb.Envelope.FromString(wire.encode(PLAIN["representations_batch_0"]))
    env.representations.z.shape[:] = [1] * 33
    monkeypatch.setattr(wire, "pb", types.SimpleNamespace(Envelope=_NeverParsed))
    with pytest.raises(ProtocolError, match=r"representations.z.shape: more than 32 entries"):
        wire.decode(env.SerializeToString(), expect=UP, sender="peer", limits=LIMITS)


def test_a_list_exactly_at_its_cap_is_accepted():
    for msg, direction in ((_env(UnmaskRequest("c1", ID, _names(N), (), frozen_map({}))), DOWN),
                           (RoundReport("c1", 1, {f"m{i}": 0.0 for i in range(64)}), UP)):
        wire.decode(wire.encode(msg), expect=direction, sender="peer", limits=LIMITS)


def _ld(number: int, body: bytes) -> bytes:
    assert len(body) < 128
    return bytes([number << 3 | 2, len(body)]) + body


FINISH = pb.Finish(client="c1", round=2).SerializeToString()
STRUCTURE = {  # bytes the parser would accept (keeping the last value or the unknown bytes)
    "two_messages": (wire.encode(PLAIN["finish"]) + wire.encode(PLAIN["leave"]),
                     "two members of oneof 'message'"),
    "field_twice": (_ld(14, FINISH + _ld(1, b"c9")), r"finish.client: appears twice"),
    "unknown_field": (wire.encode(PLAIN["finish"]) + b"\xf8\x07\x01", "unknown field number 127"),
    "wrong_wire_type": (_ld(14, FINISH + _ld(2, b"\x01")), r"finish.round: wire type 2"),
    "group": (b"\x0b\x0c", "wire type 3"),
}


@pytest.mark.parametrize("case", sorted(STRUCTURE))
def test_structure_the_encoder_never_writes_is_refused(case):
    data, match = STRUCTURE[case]
    with pytest.raises(ProtocolError, match=match):
        wire.decode(data)


# --- the payload limit, derived from the config ---------------------------------------------


def test_every_repeated_field_of_the_schema_has_its_cap():
    """The caps table names real fields; every other repeated field is a client list."""
    seen, todo = set(), [pb.Envelope.DESCRIPTOR]
    repeated = set()
    while todo:
        d = todo.pop()
        if d.full_name in seen:
            continue
        seen.add(d.full_name)
        for f in d.fields:
            if f.is_repeated:
                repeated.add((d.name, f.name))
            if f.message_type is not None:
                todo.append(f.message_type)
    assert set(CAPS) <= repeated
    assert repeated - set(CAPS) == {
        ("Names", "names"), ("RoundPlan", "members"), ("SumTerms", "peers"),
        ("SecAggSetup", "participants"),
        ("KeyBook", "adverts"), ("ShareInbox", "ciphertexts"), ("EncryptedShares", "ciphertexts"),
        ("UnmaskRequest", "survivors"), ("UnmaskRequest", "dropped"),
        ("UnmaskRequest", "signatures"), ("ConsistencyCheck", "survivors"),
        ("ConsistencyCheck", "dropped"),
        ("UnmaskShares", "seed_shares"), ("UnmaskShares", "key_shares"),
        ("EncryptedMatrices", "matrices")}


def test_the_payload_limit_follows_the_config():
    """1.5 × the largest message bound + 1 MiB, recomputed here from the shapes."""
    per_epoch = tiny_config(**{"muscle.exchange": "per_epoch"})
    b, d, m = 32, 16, 2
    nb = 96 // b
    assert message_bounds(CFG)["PeerTerms"] == (m * b * d + 1 * b * b) * 8
    assert message_bounds(per_epoch)["PeerTerms"] == nb * (m * b * d + 1 * b * b) * 8
    for cfg in (CFG, per_epoch):
        limits = wire_limits(cfg)
        assert limits.max_payload_bytes == int(1.5 * max(message_bounds(cfg).values())) + (1 << 20)
        assert limits.max_payload_bytes < 2 << 20  # not 1 GiB
    assert (wire_limits(per_epoch).clients, wire_limits(per_epoch).batches) == (3, nb)
    assert TransportOptions().payload_limit(LIMITS) == LIMITS.max_payload_bytes
    assert TransportOptions(max_payload_bytes=5 << 20).payload_limit(LIMITS) == 5 << 20


def _hostile_chunks(names: int, size: int = 1 << 20):
    """A client's 3 MB UnmaskRequest (one-byte names), chunk by chunk as they would arrive."""
    body = pb.UnmaskRequest(recipient="a", instance_id=ID).SerializeToString() + b"\x1a\x01x" * names
    env = pb.SecAggEnvelope(client="a", round=1, epoch=0, batch=0).SerializeToString()
    inner = env + b"\x42" + _varint(len(body)) + body
    data = b"\x4a" + _varint(len(inner)) + inner
    digest, total = hashlib.sha256(data).digest(), -(-len(data) // size)
    for i in range(total):
        yield Chunk(stream_id="a-0", index=i, total=total, sha256_of_whole=digest,
                    data=data[i * size:(i + 1) * size])


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n >> 7 else 0))
        n >>= 7
        if not n:
            return bytes(out)


def test_an_oversize_list_is_refused_while_reassembling_under_the_derived_limit():
    inbound = Inbound(TransportOptions(), LIMITS, expect=DOWN, sender="server")
    with pytest.raises(ProtocolError, match="oversize") as info:
        for i, piece in enumerate(_hostile_chunks(1_000_000)):  # noqa: B007 (read below)
            inbound.add(piece)
    assert i <= LIMITS.max_payload_bytes // (1 << 20) + 1  # refused at the limit, not the end
    assert info.value.stage == "reassemble"


@pytest.mark.parametrize(("expect", "match"), [(UP, "UnmaskRequest travels server → client"),
                                               (DOWN, "survivors: more than 3 entries")])
def test_with_the_limit_overridden_the_scan_still_refuses_it(expect, match):
    inbound = Inbound(TransportOptions(max_payload_bytes=8 << 20), LIMITS, expect=expect,
                      sender="peer")
    with pytest.raises(ProtocolError, match=match):
        for piece in _hostile_chunks(1_000_000):
            inbound.add(piece)


def test_wire_limits_refuse_nonsense():
    with pytest.raises(ValueError, match="clients"):
        WireLimits(clients=-1, batches=1, ciphertexts=0, max_payload_bytes=1)


def test_ckks_limits_need_the_federations_parameters():
    """The transport does not derive CKKS parameters from a config: its caller passes them."""
    cfg = tiny_config(protection="ckks")
    with pytest.raises(ValueError, match="CKKS parameters"):
        wire_limits(cfg)
    assert wire_limits(cfg, ckks_parameters(cfg, None)).ciphertexts >= 1
