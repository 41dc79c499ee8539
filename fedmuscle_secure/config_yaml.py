"""Reading a config: YAML files, ``--set`` overrides and pydantic's errors turned into
one-line :class:`ConfigError` s naming the field (DESIGN §7). Shared by the experiment
config and the compare grid."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from fedmuscle_secure.errors import ConfigError, yaml_problem


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``--set key=value`` pairs: the value is read as YAML (``3``, ``0.5``, ``true``,
    ``[60, 40, 60]``, ``null``), the key is a dotted path checked by
    :meth:`ExperimentConfig.with_overrides`."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--set", f"expected KEY=VALUE (e.g. training.rounds=3), got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"--set {key.strip()}", f"cannot read the value {text!r}") from None
    return out


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "<root>"


def validate_model(model: type[BaseModel], raw: Any, source: str) -> Any:
    """``model.model_validate(raw)`` with the first problem as a :class:`ConfigError` naming
    the field path (an unknown key first: a misspelt key also makes the real one missing)."""
    if not isinstance(raw, dict):
        raise ConfigError("<root>", f"{source} must be a YAML mapping, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = min(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        msg = err["msg"]
        field = _loc(err["loc"])
        if err["type"] == "extra_forbidden":
            msg = f"unknown key{_nearest_key(model, err['loc'])}"
        elif msg.startswith("Value error, ") and ":" in msg:
            field, _, msg = msg[len("Value error, "):].partition(": ")
        more = f" (and {len(exc.errors()) - 1} more problem(s))" if len(exc.errors()) > 1 else ""
        raise ConfigError(field, f"{msg}{_got(err)}{more}") from None


def _got(err: dict) -> str:
    """``; got VALUE`` for a scalar the user wrote; nothing for a whole section (a model
    validator's input is the config itself, which the message must not dump)."""
    value = err.get("input")
    if isinstance(value, dict | list) or err["type"] == "extra_forbidden":
        return ""
    text = repr(value)
    return f"; got {text if len(text) <= 80 else text[:77] + '...'}"


def _nearest_key(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """`` (did you mean 'training'?)`` for a misspelt key, from the fields of the section
    it sits in; the valid keys when none is close."""
    node: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(node, "model_fields", {}).get(part)
        ann = getattr(field, "annotation", None)
        args = getattr(ann, "__args__", ())  # list[ClientConfig] -> ClientConfig
        node = next((a for a in (ann, *args) if isinstance(a, type) and
                     issubclass(a, BaseModel)), None)
        if node is None:
            return ""
    keys = list(getattr(node, "model_fields", {}))
    close = difflib.get_close_matches(str(loc[-1]), keys, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f"; expected one of {keys}" if keys else ""


def read_yaml(path: str | Path, what: str = "config") -> Any:
    """The parsed YAML of ``path``; a missing file or bad YAML is a :class:`ConfigError`."""
    p = Path(path)
    if not p.is_file():
        state = "is not a file" if p.exists() else "does not exist"
        raise ConfigError(f"<{what}>", f"{what} file {str(p)!r} {state}")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"<{what}>", f"{p} is not valid YAML: {yaml_problem(exc)}") from None
