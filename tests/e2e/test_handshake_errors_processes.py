"""A TLS handshake that cannot succeed, with real processes: the server logs the peer and
the reason, each refused client stops with one line and exit 1, and Ctrl-C on a connected
client or on the server exits 130 saying how to go on."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from fedmuscle_secure.transport.tls_probe import Verdict, probe
from helpers.deploy_driver import cli, free_port, server, wait_for
from helpers.tiny import tiny_config
from helpers.tls_folders import tls_files, two_pkis


@pytest.fixture(scope="module")
def pkis(tmp_path_factory) -> dict[str, Path]:
    return two_pkis(tmp_path_factory.mktemp("pki"))


@pytest.mark.slow
def test_real_server_logs_peer_and_reason_and_real_clients_stop_with_one_line(pkis, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config(compare_local=False).model_dump(mode="json")))
    port = free_port()
    srv = server(tmp_path, config, pkis["ours"], port, "--connect-timeout", "300")
    log = tmp_path / "server.log"
    try:
        wait_for(lambda: "listening on" in log.read_text(), 120, "the server", srv)
        assert probe("127.0.0.1", port, **tls_files(pkis["bundle"])).verdict \
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

