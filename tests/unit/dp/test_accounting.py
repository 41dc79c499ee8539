"""DP events, accountants and calibration (DESIGN §5.3), checked against dp-accounting.

The oracle is Google's dp-accounting (RDP for the Opacus RDP value, PLD for the Opacus PRV
value), computed here from the same events; no ε is copied from a run. DP-SGD at ε of tens,
outside EPSILON_RTOL's domain: tests/e2e/test_accounting_large_epsilon.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings

import dp_accounting
import pytest
from opacus.accountants import RDPAccountant

from fedmuscle_secure.dp import accounting
from fedmuscle_secure.dp.accounting import (
    EPSILON_RTOL,
    PRV_PLD_ATOL,
    DpEventRecord,
    PrivacyAccountant,
    calibrate_noise_multiplier,
    compute_epsilon_report,
    independent_epsilon,
    independent_epsilon_pld,
)
from fedmuscle_secure.dp.noise import representation_sensitivity
from fedmuscle_secure.errors import ConfigError, PrivacyBudgetExceeded

DELTA = 1e-5


def dpsgd(sigma: float, q: float, steps: int) -> DpEventRecord:
    return DpEventRecord(guarantee="record", mechanism="poisson_gaussian", noise_multiplier=sigma,
                         sample_rate=q, steps=steps, sensitivity=1.0,
                         neighbouring="add_remove_record")


def release(sigma: float, steps: int, rows: int = 64) -> DpEventRecord:
    return DpEventRecord(guarantee="client", mechanism="gaussian", noise_multiplier=sigma,
                         sample_rate=1.0, steps=steps, sensitivity=representation_sensitivity(rows),
                         neighbouring="replace_client_dataset")


def record_gaussian(sigma: float, steps: int) -> DpEventRecord:
    return DpEventRecord(guarantee="record", mechanism="gaussian", noise_multiplier=sigma,
                         sample_rate=1.0, steps=steps, sensitivity=1.0,
                         neighbouring="add_remove_record")


# Sequences of rounds. Gaussian releases are closed form in both libraries; DP-SGD ones
# sit at ε ≲ 12, where the fractional-order series of the two libraries agree to
# EPSILON_RTOL (see its docstring), plus the small-ε corner whose optimal order is > 63.
RDP_SEQUENCES = {
    "dpsgd q=.25 σ=1.1, 3 rounds of 10": [dpsgd(1.1, 0.25, 10)] * 3,
    "dpsgd q=.25 σ=0.8, 1 round of 10": [dpsgd(0.8, 0.25, 10)],
    "dpsgd q=.25 σ=2, rounds of 10,10,40,100": [dpsgd(2.0, 0.25, n) for n in (10, 10, 40, 100)],
    "dpsgd q=.25 σ varies per round": [dpsgd(0.8, 0.25, 10), dpsgd(1.1, 0.25, 10),
                                       dpsgd(2.0, 0.25, 50)],
    "dpsgd q=.05 σ=1.1, 3 rounds of 400": [dpsgd(1.1, 0.05, 400)] * 3,
    "dpsgd q=.01 σ=1.1, 10 steps (optimal order 11)": [dpsgd(1.1, 0.01, 10)],
    "dpsgd q=.02 σ=5, 1 step (optimal order > 63)": [dpsgd(5.0, 0.02, 1)],
    "releases σ=2, 10 rounds of 14": [release(2.0, 14)] * 10,
    "releases σ=5, 5 rounds of 28": [release(5.0, 28)] * 5,
    "releases σ=20, 1 round of 140": [release(20.0, 140)],
    "releases σ=2,5,20 over rounds": [release(2.0, 14), release(5.0, 28), release(20.0, 140)],
    "mixed record rounds": [dpsgd(2.0, 0.25, 20), record_gaussian(3.0, 2), dpsgd(1.1, 0.25, 10),
                            dpsgd(1.1, 1.0, 1)],
}


@pytest.mark.parametrize("name", list(RDP_SEQUENCES))
def test_opacus_rdp_matches_dp_accounting(name):
    events = RDP_SEQUENCES[name]
    report = compute_epsilon_report(events, DELTA)
    oracle = independent_epsilon(events, DELTA)
    assert report.epsilon == report.epsilon_rdp
    if all(e.sample_rate == 1 for e in events):        # closed form on both sides
        assert report.epsilon_rdp == pytest.approx(oracle, rel=1e-9)
    # Same orders, same conversion: Opacus is never the larger (dp-accounting's fractional
    # orders are the looser bound), and not more than EPSILON_RTOL below.
    assert report.epsilon_rdp <= oracle * (1 + 1e-9)
    assert oracle - report.epsilon_rdp <= EPSILON_RTOL * oracle, (report, oracle)


def test_rdp_history_equals_opacus_step_by_step():
    """Summing steps of equal (σ, q) pairs is the same composition as Opacus's step()."""
    events = [dpsgd(1.1, 0.25, 5), dpsgd(2.0, 0.25, 5), dpsgd(1.1, 0.25, 5)]
    stepped = RDPAccountant()
    for e in events:
        for _ in range(e.steps):
            stepped.step(noise_multiplier=e.noise_multiplier, sample_rate=e.sample_rate)
    assert len(stepped.history) == 3 and len(accounting.opacus_history(events)) == 2
    assert compute_epsilon_report(events, DELTA).epsilon_rdp == pytest.approx(
        stepped.get_epsilon(DELTA), rel=1e-9)


