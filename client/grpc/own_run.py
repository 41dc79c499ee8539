"""The organisation's run directory across restarts (DESIGN §6): which federation run it
belongs to, and when a client may write into it.

The server has a federation run id (random, made when its run starts, kept by ``--resume``)
and sends it on every stream it accepts. A client records it in its ``--out`` (``run_id``)
at first contact. Started on a directory that already holds files, it writes into it only
when it resumes that same run: it then reloads its own latest checkpoint and reopens its
ledger, whose chain goes on. Files without a recorded run id, or another run's id, are
refused before anything is written: a re-run would otherwise append a second history to
the old ledger (a chain ``audit`` rejects) and overwrite the old run's checkpoints.

Order: the client learns the run id only once connected, so :func:`inspect_out` checks the
local state first (files there ⇒ a recorded run id and the same config), and
:func:`check_run_id` compares it with the server's before the first write (config, keys,
ledger genesis, checkpoint 0: :func:`start_fresh`, :func:`resume`).
"""

from __future__ import annotations

import csv
import logging

from fedmuscle_secure.config import ExperimentConfig, dump_config
from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.experiment.rundir import RunDir, config_differences, differs_message

log = logging.getLogger("fedmuscle_secure.client")


def inspect_out(run: RunDir, cfg: ExperimentConfig) -> str | None:
    """Before connecting, writing nothing: the run id ``run`` recorded (a restart of that
    run), or None for a new run (``--out`` missing or empty). Raises :class:`ConfigError`
    when ``--out`` holds files but no run id (not this client's run directory), or was
    started with another config."""
    root = run.root
    if root.exists() and not root.is_dir():
        raise ConfigError("--out", f"{root} is a file; expected a run directory (a new, empty "
                                   "one, or this organisation's run directory to resume)")
    if not root.exists() or not any(root.iterdir()):
        return None
    recorded = run.read_run_id()
    if recorded is None:
        raise ConfigError("--out", f"{root} already holds files but no federation run id "
                                   f"({run.run_id.name}): it is not a run directory this client "
                                   "can resume; choose a new, empty --out")
    if not run.config.is_file():
        raise ConfigError("--out", f"{root} holds a run id but no {run.config.name}: it is not "
                                   "a run directory this client can resume")
    if keys := config_differences(run.config.read_text(), dump_config(cfg)):
        raise ConfigError("--config", differs_message(run.config, keys))
    return recorded


def check_run_id(run: RunDir, recorded: str | None, served: str, target: str) -> None:
    """At first contact: a directory of another federation run is refused (nothing is
    written); ``recorded`` None (a new run) accepts any run id."""
    if recorded is not None and served != recorded:
        raise ConfigError("--out", f"{run.root} belongs to federation run {recorded}, but the "
                                   f"server at {target} runs {served}: a client only resumes "
                                   "its own run; choose a new, empty --out for this one")


def start_fresh(run: RunDir, cfg: ExperimentConfig, run_id: str) -> None:
    """A new run directory, recording the federation run id first."""
    run.create()
    run.write_run_id(run_id)
    run.config.write_text(dump_config(cfg))


def resume(run: RunDir, method: str, client, run_id: str) -> int | str | None:
    """Reload ``client`` from its latest checkpoint of this run (its ledger is already open:
    the accountants and the release record come from it); returns that round, or None when
    the run had none yet (``client`` stays as built). A signed ``server_lost`` entry marks the
    releases after that round that the server may not have received (the client stopped
    without seeing them acknowledged), so ``audit`` reports them as unacknowledged, not as
    tampering."""
    ck = run.latest_checkpoint(method)
    if ck is None:
        return None
    r, state = ck
    client.load_state_dict(state)
    log.warning("%s: resuming federation run %s from its checkpoint of round %s",
                client.name, run_id, r)
    run.event("client_resume", client=client.name, run_id=run_id, from_round=r)
    ledger = client.privacy.ledger if client.privacy is not None else None
    if ledger is not None:
        ledger.mark_server_lost(client.round, "this client stopped and was restarted on its "
                                              "run directory")
    return r


def recorded_rows(run: RunDir, upto: int | str) -> dict[int, dict]:
    """The organisation's own metric rows of rounds up to ``upto`` from its ``metrics.csv``
    (a resumed client rewrites that file, and must keep what the rounds before its
    checkpoint recorded; later rounds run again)."""
    if not run.metrics.is_file() or not isinstance(upto, int):
        return {}
    with open(run.metrics, newline="") as fh:
        return {int(r["round"]): r for r in csv.DictReader(fh)
                if r["round"].isdigit() and int(r["round"]) <= upto}
