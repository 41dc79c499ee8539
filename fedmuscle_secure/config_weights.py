"""The config's ``weight_sharing`` section and the rules of the weight-sharing methods
(DESIGN §2.7): what they average, their strengths, and where their assumptions hold.

:func:`fedmuscle_secure.config.check_semantics` validates a config with
:func:`check_weight_sharing`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.methods import SUMMED_WEIGHTS, WEIGHT_SHARING

if TYPE_CHECKING:
    from fedmuscle_secure.config import ExperimentConfig


#: The fewest members a sum of weight updates may have, under secagg and under ckks: with
#: two, each member learns the other's update from the sum (with one, the server, under
#: secagg; under ckks every client holds the secret key).
MIN_SUM_GROUP = 3


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WeightSharingConfig(_Strict):
    """The weight-sharing methods (DESIGN §2.7): what ``fedavg`` / ``fedprox`` average and
    FedProx's proximal strength. ``mfed`` has its own scopes (the encoder across every
    client, the task head within each task)."""

    scope: Literal["model", "encoder"] = Field(
        default="encoder", description="fedavg/fedprox: 'model' averages backbone and task head "
        "(every client the same task), 'encoder' the backbone only (each task head stays local)")
    keep: float = Field(default=0.3, gt=0, le=1, description="feddea: the share of the "
                        "dimensions each client's update moves that it keeps (largest "
                        "|update|), rescaled to the update's whole L1 mass")
    beta: float = Field(default=0.5, gt=0, le=1, description="mira: the step of each "
                        "client's adapters towards its similarity-weighted neighbours")
    mu: float = Field(default=0.01, ge=0, description="fedprox: mu/2 ||w - w_global||^2 on "
                      "every shared weight, mfed: on the task head (towards its task's mean), "
                      "mocha: on the task head (towards its task-relationship target), in "
                      "every LocalUpdate step")
    components: int = Field(default=3, ge=2, le=16, description="fedem: K, the number of "
                            "shared component models each client's data is a mixture of")
    update_clip: float = Field(default=10.0, gt=0, le=1e6, description="protection secagg "
                               "and ckks, and privacy.update_noise: the L2 norm each client's "
                               "update of each part is clipped to before the sum or the noise "
                               "(bounds its encoding, what one member can move the mean by, "
                               "and the client-level sensitivity 2C; clipped updates are "
                               "counted in the round report, and in the ledger without update "
                               "noise)")


def check_weight_sharing(cfg: ExperimentConfig) -> None:
    """The weight-sharing methods (§2.7) average parameters: one architecture where they
    average, one task where the head is averaged; they run plain or (the weighted means)
    through secure or encrypted sums, where every averaging group needs
    :data:`MIN_SUM_GROUP` members; they release no representations, so representation
    noise is refused (update noise, DP-FedAvg's, is theirs: :func:`check_update_noise`)."""
    method = cfg.muscle.method
    check_update_noise(cfg)
    if method not in WEIGHT_SHARING:
        return
    if cfg.protection != "plain" and method not in SUMMED_WEIGHTS:
        raise ConfigError("protection", f"{method!r} aggregates weights in the clear (plain)"
                          f"; got {cfg.protection!r}"
                          + (": its step needs every client's adapters (their similarities), "
                             "which a sum does not give" if method == "mira" else "")
                          + (": its task relationship Ω needs every client's head, which a "
                             "sum does not give" if method == "mocha" else ""))
    if cfg.protection in ("secagg", "ckks"):
        _check_sum_groups(cfg)
    if cfg.privacy.representation_noise.enabled:
        raise ConfigError("privacy.representation_noise.enabled", f"{method!r} releases weights, "
                          "not unit-norm representations, and the noise of §5.1 is calibrated "
                          "for unit-norm rows; set it to false (privacy.update_noise puts "
                          "client-level noise on weight updates, privacy.dp_sgd covers records)")
    if cfg.privacy.update_noise.enabled and method not in SUMMED_WEIGHTS:
        raise ConfigError("privacy.update_noise.enabled", f"{method!r} does not release an "
                          "update from the last average (its clients keep weights the server "
                          "never averaged), so noise calibrated to one clipped update does not "
                          f"bound what it releases; update noise is for {list(SUMMED_WEIGHTS)}")
    first = cfg.clients[0]
    for i, c in enumerate(cfg.clients):
        if c.pretrained_file is not None:
            raise ConfigError(f"clients.{i}.pretrained_file", f"{method!r} releases the shared "
                              "weights every round, so an organisation's own starting file would "
                              "leave it in the first release, outside the accounting; start from "
                              "random weights or pretrained: true (public weights) on every client")
        if c.pretrained != first.pretrained:
            raise ConfigError(f"clients.{i}.pretrained", f"{method!r} averages weights that must "
                              "start from the same point: set pretrained alike on every client")
    if method == "mira":
        for i, c in enumerate(cfg.clients):
            if c.adapter is None:
                raise ConfigError(f"clients.{i}.adapter", "'mira' shares LoRA adapters: give "
                                  f"every client an adapter ({c.name!r} has none)")
    for i, c in enumerate(cfg.clients[1:], 1):
        if (c.model, c.model_kwargs, c.adapter, c.image_size) != \
                (first.model, first.model_kwargs, first.adapter, first.image_size):
            def arch(k):
                return f"{k.model!r}" + (f" {k.model_kwargs}" if k.model_kwargs else "")
            raise ConfigError(f"clients.{i}.model", f"{method!r} averages the encoder across "
                              f"clients, so every client needs the same architecture: "
                              f"{c.name!r} has {arch(c)}, {first.name!r} has {arch(first)}"
                              f"{' (or different adapters or image_size)' if c.model == first.model else ''}")
    if method in _ONE_TASK:
        for i, c in enumerate(cfg.clients):
            if c.task != first.task:
                raise ConfigError(f"clients.{i}.task", f"{_ONE_TASK[method]}: every client "
                                  f"needs the same task; {c.name!r} has {c.task!r}, "
                                  f"{first.name!r} has {first.task!r}")
    if method == "fedem" and cfg.privacy.dp_sgd.enabled:
        raise ConfigError("privacy.dp_sgd.enabled", "'fedem' reads every private record outside "
                          "DP-SGD's steps: its E-step weighs each record by responsibilities "
                          "that depend on π, the mean over all records, so a record's weight in "
                          "the clipped, noised gradient depends on the other records (DP-SGD's "
                          "analysis assumes a fixed loss), and π itself shapes the released "
                          "components; K components also take K times the steps on the same "
                          "records. Set it to false (FedEM runs without DP for now)")
    if method in ("fedavg", "fedprox", "feddea") and cfg.weight_sharing.scope == "model":
        for i, c in enumerate(cfg.clients[1:], 1):
            if c.task != first.task:
                raise ConfigError("weight_sharing.scope", f"'model' averages the task head too, "
                                  f"so every client needs the same task: clients.{i} "
                                  f"({c.name!r}) has {c.task!r}, clients.0 has {first.task!r}; "
                                  "use scope 'encoder' (heads stay local) or method 'mfed'")


_ONE_TASK: dict[str, str] = {
    "mocha": "'mocha' couples one linear model per client in one space (its tasks share a "
             "label space and a model dimension)",
    "fedem": "'fedem' learns K component models of one label space, each client's data a "
             "mixture of the same underlying distributions (\"each local data distribution is "
             "a mixture of unknown underlying distributions\")",
}
"""The methods whose assumptions need one task on every client, and why (their papers)."""


def check_update_noise(cfg: ExperimentConfig) -> None:
    """Noise on weight updates (DP-FedAvg) is for the weight-sharing methods' weighted means
    only: every other method releases representations (``privacy.representation_noise``)."""
    if cfg.privacy.update_noise.enabled and cfg.muscle.method not in WEIGHT_SHARING:
        raise ConfigError("privacy.update_noise.enabled", f"{cfg.muscle.method!r} releases no "
                          "weight updates; client-level noise on what it releases is "
                          "privacy.representation_noise")
    if cfg.privacy.update_noise.enabled and cfg.protection == "ckks":
        raise ConfigError("privacy.update_noise.enabled", "noise on weight updates runs plain "
                          "or under secagg (distributed noise shares); not under ckks")
    if cfg.privacy.update_noise.enabled and cfg.privacy.representation_noise.enabled:
        raise ConfigError("privacy.update_noise.enabled", "one client-level mechanism per run: "
                          "representation_noise and update_noise are both on")


def update_parts(cfg: ExperimentConfig) -> int:
    """How many parts a weighted-mean client releases per round (each one clipped update):
    the backbone, and the task head where it is averaged."""
    return 1 + int(averages_head(cfg))


def averages_head(cfg: ExperimentConfig) -> bool:
    """Whether the method averages the task head (within each task): M-Fed and FedEM (its
    components' heads) always, FedAvg / FedProx / FedDEA with ``scope: model``."""
    return cfg.muscle.method in ("mfed", "fedem") or (cfg.muscle.method in ("fedavg", "fedprox", "feddea")
                                           and cfg.weight_sharing.scope == "model")


def task_groups(cfg: ExperimentConfig) -> dict[str, tuple[str, ...]]:
    """Each task's clients, in config order (the groups a task head is averaged over)."""
    groups: dict[str, tuple[str, ...]] = {}
    for c in cfg.clients:
        groups[c.task] = groups.get(c.task, ()) + (c.name,)
    return groups


def averaging_groups(cfg: ExperimentConfig) -> list[tuple[str, tuple[str, ...]]]:
    """Every (part, clients) a weighted-mean method averages over (DESIGN §2.7): the
    backbone over every client, then, where the head is averaged, each task's head over
    that task's clients; under secagg and ckks each is one sum, in this order."""
    groups = [("backbone", tuple(c.name for c in cfg.clients))]
    if averages_head(cfg):
        groups += [("head", members) for members in task_groups(cfg).values()]
    return groups


def _check_sum_groups(cfg: ExperimentConfig) -> None:
    """Under secagg and ckks each part is averaged through a sum over its group (every
    client, or a task's clients): with fewer than :data:`MIN_SUM_GROUP` members, a member
    learns the others' updates from the sum (one member: under secagg the server does, under
    ckks every client holds the secret key and the sum is the member's own update)."""
    what = {"secagg": "a secure sum", "ckks": "an encrypted sum (every client holds the CKKS "
            "secret key)"}[cfg.protection]
    if len(cfg.clients) < MIN_SUM_GROUP:
        raise ConfigError("clients", f"under {cfg.protection} {cfg.muscle.method!r} averages the "
                          f"backbone through {what} over every client, which needs at least "
                          f"{MIN_SUM_GROUP}; got {len(cfg.clients)} (with two, each learns the "
                          "other's update from the sum)")
    if not averages_head(cfg):
        return
    for task, names in task_groups(cfg).items():
        if len(names) < MIN_SUM_GROUP:
            raise ConfigError("clients", f"under {cfg.protection} {cfg.muscle.method!r} averages "
                              f"each task's head through {what} over that task's clients, which "
                              f"needs at least {MIN_SUM_GROUP}; task {task!r} has {list(names)} "
                              f"(with fewer, a member learns the others' heads from the sum); "
                              f"give every task {MIN_SUM_GROUP} clients, use scope 'encoder', or "
                              "protection plain")
