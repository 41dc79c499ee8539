"""A TLS handshake that cannot succeed: the client says why and stops at once; the server
logs the peer and the reason.

The misconfigurations (what an operator meets, not an attack the system could miss: either
way the connection is refused): an organisation holding a certificate of another CA, or a
CA bundle the server does not share, and a server certificate the organisation does not
trust. Before, the client retried for its whole --retry-deadline (300 s by default) and then
said "server not reachable"; the server printed only gRPC's own line, without the peer.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import yaml
from deploy_driver import cli, free_port, provision, server, wait_for
from fedmuscle_secure.client.grpc_client import (
    ConnectionFailed,
    HandshakeRefused,
    RetrySettings,
    open_channel,
)
from fedmuscle_secure.server.grpc_server import Coordinator, start_grpc_server
from tiny import tiny_config

from fedmuscle_secure.federation.server import build_server
from fedmuscle_secure.federation.setup import federation_setup
from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.provision import ca as pki
from fedmuscle_secure.transport.grpc_core_log import CoreLogBridge
from fedmuscle_secure.transport.limits import wire_limits
from fedmuscle_secure.transport.streams import TransportOptions
from fedmuscle_secure.transport.tls_probe import Verdict, probe


def org_folder(root: Path, name: str, *, ca: list[Path], org_dir: Path, org: str = "a",
               identities: Path | None = None) -> Path:
    """An organisation's --certs folder: ``ca/ca.crt`` (the concatenation of ``ca``), its
    TLS key and certificate from ``org_dir``, and the identities of ``identities``."""
    folder = root / name
    (folder / "ca").mkdir(parents=True)
    (folder / "ca" / "ca.crt").write_bytes(b"".join(p.read_bytes() for p in ca))
    shutil.copytree(org_dir, folder / "orgs" / org)
    if identities is not None:
        shutil.copytree(identities, folder / "identities")
    return folder


@pytest.fixture(scope="module")
def pkis(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pki")
    ours, other = provision(root), provision(root, name="other")  # two CAs, same org names
    ca, ca2 = ours / "ca" / "ca.crt", other / "ca" / "ca.crt"
    return {
        "root": root, "ours": ours, "other": other,
        # all of another CA's files: the server's certificate does not verify against it
        "foreign": org_folder(root, "foreign", ca=[ca2], org_dir=other / "orgs" / "a",
                              identities=ours / "identities"),
        # trusts both CAs (a CA change half done), holds the other CA's certificate: the
        # server, which trusts only ours, refuses it
        "bundle": org_folder(root, "bundle", ca=[ca, ca2], org_dir=other / "orgs" / "a",
                             identities=ours / "identities"),
    }


@pytest.fixture(scope="module")
def live(pkis):
    """An in-process gRPC server of the tiny config trusting our CA only."""
    cfg = tiny_config(compare_local=False)
    setup = federation_setup(cfg, make_split(cfg), "muscle")
    coordinator = Coordinator(build_server(cfg, "muscle", setup), final_round=4)
    srv, port = start_grpc_server(coordinator, pki.load_trust(pkis["ours"]), pkis["ours"],
                                  "127.0.0.1:0", TransportOptions(), wire_limits(cfg))
    yield port
    srv.stop(grace=None)


def _files(folder: Path, org: str = "a") -> dict[str, Path]:
    return {"ca": folder / "ca" / "ca.crt", "cert": folder / "orgs" / org / f"{org}.crt",
            "key": folder / "orgs" / org / f"{org}.key"}


@pytest.mark.parametrize(("folder", "verdict"), [
    ("ours", Verdict.ACCEPTED), ("foreign", Verdict.SERVER_UNTRUSTED),
    ("bundle", Verdict.CLIENT_REFUSED)])
def test_the_probe_tells_who_refused_the_handshake(pkis, live, folder, verdict):
    found = probe("127.0.0.1", live, **_files(pkis[folder]))
    assert found.verdict is verdict, found


def test_the_probe_tells_nothing_listening_apart(pkis):
    found = probe("127.0.0.1", free_port(), **_files(pkis["ours"]))
    assert found.verdict is Verdict.UNREACHABLE and "refused" in found.detail.lower()


@pytest.mark.parametrize(("folder", "says"), [
    ("foreign", "the server's certificate is not trusted by"),
    ("bundle", "refused the TLS handshake: it does not trust this organisation's certificate")])
def test_the_client_stops_at_once_on_a_handshake_that_cannot_succeed(pkis, live, folder, says):
    """Before: ConnectionFailed ("not reachable") once the whole deadline had passed."""
    retry = RetrySettings(initial_s=0.2, deadline_s=60.0)
    with pytest.raises(HandshakeRefused, match=re.escape(says)):
        open_channel(pkis[folder], "a", f"127.0.0.1:{live}", TransportOptions(), retry)


def test_the_client_keeps_retrying_while_nothing_listens(pkis):
    retry = RetrySettings(initial_s=0.1, max_s=0.2, deadline_s=1.0)
    with pytest.raises(ConnectionFailed, match="not reachable within 1 s") as err:
        open_channel(pkis["ours"], "a", f"127.0.0.1:{free_port()}", TransportOptions(), retry)
    assert not isinstance(err.value, HandshakeRefused)
    assert "Connection refused" in str(err.value)


def test_the_bridge_keeps_other_output_and_drops_only_the_tracer():
    out, logged = [], []
    bridge = CoreLogBridge(logged.append, out.append, traced=True)
    step = ("I1205 13:54:33.4 18963 handshaker.cc:155] CallNextHandshakerLocked: error=OK "
            "shutdown=false index=0, args={...}\n")
    for line in ["plain text from a library\n",
                 "I1205 13:54:33.4 18963 trace.cc:91] gRPC Tracers: handshaker\n", step,
                 "E1205 13:54:34.0 18963 add_port.cc:83] Failed to add port to server\n",
                 "  a continuation of that record\n"]:
        bridge.feed(line)
    bridge.flush()
    assert logged == []
    record = ("E1205 13:54:34.0 18963 add_port.cc:83] Failed to add port to server\n"
              "  a continuation of that record\n")
    assert out == ["plain text from a library\n", record]


# --- the real processes: the server's log line, the client's one line and exit code ---------

@pytest.mark.slow
def test_real_server_logs_peer_and_reason_and_real_clients_stop_with_one_line(pkis, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config(compare_local=False).model_dump(mode="json")))
    port = free_port()
    srv = server(tmp_path, config, pkis["ours"], port, "--connect-timeout", "300")
    log = tmp_path / "server.log"
    try:
        wait_for(lambda: "listening on" in log.read_text(), 120, "the server", srv)
        assert probe("127.0.0.1", port, **_files(pkis["bundle"])).verdict \
            is Verdict.CLIENT_REFUSED
        with socket.create_connection(("127.0.0.1", port)) as plain:
            plain.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")  # a client without TLS
            plain.recv(1)
        wait_for(lambda: "did not speak TLS" in log.read_text(), 30, "the plaintext line", srv)
        text = log.read_text()
        assert re.search(r"WARNING TLS handshake from 127\.0\.0\.1:\d+ failed: its certificate "
                         r"is not issued by this federation's CA .*CERTIFICATE_VERIFY_FAILED",
                         text), text
        assert re.search(r"TLS handshake from 127\.0\.0\.1:\d+ failed: it did not speak TLS",
                         text), text
        assert "handshaker.cc" not in text and "Handshake failed" not in text  # bridged

        for folder, says in [("foreign", "the server's certificate is not trusted"),
                             ("bundle", "refused the TLS handshake")]:
            name = f"client-{folder}"
            proc = cli("client", "--config", config, "--org", "a", "--certs", pkis[folder],
                       "--server", f"127.0.0.1:{port}", "--out", tmp_path / name,
                       "--threads", "1", "--retry-initial", "0.2", "--retry-deadline", "600",
                       "-q", log=tmp_path / f"{name}.log")  # -q: errors only, no progress lines
            assert proc.wait(timeout=240) == 1  # not the 600 s retry deadline
            lines = [x for x in (tmp_path / f"{name}.log").read_text().splitlines() if x]
            assert len(lines) == 1 and says in lines[0] and "Traceback" not in lines[0], lines

        # Ctrl-C on a connected client: exit 130 and how to go on, no traceback
        events = tmp_path / "client-b" / "events.jsonl"
        proc = cli("client", "--config", config, "--org", "b", "--certs", pkis["ours"],
                   "--server", f"127.0.0.1:{port}", "--out", tmp_path / "client-b",
                   "--threads", "1", "-q", log=tmp_path / "client-b.log")
        wait_for(lambda: events.is_file() and "connected" in events.read_text(), 240,
                 "client b to connect", proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
        lines = [x for x in (tmp_path / "client-b.log").read_text().splitlines() if x]
        assert len(lines) == 1 and "interrupted; start it again: fedmuscle-secure client" \
            in lines[0], lines
    finally:
        srv.send_signal(signal.SIGINT)
        try:
            code = srv.wait(timeout=60)
        except subprocess.TimeoutExpired:
            srv.kill()
            raise
    assert code == 130
    assert "interrupted; resume with: " in log.read_text().splitlines()[-1]