PRV_SEQUENCES = {
    "dpsgd q=.25 σ=1.1, 3 rounds of 10": [dpsgd(1.1, 0.25, 10)] * 3,
    "dpsgd q=.01 σ=1.1, 3 rounds of 100": [dpsgd(1.1, 0.01, 100)] * 3,
    "releases σ=2, 3 rounds of 14": [release(2.0, 14)] * 3,
    "releases σ=20, 1 round of 140": [release(20.0, 140)],
    "mixed record rounds": RDP_SEQUENCES["mixed record rounds"],
}


@pytest.mark.parametrize("name", list(PRV_SEQUENCES))
def test_opacus_prv_matches_dp_accounting_pld(name):
    """PRV reports its upper bound (estimate + eps_error = 0.01); PLD (1e-4 grid) is a
    pessimistic estimate inside PRV's ±eps_error band: |PRV − PLD| ≤ 2·eps_error."""
    events = PRV_SEQUENCES[name]
    report = compute_epsilon_report(events, DELTA)
    oracle = independent_epsilon_pld(events, DELTA)
    assert report.epsilon_prv is not None
    assert abs(report.epsilon_prv - oracle) <= PRV_PLD_ATOL, (report, oracle)
    assert report.epsilon_prv <= report.epsilon_rdp  # RDP is the looser bound


def test_empty_and_prv_unavailable():
    empty = PrivacyAccountant(guarantee="client", delta=DELTA).report()
    assert (empty.epsilon, empty.epsilon_prv, empty.rdp_order) == (0.0, None, None)
    assert independent_epsilon([], DELTA) == 0.0 == independent_epsilon_pld([], DELTA)
    # At δ = 1e-18 float error dominates PRV's discretisation: None, RDP still given.
    tiny = compute_epsilon_report([release(2.0, 14)], 1e-18)
    assert tiny.epsilon_prv is None
    assert tiny.epsilon_rdp == pytest.approx(independent_epsilon([release(2.0, 14)], 1e-18),
                                             rel=EPSILON_RTOL)
    assert tiny.accountant.startswith("opacus ") and tiny.accountant.endswith(" rdp+prv")


def test_prv_is_not_attempted_at_huge_epsilon():
    """σ = 0.1 over 700 releases: Opacus's PRV would size its domain from ε ≈ 3.7e4 and
    ask for a 48 TiB array (the shipped client-level curve goes down to σ = 0.001). RDP is
    still given, and agrees with dp-accounting's RDP."""
    events = [release(0.1, 700)]
    report = compute_epsilon_report(events, DELTA)
    assert report.epsilon_prv is None
    assert report.epsilon_rdp > accounting.PRV_MAX_EPSILON
    assert report.epsilon_rdp == pytest.approx(independent_epsilon(events, DELTA), rel=0.05)
    # below the threshold PRV is still computed
    assert compute_epsilon_report([release(2.0, 140)], DELTA).epsilon_prv is not None


