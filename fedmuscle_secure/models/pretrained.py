"""A backbone's starting weights (DESIGN §2.5): a client's own file, or timm's published
weights found in the local cache. Nothing is ever downloaded.

The weights go through timm's own loading (``pretrained=True`` with the state dict as the
``pretrained_cfg`` override), so timm's checkpoint filters apply (a ViT's position
embeddings resampled to the client's image size), and its first convolution is adapted to
the data's channels (RGB weights summed for grey images). The backbone has no classifier
(``num_classes=0``), so the file's classifier is dropped here and timm is told the weights
have none: timm then loads strictly, and any other key the architecture does not expect,
any key it lacks, or any shape it cannot take is a :class:`ConfigError` naming the field and
the file, before a single training step.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import timm
import torch
from huggingface_hub import try_to_load_from_cache
from timm.models import get_pretrained_cfg, load_state_dict

from fedmuscle_secure.errors import ConfigError

#: File types a weights file may have: safetensors, or a torch pickle read weights-only.
SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
#: The files timm reads from a Hugging Face repository without a file name of its own.
HF_FILES = ("model.safetensors", "pytorch_model.bin")
_SHOWN = 4  # keys named in an error; the count says how many more
_QUOTED = re.compile(r'"([^"]+)"')


def read_weights(path: Path, field: str) -> dict[str, torch.Tensor]:
    """The state dict in ``path``, read by timm (safetensors, or ``torch.load`` with
    ``weights_only=True``; a checkpoint's ``state_dict`` / ``model`` entry unwrapped)."""
    if not path.is_file():
        state = "is not a file" if path.exists() else "does not exist"
        raise ConfigError(field, f"{str(path)!r} {state}")
    if path.suffix not in SUFFIXES:
        raise ConfigError(field, f"{str(path)!r}: expected a {' / '.join(SUFFIXES)} weights file")
    try:
        state = load_state_dict(str(path), weights_only=True)  # never unpickle code
    except Exception as exc:  # noqa: BLE001 - safetensors, pickle and zip errors alike
        raise ConfigError(field, f"cannot read {str(path)!r} as a weights file "
                                 f"({type(exc).__name__}: {exc})") from None
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConfigError(field, f"{str(path)!r} is not a state dict: {_few(bad)} hold no tensor")
    return state


def hf_cache_dir() -> Path:
    """Where huggingface_hub keeps its downloads, read from the environment now (its own
    constant is fixed when it is imported)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "huggingface")
    return Path(home) / "hub"


def cached_weights(name: str, field: str) -> Path:
    """The file of timm's published weights for ``name`` (``arch`` or ``arch.tag``) in the
    Hugging Face cache, or timm's older torch-hub cache, looked up without any network."""
    cfg = get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise ConfigError(field, f"timm publishes no pretrained weights for {name!r}; give "
                                 "pretrained_file instead")
    looked: list[str] = []
    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        cache = hf_cache_dir()
        files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HF_FILES
        for file in files:
            found = try_to_load_from_cache(repo, file, cache_dir=cache, revision=revision or None)
            if isinstance(found, str):
                return Path(found)
        looked.append(f"{cache} (repository {repo}: {', '.join(files)})")
    if cfg.url:
        file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
        if file.is_file():
            return file
        looked.append(str(file))
    raise ConfigError(field, f"the weights of {name!r} are not in the local cache (looked in "
                             f"{'; '.join(looked)}) and are never downloaded: fetch them once "
                             "where the network is allowed (timm.create_model(name, "
                             "pretrained=True)) and copy the cache here, or give pretrained_file")


def create_pretrained(name: str, state: dict[str, torch.Tensor], *, kwargs: dict[str, Any],
                      image_size: int, source: Path, field: str) -> torch.nn.Module:
    """``timm.create_model(name, pretrained=True, **kwargs)`` with ``state`` as its weights,
    loaded strictly once the classifier is dropped (module docs)."""
    cfg = get_pretrained_cfg(name)
    classifiers = getattr(cfg, "classifier", None) or ()
    if isinstance(classifiers, str):
        classifiers = (classifiers,)
    drop = {f"{c}.{p}" for c in classifiers for p in ("weight", "bias")}
    state = {k: v for k, v in state.items() if k not in drop}
    if not state:  # timm would take an empty state dict for "none" and fetch its own
        raise ConfigError(field, f"{str(source)!r} holds no weights of {name!r}'s backbone "
                                 "(nothing but a classifier, or nothing)")
    _check_first_conv(cfg, state, int(kwargs.get("in_chans", 3)), source, field)
    # every other source timm knows is blanked: the state dict is the only place it may load
    # from, never the hub or a URL, whatever the file holds
    overlay = dict(state_dict=state, num_classes=0, label_offset=0, hf_hub_id=None, url=None,
                   file=None, custom_load=False)
    kw = dict(kwargs, pretrained=True, pretrained_cfg_overlay=overlay)
    try:
        try:
            return timm.create_model(name, img_size=image_size, **kw)
        except TypeError:  # this architecture has no img_size argument
            return timm.create_model(name, **kw)
    except RuntimeError as exc:
        raise ConfigError(field, f"{str(source)!r} does not fit {name!r}: "
                                 f"{mismatch_summary(str(exc))}") from None
    except Exception as exc:  # noqa: BLE001 - timm's loaders raise many kinds; name the file
        raise ConfigError(field, f"timm could not load {str(source)!r} into {name!r} "
                                 f"({type(exc).__name__}: {exc})") from None


def _check_first_conv(cfg: Any, state: dict[str, torch.Tensor], in_chans: int, source: Path,
                      field: str) -> None:
    """The stem weights timm adapts to the data's channels must be a 4-D convolution over 3
    (or already ``in_chans``) channels: anything else makes timm drop the key and load the
    rest *non-strictly*, so a file missing every other weight would pass."""
    names = getattr(cfg, "first_conv", None) or ()
    for conv in (names,) if isinstance(names, str) else names:
        w = state.get(f"{conv}.weight")
        if w is not None and (w.ndim != 4 or w.shape[1] not in (3, in_chans)):
            raise ConfigError(field, f"{str(source)!r}: {conv}.weight has shape "
                                     f"{'x'.join(map(str, w.shape)) or 'scalar'}, expected a "
                                     f"convolution over {' or '.join(map(str, sorted({3, in_chans})))} "
                                     "input channels")


def mismatch_summary(message: str) -> str:
    """torch's strict-load error, shortened: the first missing / unexpected keys and shape
    mismatches, each with its count."""
    parts = []
    for label, pattern in (("missing keys", r"Missing key\(s\) in state_dict: (.*)"),
                           ("unexpected keys", r"Unexpected key\(s\) in state_dict: (.*)")):
        line = re.search(pattern, message)
        if line:
            parts.append(f"{label} {_few(_QUOTED.findall(line.group(1)))}")
    shapes = re.findall(r"size mismatch for (\S+): copying a param with shape (torch.Size\(\[[^]]*\]\)) "
                        r"from checkpoint, the shape in current model is (torch.Size\(\[[^]]*\]\))",
                        message)
    if shapes:
        shown = [f"{k} (file {_dims(a)}, model {_dims(b)})" for k, a, b in shapes]
        parts.append(f"shape mismatches {_few(shown)}")
    return "; ".join(parts) if parts else message.strip().splitlines()[0]


def _dims(size: str) -> str:
    return "x".join(re.findall(r"\d+", size)) or "scalar"


def _few(items: list[str]) -> str:
    """The first few items and how many there are in all."""
    shown = ", ".join(items[:_SHOWN])
    more = f", ... ({len(items)} in all)" if len(items) > _SHOWN else f" ({len(items)})"
    return shown + more
