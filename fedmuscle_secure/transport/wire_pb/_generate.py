"""Regenerate this package's code from ``proto/fedmuscle.proto`` (DESIGN §6).

Runs ``grpc_tools.protoc`` in-process with the proto folder as the only include path (so the
descriptor is named ``fedmuscle.proto`` wherever the checkout lives), then rewrites the grpc
module's ``import fedmuscle_pb2`` as a package-relative import: protoc assumes the module is
top-level, which it is not here. The output depends only on the ``.proto`` and the
``grpcio-tools`` version, which the ``dev`` extra pins for that reason.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

PROTO = Path(__file__).resolve().parents[3] / "proto" / "fedmuscle.proto"
PACKAGE_DIR = Path(__file__).resolve().parent
GENERATED = ("fedmuscle_pb2.py", "fedmuscle_pb2.pyi", "fedmuscle_pb2_grpc.py")
_ABSOLUTE_IMPORT = b"\nimport fedmuscle_pb2 as fedmuscle__pb2\n"
_RELATIVE_IMPORT = b"\nfrom . import fedmuscle_pb2 as fedmuscle__pb2\n"


def generate(out_dir: Path | str = PACKAGE_DIR, proto: Path | str = PROTO) -> list[Path]:
    """Write the generated files into ``out_dir``; returns their paths.

    Raises ``FileNotFoundError`` without a source checkout (the ``.proto`` is not installed)
    and ``RuntimeError`` when protoc fails or its output is not what this rewrite expects.
    """
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    proto = Path(proto).resolve()
    if not proto.is_file():
        raise FileNotFoundError(f"{proto}: the wire format's .proto (run from a source checkout)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        rc = protoc.main(["grpc_tools.protoc", f"-I{proto.parent}", f"--python_out={tmp}",
                          f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", str(proto)])
        if rc != 0:
            raise RuntimeError(f"protoc failed on {proto} (exit {rc})")
        grpc_module = Path(tmp) / "fedmuscle_pb2_grpc.py"
        text = grpc_module.read_bytes()
        if text.count(_ABSOLUTE_IMPORT) != 1:
            raise RuntimeError(f"{grpc_module.name}: protoc's import of fedmuscle_pb2 not found")
        grpc_module.write_bytes(text.replace(_ABSOLUTE_IMPORT, _RELATIVE_IMPORT))
        written = []
        for name in GENERATED:
            shutil.copyfile(Path(tmp) / name, out_dir / name)
            written.append(out_dir / name)
    return written
