"""Record-level DP-SGD in LocalUpdate (DESIGN §5.2).

The task phase (Algorithm 1, lines 16–20) is trained with Opacus: Poisson sampling,
per-sample clipping to norm C and Gaussian noise of std σ·C on the summed gradient. What the
client releases afterwards (representations of public data, contrastive updates driven by
public data and peers' messages) is post-processing of a DP encoder (§5.1, "What each
guarantee costs"); the caller composes the DP-SGD steps of every round in its own ledger from
``steps`` and ``sample_rate`` as this module reports them.

Two things Opacus does not do for timm models, done here:

* ``ModuleValidator.fix`` matches layer *types exactly*, so timm's ``BatchNormAct2d`` (a
  ``BatchNorm2d`` subclass with an activation inside, used by MobileNetV3 and RegNet) is
  neither flagged nor fixed: it would keep mixing the samples of a batch. It becomes
  ``GroupNorm → drop → act``. Any other batch-statistics layer is refused.
* timm's ResNet blocks add the residual in place (``x += shortcut``) on the output of a
  hooked layer, which corrupts Opacus's per-sample gradients in ``hooks`` mode. Their
  forward is swapped for an out-of-place equivalent (cheaper than ``ew`` mode), and every
  ``inplace=True`` activation is made out of place. A probe then checks per-sample gradients
  against one-sample-at-a-time gradients and picks ``ew`` or refuses if they disagree.
"""

from __future__ import annotations

import copy
import math
import os
import secrets
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from opacus.grad_sample import GradSampleModule
from opacus.grad_sample.gsm_exp_weights import GradSampleModuleExpandedWeights
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.validators import ModuleValidator
from timm.layers.norm_act import BatchNormAct2d
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedmuscle_secure.data.tasks import Task
from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.models import ClientModel

NoiseFn = Callable[[tuple[int, ...], float], torch.Tensor]

GRAD_SAMPLE_MODES: tuple[str, ...] = ("hooks", "ew")
_PROBE_RTOL = 1e-6  # the probe runs in float64: a real in-place bug is O(1) wrong
_MODE_ATTR = "_dp_grad_sample_mode"
# Opacus hooks the root module, whose input never requires grad: torch warns on every run
_HOOK_WARNING = "Full backward hook is firing when gradients are computed with respect to module"
# functorch (vmap, used for the ViT's cls_token/pos_embed) lacks a CPU attention batching rule
_VMAP_WARNING = "There is a performance drop because we have not yet implemented the batching rule"
_PLAIN_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


# --------------------------------------------------------------------------- noise


def urandom_gaussian(shape: tuple[int, ...], std: float) -> torch.Tensor:
    """N(0, std²) samples from OS entropy (Box–Muller on 53-bit uniforms, float64).

    The default noise source when the caller passes no ``noise_fn``: never the experiment
    seed, never torch's global generator (CONVENTIONS "Randomness").
    """
    n = math.prod(shape)
    if n == 0:
        return torch.zeros(shape, dtype=torch.float64)
    pairs = (n + 1) // 2
    bits = torch.frombuffer(bytearray(os.urandom(16 * pairs)), dtype=torch.int64)
    u = ((bits & ((1 << 53) - 1)).to(torch.float64) + 1.0) * 2.0 ** -53  # in (0, 1]
    radius = torch.sqrt(-2.0 * torch.log(u[:pairs]))
    angle = 2.0 * math.pi * u[pairs:]
    z = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)])[:n]
    return (z * std).reshape(shape)


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


# --------------------------------------------------------------------------- the model


class _OutOfPlaceBasicBlock(BasicBlock):
    """timm ``BasicBlock`` with ``x = x + shortcut`` instead of ``x += shortcut`` (§5.2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
        x = self.bn2(self.conv2(x))
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return self.act2(x + shortcut)


class _OutOfPlaceBottleneck(Bottleneck):
    """timm ``Bottleneck`` with an out-of-place residual add (§5.2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))
        x = self.bn3(self.conv3(x))
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return self.act3(x + shortcut)


