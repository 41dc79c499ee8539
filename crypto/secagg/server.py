"""The server's side of one secure-aggregation instance (DESIGN §3, §4.2).

No I/O: :meth:`SecAggServer.receive` takes a client message and returns the messages to
send; :meth:`close_stage` is what the transport calls when a stage's deadline passes
(the clients that did not answer by then have dropped and stay out for the rest of the
instance). A stage advances by itself once every expected client has answered.

Sets (Bonawitz et al.): U1 advertised keys, U2 sent encrypted shares, U3 sent masked inputs
(the survivors), U4 signed the survivor view (the consistency round, against an active
server), U5 revealed shares. Any set smaller than max(3, t) aborts the instance with
:class:`SecAggAborted`; nothing is unmasked then. Messages are rejected with
:class:`ProtocolError` when they belong to another instance, arrive for a stage that has
not started, repeat, or are malformed; a message from a client that already missed its
stage (a dropped client answering late) is ignored and recorded in :attr:`ignored`.

Members may lie. An advertisement whose key is unusable (a low-order X25519 point, a
wrong length) or repeats a key already advertised would make every honest exchange with
its sender fail: the server refuses it with a :class:`ProtocolError` naming the sender,
which is dropped. At unmask, each secret is reconstructed with
:func:`~fedmuscle_secure.crypto.secagg.shamir.robust_reconstruct`: up to ⌊(n − t)/2⌋ wrong shares
per secret are corrected and their senders blamed (:attr:`SecAggServer.blamed`) and dropped;
more wrong shares than that, or a reconstructed mask key that does not match its owner's
advertised ``mask_public``, abort the instance blaming nobody.

The unmasking itself is one batched int64 computation on ``device`` (CPU or CUDA): the
stacked masked inputs are summed and the reconstructed masks, stacked with their ±1
coefficients, subtracted; int64 addition wraps mod 2^64, which is the group operation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NoReturn

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedmuscle_secure.crypto import _hazmat as hz
from fedmuscle_secure.crypto.secagg.messages import (
    ORDER,
    STAGE_OF,
    AdvertiseKeys,
    ClientToServer,
    ConsistencyCheck,
    ConsistencySignature,
    EncryptedShares,
    KeyBook,
    MaskedInput,
    SecAggSetup,
    SecAggStage,
    ServerToClient,
    ShareInbox,
    UnmaskRequest,
    UnmaskShares,
    frozen_map,
    min_group,
)
from fedmuscle_secure.crypto.secagg.positions import pair_sign, share_x
from fedmuscle_secure.crypto.secagg.shamir import (
    PRIME_256,
    ShareDecodingError,
    int_to_bytes32,
    robust_reconstruct,
)
from fedmuscle_secure.errors import IdentityError, ProtocolError


class SecAggAborted(ProtocolError):
    """Fewer than t clients reached a stage: the instance ends and nothing is unmasked."""


def unmask_sum(masked: torch.Tensor, masks: torch.Tensor, coefficients: torch.Tensor, *,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """Σ masked − Σ_k c_k · mask_k in Z_(2^64), batched: (S, L), (K, L), (K,) int64 → (L,)."""
    dev = torch.device(device)
    total = masked.to(dev).sum(dim=0)
    if masks.shape[0]:
        total = total - (coefficients.to(dev).unsqueeze(1) * masks.to(dev)).sum(dim=0)
    return total.cpu()


class SecAggServer:
    """One instance over ``participants`` (in share order) with threshold ``threshold``."""

    def __init__(self, participants: list[str] | tuple[str, ...], threshold: int, vector_length: int, *,
                 identities: Mapping[str, Ed25519PublicKey] | None = None,
                 device: torch.device | str = "cpu", label: str = "") -> None:
        n = len(participants)
        self.label = label  # the exchange the instance serves, signed into survivor views
        if len(set(participants)) != n or not 2 <= threshold <= n or n < min_group(threshold):
            raise ValueError(f"need distinct participants, 2 <= threshold <= {n} and at least "
                             f"max(3, threshold) of them; got {list(participants)}, threshold "
                             f"{threshold}")
        self.participants = tuple(participants)
        self.threshold = threshold
        self.vector_length = vector_length
        self.instance_id = hz.fresh_instance_id()
        self.identities = dict(identities) if identities is not None else None
        self.device = device
        self.stage = SecAggStage.ADVERTISE_KEYS
        self.adverts: dict[str, AdvertiseKeys] = {}
        self.shares: dict[str, EncryptedShares] = {}
        self.masked: dict[str, MaskedInput] = {}
        self.signatures: dict[str, bytes] = {}   # U4: survivor-view signatures
        self._view: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self.unmasks: dict[str, UnmaskShares] = {}
        self.dropped_at: dict[str, str] = {}   # client → stage it dropped at
        self.left: set[str] = set()  # announced they leave (drop()): never answer again
        self.blamed: dict[str, ProtocolError] = {}  # client → the wrong shares it revealed
        self.ignored: list[tuple[str, str]] = []  # (sender, message type) answered late
        self.result: torch.Tensor | None = None
        self.abort_reason: str | None = None

    # -- sets --------------------------------------------------------------------------
    @property
    def survivors(self) -> tuple[str, ...]:
        """U3: the clients whose masked inputs are in the sum."""
        return tuple(p for p in self.participants if p in self.masked)

    @property
    def answered(self) -> tuple[str, ...]:
        """Who has answered the current stage (empty once the instance is over)."""
        if self.stage in (SecAggStage.DONE, SecAggStage.ABORTED):
            return ()
        return tuple(p for p in self._expected() if p in self._received())

    @property
    def awaited(self) -> tuple[str, ...]:
        """Who the current stage still waits for: expected, not answered, not dropped."""
        if self.stage in (SecAggStage.DONE, SecAggStage.ABORTED):
            return ()
        got = self._received()
        return tuple(p for p in self._expected() if p not in got and p not in self.dropped_at)

    def _expected(self) -> tuple[str, ...]:
        prev = {SecAggStage.ADVERTISE_KEYS: self.participants, SecAggStage.SHARE_KEYS: self.adverts,
                SecAggStage.MASKED_INPUT: self.shares, SecAggStage.CONSISTENCY: self.masked,
                SecAggStage.UNMASK: self.signatures}[self.stage]
        return tuple(p for p in self.participants if p in prev)

    def _received(self) -> dict:
        return {SecAggStage.ADVERTISE_KEYS: self.adverts, SecAggStage.SHARE_KEYS: self.shares,
                SecAggStage.MASKED_INPUT: self.masked, SecAggStage.CONSISTENCY: self.signatures,
                SecAggStage.UNMASK: self.unmasks}[self.stage]

    # -- driving -----------------------------------------------------------------------
    def start(self) -> list[SecAggSetup]:
        return [SecAggSetup(p, self.instance_id, self.participants, self.threshold, self.vector_length)
                for p in self.participants]

    def receive(self, msg: ClientToServer) -> list[ServerToClient]:
        sender = getattr(msg, "sender", "?")
        stage = self.stage.value
        if sender not in self.participants:
            raise ProtocolError(sender, stage, "message from a client outside this instance's group")
        if getattr(msg, "instance_id", None) != self.instance_id:
            raise ProtocolError(sender, stage, f"{type(msg).__name__} belongs to another instance "
                                "(a replay?)")
        msg_stage = STAGE_OF.get(type(msg))
        if msg_stage is None:
            raise ProtocolError(sender, stage, f"the server cannot accept a {type(msg).__name__}")
        if self.stage in (SecAggStage.DONE, SecAggStage.ABORTED) or ORDER.index(msg_stage) < ORDER.index(self.stage):
            return self._late(msg, msg_stage)
        if msg_stage is not self.stage:
            raise ProtocolError(sender, stage, f"{type(msg).__name__} (stage {msg_stage.value!r}) "
                                f"arrived during stage {stage!r}")
        if sender not in self._expected() or sender in self.dropped_at:
            self.ignored.append((sender, type(msg).__name__))  # dropped (earlier, or announced
            return []                                          # via drop()): stays out
        if sender in self._received():
            raise ProtocolError(sender, stage, f"duplicate {type(msg).__name__}")
        self._accept(msg)
        got = self._received()
        if all(p in got or p in self.dropped_at for p in self._expected()):
            return self._advance()
        return []

    def _late(self, msg: ClientToServer, msg_stage: SecAggStage) -> list[ServerToClient]:
        store = {SecAggStage.ADVERTISE_KEYS: self.adverts, SecAggStage.SHARE_KEYS: self.shares,
                 SecAggStage.MASKED_INPUT: self.masked, SecAggStage.CONSISTENCY: self.signatures,
                 SecAggStage.UNMASK: self.unmasks}[msg_stage]
        if msg.sender in store:
            raise ProtocolError(msg.sender, self.stage.value, f"duplicate {type(msg).__name__}")
        self.ignored.append((msg.sender, type(msg).__name__))
        return []

    def close_stage(self) -> list[ServerToClient]:
        """The stage's deadline passed: whoever has not answered has dropped."""
        if self.stage in (SecAggStage.DONE, SecAggStage.ABORTED):
            return []
        return self._advance()

    def drop(self, client: str) -> list[ServerToClient]:
        """``client`` announced it leaves (e.g. its privacy budget is spent): it is treated as
        dropped at the current stage; the stage advances if it was the last one awaited. If
        it already answered this stage, its answer stands and it is dropped from the next
        stage as soon as that begins (:meth:`_advance`)."""
        if self.stage in (SecAggStage.DONE, SecAggStage.ABORTED) or client not in self._expected():
            return []
        self.left.add(client)
        if client in self._received():  # its answer to this stage stands; it drops at the next
            return []
        self.dropped_at[client] = self.stage.value
        got = self._received()
        if all(p in got or p in self.dropped_at for p in self._expected()):
            return self._advance()
        return []

    # -- per-stage acceptance ------------------------------------------------------------
    def _accept(self, msg: ClientToServer) -> None:
        s, stage = msg.sender, self.stage.value
        if isinstance(msg, AdvertiseKeys):
            if self.identities is not None:
                try:
                    hz.verify_advert(self.identities[s], msg.signature, msg.instance_id, s,
                                     msg.cipher_public, msg.mask_public)
                except (IdentityError, KeyError) as exc:
                    raise ProtocolError(s, stage, f"bad key advertisement: {exc}") from None
            self._check_keys(msg)
            self.adverts[s] = msg
        elif isinstance(msg, EncryptedShares):
            want = {p for p in self.adverts if p != s}
            if set(msg.ciphertexts) != want:
                raise ProtocolError(s, stage, f"encrypted shares must be addressed to exactly "
                                    f"{sorted(want)}, got {sorted(msg.ciphertexts)}")
            self.shares[s] = msg
        elif isinstance(msg, MaskedInput):
            if msg.masked.dtype != torch.int64 or tuple(msg.masked.shape) != (self.vector_length,):
                raise ProtocolError(s, stage, f"masked input must be int64 of shape "
                                    f"({self.vector_length},), got {msg.masked.dtype} {tuple(msg.masked.shape)}")
            self.masked[s] = msg
        elif isinstance(msg, ConsistencySignature):
            assert self._view is not None
            if self.identities is not None:
                try:
                    hz.verify_survivor_set(self.identities[s], msg.signature, self.instance_id, self.label, s,
                                           *self._view)
                except (IdentityError, KeyError) as exc:
                    raise ProtocolError(s, stage, f"bad survivor-set signature: {exc}") from None
            self.signatures[s] = msg.signature
        elif isinstance(msg, UnmaskShares):
            survivors, dropped = set(self.survivors), set(self.shares) - set(self.masked)
            if set(msg.seed_shares) != survivors or set(msg.key_shares) != dropped:
                raise ProtocolError(s, stage, "unmask shares must cover exactly the survivors' seeds "
                                    "and the dropped clients' mask keys")
            for y in [*msg.seed_shares.values(), *msg.key_shares.values()]:
                if not (isinstance(y, int) and 0 <= y < PRIME_256):
                    raise ProtocolError(s, stage, "a revealed share is not a field element")
            self.unmasks[s] = msg

    def _advance(self) -> list[ServerToClient]:
        """The next stage; a client that left after answering the last one is dropped from
        it at once (it will not answer: waiting for it would hold the others until the
        stage deadline), and if nobody else is left to answer, the stage ends too."""
        replies = self._next_stage()
        while self.stage not in (SecAggStage.DONE, SecAggStage.ABORTED):
            got, expected = self._received(), self._expected()
            for p in expected:
                if p in self.left and p not in got:
                    self.dropped_at.setdefault(p, self.stage.value)
            if not all(p in got or p in self.dropped_at for p in expected):
                break
            replies += self._next_stage()
        return replies

    def _next_stage(self) -> list[ServerToClient]:
        got = self._received()
        for p in self._expected():
            if p not in got:
                self.dropped_at.setdefault(p, self.stage.value)
        need = min_group(self.threshold)
        if len(got) < need:
            self.abort_reason = (f"only {len(got)} of {len(self._expected())} clients completed stage "
                                 f"{self.stage.value!r}; at least {need} are needed (the threshold "
                                 f"is {self.threshold}, never fewer than 3)")
            failed, self.stage = self.stage.value, SecAggStage.ABORTED
            raise SecAggAborted("server", failed, self.abort_reason)  # .stage: the stage that failed
        if self.stage is SecAggStage.ADVERTISE_KEYS:
            self.stage = SecAggStage.SHARE_KEYS
            adverts = tuple(self.adverts[p] for p in self.participants if p in self.adverts)
            return [KeyBook(p, self.instance_id, adverts) for p in self._expected()]
        if self.stage is SecAggStage.SHARE_KEYS:
            self.stage = SecAggStage.MASKED_INPUT
            holders = self._expected()
            return [ShareInbox(p, self.instance_id, frozen_map(
                {s: self.shares[s].ciphertexts[p] for s in holders if s != p})) for p in holders]
        if self.stage is SecAggStage.MASKED_INPUT:
            self.stage = SecAggStage.CONSISTENCY
            survivors = self.survivors
            dropped = tuple(p for p in self.participants if p in self.shares and p not in self.masked)
            self._view = (survivors, dropped)
            return [ConsistencyCheck(p, self.instance_id, survivors, dropped) for p in survivors]
        if self.stage is SecAggStage.CONSISTENCY:
            self.stage = SecAggStage.UNMASK
            assert self._view is not None
            signers = self._expected()
            signatures = frozen_map({p: self.signatures[p] for p in signers})
            return [UnmaskRequest(p, self.instance_id, *self._view, signatures) for p in signers]
        self.result = self._unmask()
        self.stage = SecAggStage.DONE
        return []

    def _check_keys(self, ad: AdvertiseKeys) -> None:
        """Refuse, and drop its sender, an advertisement whose keys every honest client would
        choke on: a low-order or malformed X25519 key, or a key already in the book (keys
        are fresh per instance and nobody sees another's before the key book, so a repeat
        is a copy or a reuse; the one advertised later is refused)."""
        s, stage = ad.sender, self.stage.value
        try:
            for what in ("cipher_public", "mask_public"):
                hz.check_agreement_public(getattr(ad, what), peer=s, stage=stage, what=what)
            if ad.cipher_public == ad.mask_public:
                raise ProtocolError(s, stage, "advertised one key as both cipher_public and mask_public")
            for other, prev in self.adverts.items():
                if {ad.cipher_public, ad.mask_public} & {prev.cipher_public, prev.mask_public}:
                    raise ProtocolError(s, stage, f"advertised a key that {other!r} advertised first")
        except ProtocolError:
            self.dropped_at[s] = stage
            raise

    def _abort_unmask(self, reason: str) -> NoReturn:
        self.abort_reason = reason
        self.stage = SecAggStage.ABORTED
        raise SecAggAborted("server", SecAggStage.UNMASK.value, reason)

    def _secret(self, owner: str, kind: str, off: dict[str, list[str]]) -> bytes:
        """``owner``'s self-mask seed (``kind`` "seed") or mask key ("key") from the revealed
        shares. Correctable wrong shares are left out and their senders noted in ``off``;
        otherwise the instance aborts (a wrong secret would make a wrong sum)."""
        field = "seed_shares" if kind == "seed" else "key_shares"
        what = f"the {'self-mask seed' if kind == 'seed' else 'mask key'} of {owner!r}"
        holder_at = {share_x(self.participants, h): h for h in self.unmasks}
        points = [(x, getattr(self.unmasks[h], field)[owner]) for x, h in holder_at.items()]
        try:
            decoded = robust_reconstruct(points, threshold=self.threshold)
            secret = int_to_bytes32(decoded.secret)
        except ShareDecodingError as exc:
            self._abort_unmask(f"the revealed shares of {what} are inconsistent: {exc}")
        except ValueError:
            self._abort_unmask(f"the revealed shares of {what} give no 32-byte value: they are wrong "
                               "and there are too few to correct them")
        for x in decoded.off:
            off.setdefault(holder_at[x], []).append(what)
        return secret

    def _unmask(self) -> torch.Tensor:
        survivors = self.survivors
        dropped = [p for p in self.participants if p in self.shares and p not in self.masked]
        n = self.vector_length
        masks, coef = [], []
        off: dict[str, list[str]] = {}
        for s in survivors:
            masks.append(hz.mask_stream(self._secret(s, "seed", off), n))
            coef.append(1)
        for d in dropped:
            key = hz.AgreementKey.from_private_bytes(self._secret(d, "key", off))
            if key.public != self.adverts[d].mask_public:  # wrong shares chosen to agree
                self._abort_unmask(f"the mask key of {d!r} reconstructed from the revealed shares "
                                   "does not match its advertised mask_public: more shares are wrong "
                                   "than can be corrected")
            for s in survivors:  # s added pair_sign(s, d) · PRG(s_sd); take it out
                seed = hz.pair_mask_seed(key, self.adverts[s].mask_public, instance_id=self.instance_id,
                                         me=d, peer=s)
                masks.append(hz.mask_stream(seed, n))
                coef.append(pair_sign(s, d))
        if len(self.unmasks) - len(off) < self.threshold:
            self._abort_unmask(f"only {len(self.unmasks) - len(off)} clients revealed shares that are "
                               f"all consistent (shares off the polynomial from {sorted(off)}); the "
                               f"threshold is {self.threshold}")
        for h, items in off.items():
            self.blamed[h] = ProtocolError(h, SecAggStage.UNMASK.value, "revealed a share off the "
                                           "polynomial the other shares agree on, for "
                                           + ", ".join(items) + "; dropped")
            self.dropped_at[h] = SecAggStage.UNMASK.value
        stacked = torch.stack([self.masked[s].masked for s in survivors])
        return unmask_sum(stacked, torch.stack(masks) if masks else torch.zeros(0, n, dtype=torch.int64),
                          torch.tensor(coef, dtype=torch.int64), device=self.device)
