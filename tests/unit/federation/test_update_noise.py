"""Client-level DP on weight updates (DP-FedAvg; DESIGN §2.7, §5.1): ``privacy.update_noise``.

The attacker is the server (or anyone who reads what left a client): from a release it
should learn one client's update only through Gaussian noise of std σ·2C per coordinate,
C the update clip, 2C the sensitivity of a clipped update under replacement of the client's
whole dataset; under secagg, through the honest members' shares of that noise in every sum
it can unmask. The tests compare a noised federation with a noise-free one trained from the
same seeds, so the noise itself is observed, and check that what is recorded (one event per
part and round, sensitivity 2C, the σ used, the shares' parameters) is what was drawn."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fedmuscle_secure.dp.accounting import PrivacyAccountant, calibrate_noise_multiplier
from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.messages import Leave
from fedmuscle_secure.simulator import build_federation
from helpers.tiny import tiny_config
from helpers.weight_rounds import SIX, one_round

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIGMA, CLIP = 0.5, 0.05


def _cfg(method="fedavg", protection="plain", clients=SIX[:4], noise=None, **over):
    noise = {"enabled": True, "noise_multiplier": SIGMA} if noise is None else noise
    privacy = {"delta": 1e-5, "update_noise": noise, **over.pop("privacy", {})}
    return tiny_config(clients=[dict(c) for c in clients], protection=protection,
                       data={"public_size": 64, "test_size": 30, "shard_size": 16,
                             "val_fraction": 0.25},
                       muscle={"method": method, "num_selected": 2, "batch_size": 32, "dim": 16},
                       training={"rounds": 1, "local_epochs": 1, "local_batch_size": 16,
                                 **over.pop("training", {})},
                       weight_sharing={"update_clip": CLIP, **over.pop("weight_sharing", {})},
                       privacy=privacy, **over)


def _std_within(x: torch.Tensor, std: float, rel: float = 0.06) -> None:
    """``x`` looks like i.i.d. N(0, std²): its sample std within ``rel`` (over 6 standard
    errors for the sizes here) and its mean within 6 standard errors of 0."""
    n = x.numel()
    assert n > 2000
    got = float(x.double().std())
    assert abs(got / std - 1) < rel, (got, std)
    assert abs(float(x.double().mean())) < 6 * std / math.sqrt(n)


def _ledger_events(fed, client):
    ledger = fed.clients[client].privacy.ledger
    return [e["body"] for e in ledger.entries if e["kind"] == "dp_event"]


def test_a_plain_release_is_the_last_average_plus_the_clipped_update_plus_noise_of_std_sigma_2c(tmp_path):
    """The same federation without noise gives each client's exact update Δ; the noised
    release minus (start + clip(Δ, C)) must be the noise: std σ·2C, mean 0, independent
    between clients. One client-level event per round, steps = the parts released."""
    quiet = _cfg(noise={"enabled": False})
    noisy = _cfg()
    split = make_split(quiet)
    _, exact = one_round(build_federation(quiet, split, "fedavg"))
    fed = build_federation(noisy, split, "fedavg", record_dir=tmp_path)
    _, released = one_round(fed)
    noises = {}
    for c, rel in released.items():
        start = fed.clients[c].weights.start.double()
        delta = exact[c].w.double() - start
        assert float(delta.norm()) > CLIP  # the clip is exercised
        clipped = delta * (CLIP / float(delta.norm()))
        noises[c] = rel.w.double() - start - clipped
        _std_within(noises[c], SIGMA * 2 * CLIP)
        events = _ledger_events(fed, c)
        assert [(e["guarantee"], e["mechanism"], e["steps"], e["sensitivity"],
                 e["noise_multiplier"]) for e in events] == [
            ("client", "gaussian", 1, 2 * CLIP, SIGMA)]
        assert rel.samples == 1  # under DP every client weighs 1
    a, b = noises["a"], noises["b"]
    corr = float((a - a.mean()) @ (b - b.mean()) / (a.std() * b.std() * (a.numel() - 1)))
    assert abs(corr) < 6 / math.sqrt(a.numel())


def test_the_recorded_epsilon_is_the_gaussian_mechanisms_over_rounds_and_parts(tmp_path):
    """M-Fed releases two parts (backbone, task head): two Gaussian mechanisms of
    multiplier σ per round. The client's ε after the round is an independent accountant's
    over two such events; a target ε is met over rounds × parts."""
    cfg = _cfg(method="mfed", clients=SIX)
    fed = build_federation(cfg, make_split(cfg), "mfed", record_dir=tmp_path)
    one_round(fed)
    acc = PrivacyAccountant(guarantee="client", delta=1e-5)
    for e in _ledger_events(fed, "a"):
        assert e["steps"] == 2
    from fedmuscle_secure.dp.events import DpEventRecord
    acc.record_event(DpEventRecord(guarantee="client", mechanism="gaussian",
                                   noise_multiplier=SIGMA, sample_rate=1.0, steps=2,
                                   sensitivity=2 * CLIP, neighbouring="replace_client_dataset"))
    assert fed.clients["a"].privacy.accountants["client"].report().epsilon == \
        pytest.approx(acc.report().epsilon, rel=1e-9)
    target = _cfg(method="mfed", clients=SIX, noise={"enabled": True, "target_epsilon": 4.0},
                  training={"rounds": 3})
    fed = build_federation(target, make_split(target), "mfed")
    sigma = fed.clients["a"].privacy.settings.sigma_client
    assert sigma == pytest.approx(calibrate_noise_multiplier(
        target_epsilon=4.0, delta=1e-5, sample_rate=1.0, steps=3 * 2))


def test_under_secagg_each_member_adds_its_share_and_the_mean_carries_the_honest_shares(tmp_path):
    """Six clients, t = 4, t_collude = 1: any unmaskable sum holds at least three honest
    shares, so each member adds σ/√3 · 2C. The secure mean minus the noise-free plaintext
    mean is the members' summed shares over the count: std σ/√3 · 2C / √6. The ledger says
    which share was drawn and why."""
    over = {"secagg": {"threshold": 4, "t_collude": 1}}
    quiet, secure = _cfg(noise={"enabled": False}, clients=SIX, **over), \
        _cfg(protection="secagg", clients=SIX, **over)
    split = make_split(quiet)
    _, exact = one_round(build_federation(quiet, split, "fedavg"))
    fed = build_federation(secure, split, "fedavg", record_dir=tmp_path)
    starts = {c: cl.weights.vector().double() for c, cl in fed.clients.items()}
    one_round(fed)
    updates = []
    for c in "abcdef":
        delta = exact[c].w.double() - starts[c]
        updates.append(delta * min(1.0, CLIP / float(delta.norm())))
    mean_exact = torch.stack(updates).mean(0)
    got = fed.clients["a"].weights.vector().double() - starts["a"]
    share = SIGMA / math.sqrt(3) * 2 * CLIP
    _std_within(got - mean_exact, share / math.sqrt(6))
    for e in _ledger_events(fed, "a"):
        assert e["distributed_noise"] == {"share_noise_multiplier": pytest.approx(SIGMA / math.sqrt(3)),
                                          "threshold": 4, "t_collude": 1, "group": 6}
        assert (e["sensitivity"], e["noise_multiplier"], e["steps"]) == (2 * CLIP, SIGMA, 1)


def test_a_head_sum_below_t_asks_every_member_for_the_whole_noise(tmp_path):
    """M-Fed under secagg with t = 4 over two tasks of three: a head sum's threshold is its
    task's three clients, and at most two of them (t − 1 = 3 capped at threshold − 1) may
    collude, so the head's share is the full σ·2C; the recorded share says so."""
    cfg = _cfg(method="mfed", protection="secagg", clients=SIX, secagg={"threshold": 4})
    fed = build_federation(cfg, make_split(cfg), "mfed", record_dir=tmp_path)
    one_round(fed)
    heads = [e for e in _ledger_events(fed, "a") if e["exchange"] == [0, 1]]
    assert [h["distributed_noise"] for h in heads] == [
        {"share_noise_multiplier": pytest.approx(SIGMA), "threshold": 3, "t_collude": 2,
         "group": 3}]


