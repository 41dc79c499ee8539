"""Typed experiment configuration (DESIGN §7), loaded from YAML.

Every validation error becomes a :class:`ConfigError` naming the dotted field path
(``clients.2.model``) and what was expected, and the CLI exits with code 2 on it. This
module checks what the config alone decides; the rules that need a layer (model and task
names, temperatures, codecs, CKKS parameters) are :mod:`fedmuscle_secure.federation.checks`,
which every entry point that loads a config for use calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedmuscle_secure.config_data import DataConfig, ShapesConfig, TextConfig, check_data
from fedmuscle_secure.config_deployment import DeploymentConfig, check_deployment, default_threshold
from fedmuscle_secure.config_weights import WeightSharingConfig, check_weight_sharing
from fedmuscle_secure.config_yaml import parse_overrides, read_yaml, validate_model
from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.methods import (
    BASELINES,
    METHODS,
    MUSCLE_METHODS,
    OUTPUT_RELEASING,
    PEER_SELECTING,
    SILENT,
    SUMMED_WEIGHTS,
    WEIGHT_SHARING,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProjectionConfig(_Strict):
    """Projection head from backbone features to the shared width d."""

    kind: Literal["mlp", "linear"] = "mlp"
    hidden: int = Field(default=256, gt=0)


class BudgetConfig(_Strict):
    """Per-client (ε, δ) budgets; a client refuses any step that would exceed one (§5.3)."""

    record_epsilon: float | None = Field(default=None, gt=0)
    client_epsilon: float | None = Field(default=None, gt=0)


class AdapterConfig(_Strict):
    """LoRA adapters on a client's backbone (DESIGN §2.5): the backbone's own weights are
    frozen; the adapters (rank r, updates scaled by alpha / r, dropout on their input), the
    projection head and the task head train. ``targets``: names or name suffixes of the
    Linear / Conv2d layers to adapt (null: the architecture family's default)."""

    kind: Literal["lora"] = "lora"
    rank: int = Field(default=8, gt=0)
    alpha: float = Field(default=16.0, gt=0)
    targets: list[str] | None = Field(default=None, min_length=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)


class ClientConfig(_Strict):
    """One organization: its own timm architecture, task and training knobs."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    model: str
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    pretrained: bool = False  # timm's published weights, from the local cache only
    pretrained_file: str | None = Field(default=None, min_length=1)  # or the client's own file
    adapter: AdapterConfig | None = None  # None: the whole model trains
    image_size: int = Field(default=16, gt=0)
    task: str
    projection: ProjectionConfig = ProjectionConfig()
    lr: float | None = Field(default=None, gt=0)
    cl_lr: float | None = Field(default=None, gt=0)
    budget: BudgetConfig | None = None  # this client's own budget (default: privacy.budget)


class TrainingConfig(_Strict):
    """Algorithm 1's loop sizes and the two optimizers (task and contrastive)."""

    rounds: int = Field(default=10, gt=0)
    local_epochs: int = Field(default=5, gt=0)
    cl_epochs: int = Field(default=1, gt=0)
    local_batch_size: int = Field(default=32, gt=0)
    lr: float = Field(default=1e-3, gt=0)
    cl_lr: float = Field(default=3e-4, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    augment: bool = True
    final_local_update: bool = True
    # Adam's fused kernel (one pass over every parameter, CPU and CUDA); false: PyTorch's
    # per-tensor loop. The same algorithm; float rounding differs in the last bits.
    fused_optimizer: bool = True
    # Convolution backbones on NHWC tensors (oneDNN's fast layout on CPU), except under
    # DP-SGD; false: NCHW. The same function; float rounding differs.
    channels_last: bool = True


class MuscleConfig(_Strict):
    """Contrastive-phase settings (DESIGN §2, §2.1, §2.2)."""

    method: Literal[METHODS] = "muscle"  # the registry, fedmuscle_secure.methods
    num_selected: int = Field(default=3, gt=0, description="M, peers per client")
    batch_size: int = Field(default=64, gt=1, description="B, public rows per batch")
    dim: int = Field(default=64, gt=0, description="d, shared representation width")
    temperature: float | list[list[float]] = 0.2
    temperature_prime: float | list[list[float]] = 0.15
    exchange: Literal["per_batch", "per_epoch"] = "per_batch"
    broadcast_chunk: int | None = Field(default=None, gt=0)


class RepresentationNoiseConfig(_Strict):
    """Client-level DP on released representations (DESIGN §5.1): a noise multiplier σ,
    or a target ε over the whole run from which σ is calibrated."""

    enabled: bool = False
    noise_multiplier: float | None = Field(default=None, gt=0)
    target_epsilon: float | None = Field(default=None, gt=0)


class UpdateNoiseConfig(_Strict):
    """Client-level DP on released weight updates (DP-FedAvg, DESIGN §2.7, §5.1): each
    part's update is clipped to ``weight_sharing.update_clip`` C and Gaussian noise of std
    σ·2C is added (under secagg distributed over the members); a noise multiplier σ, or a
    target ε over the whole run from which σ is calibrated."""

    enabled: bool = False
    noise_multiplier: float | None = Field(default=None, gt=0)
    target_epsilon: float | None = Field(default=None, gt=0)


class DpSgdConfig(_Strict):
    """Record-level DP-SGD in LocalUpdate (DESIGN §5.2), with Opacus."""

    enabled: bool = False
    noise_multiplier: float | None = Field(default=None, gt=0)
    target_epsilon: float | None = Field(default=None, gt=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    expected_batch_size: int = Field(default=32, gt=0)


class PrivacyConfig(_Strict):
    delta: float = Field(default=1e-5, gt=0, lt=1)
    representation_noise: RepresentationNoiseConfig = RepresentationNoiseConfig()
    update_noise: UpdateNoiseConfig = UpdateNoiseConfig()
    dp_sgd: DpSgdConfig = DpSgdConfig()
    budget: BudgetConfig = BudgetConfig()
    report_private_metrics: bool | None = Field(
        default=None, description="send the server metrics no DP mechanism covers (validation "
        "metric, training loss, ...; DESIGN §4.4); null: off whenever any DP is on, on without "
        "DP (fedmuscle_secure.client.report_policy)")

    @property
    def client_noise(self) -> RepresentationNoiseConfig | UpdateNoiseConfig | None:
        """The client-level noise mechanism that is on (the config allows one): noise on
        released representations or, for the weight-sharing methods, on weight updates."""
        for mech in (self.representation_noise, self.update_noise):
            if mech.enabled:
                return mech
        return None


class SecAggConfig(_Strict):
    """Secure aggregation (DESIGN §4.1, §4.2, §5.1 distributed noise)."""

    threshold: int | None = Field(default=None, ge=2, description="t of the Shamir sharing; "
                                  "default a majority of the clients, floor(N/2)+1")
    t_collude: int | None = Field(default=None, ge=0, description="clients that may collude with "
                                  "the server when sizing the distributed DP noise; default t-1")
    clip: float | None = Field(default=None, gt=0, description="per-coordinate clip before the "
                               "fixed-point encoding; default 1 + 10 sd of the noise share")
    frac_bits: int | None = Field(default=None, ge=1, description="fixed-point fractional bits; "
                                  "default the largest for which the group sum cannot overflow")


class CkksConfig(_Strict):
    """CKKS homomorphic encryption with TenSEAL (DESIGN §4.3); validated before any data is
    encrypted (slots, depth, SEAL's 128-bit security bound)."""

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: list[int] = [60, 40, 60]
    global_scale_bits: int = 40
    galois_keys: bool = Field(default=True, description="the server computes Enc(log α) itself "
                              "(rotations); off: it returns Enc(U), Enc(q) and the client does")


class ServerConfig(_Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"


class CheckpointConfig(_Strict):
    """Round checkpoints kept per method by ``run``, the deployed server and client (each
    holds models and Adam states: disk grows with ``keep``). Changes no result, so a run
    may be resumed with another value (:func:`fedmuscle_secure.experiment.rundir.results_config`)."""

    keep: int = Field(default=1, ge=1, description="round checkpoints kept per method (>= 1)")


class ExperimentConfig(_Strict):
    """The whole experiment: one YAML file."""

    name: str = Field(default="digits", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    data: DataConfig = DataConfig()
    clients: list[ClientConfig] = Field(min_length=2)
    training: TrainingConfig = TrainingConfig()
    muscle: MuscleConfig = MuscleConfig()
    weight_sharing: WeightSharingConfig = WeightSharingConfig()
    protection: Literal["plain", "secagg", "ckks"] = "plain"
    secagg: SecAggConfig = SecAggConfig()
    ckks: CkksConfig = CkksConfig()
    server: ServerConfig = ServerConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    compare_local: bool = True
    deployment: DeploymentConfig = DeploymentConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()

    @model_validator(mode="after")
    def _unique_names(self) -> ExperimentConfig:
        seen: set[str] = set()
        for i, c in enumerate(self.clients):
            if c.name in seen:
                raise ValueError(f"clients.{i}.name: duplicate client name {c.name!r}")
            seen.add(c.name)
        return self

    def with_overrides(self, **changes: Any) -> ExperimentConfig:
        """A copy with dotted-path overrides (``clients.0.model``), validated like a fresh
        config; a path that leads nowhere is a :class:`ConfigError` naming it."""
        raw = self.model_dump(mode="json")
        for dotted, value in changes.items():
            node = raw
            *parents, leaf = dotted.split(".")
            try:
                for p in parents:
                    node = node[int(p)] if isinstance(node, list) else node[p]
                if isinstance(node, list):
                    node[int(leaf)] = value
                elif isinstance(node, dict):
                    node[leaf] = value  # an unknown leaf is refused by validation below
                else:
                    raise TypeError
            except (KeyError, IndexError, ValueError, TypeError):
                raise ConfigError(dotted, "no such setting in the config (a dotted path such as "
                                          "training.rounds or clients.0.model)") from None
        return parse_config(raw)


def parse_config(raw: Any, *, source: str = "<config>") -> ExperimentConfig:
    """Validate a mapping into an :class:`ExperimentConfig` and check cross-field rules."""
    cfg = validate_model(ExperimentConfig, raw, source)
    check_semantics(cfg)
    return cfg


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate a YAML config file."""
    return parse_config(read_yaml(path), source=str(path))


def check_semantics(cfg: ExperimentConfig) -> None:
    """Rules that span fields: sizes, method and protection, data paths, privacy."""
    _check_baseline(cfg)
    check_weight_sharing(cfg)
    _check_sizes(cfg)
    m = cfg.muscle
    if m.method == "muscle_sum" and (
        not isinstance(m.temperature, (int, float)) or not isinstance(m.temperature_prime, (int, float))
    ):
        raise ConfigError(
            "muscle.temperature",
            "the sum form (§2.2) needs one uniform temperature and temperature_prime (scalars)",
        )
    check_data(cfg)
    _check_pretrained(cfg)
    for key, mech in (("representation_noise", cfg.privacy.representation_noise),
                      ("update_noise", cfg.privacy.update_noise), ("dp_sgd", cfg.privacy.dp_sgd)):
        if mech.enabled and (mech.noise_multiplier is None) == (mech.target_epsilon is None):
            raise ConfigError(f"privacy.{key}",
                              "enabled: give exactly one of noise_multiplier or target_epsilon")
    _check_secagg(cfg)
    if cfg.protection == "ckks" and m.method not in MUSCLE_METHODS + SUMMED_WEIGHTS:
        raise ConfigError("muscle.method", f"unsupported under ckks: {m.method!r}")
    check_deployment(cfg)
    if cfg.data.partition == "classes" and cfg.data.classes_per_client is None:
        raise ConfigError("data.classes_per_client", "required when data.partition is 'classes'")


def _check_sizes(cfg: ExperimentConfig) -> None:
    """M ≤ N − 1 where peers are selected (under secagg the group is every surviving
    member: num_selected is not used) and B no larger than the public set."""
    m, n = cfg.muscle, len(cfg.clients)
    if m.method in PEER_SELECTING and cfg.protection != "secagg" and m.num_selected >= n:
        raise ConfigError(
            "muscle.num_selected",
            f"M={m.num_selected} must be smaller than the number of clients N={n} (M <= N-1)",
        )
    if m.batch_size > cfg.data.public_size:
        raise ConfigError(
            "muscle.batch_size",
            f"B={m.batch_size} is larger than the public set (data.public_size="
            f"{cfg.data.public_size})",
        )


def _check_pretrained(cfg: ExperimentConfig) -> None:
    """One source of starting weights per client. The file itself is checked where the model
    is built (:func:`fedmuscle_secure.models.build_client_model`): in a deployment each
    organisation holds only its own file, so another's path means nothing here."""
    for i, c in enumerate(cfg.clients):
        if c.pretrained and c.pretrained_file is not None:
            raise ConfigError(f"clients.{i}.pretrained_file", "give either pretrained: true "
                              "(timm's weights from the local cache) or pretrained_file (your "
                              "own file), not both")
        if c.adapter is not None and c.adapter.dropout > 0 and cfg.privacy.dp_sgd.enabled:
            raise ConfigError(f"clients.{i}.adapter.dropout", "must be 0 under DP-SGD: the "
                              "check that per-sample gradients are exact compares passes that "
                              "would draw different dropout masks")


def _check_baseline(cfg: ExperimentConfig) -> None:
    """Baselines (§2.3) run unprotected; representation noise (§5.1) is calibrated for
    unit-norm representation rows, so it is refused where the release is anything else."""
    method = cfg.muscle.method
    if method not in BASELINES:
        return
    if cfg.protection != "plain":
        raise ConfigError("muscle.method", f"baseline {method!r} runs with protection 'plain' only "
                          f"(got protection {cfg.protection!r}); set protection: plain or use "
                          "muscle / muscle_sum / pairwise")
    if cfg.privacy.representation_noise.enabled and method in SILENT:
        raise ConfigError("privacy.representation_noise.enabled", f"method {method!r} releases "
                          "nothing, so there is nothing to add representation noise to; set it "
                          "to false (DP-SGD, privacy.dp_sgd, works with every method)")
    if cfg.privacy.representation_noise.enabled and method in OUTPUT_RELEASING:
        raise ConfigError("privacy.representation_noise.enabled", f"method {method!r} releases task "
                          "outputs (predictions/logits), not unit-norm representations, and the "
                          "noise of §5.1 is calibrated for unit-norm rows; set it to false")


def validate_deployable(cfg: ExperimentConfig) -> None:
    """Refuse what the gRPC deployment (DESIGN §6) does not carry: the baselines (their
    messages have no wire format). Raises :class:`ConfigError` naming ``muscle.method``."""
    if cfg.muscle.method in BASELINES + WEIGHT_SHARING:
        raise ConfigError("muscle.method", f"method {cfg.muscle.method!r} runs in the simulator "
                          "only (fedmuscle-secure run / compare); the deployment carries "
                          "muscle, muscle_sum, pairwise and local")


def _check_secagg(cfg: ExperimentConfig) -> None:
    if cfg.protection != "secagg":
        return
    n = len(cfg.clients)
    if cfg.muscle.method not in ("muscle_sum", "local") + SUMMED_WEIGHTS:
        raise ConfigError("muscle.method", f"protection 'secagg' reveals only sums, so it trains "
                          f"the sum form, or averages weights ({', '.join(SUMMED_WEIGHTS)}): set "
                          f"muscle.method to 'muscle_sum' or one of those (got {cfg.muscle.method!r})")
    if n < 3:
        raise ConfigError("clients", f"protection 'secagg' needs at least 3 clients (with 2, each "
                          f"would learn the other's release from the sum); got {n}")
    s = cfg.secagg
    t = s.threshold if s.threshold is not None else default_threshold(n)
    if t > n:
        raise ConfigError("secagg.threshold", f"t={t} exceeds the number of clients N={n}")
    if s.t_collude is not None and s.t_collude >= t:
        raise ConfigError("secagg.t_collude", f"must be smaller than the threshold t={t} "
                          f"(got {s.t_collude}); t or more colluders can unmask anyway")
    if 2 * t <= n:
        raise ConfigError("secagg.threshold", f"t={t} must be more than half of the N={n} clients "
                          f"(at least {n // 2 + 1}): with 2t <= N an active server can show two "
                          "disjoint groups of t clients different survivor sets, collect one "
                          "client's self-mask-seed shares from one group and its mask-key shares "
                          "from the other, and unmask that client's input")


def dump_config(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML (every default spelled out), for the run directory.

    ``deployment`` is left out while it holds only defaults: it changes nothing a run
    computes, and so runs made before it existed still match their configs (``--resume``,
    ``compare --import``); ``data.shapes`` and ``data.text`` likewise while they are null, and
    ``weight_sharing`` while it holds only defaults. A client's
    starting-weight and adapter keys are left out while unset, for the same reason: a run
    that starts from scratch reads as it always did."""
    raw = cfg.model_dump(mode="json")
    if cfg.deployment == DeploymentConfig():
        raw.pop("deployment")
    if cfg.data.shapes is None:
        raw["data"].pop("shapes")
    if cfg.data.text is None:
        raw["data"].pop("text")
    if cfg.weight_sharing == WeightSharingConfig():
        raw.pop("weight_sharing")
    for client in raw["clients"]:
        for key, unset in _CLIENT_OPTIONAL.items():
            if client.get(key) == unset:
                client.pop(key)
    return yaml.safe_dump(raw, sort_keys=False)


#: Client keys :func:`dump_config` leaves out at these values (the defaults).
_CLIENT_OPTIONAL: dict[str, Any] = {"pretrained": False, "pretrained_file": None, "adapter": None}


__all__ = [
    "BASELINES",
    "AdapterConfig",
    "DataConfig",
    "METHODS",
    "OUTPUT_RELEASING",
    "PEER_SELECTING",
    "SILENT",
    "ShapesConfig",
    "TextConfig",
    "WeightSharingConfig",
    "ExperimentConfig",
    "default_threshold",
    "dump_config",
    "load_config",
    "parse_config",
    "parse_overrides",
    "read_yaml",
    "validate_model",
]
