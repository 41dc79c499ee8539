"""Typed protocol messages between client and server state machines (DESIGN §2, §3).

Frozen dataclasses, one per kind; tensors are plain CPU tensors so any transport (the
in-process simulator, later gRPC) can serialize them as dtype/shape/bytes. Every message
names its client (the sender for client→server, the recipient for server→client) and the
exchange it belongs to: (round, epoch, batch), with ``batch = None`` for a whole-epoch
exchange (``per_epoch``). Representation-carrying tensors have a leading batch axis of
length ``nb`` (1 in ``per_batch`` mode).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields

import torch


@dataclass(frozen=True)
class RoundPlan:
    """Server → client: start round r; the public batches of every CL epoch.

    ``batches``: (T, nb, B) int64 public indices, drawn from the server's round seed so
    every client encodes the same rows in the same order. ``members``: the clients the
    round starts with (the active ones, this one included); a ``cofed``/``feddf`` client
    releases only while a member shares its output space (DESIGN §2.3). Empty: not stated,
    and such a client counts no partner.
    """

    client: str
    round: int
    exchange: str
    batches: torch.Tensor
    members: tuple[str, ...] = ()


@dataclass(frozen=True)
class Representations:
    """Client → server: Z^n for one exchange, (nb, B, d) float32 unit-norm rows."""

    client: str
    round: int
    epoch: int
    batch: int | None
    z: torch.Tensor


@dataclass(frozen=True)
class PeerTerms:
    """Server → client: S^n (nb, M, B, d) and log α^n as pairwise matrices (nb, P, B, B).

    ``peers`` names Q_n for each of the nb batches. For the pairwise-InfoNCE baseline
    ``log_alpha_pairs`` has P = 0.
    """

    client: str
    round: int
    epoch: int
    batch: int | None
    peers: tuple[tuple[str, ...], ...]
    scaled_peers: torch.Tensor
    log_alpha_pairs: torch.Tensor


@dataclass(frozen=True)
class PeerSums:
    """Server → client: U (nb, B, d) and q (nb, B) over the aggregation group (§2.2).

    ``includes_self`` is true when the group contains the recipient (secure aggregation
    sums over all survivors), so the client subtracts its own contribution.
    """

    client: str
    round: int
    epoch: int
    batch: int | None
    peers: tuple[tuple[str, ...], ...]
    peer_sum: torch.Tensor
    peer_sq_norm_sum: torch.Tensor
    includes_self: bool


@dataclass(frozen=True)
class TaskOutputs:
    """Client → server (baselines ``cofed``/``feddf``, DESIGN §2.3): the client's task-head
    outputs on the exchange's public rows, (nb, B, C) float32 in its own output space —
    hard predictions (one-hot / 0-1) for ``cofed``, logits for ``feddf``."""

    client: str
    round: int
    epoch: int
    batch: int | None
    outputs: torch.Tensor


@dataclass(frozen=True)
class GroupOutputs:
    """Server → client (``cofed``/``feddf``): the mean over ``peers`` (the recipient's Q_n:
    the clients of its output space; ``cofed`` includes the recipient, ``feddf`` does not)
    of their :class:`TaskOutputs`, (nb, B, C). Empty ``peers``: nobody to learn from."""

    client: str
    round: int
    epoch: int
    batch: int | None
    peers: tuple[str, ...]
    mean: torch.Tensor


@dataclass(frozen=True)
class WeightRelease:
    """Client → server (weight-sharing methods, DESIGN §2.7): the client's shared parameters
    after its LocalUpdate, one flat float32 vector ``w``; ``parts`` names its consecutive
    pieces and their lengths (``("backbone", P_b), ("head", P_h)``), each averaged over its
    own group; ``samples``: the client's training-set size, FedAvg's weight."""

    client: str
    round: int
    epoch: int
    batch: int | None
    parts: tuple[tuple[str, int], ...]
    w: torch.Tensor
    samples: int


@dataclass(frozen=True)
class WeightAverage:
    """Server → client: the sample-weighted mean of the parts the client shares, in the
    layout of its :class:`WeightRelease`; ``peers[i]`` names the clients part i was averaged
    over (the recipient included)."""

    client: str
    round: int
    epoch: int
    batch: int | None
    peers: tuple[tuple[str, ...], ...]
    w: torch.Tensor


@dataclass(frozen=True)
class PeerKernel:
    """Server → client (baseline ``fedhenn``): the global representation kernel of each of
    the nb batches, mean over Q_n of Z^m Z^mᵀ, (nb, B, B)."""

    client: str
    round: int
    epoch: int
    batch: int | None
    peers: tuple[tuple[str, ...], ...]
    kernel: torch.Tensor


@dataclass(frozen=True)
class RoundReport:
    """Client → server: the round is done on this client, with the metrics its report
    policy lets leave (:mod:`fedmuscle_secure.client.report_policy`, :data:`METRIC_SOURCES`); ``withheld`` names
    those it computed and kept (names only: which metrics exist follows from the config)."""

    client: str
    round: int
    metrics: dict[str, float]
    withheld: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        both = sorted(set(self.withheld) & set(self.metrics))
        if both or len(set(self.withheld)) != len(self.withheld):
            raise ValueError(f"withheld names must be unique and not among the metrics sent; "
                             f"got withheld {list(self.withheld)} with metrics {sorted(self.metrics)}")


# -- what a round report may name (DESIGN §4.4) ------------------------------------------
# Shared by both sides: a client's report policy decides from a metric's source whether it
# may leave; the server records those withheld as NOT_REPORTED (as_received).

#: What the server's rows hold for a metric the client computed but did not send.
NOT_REPORTED = "not reported"


class MetricSource(enum.Enum):
    """What a metric is computed from (module docs)."""

    ACCOUNTING = "config and protocol"
    MODEL_ON_PUBLIC = "the model on public data"
    PRIVATE_RECORDS = "private records"


METRIC_SOURCES: dict[str, MetricSource] = {
    "eps_record": MetricSource.ACCOUNTING,
    "eps_client": MetricSource.ACCOUNTING,
    "releases": MetricSource.ACCOUNTING,
    "secagg_aborted": MetricSource.ACCOUNTING,
    "left_round": MetricSource.ACCOUNTING,
    "test_metric": MetricSource.MODEL_ON_PUBLIC,
    "cl_loss": MetricSource.MODEL_ON_PUBLIC,
    "cl_steps": MetricSource.MODEL_ON_PUBLIC,
    "clipped_values": MetricSource.MODEL_ON_PUBLIC,
    "val_metric": MetricSource.PRIVATE_RECORDS,
    "task_loss": MetricSource.PRIVATE_RECORDS,
}


def source_of(name: str) -> MetricSource:
    """The class of metric ``name``; unknown names are private records (fail closed)."""
    return METRIC_SOURCES.get(name, MetricSource.PRIVATE_RECORDS)


def as_received(report: RoundReport) -> dict[str, float | str]:
    """A report's metrics as the server records them: the withheld ones as
    :data:`NOT_REPORTED` (not zero, not absent: the reader sees they exist and stayed home)."""
    return {**report.metrics, **{name: NOT_REPORTED for name in report.withheld}}


@dataclass(frozen=True)
class Leave:
    """Client → server: the client leaves the federation for good (e.g. its privacy budget
    would be exceeded by its next release, DESIGN §5.3); the others continue without it."""

    client: str
    round: int
    reason: str


@dataclass(frozen=True)
class Finish:
    """Server → client after the last round (DESIGN §6): run the closing LocalUpdate and
    evaluation (:meth:`FedMuscleClient.finish`) and answer with a :class:`RoundReport` of
    ``round`` (R + 1, the "final" row). The simulator calls ``finish`` directly instead."""

    client: str
    round: int


@dataclass(frozen=True)
class SecAggEnvelope:
    """One secure-aggregation stage message (DESIGN §4.2) of exchange (round, epoch, batch),
    either direction; ``client`` is the client end. The setup also carries the public
    :class:`~fedmuscle_secure.crypto.secagg.sum_encoding.SumEncoding` of the exchange."""

    client: str
    round: int
    epoch: int
    batch: int | None
    body: object
    encoding: object | None = None


@dataclass(frozen=True)
class SumTerms:
    """Server → client under ``secagg``: the §2.2 terms from the unmasked sums over
    ``peers``, S = U/τ (nb, B, d) and log α = −(γ/2)(||U||² − q) (nb, B). Under secagg Q_n
    is every survivor, the recipient included (one tuple for every batch of the exchange),
    so the client applies the leave-one-out correction."""

    client: str
    round: int
    epoch: int
    batch: int | None
    peers: tuple[str, ...]
    scaled_sum: torch.Tensor
    log_alpha: torch.Tensor
    includes_self: bool = True


@dataclass(frozen=True)
class SitOut:
    """Client → server: the client does not release for exchange (round, epoch, batch)
    because its ledger shows it already did (a client releases at most once per exchange,
    DESIGN §4.4: two sums over groups that differ by one member reveal that member). It
    counts as a drop for this exchange only; the server answers with
    :class:`ExchangeAborted` once the exchange is over, and the client goes on."""

    client: str
    round: int
    epoch: int
    batch: int | None
    reason: str


@dataclass(frozen=True)
class ExchangeAborted:
    """Server → client: the secure exchange (round, epoch, batch) ended without a sum
    (fewer than t clients reached a stage); the client skips its step and goes on."""

    client: str
    round: int
    epoch: int
    batch: int | None
    reason: str


@dataclass(frozen=True)
class EncryptedRepresentations:
    """Client → server under ``ckks`` (DESIGN §4.3): Enc(Z^n) for each of the exchange's nb
    batches (:class:`~fedmuscle_secure.crypto.ckks.EncryptedMatrix`, rows packed many per
    ciphertext) and Enc(q^n), the per-row squared norms (sum form only, else empty)."""

    client: str
    round: int
    epoch: int
    batch: int | None
    z: tuple
    sq_norms: tuple

    def payload_parts(self) -> list[bytes]:
        """The ciphertext bytes in a fixed order: what the egress and receipt digests cover."""
        return [c for enc in (*self.z, *self.sq_norms) for c in enc.ciphertexts]


@dataclass(frozen=True)
class EncryptedSumTerms:
    """Server → client under ``ckks``, sum form with Galois keys: per batch Enc(S^n) = Enc(U/τ)
    over the selected peers Q_n and Enc(||U_k||² − q_k) at each row's first slot."""

    client: str
    round: int
    epoch: int
    batch: int | None
    peers: tuple[tuple[str, ...], ...]
    scaled_sum: tuple
    sq_norm_minus: tuple


