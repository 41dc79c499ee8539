"""The federation's ``project.yaml``: read and validate it (``provision init --project``).

A project names the federation (the CA's O), the gRPC server (its CN and the hosts that
become its SANs), the organizations (certificate CN -> client id) and, optionally, the
validity in days of the CA, server and organization certificates and of each CRL.
:func:`parse_project` collects every problem and raises one :class:`ConfigError` naming
them all. The PKI built from a project is :mod:`fedmuscle_secure.provision.ca`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509

from fedmuscle_secure.crypto.identity import check_client_name
from fedmuscle_secure.errors import ConfigError, IdentityError, yaml_problem

__all__ = ["Organization", "Project", "ValidityDays", "load_project", "parse_project"]


@dataclass(frozen=True)
class ValidityDays:
    """Validity in days of the CA, server and organization certificates, and of each CRL."""

    ca: int = 3650
    server: int = 365
    org: int = 365
    crl: int = 30


@dataclass(frozen=True)
class Organization:
    """One member of the federation: its certificate CN and the client id it trains as."""

    name: str
    client_id: str


@dataclass(frozen=True)
class Project:
    """The federation ``project.yaml`` describes (validated by :func:`parse_project`)."""

    name: str
    server_name: str
    server_hosts: tuple[x509.GeneralName, ...]
    organizations: tuple[Organization, ...]
    validity: ValidityDays

    def to_dict(self) -> dict[str, Any]:
        """The resolved project as plain YAML-able data (``project.resolved.yaml``)."""
        return {"name": self.name,
                "server": {"name": self.server_name,
                           "hosts": [str(h.value) for h in self.server_hosts]},
                "organizations": [{"name": o.name, "client_id": o.client_id}
                                  for o in self.organizations],
                "validity_days": dict(self.validity.__dict__)}


_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_KEYS = {"<root>": {"name", "server", "organizations", "validity_days"},
         "server": {"name", "hosts"}, "validity_days": set(ValidityDays.__dataclass_fields__)}


def _host(host: Any) -> x509.GeneralName | str:
    """A SAN for ``host`` (IP address or DNS name), or the problem with it."""
    if not isinstance(host, str) or not host:
        return f"expected a DNS name or IP address string, got {host!r}"
    if ":" in host or all(c.isdigit() or c == "." for c in host):
        try:
            return x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            return f"{host!r} is not a valid IPv4/IPv6 address"
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_DNS_LABEL.match(label) for label in labels) \
            or labels[-1].isdigit():
        return (f"{host!r} is neither an IP address nor a DNS name (labels of 1-63 letters, "
                "digits and inner hyphens, separated by dots)")
    return x509.DNSName(host.rstrip("."))


def _name_problem(value: Any, limit: int = 64) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return f"expected a non-empty string, got {value!r}"
    return f"{value!r} is longer than {limit} characters (X.509 name limit)" \
        if len(value) > limit else None


def check_org(org: str, field: str) -> str:
    try:
        check_client_name(org)
    except IdentityError as exc:
        raise ConfigError(field, str(exc)) from None
    if len(org) > 64:
        raise ConfigError(field, f"{org!r} is longer than 64 characters (X.509 CN limit)")
    return org


def _parse_orgs(raw: Any, problems: list[tuple[str, str]]) -> list[Organization]:
    if not isinstance(raw, list) or not raw:
        problems.append(("organizations", (f"expected a non-empty list of {{name, client_id}}, "
                                          f"got {raw!r}")))
        return []
    orgs, seen = [], {"name": {}, "client_id": {}}
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) != {"name", "client_id"}:
            problems.append((f"organizations.{i}", (f"expected a mapping with exactly 'name' "
                                                   f"and 'client_id', got {item!r}")))
            continue
        ok = True
        for key in ("name", "client_id"):
            value = item[key]
            try:
                if not isinstance(value, str):
                    raise ConfigError(key, f"expected a string, got {value!r}")
                check_org(value, key)
            except ConfigError as exc:
                problems.append((f"organizations.{i}.{key}", str(exc).split(": ", 1)[1]))
                ok = False
                continue
            if value in seen[key]:
                problems.append((f"organizations.{i}.{key}", (f"duplicate {key} {value!r} "
                                 f"(also organizations.{seen[key][value]}.{key})")))
                ok = False
            seen[key].setdefault(value, i)
        if ok:
            orgs.append(Organization(item["name"], item["client_id"]))
    return orgs


def _unknown_keys(raw: dict, problems: list[tuple[str, str]]) -> None:
    sections = {"<root>": raw, "server": raw.get("server"),
                "validity_days": raw.get("validity_days")}
    for where, allowed in _KEYS.items():
        section = sections[where]
        for key in sorted(set(section) - allowed) if isinstance(section, dict) else ():
            path = key if where == "<root>" else f"{where}.{key}"
            problems.append((path, f"unknown field; expected one of {sorted(allowed)}"))


def _parse_server(server: Any, problems: list[tuple[str, str]]) -> tuple[dict, list]:
    """The server mapping ({} when it is not one) and its hosts as SANs."""
    hosts: list = []
    if not isinstance(server, dict):
        problems.append(("server", f"expected a mapping {{name, hosts}}, got {server!r}"))
        server = {}
    elif (p := _name_problem(server.get("name"))) is not None:
        problems.append(("server.name", p))
    raw_hosts = server.get("hosts") if server else []
    if not isinstance(raw_hosts, list) or not raw_hosts:
        if server:
            problems.append(("server.hosts", ("expected a non-empty list of DNS names and/or IP "
                                             f"addresses, got {raw_hosts!r}")))
        raw_hosts = []
    for i, host in enumerate(raw_hosts):
        san = _host(host)
        if isinstance(san, str):
            problems.append((f"server.hosts.{i}", san))
        elif san in hosts:
            problems.append((f"server.hosts.{i}", f"duplicate host {host!r}"))
        else:
            hosts.append(san)
    return server, hosts


def _parse_validity(vraw: Any, problems: list[tuple[str, str]]) -> dict[str, int]:
    """The valid ``validity_days`` entries (defaults filled in); a leaf may not outlive its CA."""
    vraw = vraw or {}
    if not isinstance(vraw, dict):
        problems.append(("validity_days", (f"expected a mapping {{ca, server, org, crl}} of "
                                          f"days, got {vraw!r}")))
        vraw = {}
    vals = {}
    for key in ValidityDays.__dataclass_fields__:
        value = vraw.get(key, getattr(ValidityDays, key))
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.append((f"validity_days.{key}", (f"expected a positive integer number of "
                                                     f"days, got {value!r}")))
        else:
            vals[key] = value
    for key in ("server", "org"):
        if key in vals and vals[key] > vals.get("ca", vals[key]):
            problems.append((f"validity_days.{key}", (f"{vals[key]} days exceeds validity_days.ca "
                             f"({vals['ca']}); expected a certificate that expires before its CA")))
    return vals


def parse_project(raw: Any, *, source: str = "project.yaml") -> Project:
    """Validate a project mapping, collecting every problem; raise one :class:`ConfigError`.

    Its ``field`` is the first problem's dotted path; its message lists them all, each
    with what was expected (DESIGN §13.3: validators collect and explain).
    """
    if not isinstance(raw, dict):
        raise ConfigError("<root>", f"{source} must be a YAML mapping, got {type(raw).__name__}")
    problems: list[tuple[str, str]] = []
    _unknown_keys(raw, problems)
    if (p := _name_problem(raw.get("name"), 60)) is not None:
        problems.append(("name", p))
    server, hosts = _parse_server(raw.get("server"), problems)
    orgs = _parse_orgs(raw.get("organizations"), problems)
    vals = _parse_validity(raw.get("validity_days"), problems)
    if problems:
        field, first = problems[0]
        more = "".join(f"\n  {f}: {m}" for f, m in problems[1:])
        extra = f" (and {len(problems) - 1} more problem(s):{more})" if more else ""
        exc = ConfigError(field, f"{first} [in {source}]{extra}")
        exc.problems = problems  # type: ignore[attr-defined]
        raise exc
    return Project(raw["name"], server["name"], tuple(hosts), tuple(orgs), ValidityDays(**vals))


def load_project(path: str | os.PathLike) -> Project:
    """Read and validate ``project.yaml``; errors name the file and field."""
    path = Path(path)
    if not path.is_file():
        state = "is not a file" if path.exists() else "does not exist"
        raise ConfigError("--project", f"{path} {state}; expected a project.yaml")
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError("--project", f"{path} is not valid YAML: {yaml_problem(exc)}") from None
    return parse_project(raw, source=str(path))
