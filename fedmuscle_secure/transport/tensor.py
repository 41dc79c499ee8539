"""Tensors on the wire: explicit dtype / shape / little-endian bytes (DESIGN §6).

Part of :mod:`fedmuscle_secure.transport.codec`: a received ``Tensor`` is checked (allowed dtype, at
most :data:`MAX_NDIM` non-negative dimensions, byte length = shape × item size) and copied
into a fresh CPU tensor; nothing received is ever unpickled or ``torch.load``-ed.
"""

from __future__ import annotations

import numpy as np
import torch

from fedmuscle_secure.errors import ProtocolError
from fedmuscle_secure.transport.wire_pb import fedmuscle_pb2 as pb

__all__ = ["DTYPES", "MAX_NDIM", "tensor_from_proto", "tensor_to_proto"]

#: Wire name → (torch dtype, little-endian numpy dtype); nothing else is accepted.
DTYPES: dict[str, tuple[torch.dtype, np.dtype]] = {
    "float32": (torch.float32, np.dtype("<f4")),
    "float64": (torch.float64, np.dtype("<f8")),
    "int64": (torch.int64, np.dtype("<i8")),
}
_WIRE_NAME = {torch_dtype: name for name, (torch_dtype, _) in DTYPES.items()}
#: Tensors of this protocol have at most 4 dimensions; more than 32 is refused.
MAX_NDIM = 32


def _refuse(reason: str) -> ProtocolError:
    return ProtocolError("wire", "decode", reason)


def _unencodable(reason: str) -> ProtocolError:
    return ProtocolError("wire", "encode", reason)


def tensor_to_proto(t: torch.Tensor, out: pb.Tensor | None = None, *, where: str = "tensor",
                    ) -> pb.Tensor:
    """``t`` as dtype / shape / C-order little-endian bytes (into ``out`` if given)."""
    if not isinstance(t, torch.Tensor):
        raise _unencodable(f"{where}: expected a torch.Tensor, got {type(t).__name__}")
    name = _WIRE_NAME.get(t.dtype)
    if name is None:
        raise _unencodable(f"{where}: dtype {t.dtype} cannot travel; allowed: {sorted(DTYPES)}")
    array = t.detach().to("cpu").contiguous().numpy()
    out = pb.Tensor() if out is None else out
    out.dtype = name
    out.shape[:] = list(array.shape)
    out.data = array.astype(DTYPES[name][1], copy=False).tobytes()
    return out


def tensor_from_proto(p: pb.Tensor, *, where: str = "tensor") -> torch.Tensor:
    """A fresh CPU tensor from a received ``Tensor``, after checking dtype, shape and size."""
    if p.dtype not in DTYPES:
        raise _refuse(f"{where}: dtype {p.dtype!r} is not allowed; expected one of "
                      f"{sorted(DTYPES)}")
    np_dtype = DTYPES[p.dtype][1]
    shape = tuple(p.shape)
    if len(shape) > MAX_NDIM:
        raise _refuse(f"{where}: {len(shape)} dimensions, at most {MAX_NDIM} accepted")
    if any(d < 0 for d in shape):
        raise _refuse(f"{where}: negative dimension in shape {shape}")
    numel = 1
    for d in shape:
        numel *= d
    if numel * np_dtype.itemsize != len(p.data):
        raise _refuse(f"{where}: shape {shape} of {p.dtype} needs {numel * np_dtype.itemsize} "
                      f"bytes, got {len(p.data)}")
    try:
        array = np.frombuffer(p.data, dtype=np_dtype).reshape(shape)
        return torch.from_numpy(array.astype(np_dtype.newbyteorder("="), copy=True))
    except (ValueError, RuntimeError, OverflowError) as e:  # e.g. (0, 2**62): too big to index
        raise _refuse(f"{where}: shape {shape} cannot be built ({e})") from e
