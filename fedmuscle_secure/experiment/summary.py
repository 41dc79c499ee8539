"""Per-client results and Δ over local training (DESIGN §2.4).

Δ(%) = mean over clients of 100·(metric_method − metric_local)/metric_local. Because one
weak client can dominate a relative mean, the table also gives the mean absolute gain in
points and wins/losses against local, so no one reads noise as a result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmuscle_secure.client.report_policy import policy_for
from fedmuscle_secure.config import ExperimentConfig
from fedmuscle_secure.messages import METRIC_SOURCES, NOT_REPORTED


@dataclass(frozen=True)
class Comparison:
    """Final metrics of one method against the local reference, per client."""

    method: str
    clients: list[dict[str, Any]]   # name, model, task, metric, local, method, gain_points, rel_pct
    delta_pct: float
    mean_gain_points: float
    wins: int
    losses: int
    ties: int


def compare_to_local(method: str, final: dict[str, dict[str, float]],
                     meta: dict[str, dict[str, str]]) -> Comparison:
    """Compare ``final[method]`` to ``final['local']`` client by client."""
    local, ours = final["local"], final[method]
    rows = []
    for name in ours:
        lo, me = local[name], ours[name]
        rows.append({"client": name, **meta[name], "local": lo, "method": me,
                     "gain_points": 100.0 * (me - lo),
                     "rel_pct": 100.0 * (me - lo) / lo if lo > 0 else float("nan")})
    n = max(len(rows), 1)
    return Comparison(
        method=method, clients=rows,
        delta_pct=sum(r["rel_pct"] for r in rows) / n,
        mean_gain_points=sum(r["gain_points"] for r in rows) / n,
        wins=sum(r["method"] > r["local"] for r in rows),
        losses=sum(r["method"] < r["local"] for r in rows),
        ties=sum(r["method"] == r["local"] for r in rows))


def reported(value: Any) -> float | None:
    """A row's value as a number; None where the server's row says it was not reported."""
    return None if value in (None, "", NOT_REPORTED) else float(value)


def final_metrics(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Final test metric per method and client (clients whose metric was not reported to
    the server are left out)."""
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["round"] == "final" and (v := reported(r.get("test_metric"))) is not None:
            out.setdefault(r["method"], {})[r["client"]] = v
    return out


