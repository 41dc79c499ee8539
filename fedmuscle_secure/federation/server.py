"""Builds the :class:`FedMuscleServer` of a federation from its setup (DESIGN §3, §6)."""

from __future__ import annotations

from pathlib import Path

from fedmuscle_secure.config import ExperimentConfig
from fedmuscle_secure.config_weights import averaging_groups
from fedmuscle_secure.crypto.ckks import PublicContext
from fedmuscle_secure.federation.ckks import check_weight_precision
from fedmuscle_secure.federation.clients import shared_layout
from fedmuscle_secure.federation.setup import FederationSetup, public_identity
from fedmuscle_secure.methods import WEIGHT_SHARING
from fedmuscle_secure.records.ledger import ReceiptLog
from fedmuscle_secure.server.computation import resolve_device
from fedmuscle_secure.server.protection import (
    CkksServerProtection,
    SecAggServerProtection,
    ServerProtection,
)
from fedmuscle_secure.server.protection.ckks_weights import CkksWeightProtection, PartGroup
from fedmuscle_secure.server.protection.secagg_weights import SecAggWeightProtection, WeightSum
from fedmuscle_secure.server.state import FedMuscleServer, ServerSettings


def build_server(cfg: ExperimentConfig, method: str, setup: FederationSetup) -> FedMuscleServer:
    """The :class:`FedMuscleServer` of ``method`` over every configured client."""
    tau, gamma = setup.tau, setup.gamma
    return FedMuscleServer(setup.client_names, ServerSettings(
        method=method, exchange=cfg.muscle.exchange, num_selected=cfg.muscle.num_selected,
        batch_size=cfg.muscle.batch_size, public_size=int(setup.public_x.shape[0]),
        cl_epochs=cfg.training.cl_epochs, inv_tau=1.0 / tau, gamma=gamma, seed=cfg.seed,
        device=resolve_device(cfg.server.device),
        output_spaces=tuple(c.task for c in cfg.clients), protection=_protection(setup),
        mira_beta=cfg.weight_sharing.beta))


def _protection(setup: FederationSetup) -> ServerProtection | None:
    """The server's strategy for the setup's protection mode (None: plain)."""
    if setup.secagg is not None:
        return _secagg_server(setup)
    if setup.ckks is not None:
        return _ckks_server(setup)
    return None


def _secagg_server(setup: FederationSetup) -> SecAggServerProtection:
    """The server's side of the secure sums: it verifies the organisations' key adverts
    with their public identities."""
    params = setup.secagg
    if setup.method in WEIGHT_SHARING:
        return _secagg_weight_server(setup)
    return SecAggServerProtection(
        threshold=params.threshold,
        identities={k: public_identity(v) for k, v in setup.identities.items()},
        encoding_for=params.encoding, tau=float(setup.tau[0, 1]), gamma=float(setup.gamma[0, 1]),
        device=resolve_device(setup.cfg.server.device))


def _part_groups(setup: FederationSetup) -> list[PartGroup]:
    """Every configured averaging group of a weight-sharing method (DESIGN §2.7) with the
    number of its part in the clients' layout and the part's length, from the model of the
    group's first client (one model built per client whose layout is read)."""
    layouts: dict[str, dict[str, int]] = {}
    out = []
    for part, members in averaging_groups(setup.cfg):
        if members[0] not in layouts:
            layouts[members[0]] = dict(shared_layout(setup, members[0]))
        layout = layouts[members[0]]
        out.append(PartGroup(part=list(layout).index(part), name=part, members=members,
                             length=layout[part]))
    return out


def _secagg_weight_server(setup: FederationSetup) -> SecAggWeightProtection:
    """The secure sums of a weight-sharing method (DESIGN §2.7): each shared part over each
    of its groups, with the lengths the clients' models give."""
    cfg, params = setup.cfg, setup.secagg
    sums = [WeightSum(part=g.part, members=g.members, length=g.length,
                      threshold=params.group_threshold(len(g.members)))
            for g in _part_groups(setup)]
    return SecAggWeightProtection(
        sums=sums, threshold=params.threshold,
        identities={k: public_identity(v) for k, v in setup.identities.items()},
        weight_encoding=params.weight_encoding, mean_bound=params.mean_update_bound,
        device=resolve_device(cfg.server.device))


def _ckks_server(setup: FederationSetup) -> ServerProtection:
    params, _, public_bytes = setup.ckks
    context = PublicContext.from_bytes(public_bytes, params)
    if setup.method in WEIGHT_SHARING:  # encrypted sums of each part's updates (§2.7)
        groups = _part_groups(setup)
        check_weight_precision(setup.cfg, params, [g.length for g in groups])
        return CkksWeightProtection(context, groups)
    return CkksServerProtection(context, float(setup.tau[0, 1]), setup.cfg.ckks.galois_keys)


def open_receipts(record_dir: Path | None) -> ReceiptLog | None:
    """The server's receipt log in ``record_dir`` (DESIGN §5.4), or None without one."""
    if record_dir is None:
        return None
    return ReceiptLog.open(record_dir / "receipts.jsonl")
