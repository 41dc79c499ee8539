"""The metrics a round report may name and what each is computed from (DESIGN §4.4).

Vocabulary shared by both sides: a client's report policy
(:mod:`fedmuscle_secure.client.report_policy`) decides from a metric's source whether it
may leave; the server records the ones withheld as :data:`NOT_REPORTED`
(:func:`as_received`); the run summary lists them. A name not in :data:`METRIC_SOURCES` is
treated as private records (fail closed).
"""

from __future__ import annotations

import enum

from fedmuscle_secure.messages import RoundReport

#: What the server's rows hold for a metric the client computed but did not send.
NOT_REPORTED = "not reported"


class MetricSource(enum.Enum):
    """What a metric is computed from (module docs)."""

    ACCOUNTING = "config and protocol"
    MODEL_ON_PUBLIC = "the model on public data"
    PRIVATE_RECORDS = "private records"


METRIC_SOURCES: dict[str, MetricSource] = {
    "eps_record": MetricSource.ACCOUNTING,
    "eps_client": MetricSource.ACCOUNTING,
    "releases": MetricSource.ACCOUNTING,
    "secagg_aborted": MetricSource.ACCOUNTING,
    "left_round": MetricSource.ACCOUNTING,
    "test_metric": MetricSource.MODEL_ON_PUBLIC,
    "cl_loss": MetricSource.MODEL_ON_PUBLIC,
    "cl_steps": MetricSource.MODEL_ON_PUBLIC,
    "clipped_values": MetricSource.MODEL_ON_PUBLIC,
    "val_metric": MetricSource.PRIVATE_RECORDS,
    "task_loss": MetricSource.PRIVATE_RECORDS,
}


def source_of(name: str) -> MetricSource:
    """The class of metric ``name``; unknown names are private records (fail closed)."""
    return METRIC_SOURCES.get(name, MetricSource.PRIVATE_RECORDS)


def as_received(report: RoundReport) -> dict[str, float | str]:
    """A report's metrics as the server records them: the withheld ones as
    :data:`NOT_REPORTED` (not zero, not absent: the reader sees they exist and stayed home)."""
    return {**report.metrics, **{name: NOT_REPORTED for name in report.withheld}}
