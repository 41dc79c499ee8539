"""Who is in a deployed run: exclusions at a restart, and the rows of those who left (DESIGN §6).

No I/O: :mod:`fedmuscle_secure.server.grpc_server` calls these. An organisation leaves a
deployed run by its own ``Leave`` (budget spent), by losing its stream (killed, network,
a stage deadline, its certificate revoked: :mod:`~fedmuscle_secure.server.coordinator`),
by being absent when the run starts with the quorum of ``deployment.min_clients``, or by
the operator's ``server --resume --exclude ORG``. Either way the server's state machine
records a departure (client, round, reason) and the organisation keeps a ``final`` row in
the server's ``metrics.csv`` and ``summary.md``, with when and why it left, as the
simulator keeps its row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fedmuscle_secure.config import ExperimentConfig
from fedmuscle_secure.config_deployment import min_members
from fedmuscle_secure.errors import ConfigError, QuorumLost
from fedmuscle_secure.messages import METRIC_SOURCES, NOT_REPORTED

#: Reasons recorded for departures the server decided between rounds; an organisation that
#: left with one of them is refused again when the server is restarted with ``--resume``.
EXCLUDED = "excluded by the operator when the server resumed (server --resume --exclude)"
ABSENT = "absent"
#: How a departure the coordinator decided because the CRL revoked the member's certificate
#: begins (the reason of its ``Leave``): barred again after a restart, since the CRL only
#: refuses the revoked certificate, not a second one for the same client id.
REVOKED = "transport: certificate revoked"
#: The metrics of a departed organisation's ``final`` row: what the server last received
#: that the accounting covers (its ε up to the end of the last round it reported).
CARRIED = ("eps_record", "eps_client")


def resolve_exclusions(cfg: ExperimentConfig, active: Sequence[str], exclude: Sequence[str],
                       names: Mapping[str, str]) -> list[str]:
    """The client ids named by ``--exclude`` (a client id of the config, or an organisation
    name, i.e. a certificate CN of ``clients.yaml``), in order. Raises :class:`ConfigError`
    for a name that is neither and :class:`QuorumLost` when the members left in the run
    would be fewer than the protection needs (:func:`min_members`): the server then stops
    before running anything."""
    configured = [c.name for c in cfg.clients]
    ids: list[str] = []
    for org in exclude:
        cid = org if org in configured else names.get(org)
        if cid not in configured:
            raise ConfigError("--exclude", f"{org!r} is neither a client of the config nor an "
                                           f"organisation of clients.yaml; expected one of "
                                           f"{configured}")
        if cid not in ids:
            ids.append(cid)
    remaining = [c for c in active if c not in ids]
    floor = min_members(cfg)
    if len(remaining) < floor:
        need = (f"protection 'secagg' needs at least max(3, t) = {floor} (a secure sum over "
                "fewer would show each member the others' inputs)" if cfg.protection == "secagg"
                else "at least one must remain")
        raise QuorumLost(f"--exclude {' '.join(exclude)}: {len(remaining)} organisation(s) "
                         f"would remain in the run ({remaining}) but {need}; nothing was run")
    return ids


def barred_on_resume(departures: Sequence[Mapping[str, Any]],
                     excluded: Sequence[str] = ()) -> dict[str, str]:
    """The organisations a restarted server refuses, with why: those the server decided
    to leave out (excluded, absent at the start, revoked), as the first one did, and every
    one ``--exclude`` names now, even one that had already left (it could otherwise come
    back after the restart). An organisation that left on its own (its ``Leave``, its
    stream) may reconnect: it is no longer a member, but it answers ``Finish`` with its
    closing report."""
    barred = {str(d["client"]): str(d["reason"]) for d in departures
              if str(d["reason"]).startswith((EXCLUDED, ABSENT, REVOKED))}
    barred.update({c: EXCLUDED for c in excluded})
    return barred


def final_row_metrics(client: str, rows: Sequence[Mapping[str, Any]],
                  departure: Mapping[str, Any] | None, final: Mapping[str, float] | None,
                  gone: str | None, final_round: int) -> dict[str, Any]:
    """The metrics of ``client``'s ``final`` row: its closing report (``final``) when it
    sent one, else what the server last received from it (:data:`CARRIED`; its other
    metrics are ``not reported``: the server never had them), with the round it left and
    why (``departure``; or its stream's end, ``gone``, if it left after the last round)."""
    if final is not None:
        out: dict[str, Any] = dict(final)
    else:
        mine = [r for r in rows if r["client"] == client and r["round"] != "final"]
        last = mine[-1] if mine else {}
        out = {k: NOT_REPORTED for k in METRIC_SOURCES if k in last}
        out.update({k: last[k] for k in CARRIED if last.get(k) is not None})
        out.update(bytes_sent=0.0, bytes_received=0.0)
    if departure is not None:
        out.update(left_round=departure["round"], left_reason=departure["reason"] or "unknown")
    elif final is None:
        out.update(left_round=final_round,
                   left_reason=f"no final report ({gone or 'not connected at the end'})")
    return out
