"""LoRA adapters on a client's backbone (DESIGN §2.5), with ``peft``.

The adapters are injected into the backbone in place (``peft.inject_adapter_in_model``), so
the model keeps its own structure and state-dict names: an adapted layer's frozen weights
become ``<layer>.base_layer.*`` and its adapters ``<layer>.lora_A.default.*`` /
``lora_B.default.*``. Every other backbone weight is frozen (``requires_grad`` False).

The configured targets are resolved here to the exact layers they name, so that a target
matching nothing, or only layers LoRA cannot adapt, is a :class:`ConfigError` listing
layer names that would do, instead of whatever peft does with it.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from fedmuscle_secure.errors import ConfigError

#: Layers adapters are put on: what peft's LoRA and Opacus's per-sample gradients both handle.
ADAPTABLE = (nn.Linear, nn.Conv2d)
#: Default targets by architecture family, recognised by a layer name the family uses: a
#: transformer's fused attention input projection, a BERT encoder's query and value
#: projections, an MLP-Mixer's / MLP's two layers, a ResNet block's convolutions. The first
#: family whose marker names an adaptable layer wins.
FAMILY_TARGETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("qkv", ("qkv",)),
    ("query", ("query", "value")),  # BERT text encoders (models/text.py)
    ("fc1", ("fc1", "fc2")),
    ("layer1.0.conv1", ("conv1", "conv2", "conv3")),
)
ADAPTER_PREFIX = "lora_"
_SHOWN = 8


def adaptable_layers(backbone: nn.Module) -> dict[str, nn.Module]:
    """Every Linear / Conv2d layer of ``backbone`` by its full name."""
    return {n: m for n, m in backbone.named_modules() if n and type(m) in ADAPTABLE}


def _matches(name: str, target: str) -> bool:
    """peft's rule for a list of targets: the full name, or its last dotted parts."""
    return name == target or name.endswith("." + target)


def default_targets(backbone: nn.Module, model: str, field: str) -> list[str]:
    """The architecture family's targets (:data:`FAMILY_TARGETS`), or a ConfigError asking
    for ``targets`` with the layer names there are."""
    layers = adaptable_layers(backbone)
    for marker, targets in FAMILY_TARGETS:
        if any(_matches(n, marker) for n in layers):
            return list(targets)
    raise ConfigError(field, f"no default adapter targets for {model!r}: list the layers to "
                             f"adapt, e.g. {_names(layers)}")


def resolve_targets(backbone: nn.Module, targets: list[str], model: str,
                    field: str) -> list[str]:
    """The full names of the adaptable layers ``targets`` name; each must name one at least."""
    layers = adaptable_layers(backbone)
    chosen: list[str] = []
    for target in targets:
        hit = [n for n in layers if _matches(n, target)]
        if not hit:
            other = [n for n, _ in backbone.named_modules() if n and _matches(n, target)]
            why = (f"names only {type(backbone.get_submodule(other[0])).__name__} layers, which "
                   "LoRA does not adapt" if other else "matches no layer")
            raise ConfigError(field, f"{target!r} {why} of {model!r}; adaptable (Linear / "
                                     f"Conv2d) layers include {_names(layers)}")
        chosen.extend(n for n in hit if n not in chosen)
    return chosen


def _names(layers: dict[str, nn.Module]) -> str:
    """A few distinct short names of adaptable layers, as a user would write targets."""
    short = list(dict.fromkeys(n.rpartition(".")[2] for n in layers))
    return ", ".join(repr(s) for s in short[:_SHOWN]) + (" ..." if len(short) > _SHOWN else "")


def apply_lora(backbone: nn.Module, spec: dict[str, Any], *, model: str, field: str) -> nn.Module:
    """``backbone`` with LoRA adapters on the layers ``spec`` (an ``AdapterConfig`` as a
    dict) names, every other weight frozen. ``field`` is the config's ``adapter`` section."""
    # deferred: peft imports transformers (seconds); only clients with an adapter need it
    from peft import LoraConfig, inject_adapter_in_model

    if spec.get("kind", "lora") != "lora":
        raise ConfigError(f"{field}.kind", f"expected 'lora', got {spec.get('kind')!r}")
    targets = spec.get("targets")
    if targets is None:  # a default target may name no layer (conv3 of a basic block)
        wanted = default_targets(backbone, model, f"{field}.targets")
        names = [n for n in adaptable_layers(backbone) if any(_matches(n, t) for t in wanted)]
    else:
        names = resolve_targets(backbone, list(targets), model, f"{field}.targets")
    config = LoraConfig(r=int(spec.get("rank", 8)), lora_alpha=float(spec.get("alpha", 16.0)),
                        lora_dropout=float(spec.get("dropout", 0.0)), target_modules=names,
                        bias="none")
    adapted = inject_adapter_in_model(config, backbone)
    for name, p in adapted.named_parameters():
        p.requires_grad_(ADAPTER_PREFIX in name)
    return adapted
