"""Secure aggregation under dropouts (DESIGN §4.2): N=6, t=4, clients going silent at each
stage; exact survivors' sums, aborts below the threshold, late messages ignored, clients
announcing they leave (``SecAggServer.drop``).

Oracles are Python integers reduced mod 2**64 (see ``secagg_driver.expected_sum``).
"""

from __future__ import annotations

import pytest

from fedmuscle_secure.crypto.secagg.messages import SecAggStage
from fedmuscle_secure.crypto.secagg.server import SecAggAborted
from helpers.crypto.secagg_driver import (
    STAGES,
    edge_vectors,
    expected_sum,
    names,
    run,
    run_instance,
    start,
)

N, T = 6, 4
ALL = tuple(names(N))
NEXT = dict(zip(STAGES, (*STAGES[1:], "done"), strict=True))

# (stage, dropped clients): one client, then n − t clients, at varied positions
MATRIX = [
    ("advertise_keys", ("c0",)), ("advertise_keys", ("c1", "c4")),
    ("share_keys", ("c5",)), ("share_keys", ("c0", "c5")),
    ("masked_input", ("c3",)), ("masked_input", ("c2", "c3")),
    ("consistency", ("c4",)), ("consistency", ("c0", "c5")),
    ("unmask", ("c1",)), ("unmask", ("c0", "c3")),
]
ABORTS = [
    ("advertise_keys", ("c0", "c2", "c4")), ("share_keys", ("c3", "c4", "c5")),
    ("masked_input", ("c0", "c1", "c5")), ("consistency", ("c0", "c2", "c4")),
    ("unmask", ("c1", "c2", "c3")),
]


def _survivors(stage: str, dropped: tuple[str, ...]) -> tuple[str, ...]:
    """U3 by the protocol: a client silent at the consistency round or at unmask already
    sent its masked input."""
    return ALL if stage in ("consistency", "unmask") else tuple(c for c in ALL if c not in dropped)


@pytest.mark.parametrize(("stage", "dropped"), MATRIX)
def test_survivors_sum_is_exact(stage, dropped):
    inst = run_instance(N, T, dropout=dict.fromkeys(dropped, stage))
    srv = inst.server
    assert inst.error is None and srv.stage is SecAggStage.DONE
    assert srv.survivors == _survivors(stage, dropped)
    assert srv.result.tolist() == expected_sum(inst.vectors, _survivors(stage, dropped))
    assert srv.dropped_at == dict.fromkeys(dropped, stage)
    assert inst.closes == 1 and set(inst.withheld) == set(dropped)
    assert set(srv.unmasks) == set(ALL) - set(dropped)  # U4
    # no shares of a client silent before sending them exist; a survivor's seed, else its key
    want = {"advertise_keys": None, "share_keys": None, "masked_input": "key",
            "consistency": "seed", "unmask": "seed"}
    for c in srv.unmasks:
        assert {d: inst.clients[c].revealed.get(d) for d in dropped} == dict.fromkeys(dropped,
                                                                                   want[stage])


@pytest.mark.parametrize(("stage", "dropped"), ABORTS)
def test_fewer_than_threshold_aborts(stage, dropped):
    inst = run_instance(N, T, dropout=dict.fromkeys(dropped, stage))
    srv = inst.server
    assert isinstance(inst.error, SecAggAborted)
    assert (inst.error.peer, inst.error.stage) == ("server", stage)
    assert srv.stage is SecAggStage.ABORTED and srv.result is None
    msg = str(inst.error)
    assert repr(stage) in msg and f"threshold is {T}" in msg and "only 3 of 6" in msg
    assert srv.close_stage() == [] and srv.result is None


@pytest.mark.parametrize("stage", STAGES)
def test_late_message_from_dropped_client_is_ignored(stage):
    vectors = edge_vectors(ALL, seed=11)
    inst = start(list(ALL), T, vectors)
    run(inst, {"c2": stage}, stop_at=NEXT[stage])
    srv = inst.server
    assert inst.error is None and srv.stage.value == NEXT[stage]
    late = inst.withheld["c2"]
    assert srv.receive(late) == []
    assert srv.ignored == [("c2", type(late).__name__)]
    run(inst)
    survivors = _survivors(stage, ("c2",))
    assert inst.error is None and srv.stage is SecAggStage.DONE and srv.survivors == survivors
    assert srv.result.tolist() == expected_sum(vectors, survivors)
    assert srv.receive(late) == [] and len(srv.ignored) == 2  # and again after the end
    assert srv.result.tolist() == expected_sum(vectors, survivors)


def test_announced_drop_before_advertising():
    """``drop`` is final: the client's message is ignored, the stage advances on the others."""
    vectors = edge_vectors(ALL, seed=5)
    inst = start(list(ALL), T, vectors)
    srv = inst.server
    assert srv.drop("c4") == []
    out = []
    for c in ("c0", "c1", "c2", "c3", "c5"):
        out += srv.receive(inst.clients[c].advertise())
    assert srv.stage is SecAggStage.SHARE_KEYS
    assert sorted(m.recipient for m in out) == ["c0", "c1", "c2", "c3", "c5"]
    assert srv.receive(inst.clients["c4"].advertise()) == []
    assert "c4" not in srv.adverts and ("c4", "AdvertiseKeys") in srv.ignored
    inst.started = True
    inst.pending.extend(out)
    run(inst)
    survivors = ("c0", "c1", "c2", "c3", "c5")
    assert inst.error is None and inst.closes == 0 and srv.survivors == survivors
    assert srv.result.tolist() == expected_sum(vectors, survivors)
    assert srv.dropped_at == {"c4": "advertise_keys"}


def test_announced_drop_during_masked_input():
    vectors = edge_vectors(ALL, seed=6)
    inst = start(list(ALL), T, vectors)
    run(inst, stop_at="masked_input")
    assert inst.server.drop("c1") == []
    run(inst)  # c1 still answers; the server must not take its masked input
    srv = inst.server
    survivors = tuple(c for c in ALL if c != "c1")
    assert inst.error is None and inst.closes == 0 and srv.survivors == survivors
    assert ("c1", "MaskedInput") in srv.ignored
    assert srv.result.tolist() == expected_sum(vectors, survivors)
    assert all(inst.clients[c].revealed["c1"] == "key" for c in survivors)


def test_announced_drop_of_last_awaited_client_advances():
    inst = start(list(ALL), T, edge_vectors(ALL))
    srv = inst.server
    for c in ALL[:-1]:
        assert srv.receive(inst.clients[c].advertise()) == []
    books = srv.drop(ALL[-1])
    assert srv.stage is SecAggStage.SHARE_KEYS and len(books) == N - 1


def test_announced_drops_below_threshold_abort():
    inst = start(list(ALL), T, edge_vectors(ALL))
    srv = inst.server
    for c in ("c0", "c1", "c2"):
        assert srv.receive(inst.clients[c].advertise()) == []
    assert srv.drop("c3") == [] and srv.drop("c4") == []
    with pytest.raises(SecAggAborted, match="threshold is 4"):
        srv.drop("c5")
    assert srv.stage is SecAggStage.ABORTED and srv.result is None
