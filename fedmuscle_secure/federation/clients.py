"""Builds one organisation's :class:`FedMuscleClient` from the federation's setup.

The model is initialised from the experiment seed and the organisation's name, so the
simulator and a deployed client build the same object (DESIGN §6).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fedmuscle_secure.client.dp_sgd import make_private_model
from fedmuscle_secure.client.protection.base import ClientProtection
from fedmuscle_secure.client.protection.ckks import CkksClientProtection
from fedmuscle_secure.client.protection.secagg import SecAggClientProtection
from fedmuscle_secure.client.report_policy import policy_for
from fedmuscle_secure.client.settings import ClientSettings, LabelledData, PlanSpec
from fedmuscle_secure.client.state import FedMuscleClient
from fedmuscle_secure.client.weight_phase import WeightPhase
from fedmuscle_secure.config import ClientConfig, ExperimentConfig
from fedmuscle_secure.config_weights import averaging_groups
from fedmuscle_secure.crypto.ckks import SecretContext
from fedmuscle_secure.data import FederatedSplit, Task, get_task
from fedmuscle_secure.errors import ConfigError, EncodingError
from fedmuscle_secure.federation.client_privacy import Records, client_privacy
from fedmuscle_secure.federation.setup import FederationSetup, public_identity
from fedmuscle_secure.methods import WEIGHT_SHARING
from fedmuscle_secure.models import ClientModel, Weights, build_client_model
from fedmuscle_secure.models.mixture import MixtureModel
from fedmuscle_secure.seeding import derive_seed


def _labelled(task: Task, x: np.ndarray, y: np.ndarray) -> LabelledData:
    return LabelledData(torch.from_numpy(np.ascontiguousarray(x)), task.targets(y))


def _spec(cfg: ExperimentConfig, name: str) -> tuple[int, ClientConfig]:
    """The position and config of the organisation called ``name``."""
    i = next((k for k, c in enumerate(cfg.clients) if c.name == name), None)
    if i is None:
        raise ConfigError("clients", f"no client named {name!r}; expected one of "
                                     f"{[c.name for c in cfg.clients]}")
    return i, cfg.clients[i]


def build_client(cfg: ExperimentConfig, split: FederatedSplit, method: str, name: str,
                 setup: FederationSetup, record_dir: Path | None = None,
                 identity=None) -> FedMuscleClient:
    """One organisation's :class:`FedMuscleClient` for ``method`` (``setup``'s).

    ``identity``: the organisation's provisioned Ed25519 private key, which signs its
    ledger (a deployment passes it; the ledger's genesis then says ``scope:
    organisation``). None: the simulator's own key for it in ``record_dir/keys``."""
    i, c = _spec(cfg, name)
    task = get_task(c.task, split.num_classes)
    model = _model(setup, i, c, task)
    shard = split.shards[i]
    train = _labelled(task, shard.x_train, shard.y_train)
    privacy, dpsgd = None, None
    if record_dir is not None or setup.calibration is not None:
        privacy, dpsgd = client_privacy(setup, c, model, task, train, Records(record_dir, identity))
    return FedMuscleClient(
        c.name, model, task, train=train, val=_labelled(task, shard.x_val, shard.y_val),
        test=_labelled(task, split.test_x, split.test_y), public_x=setup.public_x,
        settings=_settings(setup, c), privacy=privacy, dpsgd=dpsgd,
        protection=_protection(setup, c.name, privacy))


def _protection(setup: FederationSetup, name: str, privacy) -> ClientProtection | None:
    """The client's strategy for the setup's protection mode (None: plain)."""
    if setup.secagg is not None:
        return _secagg_client(setup, name, privacy)
    if setup.ckks is not None:
        return _ckks_client(setup, name)
    return None


def _weights(i: int, c: ClientConfig) -> Weights | None:
    """The client's starting weights (DESIGN §2.5); a relative ``pretrained_file`` is read
    from the working directory, as ``data.path`` is."""
    if c.pretrained_file is not None:
        return Weights(Path(c.pretrained_file), f"clients.{i}.pretrained_file")
    return Weights(None, f"clients.{i}.pretrained") if c.pretrained else None


def _model(setup: FederationSetup, i: int, c: ClientConfig, task: Task) -> torch.nn.Module:
    """The organisation's model, seeded by the experiment seed and its name, from its
    starting weights, with its adapters; under DP-SGD with the layers Opacus needs
    (BatchNorm → GroupNorm etc.)."""
    # weight sharing starts every client from the same weights, as FedAvg's server
    # broadcast of w_0 does (DESIGN §2.7); otherwise each organisation's own initialisation
    shared = setup.method in WEIGHT_SHARING
    if setup.method == "fedem":  # K components, each its own start (the same on every client)
        return MixtureModel([_component(setup, i, c, task, k)
                             for k in range(setup.cfg.weight_sharing.components)],
                            multilabel=task.kind == "multilabel")
    torch.manual_seed(derive_seed(setup.cfg.seed, "weight-sharing" if shared else c.name, "init"))
    dp_sgd = setup.calibration is not None and bool(setup.calibration.sigma_record)
    model = _build(setup, i, c, task, channels_last=not dp_sgd)  # Opacus: NCHW
    if dp_sgd:
        model = make_private_model(model, client=c.name)
    return model


def _component(setup: FederationSetup, i: int, c: ClientConfig, task: Task, k: int) -> ClientModel:
    """FedEM's component ``k``: seeded by the experiment seed and k alone, so every client
    starts from the same K models and the K differ (identical components would get equal
    responsibilities and never separate). FedEM is refused under DP-SGD."""
    torch.manual_seed(derive_seed(setup.cfg.seed, "weight-sharing", "init", "component", k))
    return _build(setup, i, c, task, channels_last=True)


