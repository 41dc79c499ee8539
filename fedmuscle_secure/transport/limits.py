"""What a legitimate message of one federation can hold, derived from its config (DESIGN §6).

Every protocol message's size follows from the config: N clients, M peers, B rows of width
d, nb batches per exchange (1 under ``per_batch``, ``public_size // B`` under
``per_epoch``), T contrastive epochs and, under ``ckks``, the ciphertext size of the CKKS
parameters. :func:`wire_limits` turns them into the :class:`WireLimits` both ends of the
deployment decode with. The CKKS parameters are an argument, given by the caller: turning
a config into them is the federation's work, not the transport's.

* **repeated-field caps** (:meth:`WireLimits.cap`, checked by :mod:`fedmuscle_secure.transport.scan`
  before anything is parsed): name and peer lists (participants, survivors, dropped, key
  books, share maps, a batch's peer group) hold at most N entries; per-batch lists (the peer
  groups of a reply, the encrypted matrices of a release) at most nb; an encrypted matrix at
  most ⌈B / rows per ciphertext⌉ ciphertexts (0 outside ``ckks``); a metrics map at most
  :data:`MAX_METRICS`; a tensor shape at most :data:`MAX_NDIM` dimensions. A repeated field
  without an entry in :data:`CAPS` gets the N cap.
* **the payload limit** ``max_payload_bytes``: the largest message this federation sends
  (:func:`message_bounds`: every tensor counted at 8 bytes per element, a CKKS ciphertext at
  its uncompressed size 2 · poly_modulus_degree · (primes − 1) · 8 bytes plus 4 KiB), times
  :data:`PAYLOAD_MARGIN`, plus :data:`PAYLOAD_SLACK` for names, reasons and protobuf framing.
  ``--max-payload-bytes`` overrides it (:class:`~fedmuscle_secure.transport.streams.TransportOptions`).

Example: the shipped ``configs/digits.yaml`` (N = 4, M = 2, B = 64, d = 64, per_batch) has
``PeerTerms`` as its largest message, 1 · (2·64·64 + 1·64·64) · 8 = 98 304 bytes (M rows
blocks and M(M-1)/2 pairwise B × B matrices), so the limit is 1.5 × that + 1 MiB =
1 196 032 bytes, where it was a fixed 1 GiB.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedmuscle_secure.config import ExperimentConfig
from fedmuscle_secure.crypto.ckks import CkksParameters, RowLayout
from fedmuscle_secure.transport.tensor import MAX_NDIM

__all__ = ["CAPS", "MAX_METRICS", "MAX_NDIM", "PAYLOAD_MARGIN", "PAYLOAD_SLACK", "WireLimits",
           "message_bounds", "wire_limits"]

#: A client reports about a dozen metrics per round; 64 leaves room and bounds the map.
MAX_METRICS = 64
#: Headroom over the computed largest message, and fixed slack for its text and framing.
PAYLOAD_MARGIN = 1.5
PAYLOAD_SLACK = 1 << 20
_ELEMENT = 8             # bytes per tensor element counted (float64 / int64, the widest)
_KEY_ENTRY = 1024        # one key advertisement or share-map entry, with its peer name
_CIPHERTEXT_HEADER = 4096

#: (proto message, repeated field) → the :class:`WireLimits` attribute that caps it;
#: one entry per repeated field of ``proto/fedmuscle.proto`` that is not a client list.
CAPS: dict[tuple[str, str], str] = {
    ("Tensor", "shape"): "ndim",
    ("RoundReport", "metrics"): "metrics",
    ("RoundReport", "withheld"): "metrics",
    **{(m, "peers"): "batches" for m in ("PeerTerms", "PeerSums", "EncryptedSumTerms",
                                         "EncryptedSums", "EncryptedPeers")},
    ("EncryptedRepresentations", "z"): "batches",
    ("EncryptedRepresentations", "sq_norms"): "batches",
    ("EncryptedSumTerms", "scaled_sum"): "batches",
    ("EncryptedSumTerms", "sq_norm_minus"): "batches",
    ("EncryptedSums", "peer_sum"): "batches",
    ("EncryptedSums", "peer_sq_norm_sum"): "batches",
    ("EncryptedPeers", "matrices"): "batches",
    ("EncryptedMatrix", "ciphertexts"): "ciphertexts",
    ("EncryptedRowValues", "ciphertexts"): "ciphertexts",
}


@dataclass(frozen=True)
class WireLimits:
    """Caps on what one received message may hold (module docs)."""

    clients: int             # N: every name / peer list
    batches: int             # nb per exchange: per-batch lists
    ciphertexts: int         # per EncryptedMatrix / EncryptedRowValues
    max_payload_bytes: int   # the largest reassembled Envelope
    metrics: int = MAX_METRICS
    ndim: int = MAX_NDIM

    def __post_init__(self) -> None:
        for name in ("clients", "batches", "ciphertexts", "max_payload_bytes", "metrics", "ndim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"WireLimits.{name} must be a non-negative int, got {v!r}")

    def cap(self, message: str, field: str) -> int:
        """The most entries repeated ``field`` of proto ``message`` may hold."""
        return getattr(self, CAPS.get((message, field), "clients"))


def _ckks_sizes(cfg: ExperimentConfig, params: CkksParameters | None) -> tuple[int, int]:
    """(ciphertexts per encrypted B × d matrix, upper bound on one ciphertext's bytes)."""
    if cfg.protection != "ckks":
        return 0, 0
    if params is None:
        raise ValueError("wire limits of a 'ckks' federation need its CKKS parameters")
    layout = RowLayout.for_shape(cfg.muscle.batch_size, cfg.muscle.dim, params)
    primes = len(params.coeff_mod_bit_sizes) - 1  # the special prime is not in a ciphertext
    return layout.num_ciphertexts, 2 * params.poly_modulus_degree * primes * 8 + _CIPHERTEXT_HEADER


def _batches_per_exchange(cfg: ExperimentConfig) -> int:
    if cfg.muscle.exchange == "per_batch":
        return 1
    return max(1, cfg.data.public_size // cfg.muscle.batch_size)


def message_bounds(cfg: ExperimentConfig, ckks: CkksParameters | None = None) -> dict[str, int]:
    """Upper bounds on the bytes of each kind of message ``cfg``'s federation sends;
    ``ckks``: the federation's CKKS parameters, required under ``protection: ckks``."""
    n, m, b, d = len(cfg.clients), cfg.muscle.num_selected, cfg.muscle.batch_size, cfg.muscle.dim
    nb = _batches_per_exchange(cfg)
    pairs = m * (m - 1) // 2
    per_matrix, ciphertext = _ckks_sizes(cfg, ckks)
    bounds = {
        "RoundPlan": cfg.training.cl_epochs * (cfg.data.public_size // b) * b * _ELEMENT
        + n * _KEY_ENTRY,
        "Representations": nb * b * d * _ELEMENT,
        "PeerTerms": nb * (m * b * d + pairs * b * b) * _ELEMENT,
        "PeerSums/SumTerms": nb * b * (d + 1) * _ELEMENT,
        "MaskedInput": nb * b * (d + 1) * _ELEMENT,
        "KeyBook/ShareInbox/UnmaskShares": 2 * n * _KEY_ENTRY,
        "RoundReport": MAX_METRICS * _KEY_ENTRY,
    }
    if cfg.protection == "ckks":
        bounds["EncryptedRepresentations/Sums/SumTerms"] = nb * 2 * per_matrix * ciphertext
        bounds["EncryptedPeers"] = nb * m * per_matrix * ciphertext
    return bounds


def wire_limits(cfg: ExperimentConfig, ckks: CkksParameters | None = None) -> WireLimits:
    """The :class:`WireLimits` of ``cfg``'s federation (module docs); ``ckks``: its CKKS
    parameters, required under ``protection: ckks`` (ignored otherwise)."""
    largest = max(message_bounds(cfg, ckks).values())
    return WireLimits(clients=len(cfg.clients), batches=_batches_per_exchange(cfg),
                      ciphertexts=_ckks_sizes(cfg, ckks)[0],
                      max_payload_bytes=int(PAYLOAD_MARGIN * largest) + PAYLOAD_SLACK)