@dataclass(frozen=True)
class EncryptedSums:
    """Server → client under ``ckks``, sum form without Galois keys: per batch Enc(U), Enc(q)."""

    client: str
    round: int
    epoch: int
    batch: int | None
    peers: tuple[tuple[str, ...], ...]
    peer_sum: tuple
    peer_sq_norm_sum: tuple


@dataclass(frozen=True)
class EncryptedPeers:
    """Server → client under ``ckks``, exact Muscle / pairwise: per batch, the selected peers'
    Enc(Z^m), m ∈ Q_n, routed unchanged (the server cannot read them; client n can)."""

    client: str
    round: int
    epoch: int
    batch: int | None
    peers: tuple[tuple[str, ...], ...]
    matrices: tuple


@dataclass(frozen=True)
class EncryptedWeightUpdate:
    """Client → server under ``ckks``, weight sharing (DESIGN §2.7): for exchange (0, k),
    shared part ``part`` of ``length`` weights, Enc([clip(Δ), 1]): the client's update of the
    part since its LocalUpdate started, L2-clipped, and a count of 1, ``length`` + 1 values
    packed N/2 per ciphertext (:func:`~fedmuscle_secure.crypto.ckks.encrypt_vector`)."""

    client: str
    round: int
    epoch: int
    batch: int | None
    part: str
    length: int
    update: object

    def payload_parts(self) -> list[bytes]:
        """The ciphertext bytes in order: what the egress and receipt digests cover."""
        return list(self.update.ciphertexts)


