"""DP events: what ran, as the ledger records it and every accountant replays it (DESIGN §5.3).

:class:`DpEventRecord` is validated completely on construction; a bad field raises
:class:`~fedmuscle_secure.errors.ConfigError` naming it (and listing every other problem).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import dp_accounting
import numpy as np

from fedmuscle_secure.errors import ConfigError

__all__ = ["GUARANTEES", "MECHANISMS", "NEIGHBOURING", "DpEventRecord"]

GUARANTEES = ("record", "client")
MECHANISMS = ("poisson_gaussian", "gaussian")
#: The neighbouring relation each guarantee is stated under.
NEIGHBOURING = {"record": "add_remove_record", "client": "replace_client_dataset"}


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _event_problems(v: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every problem with an event's fields, as (field, why and what was expected)."""
    problems: list[tuple[str, str]] = []
    g, m, nb = v.get("guarantee"), v.get("mechanism"), v.get("neighbouring")
    if g not in GUARANTEES:
        problems.append(("guarantee", f"expected one of {GUARANTEES}, got {g!r}"))
    if m not in MECHANISMS:
        problems.append(("mechanism", f"expected one of {MECHANISMS}, got {m!r}"))
    if nb not in NEIGHBOURING.values():
        problems.append(("neighbouring",
                         f"expected one of {tuple(NEIGHBOURING.values())}, got {nb!r}"))
    sigma = v.get("noise_multiplier")
    if not (_is_real(sigma) and math.isfinite(sigma) and sigma > 0):
        problems.append(("noise_multiplier", (f"expected a finite number > 0, got {sigma!r} "
                         "(σ = 0 is no privacy; leave the mechanism out instead)")))
    q = v.get("sample_rate")
    q_ok = _is_real(q) and 0 < q <= 1
    if not q_ok:
        problems.append(("sample_rate", f"expected a number in (0, 1], got {q!r}"))
    steps = v.get("steps")
    if not (isinstance(steps, (int, np.integer)) and not isinstance(steps, bool) and steps >= 1):
        problems.append(("steps", f"expected an int >= 1, got {steps!r}"))
    s = v.get("sensitivity")
    if not (_is_real(s) and math.isfinite(s) and s > 0):
        problems.append(("sensitivity", f"expected a finite number > 0, got {s!r}"))
    if q_ok and m == "gaussian" and q != 1:
        problems.append(("sample_rate", (f"a 'gaussian' event is not subsampled: expected 1.0, "
                         f"got {q!r} (use 'poisson_gaussian' for a subsampled one)")))
    if g in NEIGHBOURING and nb in NEIGHBOURING.values() and NEIGHBOURING[g] != nb:
        problems.append(("neighbouring", (f"the {g!r} guarantee is stated for "
                         f"{NEIGHBOURING[g]!r} neighbours, got {nb!r}")))
    if m == "poisson_gaussian" and nb == "replace_client_dataset":
        problems.append(("mechanism", ("Poisson-subsampling amplification (Opacus, "
                         "dp-accounting) is analysed for add/remove neighbours only; "
                         "'poisson_gaussian' needs neighbouring 'add_remove_record'")))
    return problems


def _raise_problems(problems: list[tuple[str, str]], prefix: str = "") -> None:
    """Raise once, naming the first bad field and listing every other problem."""
    if not problems:
        return
    name = (lambda f: f"{prefix}.{f}" if prefix else f)
    field, why = problems[0]
    rest = "; ".join(f"{name(f)}: {w}" for f, w in problems[1:])
    raise ConfigError(name(field), why + (f" (also {rest})" if rest else ""))


@dataclass(frozen=True)
class DpEventRecord:
    """One mechanism that ran ``steps`` times (DESIGN §5.3); what the ledger records.

    ``guarantee`` "record": DP-SGD steps, neighbours differ by one private record
    (``neighbouring="add_remove_record"``, ``mechanism="poisson_gaussian"``, sensitivity
    ``max_grad_norm``). ``guarantee`` "client": representation releases, neighbours differ
    by one client's whole dataset (``"replace_client_dataset"``, ``"gaussian"`` with
    ``sample_rate=1.0``, sensitivity 2√B). ``noise_multiplier`` is the noise std divided by
    ``sensitivity``. Invalid field values raise :class:`ConfigError` naming the field.
    """

    guarantee: str
    mechanism: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    sensitivity: float
    neighbouring: str

    def __post_init__(self) -> None:
        _raise_problems(_event_problems(self.__dict__))
        for name in ("noise_multiplier", "sample_rate", "sensitivity"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "steps", int(self.steps))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (str, float, int)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, field_prefix: str = "") -> DpEventRecord:
        """Rebuild an event, validating every field; keys that are not fields (a ledger
        entry's ``round``, ``exchange``) are ignored. ``field_prefix`` (e.g.
        ``"events.3"``) is put in front of field names in errors."""
        if not isinstance(d, Mapping):
            raise ConfigError(field_prefix or "event",
                              f"expected a mapping of event fields, got {type(d).__name__}")
        names = [f.name for f in fields(cls)]
        problems = [(n, "missing") for n in names if n not in d]
        problems += [p for p in _event_problems(d) if p[0] in d]
        _raise_problems(problems, field_prefix)
        return cls(**{n: d[n] for n in names})

    def to_dp_event(self) -> dp_accounting.DpEvent:
        """The dp-accounting event: a unit-sensitivity Gaussian with this multiplier,
        Poisson-subsampled for DP-SGD, self-composed ``steps`` times."""
        gaussian = dp_accounting.GaussianDpEvent(self.noise_multiplier)
        if self.mechanism == "poisson_gaussian":
            return dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(self.sample_rate, gaussian), self.steps)
        return dp_accounting.SelfComposedDpEvent(gaussian, self.steps)
