"""Run directories and ledger surgery for the ``audit`` tests (tests only).

:func:`build_run` writes what the simulator writes (signed ledgers with a genesis,
``keys/<c>.pub|.key``, ``receipts.jsonl``, ``config.resolved.yaml``) plus, outside the run
directory, ``identities/<c>.pub``: the provisioned keys an auditor trusts. The other
helpers are the attacker's tools: rewrite entries, re-hash and re-chain them, re-sign them.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from fedmuscle_secure.crypto.identity import generate_identity, public_pem
from fedmuscle_secure.crypto.identity import sign_entry_hash as _sign
from fedmuscle_secure.dp.accounting import DpEventRecord, independent_epsilon
from fedmuscle_secure.records.audit import AuditReport
from fedmuscle_secure.records.identity_files import save_identity
from fedmuscle_secure.records.ledger import (
    Ledger,
    ReceiptLog,
    canonical_json,
    entry_hash,
    payload_digest,
)

DELTA = 1e-5
RECORD = {"guarantee": "record", "mechanism": "poisson_gaussian", "noise_multiplier": 1.0,
          "sample_rate": 0.25, "steps": 20, "sensitivity": 1.0,
          "neighbouring": "add_remove_record"}
CLIENT = {"guarantee": "client", "mechanism": "gaussian", "noise_multiplier": 3.0,
          "sample_rate": 1.0, "steps": 14, "sensitivity": 16.0,
          "neighbouring": "replace_client_dataset"}
ROUNDS = 2


@functools.cache
def eps_after(event: str, rounds: int) -> float:
    """The independent ε after ``rounds`` events of one kind (the tests' oracle)."""
    fields = RECORD if event == "record" else CLIENT
    return independent_epsilon([DpEventRecord.from_dict(fields)] * rounds, DELTA)


def genesis(client: str, key, *, clients, budget_record, scope="federation",
            client_sigma: float | None = CLIENT["noise_multiplier"]) -> dict:
    """The genesis body the simulator writes (``fedmuscle_secure.federation.client_privacy``)."""
    return {"client": client, "public_key": public_pem(key), "delta": DELTA,
            "method": "muscle", "protection": "plain", "clients": list(clients), "scope": scope,
            "budget": {"record": budget_record, "client": None},
            "noise_multiplier": {"record": RECORD["noise_multiplier"], "client": client_sigma},
            "max_grad_norm": 1.0}


def build_run(root: Path, *, clients=("a", "b"), budget_record=20.0, eps_scale=1.0,
              receipt_for=lambda client, rnd, digest: digest, after_last=None,
              epsilon_budget: Callable[[str, float | None], float | None] = lambda g, b: b,
              scope: str = "federation",
              client_sigma: float | None = CLIENT["noise_multiplier"]) -> Path:
    """A run directory as the simulator writes it, ``root/run``; ``root/identities`` holds
    the provisioned public keys. ``eps_scale`` falsifies the recorded record-level ε of the
    last round, ``receipt_for`` lets the server log another digest (or None: no receipt),
    ``epsilon_budget(guarantee, budget)`` the budget an epsilon entry records,
    ``after_last(ledger, receipts)`` appends more entries (and receipts); ``client_sigma``
    is the representation noise the genesis declares (None: off)."""
    run = root / "run"
    run.mkdir(parents=True)
    (run / "config.resolved.yaml").write_text(yaml.safe_dump(
        {"name": "audit-test", "protection": "plain",
         "clients": [{"name": c, "model": "m", "task": "t", "budget": None} for c in clients],
         "privacy": {"delta": DELTA, "budget": {"record_epsilon": budget_record,
                                                "client_epsilon": None}}}))
    receipts = ReceiptLog.open(run / "receipts.jsonl")
    for c in clients:
        key = generate_identity()
        save_identity(key, run / "keys", c)
        (root / "identities").mkdir(exist_ok=True)  # what provision init hands out
        (root / "identities" / f"{c}.pub").write_text(public_pem(key))
        led = Ledger.open(run / "ledger" / f"{c}.jsonl", client=c, signing_key=key)
        led.append("genesis", genesis(c, key, clients=clients, budget_record=budget_record,
                                      scope=scope, client_sigma=client_sigma))
        for r in range(ROUNDS):
            led.append("dp_event", {"round": r, "exchange": None, **RECORD})
            led.append("dp_event", {"round": r, "exchange": [0, None], **CLIENT})
            z = torch.full((4, 3), float(r + ord(c)))
            digest, size = payload_digest(z)
            led.append("egress", {"round": r, "exchange": [0, None], "recipient": "server",
                                  "sha256": digest, "bytes": size})
            logged = receipt_for(c, r, digest)
            if logged is not None:
                receipts.append(c, r, (0, None), logged, size)
            for g, budget in (("record", budget_record), ("client", None)):
                eps = eps_after(g, r + 1)
                if g == "record" and r == ROUNDS - 1:
                    eps *= eps_scale
                led.append("epsilon", {"round": r, "guarantee": g, "delta": DELTA,
                                       "epsilon_rdp": eps, "epsilon_prv": None,
                                       "accountant": "opacus rdp+prv",
                                       "budget": epsilon_budget(g, budget)})
        if after_last is not None:
            after_last(led, receipts)
        led.close()
    receipts.close()
    return run


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def write(path: Path, entries: list[dict]) -> None:
    path.write_text("".join(canonical_json(e) + "\n" for e in entries), encoding="utf-8")


def rechain(entries: list[dict], sign=None) -> list[dict]:
    """What an attacker does after editing bodies: renumber, re-hash and re-link every
    entry, then sign each with ``sign`` (a private key) or strip the signatures (None)."""
    prev = "0" * 64
    for i, e in enumerate(entries):
        e["seq"], e["prev"] = i, prev
        e["hash"] = prev = entry_hash(e)
        e["sig"] = _sign(sign, e["hash"]) if sign is not None else None
    return entries


def release(led: Ledger, receipts: ReceiptLog | None, r: int, exchange: list, data: bytes,
            *, dp_event: bool = True) -> int:
    """Append a client-level release (its dp_event unless ``dp_event`` is false, then its
    egress) and, with ``receipts``, the server's receipt of it; returns the egress seq."""
    if dp_event:
        led.append("dp_event", {"round": r, "exchange": exchange, **CLIENT})
    digest, size = payload_digest(data)
    e = led.append("egress", {"round": r, "exchange": exchange, "recipient": "server",
                              "sha256": digest, "bytes": size})
    if receipts is not None:
        receipts.append(led.client, r, exchange, digest, size)
    return e["seq"]


def kinds(report: AuditReport) -> set[str]:
    return {f.kind for f in report.failures}
