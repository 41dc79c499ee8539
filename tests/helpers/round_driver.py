"""Driving one round by hand, with a crash point and a restart (tests only).

``run_round`` plays a round to its end; the attack tests need to stop it right after the
server received a given message (a crash), then rebuild every party from the run directory
and the last round's checkpoints, as ``--resume`` does.
"""

from __future__ import annotations

import copy
from collections import deque

from fedmuscle_secure.simulator import build_federation, carries_release, record_receipt


def drive(fed, r: int, stop=None, seen: list | None = None) -> bool:
    """Deliver round ``r``'s messages like ``run_round``, recording what the server receives
    in ``seen``; stop right after the server received a message ``rep`` for which
    ``stop(rep, fed)`` is true. Returns whether the round ran to its end."""
    queue = deque(fed.server.start_round(r))
    while queue:
        msg = queue.popleft()
        for rep in fed.clients[msg.client].handle(msg):
            if fed.receipts is not None and carries_release(rep):
                record_receipt(fed.receipts, rep)
            if seen is not None:
                seen.append(rep)
            queue.extend(fed.server.handle(rep))
            if stop is not None and stop(rep, fed):
                return False
    return True


def snapshot(fed) -> dict:
    """What the checkpoints of the last completed round hold: every party's state."""
    return {"clients": {c: copy.deepcopy(cl.state_dict()) for c, cl in fed.clients.items()},
            "server": copy.deepcopy(fed.server.state_dict())}


def restart(cfg, split, record_dir, fed, state: dict, method: str):
    """The crash and ``--resume``: close everything, rebuild every party from the run
    directory (ledgers reopened) and load ``state``."""
    fed.close()
    again = build_federation(cfg, split, method, record_dir=record_dir)
    for name, client_state in state["clients"].items():
        again.clients[name].load_state_dict(copy.deepcopy(client_state))
    again.server.load_state_dict(copy.deepcopy(state["server"]))
    return again
