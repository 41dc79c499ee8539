"""The progress display (fedmuscle_secure.console.progress, round_progress): a redrawn bar only on a
terminal, complete lines everywhere else, and log records never sharing a line with the bar."""

from __future__ import annotations

import io
import logging

import torch

from fedmuscle_secure.console.progress import (
    DEBUG,
    DETAIL,
    NORMAL,
    OPERATOR,
    QUIET,
    Progress,
    RateEstimate,
    duration,
    is_terminal,
    log_handler,
    log_level,
    verbosity_of,
)
from fedmuscle_secure.console.rounds import PhaseTracker, epsilon_text
from fedmuscle_secure.messages import Finish, PeerSums, RoundPlan
from helpers.clock import Clock
from helpers.terminal import CLEAR, Terminal


def test_terminal_detection(monkeypatch):
    monkeypatch.delenv("TERM", raising=False)
    assert is_terminal(Terminal()) and not is_terminal(io.StringIO()) and not is_terminal(None)
    closed = Terminal()
    closed.close()
    assert not is_terminal(closed)
    monkeypatch.setenv("TERM", "dumb")
    assert not is_terminal(Terminal())


def test_plain_lines_have_no_carriage_return_and_phases_print_nothing():
    out = io.StringIO()
    p = Progress(3, label="run", stream=out, bar=False)
    for r in (1, 2, 3):
        p.phase(f"round {r}/3: exchange epoch 1/1, batch 2/4")
        p.advance()
        p.line(f"round {r}/3 complete")
    p.close()
    assert out.getvalue() == "round 1/3 complete\nround 2/3 complete\nround 3/3 complete\n"


def test_bar_is_redrawn_in_place_and_lines_scroll_above_it():
    out = Terminal()
    p = Progress(4, label="run", stream=out, bar=True, refresh_s=0)
    p.phase("muscle round 1/2: exchange epoch 1/1, batch 3/8")
    assert out.getvalue().startswith("run [") and "batch 3/8" in out.getvalue()
    assert "\n" not in out.getvalue()  # a bar is never a new line
    p.advance(seconds=2.0)
    p.line("muscle round 1/2  a=0.500")
    text = out.getvalue()
    # the bar is taken off before the line is written and drawn again after it
    before, after = text.rsplit("muscle round 1/2  a=0.500\n", 1)
    assert before.endswith(CLEAR) and after.startswith("run [") and "1/4 rounds" in after
    p.close()
    assert out.getvalue().endswith(CLEAR)  # nothing of the bar is left on the screen


def test_a_log_record_clears_the_bar_and_the_bar_comes_back():
    out = Terminal()
    p = Progress(2, label="server", stream=out, bar=True, refresh_s=0)
    p.phase("round 1/2: exchange")
    logger = logging.getLogger("test_progress.bar")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = log_handler(NORMAL, out)
    logger.addHandler(handler)
    try:
        logger.info("round 1/2 complete", extra=OPERATOR)
    finally:
        logger.removeHandler(handler)
        p.close()
    before, after = out.getvalue().split("round 1/2 complete\n", 1)
    bar, record = before.rsplit(CLEAR, 1)
    assert bar.startswith("server [") and "INFO" in record and "\r" not in record
    assert after.startswith("server [")


def test_the_bar_fits_the_terminal_width():
    p = Progress(10, label="x" * 30, stream=Terminal(), bar=False)
    p.phase("a long phase " * 20)
    assert len(p.render(60)) <= 59 and "ETA" in p.render(200)


def test_rate_and_eta_count_only_this_process_s_rounds():
    clock = Clock(100.0)
    rate = RateEstimate(10, clock=clock)
    rate.skip(4)  # resumed after round 4: those rounds took time this process never saw
    assert rate.per_unit is None and rate.remaining is None
    assert "ETA ?" in rate.summary()
    clock.now += 30
    rate.advance(seconds=6.0)
    rate.reached(6, seconds=4.0)  # one more round, 4 s
    assert rate.done == 6 and rate.timed == 2 and rate.per_unit == 5.0
    assert rate.remaining == 20.0 and "ETA 0:20" in rate.summary() and "elapsed 0:30" in rate.summary()
    rate.reached(5)  # told to go back a round: done counts down, the rate stays
    assert rate.done == 5 and rate.per_unit == 5.0
    assert duration(3725) == "1:02:05" and duration(65) == "1:05" and duration(None) == "?"


def test_verbosity_levels_and_what_passes_by_default():
    assert verbosity_of(True, 0) == QUIET and verbosity_of(False, 0) == NORMAL
    assert verbosity_of(False, 1) == DETAIL and verbosity_of(False, 5) == DEBUG
    assert log_level(QUIET) == logging.WARNING and log_level(DEBUG) == logging.DEBUG

    def shown(verbosity: int, level: int, operator: bool) -> bool:
        record = logging.LogRecord("x", level, __file__, 1, "m", None, None)
        if operator:
            record.operator = True
        return level >= log_level(verbosity) and bool(log_handler(verbosity, io.StringIO())
                                                      .filter(record))

    assert shown(NORMAL, logging.INFO, operator=True)
    assert not shown(NORMAL, logging.INFO, operator=False)  # detail: only with -v
    assert shown(NORMAL, logging.WARNING, operator=False)
    assert shown(DETAIL, logging.INFO, operator=False)
    assert not shown(QUIET, logging.INFO, operator=True)
    assert shown(QUIET, logging.WARNING, operator=False)


