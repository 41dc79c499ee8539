"""``audit`` trusts provisioned keys, not the directory it audits (DESIGN §4.4).

Each test is an attack on a run directory by someone who can write to it (but does not hold
the organisations' provisioned identity keys): what they change, what ``audit`` would have
certified, and the failure that stops it now.
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from fedmuscle_secure.cli.audit import main_audit
from fedmuscle_secure.crypto.identity import (
    generate_identity,
    load_private,
    public_pem,
)
from fedmuscle_secure.dp.accounting import DpEventRecord, independent_epsilon
from fedmuscle_secure.records.audit import EXIT_CODES, audit_ledger_file, audit_run
from fedmuscle_secure.records.identity_files import save_public
from fedmuscle_secure.records.ledger import Ledger
from helpers.audit_fixtures import (
    CLIENT,
    DELTA,
    build_run,
    genesis,
    kinds,
    lines,
    rechain,
    write,
)


@pytest.fixture
def run(tmp_path):
    return build_run(tmp_path, clients=("a", "b", "c"))


def test_stripped_signatures_with_lowered_sigma_fail_as_unsigned(run, capsys):
    """The attacker rewrites what a's ledger says was released (σ lowered in every
    client-level dp_event, every ε rewritten to match), re-chains it, strips every
    signature and deletes keys/a.pub. The chain is consistent and ε recomputes: it used to
    pass with a note ("unsigned ledger"). Every mode signs its ledger, so it now fails."""
    path = run / "ledger" / "a.jsonl"
    entries = lines(path)
    cheap = {**CLIENT, "noise_multiplier": 1.5}
    used = []
    for e in entries:
        if e["kind"] == "dp_event" and e["body"]["guarantee"] == "client":
            e["body"].update(cheap)
            used.append(DpEventRecord.from_dict(cheap))
        if e["kind"] == "epsilon" and e["body"]["guarantee"] == "client":
            e["body"]["epsilon_rdp"] = independent_epsilon(used, DELTA)
    write(path, rechain(entries, sign=None))
    (run / "keys" / "a.pub").unlink()
    assert main_audit([str(run)]) == EXIT_CODES["unsigned"] == 20
    out = capsys.readouterr().out
    assert "FAIL [unsigned, 20] client a seq 0" in out and "entries are unsigned" in out
    trusted = audit_run(run, trusted_keys=run.parent / "identities")
    # the lowered σ is also below the σ a's genesis declares
    assert kinds(trusted) == {"unsigned", "epsilon_mismatch"}
    assert {f.client for f in trusted.failures} == {"a"}


def test_resigned_with_a_planted_key_is_self_declared_and_fails_under_trusted_keys(run, capsys):
    """The attacker re-signs a's whole ledger with a key of its own, declares it in the
    genesis and writes it to keys/a.pub. Without trusted keys nothing can tell (exit 0),
    so the verdict says the keys are self-declared; with the provisioned identities it fails."""
    path = run / "ledger" / "a.jsonl"
    mallory = generate_identity()
    entries = lines(path)
    entries[0]["body"]["public_key"] = public_pem(mallory)
    write(path, rechain(entries, sign=mallory))
    (run / "keys" / "a.pub").write_text(public_pem(mallory))
    assert main_audit([str(run)]) == 0
    out = capsys.readouterr().out
    assert "keys SELF-DECLARED (found in the audited directory)" in out
    assert "not who wrote it" in out
    assert main_audit([str(run), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["trust"] == "self-declared" and "SELF-DECLARED" in doc["verdict"]
    identities = run.parent / "identities"
    assert main_audit([str(run), "--trusted-keys", str(identities)]) == EXIT_CODES["signature"]
    report = audit_run(run, trusted_keys=identities)
    assert kinds(report) == {"signature"} and {f.client for f in report.failures} == {"a"}
    assert any(f.seq == 0 and "genesis declares another public key" in f.message
               for f in report.failures)
    assert any(str(run / "keys" / "a.pub") in n and "differs from the trusted key" in n
               for n in report.notes)


def test_clean_run_under_trusted_keys_says_so(run, capsys):
    assert main_audit([str(run), "--trusted-keys", str(run.parent / "identities"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["trust"] == "trusted" and "SELF-DECLARED" not in doc["verdict"]
    assert doc["keys"]["b"] == {"source": "trusted",
                                "path": str(run.parent / "identities" / "b.pub")}


def test_trusted_keys_inside_the_audited_directory_are_refused(run, capsys):
    assert main_audit([str(run), "--trusted-keys", str(run / "keys")]) == EXIT_CODES["usage"]
    assert "self-declared, not trusted" in capsys.readouterr().err
    ledger = run / "ledger" / "a.jsonl"
    assert main_audit([str(ledger), "--trusted-keys", str(run / "keys")]) == 2


def test_client_without_a_provisioned_identity_fails(run):
    (run.parent / "identities" / "b.pub").unlink()
    report = audit_run(run, trusted_keys=run.parent / "identities")
    assert kinds(report) == {"signature"} and report.failures[0].client == "b"
    assert "not one of the provisioned identities" in report.failures[0].message


def test_emptied_ledger_fails_genesis(run, tmp_path, capsys):
    """A 0-byte ledger has no chain to break: it used to verify."""
    (run / "ledger" / "b.jsonl").write_bytes(b"")
    report = audit_run(run, no_receipts=True)
    assert kinds(report) == {"genesis"} and report.exit_code() == EXIT_CODES["genesis"] == 19
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert main_audit([str(empty), "--no-receipts"]) == 19
    assert main_audit([str(empty)]) != 0  # and no receipt log either
    assert "empty ledger" in capsys.readouterr().out


def test_genesis_less_ledger_fails(tmp_path):
    """A ledger signed by the right key but without its genesis (so without its declared
    budgets and noise) is not a ledger the client writes."""
    key = generate_identity()
    path = tmp_path / "ledger" / "x.jsonl"
    with Ledger.open(path, client="x", signing_key=key) as led:
        led.append("dp_event", {"round": 0, "exchange": [0, None], **CLIENT})
    report = audit_ledger_file(path, public_key=None, no_receipts=True)
    assert kinds(report) >= {"genesis"}
    with Ledger.open(tmp_path / "y.jsonl", client="y", signing_key=key) as led:
        led.append("genesis", genesis("y", key, clients=["y"], budget_record=None))
        led.append("genesis", genesis("y", generate_identity(), clients=["y"], budget_record=None))
    second = audit_ledger_file(tmp_path / "y.jsonl", no_receipts=True)
    assert any(f.kind == "genesis" and f.seq == 1 for f in second.failures)


def test_deleted_ledger_and_receipts_fail_as_missing(run, capsys):
    """Delete c's ledger and the server's receipt log: it used to say "OK (2 ledgers)"."""
    (run / "ledger" / "c.jsonl").unlink()
    (run / "receipts.jsonl").unlink()
    assert main_audit([str(run)]) == EXIT_CODES["missing"] == 18
    report = audit_run(run)
    assert kinds(report) == {"missing"}
    messages = " | ".join(f.message for f in report.failures)
    assert "ledger/c.jsonl is absent" in messages and "receipts.jsonl is absent" in messages
    assert "FAIL [missing, 18] client c" in capsys.readouterr().out


def test_config_edited_to_hide_a_client_still_misses_its_ledger(run):
    """Also drop c from config.resolved.yaml: the signed geneses declare the federation."""
    (run / "ledger" / "c.jsonl").unlink()
    config = run / "config.resolved.yaml"
    raw = yaml.safe_load(config.read_text())
    raw["clients"] = [c for c in raw["clients"] if c["name"] != "c"]
    config.write_text(yaml.safe_dump(raw))
    assert "name: c" not in config.read_text()
    report = audit_run(run, receipts_path=None, no_receipts=True)
    assert [(f.kind, f.client) for f in report.failures] == [("missing", "c")]


def test_missing_config_fails(run):
    (run / "config.resolved.yaml").unlink()
    assert kinds(audit_run(run)) == {"missing"}


def test_deployed_organisation_directory_audits_its_own_ledger(tmp_path):
    """An organisation's run directory holds only its ledger (genesis scope: organisation);
    the receipt log is the server's, with every organisation's receipts."""
    full = build_run(tmp_path / "full", clients=("a", "b", "c"), scope="organisation")
    org = tmp_path / "hospital" / "run"
    (org / "ledger").mkdir(parents=True)
    (org / "keys").mkdir()
    shutil.copy(full / "ledger" / "b.jsonl", org / "ledger")
    shutil.copy(full / "keys" / "b.pub", org / "keys")
    shutil.copy(full / "config.resolved.yaml", org)
    receipts = full / "receipts.jsonl"
    trusted = tmp_path / "full" / "identities"
    report = audit_run(org, receipts_path=receipts, trusted_keys=trusted)
    assert report.failures == [] and report.trust() == "trusted"
    assert kinds(audit_run(org, trusted_keys=trusted)) == {"missing"}  # receipts: say where
    assert main_audit([str(org / "ledger" / "b.jsonl"), "--receipts", str(receipts),
                       "--trusted-keys", str(trusted)]) == 0
    sim = build_run(tmp_path / "sim", clients=("a", "b", "c"))  # a simulator's ledger alone
    (sim / "ledger" / "a.jsonl").unlink()
    (sim / "ledger" / "c.jsonl").unlink()
    assert {(f.kind, f.client) for f in audit_run(sim, no_receipts=True).failures} == {
        ("missing", "a"), ("missing", "c")}


def test_stray_ledger_of_an_unconfigured_client_fails(run):
    key = load_private(run / "keys" / "a.key")
    with Ledger.open(run / "ledger" / "zed.jsonl", client="zed", signing_key=key) as led:
        led.append("genesis", genesis("zed", key, clients=["zed"], budget_record=None))
    save_public(key, run / "keys", "zed")
    report = audit_run(run, no_receipts=True)
    assert [(f.kind, f.client) for f in report.failures] == [("malformed", "zed")]


@pytest.mark.parametrize(("edit", "what"), [
    (lambda raw: raw.update(protection="secagg"), "protection"),
    (lambda raw: raw["privacy"].update(delta=1e-9), "delta"),
    (lambda raw: raw["privacy"]["budget"].update(record_epsilon=1.0), "record budget"),
])
def test_a_config_that_contradicts_the_signed_geneses_fails(tmp_path, edit, what):
    """config.resolved.yaml is an unsigned file: a tamperer rewrites it to claim secagg, a
    smaller δ or a tighter budget than the clients were accounted under."""
    run = build_run(tmp_path)
    assert audit_run(run, trusted_keys=tmp_path / "identities").exit_code() == 0
    path = run / "config.resolved.yaml"
    raw = yaml.safe_load(path.read_text())
    edit(raw)
    path.write_text(yaml.safe_dump(raw))
    report = audit_run(run, trusted_keys=tmp_path / "identities")
    assert report.exit_code() == EXIT_CODES["edited"]
    assert any(f.kind == "edited" and what in f.message for f in report.failures)