_OUT_OF_PLACE = {BasicBlock: _OutOfPlaceBasicBlock, Bottleneck: _OutOfPlaceBottleneck}


def _group_count(channels: int) -> int:
    """GroupNorm groups: Opacus's gcd(32, C), halved until a group holds ≥ 4 channels, so
    that a narrow layer at 1×1 spatial size is not normalised to a constant."""
    g = math.gcd(32, channels)
    while g > 1 and channels // g < 4:
        g //= 2
    return g


def _group_norm_for(bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    gn = nn.GroupNorm(_group_count(bn.num_features), bn.num_features, eps=bn.eps, affine=bn.affine)
    if type(bn) is BatchNormAct2d:  # keep the activation (and dropout) the BN carried
        return nn.Sequential(gn, bn.drop, bn.act)
    return gn


def _replace_children(module: nn.Module, fn: Callable[[nn.Module], nn.Module | None]) -> None:
    for name, child in module.named_children():
        new = fn(child)
        if new is not None:
            setattr(module, name, new)
        else:
            _replace_children(child, fn)


def _convert_batch_norms(model: nn.Module) -> None:
    def fn(m: nn.Module) -> nn.Module | None:
        if type(m) in _PLAIN_BATCH_NORMS or type(m) is BatchNormAct2d:
            return _group_norm_for(m)
        return None
    _replace_children(model, fn)


def _problems(model: nn.Module) -> list[str]:
    """Every reason Opacus cannot train ``model`` privately, grouped by layer name (Opacus's
    own validators are run per layer, as ``ModuleValidator.validate`` does, to name them)."""
    found: dict[str, list[str]] = {}
    for name, m in model.named_modules():
        reasons = found.setdefault(f"{name or '<model>'} ({type(m).__name__})", [])
        trainable = any(p.requires_grad for p in m.parameters(recurse=False))
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            reasons.append("keeps batch statistics, so a sample's output depends on the "
                           "other samples of its batch, and it is no BatchNorm type GroupNorm "
                           "can replace")
        elif trainable and any(True for _ in m.buffers(recurse=False)):
            reasons.append("trainable layer with buffers (state that is not privatized)")
        if trainable and type(m) in ModuleValidator.VALIDATORS:
            reasons.extend(str(e) for e in ModuleValidator.VALIDATORS[type(m)](m))
    out = [f"{k}: {'; '.join(v)}" for k, v in found.items() if v]
    if not out:
        out = [f"<model>: {e}" for e in ModuleValidator.validate(model, strict=False)]
    return out


def _probe_batch(model: ClientModel) -> torch.Tensor:
    conv = next((m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)), None)
    chans = conv.in_channels if conv is not None else 3
    g = torch.Generator().manual_seed(0)  # a probe of the architecture: no data, no secret
    size = model.image_size
    return torch.randn(3, chans, size, size, generator=g, dtype=torch.float64)


def per_sample_gradient_error(model: ClientModel, x: torch.Tensor, *, grad_sample_mode: str,
                              loss_fn: Callable[[torch.Tensor, slice], torch.Tensor] | None = None,
                              ) -> float:
    """Largest relative error, over samples, between Opacus's per-sample gradients of
    ``model`` on batch ``x`` and the gradient of each sample computed alone.

    Works on a deep copy (``model`` keeps no hooks). ``loss_fn(output, rows)`` must be the
    *mean* over the batch of a per-sample loss; the default is a fixed random projection.
    A missing per-sample gradient counts as error ``inf``.
    """
    return _gradient_mismatch(model, x, grad_sample_mode, loss_fn)[0]


