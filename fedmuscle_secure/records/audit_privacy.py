"""``audit``'s privacy checks: ε recomputed from the recorded events, and the budget rules
checked on every entry, not only where the client wrote an ``epsilon`` (DESIGN §5.3, §5.4).

The genesis is what the client declared before it released anything (δ, a budget per
guarantee, the noise multipliers); every later entry is held to it:

* each ``epsilon`` entry: recorded ε equal to the independent recomputation (dp-accounting)
  from the ``dp_event`` entries of rounds up to its own, within ``EPSILON_RTOL``; its budget
  the genesis's; neither ε over that budget;
* ``dp_event`` entries after the last ``epsilon`` of their guarantee (a client that crashed,
  or a ledger cut before its round closed): their cumulative ε, recomputed the same way,
  within the budget;
* nothing spent or released (``dp_event``, ``egress``) after a ``refusal`` or ``leave``;
* with representation noise on (genesis ``noise_multiplier.client`` not null), every
  ``egress`` preceded by its own client-level ``dp_event`` (same round and exchange): a
  release that the accountant never saw is a release outside the guarantee (the rule is
  :func:`~fedmuscle_secure.records.audit_releases.check_accounted_egress`).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fedmuscle_secure.dp.accounting import (
    EPSILON_RTOL,
    EPSILON_RTOL_MIN_ORDER,
    DpEventRecord,
    compute_epsilon_report,
    independent_epsilon,
)
from fedmuscle_secure.errors import FedMuscleError
from fedmuscle_secure.records.audit_releases import check_accounted_egress
from fedmuscle_secure.records.audit_report import AuditReport, fail

__all__ = ["check_privacy"]

_STOPS = ("refusal", "leave")
_GUARANTEES = ("record", "client")


def _isclose(recorded: float, recomputed: float, rtol: float) -> bool:
    return math.isclose(recorded, recomputed, rel_tol=rtol, abs_tol=1e-12)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@contextmanager
def _quiet_accountants() -> Iterator[None]:
    """dp-accounting logs (through absl) every fractional RDP order whose series it drops;
    expected and harmless here, so keep them out of the audit's output."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl.setLevel(level)


@lru_cache(maxsize=256)
def _independent_epsilon(events: tuple, delta: float) -> float:
    """dp-accounting's ε, cached: clients of one config record identical event sequences."""
    with _quiet_accountants():
        return float(independent_epsilon(events, delta))


def _opacus_replay(used: list, delta: float) -> tuple[float, float | None]:
    """The client's own accountant (Opacus RDP) replayed: (ε, optimal RDP order)."""
    with _quiet_accountants():
        replay = compute_epsilon_report(used, delta)
    return replay.epsilon_rdp, replay.rdp_order


def _below_cross_check_order(used: list, delta: float, claim: float) -> float | None:
    """Opacus's replayed ε when EPSILON_RTOL does not apply (optimal RDP order below
    EPSILON_RTOL_MIN_ORDER, where dp-accounting's bound is the looser one) and ``claim``
    matches that replay; None otherwise (a real mismatch)."""
    eps, order = _opacus_replay(used, delta)
    if order is not None and order < EPSILON_RTOL_MIN_ORDER and _isclose(claim, eps, EPSILON_RTOL):
        return eps
    return None


def _declared(genesis: dict | None, field: str) -> dict[str, Any]:
    """``genesis[field]`` as {guarantee: value} ({} when the genesis does not declare it)."""
    value = (genesis or {}).get(field)
    return {g: value.get(g) for g in _GUARANTEES} if isinstance(value, dict) else {}


