"""Attacks on the deployment's restart machinery: the handshake probe's time bound, how far
a server may rewind a client, and checkpoint pruning driven by the server's plans."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from fedmuscle_secure.transport.tls_probe import Verdict, probe
from helpers.deploy_driver import provision


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    certs = provision(tmp_path_factory.mktemp("pki"))
    return {"ca": certs / "ca" / "ca.crt", "cert": certs / "orgs" / "a" / "a.crt",
            "key": certs / "orgs" / "a" / "a.key"}


def test_a_dribbling_impostor_cannot_hold_the_probe_past_its_timeout(ours):
    """An impostor on the server's address (e.g. while the server restarts) accepts the TCP
    connection and sends a TLS record header, then one byte every 0.2 s: each read of the
    handshake finishes within the probe's per-read timeout, so without a bound on the whole
    probe the client would sit in one probe for hours, past its retry deadline, instead of
    retrying or giving up."""
    listener = socket.create_server(("127.0.0.1", 0))
    port, stop = listener.getsockname()[1], threading.Event()

    def impostor() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"\x16\x03\x03\x40\x00")  # a 16 KiB handshake record follows...
            while not stop.is_set():
                try:
                    conn.sendall(b"\x00")
                except OSError:
                    return
                time.sleep(0.2)

    threading.Thread(target=impostor, daemon=True).start()
    found: list = []
    t = threading.Thread(target=lambda: found.append(probe("127.0.0.1", port, timeout_s=1.0,
                                                           **ours)), daemon=True)
    t0 = time.monotonic()
    t.start()
    t.join(timeout=8.0)
    stop.set()
    listener.close()
    assert not t.is_alive(), "the probe outlived its timeout by far"
    assert time.monotonic() - t0 < 4.0
    assert found[0].verdict is Verdict.UNDECIDED, found


# -- a malicious server and the client's checkpoints ---------------------------------------

class _Client:
    """Just what the transport loop touches of a client between rounds; it refuses a plan of
    a round other than the next, as :class:`client.state.FedMuscleClient` does."""

    def __init__(self, r: int) -> None:
        from client.state import ClientStage

        self.name, self.round, self.stage, self.left = "a", r, ClientStage.IDLE, None

    def load_state_dict(self, state: dict) -> None:
        self.round = int(state["round"])

    def handle(self, msg):
        from fedmuscle_secure.errors import ProtocolError

        if msg.round != self.round + 1:
            raise ProtocolError("server", "idle", f"expected round {self.round + 1}, "
                                                  f"got {msg.round}")
        return []


class _Stream:
    def __init__(self, *messages) -> None:
        import itertools

        from fedmuscle_secure.transport.streams import TransportOptions, outbound

        self.options, counter = TransportOptions(), itertools.count()
        self.responses = [c for m in messages for c in outbound(m, "server", counter,
                                                               self.options)]

    def send(self, msg) -> None:  # pragma: no cover - the fake client answers nothing
        raise AssertionError(msg)


def _plan(r: int):
    import torch

    from fedmuscle_secure.messages import RoundPlan

    return RoundPlan(client="a", round=r, exchange="per_batch",
                     batches=torch.zeros((0, 0, 0), dtype=torch.int64))


def _disk(tmp_path, rounds):
    from fedmuscle_secure.experiment.rundir import RunDir

    run = RunDir(tmp_path)
    for r in rounds:
        run.save_checkpoint("muscle", r, {"round": r}, keep=len(rounds))
    return run


def test_a_server_cannot_rewind_a_client_one_round_at_a_time_past_the_round_it_died_in(
        tmp_path):
    """With ``checkpoint.keep: 3`` the client holds rounds 3..5 and completed round 5. A
    server that drops the stream and sends the plan of round 5 rewinds it to 4 (allowed: it
    may have died in round 5). Dropping the stream again and sending the plan of round 4
    must not rewind it to 3: the bound is the round the client completed, not the round a
    previous rewind left it at; else a server walks it back as far as checkpoints reach."""
    from fedmuscle_secure.client.grpc.process import ConnectionFailed, rewind_if_needed

    run, client = _disk(tmp_path, (3, 4, 5)), _Client(5)
    rewind_if_needed(client, _plan(5), run, "muscle")
    assert client.round == 4
    with pytest.raises(ConnectionFailed, match="refusing to rewind further"):
        rewind_if_needed(client, _plan(4), run, "muscle")
    assert client.round == 4


@pytest.mark.parametrize("kind", ["plan", "finish"])
def test_a_refused_plan_does_not_prune_the_checkpoint_a_legitimate_rewind_needs(tmp_path,
                                                                                kind):
    """The client completed round 5 and keeps rounds 4 and 5 (``keep: 1``: round 4 stays
    until the plan of round 6 shows the server's checkpoint of round 5 is on disk). A server
    sends a plan (or Finish) of round 1000, which the client refuses. The refusal must not
    have pruned round 4 first: the server, restarted (or restarting the client) from its
    checkpoint of round 4, asks for round 5 again, and that rewind needs it; before, the
    client deleted it on the bogus message and could then only give up."""
    from fedmuscle_secure.client.grpc.process import run_stream
    from fedmuscle_secure.errors import ProtocolError
    from fedmuscle_secure.messages import Finish
    from fedmuscle_secure.transport.limits import wire_limits
    from helpers.tiny import tiny_config

    run, client = _disk(tmp_path, (4, 5)), _Client(5)
    msg = _plan(1000) if kind == "plan" else Finish(client="a", round=1000)
    with pytest.raises(ProtocolError, match="expected round 6"):
        run_stream(client, _Stream(msg), "a", wire_limits(tiny_config()), run, "muscle", None,
                  keep=1, reconnected=False)
    assert run.checkpoint_labels("muscle") == [4, 5]


def _impostor(tmp_path_factory) -> tuple[int, threading.Event]:
    """A TLS server on 127.0.0.1 with a server certificate of another CA (any process that
    takes the port while the federation's server restarts)."""
    import ssl

    other = provision(tmp_path_factory.mktemp("other"), name="other")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(other / "server" / "server.crt", other / "server" / "server.key")
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            try:
                ctx.wrap_socket(conn, server_side=True).close()
            except OSError:
                conn.close()
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1], stop


def test_an_impostor_on_the_port_during_a_restart_does_not_make_a_client_give_up(
        tmp_path_factory):
    """A client that already ran rounds with the federation's server lost it (the server is
    restarting) and reconnects. An impostor holding the port meanwhile presents a
    certificate our CA did not issue. At first contact that is a misconfiguration to report
    at once; on a reconnect it says nothing about the server the client already verified,
    so the client keeps retrying until its deadline (the server comes back with --resume)
    instead of giving up on the run after one look at an unauthenticated peer."""
    from fedmuscle_secure.client.grpc.process import (
        ConnectionFailed,
        HandshakeRefused,
        RetrySettings,
        open_channel,
    )
    from fedmuscle_secure.transport.streams import TransportOptions

    certs = provision(tmp_path_factory.mktemp("ours"))
    port, stop = _impostor(tmp_path_factory)
    retry = RetrySettings(initial_s=0.1, max_s=0.2, deadline_s=1.5)
    try:
        with pytest.raises(HandshakeRefused):  # first contact: stop at once, say why
            open_channel(certs, "a", f"127.0.0.1:{port}", TransportOptions(), retry)
        t0 = time.monotonic()
        with pytest.raises(ConnectionFailed, match="not reachable within") as err:
            open_channel(certs, "a", f"127.0.0.1:{port}", TransportOptions(), retry,
                         reconnecting=True)
        assert not isinstance(err.value, HandshakeRefused)
        assert "certificate" in str(err.value) and time.monotonic() - t0 >= 1.4
    finally:
        stop.set()