@dataclass(frozen=True)
class EncryptedWeightSum:
    """Server → client under ``ckks``, weight sharing: Enc([Σ Δ_m, Σ 1]) over the members
    ``peers[0]`` of the recipient's group for part ``part`` (the recipient included), in the
    layout of its :class:`EncryptedWeightUpdate`; the client divides by the count."""

    client: str
    round: int
    epoch: int
    batch: int | None
    peers: tuple[tuple[str, ...], ...]
    part: str
    length: int
    total: object


ENCRYPTED = (EncryptedRepresentations, EncryptedSumTerms, EncryptedSums, EncryptedPeers,
             EncryptedWeightUpdate, EncryptedWeightSum)

Message = (RoundPlan | Representations | PeerTerms | PeerSums | RoundReport | Leave | Finish
           | SitOut | TaskOutputs | GroupOutputs | PeerKernel | WeightRelease | WeightAverage
           | SecAggEnvelope
           | SumTerms | ExchangeAborted | EncryptedRepresentations | EncryptedSumTerms | EncryptedSums
           | EncryptedPeers | EncryptedWeightUpdate | EncryptedWeightSum)


def _encrypted_bytes(value: object) -> int:
    if isinstance(value, tuple):
        return sum(_encrypted_bytes(v) for v in value)
    return int(getattr(value, "nbytes", 0))


def payload_bytes(msg: Message) -> int:
    """Bytes of tensor payload a message carries (what a wire format must move)."""
    if isinstance(msg, SecAggEnvelope):
        from fedmuscle_secure.crypto.secagg.messages import secagg_payload_bytes

        return secagg_payload_bytes(msg.body)
    if isinstance(msg, ENCRYPTED):
        return sum(_encrypted_bytes(getattr(msg, f.name)) for f in fields(msg))
    total = 0
    for f in fields(msg):
        value = getattr(msg, f.name)
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
    return total
