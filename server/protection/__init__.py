"""The server's side of each protection mode (DESIGN §4): one strategy object per mode.

:class:`~fedmuscle_secure.server.state.FedMuscleServer` holds exactly one, chosen when it
is built (the federation builder passes it in :class:`ServerSettings`; ``plain`` when none
is given), and never asks which mode is on: the strategy says which
release messages it collects, runs the mode's own stages (the secure sums of ``secagg``)
and turns the collected releases into replies.
"""

from __future__ import annotations

from fedmuscle_secure.server.protection.base import ReplyInputs, ServerProtection
from fedmuscle_secure.server.protection.ckks import CkksServerProtection
from fedmuscle_secure.server.protection.plain import PlainServerProtection
from fedmuscle_secure.server.protection.secagg import SecAggServerProtection

__all__ = ["CkksServerProtection", "PlainServerProtection", "ReplyInputs", "SecAggServerProtection",
           "ServerProtection"]

