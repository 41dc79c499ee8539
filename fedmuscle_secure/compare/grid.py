"""The ``compare`` grid file (DESIGN §7): schema and expansion into cells.

A grid names a base experiment config, overrides deep-merged into it, seeds, a map of DP
levels (each a config override) and one or more ``grids:`` blocks, each a product over the
axes ``method`` × ``protection`` × ``dp`` × ``exchange``. Every cell runs with
``compare_local: false``; the local-training reference is a cell of its own per seed and per
DP-SGD setting (local training depends on neither protection, exchange nor representation
noise), shared by every cell with that seed and DP-SGD setting, and deduplicated.

Invalid cells (``parse_config`` raises) are reported at expansion time, each named.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedmuscle_secure.config import ExperimentConfig, dump_config, read_yaml, validate_model
from fedmuscle_secure.errors import ConfigError, yaml_problem
from fedmuscle_secure.experiment.rundir import config_digest, results_config
from fedmuscle_secure.federation.checks import parse_config, with_overrides

_SAFE = r"^[A-Za-z0-9_.+-]+$"
LOCAL = "local"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GridBlock(_Strict):
    """One product of axes; ``exchange`` defaults to the base config's exchange."""

    method: list[str] = Field(min_length=1)
    protection: list[str] = Field(default_factory=lambda: ["plain"], min_length=1)
    dp: list[str] = Field(default_factory=lambda: ["none"], min_length=1)
    exchange: list[str] | None = Field(default=None, min_length=1)
    overrides: dict[str, Any] = Field(default_factory=dict)


class GridSpec(_Strict):
    name: str = Field(min_length=1, pattern=_SAFE)
    base: str = Field(min_length=1)
    overrides: dict[str, Any] = Field(default_factory=dict)
    seeds: list[int] = Field(min_length=1)
    dp_levels: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"none": {}})
    grids: list[GridBlock] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_names(self) -> GridSpec:
        for name in self.dp_levels:
            if not re.match(_SAFE, name):
                raise ValueError(f"dp_levels.{name}: a level name must be filesystem-safe "
                                 f"(letters, digits, _ . + -)")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: duplicate seeds in {self.seeds}")
        for i, b in enumerate(self.grids):
            for axis in ("method", "protection", "dp", "exchange"):
                for j, v in enumerate(getattr(b, axis) or []):
                    if not re.match(_SAFE, v):
                        raise ValueError(f"grids.{i}.{axis}.{j}: {v!r} is not filesystem-safe")
            for j, lvl in enumerate(b.dp):
                if lvl not in self.dp_levels:
                    raise ValueError(f"grids.{i}.dp.{j}: unknown dp level {lvl!r}; expected one "
                                     f"of the dp_levels: {list(self.dp_levels)}")
        return self


@dataclass(frozen=True)
class Cell:
    """One experiment of the grid: its id (directory name), axes and resolved config."""

    id: str
    method: str
    protection: str
    dp: str
    exchange: str
    seed: int
    config: ExperimentConfig = field(repr=False, compare=False)
    ref: str | None = None          # id of the local cell this cell's Δ is computed against

    @property
    def is_local(self) -> bool:
        return self.method == LOCAL

    def meta(self) -> dict[str, Any]:
        return {"id": self.id, "method": self.method, "protection": self.protection,
                "dp": self.dp, "exchange": self.exchange, "seed": self.seed, "ref": self.ref}


@dataclass(frozen=True)
class Expansion:
    spec: GridSpec
    cells: list[Cell]                                     # locals first, then in grid order
    invalid: list[tuple[str, str]] = field(default_factory=list)   # (cell id, error)

    def by_id(self) -> dict[str, Cell]:
        return {c.id: c for c in self.cells}


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``: mappings merge key by key, the rest replaces."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_grid(raw: Any, *, source: str = "<grid>") -> GridSpec:
    return validate_model(GridSpec, raw, source)