def test_a_client_over_its_client_budget_leaves_before_releasing(tmp_path):
    """The budget is asked before any noise is drawn: a client whose first release would
    exceed client_epsilon records the refusal, releases nothing and leaves."""
    cfg = _cfg(privacy={"budget": {"client_epsilon": 0.01}})
    fed = build_federation(cfg, make_split(cfg), "fedavg", record_dir=tmp_path)
    sent = []
    for msg in fed.server.start_round(1):
        sent += fed.clients[msg.client].handle(msg)
    assert all(isinstance(m, Leave) for m in sent) and len(sent) == 4
    kinds = [e["kind"] for e in fed.clients["a"].privacy.ledger.entries]
    assert "refusal" in kinds and "egress" not in kinds and "dp_event" not in kinds


@pytest.mark.parametrize("over, field", [
    ({"method": "mira"}, "privacy.update_noise.enabled"),
    ({"method": "mocha"}, "privacy.update_noise.enabled"),
    ({"method": "muscle_sum"}, "privacy.update_noise.enabled"),
    ({"protection": "ckks"}, "privacy.update_noise.enabled"),
    ({"privacy": {"representation_noise": {"enabled": True, "noise_multiplier": 1.0}}},
     "privacy.update_noise.enabled"),
    ({"noise": {"enabled": True}}, "privacy.update_noise"),
])
def test_update_noise_is_refused_where_it_does_not_bound_the_release(over, field):
    """MIRA and MOCHA release weights that are not an update from a public average; the
    representation methods release representations; CKKS weight sums carry no noise
    shares; one client-level mechanism per run; σ or a target ε must be given."""
    over = dict(over)
    method = over.pop("method", "fedavg")
    clients = SIX[:4] if method != "mocha" else [dict(c, task="digit10") for c in SIX[:4]]
    if method == "mira":
        clients = [dict(c, adapter={"kind": "lora", "rank": 2}) for c in clients]
    with pytest.raises(ConfigError) as err:
        _cfg(method=method, clients=clients, **over)
    assert err.value.field == field