def client_table(cmp: Comparison) -> str:
    """Markdown table of one comparison (also printed at the end of ``run``)."""
    lines = [f"| client | model | task | metric | local | {cmp.method} | gain (points) | rel. (%) |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for r in cmp.clients:
        lines.append(f"| {r['client']} | {r['model']} | {r['task']} | {r['metric']} | "
                     f"{100 * r['local']:.2f} | {100 * r['method']:.2f} | {r['gain_points']:+.2f} | "
                     f"{r['rel_pct']:+.2f} |")
    lines.append("")
    lines.append(f"**Δ = {cmp.delta_pct:+.2f} %** (mean relative gain over local training); "
                 f"mean absolute gain {cmp.mean_gain_points:+.2f} points; "
                 f"wins/losses/ties vs local: {cmp.wins}/{cmp.losses}/{cmp.ties}")
    return "\n".join(lines)


def _comm_table(rows: list[dict[str, Any]], transport: str = "simulator") -> str:
    """Bytes and time per round and client. The time column holds what the rows'
    ``wall_time_s`` is: in the simulator the client's own compute (its handlers' time); in a
    deployment the round's wall time as the server saw it, the same for every client."""
    per: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["round"] == "final":
            continue
        acc = per.setdefault(f"{r['method']}|{r['client']}", {"sent": 0.0, "recv": 0.0, "time": 0.0, "n": 0})
        acc["sent"] += float(r["bytes_sent"])
        acc["recv"] += float(r["bytes_received"])
        acc["time"] += float(r["wall_time_s"])
        acc["n"] += 1
    time_col = "compute s / round" if transport == "simulator" else "round wall time s"
    lines = [f"| method | client | MB sent / round | MB received / round | {time_col} |",
             "|---|---|---:|---:|---:|"]
    for key, a in per.items():
        m, c = key.split("|")
        n = max(a["n"], 1)
        lines.append(f"| {m} | {c} | {a['sent'] / n / 1e6:.3f} | {a['recv'] / n / 1e6:.3f} | "
                     f"{a['time'] / n:.2f} |")
    return "\n".join(lines)


def _num(v: Any) -> str:
    return "off" if v in (None, "") else f"{float(v):.3g}"


def _privacy_table(cfg: ExperimentConfig, rows: list[dict[str, Any]]) -> str:
    """ε at δ for both guarantees (DESIGN §5.3), per client, and who left when and why."""
    p = cfg.privacy
    finals = [r for r in rows if r["round"] == "final" and r.get("eps_record") is not None]
    if not finals:
        return ""
    explain = ("Record-level ε: DP-SGD in LocalUpdate, with respect to one private record. "
               "Client-level ε: noise on released representations (or, for weight-sharing "
               "methods, weight updates), with respect to a client's whole dataset. 0 means the mechanism is off (no guarantee of that kind, not a "
               "perfect one). Recomputable from the ledgers with `fedmuscle-secure audit`.")
    header = ("| method | client | ε record-level | σ DP-SGD | ε client-level | σ client-level "
              "| releases | left the federation |")
    lines = [f"## Privacy (δ = {p.delta:g})", "", explain, "", header,
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in finals:
        left = (f"round {r['left_round']}: {r['left_reason']}"
                if r.get("left_round") not in (None, "") else "")
        rel = r.get("releases")
        lines.append(f"| {r['method']} | {r['client']} | {float(r['eps_record']):.3f} | "
                     f"{_num(r.get('sigma_record'))} | {float(r['eps_client']):.3f} | "
                     f"{_num(r.get('sigma_client'))} | {'' if rel in (None, '') else int(rel)} | "
                     f"{left} |")
    dp = p.dp_sgd
    rn = p.representation_noise
    dp_text = _given(("noise multiplier", dp.noise_multiplier), ("target ε", dp.target_epsilon),
                     ("clip", dp.max_grad_norm), ("expected batch", dp.expected_batch_size))
    rn_text = _given(("noise multiplier", rn.noise_multiplier), ("target ε", rn.target_epsilon))
    un = p.update_noise
    un_text = _given(("noise multiplier", un.noise_multiplier), ("target ε", un.target_epsilon))
    budgets = _given(("record ε ≤", p.budget.record_epsilon), ("client ε ≤", p.budget.client_epsilon))
    lines += ["", f"DP-SGD: {'on' if dp.enabled else 'off'}"
              + (f" ({dp_text})" if dp.enabled else "")
              + f"; representation noise: {'on' if rn.enabled else 'off'}"
              + (f" ({rn_text})" if rn.enabled else "")
              + (f"; update noise: on ({un_text}, update clip "
                 f"{cfg.weight_sharing.update_clip:g})" if un.enabled else "")
              + f"; budgets: {budgets or 'none set'}."]
    return "\n".join(lines)


def _given(*pairs: tuple[str, object]) -> str:
    """``name value, ...`` for the settings the config gives (never a Python ``None``)."""
    return ", ".join(f"{name} {value}" for name, value in pairs if value is not None)


def _membership_section(rows: list[dict[str, Any]], transport: str) -> str:
    """Who left the federation, in which round and why (also in the privacy table)."""
    left = [r for r in rows if r["round"] == "final" and r.get("left_round") not in (None, "")]
    if not left:
        return ""
    lines = ["## Membership changes", "", "| method | client | left in round | why |",
             "|---|---|---:|---|"]
    lines += [f"| {r['method']} | {r['client']} | {int(float(r['left_round']))} | "
              f"{str(r.get('left_reason') or 'unknown').replace('|', '/')} |" for r in left]
    if transport != "simulator":
        lines += ["", ("Where an organisation's stream ended before its closing report, its "
                  "final row holds the ε it last reported (the end of the last round it "
                  "completed); its own run directory and ledger have the rest.")]
    return "\n".join(lines)


def _secagg_section(cfg: ExperimentConfig, rows: list[dict[str, Any]]) -> str:
    """What the server could see under secure aggregation, and what went wrong."""
    from fedmuscle_secure.config import default_threshold

    n = len(cfg.clients)
    t = cfg.secagg.threshold or default_threshold(n)
    tc = cfg.secagg.t_collude if cfg.secagg.t_collude is not None else t - 1
    lines = ["## Secure aggregation", "",
             (f"The server saw only the sum over the surviving clients of their fixed-point, "
             f"pairwise-masked releases, one instance per exchange (threshold t = {t} of {n}; "
             f"distributed noise sized for t_collude = {tc}). Per client over the run:"), "",
             "| client | exchanges aborted | values clipped by the encoding |", "|---|---:|---:|"]
    per: dict[str, list[float | None]] = {}
    for r in rows:
        if r["round"] != "final" and r["method"] == cfg.muscle.method:
            agg = per.setdefault(r["client"], [0.0, 0.0])
            for i, key in enumerate(("secagg_aborted", "clipped_values")):
                v = reported(r.get(key) or 0)
                agg[i] = None if v is None or agg[i] is None else agg[i] + v
    for c, counts in per.items():
        lines.append(f"| {c} | " + " | ".join(NOT_REPORTED if v is None else f"{v:.0f}"
                                               for v in counts) + " |")
    return "\n".join(lines)


def _reports_section(cfg: ExperimentConfig, rows: list[dict[str, Any]], transport: str) -> str:
    """Which metrics the clients' round reports carried to the server (DESIGN §4.4)."""
    method = cfg.muscle.method
    mine = [r for r in rows if r["method"] == method]
    names = [n for n in METRIC_SOURCES if any(n in r for r in mine)]
    policy = policy_for(cfg, method)
    kept = [n for n in names if not policy.may_send(n)
            or any(r.get(n) == NOT_REPORTED for r in mine)]
    sent = [n for n in names if n not in kept]
    lines = ["## Metrics sent to the server", "", policy.explain(), "",
             "Sent to the server: " + (", ".join(f"`{n}`" for n in sent) or "nothing")]
    if kept:
        lines += ["", "Kept at the client: " + ", ".join(
            f"`{n}` ({METRIC_SOURCES[n].value})" for n in kept)]
    where = ("The simulator plays every organisation, so this run's rows (metrics.csv, this "
             "summary) hold each client's own full metrics, the kept ones included; a "
             "deployed server has only what was sent." if transport == "simulator" else
             f"The server has only what was sent: kept metrics appear as `{NOT_REPORTED}` in "
             "its metrics.csv and here; each organisation's own run directory (metrics.csv, "
             "`round_end` events) holds its full metrics.")
    lines += ["", where + " Each client's ledger has a signed `report` entry per report "
              "naming the metrics it carried and those kept."]
    return "\n".join(lines)


def _local_reference_note(cfg: ExperimentConfig, rows: list[dict[str, Any]]) -> str:
    """The ``local`` reference trains a second model on the same private shards and is in
    no ledger: under DP it is outside every budget, and the summary says so."""
    p = cfg.privacy
    if not (p.dp_sgd.enabled or p.client_noise is not None):
        return ""

    def eps(method: str) -> float:
        return max((reported(r.get("eps_record")) or 0.0 for r in rows
                    if r["method"] == method and r["round"] == "final"), default=0.0)

    own, fed = eps("local"), eps(cfg.muscle.method)
    text = ("**`local` is an out-of-budget reference.** It trains a second model on the same "
            "private shards, in the simulator only (a deployment never runs it), and is "
            "recorded in no ledger. ")
    if p.dp_sgd.enabled:
        text += (f"It runs DP-SGD with its own record-level ε up to {own:.3f} (δ = "
                 f"{p.delta:g}), which no budget covers: with `{cfg.muscle.method}`'s "
                 f"{fed:.3f} the same records were used for at most ε = {own + fed:.3f} at "
                 f"δ = {2 * p.delta:g} (basic composition).")
    else:
        text += ("It runs no DP mechanism (representation noise covers releases, and it "
                 "releases nothing), so its numbers are covered by no guarantee.")
    return text


def comparisons(cfg: ExperimentConfig, rows: list[dict[str, Any]]) -> list[Comparison]:
    final = final_metrics(rows)
    meta = {c.name: {"model": c.model, "task": c.task} for c in cfg.clients}
    for r in rows:
        if r["round"] == "final":
            meta[r["client"]]["metric"] = r["metric"]
    if "local" not in final:
        return []
    return [compare_to_local(m, final, meta) for m in final if m != "local"]


def write_summary(path: Path, cfg: ExperimentConfig, rows: list[dict[str, Any]], *,
                  transport: str = "simulator") -> str:
    """Write ``summary.md``: the per-client table, Δ, what the clients sent the server, and
    communication per round. ``transport``: ``"simulator"`` (rows hold every client's own
    metrics) or ``"grpc"`` (the server's rows: only what was sent)."""
    setting = (f"Method `{cfg.muscle.method}`, exchange `{cfg.muscle.exchange}`, protection "
               f"`{cfg.protection}`, N = {len(cfg.clients)}, "
               f"{'group = every surviving client' if cfg.protection == 'secagg' else f'M = {cfg.muscle.num_selected}'}, "
               f"B = {cfg.muscle.batch_size}, d = {cfg.muscle.dim}, R = {cfg.training.rounds}, "
               f"E = {cfg.training.local_epochs}, T = {cfg.training.cl_epochs}.")
    parts = [f"# Run summary: {cfg.name} (seed {cfg.seed})", "", setting, "",
             "Final test metric of every client after the closing LocalUpdate (DESIGN §2.4).", ""]
    cmps = comparisons(cfg, rows)
    for cmp in cmps:
        parts += [client_table(cmp), ""]
    if cmps and (note := _local_reference_note(cfg, rows)):
        parts += [note, ""]
    if not cmps:
        per_method: dict[str, list[str]] = {}
        for r in rows:
            if r["round"] == "final":
                v = reported(r.get("test_metric"))
                per_method.setdefault(r["method"], []).append(
                    f"{r['client']}={NOT_REPORTED if v is None else f'{100 * v:.2f}'}")
        for m, per in per_method.items():
            parts += [f"{m}: " + ", ".join(per), ""]
    privacy = _privacy_table(cfg, rows)
    if privacy:
        parts += [privacy, ""]
    if membership := _membership_section(rows, transport):
        parts += [membership, ""]
    if cfg.protection == "secagg":
        parts += [_secagg_section(cfg, rows), ""]
    parts += [_reports_section(cfg, rows, transport), ""]
    parts += ["## Communication and compute", "", _comm_table(rows, transport), ""]
    if transport != "simulator":
        parts += [("The server sees each round's wall time (from its plan to the last "
                   "report: every client waits for the slowest), not a client's compute time."),
                  ""]
    text = "\n".join(parts)
    path.write_text(text)
    return text
