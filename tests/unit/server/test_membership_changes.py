"""Membership changes of a deployed run, without processes (DESIGN §6).

The adversaries: an organisation whose certificate the CA revoked mid-run and that keeps
its open stream to go on releasing (the server read its CRL once at start, so it kept
sending: three more receipts); and whoever can write the server's ``crl.pem`` and replaces
it (garbage, a CRL of another CA, a genuine CRL with a forged entry list, or the genuine
CRL of before the revocation) to have a revoked member accepted again or to crash the
server. Also the operator's side: the quorum a run starts with (``deployment.min_clients``)
and ``server --resume --exclude``. The coordinator is driven as the gRPC servicer drives it
(``connect`` / ``submit``), with the real state machines on both sides.
"""

from __future__ import annotations

import shutil

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedmuscle_secure.errors import ConfigError, IdentityError, QuorumLost
from fedmuscle_secure.experiment.summary import write_summary
from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.messages import SecAggEnvelope, SumTerms
from fedmuscle_secure.provision import ca as pki
from fedmuscle_secure.provision import revocation
from fedmuscle_secure.server.coordinator import Abort, Coordinator, TransportError
from fedmuscle_secure.server.grpc.membership import (
    EXCLUDED,
    barred_on_resume,
    final_row_metrics,
    resolve_exclusions,
)
from fedmuscle_secure.server.grpc.servicer import stream_failure
from fedmuscle_secure.simulator import build_federation
from fedmuscle_secure.transport.tls_trust import CRL_FILE
from fedmuscle_secure.transport.trust_reload import LiveTrust
from helpers.deploy_driver import provision
from helpers.tiny import tiny_config

FOUR = [{"name": "a", "model": "test_resnet", "image_size": 8, "task": "coarse"},
        {"name": "b", "model": "test_resnet", "image_size": 8, "task": "attributes"},
        {"name": "c", "model": "resnet10t", "image_size": 8, "task": "digit10",
         "projection": {"kind": "linear"}},
        {"name": "d", "model": "test_resnet", "image_size": 8, "task": "digit10"}]


def _secagg(**over):
    return tiny_config(clients=FOUR, protection="secagg", compare_local=False, **{
        "muscle.method": "muscle_sum", "muscle.exchange": "per_batch", "training.rounds": 1,
        "data.public_size": 64, **over})


