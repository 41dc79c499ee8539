"""Record-level DP-SGD in LocalUpdate (DESIGN §5.2).

The task phase (Algorithm 1, lines 16–20) is trained with Opacus: Poisson sampling (the
masks drawn from the CSPRNG, :mod:`fedmuscle_secure.dp.sampling`, not from Opacus's
torch generator), per-sample clipping to norm C and Gaussian noise of std σ·C on the
summed gradient. What the
client releases afterwards (representations of public data, contrastive updates driven by
public data and peers' messages) is post-processing of a DP encoder (§5.1, "What each
guarantee costs"); the caller composes the DP-SGD steps of every round in its own ledger from
``steps`` and ``sample_rate`` as this module reports them.

The model is made Opacus-ready (BatchNorm → GroupNorm, out-of-place residuals, a probe of
per-sample gradients) by :mod:`fedmuscle_secure.models.private`.
"""

from __future__ import annotations

import math
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from opacus.grad_sample import GradSampleModule
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from torch.utils.data import DataLoader, TensorDataset

from fedmuscle_secure.data.tasks import Task
from fedmuscle_secure.dp.noise import csprng_normal
from fedmuscle_secure.dp.sampling import CsprngPoissonSampler
from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.models import ClientModel
from fedmuscle_secure.models.private import (  # noqa: F401  (re-exported: the front door)
    GRAD_SAMPLE_MODES,
    HOOK_WARNING,
    MODE_ATTR,
    _probe_mode,
    make_private_model,
    per_sample_gradient_error,
    recommended_grad_sample_mode,
)

NoiseFn = Callable[[tuple[int, ...], float], torch.Tensor]

# functorch (vmap, used for the ViT's cls_token/pos_embed) lacks a CPU attention batching rule
_VMAP_WARNING = "There is a performance drop because we have not yet implemented the batching rule"


# --------------------------------------------------------------------------- noise


def csprng_gaussian(shape: tuple[int, ...], std: float) -> torch.Tensor:
    """N(0, std²) float64 samples from the CSPRNG (:func:`~fedmuscle_secure.dp.noise.csprng_normal`,
    whose Gaussian reaches 38 sd): the default noise source when the caller passes no
    ``noise_fn``, never the experiment seed, never torch's global generator (DESIGN §13.2)."""
    return csprng_normal(shape, std=std, dtype=torch.float64)


def _install_noise_fn(optimizer: torch.optim.Optimizer, noise_fn: NoiseFn) -> None:
    """Replace the DPOptimizer's Gaussian noise by ``noise_fn`` (same maths as Opacus's
    ``add_noise``: p.grad = Σ clipped per-sample grads + N(0, (σC)²), one call per tensor)."""

    def add_noise(self) -> None:
        std = float(self.noise_multiplier * self.max_grad_norm)
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            summed = p.summed_grad
            if std > 0:
                noise = torch.as_tensor(noise_fn(tuple(summed.shape), std))
                if tuple(noise.shape) != tuple(summed.shape):
                    raise ValueError(f"noise_fn returned shape {tuple(noise.shape)}, "
                                     f"expected {tuple(summed.shape)}")
                p.grad = (summed + noise.to(device=summed.device, dtype=summed.dtype)).view_as(p)
            else:
                p.grad = summed.clone().view_as(p)
            _mark_as_processed(p.summed_grad)

    optimizer.add_noise = types.MethodType(add_noise, optimizer)


def _install_after_noise(optimizer: torch.optim.Optimizer, hook: Callable[[], object]) -> None:
    """Call ``hook`` after the DPOptimizer's ``scale_grad`` (noisy mean gradient in p.grad)."""
    scale = optimizer.scale_grad

    def scale_grad(self) -> None:
        scale()
        hook()

    optimizer.scale_grad = types.MethodType(scale_grad, optimizer)


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class DPSGDConfig:
    """DP-SGD parameters of one client's LocalUpdate (§5.2)."""

    noise_multiplier: float  # σ, already calibrated by the caller for a target ε
    max_grad_norm: float  # per-sample clipping norm C
    expected_batch_size: int  # Poisson sampling: Opacus uses q = 1 / ceil(n / B)
    grad_sample_mode: str = "hooks"  # or "ew"; see recommended_grad_sample_mode

    def __post_init__(self) -> None:
        sigma, c, b = self.noise_multiplier, self.max_grad_norm, self.expected_batch_size
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ConfigError("dp_sgd.noise_multiplier", f"expected a number >= 0, got {sigma!r}")
        if not (math.isfinite(c) and c > 0):
            raise ConfigError("dp_sgd.max_grad_norm", f"expected a number > 0, got {c!r}")
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ConfigError("dp_sgd.expected_batch_size", f"expected an integer >= 1, got {b!r}")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ConfigError("dp_sgd.grad_sample_mode",
                              f"expected one of {GRAD_SAMPLE_MODES}, got {self.grad_sample_mode!r}")