def test_phases_are_named_with_their_position():
    t = PhaseTracker(members=3)
    plan = torch.zeros(2, 4, 8, dtype=torch.int64)  # 2 epochs of 4 batches
    assert t.describe(RoundPlan("a", 1, "per_batch", plan)) == "local update a (1/3)"
    assert t.describe(RoundPlan("b", 1, "per_batch", plan)) == "local update b (2/3)"
    sums = PeerSums("a", 1, 1, 2, (), torch.zeros(0), torch.zeros(0), False)
    assert t.describe(sums) == "exchange epoch 2/2, batch 3/4"
    whole = PeerSums("a", 1, 0, None, (), torch.zeros(0), torch.zeros(0), False)
    assert t.describe(whole) == "exchange epoch 1/2, whole epoch"
    assert PhaseTracker().describe(Finish("a", 4)) == "final local update"


def test_epsilon_text_shows_only_the_guarantees_that_are_on():
    m = {"eps_record": 1.234, "eps_client": 0.5, "test_metric": 0.9}
    assert epsilon_text(m, ("record", "client")) == "ε record 1.23, client 0.50"
    assert epsilon_text(m, ()) == ""
    assert epsilon_text({"eps_client": "not reported"}, ("client",)) == "ε client ?"


def _dp_config(**over):
    from helpers.tiny import tiny_config

    return tiny_config(compare_local=False, **{
        "privacy": {"dp_sgd": {"enabled": True, "noise_multiplier": 1.0},
                    "representation_noise": {"enabled": True, "noise_multiplier": 1.0}},
        **over})


def test_an_organisation_logs_its_round_with_its_own_epsilon_and_traffic(caplog):
    from fedmuscle_secure.console.deploy import ClientProgress
    from fedmuscle_secure.messages import Representations, RoundReport

    cfg = _dp_config()
    watch = ClientProgress(cfg, "muscle", "a", logging.getLogger("test_progress.client"))
    plan = torch.zeros(1, 3, 32, dtype=torch.int64)
    watch.received(RoundPlan("a", 2, "per_batch", plan))
    watch.sent(Representations("a", 2, 0, 0, torch.zeros(1, 32, 16)))
    timing = watch.timing()
    assert timing["bytes_sent"] == 32 * 16 * 4 and timing["bytes_received"] == plan.numel() * 8
    assert timing["seconds"] >= 0
    watch.sent(RoundReport("a", 2, {"eps_record": 1.5}))
    with caplog.at_level(logging.INFO, logger="test_progress.client"):
        watch.report(2, {"test_metric": 0.5, "val_metric": 0.25, "eps_record": 1.5,
                         "eps_client": 0.75}, timing)
    [record] = caplog.records
    assert record.operator  # shown at the default verbosity
    line = record.getMessage()
    assert line.startswith("a: round 2/3 complete  test_metric 0.5  val_metric 0.25")
    assert "ε record 1.50, client 0.75 (own accountant)" in line and "sent 0.00 MB" in line
    watch.close()


def test_the_server_line_names_the_epsilon_the_members_reported_and_who_left(caplog):
    import threading
    from types import SimpleNamespace

    from fedmuscle_secure.console.deploy import ServerProgress
    from fedmuscle_secure.server.state import StageWait

    waiting = [None]
    server = SimpleNamespace(clients=["a", "b", "c"], active=["a", "b", "c"], round=0,
                             public_batches=lambda r: torch.zeros(2, 3, 32),
                             waiting=lambda: waiting[0])
    coordinator = SimpleNamespace(server=server, cond=threading.Condition(), outboxes={"a": 1},
                                  started=False)
    watch = ServerProgress(_dp_config(), "muscle", coordinator, start=1,
                           log=logging.getLogger("test_progress.server"))
    assert watch._status() == "waiting for b, c to connect (1/3 connected)"
    coordinator.started = True
    waiting[0] = StageWait(("release", 1, 1, 2), ("a",), ("b", "c"))
    assert watch._status() == "round 1/3: exchange epoch 2/2, batch 3/3 (1/3 answered)"
    rows = {c: {"eps_record": 1.0, "eps_client": 0.5, "bytes_sent": 1e6, "bytes_received": 2e6,
                "test_metric": "not reported"} for c in "ab"}
    with caplog.at_level(logging.INFO, logger="test_progress.server"):
        watch.round_end(1, 4.0, rows, left=["c"])
    line = next(r.getMessage() for r in caplog.records
                if r.getMessage().startswith("round 1/3 complete"))
    assert line.startswith("round 1/3 complete  members 2/3 (left: c)  received 2.00 MB "
                           "sent 4.00 MB  ε reported by members (record/client): a 1.00/0.50, "
                           "b 1.00/0.50  round 4.0 s")
    watch.close()
