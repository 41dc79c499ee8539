"""Attacks on membership changes of a deployed run, without processes (DESIGN §6).

The adversaries: an organisation revoked mid-run that races the revocation to learn one
more stage of the others' data; whoever can write the server's ``crl.pem`` and replaces it
with bytes that the CRL parser does not turn into a ``ValueError`` or with something that
is not a regular file, to crash or freeze the server; and an organisation the server
dropped (revoked, or named by ``server --resume --exclude``) that comes back after a
restart with a second certificate for its client id. The coordinator is driven as the
gRPC servicer drives it (``connect`` / ``submit``), with the real state machines on both
sides and a fake clock.
"""

from __future__ import annotations

import base64
import os
import threading
import time

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedmuscle_secure.errors import IdentityError
from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.messages import SecAggEnvelope, SumTerms
from fedmuscle_secure.provision import revocation
from fedmuscle_secure.server.coordinator import CLOSE, Abort, Coordinator
from fedmuscle_secure.server.grpc.membership import barred_on_resume
from fedmuscle_secure.simulator import build_federation
from fedmuscle_secure.transport.tls_trust import CRL_FILE, load_trust
from fedmuscle_secure.transport.trust_reload import LiveTrust
from helpers.clock import Clock
from helpers.deploy_driver import provision
from helpers.tiny import tiny_config

TIMEOUT = 30.0
FOUR = [{"name": "a", "model": "test_resnet", "image_size": 8, "task": "coarse"},
        {"name": "b", "model": "test_resnet", "image_size": 8, "task": "attributes"},
        {"name": "c", "model": "resnet10t", "image_size": 8, "task": "digit10",
         "projection": {"kind": "linear"}},
        {"name": "d", "model": "test_resnet", "image_size": 8, "task": "digit10"}]


def _secagg(rounds: int = 1):
    return tiny_config(clients=FOUR, protection="secagg", compare_local=False, **{
        "muscle.method": "muscle_sum", "muscle.exchange": "per_batch",
        "training.rounds": rounds, "data.public_size": 64})


# --- a revoked member racing the revocation ---------------------------------------------------



class Federation:
    """The coordinator with a CRL check, every client's state machine and outbox."""

    def __init__(self, cfg) -> None:
        self.fed = build_federation(cfg, make_split(cfg), cfg.muscle.method)
        self.clock = Clock()
        self.revoked: dict[str, str] = {}
        self.coordinator = Coordinator(
            self.fed.server, final_round=cfg.training.rounds + 1, stage_timeout_s=TIMEOUT,
            clock=self.clock,
            revocations=lambda peers: {c: w for c, w in self.revoked.items() if c in peers})
        self.boxes = {c: self.coordinator.connect(c, cert=f"cert-{c}") for c in self.fed.clients}
        self.received: dict[str, list] = {c: [] for c in self.fed.clients}
        self.silent: set[str] = set()

    def pump(self, stop=None) -> None:
        """Deliver until quiet; a client with ``stop(client, msg)`` true goes silent."""
        busy = True
        while busy:
            busy = False
            for c, box in self.boxes.items():
                while not box.empty():
                    msg, busy = box.get_nowait(), True
                    self.received[c].append(msg)
                    if isinstance(msg, Abort) or msg is CLOSE or c in self.silent:
                        continue
                    if stop is not None and stop(c, msg):
                        self.silent.add(c)
                        continue
                    for reply in self.fed.clients[c].handle(msg):
                        self.coordinator.submit(c, reply)

    def since(self, client: str, mark: int) -> list[str]:
        """What ``client`` received from message ``mark`` on (its outbox drained, unread)."""
        box = self.boxes[client]
        while not box.empty():
            self.received[client].append(box.get_nowait())
        return [type(m.body).__name__ if isinstance(m, SecAggEnvelope) else type(m).__name__
                for m in self.received[client][mark:]]


def _c_stalls_at_unmask(client: str, msg) -> bool:
    return client == "c" and isinstance(msg, SecAggEnvelope) \
        and type(msg.body).__name__ == "UnmaskRequest" and msg.batch == 0


