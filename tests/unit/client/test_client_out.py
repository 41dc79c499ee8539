"""A deployed client writes only into a new ``--out`` or its own run directory of the run the
server is resuming (the server's federation run id), against a real in-process gRPC server.

The operator mistakes: re-running a client into a finished run's ``--out`` (or any directory
with files but no run id, or of another run) used to append a second history to the old
ledger and overwrite its checkpoints, so ``audit`` then failed everywhere. Each is refused
with one line, before anything is written: every byte of ``--out`` is unchanged.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest

from fedmuscle_secure.client.grpc.process import ConnectionFailed, RetrySettings, run_client
from fedmuscle_secure.config import dump_config
from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.experiment.rundir import RunDir
from fedmuscle_secure.federation.server import build_server
from fedmuscle_secure.federation.setup import federation_setup
from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.provision import ca as pki
from fedmuscle_secure.server.grpc.process import Coordinator, new_run_id, start_grpc_server
from fedmuscle_secure.transport.limits import wire_limits
from fedmuscle_secure.transport.streams import TransportOptions
from helpers.deploy_driver import provision
from helpers.tiny import tiny_config

CFG = tiny_config(compare_local=False)
QUICK = RetrySettings(initial_s=0.1, max_s=0.2, deadline_s=3.0)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """An in-process server of the tiny config under a fresh federation run id (its rounds
    never start: the tests need only its first answer)."""
    tmp = tmp_path_factory.mktemp("served")
    certs = provision(tmp)
    run_id = new_run_id()
    coordinator = Coordinator(build_server(CFG, "muscle", federation_setup(
        CFG, make_split(CFG), "muscle")), final_round=CFG.training.rounds + 1)
    server, port = start_grpc_server(coordinator, pki.load_trust(certs), certs, "127.0.0.1:0",
                                     TransportOptions(), wire_limits(CFG), run_id=run_id)
    yield certs, f"127.0.0.1:{port}", run_id, coordinator
    server.stop(grace=None)


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _old_run(out: Path, run_id: str | None, config: str | None = None) -> dict[str, str]:
    """A finished organisation's run directory as it lies on disk (run id, config, a ledger
    and a checkpoint); returns the digest of every file."""
    (out / "ledger").mkdir(parents=True)
    (out / "ledger" / "a.jsonl").write_bytes(b'{"kind":"genesis","seq":0}\n{"kind":"egress"}\n')
    (out / "checkpoints" / "muscle").mkdir(parents=True)
    (out / "checkpoints" / "muscle" / "round-0003.pt").write_bytes(b"model and optimizers")
    (out / "config.resolved.yaml").write_text(config or dump_config(CFG))
    if run_id is not None:
        RunDir(out).write_run_id(run_id)
    return _snapshot(out)


def test_a_directory_of_another_federation_run_is_refused_untouched(served, tmp_path):
    """The attack/mistake: client ``a`` started on the --out of a finished run (run id X)
    against a server running run Y. Before: it appended to X's ledger (audit then fails).
    Now: one ConfigError naming --out and both run ids; not one byte of --out changes, and
    the server never counted ``a`` as connected (a wrong start cannot start the round the
    federation waits for and then leave it)."""
    certs, target, run_id, coordinator = served
    out = tmp_path / "client-a"
    old = new_run_id()
    before = _old_run(out, old)
    with pytest.raises(ConfigError) as exc:
        run_client(CFG, "a", certs, target, out, retry=QUICK)
    assert exc.value.field == "--out" and run_id in str(exc.value) and old in str(exc.value)
    assert "\n" not in str(exc.value)
    assert _snapshot(out) == before
    assert "a" not in coordinator.outboxes and "a" not in coordinator.gone


def test_files_without_a_run_id_are_refused_before_connecting(tmp_path):
    """A directory with files but no recorded run id (an older run, another tool's output):
    refused at once, without reaching for the server (none listens on port 1)."""
    out = tmp_path / "client-a"
    before = _old_run(out, None)
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as exc:
        run_client(CFG, "a", tmp_path, "127.0.0.1:1", out, retry=QUICK)
    assert exc.value.field == "--out" and "no federation run id" in str(exc.value)
    assert time.monotonic() - t0 < 2.5  # the retry deadline is 3 s: it never tried
    assert _snapshot(out) == before


def test_resuming_with_another_config_or_onto_a_file_is_refused(tmp_path):
    out = tmp_path / "client-a"
    before = _old_run(out, new_run_id(), config=dump_config(CFG.with_overrides(seed=8)))
    with pytest.raises(ConfigError) as exc:
        run_client(CFG, "a", tmp_path, "127.0.0.1:1", out, retry=QUICK)
    assert exc.value.field == "--config"
    assert _snapshot(out) == before
    # another checkpoint.keep changes no result: the same run (here: on to the connection)
    same = tmp_path / "client-b"
    _old_run(same, new_run_id(), config=dump_config(CFG.with_overrides(**{"checkpoint.keep": 3})))
    with pytest.raises(ConnectionFailed, match="not reachable"):
        run_client(CFG, "a", provision(tmp_path), "127.0.0.1:1", same, retry=QUICK)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        run_client(CFG, "a", tmp_path, "127.0.0.1:1", tmp_path / "file", retry=QUICK)


def test_a_new_directory_records_the_servers_run_id_at_first_contact(served, tmp_path):
    """Nothing is written before the server answered; then its run id, the config, the
    ledger's genesis and checkpoint 0 (the client then waits for the rounds, which this
    server never starts; stopping the server ends it)."""
    certs, target, run_id, _ = served
    out = tmp_path / "client-b"
    done: dict = {}

    def client() -> None:
        try:
            run_client(CFG, "b", certs, target, out, retry=QUICK)
        except Exception as exc:  # noqa: BLE001 - reported below
            done["error"] = exc

    t = threading.Thread(target=client, daemon=True)
    t.start()
    t_end = time.monotonic() + 60
    while not (out / "checkpoints" / "muscle" / "round-0000.pt").is_file():
        assert time.monotonic() < t_end and t.is_alive(), done
        time.sleep(0.05)
    assert RunDir(out).read_run_id() == run_id
    assert (out / "ledger" / "b.jsonl").read_text().startswith('{"body":')
    assert (out / "config.resolved.yaml").read_text() == dump_config(CFG)
