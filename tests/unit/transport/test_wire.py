"""Wire format (DESIGN §6): exact round trips of every protocol message through protobuf bytes,
every decode and reassembly refusal, chunking, and the committed generated code matching
``proto/fedmuscle.proto``.

Oracles: the original dataclasses (compared field by field, tensors and floats bit for bit)
and the real secure-aggregation / CKKS state machines, which must still work on what the
wire hands them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import struct
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmuscle_secure.crypto.ckks import (
    CkksParameters,
    SecretContext,
    decrypt_matrix,
    decrypt_row_values,
    encrypt_matrix,
    encrypt_row_values,
)
from fedmuscle_secure.crypto.secagg.client import SecAggClient
from fedmuscle_secure.crypto.secagg.messages import (
    AdvertiseKeys,
    ConsistencyCheck,
    ConsistencySignature,
    EncryptedShares,
    KeyBook,
    MaskedInput,
    SecAggSetup,
    SecAggStage,
    ShareInbox,
    UnmaskRequest,
    UnmaskShares,
    frozen_map,
)
from fedmuscle_secure.crypto.secagg.server import SecAggServer
from fedmuscle_secure.crypto.secagg.shamir import PRIME_256
from fedmuscle_secure.crypto.secagg.sum_encoding import SumEncoding
from fedmuscle_secure.errors import ProtocolError
from fedmuscle_secure.messages import (
    EncryptedRepresentations,
    EncryptedSums,
    Representations,
    RoundPlan,
    SecAggEnvelope,
)
from fedmuscle_secure.transport import codec as wire
from fedmuscle_secure.transport.chunks import Chunk, Reassembler, chunk
from fedmuscle_secure.transport.wire_pb import _generate
from fedmuscle_secure.transport.wire_pb import fedmuscle_pb2 as pb
from helpers.wire_samples import (
    CKKS,
    GEN,
    PLAIN,
    fake_rows,
    randn,
    unit_rows,
)


def assert_same(got: object, want: object, where: str = "msg") -> None:
    """Deep equality with types: tensors and floats bit for bit, tuples stay tuples,
    read-only maps stay read-only."""
    assert type(got) is type(want), f"{where}: {type(got).__name__} != {type(want).__name__}"
    if isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype and got.shape == want.shape, where
        assert got.numpy().tobytes() == want.detach().contiguous().numpy().tobytes(), where
    elif dataclasses.is_dataclass(want):
        for f in dataclasses.fields(want):
            assert_same(getattr(got, f.name), getattr(want, f.name), f"{where}.{f.name}")
    elif isinstance(want, tuple):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, (dict, MappingProxyType)):
        assert list(got) == list(want), f"{where}: keys (in order)"
        for k in want:
            assert_same(got[k], want[k], f"{where}[{k!r}]")
    elif isinstance(want, float):
        assert struct.pack("<d", got) == struct.pack("<d", want), f"{where}: {got} != {want}"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def round_trip(msg: object) -> object:
    data = wire.encode(msg)
    assert isinstance(data, bytes) and data == wire.encode(msg)  # deterministic
    back = wire.decode(data)
    assert_same(back, msg)
    return back




@pytest.mark.parametrize("name", sorted(PLAIN))
def test_plain_message_round_trip(name):
    round_trip(PLAIN[name])


def test_batch_none_and_batch_zero_stay_apart():
    assert wire.decode(wire.encode(PLAIN["representations_per_epoch"])).batch is None
    assert wire.decode(wire.encode(PLAIN["representations_batch_0"])).batch == 0


def test_non_contiguous_and_grad_tensors_travel_as_their_values():
    z = randn(5, 3).t().requires_grad_(True)  # a transposed view, with autograd
    back = wire.decode(wire.encode(Representations("c1", 0, 0, 0, z)))
    assert back.z.is_contiguous() and not back.z.requires_grad
    assert torch.equal(back.z, z.detach())


DTYPE_STRATEGY = st.sampled_from(sorted(wire.DTYPES))
SHAPES = st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple)


@settings(max_examples=150, deadline=None)
@given(dtype=DTYPE_STRATEGY, shape=SHAPES, data=st.data())
def test_tensor_encoding_is_bit_exact(dtype, shape, data):
    """Any bit pattern (NaN payloads, -0.0, subnormals, int64 extremes) comes back unchanged."""
    torch_dtype, np_dtype = wire.DTYPES[dtype]
    raw = data.draw(st.binary(min_size=math.prod(shape) * np_dtype.itemsize,
                              max_size=math.prod(shape) * np_dtype.itemsize))
    t = torch.from_numpy(np.frombuffer(raw, dtype=np_dtype).reshape(shape).copy())
    p = pb.Tensor.FromString(wire.tensor_to_proto(t).SerializeToString())
    assert p.dtype == dtype and tuple(p.shape) == shape and p.data == raw
    back = wire.tensor_from_proto(p)
    assert back.dtype == torch_dtype and tuple(back.shape) == shape
    assert back.numpy().tobytes() == raw
    back.add_(0)  # a fresh, writable tensor, not a view of the received bytes


# --- secure aggregation: a real mini instance whose every message crosses the wire --------


def test_secagg_instance_runs_through_the_wire():
    """4 clients, threshold 3, c3 drops before its masked input: every stage message type
    (key shares of the dropped client and the consistency round's signatures included) is
    encoded, decoded and checked equal, and the decoded messages drive the real state
    machines to the exact sum."""
    names = ("c0", "c1", "c2", "c3")
    ids = {c: Ed25519PrivateKey.generate() for c in names}
    pubs = {c: k.public_key() for c, k in ids.items()}
    encoding = SumEncoding(batches=1, rows=2, dim=3, group_size=4, value_clip=1.0,
                           sq_norm_clip=1.0)
    length = encoding.vector_length
    vectors = {c: torch.randint(-2**63, 2**63 - 1, (length,), generator=GEN) for c in names}
    vectors["c0"][0], vectors["c1"][0] = 2**63 - 1, 2**63 - 1  # the sum wraps
    server = SecAggServer(names, 3, length, identities=pubs)
    seen: dict[type, list] = {}

    def cross(client: str, body: object, enc: SumEncoding | None = None) -> object:
        env = SecAggEnvelope(client, 5, 1, None if enc else 0, body, enc)
        seen.setdefault(type(body), []).append(body)
        back = round_trip(env)
        return back.body

    clients = {}
    for setup in server.start():
        setup = cross(setup.recipient, setup, encoding)
        clients[setup.recipient] = SecAggClient(setup.recipient, ids[setup.recipient], pubs,
                                                setup, vectors[setup.recipient])
    pending = []
    for c in clients.values():
        pending += server.receive(cross(c.name, c.advertise()))
    while server.stage not in (SecAggStage.DONE, SecAggStage.ABORTED):
        if not pending:
            pending = server.close_stage()  # the deadline passes: c3 is dropped
            continue
        msg = cross(pending[0].recipient, pending.pop(0))
        reply = clients[msg.recipient].handle(msg)
        if isinstance(reply, MaskedInput) and reply.sender == "c3":
            continue  # c3 goes silent
        pending += server.receive(cross(reply.sender, reply))
    assert server.stage is SecAggStage.DONE
    expected = (vectors["c0"].tolist()[i] + vectors["c1"].tolist()[i] + vectors["c2"].tolist()[i]
                for i in range(length))
    assert server.result.tolist() == [(v + 2**63) % 2**64 - 2**63 for v in expected]
    assert set(seen) == {SecAggSetup, KeyBook, ShareInbox, ConsistencyCheck, UnmaskRequest,
                         AdvertiseKeys, EncryptedShares, MaskedInput, ConsistencySignature,
                         UnmaskShares}
    assert all(len(u.signatures) == 3 for u in seen[UnmaskRequest])
    assert any(u.key_shares for u in seen[UnmaskShares])  # the dropped client's key shares


def test_unmask_shares_extremes_and_frozen_maps():
    shares = UnmaskShares("c0", b"\x07" * 32, frozen_map({"c0": 0, "c1": PRIME_256 - 1}),
                          frozen_map({"c2": 2**256 + 12345}))
    back = round_trip(SecAggEnvelope("c0", 1, 0, 3, shares))
    assert isinstance(back.body.seed_shares, MappingProxyType)
    with pytest.raises(TypeError):
        back.body.seed_shares["c9"] = 1  # read-only, as the state machines built it


# --- CKKS -----------------------------------------------------------------------------------



@pytest.mark.parametrize("name", sorted(CKKS))
def test_ckks_message_round_trip(name):
    round_trip(CKKS[name])


def test_real_ckks_ciphertexts_survive_wire_and_chunking():
    """TenSEAL ciphertexts (~235 KB each) chunked at 64 KiB, reassembled, decrypted."""
    secret = SecretContext.create(CkksParameters.default_for(packed_length=8, depth=1,
                                                             galois_keys=False))
    z = unit_rows(6, 5).double()
    q = (z * z).sum(-1)
    msg = EncryptedRepresentations("c1", 0, 0, None, (encrypt_matrix(secret, z),),
                                   (encrypt_row_values(secret, q, cols=5),))
    payload = wire.encode(msg)
    pieces = chunk(payload, stream_id="c1/0/0", max_chunk_bytes=64 * 1024)
    assert len(pieces) > 2 and all(len(p.data) <= 64 * 1024 for p in pieces)
    box = Reassembler(max_total_bytes=max(len(payload), 4))  # exactly enough for both
    out = [box.add(Chunk.FromString(p.SerializeToString())) for p in pieces]
    assert out[:-1] == [None] * (len(pieces) - 1) and out[-1] == payload
    back = wire.decode(out[-1])
    assert_same(back, msg)
    assert torch.allclose(decrypt_matrix(secret, back.z[0]), z, atol=1e-6)
    assert torch.allclose(decrypt_row_values(secret, back.sq_norms[0]), q, atol=1e-6)


# --- decode refusals -------------------------------------------------------------------------


def mutated(msg: object, edit: Callable[[pb.Envelope], object]) -> bytes:
    env = pb.Envelope.FromString(wire.encode(msg))
    edit(env)
    return env.SerializeToString()


def refused(data: object, match: str) -> None:
    with pytest.raises(ProtocolError, match=match) as info:
        wire.decode(data)
    assert (info.value.peer, info.value.stage) == ("wire", "decode")


REPS = PLAIN["representations_batch_0"]
SHARES = SecAggEnvelope("c0", 1, 0, None, UnmaskShares("c0", b"\x01" * 32,
                                                       frozen_map({"c1": 5}), frozen_map({})))


def _set_share(env: pb.Envelope, share: bytes) -> None:
    env.secagg.unmask_shares.seed_shares[0].share = share


DECODE_REFUSALS = {
    "garbage": (lambda: b"\xff\xff\xff", "not a fedmuscle.v1.Envelope"),
    "empty_envelope": (lambda: b"", "oneof message is empty"),
    "not_bytes": (lambda: "text", "expected bytes"),
    "unknown_dtype": (lambda: mutated(REPS, lambda e: setattr(e.representations.z, "dtype",
                                                              "float16")), "'float16' is not"),
    "empty_dtype": (lambda: mutated(REPS, lambda e: setattr(e.representations.z, "dtype", "")),
                    "dtype '' is not allowed"),
    "too_few_bytes": (lambda: mutated(REPS, lambda e: setattr(
        e.representations.z, "data", e.representations.z.data[:-1])), r"needs 160 bytes, got 159"),
    "too_many_bytes": (lambda: mutated(REPS, lambda e: setattr(
        e.representations.z, "data", e.representations.z.data + b"\0")), "got 161"),
    "shape_mismatch": (lambda: mutated(REPS, lambda e: e.representations.z.shape.append(2)),
                       "needs 320 bytes"),
    "negative_dim": (lambda: mutated(REPS, lambda e: e.representations.z.shape.__setitem__(
        slice(None), [-1, -8, 5])), "negative dimension"),
    "huge_empty_shape": (lambda: mutated(REPS, lambda e: (
        e.representations.z.shape.__setitem__(slice(None), [0, 2**62]),
        setattr(e.representations.z, "data", b""))), "cannot be built"),
    "too_many_dims": (lambda: mutated(REPS, lambda e: (
        e.representations.z.shape.__setitem__(slice(None), [1] * 40),
        setattr(e.representations.z, "data", b"\0" * 4))), "at most 32"),
    "missing_tensor": (lambda: mutated(REPS, lambda e: e.representations.ClearField("z")),
                       r"Representations\.z: missing"),
    "empty_client": (lambda: mutated(REPS, lambda e: setattr(e.representations, "client", "")),
                     r"Representations\.client: missing"),
    "missing_secagg_body": (lambda: mutated(SHARES, lambda e: e.secagg.ClearField("unmask_shares")),
                            "oneof body is empty"),
    "short_share": (lambda: mutated(SHARES, lambda e: _set_share(e, b"\0" * 65)),
                    "must be 66 bytes, got 65"),
    "long_share": (lambda: mutated(SHARES, lambda e: _set_share(e, b"\0" * 67)),
                   "must be 66 bytes, got 67"),
    "share_above_prime": (lambda: mutated(SHARES, lambda e: _set_share(
        e, PRIME_256.to_bytes(66, "big"))), "not below the field prime"),
    "duplicate_share_peer": (lambda: mutated(SHARES, lambda e: e.secagg.unmask_shares.seed_shares.add(
        peer="c1", share=b"\0" * 66)), r"'c1' appears twice"),
    "duplicate_ciphertext_peer": (lambda: mutated(
        SecAggEnvelope("c0", 1, 0, 0, ShareInbox("c0", b"\x02" * 32, frozen_map({"c1": b"x"}))),
        lambda e: e.secagg.share_inbox.ciphertexts.add(peer="c1", ciphertext=b"y")), "twice"),
    "duplicate_metric": (lambda: mutated(PLAIN["round_report"], lambda e: e.round_report.metrics.add(
        name="cl_loss", value=1.0)), r"'cl_loss' appears twice"),
    "withheld_and_sent": (lambda: mutated(PLAIN["round_report_withheld"], lambda e: e.round_report
                                          .withheld.append("eps_record")),
                          "not among the metrics sent"),
    "bad_sum_encoding": (lambda: mutated(
        SecAggEnvelope("c0", 1, 0, None, SecAggSetup("c0", b"\x03" * 32, ("c0", "c1"), 2, 8),
                       SumEncoding(1, 2, 3, 2, 1.0, 1.0)),
        lambda e: setattr(e.secagg.encoding, "batches", 0)), "batches must be a positive"),
    "bad_row_stride": (lambda: mutated(CKKS["sums"], lambda e: setattr(
        e.encrypted_sums.peer_sum[0].layout, "row_stride", 3)), "row stride must be"),
    "ciphertext_count": (lambda: mutated(CKKS["sums"], lambda e: e.encrypted_sums.peer_sum[0]
                                         .ciphertexts.pop()), "2 ciphertexts for 5 rows"),
    "missing_layout": (lambda: mutated(CKKS["peers"], lambda e: e.encrypted_peers.matrices[1]
                                       .matrices[0].ClearField("layout")),
                       r"matrices\[1\]\[0\]\.layout: missing"),
}


@pytest.mark.parametrize("case", sorted(DECODE_REFUSALS))
def test_decode_refuses(case):
    make, match = DECODE_REFUSALS[case]
    refused(make(), match)


ENCODE_REFUSALS = {
    "not_a_message": (object(), "not a protocol message"),
    "float16": (Representations("c1", 0, 0, 0, torch.zeros(2, dtype=torch.float16)), "float16"),
    "int32": (RoundPlan("c1", 0, "per_batch", torch.zeros(2, dtype=torch.int32)), "int32"),
    "share_above_prime": (SecAggEnvelope("c0", 0, 0, 0, UnmaskShares(
        "c0", b"", frozen_map({"c1": PRIME_256}), frozen_map({}))), r"\[0, 2\*\*521 - 1\)"),
    "negative_share": (SecAggEnvelope("c0", 0, 0, 0, UnmaskShares(
        "c0", b"", frozen_map({}), frozen_map({"c1": -1}))), "a share must be"),
    "wrong_body": (SecAggEnvelope("c0", 0, 0, 0, PLAIN["leave"]), "not a secagg stage message"),
    "row_values_as_matrix": (EncryptedSums("c1", 0, 0, 0, (), (fake_rows(1),), ()),
                             r"peer_sum\[0\]: expected a EncryptedMatrix"),
    "tensor_as_list": (Representations("c1", 0, 0, 0, [1.0, 2.0]), "expected a torch.Tensor"),
}


@pytest.mark.parametrize("case", sorted(ENCODE_REFUSALS))
def test_encode_refuses(case):
    msg, match = ENCODE_REFUSALS[case]
    with pytest.raises(ProtocolError, match=match) as info:
        wire.encode(msg)
    assert (info.value.peer, info.value.stage) == ("wire", "encode")


# --- chunking ---------------------------------------------------------------------------------


def test_chunking_a_payload_larger_than_one_chunk():
    msg = Representations("c1", 1, 0, None, randn(4, 64, 32))
    payload = wire.encode(msg)
    pieces = chunk(payload, stream_id="s1", max_chunk_bytes=4096)
    assert len(pieces) == -(-len(payload) // 4096) > 1
    assert all(len(p.data) <= 4096 and p.total == len(pieces) for p in pieces)
    assert [p.index for p in pieces] == list(range(len(pieces)))
    assert {p.sha256_of_whole for p in pieces} == {hashlib.sha256(payload).digest()}
    box = Reassembler(max_total_bytes=1 << 20)
    *partial, whole = [box.add(p) for p in pieces]
    assert partial == [None] * len(partial) and whole == payload and box.in_progress is None
    assert_same(wire.decode(whole), msg)


@settings(max_examples=60, deadline=None)
@given(payload=st.binary(max_size=300), size=st.integers(1, 64))
def test_chunk_then_reassemble_is_identity(payload, size):
    box = Reassembler(max_total_bytes=max(len(payload), 4))  # exactly enough for both
    pieces = chunk(payload, stream_id="p", max_chunk_bytes=size)
    assert len(pieces) == max(1, -(-len(payload) // size))
    results = [box.add(p) for p in pieces] + [box.add(p) for p in chunk(b"next", stream_id="q",
                                                                          max_chunk_bytes=size)]
    assert [r for r in results if r is not None] == [payload, b"next"]


@pytest.mark.parametrize("bad", [{"stream_id": ""}, {"max_chunk_bytes": 0},
                                 {"max_chunk_bytes": True}])
def test_chunk_refuses_bad_arguments(bad):
    with pytest.raises(ValueError):
        chunk(b"abc", **{"stream_id": "s", "max_chunk_bytes": 2, **bad})


PAYLOAD = bytes(range(256)) * 4  # 1024 bytes → 8 chunks of 128


def pieces_of(payload: bytes = PAYLOAD, stream_id: str = "s7") -> list[Chunk]:
    return chunk(payload, stream_id=stream_id, max_chunk_bytes=128)


def edited(p: Chunk, **changes: object) -> Chunk:
    out = Chunk()
    out.CopyFrom(p)
    for k, v in changes.items():
        setattr(out, k, v)
    return out


def corrupt_last(ps: list[Chunk]) -> list[Chunk]:
    data = bytearray(ps[-1].data)
    data[0] ^= 1
    return [*ps[:-1], edited(ps[-1], data=bytes(data))]


REASSEMBLY_REFUSALS = {
    "out_of_order": (lambda ps: [ps[0], ps[2]], "out-of-order chunk 2 \\(expected chunk 1\\)"),
    "starts_mid_stream": (lambda ps: [ps[1]], "out-of-order chunk 1 \\(expected chunk 0\\)"),
    "duplicate": (lambda ps: [ps[0], ps[1], ps[1]], "duplicate chunk 1"),
    "index_not_below_total": (lambda ps: [ps[0], edited(ps[1], index=8)], "index 8 >= total 8"),
    "total_changed": (lambda ps: [ps[0], edited(ps[1], total=9)],
                      "total changed mid-stream from 8 to 9"),
    "digest_changed": (lambda ps: [ps[0], edited(ps[1], sha256_of_whole=b"\0" * 32)],
                       "sha256_of_whole changed mid-stream"),
    "bad_digest_length": (lambda ps: [edited(ps[0], sha256_of_whole=b"\0" * 31)],
                          "31 bytes, expected 32"),
    "zero_total": (lambda ps: [edited(ps[0], total=0)], "at least one chunk"),
    "no_stream_id": (lambda ps: [edited(ps[0], stream_id="")], "without a stream id"),
    "truncated_by_next_stream": (lambda ps: [*ps[:3], pieces_of(b"x", "s8")[0]],
                                 "truncated: 3 of 8 chunks"),
    "corrupted": (corrupt_last, "does not match sha256_of_whole"),
    "short_last_chunk": (lambda ps: [*ps[:-1], edited(ps[-1], data=ps[-1].data[:-1])],
                         "truncated or corrupted"),
    "empty_chunk": (lambda ps: [ps[0], edited(ps[1], data=b"")], "empty chunk 1"),
    "oversize": (lambda ps: ps, "oversize: 1024 bytes so far, at most 1000"),
}


@pytest.mark.parametrize("case", sorted(REASSEMBLY_REFUSALS))
def test_reassembler_refuses(case):
    make, match = REASSEMBLY_REFUSALS[case]
    box = Reassembler(max_total_bytes=1000 if case == "oversize" else len(PAYLOAD))
    sequence = make(pieces_of())
    for p in sequence[:-1]:
        assert box.add(p) is None
    with pytest.raises(ProtocolError, match=match) as info:
        box.add(sequence[-1])
    assert info.value.peer == "wire" and "stream '" in str(info.value)
    assert box.in_progress is None  # the partial stream is dropped...
    assert box.add(chunk(b"ok", stream_id="fresh", max_chunk_bytes=128)[0]) == b"ok"  # ...usable


def test_oversize_is_checked_before_buffering():
    box = Reassembler(max_total_bytes=100)
    with pytest.raises(ProtocolError, match="oversize: 128 bytes"):
        box.add(pieces_of()[0])  # the first chunk alone exceeds the limit
    assert box.in_progress is None and box._parts == []


# --- generated code -------------------------------------------------------------------------


def test_committed_generated_code_matches_the_proto(tmp_path: Path):
    """Regenerating from proto/fedmuscle.proto gives exactly the committed files; if not,
    run ``python -m fedmuscle_secure.transport.wire_pb`` and commit the result."""
    written = _generate.generate(tmp_path)
    assert [p.name for p in written] == list(_generate.GENERATED)
    for p in written:
        committed = _generate.PACKAGE_DIR / p.name
        assert p.read_bytes() == committed.read_bytes(), f"{committed} is stale"


def test_grpc_service_is_a_bidirectional_chunk_stream():
    from fedmuscle_secure.transport.wire_pb import (
        fedmuscle_pb2_grpc as rpc,  # package-relative import
    )

    method = pb.DESCRIPTOR.services_by_name["FedMuscle"].methods_by_name["Stream"]
    assert method.client_streaming and method.server_streaming
    assert method.input_type.name == method.output_type.name == "Chunk"
    assert callable(rpc.add_FedMuscleServicer_to_server) and rpc.FedMuscleStub
    assert pb.DESCRIPTOR.package == "fedmuscle.v1"


def test_every_message_kind_has_an_envelope_field():
    """One Envelope oneof field per protocol message (and nothing else in the oneof)."""
    oneof = pb.Envelope.DESCRIPTOR.oneofs_by_name["message"]
    kinds = {type(m) for m in (*PLAIN.values(), *CKKS.values())} | {SecAggEnvelope}
    assert len(oneof.fields) == len(kinds) == 15


#: Every way received bytes could be unpickled, by module and attribute: the Python and C
#: pickle implementations (``pickle.loads`` is ``_pickle.loads``), marshal, torch's and
#: numpy's loaders (``np.load`` unpickles object arrays).
UNPICKLERS = (("pickle", "loads"), ("pickle", "load"), ("pickle", "Unpickler"),
              ("pickle", "_loads"), ("pickle", "_load"), ("pickle", "_Unpickler"),
              ("_pickle", "loads"), ("_pickle", "load"), ("_pickle", "Unpickler"),
              ("marshal", "loads"), ("marshal", "load"), ("torch", "load"),
              ("torch.serialization", "load"), ("numpy", "load"))
#: Audit hooks cannot be removed: one is installed once and records ``pickle.find_class``
#: (raised by any unpickler resolving a global) only while a test has armed it.
_AUDIT: dict = {"calls": None, "installed": False}


def _audit_hook(event: str, args: tuple) -> None:
    if event == "pickle.find_class" and _AUDIT["calls"] is not None:
        _AUDIT["calls"].append(f"pickle.find_class{args}")


def _forbid_unpickling(monkeypatch) -> list[str]:
    """Replace every unpickler, in its module and wherever a project module bound it by name,
    with a tripwire that records the call and raises, and arm the audit hook. Returns the
    list the calls are recorded in."""
    import importlib
    import sys

    calls: list[str] = []

    def tripwire(name):
        def call(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} called on received data")
        return call

    originals = {}
    for module, attr in UNPICKLERS:
        mod = importlib.import_module(module)
        originals[id(getattr(mod, attr))] = f"{module}.{attr}"
        monkeypatch.setattr(mod, attr, tripwire(f"{module}.{attr}"))
    for name, mod in list(sys.modules.items()):  # `from pickle import loads` style bindings
        if name.startswith("fedmuscle_secure") and mod is not None:
            for attr, value in list(vars(mod).items()):
                if id(value) in originals:
                    monkeypatch.setattr(mod, attr, tripwire(f"{name}.{attr}"))
    if not _AUDIT["installed"]:
        sys.addaudithook(_audit_hook)
        _AUDIT["installed"] = True
    monkeypatch.setitem(_AUDIT, "calls", calls)
    return calls


def _decode_all(calls: list[str]) -> None:
    for msg in ALL_MESSAGES:
        try:
            assert_same(wire.decode(wire.encode(msg)), msg)
        except AssertionError:
            if not calls:
                raise
    assert calls == [], f"received bytes reached an unpickler: {calls}"


def test_decode_never_unpickles(monkeypatch):
    """Received bytes never reach pickle, marshal, torch.load or np.load (design.md §13.5):
    every message kind is decoded with all of them replaced by tripwires."""
    _decode_all(_forbid_unpickling(monkeypatch))


@pytest.mark.parametrize("how", ["module attribute", "bound by name", "find_class"])
def test_the_unpickling_tripwire_fires(monkeypatch, how):
    """The check above can fail: a tensor decoder that unpickles, through the module, through
    a name bound at import, or through an unpickler the tripwires do not replace, is caught."""
    import io
    import pickle

    from fedmuscle_secure.transport import fields as wire_fields
    from fedmuscle_secure.transport import tensor as wire_tensor
    unpickler = pickle._Unpickler  # the pure-Python class, taken before the tripwires
    if how == "bound by name":
        monkeypatch.setattr(wire_tensor, "loads", pickle.loads, raising=False)
    calls = _forbid_unpickling(monkeypatch)
    real = wire_tensor.tensor_from_proto

    def unpickling(p, *args, **kwargs):
        data = pickle.dumps(len)
        try:
            if how == "module attribute":
                pickle.loads(data)
            elif how == "bound by name":
                wire_tensor.loads(data)
            else:
                unpickler(io.BytesIO(data)).load()
        except AssertionError:
            pass  # a decoder may swallow errors: the recorded call still fails the check
        return real(p, *args, **kwargs)

    monkeypatch.setattr(wire_fields, "tensor_from_proto", unpickling)  # the tensor field kind
    with pytest.raises(AssertionError, match="reached an unpickler"):
        _decode_all(calls)


ALL_MESSAGES = [*PLAIN.values(), *CKKS.values(), SHARES]


@settings(max_examples=300, deadline=None)
@given(which=st.integers(0, len(ALL_MESSAGES) - 1), data=st.data())
def test_damaged_bytes_decode_or_raise_protocol_error(which, data):
    """Flipped, cut or random bytes: decode returns a message or raises ProtocolError, never
    a library error (TypeError, ValueError, DecodeError, ...)."""
    raw = bytearray(wire.encode(ALL_MESSAGES[which]))
    action = data.draw(st.sampled_from(["flip", "cut", "random"]))
    if action == "flip":
        for i in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=4)):
            raw[i] ^= data.draw(st.integers(1, 255))
    elif action == "cut":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        raw = bytearray(data.draw(st.binary(max_size=200)))
    try:
        wire.decode(bytes(raw))
    except ProtocolError as e:
        assert (e.peer, e.stage) == ("wire", "decode")