def _build(setup: FederationSetup, i: int, c: ClientConfig, task: Task, *,
           channels_last: bool) -> ClientModel:
    """One model of the organisation's configured architecture, from the current random
    state; NHWC where ``training.channels_last`` asks and ``channels_last`` allows."""
    return build_client_model(
        model=c.model, model_kwargs=c.model_kwargs, in_chans=setup.in_chans,
        image_size=c.image_size, dim=setup.cfg.muscle.dim, num_outputs=task.num_outputs,
        projection=c.projection.kind, hidden=c.projection.hidden, field=f"clients.{i}.model",
        weights=_weights(i, c), adapter=_adapter(c), adapter_field=f"clients.{i}.adapter",
        channels_last=setup.cfg.training.channels_last and channels_last,
        vocab_size=setup.vocab_size)


def _settings(setup: FederationSetup, c: ClientConfig) -> ClientSettings:
    cfg, tr = setup.cfg, setup.cfg.training
    return ClientSettings(
        method=setup.method, local_epochs=tr.local_epochs, local_batch_size=tr.local_batch_size,
        lr=c.lr or tr.lr, cl_lr=c.cl_lr or tr.cl_lr, weight_decay=tr.weight_decay,
        augment=tr.augment, tau=float(setup.tau[0, 1]), gamma=float(setup.gamma[0, 1]),
        seed=cfg.seed, report=policy_for(cfg, setup.method),
        plan=PlanSpec(exchange=cfg.muscle.exchange, public_size=int(setup.public_x.shape[0]),
                      batch_size=cfg.muscle.batch_size, cl_epochs=tr.cl_epochs),
        fused_optimizer=tr.fused_optimizer, weight_scope=cfg.weight_sharing.scope,
        fedprox_mu=cfg.weight_sharing.mu, feddea_keep=cfg.weight_sharing.keep,
        dp=setup.calibration is not None,
        output_partners=tuple(o.name for o in cfg.clients if o.task == c.task and o.name != c.name))


def final_model_spec(cfg: ExperimentConfig, name: str, setup: FederationSetup,
                     client: FedMuscleClient) -> dict:
    """What :func:`~fedmuscle_secure.models.save_final` records beside an organisation's
    final weights: the arguments :func:`build_client` gave ``build_client_model`` (not the
    starting weights: ``final.pt`` holds every weight), whether DP-SGD changed its layers,
    the task and metric the model serves, and for FedEM the mixture (``final.pt`` holds its
    K components and π)."""
    c = next(spec for spec in cfg.clients if spec.name == name)
    mixture = ({"mixture": {"components": len(client.model.components),
                            "multilabel": client.model.multilabel}}
               if isinstance(client.model, MixtureModel) else {})  # FedEM's K components and π
    return {**mixture, "client": name, "round": client.round, "task": c.task, "metric": client.task.metric,
            "dp_sgd": client.dpsgd is not None,
            "architecture": {"model": c.model, "model_kwargs": dict(c.model_kwargs),
                             "in_chans": setup.in_chans, "image_size": c.image_size,
                             "dim": cfg.muscle.dim, "num_outputs": client.task.num_outputs,
                             "projection": c.projection.kind, "hidden": c.projection.hidden,
                             "adapter": _adapter(c), "vocab_size": setup.vocab_size,
                             # the layout it computed in: the kept model answers bit for bit
                             "channels_last": client.model.channels_last}}


def _adapter(c: ClientConfig) -> dict | None:
    return None if c.adapter is None else c.adapter.model_dump(mode="json")


def _secagg_client(setup: FederationSetup, name: str, privacy) -> SecAggClientProtection:
    """The organisation's side of the secure sums; refuses a config with no safe
    fixed-point encoding of its exchanges."""
    cfg, params = setup.cfg, setup.secagg
    try:
        params.encoding(cfg.data.public_size // cfg.muscle.batch_size, len(cfg.clients))
        if setup.method in WEIGHT_SHARING:
            params.weight_encoding(1, len(cfg.clients)).check()
    except EncodingError as exc:
        raise ConfigError("secagg", f"no safe fixed-point encoding: {exc}") from None
    peers = {k: public_identity(v) for k, v in setup.identities.items() if k != name}
    return SecAggClientProtection(name, setup.identities[name], peers, params, privacy,
                                  groups=_groups(cfg, name) if setup.method in WEIGHT_SHARING
                                  else None)


def shared_layout(setup: FederationSetup, name: str) -> tuple[tuple[str, int], ...]:
    """The parts client ``name`` shares and their lengths (DESIGN §2.7), from its model as
    :func:`build_client` makes it (DP-SGD's layer changes included); the global random
    state is left as it was."""
    i, c = _spec(setup.cfg, name)
    with torch.random.fork_rng(devices=[]):
        model = _model(setup, i, c, get_task(c.task, setup.num_classes))
    ws = setup.cfg.weight_sharing
    return WeightPhase(model, setup.method, ws.scope, ws.mu, ws.keep).layout()


def _ckks_client(setup: FederationSetup, name: str) -> CkksClientProtection:
    params, secret_bytes, _ = setup.ckks
    weights = setup.method in WEIGHT_SHARING
    return CkksClientProtection(
        name, SecretContext.from_bytes(secret_bytes, params), method=setup.method,
        clients=setup.client_names, tau=setup.tau, gamma=setup.gamma,
        groups=_groups(setup.cfg, name) if weights else None,
        update_clip=setup.cfg.weight_sharing.update_clip if weights else None)


def _groups(cfg: ExperimentConfig, name: str) -> dict[str, tuple[str, ...]]:
    """Each part client ``name`` shares and the group it is averaged over (DESIGN §2.7)."""
    return {part: members for part, members in averaging_groups(cfg) if name in members}