@pytest.mark.parametrize("boundary", ["stage deadline", "another member's stream ends"])
def test_a_member_revoked_before_a_boundary_not_reached_by_a_message_gets_nothing_of_it(
        boundary):
    """d is revoked while the first secure sum waits in its unmask stage for c. The stage
    then ends without a message from anyone (its deadline passes, or c's stream breaks).
    d used to receive the sum of the others' inputs (SumTerms) and the next exchange's
    setup, because only a received message checked the CRL at a boundary; the coordinator's
    tick checked it after the deadline had already routed the replies."""
    f = Federation(_secagg())
    f.coordinator.start_round(1)
    f.pump(stop=_c_stalls_at_unmask)
    assert f.fed.server.waiting().key[-1] == "unmask" and f.fed.server.waiting().awaited == ("c",)
    mark = len(f.received["d"])
    f.revoked["d"] = "revoked on today (reason keyCompromise) by crl.pem"
    if boundary == "stage deadline":
        f.clock.now += TIMEOUT + 1
        f.coordinator.check_deadline()  # what one tick of Coordinator.wait does
    else:
        f.coordinator.disconnect("c", "stream closed by the client")
    f.coordinator.check_membership()
    got = f.since("d", mark)
    assert got == ["Abort"], f"d received {got} after its revocation"
    assert f.received["d"][-1].code is grpc.StatusCode.PERMISSION_DENIED
    assert "d" not in f.fed.server.active
    f.pump()
    sums = [m for m in f.received["a"] if isinstance(m, SumTerms)]
    assert sums and sums[0].batch == 0  # the others' sum completed without d's presence
    f.fed.close()


# --- the server's crl.pem replaced with hostile bytes -----------------------------------------


@pytest.fixture
def pki_dir(tmp_path):
    return provision(tmp_path, orgs=("a", "b", "c", "d"))


def _der(pki_dir) -> bytearray:
    crl = x509.load_pem_x509_crl((pki_dir / CRL_FILE).read_bytes())
    return bytearray(crl.public_bytes(serialization.Encoding.DER))


def _pem(der: bytes) -> bytes:
    return b"-----BEGIN X509 CRL-----\n" + base64.encodebytes(der) + b"-----END X509 CRL-----\n"


def _bad_version(pki_dir) -> bytes:
    der = _der(pki_dir)
    at = der.index(b"\x02\x01\x01")  # TBSCertList.version (v2): say v22
    der[at + 2] = 21
    return _pem(bytes(der))


def _bad_issuer_string(pki_dir) -> bytes:
    der = _der(pki_dir)
    ca = load_trust(pki_dir).ca_cert
    org = ca.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)[0].value.encode()
    at = der.index(org)  # the issuer's O value: give its string an undefined tag
    der[at - 2] = 0xCB
    return _pem(bytes(der))


HOSTILE = {"CRL version 22": _bad_version, "issuer with an undefined string tag": _bad_issuer_string}


@pytest.mark.parametrize("hostile", list(HOSTILE))
def test_a_crl_the_parser_rejects_lazily_is_refused_not_raised(pki_dir, hostile):
    """Garbage that ``load_pem_x509_crl`` rejects with ``InvalidVersion`` (not a
    ``ValueError``), or accepts and then fails on when the issuer is read, escaped the
    server's CRL check: the coordinator's tick raised it out of the run loop (the server
    died with a traceback) and every member's next message ended its stream."""
    live = LiveTrust(pki_dir)
    revocation.revoke(pki_dir, "d")
    d = x509.load_pem_x509_certificate((pki_dir / "orgs" / "d" / "d.crt").read_bytes())
    assert "d" in live.revoked({"d": d})
    (pki_dir / CRL_FILE).write_bytes(HOSTILE[hostile](pki_dir))
    assert "d" in live.revoked({"d": d})  # no exception; the last good CRL stays in force
    assert live.last_error and "crl.pem" in live.last_error
    with pytest.raises(IdentityError, match="crl.pem"):
        load_trust(pki_dir)  # the server's start names the file instead of a traceback


def _in_thread(fn) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    t.join(timeout=5)
    return t