def test_the_ledger_of_a_noised_run_replays_to_the_same_epsilon(tmp_path):
    """What the accountant spent is what the ledger holds: a restart rebuilds the same ε
    from the dp_event entries."""
    cfg = _cfg()
    fed = build_federation(cfg, make_split(cfg), "fedavg", record_dir=tmp_path)
    one_round(fed)
    priv = fed.clients["b"].privacy
    eps = priv.accountants["client"].report().epsilon
    lines = (tmp_path / "ledger" / "b.jsonl").read_text().splitlines()
    assert any(json.loads(x)["kind"] == "dp_event" for x in lines)
    priv.load_state_dict(priv.state_dict())
    assert priv.accountants["client"].report().epsilon == pytest.approx(eps, rel=1e-12)


# -- what the server knows: a release never carries an update it has not seen noised ------

def _noise_off(monkeypatch):
    """The client's noise draws as zeros, so a release's deterministic part can be read."""
    import fedmuscle_secure.client.privacy as client_privacy
    monkeypatch.setattr(client_privacy, "csprng_normal",
                        lambda shape, std, dtype=torch.float64, **kw: torch.zeros(shape, dtype=dtype))


def _beyond_known(release: torch.Tensor, known: torch.Tensor) -> float:
    return float((release.double() - known.double()).norm())


def test_after_an_aborted_exchange_the_next_release_is_measured_from_the_clients_own_release(
        tmp_path, monkeypatch):
    """An active server answers a's release with ExchangeAborted (an honest one does when a
    lone client released): a keeps its own weights, un-noised and unclipped. Its next
    release must be its last release (which the server holds) plus one clipped update, not
    its own weights plus one: that would hand the server the first update unclipped under
    the second round's noise alone."""
    from fedmuscle_secure.messages import ExchangeAborted, WeightAverage
    _noise_off(monkeypatch)
    cfg = _cfg(training={"rounds": 2})
    fed = build_federation(cfg, make_split(cfg), "fedavg", record_dir=tmp_path)

    def abort_a(msg):
        if msg.client == "a" and isinstance(msg, WeightAverage):
            return [ExchangeAborted("a", msg.round, msg.epoch, msg.batch, "aborted")]
        return [msg]

    _, first = one_round(fed, tamper=abort_a)
    own = fed.clients["a"].weights.vector()
    assert _beyond_known(own, first["a"].w) > 2 * CLIP  # beyond anything one clip explains
    _, second = one_round(fed, round_=2)
    assert _beyond_known(second["a"].w, first["a"].w) <= CLIP * (1 + 1e-5)


def test_after_empty_plans_the_release_is_one_clipped_update_from_the_common_start(
        tmp_path, monkeypatch):
    """A server that sends a empty plans (an honest one does while fewer than two clients
    are active) lets it train for rounds without releasing; its first release is then the
    common starting weights plus one clipped update, whatever it trained since."""
    from fedmuscle_secure.messages import RoundPlan, WeightRelease
    _noise_off(monkeypatch)
    cfg = _cfg(training={"rounds": 3})
    fed = build_federation(cfg, make_split(cfg), "fedavg", record_dir=tmp_path)
    a = fed.clients["a"]
    w0 = a.weights.vector()
    assert torch.equal(w0, fed.clients["b"].weights.vector())  # the common start
    for r in (1, 2, 3):
        full = fed.server.public_batches(r)
        out = a.handle(RoundPlan("a", r, cfg.muscle.exchange, full[:0] if r < 3 else full))
    release = next(m for m in out if isinstance(m, WeightRelease))
    assert _beyond_known(a.weights.vector(), w0) > 3 * CLIP
    assert _beyond_known(release.w, w0) <= CLIP * (1 + 1e-5)