# --------------------------------------------------------------------------- accountant
def test_report_if_does_not_mutate():
    acc = PrivacyAccountant(guarantee="client", delta=DELTA)
    acc.record(release(5.0, 14))
    events, before = acc.events, acc.report()
    what_if = acc.report_if(release(5.0, 14))
    assert acc.events == events and acc.report() == before
    assert what_if.epsilon > before.epsilon
    assert what_if.epsilon == pytest.approx(compute_epsilon_report(events * 2, DELTA).epsilon)
    assert acc.record(release(5.0, 14)) == what_if and acc.report() == what_if


def test_record_validates_before_mutating(monkeypatch):
    acc = PrivacyAccountant(guarantee="record", delta=DELTA)
    acc.record(dpsgd(1.1, 0.25, 10))
    events, before = acc.events, acc.report()

    with pytest.raises(ConfigError) as info:
        acc.record(release(2.0, 14))                       # wrong guarantee
    assert info.value.field == "event.guarantee"
    forged = dpsgd(1.1, 0.25, 10)
    object.__setattr__(forged, "noise_multiplier", -1.0)   # a frozen event, tampered with
    with pytest.raises(ConfigError) as info:
        acc.record(forged)
    assert info.value.field == "event.noise_multiplier"
    with pytest.raises(ConfigError):
        acc.record({"guarantee": "record"})                # not an event at all

    def broken(*_):
        raise RuntimeError("accountant failure")
    monkeypatch.setattr(accounting, "compute_epsilon_report", broken)
    with pytest.raises(RuntimeError):
        acc.record(dpsgd(1.1, 0.25, 10))                   # ε cannot be computed
    monkeypatch.undo()
    assert acc.events == events and acc.report() == before


def test_check_budget_raises_exactly_when_next_event_exceeds():
    rounds = [release(3.0, 14)] * 4
    eps = [compute_epsilon_report(rounds[:k], DELTA).epsilon for k in range(1, 5)]
    budget = (eps[1] + eps[2]) / 2                         # between round 2 and round 3
    acc = PrivacyAccountant(guarantee="client", delta=DELTA)
    for k, event in enumerate(rounds[:2]):
        assert acc.check_budget(event, budget).epsilon == pytest.approx(eps[k])
        acc.record(event)
    with pytest.raises(PrivacyBudgetExceeded) as info:
        acc.check_budget(rounds[2], budget)
    message = str(info.value)
    assert "client" in message and f"{budget:g}" in message and f"{DELTA:g}" in message
    assert f"{eps[2]:.4g}" in message
    assert len(acc.events) == 2                            # nothing recorded by the check
    assert acc.check_budget(rounds[2], eps[2]).epsilon == eps[2]   # equal is within budget
    assert acc.check_budget(rounds[2], None).epsilon == eps[2]     # no budget, no refusal
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ConfigError) as info:
            acc.check_budget(rounds[2], bad)
        assert info.value.field == "budget_epsilon"


def test_state_dict_round_trip_and_validation():
    acc = PrivacyAccountant(guarantee="record", delta=DELTA)
    for e in (dpsgd(1.1, 0.25, 10), dpsgd(2.0, 0.25, 5)):
        acc.record(e)
    state = json.loads(json.dumps(acc.state_dict()))
    other = PrivacyAccountant(guarantee="record", delta=DELTA)
    other.load_state_dict(state)
    assert other.events == acc.events and other.report() == acc.report()

    bad = json.loads(json.dumps(state))
    bad["events"][1]["steps"] = 0
    target = PrivacyAccountant(guarantee="record", delta=DELTA)
    target.record(dpsgd(0.8, 0.25, 1))
    kept = target.events
    with pytest.raises(ConfigError) as info:
        target.load_state_dict(bad)
    assert info.value.field == "events.1.steps" and target.events == kept
    for key, value, field in (("guarantee", "client", "guarantee"), ("delta", 1e-6, "delta"),
                              ("events", "nope", "events")):
        with pytest.raises(ConfigError) as info:
            target.load_state_dict({**state, key: value})
        assert info.value.field == field and target.events == kept


# --------------------------------------------------------------------------- events
def test_event_dict_round_trip():
    for event in (dpsgd(1.1, 0.25, 10), release(2.0, 14), record_gaussian(3.0, 2)):
        d = json.loads(json.dumps(event.to_dict()))
        assert DpEventRecord.from_dict(d) == event
        # Ledger entries carry round/exchange beside the fields: ignored.
        assert DpEventRecord.from_dict({**d, "round": 3, "exchange": [0, 1]}) == event
    from_ints = DpEventRecord.from_dict({**release(2.0, 14).to_dict(), "noise_multiplier": 2})
    assert isinstance(from_ints.noise_multiplier, float) and from_ints == release(2.0, 14)


