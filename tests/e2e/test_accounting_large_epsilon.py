"""DP events and accountants (DESIGN §5.3) at large ε, checked against dp-accounting: DP-SGD
sequences of hundreds of steps at q = 0.25 (ε of tens), where the optimal RDP order is
below EPSILON_RTOL's domain. The oracle, as in tests/unit/dp/test_accounting.py, is Google's
dp-accounting computed from the same events."""

from __future__ import annotations

import pytest

from fedmuscle_secure.dp.accounting import (
    EPSILON_RTOL_MIN_ORDER,
    DpEventRecord,
    compute_epsilon_report,
    independent_epsilon,
)

pytestmark = pytest.mark.slow

DELTA = 1e-5


def dpsgd(sigma: float, q: float, steps: int) -> DpEventRecord:
    return DpEventRecord(guarantee="record", mechanism="poisson_gaussian", noise_multiplier=sigma,
                         sample_rate=q, steps=steps, sensitivity=1.0,
                         neighbouring="add_remove_record")


def test_large_epsilon_dpsgd_outside_the_tolerance_domain():
    """Where the optimal order is below 3 (ε of tens, q = 0.25) dp-accounting's
    fractional-order series is looser than Opacus's; Opacus stays the smaller, and the
    report's order says EPSILON_RTOL does not apply."""
    for events in ([dpsgd(0.8, 0.25, 400)] * 3, [dpsgd(2.0, 0.25, 400)]):
        report = compute_epsilon_report(events, DELTA)
        oracle = independent_epsilon(events, DELTA)
        assert report.rdp_order < EPSILON_RTOL_MIN_ORDER
        assert 0.5 * oracle <= report.epsilon_rdp <= oracle * (1 + 1e-9)