def test_after_a_restart_that_sits_out_a_round_the_next_release_is_measured_from_the_last_average(
        tmp_path, monkeypatch):
    """Round 2 crashes after every release reached the server; on --resume each client sits
    the re-run round out and keeps its own weights. Round 3's release must be measured from
    the round-1 average (what the checkpoint says the server knows), not from them."""
    from fedmuscle_secure.messages import WeightRelease
    from fedmuscle_secure.simulator import run_round
    from helpers.round_driver import drive, restart, snapshot
    _noise_off(monkeypatch)
    cfg = _cfg(training={"rounds": 3})
    split = make_split(cfg)
    fed = build_federation(cfg, split, "fedavg", record_dir=tmp_path)
    seen = []
    w0 = fed.clients["a"].weights.known.clone()
    run_round(fed, 1)
    average = fed.clients["a"].weights.known.clone()
    state = snapshot(fed)
    drive(fed, 2, stop=lambda rep, f: isinstance(rep, WeightRelease) and rep.client == "d",
          seen=seen)
    fed = restart(cfg, split, tmp_path, fed, state, "fedavg")
    assert torch.equal(fed.clients["a"].weights.known, average)  # restored, not the start
    assert not torch.equal(average, w0)
    assert drive(fed, 2)
    kinds = [e["kind"] for e in fed.clients["a"].privacy.ledger.entries]
    assert "sit_out" in kinds
    assert _beyond_known(fed.clients["a"].weights.vector(), average) > 3 * CLIP
    got = []
    drive(fed, 3, seen=got)
    release = next(m for m in got if isinstance(m, WeightRelease) and m.client == "a")
    assert _beyond_known(release.w, average) <= CLIP * (1 + 1e-5)


@pytest.mark.parametrize("protection", ["plain", "secagg"])
def test_the_ledger_does_not_say_whether_an_update_was_clipped(tmp_path, protection):
    """Whether a client's update exceeded the clip is a fact about its data with no noise on
    it; the ledger (shown to auditors) must not carry it under update noise."""
    cfg = _cfg(protection=protection, clients=SIX if protection == "secagg" else SIX[:4])
    fed = build_federation(cfg, make_split(cfg), "fedavg", record_dir=tmp_path)
    one_round(fed)
    for c in fed.clients:
        bodies = [e["body"] for e in fed.clients[c].privacy.ledger.entries
                  if e["kind"] in ("dp_event", "egress")]
        assert bodies and not any("clip" in key and key != "clipped_values"
                                  for body in bodies for key in body)


@pytest.mark.parametrize("protection", ["plain", "secagg"])
def test_a_diverged_update_is_released_as_noise_alone_not_refused(tmp_path, monkeypatch, protection):
    """A server's crafted average can make training overflow on some datasets and not on
    others; if the client then refused to release, whether it released would tell them
    apart with certainty. Under update noise a non-finite update counts as zero: the client
    releases noise alone, records the event as usual, and counts the incident at home."""
    if protection == "plain":
        _noise_off(monkeypatch)
    clients = SIX if protection == "secagg" else SIX[:4]
    cfg = _cfg(protection=protection, clients=clients)
    fed = build_federation(cfg, make_split(cfg), "fedavg", record_dir=tmp_path)
    a = fed.clients["a"]
    w0 = a.weights.known.clone()
    monkeypatch.setattr(a.weights, "release", lambda: torch.full_like(w0, math.nan))
    _, released = one_round(fed)
    assert a.privacy.nonfinite_updates == 1
    kinds = [e["kind"] for e in a.privacy.ledger.entries if e["kind"] in ("dp_event", "egress")]
    assert kinds == ["dp_event", "egress"]
    assert all(torch.isfinite(cl.weights.vector()).all() for cl in fed.clients.values())
    if protection == "plain":
        assert torch.equal(released["a"].w, w0)  # what the server knew + 0 + noise (off here)


@pytest.mark.parametrize("key, sigma", [("update_noise", 0.02),
                                        ("representation_noise", 0.01)])