def test_to_dp_event_structure():
    e = dpsgd(1.1, 0.25, 10).to_dp_event()
    assert isinstance(e, dp_accounting.SelfComposedDpEvent) and e.count == 10
    assert e.event == dp_accounting.PoissonSampledDpEvent(0.25, dp_accounting.GaussianDpEvent(1.1))
    assert release(2.0, 14).to_dp_event() == dp_accounting.SelfComposedDpEvent(
        dp_accounting.GaussianDpEvent(2.0), 14)


GOOD = dpsgd(1.1, 0.25, 10).to_dict()


@pytest.mark.parametrize("field,value", [
    ("guarantee", "user"),
    ("mechanism", "laplace"),
    ("noise_multiplier", 0.0),
    ("noise_multiplier", -1.0),
    ("noise_multiplier", float("nan")),
    ("noise_multiplier", "1.1"),
    ("sample_rate", 0.0),
    ("sample_rate", 1.5),
    ("steps", 0),
    ("steps", 2.5),
    ("steps", True),
    ("sensitivity", 0.0),
    ("neighbouring", "replace_one"),
    ("neighbouring", "replace_client_dataset"),   # does not match the record guarantee
])
def test_config_error_names_the_bad_field(field, value):
    with pytest.raises(ConfigError) as info:
        DpEventRecord.from_dict({**GOOD, field: value})
    assert info.value.field == field
    with pytest.raises(ConfigError) as info:
        DpEventRecord.from_dict({**GOOD, field: value}, field_prefix="events.4")
    assert info.value.field == f"events.4.{field}"
    with pytest.raises(ConfigError) as info:
        DpEventRecord(**{**GOOD, field: value})
    assert info.value.field == field


def test_config_error_consistency_and_missing():
    with pytest.raises(ConfigError) as info:                      # a Gaussian is not sampled
        dataclasses.replace(release(2.0, 14), sample_rate=0.5)
    assert info.value.field == "sample_rate"
    with pytest.raises(ConfigError) as info:                      # amplification: add/remove
        DpEventRecord(**{**release(2.0, 14).to_dict(), "mechanism": "poisson_gaussian"})
    assert info.value.field == "mechanism"
    with pytest.raises(ConfigError) as info:
        DpEventRecord.from_dict({k: v for k, v in GOOD.items() if k != "steps"})
    assert info.value.field == "steps" and "missing" in str(info.value)
    with pytest.raises(ConfigError) as info:                      # every problem is listed
        DpEventRecord.from_dict({**GOOD, "steps": 0, "sensitivity": -1})
    assert info.value.field == "steps" and "sensitivity" in str(info.value)
    with pytest.raises(ConfigError) as info:
        independent_epsilon([dpsgd(1.1, 0.25, 10), release(2.0, 14)], DELTA)
    assert info.value.field == "events"
    for kwargs, field in (({"guarantee": "user", "delta": DELTA}, "guarantee"),
                          ({"guarantee": "record", "delta": 0.0}, "delta"),
                          ({"guarantee": "record", "delta": 1.0}, "delta")):
        with pytest.raises(ConfigError) as info:
            PrivacyAccountant(**kwargs)
        assert info.value.field == field


# --------------------------------------------------------------------------- calibration
@pytest.mark.parametrize("target,q,steps", [(4.0, 0.25, 40), (2.0, 0.01, 1000), (8.0, 1.0, 140)])
def test_calibration_hits_target_from_below(target, q, steps):
    sigma = calibrate_noise_multiplier(target_epsilon=target, delta=DELTA, sample_rate=q,
                                       steps=steps)
    mechanism = "gaussian" if q == 1 else "poisson_gaussian"
    event = dataclasses.replace(dpsgd(sigma, q, steps), mechanism=mechanism)
    eps = PrivacyAccountant(guarantee="record", delta=DELTA).report_if(event).epsilon
    assert target * 0.9 <= eps <= target
    assert independent_epsilon([event], DELTA) <= target * (1 + EPSILON_RTOL)
    # σ is (close to) the smallest such: 3 % less noise overshoots the target.
    assert compute_epsilon_report([dataclasses.replace(event, noise_multiplier=0.97 * sigma)],
                                  DELTA).epsilon > target


