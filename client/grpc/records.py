"""The organisation's own records of a deployed run (DESIGN §4.4): all its metrics, of
which the server gets only what the report policy lets leave."""

from __future__ import annotations

from fedmuscle_secure.config import ExperimentConfig
from fedmuscle_secure.experiment.rounds import metric_row
from fedmuscle_secure.experiment.rundir import RunDir
from fedmuscle_secure.messages import RoundReport
from fedmuscle_secure.models import save_final

__all__ = ["OwnRecords"]


class OwnRecords:
    """The organisation's own records in its run directory: a ``round_end`` event per report
    (the metrics, ε among them where DP is on, which of them were sent, and with ``watch``
    the round's seconds and payload bytes at this organisation), ``metrics.csv`` with rows
    as ``run`` writes them (the server's rows hold only what was sent, DESIGN §4.4), and,
    after the closing LocalUpdate, the model it keeps: ``model/final.pt`` and
    ``model/final.json`` (:func:`fedmuscle_secure.models.load_final` loads it). ``watch``
    (:class:`~fedmuscle_secure.console.deploy.ClientProgress`) also gets the operator's
    line of each report."""

    def __init__(self, run: RunDir, cfg: ExperimentConfig, method: str, client,
                 final_spec: dict | None = None, watch=None) -> None:
        self.final_spec, self.watch = final_spec, watch
        self.cfg, self.method, self.rounds = cfg, method, cfg.training.rounds
        self.run, self.client = run, client
        self.rows: dict[int | str, dict] = {}

    def record(self, report: RoundReport, final: bool) -> dict[str, float]:
        """Write what the client kept for ``report``; returns those full metrics."""
        full = dict(self.client.report_gate.kept[report.round])
        label = "final" if final else report.round
        timing = self.watch.timing() if self.watch is not None else {}
        self.run.event("round_end", client=self.client.name, round=label, rounds=self.rounds,
                       metrics=full, sent=sorted(report.metrics),
                       withheld=list(report.withheld), **timing)
        self.rows[label] = metric_row(self.cfg, self.method, label, self.client.name,
                                      self.client.task.metric, full)
        order = sorted(self.rows, key=lambda k: (k == "final", k if k != "final" else 0))
        self.run.write_metrics([self.rows[k] for k in order])
        if final and self.final_spec is not None:  # the model whose score was just reported
            save_final(self.client.model, {**self.final_spec, "round": label, "metrics": full},
                       self.run.root / "model")
        if self.watch is not None:
            self.watch.report(label, full, timing)
        return full