def _events(client: str, ordered: list[dict], report: AuditReport):
    """The dp_events per guarantee as (seq, round, record), and the stop/egress rules."""
    events: dict[str, list[tuple[int, int, Any]]] = defaultdict(list)
    stopped_at: dict | None = None
    for e in ordered:
        body, seq, kind = e["body"], e["seq"], e["kind"]
        if kind in _STOPS and stopped_at is None:
            stopped_at = e
        if kind in ("dp_event", "egress") and stopped_at is not None:
            what = "kept spending privacy" if kind == "dp_event" else "released a payload"
            report.failures.append(fail(
                "budget_exceeded", client, seq, f"{kind} recorded after the "
                f"{stopped_at['kind']} at seq {stopped_at['seq']}: the client {what} after it "
                "refused or left"))
        if kind != "dp_event":
            continue
        try:
            record = DpEventRecord.from_dict(body)
            if not isinstance(body.get("round"), int):
                raise TypeError("round: expected an int")
        except (KeyError, TypeError, ValueError, FedMuscleError) as exc:
            report.failures.append(fail("malformed", client, seq, "dp_event body does not "
                                        f"describe a DP event: {type(exc).__name__}: {exc}"))
            continue
        events[record.guarantee].append((seq, body["round"], record))
    return events


@dataclass(frozen=True)
class _Epsilon:
    """One well-formed ``epsilon`` entry: its guarantee ``g``, round ``r``, δ, recorded ε and
    recorded budget (None: no budget)."""

    seq: int
    g: str
    r: int
    delta: float
    eps: float
    recorded_budget: float | None


def _epsilon_entry(client: str, e: dict, report: AuditReport) -> _Epsilon | None:
    """The entry's fields, or None (and a ``malformed`` failure) when one is missing."""
    body, seq = e["body"], e["seq"]
    g, r, delta, eps = (body.get(k) for k in ("guarantee", "round", "delta", "epsilon_rdp"))
    recorded_budget = body.get("budget")
    if not (g in _GUARANTEES and isinstance(r, int) and _is_number(delta)
            and _is_number(eps) and (recorded_budget is None or _is_number(recorded_budget))):
        report.failures.append(fail(
            "malformed", client, seq, "epsilon body needs guarantee ('record'|'client'), "
            "round (int), delta, epsilon_rdp (numbers), budget (number|null)"))
        return None
    return _Epsilon(seq, g, r, delta, eps, recorded_budget)


def _held_budget(client: str, x: _Epsilon, declared: Any, report: AuditReport) -> Any:
    """The budget ``x`` is held to: the genesis's when it declares one (a recorded budget
    that differs from it is a failure), else the recorded one."""
    if not _is_number(declared):
        return x.recorded_budget
    if x.recorded_budget != declared:
        report.failures.append(fail(
            "budget_exceeded", client, x.seq, f"{x.g}-level ε after round {x.r} records budget "
            f"{x.recorded_budget} but the genesis declares {declared:g}: the budget was dropped "
            "or changed"))
    return declared


def _recomputed(client: str, x: _Epsilon, events: dict, cache: dict,
                report: AuditReport) -> tuple[list, float] | None:
    """(the events up to round ``x.r``, their independently recomputed ε), cached per
    (guarantee, round, δ); None (and a ``malformed`` failure) when it cannot be computed."""
    key = (x.g, x.r, x.delta)
    if key not in cache:
        used = [rec for _, rnd, rec in events.get(x.g, []) if rnd <= x.r]
        try:
            cache[key] = used, _independent_epsilon(tuple(used), float(x.delta))
        except (TypeError, ValueError, FedMuscleError) as exc:
            report.failures.append(fail("malformed", client, x.seq, f"cannot recompute ε for "
                                        f"{x.g!r} round {x.r}: {type(exc).__name__}: {exc}"))
            return None
    return cache[key]


