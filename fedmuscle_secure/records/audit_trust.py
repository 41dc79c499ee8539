"""Whose ledgers are these, and are they all here? ``audit``'s trust checks (DESIGN §4.4).

An auditor trusts provisioned keys, not the directory being audited. A key is *trusted*
when the auditor supplies it (``--trusted-keys DIR``: the provisioned identities,
``<certs>/identities/<client>.pub``; or ``--public-key FILE`` for one ledger) and
*self-declared* when it was found in the audited directory (``keys/<client>.pub``): whoever
rewrote a ledger can re-sign it with a new key and put that key beside it, so a ledger
that verifies under a self-declared key proves only that its chain is intact under *some*
key, not who wrote it. The verdict says which (:meth:`AuditReport.verdict`).

Whatever the key: every entry must be signed, and entry 0 must be a genesis naming the
client and declaring the public key the rest is signed with. The set of ledgers is checked
too: a simulator's run directory (genesis ``scope: federation``: the simulator plays every
organisation) must hold the ledger of every configured client; a deployed organisation's
run directory (genesis ``scope: organisation``) holds its own ledger only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedmuscle_secure.crypto.identity import check_client_name, load_public, load_public_pem
from fedmuscle_secure.errors import ConfigError, IdentityError
from fedmuscle_secure.records.audit_report import AuditReport, fail

__all__ = [
    "SELF_DECLARED",
    "TRUSTED",
    "VerificationKey",
    "check_genesis",
    "check_ledger_set",
    "check_unsigned",
    "configured_clients",
    "inside",
    "refuse_inside",
    "verification_key",
]

TRUSTED, SELF_DECLARED, NONE = "trusted", "self-declared", "none"
#: Genesis ``scope`` values: where the ledger's run directory keeps ledgers.
FEDERATION, ORGANISATION = "federation", "organisation"


@dataclass(frozen=True)
class VerificationKey:
    """The key a ledger is verified under, and where it came from (``source``)."""

    key: Ed25519PublicKey | None
    source: str
    path: str | None

    def describe(self) -> dict:
        return {"source": self.source, "path": self.path}


def inside(path: Path, folder: Path) -> bool:
    p, f = os.path.realpath(path), os.path.realpath(folder)
    return p == f or p.startswith(f.rstrip(os.sep) + os.sep)


def refuse_inside(keys: Path, audited: Path, option: str) -> None:
    """Keys inside the audited directory are self-declared whatever the option says:
    refuse them as ``option`` rather than print a verdict that calls them trusted."""
    if inside(keys, audited):
        raise ConfigError(option, f"{keys} is inside the audited directory {audited}: keys "
                                  "found there are self-declared, not trusted; give the "
                                  "provisioned identities (e.g. <certs>/identities)")


def verification_key(client: str, *, trusted_dir: Path | None, self_dir: Path | None,
                     report: AuditReport) -> VerificationKey:
    """``trusted_dir/<client>.pub`` when a trusted directory is given (absent: a failure,
    the client is not a provisioned identity), else ``self_dir/<client>.pub`` if present."""
    try:
        check_client_name(client)
    except IdentityError as exc:
        report.failures.append(fail("malformed", client, None, str(exc)))
        return VerificationKey(None, NONE, None)
    if trusted_dir is not None:
        path = trusted_dir / f"{client}.pub"
        if not path.is_file():
            report.failures.append(fail("signature", client, None, f"no trusted key {path}: "
                                        f"{client!r} is not one of the provisioned identities"))
            return VerificationKey(None, TRUSTED, str(path))
        try:
            key = load_public(path)
        except IdentityError as exc:
            report.failures.append(fail("signature", client, None, str(exc)))
            return VerificationKey(None, TRUSTED, str(path))
        beside = self_dir / f"{client}.pub" if self_dir is not None else None
        if beside is not None and beside.is_file():
            try:
                same = load_public(beside).public_bytes_raw() == key.public_bytes_raw()
            except IdentityError:
                same = False
            if not same:
                report.notes.append(f"{client}: {beside} differs from the trusted key {path} "
                                    "(ignored: the ledger is verified under the trusted key)")
        return VerificationKey(key, TRUSTED, str(path))
    path = self_dir / f"{client}.pub" if self_dir is not None else None
    if path is None or not path.is_file():
        return VerificationKey(None, NONE, None)
    try:
        return VerificationKey(load_public(path), SELF_DECLARED, str(path))
    except IdentityError as exc:  # still audit the rest; signatures fail below
        report.failures.append(fail("signature", client, None, str(exc)))
        return VerificationKey(None, SELF_DECLARED, str(path))


def check_genesis(client: str, entries: list[dict], path: Path, vkey: VerificationKey,
                  report: AuditReport) -> dict | None:
    """Entry 0 must be a genesis for ``client`` declaring a parseable public key equal to
    the key verified under; no later entry may be a genesis. Returns the genesis body when
    it is valid (the declarations the privacy checks hold the ledger to), else None."""
    for e in entries:
        if e["kind"] == "genesis" and e["seq"] != 0:
            report.failures.append(fail("genesis", client, e["seq"], f"{path}: a genesis at seq "
                                        f"{e['seq']}: only entry 0 may declare the ledger"))
    if not entries:
        report.failures.append(fail("genesis", client, None, f"{path}: empty ledger: no "
                                    "genesis (every client's ledger starts with one)"))
        return None
    first = entries[0]
    if first["seq"] != 0:
        return None  # entry 0 is gone: reported as deleted
    body = first["body"]
    why = None
    if first["kind"] != "genesis":
        why = f"entry 0 is a {first['kind']!r}, not a genesis"
    elif body.get("client") != client:
        why = f"genesis names client {body.get('client')!r}, not {client!r}"
    elif not isinstance(body.get("public_key"), str):
        why = "genesis declares no public_key"
    if why is not None:
        report.failures.append(fail("genesis", client, 0, f"{path}: {why}"))
        return None
    try:
        declared = load_public_pem(body["public_key"], source=f"{path} genesis")
    except IdentityError as exc:
        report.failures.append(fail("genesis", client, 0, str(exc)))
        return None
    if vkey.key is not None and declared.public_bytes_raw() != vkey.key.public_bytes_raw():
        report.failures.append(fail("signature", client, 0, f"{path}: the genesis declares "
                                    f"another public key than the {vkey.source} key "
                                    f"{vkey.path}"))
    return body


def check_unsigned(client: str, entries: list[dict], path: Path, report: AuditReport) -> set[int]:
    """One ``unsigned`` failure for the entries without a signature; returns their seqs
    (the chain scan's per-entry signature problems for them are this one failure)."""
    unsigned = sorted(e["seq"] for e in entries if e["sig"] is None)
    if unsigned:
        report.failures.append(fail(
            "unsigned", client, unsigned[0], f"{path}: {len(unsigned)} of {len(entries)} "
            f"entries are unsigned (first: seq {unsigned[0]}); every client signs its ledger "
            "with its identity key, so these were not written by it"))
    return set(unsigned)


def configured_clients(run_dir: Path, report: AuditReport) -> list[str] | None:
    """The client names of ``run_dir/config.resolved.yaml`` (absent or unreadable: a failure)."""
    path = run_dir / "config.resolved.yaml"
    if not path.is_file():
        report.failures.append(fail("missing", None, None, f"{path} is absent: the run's "
                                    "configured clients, whose ledgers it must hold, are "
                                    "unknown"))
        return None
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        names = [c["name"] for c in raw["clients"]]
        if not names or not all(isinstance(n, str) for n in names):
            raise TypeError("clients: expected a non-empty list of {name: str, ...}")
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        report.failures.append(fail("malformed", None, None, f"{path}: cannot read the "
                                    f"configured clients: {type(exc).__name__}: {exc}"))
        return None
    return names


def check_ledger_set(run_dir: Path, configured: list[str] | None,
                     present: dict[str, dict | None], report: AuditReport) -> str:
    """Fail every expected ledger that is absent and every present one of a client the
    config does not list; returns the scope applied (module docstring)."""
    scope = FEDERATION
    if len(present) == 1:
        (genesis,) = present.values()
        if genesis is not None and genesis.get("scope") == ORGANISATION:
            scope = ORGANISATION
    expected = set(present) if scope == ORGANISATION else set(configured or ())
    if scope == FEDERATION:
        for genesis in present.values():  # the signed declaration of the federation, too
            members = (genesis or {}).get("clients")
            if isinstance(members, list):
                expected |= {m for m in members if isinstance(m, str)}
    for client in sorted(expected - set(present)):
        report.failures.append(fail(
            "missing", client, None, f"{run_dir / 'ledger' / f'{client}.jsonl'} is absent: "
            "every configured client's ledger must be audited (this run directory holds the "
            "whole federation's ledgers)"))
    if configured is not None:
        for client in sorted(set(present) - set(configured)):
            report.failures.append(fail("malformed", client, None, f"ledger of {client!r}, "
                                        "which is not a client of config.resolved.yaml"))
    return scope


def check_config_against_geneses(run_dir: Path, present: dict[str, dict | None],
                                 report: AuditReport) -> None:
    """``config.resolved.yaml`` must say what every signed genesis says: the protection, δ,
    each client's budgets and any noise multiplier the config fixes. The config is an
    unsigned file; a reader who takes the run's parameters from it (a privacy officer, a
    results table) must not be shown other ones than the clients accounted under."""
    path = run_dir / "config.resolved.yaml"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        privacy = raw.get("privacy") or {}
        specs = {c["name"]: c for c in raw["clients"]}
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return  # configured_clients has reported it
    shared_budget = privacy.get("budget") or {}
    sgd = privacy.get("dp_sgd") or {}
    for client, genesis in sorted(present.items()):
        if genesis is None or client not in specs:
            continue
        budget = specs[client].get("budget") or shared_budget
        said = {"protection": raw.get("protection", "plain"), "delta": privacy.get("delta"),
                "record budget": budget.get("record_epsilon"),
                "client budget": budget.get("client_epsilon")}
        signed = {"protection": genesis.get("protection"), "delta": genesis.get("delta"),
                  "record budget": (genesis.get("budget") or {}).get("record"),
                  "client budget": (genesis.get("budget") or {}).get("client")}
        sigmas = genesis.get("noise_multiplier") or {}
        if sgd.get("enabled") and sgd.get("noise_multiplier") is not None:
            said["DP-SGD noise multiplier"] = sgd["noise_multiplier"]
            signed["DP-SGD noise multiplier"] = sigmas.get("record")
        for key, what in (("representation_noise", "representation"), ("update_noise", "update")):
            mech = privacy.get(key) or {}
            if (mech.get("enabled") and mech.get("noise_multiplier") is not None
                    and sigmas.get("client") is not None):  # the local reference releases nothing
                said[f"{what} noise multiplier"] = mech["noise_multiplier"]
                signed[f"{what} noise multiplier"] = sigmas.get("client")
        for what, value in said.items():
            if value != signed[what]:
                report.failures.append(fail(
                    "edited", client, 0, f"{path} says {what} {value!r} but {client}'s signed "
                    f"genesis says {signed[what]!r}: the config is not the one this client "
                    "was accounted under"))
