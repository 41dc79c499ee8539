"""The model side of record-level DP-SGD (DESIGN §5.2): make a timm model Opacus-ready.

Two things Opacus does not do for timm models, done here:

* ``ModuleValidator.fix`` matches layer *types exactly*, so timm's ``BatchNormAct2d`` (a
  ``BatchNorm2d`` subclass with an activation inside, used by MobileNetV3 and RegNet) is
  neither flagged nor fixed: it would keep mixing the samples of a batch. It becomes
  ``GroupNorm → drop → act``. Any other batch-statistics layer is refused. A frozen
  backbone's batch norms (adapters, DESIGN §2.5) are kept: they run in eval mode, on their
  fixed statistics, so they mix nothing, and the pretrained normalisation survives.
* timm's ResNet blocks add the residual in place (``x += shortcut``) on the output of a
  hooked layer, which corrupts Opacus's per-sample gradients in ``hooks`` mode. Their
  forward is swapped for an out-of-place equivalent (cheaper than ``ew`` mode), and every
  ``inplace=True`` activation is made out of place. A probe then checks per-sample gradients
  against one-sample-at-a-time gradients and picks ``ew`` or refuses if they disagree.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable

import torch
from opacus.grad_sample import GradSampleModule
from opacus.grad_sample.gsm_exp_weights import GradSampleModuleExpandedWeights
from opacus.validators import ModuleValidator
from timm.layers.norm_act import BatchNormAct2d
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn

from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.models import ClientModel
from fedmuscle_secure.models.text import PAD_ID, TextEncoder

GRAD_SAMPLE_MODES: tuple[str, ...] = ("hooks", "ew")
_PROBE_RTOL = 1e-6  # the probe runs in float64: a real in-place bug is O(1) wrong
MODE_ATTR = "_dp_grad_sample_mode"
HOOK_WARNING = "Full backward hook is firing when gradients are computed with respect to module"
_PLAIN_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)

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


def _convert_batch_norms(model: nn.Module, held: set[int]) -> None:
    """Every batch norm → GroupNorm, except those ``held`` (ids) in eval mode by a frozen
    backbone: they use their fixed statistics, one sample at a time already."""
    def fn(m: nn.Module) -> nn.Module | None:
        if id(m) in held:
            return None
        if type(m) in _PLAIN_BATCH_NORMS or type(m) is BatchNormAct2d:
            return _group_norm_for(m)
        return None
    _replace_children(model, fn)


def _problems(model: nn.Module, held: set[int]) -> list[str]:
    """Every reason Opacus cannot train ``model`` privately, grouped by layer name (Opacus's
    own validators are run per layer, as ``ModuleValidator.validate`` does, to name them).
    ``held``: ids of frozen batch norms kept in eval mode, which are no problem."""
    found: dict[str, list[str]] = {}
    for name, m in model.named_modules():
        reasons = found.setdefault(f"{name or '<model>'} ({type(m).__name__})", [])
        trainable = any(p.requires_grad for p in m.parameters(recurse=False))
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in held:
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
    """Three random images at the model's input size, or, for a text encoder, three rows
    of random token ids with the first padded at its end (the padding mask is in play)."""
    g = torch.Generator().manual_seed(0)  # a probe of the architecture: no data, no secret
    if isinstance(model.backbone, TextEncoder):
        vocab = model.backbone.bert.get_input_embeddings().num_embeddings
        ids = torch.randint(1, vocab, (3, 8), generator=g)
        ids[0, 5:] = PAD_ID
        return ids
    conv = next((m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)), None)
    chans = conv.in_channels if conv is not None else 3
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
    dtype = x.dtype if x.is_floating_point() else torch.float64  # token ids stay integers
    probe = copy.deepcopy(model).to(dtype).train()
    for m in probe.modules():  # dropout draws per element, so it couples no two samples;
        if isinstance(m, nn.Dropout):  # off here so the single and batched passes agree
            m.p = 0.0
    if loss_fn is None:
        w = torch.randn(probe.head.out_features, generator=torch.Generator().manual_seed(1),
                        dtype=dtype)
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
            warnings.filterwarnings("ignore", message=HOOK_WARNING)
            loss_fn(gsm(x), slice(0, x.shape[0])).backward()
        worst, off = 0.0, set()
        for i, single in enumerate(singles):
            ref = math.sqrt(sum(float((b ** 2).sum()) for b in single if b is not None))
            ref = ref or 1e-30
            total = 0.0
            for (name, p), b in zip(named, single, strict=True):
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
    mode = getattr(model, MODE_ATTR, None)
    if mode is None:
        mode, why = _probe_mode(model)
        if mode is None:
            raise ValueError(f"no grad_sample_mode gives exact per-sample gradients: {why}")
    return mode


def make_private_model(model: ClientModel, *, client: str) -> ClientModel:
    """A copy of ``model`` that Opacus can train with exact per-sample gradients.

    BatchNorm (plain or timm's BatchNormAct2d) → GroupNorm (except in a frozen backbone,
    whose batch norms stay in eval mode with their fixed statistics, DESIGN §2.5), in-place
    activations and timm ResNet residual adds → out of place, then ``ModuleValidator.fix``
    for anything else it knows. Raises ``ConfigError`` naming the client and every offending layer otherwise.
    Use the returned model from here on (the input is left untouched).
    """
    how = ("choose another architecture for this client (one without batch-statistics or "
           "custom stateful layers, e.g. resnet10t, regnetx_002, vit_tiny_patch16_224) or "
           "turn DP-SGD off for it")
    fixed = copy.deepcopy(model).train()
    _convert_batch_norms(fixed, {id(m) for m in fixed.frozen_norms()})
    fixed = ModuleValidator.fix(fixed)  # whatever else Opacus knows how to replace
    problems = _problems(fixed, {id(m) for m in fixed.frozen_norms()})
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
    setattr(fixed, MODE_ATTR, mode)
    return fixed