def _reference(client: str, x: _Epsilon, used: list, recomputed: float,
               report: AuditReport) -> float:
    """The recomputed ε the budget is checked against; a recorded ε that matches neither
    dp-accounting nor (at low RDP orders) the Opacus replay is an ``epsilon_mismatch``."""
    if _isclose(x.eps, recomputed, EPSILON_RTOL):
        return recomputed
    replayed = _below_cross_check_order(used, x.delta, x.eps) if recomputed >= x.eps else None
    if replayed is None:
        report.failures.append(fail(
            "epsilon_mismatch", client, x.seq, f"{x.g}-level ε after round {x.r} recorded "
            f"{x.eps:.6g}, recomputed {recomputed:.6g} (dp-accounting RDP) from {len(used)} "
            f"recorded events (δ={x.delta:g}, relative tolerance {EPSILON_RTOL:g})"))
        return recomputed
    report.notes.append(
        f"{client}: seq {x.seq}: {x.g}-level ε {x.eps:.6g} after round {x.r} matches the "
        f"Opacus replay; dp-accounting gives {recomputed:.6g}, looser at low RDP "
        "orders where the cross-check tolerance does not apply")
    return replayed


def _check_budget(client: str, x: _Epsilon, budget: Any, reference: float,
                  report: AuditReport) -> None:
    """Neither the recorded nor the recomputed ε over the budget (if there is one)."""
    if budget is None:
        return
    if x.eps > budget:
        report.failures.append(fail("budget_exceeded", client, x.seq, f"{x.g}-level ε "
                                    f"{x.eps:.6g} after round {x.r} exceeds the budget "
                                    f"{budget:g}"))
    elif reference > budget * (1 + EPSILON_RTOL):
        report.failures.append(fail("budget_exceeded", client, x.seq, f"{x.g}-level ε "
                                    f"recomputed {reference:.6g} after round {x.r} exceeds the "
                                    f"budget {budget:g} (recorded {x.eps:.6g})"))


def check_privacy(client: str, ordered: list[dict], genesis: dict | None,
                  report: AuditReport) -> dict:
    """ε recomputation and budget rules (module docstring); returns
    {(round, guarantee): table cells}."""
    events = _events(client, ordered, report)
    _check_declared_sigma(client, events, _declared(genesis, "noise_multiplier"), report)
    _check_update_events(client, events.get("client", []), (genesis or {}).get("update_noise"),
                         ordered, report)
    check_accounted_egress(client, ordered,
                           _declared(genesis, "noise_multiplier").get("client") is not None,
                           report)
    budgets = _declared(genesis, "budget")
    cells: dict[tuple[Any, str], dict] = {}
    cache: dict[tuple[str, int, float], tuple[list, float]] = {}
    last_epsilon: dict[str, int] = {}
    delta_seen: float | None = None
    for e in ordered:
        if e["kind"] != "epsilon" or (x := _epsilon_entry(client, e, report)) is None:
            continue
        last_epsilon[x.g], delta_seen = x.seq, x.delta
        budget = _held_budget(client, x, budgets.get(x.g), report)
        if (found := _recomputed(client, x, events, cache, report)) is None:
            continue
        used, recomputed = found
        _check_budget(client, x, budget, _reference(client, x, used, recomputed, report), report)
        cells[(x.r, x.g)] = {f"epsilon_{x.g}": x.eps, f"recomputed_{x.g}": recomputed,
                             f"budget_{x.g}": budget}
    delta = (genesis or {}).get("delta")
    delta = delta if _is_number(delta) else delta_seen
    for g in _GUARANTEES:
        _check_trailing(client, g, events.get(g, []), last_epsilon.get(g, -1), budgets.get(g),
                        delta, report)
    return cells


def _check_declared_sigma(client: str, events: dict, declared: dict, report: AuditReport) -> None:
    """Every dp_event's noise multiplier is the one the genesis declares for its guarantee:
    the client draws its noise at the declared σ, so an event with another σ accounts for
    noise that was not drawn (a larger one would report a smaller ε)."""
    for g, entries in events.items():
        sigma = declared.get(g)
        if not _is_number(sigma):
            continue
        for seq, _, record in entries:
            if record.noise_multiplier != sigma:
                report.failures.append(fail(
                    "epsilon_mismatch", client, seq, f"{g}-level dp_event with noise "
                    f"multiplier {record.noise_multiplier:g} where the genesis declares "
                    f"{sigma:g}: the event does not describe the noise the client draws"))


