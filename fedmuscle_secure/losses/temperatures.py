"""Temperatures and the α exponent γ of the Muscle loss (DESIGN §2.1).

The Muscle loss uses two temperature matrices over the N clients: τ (the N-model
temperatures, scaling the anchor-peer similarities) and τ' (the (N−1)-model ones).
Only their combination γ = 1/τ' − 1/τ enters log α, so the server needs γ, never τ'.
γ may be negative (τ' > τ up-weights tuples whose peers agree); γ = 0 (τ' = τ) turns
the loss into the sum of pairwise InfoNCE losses.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor

from fedmuscle_secure.errors import ConfigError

__all__ = ["check_positive", "gamma_from_temperatures", "pair_matrix"]


def check_positive(value: Tensor, field: str) -> None:
    """Raise ``ConfigError(field, ...)`` unless every entry of ``value`` is finite and > 0.

    Temperatures divide similarities, so a zero, negative or non-finite one makes every
    logit meaningless; refuse it where it enters instead of returning NaN losses.
    """
    detached = value.detach()
    bad = ~(torch.isfinite(detached) & (detached > 0))
    if bool(bad.any()):
        shown = detached.tolist()
        raise ConfigError(field, f"must be finite and > 0, got {shown}")


def gamma_from_temperatures(tau: Tensor, tau_prime: Tensor) -> Tensor:
    """Return γ = 1/τ' − 1/τ elementwise (DESIGN §2.1).

    ``tau`` and ``tau_prime`` must have the same shape (typically the N × N pair
    matrices from :func:`pair_matrix`) and be strictly positive.
    """
    tau = torch.as_tensor(tau)
    tau_prime = torch.as_tensor(tau_prime)
    check_positive(tau, "temperature")
    check_positive(tau_prime, "temperature_prime")
    if tau.shape != tau_prime.shape:
        raise ValueError(
            f"tau_prime: expected the shape of tau {tuple(tau.shape)}, got {tuple(tau_prime.shape)}"
        )
    return 1.0 / tau_prime - 1.0 / tau


def pair_matrix(value: float | list[list[float]], n: int, field: str) -> Tensor:
    """Build the N × N symmetric matrix of a per-pair quantity (a temperature).

    ``value`` is either one positive number used for every pair (the paper's default,
    τ = 0.2 everywhere) or a nested list of N rows of N positive numbers. The diagonal is
    never used by the loss but must be positive too, so that :func:`gamma_from_temperatures`
    stays finite on it; repeat any positive number there. All problems are collected and
    reported in one ``ConfigError(field, ...)``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(field, f"number of clients must be a positive int, got {n!r}")
    if isinstance(value, Real) and not isinstance(value, bool):
        number = float(value)
        if not (math.isfinite(number) and number > 0):
            raise ConfigError(field, f"must be a finite number > 0, got {value!r}")
        return torch.full((n, n), number, dtype=torch.float64)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(
            field, f"expected a number > 0 or an {n} x {n} nested list, got {type(value).__name__}"
        )

    problems: list[str] = []
    if len(value) != n:
        problems.append(f"expected {n} rows, got {len(value)}")
    rows: list[list[float]] = []
    for r, row in enumerate(value):
        if not isinstance(row, (list, tuple)):
            problems.append(f"row {r} is a {type(row).__name__}, expected a list of {n} numbers")
            continue
        if len(row) != n:
            problems.append(f"row {r} has {len(row)} entries, expected {n}")
        parsed: list[float] = []
        for c, entry in enumerate(row):
            if isinstance(entry, bool) or not isinstance(entry, Real):
                problems.append(f"[{r}][{c}] = {entry!r} is not a number")
                parsed.append(math.nan)
                continue
            number = float(entry)
            if not (math.isfinite(number) and number > 0):
                problems.append(f"[{r}][{c}] = {entry!r} must be finite and > 0")
            parsed.append(number)
        rows.append(parsed)
    if not problems:
        for r in range(n):
            for c in range(r + 1, n):
                if rows[r][c] != rows[c][r]:
                    problems.append(
                        f"not symmetric: [{r}][{c}] = {rows[r][c]} but [{c}][{r}] = {rows[c][r]}"
                    )
    if problems:
        raise ConfigError(field, "; ".join(problems))
    return torch.tensor(rows, dtype=torch.float64)