def _gradient_mismatch(model: ClientModel, x: torch.Tensor, mode: str,
                       loss_fn: Callable[[torch.Tensor, slice], torch.Tensor] | None,
                       ) -> tuple[float, list[str]]:
    """(largest relative error, the layers whose parameters' per-sample gradients are off:
    where the error shows, which need not be the layer that causes it)."""
    probe = copy.deepcopy(model).to(x.dtype).train()
    if loss_fn is None:
        w = torch.randn(probe.head.out_features, generator=torch.Generator().manual_seed(1),
                        dtype=x.dtype)
        loss_fn = lambda out, rows: (out * w).sum(-1).mean()
    named = [(n, p) for n, p in probe.named_parameters()
             if p.requires_grad and not n.startswith("projection.")]
    singles = []
    for i in range(x.shape[0]):
        probe.zero_grad(set_to_none=True)
        loss_fn(probe(x[i:i + 1]), slice(i, i + 1)).backward()
        singles.append([None if p.grad is None else p.grad.detach().clone() for _, p in named])
    probe.zero_grad(set_to_none=True)
    gsm_class = GradSampleModule if mode == "hooks" else GradSampleModuleExpandedWeights
    gsm = gsm_class(probe, batch_first=True, loss_reduction="mean")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_HOOK_WARNING)
            loss_fn(gsm(x), slice(0, x.shape[0])).backward()
        worst, off = 0.0, set()
        for i, single in enumerate(singles):
            ref = math.sqrt(sum(float((b ** 2).sum()) for b in single if b is not None))
            ref = ref or 1e-30
            total = 0.0
            for (name, p), b in zip(named, single):
                gs = getattr(p, "grad_sample", None)
                if b is None and gs is None:  # a parameter the task forward does not use
                    continue
                b = torch.zeros_like(p) if b is None else b
                d = math.inf if gs is None else float(((gs[i] - b) ** 2).sum())
                total += d
                if math.sqrt(d) > _PROBE_RTOL * ref:
                    off.add(name.rpartition(".")[0] or name)
            worst = max(worst, math.sqrt(total) / ref)
        return worst, sorted(off)
    finally:
        if mode == "hooks":
            gsm.remove_hooks()


def _probe_mode(model: ClientModel, modes: tuple[str, ...] = GRAD_SAMPLE_MODES,
                ) -> tuple[str | None, dict[str, str]]:
    """The first of ``modes`` whose per-sample gradients are exact on a probe batch, and
    why each mode tried before it was rejected."""
    x = _probe_batch(model)
    why: dict[str, str] = {}
    for mode in modes:
        try:
            err, off = _gradient_mismatch(model, x, mode, None)
        except Exception as exc:  # noqa: BLE001 - any failure means this mode cannot be used
            why[mode] = f"{type(exc).__name__}: {exc}"
            continue
        if err <= _PROBE_RTOL:
            return mode, why
        why[mode] = (f"per-sample gradients differ from single-sample gradients (rel. error "
                     f"{err:.2e}; parameters affected in: {', '.join(off)})")
    return None, why


def recommended_grad_sample_mode(model: ClientModel) -> str:
    """``"hooks"`` (fastest) when its per-sample gradients are exact for this model, else
    ``"ew"``; decided by ``make_private_model``'s probe (re-run for any other model)."""
    mode = getattr(model, _MODE_ATTR, None)
    if mode is None:
        mode, why = _probe_mode(model)
        if mode is None:
            raise ValueError(f"no grad_sample_mode gives exact per-sample gradients: {why}")
    return mode