def _check_update_events(client: str, events: list, declared: Any, ordered: list[dict],
                         report: AuditReport) -> None:
    """Under update noise (the genesis declares its clip C and the parts a release holds)
    every client-level event is a release of clipped updates: sensitivity 2C, and as many
    steps as parts it covers, all of them for a plain release (exchange (0, None)), one for
    a secure sum's (exchange (0, part)). Fewer steps or another sensitivity would account
    for less than was released."""
    if not isinstance(declared, dict) or not _is_number(declared.get("clip")) \
            or not isinstance(declared.get("parts"), int):
        return
    exchanges = {e["seq"]: e["body"].get("exchange") for e in ordered if e["kind"] == "dp_event"}
    for seq, _, record in events:
        exchange = exchanges.get(seq)
        steps = declared["parts"] if isinstance(exchange, list) and exchange[1:] == [None] else 1
        if record.sensitivity != 2 * declared["clip"] or record.steps != steps:
            report.failures.append(fail(
                "epsilon_mismatch", client, seq, f"update-noise dp_event with sensitivity "
                f"{record.sensitivity:g} and {record.steps} step(s) where the genesis declares "
                f"clip {declared['clip']:g} (sensitivity {2 * declared['clip']:g}) and "
                f"{steps} part(s) for its exchange {exchange}: it accounts for less than "
                "was released"))


def _check_trailing(client: str, g: str, events: list[tuple[int, int, Any]], after: int,
                    budget: Any, delta: Any, report: AuditReport) -> None:
    """dp_events of ``g`` after its last epsilon entry (seq ``after``): no epsilon entry
    vouches for them, so recompute their cumulative ε and hold it to the declared budget;
    the first event that crosses it is the one reported."""
    trailing = [i for i, (seq, _, _) in enumerate(events) if seq > after]
    if not trailing or not _is_number(budget):
        return
    if not _is_number(delta):
        report.failures.append(fail("malformed", client, events[trailing[0]][0], "cannot "
                                    f"recompute the {g}-level ε of dp_events after the last "
                                    "epsilon entry: neither the genesis nor an epsilon entry "
                                    "records δ"))
        return

    def crosses(k: int) -> float | None:
        """ε of events[: k + 1] when it exceeds the budget, else None."""
        used = [rec for _, _, rec in events[: k + 1]]
        eps = _independent_epsilon(tuple(used), float(delta))
        if eps <= budget * (1 + EPSILON_RTOL):
            return None
        replay, order = _opacus_replay(used, float(delta))
        if order is not None and order < EPSILON_RTOL_MIN_ORDER and replay <= budget:
            return None  # dp-accounting's looser bound; the client's accountant stayed within
        return eps

    try:
        if crosses(trailing[-1]) is None:
            return
        lo, hi = 0, len(trailing) - 1  # ε only grows with more events: find the first crossing
        while lo < hi:
            mid = (lo + hi) // 2
            if crosses(trailing[mid]) is None:
                lo = mid + 1
            else:
                hi = mid
        k = trailing[lo]
        eps = crosses(k)
    except (TypeError, ValueError, FedMuscleError) as exc:
        report.failures.append(fail("malformed", client, events[trailing[0]][0], "cannot "
                                    f"recompute the {g}-level ε: {type(exc).__name__}: {exc}"))
        return
    seq, rnd, _ = events[k]
    report.failures.append(fail(
        "budget_exceeded", client, seq, f"{g}-level ε recomputed {eps:.6g} after this "
        f"dp_event (round {rnd}, {k + 1} events) exceeds the budget {budget:g}; no epsilon "
        "entry follows it (the ledger stops, or was cut, before the round closed)"))
