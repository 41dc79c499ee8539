"""DP events, ε accounting and noise calibration (DESIGN §5.3).

Analysis apart from bookkeeping (DESIGN §13.4, after Opacus ``accountants/analysis`` and
dp-accounting's frozen ``DpEvent`` values):

* :class:`~fedmuscle_secure.dp.events.DpEventRecord` (in :mod:`.events`, re-exported
  here) is an immutable description of what ran (mechanism, noise multiplier, sampling
  rate, steps, sensitivity, neighbouring relation); it is what the ledger stores and what
  every accountant replays.
* :func:`compute_epsilon_report` is pure: events in, ε out, on fresh Opacus accountants
  (RDP and PRV) every time.
* :class:`PrivacyAccountant` only keeps the event list of one client and one guarantee; it
  validates an event completely before it appends it.
* :func:`independent_epsilon` / :func:`independent_epsilon_pld` recompute ε with Google's
  dp-accounting, the independent cross-check used by the tests and by ``audit``.

Noise multipliers are always relative to the event's own sensitivity, which already
covers its neighbouring relation (``max_grad_norm`` for add/remove of one record under
DP-SGD; 2√B for replacing a client's whole dataset, DESIGN §5.1). Every event is therefore
accounted as a unit-sensitivity Gaussian (optionally Poisson-subsampled), which is what
Opacus computes and what dp-accounting computes under its default ``ADD_OR_REMOVE_ONE``
relation. (dp-accounting's ``REPLACE_ONE`` would double the sensitivity of a Gaussian a
second time in its PLD accountant, though not in its RDP accountant.)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import dp_accounting
import numpy as np
import opacus
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from fedmuscle_secure.dp.events import (
    GUARANTEES,
    DpEventRecord,
    _event_problems,
    _is_real,
    _raise_problems,
)
from fedmuscle_secure.errors import ConfigError, PrivacyBudgetExceeded

__all__ = [
    "EPSILON_RTOL",
    "EPSILON_RTOL_MIN_ORDER",
    "PRV_EPS_ERROR",
    "PRV_PLD_ATOL",
    "RDP_ORDERS",
    "DpEventRecord",
    "EpsilonReport",
    "PrivacyAccountant",
    "calibrate_noise_multiplier",
    "compute_epsilon_report",
    "independent_epsilon",
    "independent_epsilon_pld",
]


#: RDP orders α given to Opacus's RDP accountant: its defaults (1.1..10.9 by 0.1, 12..63)
#: plus the orders of dp-accounting's default grid that Opacus lacks (11, 128..1024). Every
#: order gives a valid bound, so more orders only tighten ε; without 128..1024 Opacus
#: stopped at α = 63 for small ε (σ = 5, q ≤ 0.05, ≤ 30 steps) and reported up to 2.3×
#: dp-accounting's ε, and without 11 up to 0.8 % more.
RDP_ORDERS: tuple[float, ...] = tuple(sorted(
    set(RDPAccountant.DEFAULT_ALPHAS) | {11, 128, 256, 512, 1024}))

#: Relative tolerance between Opacus's RDP ε (on :data:`RDP_ORDERS`) and dp-accounting's
#: RDP ε (on its default orders, the same set) for the same events.
#:
#: Both convert RDP to (ε, δ) with the same bound (Balle et al. 2020, Thm 21 = Canonne et
#: al., Prop. 12) and agree to ~1e-12 on plain Gaussian events (closed form) at any ε.
#: What remains is the RDP of a Poisson-subsampled Gaussian at fractional orders:
#: dp-accounting sums the absolute values of the series terms (a looser bound than Opacus's
#: signed, exact series) and drops an order whose series has not converged after 1000
#: terms, so Opacus's ε is never the larger one (measured max excess 2e-13). Measured over
#: q ∈ {0.02, 0.05, 0.1, 0.25, 0.5}, σ ∈ {0.6..5}, 1..3000 steps, δ ∈ {1e-5, 1e-6}:
#:
#: * Opacus's optimal order (:attr:`EpsilonReport.rdp_order`) ≥ 3: Opacus at most 1.34 %
#:   below dp-accounting (q = 0.5), under 0.5 % for q ≤ 0.25. This covers ε ≲ 10 at
#:   δ = 1e-5 (the tests' q = 0.25 sequences at ε ≈ 10, orders 2.5–2.9, are within 0.7 %).
#: * optimal order < 3 (DP-SGD ε of tens): the gap grows with ε — 2–4 % at ε ≈ 15–20, tens
#:   of per cent beyond ε ≈ 40 — and EPSILON_RTOL does not apply; dp-accounting is the
#:   looser of the two there, not the more careful.
EPSILON_RTOL = 0.02
EPSILON_RTOL_MIN_ORDER = 3.0

#: ``eps_error`` given to Opacus's PRV accountant (its default). The value it reports is
#: its upper bound, the estimate plus ``eps_error``.
PRV_EPS_ERROR = 0.01
#: Absolute tolerance between Opacus's PRV ε and dp-accounting's PLD ε: PRV's own error
#: band (± eps_error around its estimate) is 2·eps_error wide, and PLD at discretisation
#: 1e-4 is a pessimistic estimate inside it. Measured: PRV − PLD ∈ [+0.0100, +0.0134] over
#: DP-SGD (q ∈ {0.01, 0.25}, σ ∈ {0.8..2}, 10..10⁴ steps) and Gaussian (σ ∈ {1..20},
#: 1..140 steps) sequences, ε from 0.07 to 129.
PRV_PLD_ATOL = 2 * PRV_EPS_ERROR
#: PRV is not attempted above this RDP ε (its estimate is then None). Opacus sizes PRV's
#: discretisation domain from the privacy loss, so its time and memory grow with ε: measured
#: 3 s at ε ≈ 390, 27 s at ≈ 2000 (where it gives up), and an out-of-memory kill (a 48 TiB
#: array) for a Gaussian with σ = 0.1 over 700 steps. ε of that size protects nothing; the
#: reported RDP bound is still computed and enforced.
PRV_MAX_EPSILON = 500.0

ACCOUNTANT_NAME = f"opacus {opacus.__version__} rdp+prv"


@dataclass(frozen=True)
class EpsilonReport:
    """ε at ``delta`` of a sequence of events, from Opacus's accountants.

    ``epsilon_prv`` is None where the PRV accountant cannot compute: no events (nothing to
    discretise), or its numerical limits (δ so small that float error dominates, a
    discretisation whose mean drifts; Opacus raises and we do not guess), or an RDP ε above
    :data:`PRV_MAX_EPSILON` (PRV's domain, hence its memory, grows with ε).
    ``rdp_order`` is the RDP order α at which the RDP bound was attained (None with no
    events); :data:`EPSILON_RTOL` is measured for α ≥ :data:`EPSILON_RTOL_MIN_ORDER`.
    """

    epsilon_rdp: float
    epsilon_prv: float | None
    delta: float
    accountant: str
    rdp_order: float | None = None

    @property
    def epsilon(self) -> float:
        """The reported bound: the RDP ε. It is a rigorous upper bound from closed-form RDP
        values; PRV is tighter but a numerical approximation (its value is an error-bounded
        estimate of a discretised FFT composition), so budgets are enforced on RDP."""
        return self.epsilon_rdp

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "epsilon": self.epsilon}


# --------------------------------------------------------------------------------------
# analysis (pure): events -> ε


def _check_delta(delta: Any, field: str = "delta") -> float:
    if not (_is_real(delta) and 0 < delta < 1):
        raise ConfigError(field, f"expected a number in (0, 1), got {delta!r}")
    return float(delta)


def _check_events(events: Sequence[DpEventRecord], field: str = "events") -> tuple:
    events = tuple(events)
    for i, e in enumerate(events):
        if not isinstance(e, DpEventRecord):
            raise ConfigError(f"{field}.{i}", f"expected a DpEventRecord, got {type(e).__name__}")
    kinds = {e.guarantee for e in events}
    if len(kinds) > 1:
        raise ConfigError(field, f"mixes guarantees {sorted(kinds)}: record- and client-level "
                          "ε are separate guarantees, account them separately")
    return events


def opacus_history(events: Sequence[DpEventRecord]) -> list[tuple[float, float, int]]:
    """Opacus accountant ``history`` — (noise_multiplier, sample_rate, steps) — with the
    steps of equal (σ, q) pairs summed: composition is commutative, and RDP and PRV cost
    grows with the number of distinct pairs, not with steps."""
    merged: dict[tuple[float, float], int] = {}
    for e in events:
        key = (e.noise_multiplier, e.sample_rate)
        merged[key] = merged.get(key, 0) + e.steps
    return [(s, q, n) for (s, q), n in merged.items()]


def _rdp_epsilon(history: list, delta: float) -> tuple[float, float | None]:
    accountant = RDPAccountant()
    accountant.history = list(history)
    eps, order = accountant.get_privacy_spent(delta=delta, alphas=list(RDP_ORDERS))
    return float(eps), (float(order) if history else None)


def _prv_epsilon(history: list, delta: float) -> float | None:
    if not history:
        return None
    accountant = PRVAccountant()
    accountant.history = list(history)
    # q = 1 evaluates log(1 - q) = -inf inside Opacus's PRV; numpy warns, the result is fine.
    try:
        with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore",
                                                    over="ignore"):
            warnings.simplefilter("ignore")
            eps = float(accountant.get_epsilon(delta=delta, eps_error=PRV_EPS_ERROR))
    except (ValueError, RuntimeError, FloatingPointError, OverflowError, MemoryError):
        return None
    return eps if math.isfinite(eps) else None


@lru_cache(maxsize=128)
def _report_cached(events: tuple, delta: float) -> EpsilonReport:
    history = opacus_history(events)
    eps_rdp, order = _rdp_epsilon(history, delta)
    prv = _prv_epsilon(history, delta) if eps_rdp <= PRV_MAX_EPSILON else None
    return EpsilonReport(epsilon_rdp=eps_rdp, epsilon_prv=prv,
                         delta=delta, accountant=ACCOUNTANT_NAME, rdp_order=order)


@lru_cache(maxsize=256)
def _rdp_report_cached(events: tuple, delta: float) -> EpsilonReport:
    eps_rdp, order = _rdp_epsilon(opacus_history(events), delta)
    return EpsilonReport(epsilon_rdp=eps_rdp, epsilon_prv=None, delta=delta,
                         accountant=ACCOUNTANT_NAME, rdp_order=order)


def compute_epsilon_report(events: Sequence[DpEventRecord], delta: float) -> EpsilonReport:
    """ε of ``events`` composed, at ``delta``, on fresh Opacus RDP and PRV accountants.
    ε is 0.0 (and PRV None) with no events."""
    return _report_cached(_check_events(events), _check_delta(delta))


def independent_epsilon(events: Sequence[DpEventRecord], delta: float) -> float:
    """ε from Google's dp-accounting RDP accountant (default orders), composed over all
    events: the independent check of :attr:`EpsilonReport.epsilon_rdp` (see
    :data:`EPSILON_RTOL`)."""
    events, delta = _check_events(events), _check_delta(delta)
    if not events:
        return 0.0
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.ComposedDpEvent([e.to_dp_event() for e in events]))
    return float(accountant.get_epsilon(delta))


def independent_epsilon_pld(events: Sequence[DpEventRecord], delta: float, *,
                            value_discretization_interval: float = 1e-4) -> float:
    """ε from dp-accounting's PLD accountant (pessimistic discretisation): the independent
    check of :attr:`EpsilonReport.epsilon_prv` (see :data:`PRV_PLD_ATOL`)."""
    events, delta = _check_events(events), _check_delta(delta)
    if not events:
        return 0.0
    accountant = dp_accounting.pld.PLDAccountant(
        value_discretization_interval=value_discretization_interval)
    accountant.compose(dp_accounting.ComposedDpEvent([e.to_dp_event() for e in events]))
    return float(accountant.get_epsilon(delta))


def calibrate_noise_multiplier(*, target_epsilon: float, delta: float, sample_rate: float,
                               steps: int, accountant: str = "rdp",
                               epsilon_tolerance: float = 0.01) -> float:
    """The noise multiplier σ at which ``steps`` runs of the (Poisson-subsampled, rate
    ``sample_rate``; 1.0 for a plain Gaussian) mechanism reach ε ≤ ``target_epsilon`` at
    ``delta``, within ``epsilon_tolerance`` (absolute) below it.

    The binary search is Opacus's own (``get_noise_multiplier``, as in
    ``make_private_with_epsilon``) on a fresh accountant; the result is then checked on
    another fresh one. Use ``accountant="rdp"`` (the default) when the budget is enforced
    by :class:`PrivacyAccountant`, which enforces on the RDP ε; a PRV-calibrated σ is
    smaller and its RDP ε exceeds the target.
    """
    if not (_is_real(target_epsilon) and math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ConfigError("target_epsilon", f"expected a finite number > 0, got {target_epsilon!r}")
    delta = _check_delta(delta)
    if not (_is_real(sample_rate) and 0 < sample_rate <= 1):
        raise ConfigError("sample_rate", f"expected a number in (0, 1], got {sample_rate!r}")
    if not (isinstance(steps, (int, np.integer)) and not isinstance(steps, bool) and steps >= 1):
        raise ConfigError("steps", f"expected an int >= 1, got {steps!r}")
    if accountant not in ("rdp", "prv"):
        raise ConfigError("accountant", f"expected 'rdp' or 'prv', got {accountant!r}")
    if not (_is_real(epsilon_tolerance) and 0 < epsilon_tolerance < target_epsilon):
        raise ConfigError("epsilon_tolerance",
                          f"expected a number in (0, target_epsilon), got {epsilon_tolerance!r}")
    sample_rate, steps = float(sample_rate), int(steps)
    # Forwarded by Opacus to the accountant's get_epsilon: calibrate on the orders we report on.
    orders = {"alphas": list(RDP_ORDERS)} if accountant == "rdp" else {}
    try:
        with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore",
                                                    over="ignore"):
            # Intermediate σ of the search hit the ends of the order grid; not our answer.
            warnings.simplefilter("ignore")
            sigma = float(get_noise_multiplier(
                target_epsilon=float(target_epsilon), target_delta=delta,
                sample_rate=sample_rate, steps=steps, accountant=accountant,
                epsilon_tolerance=float(epsilon_tolerance), **orders))
    except (ValueError, RuntimeError) as exc:
        raise ConfigError("target_epsilon", f"ε = {target_epsilon} at δ = {delta} cannot be "
                          f"reached with {steps} steps at sample rate {sample_rate} "
                          f"({accountant}): {exc}") from exc
    history = [(sigma, sample_rate, steps)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check = _rdp_epsilon(history, delta)[0] if accountant == "rdp" \
            else _prv_epsilon(history, delta)
    if check is None or not check <= target_epsilon:
        raise RuntimeError(f"calibration returned σ = {sigma} with {accountant} ε = {check} "
                           f"> target {target_epsilon}; this is a bug")
    return sigma


# --------------------------------------------------------------------------------------
# bookkeeping


class PrivacyAccountant:
    """One client, one guarantee. Keeps the event list; ε via Opacus's RDP and PRV accountants.

    Every query (``report``, ``report_if``, ``check_budget``) replays the event list on
    fresh accountants (:func:`compute_epsilon_report`, memoised on the immutable event
    tuple), so asking "what if" never changes what was recorded, and ``record`` validates
    the event and computes its report before it appends anything.
    """

    def __init__(self, *, guarantee: str, delta: float) -> None:
        if guarantee not in GUARANTEES:
            raise ConfigError("guarantee", f"expected one of {GUARANTEES}, got {guarantee!r}")
        self._guarantee = guarantee
        self._delta = _check_delta(delta)
        self._events: tuple[DpEventRecord, ...] = ()

    @property
    def guarantee(self) -> str:
        return self._guarantee

    @property
    def delta(self) -> float:
        return self._delta

    @property
    def events(self) -> tuple[DpEventRecord, ...]:
        return self._events

    def _admit(self, event: DpEventRecord, field: str = "event") -> None:
        if not isinstance(event, DpEventRecord):
            raise ConfigError(field, f"expected a DpEventRecord, got {type(event).__name__}")
        # Again, in case the frozen instance was altered with object.__setattr__.
        _raise_problems(_event_problems(event.__dict__), field)
        if event.guarantee != self._guarantee:
            raise ConfigError(f"{field}.guarantee", f"this accountant keeps the "
                              f"{self._guarantee!r} guarantee, got a {event.guarantee!r} event")

    def record_event(self, event: DpEventRecord) -> None:
        """Append ``event`` after checking its RDP ε can be computed; the hot path of a
        release, where the (slower, numerical) PRV bound is not needed: :meth:`report`
        gives both when the round ends."""
        self._admit(event)
        events = self._events + (event,)
        _rdp_report_cached(events, self._delta)
        self._events = events

    def record(self, event: DpEventRecord) -> EpsilonReport:
        """Append ``event`` and return the ε of everything recorded, event included."""
        self._admit(event)
        events = self._events + (event,)
        report = compute_epsilon_report(events, self._delta)
        self._events = events
        return report

    def report(self) -> EpsilonReport:
        """ε of everything recorded (0.0 with no events)."""
        return compute_epsilon_report(self._events, self._delta)

    def report_if(self, event: DpEventRecord) -> EpsilonReport:
        """ε if ``event`` were recorded next; records nothing."""
        self._admit(event)
        return compute_epsilon_report(self._events + (event,), self._delta)

    def check_budget(self, event: DpEventRecord, budget_epsilon: float | None) -> EpsilonReport:
        """The RDP report after ``event`` (``epsilon_prv`` is None here); raises
        :class:`PrivacyBudgetExceeded` if its ε would exceed ``budget_epsilon`` (None: no
        budget). Records nothing."""
        if budget_epsilon is not None and not (
                _is_real(budget_epsilon) and math.isfinite(budget_epsilon) and budget_epsilon > 0):
            raise ConfigError("budget_epsilon",
                              f"expected a finite number > 0 or None, got {budget_epsilon!r}")
        # Budgets are enforced on the RDP bound (the reported ε); the PRV estimate is not
        # needed to decide, and costs far more than the release it would guard.
        self._admit(event)
        report = _rdp_report_cached(self._events + (event,), self._delta)
        if budget_epsilon is not None and report.epsilon > budget_epsilon:
            raise PrivacyBudgetExceeded(
                f"{self._guarantee}-level ε would reach {report.epsilon:.4g} after this "
                f"{event.mechanism} event ({event.steps} step(s), σ = {event.noise_multiplier:g}), "
                f"over the budget ε = {budget_epsilon:g} at δ = {self._delta:g}; refusing")
        return report

    def state_dict(self) -> dict[str, Any]:
        return {"guarantee": self._guarantee, "delta": self._delta,
                "events": [e.to_dict() for e in self._events]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the event list with ``state``'s, after validating all of it."""
        if not isinstance(state, Mapping):
            raise ConfigError("state", f"expected a mapping, got {type(state).__name__}")
        if state.get("guarantee") != self._guarantee:
            raise ConfigError("guarantee", f"state is for {state.get('guarantee')!r}, this "
                              f"accountant keeps {self._guarantee!r}")
        if state.get("delta") != self._delta:
            raise ConfigError("delta", f"state was accounted at δ = {state.get('delta')!r}, "
                              f"this accountant at δ = {self._delta!r}")
        raw = state.get("events")
        if not isinstance(raw, list):
            raise ConfigError("events", f"expected a list, got {type(raw).__name__}")
        events = tuple(DpEventRecord.from_dict(d, field_prefix=f"events.{i}")
                       for i, d in enumerate(raw))
        for i, e in enumerate(events):
            self._admit(e, f"events.{i}")
        self._events = events