def test_a_noise_multiplier_below_the_generators_cut_is_refused(key, sigma):
    """Draws stop at 38.3 standard deviations; at σ = 0.02 a release's draw lies within the
    mechanism's shift of that cut with certainty, a release the neighbouring dataset could
    not produce: no (ε, δ) holds, so the run is refused naming the mechanism."""
    from fedmuscle_secure.federation.setup import decide_protection
    method = "fedavg" if key == "update_noise" else "muscle_sum"
    cfg = _cfg(method=method, noise={"enabled": False},
               privacy={key: {"enabled": True, "noise_multiplier": sigma}})
    with pytest.raises(ConfigError) as err:
        decide_protection(cfg, method)
    assert err.value.field == f"privacy.{key}" and "38.33 standard deviations" in str(err.value)
    ok = _cfg(method=method, noise={"enabled": False},
              privacy={key: {"enabled": True, "noise_multiplier": 0.05}})
    assert decide_protection(ok, method).sigma_client == 0.05


def test_audit_fails_a_dp_event_whose_sigma_is_not_the_declared_one(tmp_path):
    """A client (or its software) that records its releases at another σ than it draws at
    would report a smaller ε; the genesis declares the σ, and audit holds every event to it."""
    from fedmuscle_secure.records.audit import audit_ledger_file
    cfg = _cfg()
    fed = build_federation(cfg, make_split(cfg), "fedavg", record_dir=tmp_path)
    one_round(fed)
    ledger = tmp_path / "ledger" / "a.jsonl"
    clean = audit_ledger_file(ledger, public_key=tmp_path / "keys" / "a.pub", no_receipts=True)
    assert [f.kind for f in clean.failures if f.kind == "epsilon_mismatch"] == []
    event = next(e["body"] for e in fed.clients["a"].privacy.ledger.entries
                 if e["kind"] == "dp_event")
    fed.clients["a"].privacy.ledger.append("dp_event", {**event, "round": 2,
                                                        "noise_multiplier": 40.0})
    report = audit_ledger_file(ledger, public_key=tmp_path / "keys" / "a.pub", no_receipts=True)
    assert any(f.kind == "epsilon_mismatch" and "genesis declares 0.5" in f.message
               for f in report.failures)


def test_fedem_under_update_noise_clips_all_components_of_a_part_together(tmp_path, monkeypatch):
    """FedEM's parts stack its K components: one clip to C over all of them per part, two
    parts (backbone, heads), one event of two steps; the release is the known weights plus
    at most C per part (noise off to read it), and π never leaves."""
    _noise_off(monkeypatch)
    clients = [dict(c, task="digit10") for c in SIX[:3]]
    cfg = _cfg(method="fedem", clients=clients)
    fed = build_federation(cfg, make_split(cfg), "fedem", record_dir=tmp_path)
    a = fed.clients["a"]
    w0 = a.weights.known.clone()
    _, released = one_round(fed)
    (e,) = _ledger_events(fed, "a")
    assert (e["steps"], e["sensitivity"], e["noise_multiplier"]) == (2, 2 * CLIP, SIGMA)
    for part in a.weights.segments(released["a"].w.double() - w0.double()):
        assert float(part.norm()) <= CLIP * (1 + 1e-5)
    assert released["a"].w.numel() == sum(n for _, n in a.weights.layout())  # no π in it


@pytest.mark.parametrize("field, value", [("steps", 1), ("sensitivity", CLIP)])
def test_audit_fails_an_update_noise_event_that_accounts_for_less_than_was_released(
        tmp_path, field, value):
    """M-Fed releases two parts per round; an event of one step, or of sensitivity C
    instead of 2C, would report a smaller ε. The genesis declares the clip and the parts,
    and audit holds every client-level event to them."""
    from fedmuscle_secure.records.audit import audit_ledger_file
    cfg = _cfg(method="mfed", clients=SIX)
    fed = build_federation(cfg, make_split(cfg), "mfed", record_dir=tmp_path)
    one_round(fed)
    ledger = tmp_path / "ledger" / "a.jsonl"
    genesis = fed.clients["a"].privacy.ledger.entries[0]["body"]
    assert genesis["update_noise"] == {"clip": CLIP, "parts": 2}
    clean = audit_ledger_file(ledger, public_key=tmp_path / "keys" / "a.pub", no_receipts=True)
    assert [f for f in clean.failures if f.kind == "epsilon_mismatch"] == []
    event = next(e["body"] for e in fed.clients["a"].privacy.ledger.entries
                 if e["kind"] == "dp_event")
    fed.clients["a"].privacy.ledger.append("dp_event", {**event, "round": 2, field: value})
    report = audit_ledger_file(ledger, public_key=tmp_path / "keys" / "a.pub", no_receipts=True)
    assert any(f.kind == "epsilon_mismatch" and "accounts for less" in f.message
               for f in report.failures)