def test_calibration_prv():
    sigma = calibrate_noise_multiplier(target_epsilon=4.0, delta=DELTA, sample_rate=1.0,
                                       steps=14, accountant="prv")
    report = compute_epsilon_report([release(sigma, 14)], DELTA)
    assert 3.6 <= report.epsilon_prv <= 4.0
    assert report.epsilon_rdp > 4.0          # PRV is tighter: its σ overshoots the RDP ε
    assert abs(independent_epsilon_pld([release(sigma, 14)], DELTA) - report.epsilon_prv) \
        <= PRV_PLD_ATOL


def test_design_5_1_client_level_example():
    """DESIGN §5.1: the 900-row public set released once per round, R = 10, ε = 8, δ = 1e-5.

    Per batch (B = 64 → 14 Gaussian events a round, Δ = 2√64) and as one release of the
    whole set a round (Δ = 2√900) the noise std per coordinate must agree (14 Gaussians
    at σ compose exactly like one at σ/√14), and both reach ε ≤ 8 by dp-accounting."""
    rounds, batches = 10, 900 // 64
    sigma_batch = calibrate_noise_multiplier(target_epsilon=8.0, delta=1e-5, sample_rate=1.0,
                                             steps=rounds * batches)
    events = [release(sigma_batch, batches, rows=64)] * rounds
    eps = independent_epsilon(events, 1e-5)
    assert 8.0 * 0.9 <= eps <= 8.0 * (1 + EPSILON_RTOL)

    sigma_whole = calibrate_noise_multiplier(target_epsilon=8.0, delta=1e-5, sample_rate=1.0,
                                             steps=rounds)
    eps_whole = independent_epsilon([release(sigma_whole, 1, rows=900)] * rounds, 1e-5)
    assert 8.0 * 0.9 <= eps_whole <= 8.0 * (1 + EPSILON_RTOL)
    assert sigma_batch / math.sqrt(batches) == pytest.approx(sigma_whole, rel=0.01)
    std_batch = sigma_batch * representation_sensitivity(64)
    std_whole = sigma_whole * representation_sensitivity(900)
    assert std_batch == pytest.approx(std_whole, rel=0.01)
    # "the contrastive signal is gone": noise std vs coordinates of about 1/√d (d = 64).
    assert std_batch / (1 / math.sqrt(64)) > 500


@pytest.mark.parametrize("kwargs,field", [
    ({"target_epsilon": 0.0}, "target_epsilon"),
    ({"target_epsilon": float("inf")}, "target_epsilon"),
    ({"target_epsilon": 1e-9}, "epsilon_tolerance"),
    ({"delta": 0.0}, "delta"),
    ({"delta": 1.0}, "delta"),
    ({"sample_rate": 0.0}, "sample_rate"),
    ({"sample_rate": 1.2}, "sample_rate"),
    ({"steps": 0}, "steps"),
    ({"steps": 1.5}, "steps"),
    ({"accountant": "gdp"}, "accountant"),
    ({"epsilon_tolerance": 0.0}, "epsilon_tolerance"),
])
def test_calibration_config_errors(kwargs, field):
    args = {"target_epsilon": 8.0, "delta": DELTA, "sample_rate": 0.25, "steps": 10, **kwargs}
    with pytest.raises(ConfigError) as info:
        calibrate_noise_multiplier(**args)
    assert info.value.field == field


def test_calibration_unreachable_target_names_target_epsilon():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ConfigError) as info:
            calibrate_noise_multiplier(target_epsilon=1e-4, delta=1e-10, sample_rate=1.0,
                                       steps=10**6, epsilon_tolerance=1e-5)
    assert info.value.field == "target_epsilon"


def test_record_event_is_record_without_the_report():
    a = PrivacyAccountant(guarantee="record", delta=1e-5)
    b = PrivacyAccountant(guarantee="record", delta=1e-5)
    for e in (dpsgd(1.1, 0.25, 10), dpsgd(0.9, 0.25, 20)):
        a.record(e)
        b.record_event(e)
    assert a.events == b.events and a.report() == b.report()
    with pytest.raises(ConfigError):
        b.record_event(release(2.0, 14))  # wrong guarantee: validated, nothing appended
    assert len(b.events) == 2
