from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Names(_message.Message):
    __slots__ = ("names",)
    NAMES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, names: _Optional[_Iterable[str]] = ...) -> None: ...

class Metric(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

class RoundPlan(_message.Message):
    __slots__ = ("client", "round", "exchange", "batches", "members")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    client: str
    round: int
    exchange: str
    batches: Tensor
    members: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, client: _Optional[str] = ..., round: _Optional[int] = ..., exchange: _Optional[str] = ..., batches: _Optional[_Union[Tensor, _Mapping]] = ..., members: _Optional[_Iterable[str]] = ...) -> None: ...

class Representations(_message.Message):
    __slots__ = ("client", "round", "epoch", "batch", "z")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    client: str
    round: int
    epoch: int
    batch: int
    z: Tensor
    def __init__(self, client: _Optional[str] = ..., round: _Optional[int] = ..., epoch: _Optional[int] = ..., batch: _Optional[int] = ..., z: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class PeerTerms(_message.Message):
    __slots__ = ("client", "round", "epoch", "batch", "peers", "scaled_peers", "log_alpha_pairs")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    SCALED_PEERS_FIELD_NUMBER: _ClassVar[int]
    LOG_ALPHA_PAIRS_FIELD_NUMBER: _ClassVar[int]
    client: str
    round: int
    epoch: int
    batch: int
    peers: _containers.RepeatedCompositeFieldContainer[Names]
    scaled_peers: Tensor
    log_alpha_pairs: Tensor
    def __init__(self, client: _Optional[str] = ..., round: _Optional[int] = ..., epoch: _Optional[int] = ..., batch: _Optional[int] = ..., peers: _Optional[_Iterable[_Union[Names, _Mapping]]] = ..., scaled_peers: _Optional[_Union[Tensor, _Mapping]] = ..., log_alpha_pairs: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class PeerSums(_message.Message):
    __slots__ = ("client", "round", "epoch", "batch", "peers", "peer_sum", "peer_sq_norm_sum", "includes_self")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    PEER_SUM_FIELD_NUMBER: _ClassVar[int]
    PEER_SQ_NORM_SUM_FIELD_NUMBER: _ClassVar[int]
    INCLUDES_SELF_FIELD_NUMBER: _ClassVar[int]
    client: str
    round: int
    epoch: int
    batch: int
    peers: _containers.RepeatedCompositeFieldContainer[Names]
    peer_sum: Tensor
    peer_sq_norm_sum: Tensor
    includes_self: bool
    def __init__(self, client: _Optional[str] = ..., round: _Optional[int] = ..., epoch: _Optional[int] = ..., batch: _Optional[int] = ..., peers: _Optional[_Iterable[_Union[Names, _Mapping]]] = ..., peer_sum: _Optional[_Union[Tensor, _Mapping]] = ..., peer_sq_norm_sum: _Optional[_Union[Tensor, _Mapping]] = ..., includes_self: _Optional[bool] = ...) -> None: ...

class SumTerms(_message.Message):
    __slots__ = ("client", "round", "epoch", "batch", "peers", "scaled_sum", "log_alpha", "includes_self")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    SCALED_SUM_FIELD_NUMBER: _ClassVar[int]
    LOG_ALPHA_FIELD_NUMBER: _ClassVar[int]
    INCLUDES_SELF_FIELD_NUMBER: _ClassVar[int]
    client: str
    round: int
    epoch: int
    batch: int
    peers: _containers.RepeatedScalarFieldContainer[str]
    scaled_sum: Tensor
    log_alpha: Tensor
    includes_self: bool
    def __init__(self, client: _Optional[str] = ..., round: _Optional[int] = ..., epoch: _Optional[int] = ..., batch: _Optional[int] = ..., peers: _Optional[_Iterable[str]] = ..., scaled_sum: _Optional[_Union[Tensor, _Mapping]] = ..., log_alpha: _Optional[_Union[Tensor, _Mapping]] = ..., includes_self: _Optional[bool] = ...) -> None: ...

class RoundReport(_message.Message):
    __slots__ = ("client", "round", "metrics", "withheld")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    WITHHELD_FIELD_NUMBER: _ClassVar[int]
    client: str
    round: int
    metrics: _containers.RepeatedCompositeFieldContainer[Metric]
    withheld: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, client: _Optional[str] = ..., round: _Optional[int] = ..., metrics: _Optional[_Iterable[_Union[Metric, _Mapping]]] = ..., withheld: _Optional[_Iterable[str]] = ...) -> None: ...

class Leave(_message.Message):
    __slots__ = ("client", "round", "reason")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    client: str
    round: int
    reason: str
    def __init__(self, client: _Optional[str] = ..., round: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class SitOut(_message.Message):
    __slots__ = ("client", "round", "epoch", "batch", "reason")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    client: str
    round: int
    epoch: int
    batch: int
    reason: str
    def __init__(self, client: _Optional[str] = ..., round: _Optional[int] = ..., epoch: _Optional[int] = ..., batch: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class ExchangeAborted(_message.Message):
    __slots__ = ("client", "round", "epoch", "batch", "reason")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    client: str
    round: int
    epoch: int
    batch: int
    reason: str
    def __init__(self, client: _Optional[str] = ..., round: _Optional[int] = ..., epoch: _Optional[int] = ..., batch: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class SecAggSetup(_message.Message):
    __slots__ = ("recipient", "instance_id", "participants", "threshold", "vector_length")
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    VECTOR_LENGTH_FIELD_NUMBER: _ClassVar[int]
    recipient: str
    instance_id: bytes
    participants: _containers.RepeatedScalarFieldContainer[str]
    threshold: int
    vector_length: int
    def __init__(self, recipient: _Optional[str] = ..., instance_id: _Optional[bytes] = ..., participants: _Optional[_Iterable[str]] = ..., threshold: _Optional[int] = ..., vector_length: _Optional[int] = ...) -> None: ...

class AdvertiseKeys(_message.Message):
    __slots__ = ("sender", "instance_id", "cipher_public", "mask_public", "signature")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    CIPHER_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    MASK_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    sender: str
    instance_id: bytes
    cipher_public: bytes
    mask_public: bytes
    signature: bytes
    def __init__(self, sender: _Optional[str] = ..., instance_id: _Optional[bytes] = ..., cipher_public: _Optional[bytes] = ..., mask_public: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class KeyBook(_message.Message):
    __slots__ = ("recipient", "instance_id", "adverts")
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    ADVERTS_FIELD_NUMBER: _ClassVar[int]
    recipient: str
    instance_id: bytes
    adverts: _containers.RepeatedCompositeFieldContainer[AdvertiseKeys]
    def __init__(self, recipient: _Optional[str] = ..., instance_id: _Optional[bytes] = ..., adverts: _Optional[_Iterable[_Union[AdvertiseKeys, _Mapping]]] = ...) -> None: ...

class PeerCiphertext(_message.Message):
    __slots__ = ("peer", "ciphertext")
    PEER_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    peer: str
    ciphertext: bytes
    def __init__(self, peer: _Optional[str] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class ShareInbox(_message.Message):
    __slots__ = ("recipient", "instance_id", "ciphertexts")
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    recipient: str
    instance_id: bytes
    ciphertexts: _containers.RepeatedCompositeFieldContainer[PeerCiphertext]
    def __init__(self, recipient: _Optional[str] = ..., instance_id: _Optional[bytes] = ..., ciphertexts: _Optional[_Iterable[_Union[PeerCiphertext, _Mapping]]] = ...) -> None: ...

class ConsistencyCheck(_message.Message):
    __slots__ = ("recipient", "instance_id", "survivors", "dropped")
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    recipient: str
    instance_id: bytes
    survivors: _containers.RepeatedScalarFieldContainer[str]
    dropped: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, recipient: _Optional[str] = ..., instance_id: _Optional[bytes] = ..., survivors: _Optional[_Iterable[str]] = ..., dropped: _Optional[_Iterable[str]] = ...) -> None: ...

class PeerSignature(_message.Message):
    __slots__ = ("peer", "signature")
    PEER_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    peer: str
    signature: bytes
    def __init__(self, peer: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class UnmaskRequest(_message.Message):
    __slots__ = ("recipient", "instance_id", "survivors", "dropped", "signatures")
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    recipient: str
    instance_id: bytes
    survivors: _containers.RepeatedScalarFieldContainer[str]
    dropped: _containers.RepeatedScalarFieldContainer[str]
    signatures: _containers.RepeatedCompositeFieldContainer[PeerSignature]
    def __init__(self, recipient: _Optional[str] = ..., instance_id: _Optional[bytes] = ..., survivors: _Optional[_Iterable[str]] = ..., dropped: _Optional[_Iterable[str]] = ..., signatures: _Optional[_Iterable[_Union[PeerSignature, _Mapping]]] = ...) -> None: ...

class EncryptedShares(_message.Message):
    __slots__ = ("sender", "instance_id", "ciphertexts")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    sender: str
    instance_id: bytes
    ciphertexts: _containers.RepeatedCompositeFieldContainer[PeerCiphertext]
    def __init__(self, sender: _Optional[str] = ..., instance_id: _Optional[bytes] = ..., ciphertexts: _Optional[_Iterable[_Union[PeerCiphertext, _Mapping]]] = ...) -> None: ...

class MaskedInput(_message.Message):
    __slots__ = ("sender", "instance_id", "masked")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    MASKED_FIELD_NUMBER: _ClassVar[int]
    sender: str
    instance_id: bytes
    masked: Tensor
    def __init__(self, sender: _Optional[str] = ..., instance_id: _Optional[bytes] = ..., masked: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ConsistencySignature(_message.Message):
    __slots__ = ("sender", "instance_id", "signature")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    sender: str
    instance_id: bytes
    signature: bytes
    def __init__(self, sender: _Optional[str] = ..., instance_id: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class PeerShare(_message.Message):
    __slots__ = ("peer", "share")
    PEER_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    peer: str
    share: bytes
    def __init__(self, peer: _Optional[str] = ..., share: _Optional[bytes] = ...) -> None: ...

class UnmaskShares(_message.Message):
    __slots__ = ("sender", "instance_id", "seed_shares", "key_shares")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    SEED_SHARES_FIELD_NUMBER: _ClassVar[int]
    KEY_SHARES_FIELD_NUMBER: _ClassVar[int]
    sender: str
    instance_id: bytes
    seed_shares: _containers.RepeatedCompositeFieldContainer[PeerShare]
    key_shares: _containers.RepeatedCompositeFieldContainer[PeerShare]
    def __init__(self, sender: _Optional[str] = ..., instance_id: _Optional[bytes] = ..., seed_shares: _Optional[_Iterable[_Union[PeerShare, _Mapping]]] = ..., key_shares: _Optional[_Iterable[_Union[PeerShare, _Mapping]]] = ...) -> None: ...

class SumEncoding(_message.Message):
    __slots__ = ("batches", "rows", "dim", "group_size", "value_clip", "sq_norm_clip", "frac_bits")
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    VALUE_CLIP_FIELD_NUMBER: _ClassVar[int]
    SQ_NORM_CLIP_FIELD_NUMBER: _ClassVar[int]
    FRAC_BITS_FIELD_NUMBER: _ClassVar[int]
    batches: int
    rows: int
    dim: int
    group_size: int
    value_clip: float
    sq_norm_clip: float
    frac_bits: int
    def __init__(self, batches: _Optional[int] = ..., rows: _Optional[int] = ..., dim: _Optional[int] = ..., group_size: _Optional[int] = ..., value_clip: _Optional[float] = ..., sq_norm_clip: _Optional[float] = ..., frac_bits: _Optional[int] = ...) -> None: ...

class SecAggEnvelope(_message.Message):
    __slots__ = ("client", "round", "epoch", "batch", "setup", "key_book", "share_inbox", "unmask_request", "advertise_keys", "encrypted_shares", "masked_input", "unmask_shares", "consistency_check", "consistency_signature", "encoding")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    SETUP_FIELD_NUMBER: _ClassVar[int]
    KEY_BOOK_FIELD_NUMBER: _ClassVar[int]
    SHARE_INBOX_FIELD_NUMBER: _ClassVar[int]
    UNMASK_REQUEST_FIELD_NUMBER: _ClassVar[int]
    ADVERTISE_KEYS_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTED_SHARES_FIELD_NUMBER: _ClassVar[int]
    MASKED_INPUT_FIELD_NUMBER: _ClassVar[int]
    UNMASK_SHARES_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_CHECK_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    client: str
    round: int
    epoch: int
    batch: int
    setup: SecAggSetup
    key_book: KeyBook
    share_inbox: ShareInbox
    unmask_request: UnmaskRequest
    advertise_keys: AdvertiseKeys
    encrypted_shares: EncryptedShares
    masked_input: MaskedInput
    unmask_shares: UnmaskShares
    consistency_check: ConsistencyCheck
    consistency_signature: ConsistencySignature
    encoding: SumEncoding
    def __init__(self, client: _Optional[str] = ..., round: _Optional[int] = ..., epoch: _Optional[int] = ..., batch: _Optional[int] = ..., setup: _Optional[_Union[SecAggSetup, _Mapping]] = ..., key_book: _Optional[_Union[KeyBook, _Mapping]] = ..., share_inbox: _Optional[_Union[ShareInbox, _Mapping]] = ..., unmask_request: _Optional[_Union[UnmaskRequest, _Mapping]] = ..., advertise_keys: _Optional[_Union[AdvertiseKeys, _Mapping]] = ..., encrypted_shares: _Optional[_Union[EncryptedShares, _Mapping]] = ..., masked_input: _Optional[_Union[MaskedInput, _Mapping]] = ..., unmask_shares: _Optional[_Union[UnmaskShares, _Mapping]] = ..., consistency_check: _Optional[_Union[ConsistencyCheck, _Mapping]] = ..., consistency_signature: _Optional[_Union[ConsistencySignature, _Mapping]] = ..., encoding: _Optional[_Union[SumEncoding, _Mapping]] = ...) -> None: ...

class RowLayout(_message.Message):
    __slots__ = ("rows", "cols", "row_stride", "rows_per_ciphertext")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    ROW_STRIDE_FIELD_NUMBER: _ClassVar[int]
    ROWS_PER_CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    rows: int
    cols: int
    row_stride: int
    rows_per_ciphertext: int
    def __init__(self, rows: _Optional[int] = ..., cols: _Optional[int] = ..., row_stride: _Optional[int] = ..., rows_per_ciphertext: _Optional[int] = ...) -> None: ...

class EncryptedMatrix(_message.Message):
    __slots__ = ("layout", "ciphertexts")
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    layout: RowLayout
    ciphertexts: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, layout: _Optional[_Union[RowLayout, _Mapping]] = ..., ciphertexts: _Optional[_Iterable[bytes]] = ...) -> None: ...

class EncryptedRowValues(_message.Message):
    __slots__ = ("layout", "ciphertexts")
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    layout: RowLayout
    ciphertexts: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, layout: _Optional[_Union[RowLayout, _Mapping]] = ..., ciphertexts: _Optional[_Iterable[bytes]] = ...) -> None: ...

class EncryptedMatrices(_message.Message):
    __slots__ = ("matrices",)
    MATRICES_FIELD_NUMBER: _ClassVar[int]
    matrices: _containers.RepeatedCompositeFieldContainer[EncryptedMatrix]
    def __init__(self, matrices: _Optional[_Iterable[_Union[EncryptedMatrix, _Mapping]]] = ...) -> None: ...

class EncryptedRepresentations(_message.Message):
    __slots__ = ("client", "round", "epoch", "batch", "z", "sq_norms")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    SQ_NORMS_FIELD_NUMBER: _ClassVar[int]
    client: str
    round: int
    epoch: int
    batch: int
    z: _containers.RepeatedCompositeFieldContainer[EncryptedMatrix]
    sq_norms: _containers.RepeatedCompositeFieldContainer[EncryptedRowValues]
    def __init__(self, client: _Optional[str] = ..., round: _Optional[int] = ..., epoch: _Optional[int] = ..., batch: _Optional[int] = ..., z: _Optional[_Iterable[_Union[EncryptedMatrix, _Mapping]]] = ..., sq_norms: _Optional[_Iterable[_Union[EncryptedRowValues, _Mapping]]] = ...) -> None: ...

class EncryptedSumTerms(_message.Message):
    __slots__ = ("client", "round", "epoch", "batch", "peers", "scaled_sum", "sq_norm_minus")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    SCALED_SUM_FIELD_NUMBER: _ClassVar[int]
    SQ_NORM_MINUS_FIELD_NUMBER: _ClassVar[int]
    client: str
    round: int
    epoch: int
    batch: int
    peers: _containers.RepeatedCompositeFieldContainer[Names]
    scaled_sum: _containers.RepeatedCompositeFieldContainer[EncryptedMatrix]
    sq_norm_minus: _containers.RepeatedCompositeFieldContainer[EncryptedRowValues]
    def __init__(self, client: _Optional[str] = ..., round: _Optional[int] = ..., epoch: _Optional[int] = ..., batch: _Optional[int] = ..., peers: _Optional[_Iterable[_Union[Names, _Mapping]]] = ..., scaled_sum: _Optional[_Iterable[_Union[EncryptedMatrix, _Mapping]]] = ..., sq_norm_minus: _Optional[_Iterable[_Union[EncryptedRowValues, _Mapping]]] = ...) -> None: ...

class EncryptedSums(_message.Message):
    __slots__ = ("client", "round", "epoch", "batch", "peers", "peer_sum", "peer_sq_norm_sum")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    PEER_SUM_FIELD_NUMBER: _ClassVar[int]
    PEER_SQ_NORM_SUM_FIELD_NUMBER: _ClassVar[int]
    client: str
    round: int
    epoch: int
    batch: int
    peers: _containers.RepeatedCompositeFieldContainer[Names]
    peer_sum: _containers.RepeatedCompositeFieldContainer[EncryptedMatrix]
    peer_sq_norm_sum: _containers.RepeatedCompositeFieldContainer[EncryptedRowValues]
    def __init__(self, client: _Optional[str] = ..., round: _Optional[int] = ..., epoch: _Optional[int] = ..., batch: _Optional[int] = ..., peers: _Optional[_Iterable[_Union[Names, _Mapping]]] = ..., peer_sum: _Optional[_Iterable[_Union[EncryptedMatrix, _Mapping]]] = ..., peer_sq_norm_sum: _Optional[_Iterable[_Union[EncryptedRowValues, _Mapping]]] = ...) -> None: ...

class EncryptedPeers(_message.Message):
    __slots__ = ("client", "round", "epoch", "batch", "peers", "matrices")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    MATRICES_FIELD_NUMBER: _ClassVar[int]
    client: str
    round: int
    epoch: int
    batch: int
    peers: _containers.RepeatedCompositeFieldContainer[Names]
    matrices: _containers.RepeatedCompositeFieldContainer[EncryptedMatrices]
    def __init__(self, client: _Optional[str] = ..., round: _Optional[int] = ..., epoch: _Optional[int] = ..., batch: _Optional[int] = ..., peers: _Optional[_Iterable[_Union[Names, _Mapping]]] = ..., matrices: _Optional[_Iterable[_Union[EncryptedMatrices, _Mapping]]] = ...) -> None: ...

class Finish(_message.Message):
    __slots__ = ("client", "round")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    client: str
    round: int
    def __init__(self, client: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("round_plan", "representations", "peer_terms", "peer_sums", "sum_terms", "round_report", "leave", "exchange_aborted", "secagg", "encrypted_representations", "encrypted_sum_terms", "encrypted_sums", "encrypted_peers", "finish", "sit_out")
    ROUND_PLAN_FIELD_NUMBER: _ClassVar[int]
    REPRESENTATIONS_FIELD_NUMBER: _ClassVar[int]
    PEER_TERMS_FIELD_NUMBER: _ClassVar[int]
    PEER_SUMS_FIELD_NUMBER: _ClassVar[int]
    SUM_TERMS_FIELD_NUMBER: _ClassVar[int]
    ROUND_REPORT_FIELD_NUMBER: _ClassVar[int]
    LEAVE_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_ABORTED_FIELD_NUMBER: _ClassVar[int]
    SECAGG_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTED_REPRESENTATIONS_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTED_SUM_TERMS_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTED_SUMS_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTED_PEERS_FIELD_NUMBER: _ClassVar[int]
    FINISH_FIELD_NUMBER: _ClassVar[int]
    SIT_OUT_FIELD_NUMBER: _ClassVar[int]
    round_plan: RoundPlan
    representations: Representations
    peer_terms: PeerTerms
    peer_sums: PeerSums
    sum_terms: SumTerms
    round_report: RoundReport
    leave: Leave
    exchange_aborted: ExchangeAborted
    secagg: SecAggEnvelope
    encrypted_representations: EncryptedRepresentations
    encrypted_sum_terms: EncryptedSumTerms
    encrypted_sums: EncryptedSums
    encrypted_peers: EncryptedPeers
    finish: Finish
    sit_out: SitOut
    def __init__(self, round_plan: _Optional[_Union[RoundPlan, _Mapping]] = ..., representations: _Optional[_Union[Representations, _Mapping]] = ..., peer_terms: _Optional[_Union[PeerTerms, _Mapping]] = ..., peer_sums: _Optional[_Union[PeerSums, _Mapping]] = ..., sum_terms: _Optional[_Union[SumTerms, _Mapping]] = ..., round_report: _Optional[_Union[RoundReport, _Mapping]] = ..., leave: _Optional[_Union[Leave, _Mapping]] = ..., exchange_aborted: _Optional[_Union[ExchangeAborted, _Mapping]] = ..., secagg: _Optional[_Union[SecAggEnvelope, _Mapping]] = ..., encrypted_representations: _Optional[_Union[EncryptedRepresentations, _Mapping]] = ..., encrypted_sum_terms: _Optional[_Union[EncryptedSumTerms, _Mapping]] = ..., encrypted_sums: _Optional[_Union[EncryptedSums, _Mapping]] = ..., encrypted_peers: _Optional[_Union[EncryptedPeers, _Mapping]] = ..., finish: _Optional[_Union[Finish, _Mapping]] = ..., sit_out: _Optional[_Union[SitOut, _Mapping]] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("stream_id", "index", "total", "data", "sha256_of_whole")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHA256_OF_WHOLE_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    index: int
    total: int
    data: bytes
    sha256_of_whole: bytes
    def __init__(self, stream_id: _Optional[str] = ..., index: _Optional[int] = ..., total: _Optional[int] = ..., data: _Optional[bytes] = ..., sha256_of_whole: _Optional[bytes] = ...) -> None: ...