def test_a_fifo_in_place_of_the_crl_does_not_freeze_the_server(pki_dir):
    """A FIFO named crl.pem blocked the CRL check in ``open`` until someone wrote to it;
    the check runs under the coordinator's lock, so every member and the run loop froze."""
    live = LiveTrust(pki_dir)
    path = pki_dir / CRL_FILE
    path.unlink()
    os.mkfifo(path)
    result: list = []
    t = _in_thread(lambda: result.append(live.revoked({})))
    blocked = t.is_alive()
    if blocked:  # release the blocked reader before failing
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        t.join(timeout=5)
    assert not blocked, "the CRL check blocked on a FIFO"
    assert result == [{}]
    assert "not a regular file" in (live.last_error or "")


def test_an_endless_file_in_place_of_the_crl_is_refused_unread(pki_dir):
    """crl.pem as a link to /dev/zero (or any huge file) used to be read whole, under the
    coordinator's lock: the server ran out of memory. The check reads at most a bound."""
    live = LiveTrust(pki_dir)
    path = pki_dir / CRL_FILE
    path.unlink()
    path.symlink_to("/dev/zero")
    assert live.revoked({}) == {}
    assert "not a regular file" in (live.last_error or "")
    path.unlink()
    with open(path, "wb") as out:  # sparse: no disk used
        out.truncate(64 << 20)
    assert live.revoked({}) == {}
    assert "larger than" in (live.last_error or "")


# --- a dropped organisation coming back after a restart ---------------------------------------


def _resumed(fed, excluded=()) -> Coordinator:
    """A restarted server's coordinator over ``fed``'s state, barred as ``serve`` bars it."""
    state = fed.server.state_dict()
    fed.server.load_state_dict(state)
    coordinator = Coordinator(fed.server, final_round=3)
    for client, why in barred_on_resume(fed.server.departures, excluded).items():
        coordinator.bar(client, why)
    return coordinator


def test_a_revoked_member_is_still_barred_after_a_resume():
    """c is revoked between rounds 1 and 2 and dropped; then the server is restarted with
    --resume. The CRL refuses c's old certificate, but a second one for c's client id
    (re-issued for the same CN, or another CN mapped to c) passed, and the resumed server
    let c connect: it was sent Finish, its closing report became its final row, and while
    it kept silent the end of the run waited for it up to the round timeout."""
    f = Federation(tiny_config(compare_local=False, **{"training.rounds": 2}))
    f.revoked["c"] = "revoked on today (reason keyCompromise) by crl.pem"
    f.coordinator.start_round(1)
    f.pump()
    s = f.fed.server
    assert s.active == ["a", "b"] and [d["client"] for d in s.departures] == ["c"]
    with pytest.raises(IdentityError, match="may not take part"):
        f.coordinator.connect("c", cert="second-cert-of-c")  # refused within the run
    resumed = _resumed(f.fed)
    with pytest.raises(IdentityError, match="may not take part .* revoked"):
        resumed.connect("c", cert="second-cert-of-c")  # and after a restart
    resumed.connect("a")  # the remaining members reconnect as before
    f.fed.close()


def test_exclude_bars_an_organisation_that_had_already_left():
    """``--resume --exclude c`` where c had already left (its stream broke in round 1):
    the exclusion only removed active members, so c was not refused when it came back."""
    f = Federation(tiny_config(compare_local=False, **{"training.rounds": 2}))
    f.coordinator.start_round(1)
    f.coordinator.disconnect("c", "stream closed by the client")
    f.pump()
    assert f.fed.server.active == ["a", "b"]
    resumed = _resumed(f.fed, excluded=["c"])
    with pytest.raises(IdentityError, match="may not take part .* excluded by the operator"):
        resumed.connect("c")
    _resumed(f.fed).connect("c")  # not named: it may come back for its closing report
    f.fed.close()