def _cert(certs, org: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((certs / "orgs" / org / f"{org}.crt").read_bytes())


# --- the CRL follows its file ---------------------------------------------------------------


@pytest.fixture
def pki_dir(tmp_path):
    return provision(tmp_path, orgs=("a", "b", "c", "d"))


def test_a_revocation_after_the_start_is_seen_by_new_connections_and_connected_members(pki_dir):
    events: list[tuple[str, dict]] = []
    live = LiveTrust(pki_dir, on_event=lambda kind, **f: events.append((kind, f)))
    at_start = pki.load_trust(pki_dir)  # what the server used to keep for the whole run
    pem = (pki_dir / "orgs" / "d" / "d.crt").read_bytes()
    assert live.verify_peer(pem) == "d" and live.revoked({"d": _cert(pki_dir, "d")}) == {}
    revocation.revoke(pki_dir, "d", reason=x509.ReasonFlags.key_compromise)
    assert at_start.verify_peer(pem) == "d"  # a copy read once never learns of it
    with pytest.raises(IdentityError, match="revoked on .* keyCompromise"):
        live.verify_peer(pem)  # a new connection
    found = live.revoked({c: _cert(pki_dir, c) for c in "abcd"})  # the connected members
    assert list(found) == ["d"] and "keyCompromise" in found["d"]
    assert [k for k, _ in events] == ["crl_reloaded"] and events[0][1]["revoked"] == 1


def _foreign_crl(pki_dir):
    """Same issuer name, signed by another key: an empty CRL that would un-revoke d."""
    ca = pki.load_authority(pki_dir)
    other = pki.new_authority(ca.federation, days=30)
    forged = pki.Authority(other.key, ca.cert)  # keeps the real CA's name and key id
    return pki.pem_bytes(pki.build_crl(forged, [], 99, 30, pki.utc_now(None)))


def _flipped_signature(pki_dir):
    data = bytearray(x509.load_pem_x509_crl((pki_dir / CRL_FILE).read_bytes())
                     .public_bytes(serialization.Encoding.DER))
    data[-3] ^= 0x01
    crl = x509.load_der_x509_crl(bytes(data))
    return crl.public_bytes(serialization.Encoding.PEM)


TAMPERING = {
    "garbage": lambda pki_dir, before: b"-----BEGIN X509 CRL-----\nnot a crl\n",
    "empty file": lambda pki_dir, before: b"",
    "signed by another CA": lambda pki_dir, before: _foreign_crl(pki_dir),
    "signature flipped": lambda pki_dir, before: _flipped_signature(pki_dir),
    "the genuine CRL of before the revocation": lambda pki_dir, before: before,
}


@pytest.mark.parametrize("tamper", list(TAMPERING))
def test_a_tampered_crl_is_refused_and_the_last_good_one_stays_in_force(pki_dir, tmp_path,
                                                                       tamper, caplog):
    """The attacker rewrites the server's crl.pem after d's revocation was picked up."""
    server = tmp_path / "server-certs"  # the server operator's copy of the public files
    shutil.copytree(pki_dir, server, ignore=shutil.ignore_patterns("*.key"))
    before = (pki_dir / CRL_FILE).read_bytes()
    events: list[tuple[str, dict]] = []
    live = LiveTrust(server, on_event=lambda kind, **f: events.append((kind, f)))
    revocation.revoke(pki_dir, "d")
    shutil.copy(pki_dir / CRL_FILE, server / CRL_FILE)
    pem = (pki_dir / "orgs" / "d" / "d.crt").read_bytes()
    assert "d" in live.revoked({"d": _cert(pki_dir, "d")})
    (server / CRL_FILE).write_bytes(TAMPERING[tamper](pki_dir, before))
    with caplog.at_level("ERROR", logger="fedmuscle_secure.server"):
        assert "d" in live.revoked({"d": _cert(pki_dir, "d")})  # no exception, still revoked
        with pytest.raises(IdentityError, match="revoked"):
            live.verify_peer(pem)
    assert live.verify_peer((pki_dir / "orgs" / "a" / "a.crt").read_bytes()) == "a"
    assert [k for k, _ in events] == ["crl_reloaded", "crl_rejected"]  # reported once
    assert live.last_error and events[-1][1]["reason"] == live.last_error
    assert any("keeping the CRL in force" in r.getMessage() for r in caplog.records)
    revocation.refresh_crl(pki_dir)  # the CA re-signs and the operator copies it over
    shutil.copy(pki_dir / CRL_FILE, server / CRL_FILE)
    assert "d" in live.revoked({"d": _cert(pki_dir, "d")})
    assert live.last_error is None and [k for k, _ in events][-1] == "crl_reloaded"


# --- a revoked member is cut off at the next stage boundary -----------------------------------


class Receipts:
    def __init__(self) -> None:
        self.got: list[tuple[str, int]] = []

    def append(self, client, round_, exchange, digest, size) -> None:
        self.got.append((client, round_))


def test_a_member_revoked_mid_round_is_dropped_at_the_next_stage_boundary():
    """d is revoked while every member is in its LocalUpdate. It still answers the stage in
    flight (its key advertisement: the stage started before the revocation), and at the
    stage's end its stream is ended with PERMISSION_DENIED and the reason, it is dropped as
    a Leave, and the secure sums complete over a, b, c. What d sends afterwards (its masked
    inputs) is ignored: no receipt, no reply."""
    cfg = _secagg()
    fed = build_federation(cfg, make_split(cfg), "muscle_sum")
    revoked: dict[str, str] = {}
    events: list[tuple[str, dict]] = []
    receipts = Receipts()
    coordinator = Coordinator(
        fed.server, final_round=2, receipts=receipts,
        revocations=lambda peers: {c: w for c, w in revoked.items() if c in peers},
        on_event=lambda kind, **f: events.append((kind, f)))
    boxes = {c: coordinator.connect(c, cert=f"cert-{c}") for c in fed.clients}
    coordinator.start_round(1)
    revoked["d"] = "revoked on today (reason keyCompromise) by crl.pem"
    received: dict[str, list] = {c: [] for c in boxes}
    busy = True
    while busy:
        busy = False
        for c, box in boxes.items():
            while not box.empty():
                msg, busy = box.get_nowait(), True
                received[c].append(msg)
                if not isinstance(msg, Abort):
                    for reply in fed.clients[c].handle(msg):
                        coordinator.submit(c, reply)
    s = fed.server
    assert s.round == 1 and s.active == ["a", "b", "c"]
    assert [(d["client"], d["round"]) for d in s.departures] == [("d", 1)]
    assert "revoked" in s.departures[0]["reason"]
    abort = received["d"][-1]
    assert isinstance(abort, Abort) and abort.code is grpc.StatusCode.PERMISSION_DENIED
    assert "'d' was dropped from the run in round 1" in abort.reason and "keyCompromise" in abort.reason
    d_got = [type(m.body).__name__ for m in received["d"] if isinstance(m, SecAggEnvelope)]
    assert d_got == ["SecAggSetup"]  # sent with the plan, before the revocation; nothing
    #                                  of the stages after it (no key book, no shares)
    assert {c for c, _ in receipts.got} == {"a", "b", "c"}  # nothing received from d
    for c in "abc":
        assert {m.peers for m in received[c] if isinstance(m, SumTerms)} == {("a", "b", "c")}
    assert [(k, f["client"], f["round"]) for k, f in events] == [("client_revoked", "d", 1)]
    with pytest.raises(IdentityError, match="may not take part"):
        coordinator.connect("d", cert="cert-d")  # and it cannot come back
    fed.close()


# --- the quorum a run starts with -------------------------------------------------------------


def test_the_run_starts_with_the_quorum_and_bars_the_absent_member():
    cfg = tiny_config(compare_local=False, **{"training.rounds": 1})
    fed = build_federation(cfg, make_split(cfg), "muscle")
    coordinator = Coordinator(fed.server, final_round=2)
    coordinator.connect("a")
    coordinator.connect("b")
    assert coordinator.wait_for_members(quorum=2, timeout=0.05) == ["c"]
    assert fed.server.active == ["a", "b"]
    assert fed.server.departures[0]["client"] == "c"
    assert fed.server.departures[0]["reason"].startswith("absent: not connected within")
    with pytest.raises(IdentityError, match="not connected within the connect timeout"):
        coordinator.connect("c")
    assert barred_on_resume(fed.server.departures) == {"c": fed.server.departures[0]["reason"]}
    fed.close()


def test_below_the_quorum_the_server_gives_up_naming_only_the_missing():
    cfg = tiny_config(compare_local=False, **{"training.rounds": 1})
    fed = build_federation(cfg, make_split(cfg), "muscle")
    coordinator = Coordinator(fed.server, final_round=2)
    coordinator.connect("a")
    with pytest.raises(TransportError) as exc:
        coordinator.wait_for_members(quorum=2, timeout=0.05)
    assert "['b', 'c'] to connect" in str(exc.value) and "'a'" not in str(exc.value)
    assert fed.server.active == ["a", "b", "c"]  # nothing removed: the run does not start
    fed.close()


@pytest.mark.parametrize(("protection", "value", "message"), [
    ("plain", 0, "greater than or equal to 1"),
    ("plain", 4, "exceeds the number of clients N=3"),
    ("secagg", 2, "max(3, t) = 3"),
])
def test_min_clients_is_validated(protection, value, message):
    over = {"muscle.method": "muscle_sum"} if protection == "secagg" else {}
    with pytest.raises(ConfigError) as exc:
        tiny_config(protection=protection, deployment={"min_clients": value}, **over)
    assert exc.value.field == "deployment.min_clients" and message in str(exc.value)


def test_min_clients_accepts_the_range_and_stays_out_of_default_resolved_configs():
    from fedmuscle_secure.config import dump_config

    assert tiny_config(deployment={"min_clients": 1}).deployment.min_clients == 1
    cfg = _secagg()  # t = 3 of 4
    assert cfg.with_overrides(**{"deployment.min_clients": 3}).deployment.min_clients == 3
    assert "deployment" not in dump_config(tiny_config())  # older runs' configs still match
    assert "min_clients: 3" in dump_config(tiny_config(deployment={"min_clients": 3}))


# --- server --resume --exclude ----------------------------------------------------------------


def test_exclude_names_a_configured_client_or_an_organisation():
    cfg = tiny_config()
    with pytest.raises(ConfigError) as exc:
        resolve_exclusions(cfg, ["a", "b", "c"], ["zed"], {"bank-b": "b"})
    assert exc.value.field == "--exclude" and "'zed'" in str(exc.value)
    assert resolve_exclusions(cfg, ["a", "b", "c"], ["bank-b", "b"], {"bank-b": "b"}) == ["b"]
    with pytest.raises(QuorumLost, match="at least one must remain"):
        resolve_exclusions(cfg, ["a"], ["a"], {})


def test_exclude_refuses_to_leave_secagg_below_its_minimum_group():
    cfg = _secagg()  # N = 4, t = 3: a secure sum needs 3 members
    assert resolve_exclusions(cfg, ["a", "b", "c", "d"], ["d"], {}) == ["d"]
    with pytest.raises(QuorumLost) as exc:
        resolve_exclusions(cfg, ["a", "b", "c"], ["c"], {})  # d left earlier
    text = str(exc.value)
    assert "2 organisation(s) would remain" in text and "max(3, t) = 3" in text
    assert "nothing was run" in text and "\n" not in text
    departures = [{"client": "c", "round": 3, "reason": EXCLUDED},
                  {"client": "d", "round": 2, "reason": "transport: certificate revoked on X"},
                  {"client": "b", "round": 2, "reason": "privacy budget spent"}]
    # revoked: barred too (a second certificate for d's id would pass the CRL); b left on
    # its own and may come back for its closing report
    assert barred_on_resume(departures) == {"c": EXCLUDED, "d": departures[1]["reason"]}


# --- who left stays in the records ------------------------------------------------------------


def test_a_departed_member_keeps_a_final_row_and_a_line_in_the_summary(tmp_path):
    cfg = tiny_config(compare_local=False, **{"training.rounds": 2})
    meta = {"method": "muscle", "model": "m", "task": "t", "metric": "accuracy"}
    rows = [{**meta, "round": 1, "client": c, "test_metric": 0.5, "eps_record": 1.0,
             "eps_client": 0.0, "bytes_sent": 1.0, "bytes_received": 1.0, "wall_time_s": 1.0}
            for c in "abc"]
    departure = {"client": "c", "round": 2, "reason": "transport: certificate revoked on X"}
    final = final_row_metrics("c", rows, departure, None, "gone", 3)
    assert final["eps_record"] == 1.0 and final["left_round"] == 2
    assert final["left_reason"] == departure["reason"]
    assert final["test_metric"] == "not reported"  # the server never had its closing score
    kept = final_row_metrics("a", rows, None, {"test_metric": 0.7}, None, 3)
    assert kept == {"test_metric": 0.7}
    lost = final_row_metrics("b", rows, None, None, "stream failed (UNAVAILABLE): x", 3)
    assert lost["left_round"] == 3 and "UNAVAILABLE" in lost["left_reason"]
    rows += [{**meta, "round": "final", "client": c, **m} for c, m in
             (("a", kept), ("b", lost), ("c", final))]
    text = write_summary(tmp_path / "summary.md", cfg, rows, transport="grpc")
    assert "| muscle | c | 2 | transport: certificate revoked on X |" in text


def test_a_broken_stream_has_a_reason():
    """The drop reason used to read ``stream failed: `` (a bare RpcError has no code)."""
    assert stream_failure(grpc.RpcError()) == \
        "stream closed by the client (cancelled, or its connection was lost)"

    class Failed(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.RESOURCE_EXHAUSTED

        def details(self):
            return "too big"

    assert stream_failure(Failed()) == "stream failed (RESOURCE_EXHAUSTED): too big"
