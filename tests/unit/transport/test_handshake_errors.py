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
from pathlib import Path

import pytest

from fedmuscle_secure.client.grpc.process import (
    ConnectionFailed,
    HandshakeRefused,
    RetrySettings,
    open_channel,
)
from fedmuscle_secure.federation.server import build_server
from fedmuscle_secure.federation.setup import federation_setup
from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.provision import ca as pki
from fedmuscle_secure.server.grpc.process import Coordinator, start_grpc_server
from fedmuscle_secure.transport.grpc_core_log import CoreLogBridge
from fedmuscle_secure.transport.limits import wire_limits
from fedmuscle_secure.transport.streams import TransportOptions
from fedmuscle_secure.transport.tls_probe import Verdict, probe
from helpers.deploy_driver import free_port
from helpers.tiny import tiny_config
from helpers.tls_folders import tls_files, two_pkis


@pytest.fixture(scope="module")
def pkis(tmp_path_factory) -> dict[str, Path]:
    return two_pkis(tmp_path_factory.mktemp("pki"))


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


@pytest.mark.parametrize(("folder", "verdict"), [
    ("ours", Verdict.ACCEPTED), ("foreign", Verdict.SERVER_UNTRUSTED),
    ("bundle", Verdict.CLIENT_REFUSED)])
def test_the_probe_tells_who_refused_the_handshake(pkis, live, folder, verdict):
    found = probe("127.0.0.1", live, **tls_files(pkis[folder]))
    assert found.verdict is verdict, found


def test_the_probe_tells_nothing_listening_apart(pkis):
    found = probe("127.0.0.1", free_port(), **tls_files(pkis["ours"]))
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