def test_a_revocation_between_rounds_that_leaves_too_few_stops_before_the_round():
    """a, b, c, d under secagg (t = 3); d left in round 1, and c is revoked before round 2.
    The coordinator cut c but still planned round 2 over a, b, c: its secure sums opened
    over three, c's Leave broke every one of them, and a and b ran a round with no
    exchange at all (and a last round would have ended as if the run had finished). Two
    members cannot have a secure sum: the run must stop before round 2, as it does when
    two remain at a round's start."""
    from fedmuscle_secure.errors import QuorumLost

    f = Federation(_secagg(rounds=2))
    f.coordinator.start_round(1)
    f.coordinator.disconnect("d", "stream closed by the client")
    f.pump()
    s = f.fed.server
    assert s.round == 1 and s.active == ["a", "b", "c"]
    mark = {c: len(f.received[c]) for c in "ab"}
    f.revoked["c"] = "revoked on today (reason keyCompromise) by crl.pem"
    with pytest.raises(QuorumLost, match="only 2 clients are left"):
        f.coordinator.start_round(2)
    assert [f.since(c, mark[c]) for c in "ab"] == [[], []]  # no plan, no secure sum set up
    assert [(d["client"], d["round"]) for d in s.departures] == [("d", 1), ("c", 2)]
    assert s.departures[1]["reason"].startswith("transport: certificate revoked")
    f.fed.close()


def test_a_client_map_with_two_subjects_for_one_client_id_is_refused(pki_dir):
    """Whoever writes the server's clients.yaml maps a second subject to d's client id: a
    certificate of that subject would be a second way in for d once d's own is revoked
    (the CRL lists certificates, not client ids). Provisioning never writes such a map;
    the server refuses it at its start, naming the file and both subjects."""
    from fedmuscle_secure.errors import DataError

    path = pki_dir / "clients.yaml"
    path.write_text(path.read_text() + "  d-second: d\n")
    with pytest.raises(DataError, match="client id 'd' is mapped from two subjects"):
        load_trust(pki_dir)


def test_a_member_revoked_before_the_start_leaves_as_revoked_not_as_absent():
    """c connects, then its certificate is revoked while the server waits for the others;
    the run starts with the quorum. c's departure used to read "absent: not connected
    within the connect timeout" and its bar was overwritten with that reason, so its final
    row and the summary hid the revocation."""
    f = Federation(tiny_config(compare_local=False, **{"training.rounds": 1}))
    f.coordinator.clock = time.monotonic  # the connect timeout runs on the real clock
    f.coordinator.disconnect("b", "stream closed by the client")  # b never comes back
    f.revoked["c"] = "revoked on today (reason keyCompromise) by crl.pem"
    assert f.coordinator.wait_for_members(quorum=1, timeout=0.05) == ["b", "c"]
    reasons = {d["client"]: d["reason"] for d in f.fed.server.departures}
    assert reasons["b"].startswith("absent: ")
    assert reasons["c"].startswith("transport: certificate revoked on today")
    assert "revoked" in f.coordinator.barred["c"]
    assert set(barred_on_resume(f.fed.server.departures)) == {"b", "c"}
    f.fed.close()


def test_a_member_revoked_after_answering_the_stage_in_flight_does_not_stall_the_sum():
    """d's LocalUpdate is the fastest: it has sent its key advertisement when its
    certificate is revoked, before the others answered. Its Leave came while it had
    already answered the stage, so the secure sum did not drop it: the next stage waited
    for d's shares until the stage deadline (in the deployment test, whose round timeout
    equals the stage timeout, the run failed: "timed out after 120 s waiting for round 2").
    A member that leaves after answering is dropped at the next stage as soon as it begins."""
    f = Federation(_secagg())
    f.coordinator.start_round(1)
    box = f.boxes["d"]
    while not box.empty():  # d alone answers the first stage
        for reply in f.fed.clients["d"].handle(box.get_nowait()):
            f.coordinator.submit("d", reply)
    s = f.fed.server
    assert s.waiting().key[-1] == "advertise_keys" and "d" in s.waiting().answered
    f.revoked["d"] = "revoked on today (reason keyCompromise) by crl.pem"
    f.coordinator.check_membership()  # a tick of Coordinator.wait, mid-stage
    f.pump()
    assert s.waiting() is None and s.round == 1, f"stalled waiting for {s.waiting().awaited}"
    for c in "abc":
        assert [m.peers for m in f.received[c] if isinstance(m, SumTerms)] == \
            [("a", "b", "c")] * 2
    f.fed.close()
