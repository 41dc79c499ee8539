"""Config checks that need a layer below the config (DESIGN §7): model and task names,
the temperature matrices, the fixed-point codec of secagg and the CKKS parameters.

:mod:`fedmuscle_secure.config` checks what the config alone decides; these rules need
``timm``, :mod:`~fedmuscle_secure.data`, :mod:`~fedmuscle_secure.losses` or
:mod:`~fedmuscle_secure.crypto`. Every entry point that loads a config for use goes
through :func:`load_config` / :func:`parse_config` here, so both kinds of
:class:`ConfigError` are raised on loading, before any run directory or file is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm

from fedmuscle_secure import config
from fedmuscle_secure.config import ExperimentConfig
from fedmuscle_secure.crypto.encoding import FixedPointCodec
from fedmuscle_secure.data.tasks import TASK_NAMES, task_dataset
from fedmuscle_secure.errors import ConfigError, EncodingError
from fedmuscle_secure.federation.ckks import validate_ckks
from fedmuscle_secure.losses.temperatures import gamma_from_temperatures, pair_matrix
from fedmuscle_secure.models.text import MINILM_CONFIG, TEXT_MODELS, is_text_model, text_config


def check_layers(cfg: ExperimentConfig) -> ExperimentConfig:
    """Raise the first :class:`ConfigError` of the layer rules; return ``cfg``."""
    _check_models_and_tasks(cfg)
    _check_temperatures(cfg)
    _check_codec(cfg)
    if cfg.protection == "ckks":
        # unit rows here; with representation noise the bound is checked again when the
        # noise is known (the federation's set-up)
        validate_ckks(cfg, noise_std=0.0)
    return cfg


def parse_config(raw: Any, *, source: str = "<config>") -> ExperimentConfig:
    """:func:`fedmuscle_secure.config.parse_config` and the layer rules."""
    return check_layers(config.parse_config(raw, source=source))


def load_config(path: str | Path) -> ExperimentConfig:
    """:func:`fedmuscle_secure.config.load_config` and the layer rules."""
    return check_layers(config.load_config(path))


def with_overrides(cfg: ExperimentConfig, overrides: dict[str, Any]) -> ExperimentConfig:
    """:meth:`ExperimentConfig.with_overrides` (``--set``) and the layer rules."""
    return check_layers(cfg.with_overrides(**overrides))


def _check_models_and_tasks(cfg: ExperimentConfig) -> None:
    texts = cfg.data.dataset == "text_files"
    for i, c in enumerate(cfg.clients):
        if texts or is_text_model(c.model):
            _check_text_client(i, c, texts, cfg.data.text)
        elif not timm.is_model(c.model):
            raise ConfigError(f"clients.{i}.model",
                              f"unknown timm model {c.model!r}; expected a name from "
                              "timm.list_models()")
        if c.task not in TASK_NAMES:
            raise ConfigError(f"clients.{i}.task",
                              f"unknown task {c.task!r}; expected one of {list(TASK_NAMES)}")
        _check_task_dataset(f"clients.{i}.task", c.task, cfg.data.dataset)


def _check_text_client(i: int, c: Any, texts: bool, text: Any) -> None:
    """Texts are read by the text encoders only, and they read nothing else (DESIGN §2.6);
    an encoder's settings fit the tokenizer and the texts' length."""
    field = f"clients.{i}.model"
    if not texts:
        raise ConfigError(field, f"{c.model!r} is a text encoder; it reads data.dataset "
                                 "'text_files', not images")
    if not is_text_model(c.model):
        raise ConfigError(field, f"data.dataset 'text_files' is read by the text encoders "
                                 f"{list(TEXT_MODELS)}, not by the image model {c.model!r}")
    if c.pretrained and c.model != "minilm":
        raise ConfigError(f"clients.{i}.pretrained", f"{c.model!r} has no published weights; "
                          "start it from random weights or a pretrained_file ('minilm' has them)")
    if c.model == "minilm" and text.tokenizer != "minilm":
        raise ConfigError("data.text.tokenizer", f"clients.{i} ({c.name!r}) is 'minilm', which "
                          "reads MiniLM's own WordPiece ids: set data.text.tokenizer to 'minilm' "
                          "(another tokenizer of the same size would feed it other words)")
    cfg = text_config(c.model, dict(c.model_kwargs),
                      MINILM_CONFIG["vocab_size"] if c.model == "minilm" else 2, field)
    if text.max_length > cfg["max_position_embeddings"]:
        raise ConfigError("data.text.max_length", f"{text.max_length} tokens exceed clients.{i}'s "
                          f"max_position_embeddings ({cfg['max_position_embeddings']})")


#: How a task refusal names the labels a dataset's own tasks are defined on.
_LABELS = {"digits": "the digits' labels 0..9", "shapes": "the shapes' latent cells"}


def _check_task_dataset(field: str, task: str, dataset: str) -> None:
    """A dataset-specific task (DESIGN §8) runs on its own dataset only."""
    home = task_dataset(task)
    if home is None or home == dataset:
        return
    usable = [t for t in TASK_NAMES if task_dataset(t) in (None, dataset)]
    hint = "'classify'" if usable == ["classify"] else f"one of {usable}"
    raise ConfigError(field, f"task {task!r} is defined on {_LABELS[home]} (DESIGN §8); with "
                             f"data.dataset {dataset!r} use {hint}")


def _check_temperatures(cfg: ExperimentConfig) -> None:
    """τ and τ' must be valid pair matrices over the N clients, with γ defined."""
    m, n = cfg.muscle, len(cfg.clients)
    tau = pair_matrix(m.temperature, n, "muscle.temperature")
    tau_p = pair_matrix(m.temperature_prime, n, "muscle.temperature_prime")
    gamma_from_temperatures(tau, tau_p)


def _check_codec(cfg: ExperimentConfig) -> None:
    """An explicit ``secagg.frac_bits`` must give a fixed-point codec whose group sum of N
    clipped values cannot overflow."""
    s = cfg.secagg
    if cfg.protection != "secagg" or s.frac_bits is None:
        return
    try:
        FixedPointCodec(clip=s.clip or 1.0, frac_bits=s.frac_bits, num_clients=len(cfg.clients))
    except EncodingError as exc:
        raise ConfigError("secagg.frac_bits", str(exc)) from None
