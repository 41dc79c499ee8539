"""One client's side of one secure-aggregation instance (DESIGN §4.2, Bonawitz et al. 2017).

A :class:`SecAggClient` lives for exactly one instance: its two X25519 key pairs and its
self-mask seed are generated when it is built and never reused, so revealing a dropped
client's mask key exposes nothing of any other exchange. Stages, checked first in every
handler (a message for the wrong stage raises :class:`ProtocolError` naming the server and
the stage):

``ADVERTISE_KEYS`` (sent its signed keys, waits for the key book) → ``SHARE_KEYS`` (sent
encrypted shares, waits for its inbox) → ``MASKED_INPUT`` (sent y = x + PRG(b) ± pair
masks, waits for the server's survivor set) → ``CONSISTENCY`` (signed that survivor set,
waits for the unmask request carrying every signer's signature) → ``DONE`` (revealed, for
each peer, exactly one kind of share: the self-mask-seed share of a survivor or the
mask-key share of a dropped client, never both).

No stage continues with fewer than max(3, t) members (:func:`min_group`): a sum over two
members is each one's input to the other. The consistency round (Bonawitz et al. 2017,
§4, round 3) is what stops an *active* server: to unmask member j it would have to tell
some clients that j survived (to collect j's self-mask-seed shares) and others that j
dropped (to collect j's mask-key shares). Every client signs the one view it was shown and
reveals only against at least max(3, t) valid signatures over that same view; since an
honest client signs one view per instance and t > N/2 (checked by the config), two
different views can never both gather t signatures.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableSet

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedmuscle_secure.crypto import _hazmat as hz
from fedmuscle_secure.crypto.secagg.messages import (
    AdvertiseKeys,
    ConsistencyCheck,
    ConsistencySignature,
    EncryptedShares,
    KeyBook,
    MaskedInput,
    SecAggSetup,
    SecAggStage,
    ShareInbox,
    UnmaskRequest,
    UnmaskShares,
    frozen_map,
    min_group,
)
from fedmuscle_secure.crypto.secagg.positions import pair_sign, share_x
from fedmuscle_secure.crypto.secagg.shamir import PRIME_256, split
from fedmuscle_secure.errors import IdentityError, ProtocolError

SERVER = "server"
_SHARE_BYTES = 66  # one element of the M521 field


class SecAggClient:
    """Client state machine of one instance; see the module docstring for the stages."""

    def __init__(self, name: str, identity: Ed25519PrivateKey,
                 peer_identities: Mapping[str, Ed25519PublicKey], setup: SecAggSetup,
                 vector: torch.Tensor, *, seen_instances: MutableSet[bytes] | None = None,
                 label: str = "") -> None:
        """Validate ``setup`` and prepare the instance; :meth:`advertise` sends the keys.

        ``vector`` is the encoded int64 input. ``seen_instances`` (kept by the caller
        across instances) rejects a setup that replays an earlier instance id. ``label``
        names the exchange the instance serves (round/epoch/batch); it is signed into the
        survivor view, so view signatures are bound to that exchange as well as to the id.
        """
        self.name = name
        self.label = label
        self.stage = SecAggStage.ADVERTISE_KEYS
        self._identity = identity
        self._peer_identities = dict(peer_identities)
        self._check_setup(setup, vector, seen_instances)
        self.instance_id = setup.instance_id
        self.participants = setup.participants
        self.threshold = setup.threshold
        self._vector = vector
        self._cipher_key = hz.AgreementKey()   # encrypts shares to peers
        self._mask_key = hz.AgreementKey()     # agrees pairwise mask seeds
        self._self_seed = hz.fresh_seed()
        self._adverts: dict[str, AdvertiseKeys] = {}
        self._share_holders: tuple[str, ...] = ()  # U2, self included
        self._received: dict[str, tuple[int, int]] = {}  # sender → (seed share, key share)
        self._view: tuple[tuple[str, ...], tuple[str, ...]] | None = None  # what it signed
        self.revealed: dict[str, str] = {}  # peer → "seed" | "key", for this instance

    # -- checks ------------------------------------------------------------------------
    def _check_setup(self, setup: SecAggSetup, vector: torch.Tensor,
                     seen: MutableSet[bytes] | None) -> None:
        stage = "setup"
        if setup.recipient != self.name:
            raise ProtocolError(SERVER, stage, f"setup addressed to {setup.recipient!r}, not {self.name!r}")
        if len(setup.instance_id) != hz.INSTANCE_ID_BYTES:
            raise ProtocolError(SERVER, stage, f"instance id must be {hz.INSTANCE_ID_BYTES} bytes")
        if seen is not None:
            if setup.instance_id in seen:
                raise ProtocolError(SERVER, stage, "setup replays an instance id already used; "
                                    "keys and seeds are never reused across instances")
            seen.add(setup.instance_id)
        parts = setup.participants
        if self.name not in parts or len(set(parts)) != len(parts):
            raise ProtocolError(SERVER, stage, f"participants {parts} must be distinct and include "
                                f"{self.name!r}")
        unknown = [p for p in parts if p != self.name and p not in self._peer_identities]
        if unknown:
            raise ProtocolError(SERVER, stage, f"participants without a known identity key: {unknown}")
        if not 2 <= setup.threshold <= len(parts):
            raise ProtocolError(SERVER, stage, f"threshold {setup.threshold} must be in "
                                f"[2, {len(parts)}] for {len(parts)} participants")
        if len(parts) < min_group(setup.threshold):
            raise ProtocolError(SERVER, stage, f"a group of {len(parts)} participants {parts}; a "
                                f"secure sum needs at least {min_group(setup.threshold)} (max(3, "
                                f"t={setup.threshold})): with fewer, a member's input follows "
                                "from the sum")
        if vector.dtype != torch.int64 or vector.shape != (setup.vector_length,):
            raise ProtocolError(SERVER, stage, f"input must be int64 of shape ({setup.vector_length},), "
                                f"got {vector.dtype} {tuple(vector.shape)}")

    def _expect(self, stage: SecAggStage, msg: object) -> None:
        if self.stage is not stage:
            raise ProtocolError(SERVER, self.stage.value, f"{type(msg).__name__} arrived in stage "
                                f"{self.stage.value!r}; expected stage {stage.value!r}")
        if getattr(msg, "recipient", None) != self.name:
            raise ProtocolError(SERVER, self.stage.value, f"{type(msg).__name__} addressed to "
                                f"{getattr(msg, 'recipient', None)!r}, not {self.name!r}")
        if getattr(msg, "instance_id", None) != self.instance_id:
            raise ProtocolError(SERVER, self.stage.value, f"{type(msg).__name__} belongs to another "
                                "instance (a replay?)")

    # -- stages ------------------------------------------------------------------------
    def advertise(self) -> AdvertiseKeys:
        sig = hz.sign_advert(self._identity, self.instance_id, self.name,
                             self._cipher_key.public, self._mask_key.public)
        return AdvertiseKeys(self.name, self.instance_id, self._cipher_key.public,
                             self._mask_key.public, sig)

    def handle(self, msg: KeyBook | ShareInbox | ConsistencyCheck | UnmaskRequest, *,
               before_reveal: Callable[[UnmaskRequest], None] | None = None,
               ) -> EncryptedShares | MaskedInput | ConsistencySignature | UnmaskShares:
        """One server message in, the reply out. ``before_reveal`` runs after the unmask
        request is validated and before any share is revealed (the privacy pipeline
        records the release there, or refuses it by raising)."""
        if isinstance(msg, KeyBook):
            return self._on_key_book(msg)
        if isinstance(msg, ShareInbox):
            return self._on_inbox(msg)
        if isinstance(msg, ConsistencyCheck):
            return self._on_consistency(msg)
        if isinstance(msg, UnmaskRequest):
            return self._on_unmask(msg, before_reveal)
        raise ProtocolError(SERVER, self.stage.value, f"a secagg client cannot accept {type(msg).__name__}")

    def _on_key_book(self, book: KeyBook) -> EncryptedShares:
        self._expect(SecAggStage.ADVERTISE_KEYS, book)
        stage = self.stage.value
        adverts: dict[str, AdvertiseKeys] = {}
        for ad in book.adverts:
            if ad.sender in adverts:
                raise ProtocolError(ad.sender, stage, "two key advertisements from one client")
            if ad.sender not in self.participants:
                raise ProtocolError(ad.sender, stage, "key advertisement from a non-participant")
            if ad.instance_id != self.instance_id:
                raise ProtocolError(ad.sender, stage, "key advertisement from another instance")
            if ad.sender != self.name:
                try:
                    hz.verify_advert(self._peer_identities[ad.sender], ad.signature, ad.instance_id,
                                     ad.sender, ad.cipher_public, ad.mask_public)
                except IdentityError as exc:
                    raise ProtocolError(ad.sender, stage, str(exc)) from None
                for what in ("cipher_public", "mask_public"):  # authentic, so ad.sender's fault
                    hz.check_agreement_public(getattr(ad, what), peer=ad.sender, stage=stage, what=what)
            adverts[ad.sender] = ad
        mine = adverts.get(self.name)
        if mine is None or (mine.cipher_public, mine.mask_public) != (self._cipher_key.public,
                                                                        self._mask_key.public):
            raise ProtocolError(SERVER, stage, "the key book does not carry this client's own keys")
        keys = [k for ad in adverts.values() for k in (ad.cipher_public, ad.mask_public)]
        if len(set(keys)) != len(keys):
            raise ProtocolError(SERVER, stage, "the key book repeats a public key")
        if len(adverts) < min_group(self.threshold):
            raise ProtocolError(SERVER, stage, f"only {len(adverts)} clients advertised keys; "
                                f"at least {min_group(self.threshold)} are needed (threshold is "
                                f"{self.threshold}, never fewer than 3)")
        self._adverts = adverts
        n = len(self.participants)
        seed_shares = dict(split(self._self_seed, threshold=self.threshold, num_shares=n))
        key_shares = dict(split(self._mask_key.private_bytes(), threshold=self.threshold, num_shares=n))
        out: dict[str, bytes] = {}
        for peer, ad in adverts.items():
            x = share_x(self.participants, peer)
            plain = seed_shares[x].to_bytes(_SHARE_BYTES, "big") + key_shares[x].to_bytes(_SHARE_BYTES, "big")
            if peer == self.name:
                self._received[peer] = (seed_shares[x], key_shares[x])
                continue
            key = self._cipher_key.derive(ad.cipher_public, purpose="share-encryption",
                                          instance_id=self.instance_id, a=self.name, b=peer)
            out[peer] = hz.seal_share(key, plain, instance_id=self.instance_id, sender=self.name,
                                      recipient=peer)
        self.stage = SecAggStage.SHARE_KEYS
        return EncryptedShares(self.name, self.instance_id, frozen_map(out))

    def _on_inbox(self, inbox: ShareInbox) -> MaskedInput:
        self._expect(SecAggStage.SHARE_KEYS, inbox)
        stage = self.stage.value
        for sender, sealed in inbox.ciphertexts.items():
            if sender == self.name or sender not in self._adverts:
                raise ProtocolError(sender, stage, "share from a client that did not advertise keys "
                                    "in this instance")
            key = self._cipher_key.derive(self._adverts[sender].cipher_public, purpose="share-encryption",
                                          instance_id=self.instance_id, a=self.name, b=sender)
            plain = hz.open_share(key, sealed, instance_id=self.instance_id, sender=sender,
                                  recipient=self.name)
            if len(plain) != 2 * _SHARE_BYTES:
                raise ProtocolError(sender, stage, "decrypted share has the wrong length")
            seed_y = int.from_bytes(plain[:_SHARE_BYTES], "big")
            key_y = int.from_bytes(plain[_SHARE_BYTES:], "big")
            if not (seed_y < PRIME_256 and key_y < PRIME_256):
                raise ProtocolError(sender, stage, "decrypted share is not a field element")
            self._received[sender] = (seed_y, key_y)
        holders = [self.name, *inbox.ciphertexts]
        if len(holders) < min_group(self.threshold):
            raise ProtocolError(SERVER, stage, f"only {len(holders)} clients sent shares; at least "
                                f"{min_group(self.threshold)} are needed (threshold is "
                                f"{self.threshold}, never fewer than 3)")
        self._share_holders = tuple(p for p in self.participants if p in holders)
        masked = self._vector + hz.mask_stream(self._self_seed, self._vector.numel())
        for peer in self._share_holders:
            if peer == self.name:
                continue
            seed = hz.pair_mask_seed(self._mask_key, self._adverts[peer].mask_public,
                                     instance_id=self.instance_id, me=self.name, peer=peer)
            stream = hz.mask_stream(seed, self._vector.numel())
            masked.add_(stream) if pair_sign(self.name, peer) > 0 else masked.sub_(stream)
        self._vector = None  # the plaintext input is not needed any more
        self.stage = SecAggStage.MASKED_INPUT
        return MaskedInput(self.name, self.instance_id, masked)

    def _on_consistency(self, check: ConsistencyCheck) -> ConsistencySignature:
        """Sign the server's survivor view once it passes every check a reveal would need."""
        self._expect(SecAggStage.MASKED_INPUT, check)
        self._check_view(check.survivors, check.dropped)
        self._view = (tuple(check.survivors), tuple(check.dropped))
        sig = hz.sign_survivor_set(self._identity, self.instance_id, self.label, self.name,
                                   *self._view)
        self.stage = SecAggStage.CONSISTENCY
        return ConsistencySignature(self.name, self.instance_id, sig)

    def _check_view(self, survivors: tuple[str, ...], dropped: tuple[str, ...]) -> None:
        stage = self.stage.value
        both = sorted(set(survivors) & set(dropped))
        if both:
            raise ProtocolError(SERVER, stage, f"asked to reveal both the self-mask-seed share and the "
                                f"mask-key share of {both}; refusing (that would unmask their inputs)")
        asked = list(survivors) + list(dropped)
        if len(set(asked)) != len(asked) or set(asked) != set(self._share_holders):
            raise ProtocolError(SERVER, stage, f"survivors {survivors} and dropped {dropped} "
                                f"must partition the share holders {self._share_holders}")
        if self.name not in survivors:
            raise ProtocolError(SERVER, stage, f"{self.name!r} sent its masked input but is not "
                                "listed as a survivor")
        need = min_group(self.threshold)
        if len(survivors) < need:
            raise ProtocolError(SERVER, stage, f"only {len(survivors)} survivors; revealing "
                                f"shares needs at least {need} (threshold {self.threshold}, "
                                "never fewer than 3)")

    def _on_unmask(self, req: UnmaskRequest, before_reveal) -> UnmaskShares:
        self._expect(SecAggStage.CONSISTENCY, req)
        stage = self.stage.value
        assert self._view is not None
        if (tuple(req.survivors), tuple(req.dropped)) != self._view:
            raise ProtocolError(SERVER, stage, f"the unmask request lists survivors {req.survivors}"
                                f" and dropped {req.dropped}, but {self.name!r} signed survivors "
                                f"{self._view[0]} and dropped {self._view[1]}: the server showed "
                                "different views; refusing to reveal any share")
        strangers = sorted(set(req.signatures) - set(req.survivors))
        if strangers:
            raise ProtocolError(SERVER, stage, f"survivor-set signatures from {strangers}, who are "
                                "not survivors of this instance")
        for signer, sig in req.signatures.items():
            key = (self._identity.public_key() if signer == self.name
                   else self._peer_identities[signer])
            try:
                hz.verify_survivor_set(key, sig, self.instance_id, self.label, signer, *self._view)
            except IdentityError as exc:
                raise ProtocolError(signer, stage, f"{exc}; refusing to reveal any share "
                                    "(an equivocating server, or a forged signature)") from None
        need = min_group(self.threshold)
        if len(req.signatures) < need:
            raise ProtocolError(SERVER, stage, f"only {len(req.signatures)} survivors signed this "
                                f"view; revealing shares needs at least {need} signatures (threshold "
                                f"{self.threshold}, never fewer than 3)")
        if before_reveal is not None:
            before_reveal(req)
        seed_shares = {p: self._received[p][0] for p in req.survivors}
        key_shares = {p: self._received[p][1] for p in req.dropped}
        self.revealed = {**{p: "seed" for p in seed_shares}, **{p: "key" for p in key_shares}}
        self.stage = SecAggStage.DONE
        return UnmaskShares(self.name, self.instance_id, frozen_map(seed_shares), frozen_map(key_shares))
