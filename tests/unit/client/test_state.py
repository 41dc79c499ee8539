import pytest
import torch

from fedmuscle_secure.errors import ProtocolError
from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.messages import PeerTerms, Representations, RoundPlan, RoundReport
from fedmuscle_secure.simulator import build_federation, run_round
from helpers.tiny import tiny_config


@pytest.fixture(scope="module")
def setup():
    cfg = tiny_config(**{"training.rounds": 1})
    return cfg, make_split(cfg)


def _fed(setup, method="muscle", exchange="per_batch"):
    cfg, split = setup
    cfg = cfg.with_overrides(**{"muscle.exchange": exchange})
    return build_federation(cfg, split, method)


def test_client_rejects_reply_while_idle(setup):
    fed = _fed(setup)
    c = fed.clients["a"]
    msg = PeerTerms("a", 1, 0, 0, (("b", "c"),), torch.zeros(1, 2, 32, 16), torch.zeros(1, 1, 32, 32))
    with pytest.raises(ProtocolError) as exc:
        c.handle(msg)
    assert exc.value.peer == "server" and exc.value.stage == "idle"


def test_client_rejects_plan_for_wrong_round_and_wrong_exchange_reply(setup):
    fed = _fed(setup)
    plans = fed.server.start_round(1)
    c = fed.clients["a"]
    bad = RoundPlan("a", 2, plans[0].exchange, plans[0].batches)
    with pytest.raises(ProtocolError, match="round 1"):
        c.handle(bad)
    out = c.handle(next(p for p in plans if p.client == "a"))
    assert isinstance(out[0], Representations) and out[0].batch == 0
    wrong = PeerTerms("a", 1, 0, 5, (("b", "c"),), torch.zeros(1, 2, 32, 16), torch.zeros(1, 1, 32, 32))
    with pytest.raises(ProtocolError, match="waits for"):
        c.handle(wrong)
    with pytest.raises(ProtocolError, match="await_reply"):
        c.handle(next(p for p in plans if p.client == "a"))


def test_server_rejects_duplicate_unknown_and_malformed(setup):
    fed = _fed(setup)
    fed.server.start_round(1)
    z = torch.nn.functional.normalize(torch.randn(1, 32, 16), dim=-1)
    assert fed.server.handle(Representations("a", 1, 0, 0, z)) == []
    with pytest.raises(ProtocolError, match="duplicate"):
        fed.server.handle(Representations("a", 1, 0, 0, z))
    with pytest.raises(ProtocolError, match="not active"):
        fed.server.handle(Representations("mallory", 1, 0, 0, z))
    with pytest.raises(ProtocolError, match="shape"):
        fed.server.handle(Representations("b", 1, 0, 0, z[:, :10]))
    with pytest.raises(ProtocolError, match="shape"):
        fed.server.handle(Representations("b", 1, 0, 0, z.double()))
    with pytest.raises(ProtocolError, match="collecting"):
        fed.server.handle(Representations("b", 1, 0, 1, z))
    with pytest.raises(ProtocolError, match="round 2"):
        fed.server.handle(Representations("b", 2, 0, 0, z))


def test_server_rejects_report_between_rounds(setup):
    fed = _fed(setup)
    with pytest.raises(ProtocolError, match="between rounds"):
        fed.server.handle(RoundReport("a", 1, {}))


@pytest.mark.parametrize("exchange,method", [("per_batch", "muscle"), ("per_epoch", "muscle"),
                                              ("per_batch", "muscle_sum"), ("per_epoch", "pairwise")])
def test_round_runs_with_both_granularities(setup, exchange, method):
    fed = _fed(setup, method, exchange)
    out = run_round(fed, 1)
    nb = 96 // 32
    for m in out.values():
        assert m["cl_steps"] == nb
        # bytes sent: Z^n as float32, B x d per batch, whatever the granularity
        assert m["bytes_sent"] == nb * 32 * 16 * 4
        assert m["cl_loss"] == m["cl_loss"]  # not NaN
    assert fed.server.round == 1 and all(c.round == 1 for c in fed.clients.values())


def test_a_client_that_leaves_mid_round_does_not_stop_the_others(setup):
    from fedmuscle_secure.messages import Leave

    fed = _fed(setup)
    c = fed.clients["c"]
    real = c.handle
    calls = {"n": 0}

    def leave_after_first_step(msg):
        calls["n"] += 1
        if calls["n"] == 2:  # its first reply arrives: it leaves instead of releasing again
            return [Leave("c", msg.round, "test: budget")]
        return real(msg)

    c.handle = leave_after_first_step
    out = run_round(fed, 1)
    assert set(out) == {"a", "b"}
    assert fed.server.active == ["a", "b"]
    assert fed.server.departures == [{"client": "c", "round": 1, "reason": "test: budget"}]
    assert all(m["cl_steps"] == 96 // 32 for m in out.values())
    # the next round runs with the two that are left (M drops from 2 to 1)
    out2 = run_round(fed, 2)
    assert set(out2) == {"a", "b"} and fed.server.last_selection == {"a": ["b"], "b": ["a"]}
