"""Durable file-system steps shared by the ledger, the provisioned files and the run directory.

Every file that is replaced as a whole (keys, certificates, the CRL, the resolved project,
CKKS contexts) is written through :func:`write_atomic`, so a crash leaves either the old
file or the new one, never a torn mix that a later start would trust.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    """Make a rename or unlink in ``folder`` durable before the next step relies on it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` via a same-folder temp file (created with ``mode``) + rename.

    The temp file carries ``mode`` from its creation, so a private key is never readable by
    others even for an instant; it is fsync'd before the rename, and removed if anything
    fails, so no partial file is left behind.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
