"""A weight-sharing round driven message by message, as the simulator drives it, for the
tests of the secure and noised weight sums (DESIGN §2.7)."""

from collections import deque

from fedmuscle_secure.messages import WeightRelease

SIX = [{"name": n, "model": "test_resnet", "image_size": 8, "task": t}
       for n, t in (("a", "digit10"), ("b", "coarse"), ("c", "digit10"), ("d", "coarse"),
                    ("e", "digit10"), ("f", "coarse"))]


def one_round(fed, hold=lambda client, msg: False, round_: int = 1, tamper=None):
    """Round ``round_``, as the simulator drives it; messages ``hold`` selects are never
    delivered, ``tamper(msg)`` (an active server) gives what is delivered instead of a
    server message, and whenever nothing else moves the server's stage deadline passes.
    Returns every message each client received and the WeightReleases (plain) that left."""
    received = {c: [] for c in fed.clients}
    releases = {}
    queue = deque(fed.server.start_round(round_))
    while True:
        while queue:
            msg = queue.popleft()
            if hold(msg.client, msg):
                continue
            for m in (tamper(msg) if tamper is not None else [msg]):
                received[m.client].append(m)
                for rep in fed.clients[m.client].handle(m):
                    if isinstance(rep, WeightRelease):
                        releases[rep.client] = rep
                    queue.extend(fed.server.handle(rep))
        if fed.server.round_complete:
            return received, releases
        out = fed.server.close_stage("test deadline")
        assert out, "the round is stuck"
        queue.extend(out)