class DPSGDTrainer:
    """LocalUpdate with DP-SGD (Opacus PrivacyEngine: per-sample clipping, Gaussian noise from
    ``noise_fn``, default OS entropy; Poisson sampling from the CSPRNG at Opacus's rate).

    ``model`` must come from :func:`make_private_model`. It stays the caller's ``ClientModel``
    (``represent``, ``encoder_parameters`` work as before); Opacus's per-sample hooks are on
    the model only inside :meth:`run`, so the contrastive phase may use its own optimizer
    freely. Keep one trainer per model for the whole run (its optimizer state is the DP
    Adam's); ``steps`` and ``sample_rate`` are what the caller's accountant must compose.
    """

    def __init__(self, model: ClientModel, task: Task, x: torch.Tensor, targets: torch.Tensor, *,
                 lr: float, weight_decay: float, config: DPSGDConfig,
                 noise_fn: NoiseFn | None = None, fused: bool = True) -> None:
        if x.shape[0] == 0 or x.shape[0] != targets.shape[0]:
            raise ConfigError("dp_sgd", f"expected a non-empty private shard with one target "
                                        f"per row, got {x.shape[0]} rows and "
                                        f"{targets.shape[0]} targets")
        recommended = getattr(model, MODE_ATTR, None)
        if recommended is None:
            raise ConfigError("dp_sgd", "the model must come from make_private_model() (it makes "
                                        "the model Opacus-compatible and checks its gradients)")
        if config.grad_sample_mode != recommended:
            mode, why = _probe_mode(model, (config.grad_sample_mode,))
            if mode is None:
                raise ConfigError("dp_sgd.grad_sample_mode",
                                  f"{config.grad_sample_mode!r} is not exact for this model "
                                  f"({why[config.grad_sample_mode]}); use {recommended!r}")
        self.model = model
        self.task = task
        self.config = config
        self.nonfinite_samples = 0  # records whose gradient overflowed, contributing zero
        self._x, self._targets = x, targets
        # the task forward never reaches the projection: it is not the DP optimizer's business
        self._params = [p for n, p in model.named_parameters()
                        if p.requires_grad and not n.startswith("projection.")]
        loader = DataLoader(TensorDataset(x, targets), batch_size=config.expected_batch_size)
        with warnings.catch_warnings():  # "Secure RNG turned off": our noise is noise_fn's
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            self._engine = PrivacyEngine(accountant="rdp")
        adam = torch.optim.Adam(self._params, lr=lr, weight_decay=weight_decay, fused=fused)
        self._module, self._optimizer, self._loader = self._engine.make_private(
            module=model, optimizer=adam, data_loader=loader,
            noise_multiplier=config.noise_multiplier, max_grad_norm=config.max_grad_norm,
            poisson_sampling=True, grad_sample_mode=config.grad_sample_mode)
        _install_noise_fn(self._optimizer, noise_fn if noise_fn is not None else csprng_gaussian)
        #: runs after the noise is added and the sum scaled, before the update (FedProx's
        #: proximal gradient: it reads no private record, so it is post-processing)
        self.after_noise: Callable[[], None] | None = None
        _install_after_noise(self._optimizer, lambda: self.after_noise and self.after_noise())
        # Opacus's sampler fixes q = 1 / ceil(n / B) and the steps per epoch; it is never
        # iterated (it draws with torch.rand from an MT19937): the batches come from the CSPRNG
        opacus_sampler = self._loader.batch_sampler
        self.sample_rate: float = float(opacus_sampler.sample_rate)
        # the index batches of one epoch, drawn afresh on each pass (any iterable of index
        # lists with a length will do, e.g. a fixed schedule in a test)
        self.sampler = CsprngPoissonSampler(num_samples=int(x.shape[0]), sample_rate=self.sample_rate,
                                            steps=len(opacus_sampler))
        self.disable_per_sample_hooks()

    @property
    def steps_per_epoch(self) -> int:
        """Noisy steps per epoch (Opacus's DPDataLoader: int(1 / sample_rate))."""
        return len(self.sampler)

    @property
    def expected_batch_size(self) -> int:
        """What Opacus divides the noisy sum by: int(n · sample_rate) (≤ the configured B)."""
        return int(self._optimizer.expected_batch_size)

    def run(self, epochs: int) -> tuple[float, int]:
        """E epochs of Poisson-sampled noisy steps; (last epoch's mean loss, steps taken).

        An empty Poisson batch is still a step (zero clipped sum plus noise, as in Opacus),
        so ``steps == epochs * steps_per_epoch`` always: the number to account for.
        """
        self.model.train()
        self.enable_per_sample_hooks()
        steps, last = 0, 0.0
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=HOOK_WARNING)
                warnings.filterwarnings("ignore", message=_VMAP_WARNING)
                for _ in range(epochs):
                    total, seen = 0.0, 0
                    for idx in self.sampler:
                        total += self._step(idx)
                        seen += len(idx)
                        steps += 1
                    last = total / max(seen, 1)
        finally:
            self._optimizer.zero_grad(set_to_none=True)  # no grad, grad_sample or summed_grad left
            self.disable_per_sample_hooks()
        return last, steps

    def _step(self, idx: list[int]) -> float:
        """One noisy step on the rows ``idx``; returns the batch's summed loss."""
        self._optimizer.zero_grad(set_to_none=True)
        summed = 0.0
        if len(idx) == 0:  # no forward pass: the clipped sum is zero, the noise is not
            for p in self._params:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
        else:
            rows = torch.as_tensor(idx, dtype=torch.long)
            loss = self.task.loss(self._module(self._x[rows]), self._targets[rows])
            loss.backward()
            summed = float(loss.detach()) * len(idx)
            self._zero_nonfinite_samples()
        self._optimizer.step()
        return summed

    def _zero_nonfinite_samples(self) -> None:
        """A record whose per-sample gradient is not finite (its forward pass overflowed, e.g.
        on weights a server crafted) contributes zero: Opacus would clip it to C/inf · inf =
        NaN and make the whole noised sum, and the model, NaN, so whether one record is in
        the shard would show. Zero is a per-record value of norm ≤ C like any clipped
        gradient, so the step's sensitivity is unchanged. Counted in ``nonfinite_samples``."""
        bad = None
        for p in self._params:
            gs = getattr(p, "grad_sample", None)
            if isinstance(gs, torch.Tensor) and gs.numel():
                row = ~torch.isfinite(gs.reshape(gs.shape[0], -1)).all(dim=1)
                bad = row if bad is None else bad | row
        if bad is None or not bool(bad.any()):
            return
        for p in self._params:
            gs = getattr(p, "grad_sample", None)
            if isinstance(gs, torch.Tensor) and gs.numel():
                gs[bad] = 0.0
        self.nonfinite_samples += int(bad.sum())

    def disable_per_sample_hooks(self) -> None:
        """Take Opacus's hooks off the model: passes outside :meth:`run` (the contrastive
        phase, evaluation) compute no per-sample gradients and pay no hook overhead."""
        gsm = self._module
        if isinstance(gsm, GradSampleModule) and hasattr(gsm, "autograd_grad_sample_hooks"):
            gsm.remove_hooks()
        for p in self._params:
            p.grad_sample = None
            p.summed_grad = None
        for m in self.model.modules():  # activations a failed step may have left behind
            if hasattr(m, "activations"):
                del m.activations

    def enable_per_sample_hooks(self) -> None:
        """Put the hooks back (``run`` does this itself)."""
        gsm = self._module
        if isinstance(gsm, GradSampleModule) and not hasattr(gsm, "autograd_grad_sample_hooks"):
            for p in self.model.parameters():
                p._forward_counter = 0
            gsm.add_hooks(loss_reduction=gsm.loss_reduction, batch_first=gsm.batch_first,
                          force_functorch=gsm.force_functorch)

    def state_dict(self) -> dict:
        """The optimizer's state (Adam moments) for checkpoints; no sampling or noise state."""
        return self._optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._optimizer.load_state_dict(state)
