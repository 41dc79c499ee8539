"""What a client's round report may carry to the server (DESIGN §4.4, §5).

DESIGN §4.4: nothing computed on private data leaves a client outside the accounting. A
client computes a handful of metrics every round; each is classified here by what it reads,
and the class decides whether the accounting covers its release:

* :attr:`MetricSource.ACCOUNTING` — functions of the config and the protocol only: ε after
  the round (σ, sampling rate, step and release counts; the sampling rate involves the
  shard size, which DP-SGD analyses, Opacus's included, treat as public and which follows
  here from the config's split), the number of releases, the exchanges the server itself
  aborted, the round a client left (the server saw its ``Leave``). They may always leave.
* :attr:`MetricSource.MODEL_ON_PUBLIC` — functions of the client's model, public rows and
  what the server sent: ``test_metric`` (the shared test split, no client's record),
  ``cl_loss`` (the contrastive loss on public rows, from the *un-noised* anchor),
  ``cl_steps`` (a step is skipped when, e.g., pseudo-labelling keeps no label: the model
  decides) and ``clipped_values`` (how many coordinates of the client's own noisy share
  the fixed-point encoding clipped). Under record-level DP-SGD the model is
  differentially private with respect to each private record, so any function of
  (model, public data, server input) is post-processing and costs no ε: these may leave.
  Under client-level representation noise only the noised releases are covered — the
  model itself is not — so nothing computed from the model may leave; without DP-SGD the
  model is not covered either.
* :attr:`MetricSource.PRIVATE_RECORDS` — read private records directly: ``val_metric``
  (the exact share of correct predictions on the held-out 20 % of the shard, records
  DP-SGD never sees and no mechanism covers) and ``task_loss`` (the exact mean loss over
  the training records). No accounting covers them: they never leave by default.

A name not in :data:`METRIC_SOURCES` is treated as private records (fail closed).
``privacy.report_private_metrics`` (default: off whenever any DP is configured, on when
none is: with no DP there is no guarantee to protect) sends everything; the ledger's
``report`` entries and ``summary.md`` then say so. Whatever is sent, the client keeps its
full metrics itself (:class:`ReportGate`): the in-process simulator, which plays every
organisation, builds each organisation's rows from them, and a deployed client writes them
into its own run directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedmuscle_secure.messages import (
    MetricSource,
    RoundReport,
    source_of,
)

if TYPE_CHECKING:
    from fedmuscle_secure.client.privacy import ClientPrivacy
    from fedmuscle_secure.config import ExperimentConfig


@dataclass(frozen=True)
class ReportPolicy:
    """Which metrics one client's reports may carry.

    ``report_private``: ``privacy.report_private_metrics`` resolved (send everything);
    ``record_level``: DP-SGD trains the model; ``client_level``: the client's releases carry
    representation noise (never for the ``local`` reference, which releases nothing).
    """

    report_private: bool
    record_level: bool
    client_level: bool

    def may_send(self, name: str) -> bool:
        source = source_of(name)
        if self.report_private or source is MetricSource.ACCOUNTING:
            return True
        if source is MetricSource.MODEL_ON_PUBLIC:
            return self.record_level and not self.client_level
        return False

    def split(self, metrics: Mapping[str, float]) -> tuple[dict[str, float], tuple[str, ...]]:
        """(the metrics that may be sent, the names of those kept at the client)."""
        sent = {k: v for k, v in metrics.items() if self.may_send(k)}
        return sent, tuple(k for k in metrics if k not in sent)

    def explain(self) -> str:
        """One sentence on why the withheld metrics are withheld (for ``summary.md``)."""
        if self.report_private:
            return ("`privacy.report_private_metrics` is on: every metric is sent, including "
                    "those computed on private records, "
                    + ("which no DP mechanism covers (the ε above does not bound what they "
                       "reveal)." if self.record_level or self.client_level else
                       "as no DP is configured (there is no guarantee to protect)."))
        if not self.record_level and not self.client_level:
            return ("No DP is configured and `privacy.report_private_metrics` is off: only "
                    "the counts fixed by the config and the protocol are sent.")
        if self.client_level:
            return ("Client-level representation noise covers only the noised releases, not "
                    "the model, so nothing computed from the model or the private records is "
                    "sent; only the counts and ε fixed by the config and the protocol.")
        return ("DP-SGD makes the model differentially private with respect to each private "
                "record, so what it computes on public data is post-processing and is sent; "
                "metrics read from private records (validation split, training loss) are not.")


def reports_private_metrics(cfg: ExperimentConfig) -> bool:
    """``privacy.report_private_metrics`` resolved: an explicit value, else off whenever any
    DP mechanism is configured and on when none is (no guarantee to protect)."""
    p = cfg.privacy
    if p.report_private_metrics is not None:
        return p.report_private_metrics
    return not (p.dp_sgd.enabled or p.client_noise is not None)


def policy_for(cfg: ExperimentConfig, method: str) -> ReportPolicy:
    """The policy of every client of ``method`` under ``cfg``."""
    p = cfg.privacy
    return ReportPolicy(report_private=reports_private_metrics(cfg),
                        record_level=p.dp_sgd.enabled,
                        client_level=p.client_noise is not None and method != "local")


class ReportGate:
    """A client's outgoing reports: the policy's share goes to the server, the full metrics
    stay in :attr:`kept` (round → metrics) for the client's own records."""

    def __init__(self, policy: ReportPolicy) -> None:
        self.policy = policy
        self.kept: dict[int, dict[str, float]] = {}

    def report(self, client: str, round_: int, metrics: Mapping[str, float],
               privacy: ClientPrivacy | None) -> RoundReport:
        """Keep ``metrics``, record in the ledger what is sent, and return the report."""
        self.kept[round_] = dict(metrics)
        sent, withheld = self.policy.split(metrics)
        if privacy is not None:
            privacy.record_report(round_, sent=sorted(sent), withheld=sorted(withheld),
                                  report_private_metrics=self.policy.report_private)
        return RoundReport(client, round_, sent, withheld=withheld)