def load_grid(path: str | Path) -> tuple[GridSpec, dict[str, Any]]:
    """The grid and the raw base config (``base`` resolved relative to the grid file)."""
    p = Path(path)
    spec = parse_grid(read_yaml(p, "grid"), source=str(p))
    base_path = (p.parent / spec.base) if not Path(spec.base).is_absolute() else Path(spec.base)
    if not base_path.is_file():
        raise ConfigError("base", f"base config {str(base_path)!r} (relative to the grid file) "
                          "does not exist")
    try:
        base = yaml.safe_load(base_path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError("base", f"{base_path} is not valid YAML: {yaml_problem(exc)}") from None
    if not isinstance(base, dict):
        raise ConfigError("base", f"{base_path} must be a YAML mapping")
    return spec, base


def _digest(cfg: ExperimentConfig) -> str:
    return config_digest(results_config(dump_config(cfg)), 8)


def _local_raw(cell_raw: dict[str, Any], seed: int) -> dict[str, Any]:
    """The local reference of a cell: same data, clients, training and DP-SGD; no protection,
    no representation noise, a fixed exchange (local training exchanges nothing)."""
    raw = copy.deepcopy(cell_raw)
    raw.setdefault("muscle", {})
    raw["muscle"]["method"] = LOCAL
    raw["muscle"]["exchange"] = "per_batch"
    raw["protection"] = "plain"
    priv = raw.setdefault("privacy", {})
    priv["representation_noise"] = {"enabled": False}
    priv["update_noise"] = {"enabled": False}
    if isinstance(priv.get("budget"), dict):
        priv["budget"].pop("client_epsilon", None)
    raw["seed"] = seed
    raw["compare_local"] = False
    return raw


def expand(spec: GridSpec, base: dict[str, Any]) -> Expansion:
    """All cells of the grid; a cell whose config is invalid is listed in ``invalid``."""
    root = deep_merge(base, spec.overrides)
    root["compare_local"] = False
    locals_: dict[str, Cell] = {}      # config digest -> local cell
    cells: dict[str, Cell] = {}
    digests: dict[str, str] = {}       # cell id -> config digest
    invalid: list[tuple[str, str]] = []

    def add(store: dict[str, Cell], cell: Cell) -> Cell:
        dig = _digest(cell.config)
        cid = cell.id
        if cid in digests and digests[cid] != dig:
            cid = f"{cell.id}__{dig}"   # same axes, different config (block overrides)
        if cid in store:
            return store[cid]
        cell = Cell(cid, cell.method, cell.protection, cell.dp, cell.exchange, cell.seed,
                    cell.config, cell.ref)
        digests[cid] = dig
        store[cid] = cell
        return cell

    for bi, block in enumerate(spec.grids):
        braw = deep_merge(root, block.overrides)
        exchanges = block.exchange or [None]
        for method, prot, dp, exch, seed in itertools.product(
                block.method, block.protection, block.dp, exchanges, spec.seeds):
            raw = deep_merge(braw, spec.dp_levels[dp])
            raw.setdefault("muscle", {})
            raw["muscle"]["method"] = method
            if exch is not None:
                raw["muscle"]["exchange"] = exch
            raw["protection"] = prot
            raw["seed"] = seed
            name = f"{method}__{prot}__{dp}__{exch or raw['muscle'].get('exchange', 'default')}__s{seed}"
            try:
                lcfg = parse_config(_local_raw(raw, seed), source=f"local reference of {name}")
                cfg = lcfg if method == LOCAL else parse_config(raw, source=name)
            except ConfigError as exc:
                invalid.append((name, f"grids.{bi}: {exc}"))
                continue
            dp_label = dp if lcfg.privacy.dp_sgd.enabled else "none"
            dig = _digest(lcfg)
            if dig not in locals_:
                lid = f"{LOCAL}__{dp_label}__s{seed}"
                locals_[dig] = add(cells, Cell(lid, LOCAL, "plain", dp_label, "-", seed, lcfg))
            ref = locals_[dig]
            if method == LOCAL:
                continue
            add(cells, Cell(f"{method}__{prot}__{dp}__{cfg.muscle.exchange}__s{seed}", method,
                            prot, dp, cfg.muscle.exchange, seed, cfg, ref.id))
    ordered = sorted(cells.values(), key=lambda c: not c.is_local)
    return Expansion(spec, ordered, invalid)


def with_settings(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The raw base config with ``--set`` overrides (dotted paths), checked as ``run --set``
    checks them (:meth:`ExperimentConfig.with_overrides` on the parsed base) and applied to
    the raw mapping, so the grid's own overrides still merge into what the file said."""
    if not overrides:
        return base
    resolved = with_overrides(parse_config(base, source="base"), overrides)
    full = resolved.model_dump(mode="json")
    out = copy.deepcopy(base)
    for dotted in overrides:
        node, ref = out, full
        *parents, leaf = dotted.split(".")
        for key in parents:
            k = int(key) if isinstance(ref, list) else key
            ref = ref[k]
            if isinstance(node, dict) and k not in node:
                node[k] = copy.deepcopy(ref)
            node = node[k]
        k = int(leaf) if isinstance(node, list) else leaf
        node[k] = copy.deepcopy(ref[k])
    return out


def expand_file(path: str | Path, *, allow_invalid: bool = False,
                overrides: dict[str, Any] | None = None) -> Expansion:
    """Load and expand a grid file; invalid cells raise a :class:`ConfigError` naming every one
    of them unless ``allow_invalid`` (then they are returned in ``invalid``). ``overrides``
    (``compare --set``) change the base config before the grid's own overrides apply."""
    spec, base = load_grid(path)
    base = with_settings(base, overrides or {})
    exp = expand(spec, base)
    if exp.invalid and not allow_invalid:
        lines = "\n".join(f"  {cid}: {err}" for cid, err in exp.invalid)
        raise ConfigError("grids", f"{len(exp.invalid)} cell(s) of {path} have an invalid config "
                          f"(pass --skip-invalid to run the others):\n{lines}")
    return exp
