"""A client's privacy officer: accountants, budgets, the release pipeline and the ledger.

DESIGN §5. Every release goes through :meth:`ClientPrivacy.release`, the one place that
owns the order clip → noise (→ encode → mask in the protected modes): it asks the
accountant first, refuses (and records the refusal) when the release would exceed the
client-level budget, and otherwise records the mechanism, the egress digest and the new ε
in the client's signed, hash-chained ledger. DP-SGD steps of LocalUpdate are recorded the
same way under the record-level guarantee.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fedmuscle_secure.client.weight_phase import clip_update
from fedmuscle_secure.crypto.secagg.messages import min_group
from fedmuscle_secure.dp.accounting import DpEventRecord, PrivacyAccountant
from fedmuscle_secure.dp.noise import (
    clip_rows,
    csprng_normal,
    gaussian_release,
    representation_sensitivity,
    update_sensitivity,
)
from fedmuscle_secure.errors import PrivacyBudgetExceeded
from fedmuscle_secure.records.ledger import Ledger, payload_digest

RECORD, CLIENT = "record", "client"


@dataclass(frozen=True)
class PrivacySettings:
    delta: float
    sigma_client: float | None   # None: representation noise off
    sigma_record: float | None            # None: no DP-SGD
    max_grad_norm: float
    record_budget: float | None
    client_budget: float | None
    update_clip: float | None = None  # set: sigma_client is noise on weight updates clipped to it


class ClientPrivacy:
    """Accounting and egress records of one client (both guarantees, DESIGN §5.3)."""

    def __init__(self, client: str, settings: PrivacySettings, ledger: Ledger | None) -> None:
        self.client = client
        self.settings = settings
        self.ledger = ledger
        self.accountants = {RECORD: PrivacyAccountant(guarantee=RECORD, delta=settings.delta),
                            CLIENT: PrivacyAccountant(guarantee=CLIENT, delta=settings.delta)}
        self.releases = 0
        self.clipped_rows = 0
        self.clipped_updates = 0  # update noise: parts cut to the clip (never in the ledger)
        self.nonfinite_updates = 0  # update noise: diverged updates released as zero + noise

    def _budget(self, guarantee: str) -> float | None:
        return self.settings.record_budget if guarantee == RECORD else self.settings.client_budget

    def _log(self, kind: str, body: dict) -> None:
        if self.ledger is not None:
            self.ledger.append(kind, body)

    def _admit(self, round_: int, event: DpEventRecord, what: str) -> None:
        """Ask the accountant before acting; record a refusal and raise if over budget."""
        acc = self.accountants[event.guarantee]
        budget = self._budget(event.guarantee)
        if budget is None:
            return
        try:
            acc.check_budget(event, budget)
        except PrivacyBudgetExceeded as exc:
            after = acc.report_if(event).epsilon
            self._log("refusal", {"round": round_, "guarantee": event.guarantee, "what": what,
                                  "epsilon_after": after, "budget": budget,
                                  "delta": self.settings.delta, "reason": str(exc)})
            raise

    def _record(self, round_: int, exchange: list | None, event: DpEventRecord,
                **extra: object) -> None:
        self.accountants[event.guarantee].record_event(event)
        self._log("dp_event", {"round": round_, "exchange": exchange, **event.to_dict(), **extra})

    # -- record level: DP-SGD in LocalUpdate -------------------------------------------
    def dpsgd_event(self, steps: int, sample_rate: float) -> DpEventRecord:
        assert self.settings.sigma_record is not None
        return DpEventRecord(guarantee=RECORD, mechanism="poisson_gaussian",
                             noise_multiplier=self.settings.sigma_record, sample_rate=sample_rate,
                             steps=steps, sensitivity=self.settings.max_grad_norm,
                             neighbouring="add_remove_record")

    def admit_local_update(self, round_: int, steps: int, sample_rate: float) -> None:
        if self.settings.sigma_record is not None:
            self._admit(round_, self.dpsgd_event(steps, sample_rate), "local update (DP-SGD)")

    def record_local_update(self, round_: int, steps: int, sample_rate: float) -> None:
        if self.settings.sigma_record is not None and steps > 0:
            self._record(round_, None, self.dpsgd_event(steps, sample_rate))

    # -- client level: representation releases ----------------------------------------
    def release(self, round_: int, exchange: tuple[int, int | None], z: torch.Tensor,
                recipient: str, protect: Callable[[torch.Tensor], Any] | None = None) -> Any:
        """clip → noise → (record) the payload that leaves the client; (nb, B, d) in and out.

        Raises :class:`PrivacyBudgetExceeded` (after recording the refusal) instead of
        releasing anything that would take the client past its client-level budget.
        """
        nb, rows = int(z.shape[0]), int(z.shape[1])
        sigma = self.settings.sigma_client
        ex = [exchange[0], exchange[1]]
        if sigma is not None:
            event = DpEventRecord(guarantee=CLIENT, mechanism="gaussian", noise_multiplier=sigma,
                                  sample_rate=1.0, steps=nb,
                                  sensitivity=representation_sensitivity(rows),
                                  neighbouring="replace_client_dataset")
            self._admit(round_, event, f"release of {nb}x{rows} representations")
            z, clipped = gaussian_release(z, noise_multiplier=sigma)
            self.clipped_rows += clipped
            self._record(round_, ex, event)
        payload = z.float().contiguous()
        if protect is not None:  # ckks: what leaves is the ciphertext (its bytes are digested)
            payload = protect(payload)
        digest, size = payload_digest(*(payload.payload_parts() if protect is not None else [payload]))
        self._log("egress", {"round": round_, "exchange": ex, "recipient": recipient,
                             "sha256": digest, "bytes": size})
        self.releases += 1
        return payload

    # -- client level: weight updates (DP-FedAvg, DESIGN §2.7) -------------------------
    @property
    def noises_updates(self) -> bool:
        """Whether this client adds client-level noise to its weight updates."""
        return self.settings.sigma_client is not None and self.settings.update_clip is not None

    def _update_event(self, parts: int) -> DpEventRecord:
        """``parts`` updates, each clipped to C, each one Gaussian mechanism of sensitivity
        2C (:func:`~fedmuscle_secure.dp.noise.update_sensitivity`) at the run's σ."""
        assert self.settings.sigma_client is not None and self.settings.update_clip is not None
        return DpEventRecord(guarantee=CLIENT, mechanism="gaussian",
                             noise_multiplier=self.settings.sigma_client, sample_rate=1.0,
                             steps=parts, sensitivity=update_sensitivity(self.settings.update_clip),
                             neighbouring="replace_client_dataset")

    def noisy_updates(self, round_: int, exchange: tuple[int, int | None],
                      updates: list[tuple[str, torch.Tensor]]) -> list[torch.Tensor]:
        """``protection: plain`` with update noise: every part's update (name, values)
        L2-clipped to C (a non-finite one as zero: :meth:`_clipped_update`), then
        N(0, (σ·2C)²) per coordinate; admitted before anything is drawn (may raise
        :class:`PrivacyBudgetExceeded`, recording the refusal) and recorded as one event of
        ``len(updates)`` steps. float64 out."""
        event = self._update_event(len(updates))
        self._admit(round_, event, f"release of {len(updates)} weight update(s)")
        std = event.noise_multiplier * event.sensitivity
        out = [self._clipped_update(part, u) + csprng_normal(u.shape, std=std, dtype=torch.float64)
               for part, u in updates]
        self._record(round_, [exchange[0], exchange[1]], event)
        return out

    def _clipped_update(self, part: str, update: torch.Tensor) -> torch.Tensor:
        """Under update noise: ``update`` L2-clipped to C, float64; a non-finite update
        (training diverged, or a server's crafted average made it) counts as zero, so the
        client still releases noise alone: whether and what it releases must not depend on
        its data, and an error would tell. Both facts are counted here, never in the ledger
        or a report (they carry no noise)."""
        u = update.to(torch.float64)
        if not bool(torch.isfinite(u).all()):
            self.nonfinite_updates += 1
            return torch.zeros_like(u)
        clipped, cut = clip_update(self.client, part, u, self.settings.update_clip, "release")
        self.clipped_updates += int(cut)
        return clipped

    def secagg_update_share(self, round_: int, exchange: tuple[int, int | None], part: str,
                            update: torch.Tensor, *, threshold: int, t_collude: int,
                            ) -> tuple[torch.Tensor, DpEventRecord]:
        """``protection: secagg`` with update noise: ``update`` clipped to C (a non-finite
        one as zero: :meth:`_clipped_update`) plus this client's share of the distributed
        noise, σ/√(t − t_c) · 2C per coordinate for a sum of threshold t where at most
        t_c = min(t_collude, t − 1) members collude (DESIGN §5.1). Admitted here, recorded
        with the masked input (:meth:`record_secagg_release` with the returned event)."""
        t_c = collusion_allowance(t_collude, threshold)
        event = self._update_event(1)
        self._admit(round_, event, "secure-sum release of a weight update")
        std = share_noise_multiplier(event.noise_multiplier, threshold, t_c) * event.sensitivity
        noisy = self._clipped_update(part, update) + csprng_normal(update.shape, std=std,
                                                                   dtype=torch.float64)
        return noisy, event

    def release_weights(self, round_: int, exchange: tuple[int, int | None],
                        payload: Sequence[torch.Tensor | bytes], samples: int, recipient: str,
                        **content: object) -> None:
        """Record a weight-sharing method's release (DESIGN §2.7): the egress of what left
        (``payload``: the shared parameters, or under ckks one part's ciphertexts) and of the
        averaging weight sent with them (``samples``: the training-set size without DP, 1
        under DP and in every sum); ``content``: what else the ledger says of it (the part,
        the protection). With update noise the weights are the known weights plus noised
        updates (:meth:`noisy_updates`, recorded before); under DP-SGD they are
        post-processing of the LocalUpdate's recorded steps."""
        digest, size = payload_digest(*payload)
        self._log("egress", {"round": round_, "exchange": [exchange[0], exchange[1]],
                             "recipient": recipient, "content": "weights", "samples": samples,
                             **content, "sha256": digest, "bytes": size})
        self.releases += 1

    # -- client level under secagg: distributed noise (DESIGN §5.1) ---------------------
    def secagg_release(self, round_: int, exchange: tuple[int, int | None], z: torch.Tensor, *,
                       threshold: int, t_collude: int) -> tuple[torch.Tensor, DpEventRecord | None]:
        """clip → this client's share of the distributed noise; (nb, B, d) in and out.

        Any sum the server can unmask has at least ``threshold`` inputs, of which at most
        ``t_collude`` may come from clients that collude (and subtract their own noise).
        Each client therefore adds noise multiplier σ/√(t − t_collude): the guaranteed
        remainder, (t − t_collude) shares, carries the target σ whatever the drops, and that
        σ is what the accountant records. The release is admitted here (may raise
        :class:`PrivacyBudgetExceeded`, recording the refusal) and recorded by
        :meth:`record_secagg_release` once the masked input exists, the point from which the
        server can learn a sum that contains it.
        """
        z, clipped = clip_rows(z, 1.0)
        self.clipped_rows += clipped
        sigma = self.settings.sigma_client
        if sigma is None:
            return z, None
        nb, rows = int(z.shape[0]), int(z.shape[1])
        event = DpEventRecord(guarantee=CLIENT, mechanism="gaussian", noise_multiplier=sigma,
                              sample_rate=1.0, steps=nb, sensitivity=representation_sensitivity(rows),
                              neighbouring="replace_client_dataset")
        self._admit(round_, event, f"secure-sum release of {nb}x{rows} representations")
        noisy, _ = gaussian_release(z, noise_multiplier=share_noise_multiplier(sigma, threshold, t_collude))
        return noisy, event

    def record_secagg_release(self, round_: int, exchange: tuple[int, int | None],
                              event: DpEventRecord | None, masked: torch.Tensor, *, group: int,
                              threshold: int, t_collude: int, clipped_values: int,
                              **content: object) -> None:
        """Record the release of a masked input (dp_event with the guaranteed σ, egress;
        ``content``: what the input holds beyond representations, e.g. a weight part)."""
        ex = [exchange[0], exchange[1]]
        if event is not None:
            self._record(round_, ex, event, distributed_noise={
                "share_noise_multiplier": share_noise_multiplier(event.noise_multiplier, threshold,
                                                                 t_collude),
                "threshold": threshold, "t_collude": t_collude, "group": group})
        digest, size = payload_digest(masked)
        self._log("egress", {"round": round_, "exchange": ex, "recipient": "server",
                             "protection": "secagg", "server_learns": f"sum over >= "
                             f"{min_group(threshold)} of {group} clients", "clipped_values": clipped_values,
                             **content, "sha256": digest, "bytes": size})
        self.releases += 1

    def abort_exchange(self, round_: int, exchange: tuple[int, int | None], reason: str,
                       released: bool) -> None:
        """The secagg exchange ended without a sum; a release already recorded for it stays
        counted (the client cannot see from its side whether others unmasked it)."""
        self._log("abort", {"round": round_, "exchange": [exchange[0], exchange[1]],
                            "reason": reason, "masked_input_sent": released})

    def sit_out(self, round_: int, exchange: tuple[int, int | None], reason: str) -> None:
        """The client did not release for an exchange it had already released for."""
        self._log("sit_out", {"round": round_, "exchange": [exchange[0], exchange[1]],
                              "reason": reason})

    # -- bookkeeping -------------------------------------------------------------------
    def end_round(self, round_: int) -> dict[str, float]:
        """Record ε at δ for both guarantees after this round; returns them."""
        out = {}
        for g, acc in self.accountants.items():
            rep = acc.report()
            out[g] = rep.epsilon
            if acc.events:
                self._log("epsilon", {"round": round_, "guarantee": g, "delta": rep.delta,
                                      "epsilon_rdp": rep.epsilon_rdp, "epsilon_prv": rep.epsilon_prv,
                                      "rdp_order": rep.rdp_order, "accountant": rep.accountant,
                                      "budget": self._budget(g)})
        return out

    def leave(self, round_: int, reason: str) -> None:
        self._log("leave", {"round": round_, "reason": reason})

    def left_in_ledger(self) -> dict | None:
        """The client's ``leave`` as its ledger records it (``{"round", "reason"}``), or None.
        A client that left stays gone after any restart, whatever a checkpoint says: its
        ledger would otherwise show spending after its own leave."""
        if self.ledger is None:
            return None
        leaves = [e["body"] for e in self.ledger.entries if e["kind"] == "leave"]
        return {"round": leaves[0]["round"], "reason": leaves[0]["reason"]} if leaves else None

    def record_report(self, round_: int, *, sent: list[str], withheld: list[str],
                      report_private_metrics: bool) -> None:
        """A round report left for the server: the names of the metrics it carried and of
        those kept at the client (DESIGN §4.4: the ledger says what was sent)."""
        self._log("report", {"round": round_, "recipient": "server", "sent": sent,
                             "withheld": withheld,
                             "report_private_metrics": report_private_metrics})

    def state_dict(self) -> dict:
        return {"accountants": {g: a.state_dict() for g, a in self.accountants.items()},
                "releases": self.releases, "clipped_rows": self.clipped_rows}

    def load_state_dict(self, state: dict) -> None:
        """Restore the accountants. With a ledger, the ledger is the source of truth: its
        events are replayed, so releases made after the checkpoint (by a run that then
        crashed) still count against the budget — they did leave the building."""
        self.clipped_rows = int(state["clipped_rows"])
        if self.ledger is None:
            for g, acc in self.accountants.items():
                acc.load_state_dict(state["accountants"][g])
            self.releases = int(state["releases"])
            return
        self.accountants = {g: PrivacyAccountant(guarantee=g, delta=self.settings.delta)
                            for g in (RECORD, CLIENT)}
        self.releases = 0
        for entry in self.ledger.entries:
            if entry["kind"] == "dp_event":  # from_dict ignores round and exchange
                event = DpEventRecord.from_dict(entry["body"])
                self.accountants[event.guarantee].record_event(event)
            elif entry["kind"] == "egress":
                self.releases += 1


def collusion_allowance(t_collude: int, threshold: int) -> int:
    """The colluders a sum of threshold t must tolerate: ``secagg.t_collude``, at most
    t − 1 (a head sum over a task smaller than t has a lower threshold; DESIGN §5.1)."""
    return min(t_collude, threshold - 1)


def share_noise_multiplier(sigma: float, threshold: int, t_collude: int) -> float:
    """Per-client noise multiplier so that any t − t_collude shares sum to variance σ²."""
    if not 0 <= t_collude < threshold:
        raise ValueError(f"t_collude={t_collude} must be in [0, threshold={threshold})")
    return sigma / math.sqrt(threshold - t_collude)
