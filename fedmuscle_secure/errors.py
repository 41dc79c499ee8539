"""One small exception hierarchy (DESIGN §13.3).

Every message names the field, file, peer or stage at fault and what was expected,
so a user can fix the input without reading a traceback.
"""

from __future__ import annotations


class FedMuscleError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(FedMuscleError):
    """A configuration value is missing, malformed or inconsistent.

    ``field`` is the dotted path of the offending value (``clients.2.model``).
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class DataError(FedMuscleError):
    """A data file is missing or does not have the expected layout.

    ``path`` names the file (or folder) at fault.
    """

    def __init__(self, path: str, message: str) -> None:
        self.path = str(path)
        super().__init__(f"{path}: {message}")


class ProtocolError(FedMuscleError):
    """A protocol message arrived that the receiving state machine cannot accept.

    ``peer`` is the sender's id, ``stage`` the receiver's current stage.
    """

    def __init__(self, peer: str, stage: str, message: str) -> None:
        self.peer = peer
        self.stage = stage
        super().__init__(f"peer {peer!r}, stage {stage!r}: {message}")


class CheckpointError(FedMuscleError):
    """A checkpoint cannot be read or does not match the run it should resume."""


class RunInterrupted(FedMuscleError):
    """A run stopped before its last round; its run directory can be resumed."""


class QuorumLost(FedMuscleError):
    """Too few clients are left for the configured protection (a secure sum over fewer than
    max(3, t) members would show each member the others' inputs): the run stops with this
    error rather than go on training nothing."""


class EncodingError(FedMuscleError):
    """A value cannot be fixed-point encoded without overflow (DESIGN §4.1)."""


class PrivacyBudgetExceeded(FedMuscleError):
    """A release would take a client past its configured (epsilon, delta) budget."""


class IdentityError(FedMuscleError):
    """A peer's identity (key, signature, certificate) does not verify."""


class LedgerError(FedMuscleError):
    """A privacy ledger or receipt log does not verify, or cannot be written (DESIGN §5.3, §5.4).

    ``kind`` names the failure (``malformed``, ``edited``, ``deleted``, ``reordered``,
    ``signature``, ``locked``, ``io``), ``seq`` the entry at fault when one is known.
    """

    def __init__(self, kind: str, seq: int | None, message: str) -> None:
        self.kind = kind
        self.seq = seq
        where = f" at seq {seq}" if seq is not None else ""
        super().__init__(f"ledger {kind}{where}: {message}")


def yaml_problem(exc: Exception) -> str:
    """A YAML parser error on one line: ``line 2, column 1: expected the node content, but
    found '<stream end>'``. PyYAML's own text spans several lines with a caret drawing,
    which breaks the one-line error a user reads (DESIGN §13.3)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    context = getattr(exc, "context", None)
    return f"{where}{problem}" + (f" ({context})" if context else "")