def make_private_model(model: ClientModel, *, client: str) -> ClientModel:
    """A copy of ``model`` that Opacus can train with exact per-sample gradients.

    BatchNorm (plain or timm's BatchNormAct2d) → GroupNorm, in-place activations and timm
    ResNet residual adds → out of place, then ``ModuleValidator.fix`` for anything else it
    knows. Raises ``ConfigError`` naming the client and every offending layer otherwise.
    Use the returned model from here on (the input is left untouched).
    """
    how = ("choose another architecture for this client (one without batch-statistics or "
           "custom stateful layers, e.g. resnet10t, regnetx_002, vit_tiny_patch16_224) or "
           "turn DP-SGD off for it")
    fixed = copy.deepcopy(model).train()
    _convert_batch_norms(fixed)
    fixed = ModuleValidator.fix(fixed)  # whatever else Opacus knows how to replace
    problems = _problems(fixed)
    if problems:
        raise ConfigError("client " + client,
                          "DP-SGD (Opacus) cannot train this model: " + "; ".join(problems)
                          + f". Fix: {how}.")
    for m in fixed.modules():
        if type(m) in _OUT_OF_PLACE:
            m.__class__ = _OUT_OF_PLACE[type(m)]
        if getattr(m, "inplace", False) is True:
            m.inplace = False
    mode, why = _probe_mode(fixed)
    if mode is None:
        raise ConfigError("client " + client,
                          "Opacus's per-sample gradients are wrong for this model in every mode ("
                          + "; ".join(f"{k}: {v}" for k, v in why.items()) + f"). Fix: {how}.")
    setattr(fixed, _MODE_ATTR, mode)
    return fixed


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
    """LocalUpdate with DP-SGD (Opacus PrivacyEngine: Poisson sampling, per-sample clipping,
    Gaussian noise from ``noise_fn``, default OS entropy).

    ``model`` must come from :func:`make_private_model`. It stays the caller's ``ClientModel``
    (``represent``, ``encoder_parameters`` work as before); Opacus's per-sample hooks are on
    the model only inside :meth:`run`, so the contrastive phase may use its own optimizer
    freely. Keep one trainer per model for the whole run (its optimizer state is the DP
    Adam's); ``steps`` and ``sample_rate`` are what the caller's accountant must compose.
    """

    def __init__(self, model: ClientModel, task: Task, x: torch.Tensor, targets: torch.Tensor, *,
                 lr: float, weight_decay: float, config: DPSGDConfig,
                 noise_fn: NoiseFn | None = None) -> None:
        if x.shape[0] == 0 or x.shape[0] != targets.shape[0]:
            raise ConfigError("dp_sgd", f"expected a non-empty private shard with one target "
                                        f"per row, got {x.shape[0]} rows and "
                                        f"{targets.shape[0]} targets")
        recommended = getattr(model, _MODE_ATTR, None)
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
        self._x, self._targets = x, targets
        # the task forward never reaches the projection: it is not the DP optimizer's business
        self._params = [p for n, p in model.named_parameters()
                        if p.requires_grad and not n.startswith("projection.")]
        sampling = torch.Generator().manual_seed(secrets.randbits(63))  # secret, not the seed
        loader = DataLoader(TensorDataset(x, targets), batch_size=config.expected_batch_size,
                            generator=sampling)
        with warnings.catch_warnings():  # "Secure RNG turned off": our noise is noise_fn's
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            self._engine = PrivacyEngine(accountant="rdp")
        adam = torch.optim.Adam(self._params, lr=lr, weight_decay=weight_decay)
        self._module, self._optimizer, self._loader = self._engine.make_private(
            module=model, optimizer=adam, data_loader=loader,
            noise_multiplier=config.noise_multiplier, max_grad_norm=config.max_grad_norm,
            poisson_sampling=True, grad_sample_mode=config.grad_sample_mode)
        _install_noise_fn(self._optimizer, noise_fn if noise_fn is not None else urandom_gaussian)
        self._sampler = self._loader.batch_sampler
        self.sample_rate: float = float(self._sampler.sample_rate)
        self.disable_per_sample_hooks()

    @property
    def steps_per_epoch(self) -> int:
        """Noisy steps per epoch (Opacus's DPDataLoader: int(1 / sample_rate))."""
        return len(self._sampler)

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
                warnings.filterwarnings("ignore", message=_HOOK_WARNING)
                warnings.filterwarnings("ignore", message=_VMAP_WARNING)
                for _ in range(epochs):
                    total, seen = 0.0, 0
                    for idx in self._sampler:
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
        self._optimizer.step()
        return summed

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
