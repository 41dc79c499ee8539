"""The config's ``deployment`` section: what only the gRPC deployment reads (DESIGN §6).

The simulator ignores it; :func:`fedmuscle_secure.config.check_semantics` validates it with
:func:`check_deployment`. Its own module so that the membership rules (the quorum a server
starts with, the fewest members a protection may run with) sit in one place, shared by the
config check, ``server --resume --exclude`` and the server's start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from fedmuscle_secure.errors import ConfigError

if TYPE_CHECKING:
    from fedmuscle_secure.config import ExperimentConfig


class DeploymentConfig(BaseModel):
    """``deployment:`` of an experiment config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_clients: int | None = Field(
        default=None, ge=1, description="the quorum the server starts (or resumes) with: once "
        "--connect-timeout has passed, it goes on if at least this many of the organisations "
        "still in the run are connected and drops the absent ones; default (null): every one "
        "of them. Under secagg never below max(3, t)")


def default_threshold(n: int) -> int:
    """Default secagg threshold: a majority of the N configured clients, at least 2."""
    return max(2, n // 2 + 1)


def min_members(cfg: ExperimentConfig) -> int:
    """The fewest organisations the protection may run with: under secagg the secure sum's
    minimum group max(3, t) (with fewer, each member could subtract its own input from a sum
    and learn the others'), else 1."""
    if cfg.protection != "secagg":
        return 1
    return max(3, cfg.secagg.threshold or default_threshold(len(cfg.clients)))


def quorum(cfg: ExperimentConfig, members: int) -> int:
    """How many of the ``members`` still in the run must be connected for the server to
    start: ``deployment.min_clients`` (default all of them), never more than there are."""
    wanted = cfg.deployment.min_clients
    return members if wanted is None else min(wanted, members)


def check_deployment(cfg: ExperimentConfig) -> None:
    """``deployment.min_clients``: at most N, and never below :func:`min_members`."""
    m, n = cfg.deployment.min_clients, len(cfg.clients)
    if m is None:
        return
    if m > n:
        raise ConfigError("deployment.min_clients", f"{m} exceeds the number of clients N={n}")
    floor = min_members(cfg)
    if m < floor:
        raise ConfigError("deployment.min_clients", f"{m} is below what protection "
                          f"{cfg.protection!r} needs: a secure sum runs over at least "
                          f"max(3, t) = {floor} members; expected {floor} to {n}")
