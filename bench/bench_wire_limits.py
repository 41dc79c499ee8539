"""Memory a hostile oversize message costs the receiver, with and without the wire limits.

The message: a ``SecAggEnvelope`` carrying an ``UnmaskRequest`` whose ``survivors`` list
holds 12 million one-byte names (36 MB of protobuf), sent by a client. Each case runs in a
fresh Python process that reads the bytes from a file and then receives them; printed is
the growth of the process's peak resident set (``ru_maxrss``) while receiving, and the
ratio to the message size:

* ``parse, no checks``: the protobuf parser and the field decoder on the whole message,
  as the decoder did before the pre-parse scan (what any unchecked receiver pays);
* ``transport, derived limit``: the server's :class:`Inbound` for the config (derived
  ``max_payload_bytes``, caps, direction): refused while reassembling;
* ``... --max-payload-bytes 64 MiB``: the limit overridden above the message size, so the
  whole message is reassembled; the server's :class:`Inbound` refuses it by its direction
  (an ``UnmaskRequest`` travels server → client), a client's by the cap on ``survivors``
  (N names), both before parsing.

    python bench/bench_wire_limits.py [CONFIG]        # default configs/digits-secagg.yaml
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

NAMES = 12_000_000
CASES = ("parse, no checks", "server, derived limit", "server, --max-payload-bytes 64 MiB",
         "client, --max-payload-bytes 64 MiB")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, body: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(body)) + body


def hostile_payload() -> bytes:
    """The Envelope bytes, built without materialising 12 million Python strings."""
    from fedmuscle_secure.transport.wire_pb import fedmuscle_pb2 as pb

    head = pb.UnmaskRequest(recipient="a", instance_id=b"\x01" * 16).SerializeToString()
    request = head + _field(3, b"x") * NAMES                      # survivors: "x", "x", ...
    envelope = pb.SecAggEnvelope(client="a", round=1, epoch=0, batch=0).SerializeToString()
    return _field(9, envelope + _field(8, request))               # Envelope.secagg


def _peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(case: str, path: str, config: str) -> None:
    """Receive the payload in ``path`` as ``case`` says; print the peak growth in KiB."""
    from fedmuscle_secure.errors import ProtocolError
    from fedmuscle_secure.federation.checks import load_config
    from fedmuscle_secure.federation.setup import federation_wire_limits
    from fedmuscle_secure.transport.chunks import Chunk
    from fedmuscle_secure.transport.codec import _ENVELOPE_TYPE, Direction, _from_proto
    from fedmuscle_secure.transport.streams import Inbound, TransportOptions
    from fedmuscle_secure.transport.wire_pb import fedmuscle_pb2 as pb

    limits = federation_wire_limits(load_config(config))
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).digest()
    before, outcome = _peak_kib(), "accepted"
    try:
        if case == CASES[0]:
            env = pb.Envelope.FromString(data)
            field = env.WhichOneof("message")
            _from_proto(_ENVELOPE_TYPE[field], getattr(env, field), field)
        else:
            size = 1 << 20
            options = TransportOptions(max_payload_bytes=None if case == CASES[1] else 64 << 20)
            at_server = case.startswith("server")
            inbound = Inbound(options, limits, sender="a" if at_server else "server",
                              expect=Direction.TO_SERVER if at_server else Direction.TO_CLIENT)
            total = -(-len(data) // size)
            for i in range(total):  # chunks made one at a time, as they arrive
                inbound.add(Chunk(stream_id="a-0", index=i, total=total, sha256_of_whole=digest,
                                  data=data[i * size:(i + 1) * size]))
    except ProtocolError as exc:
        outcome = f"refused: {str(exc)[:90]}"
    print(f"{_peak_kib() - before}\t{outcome}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default="configs/digits-secagg.yaml")
    ap.add_argument("--child", nargs=2, metavar=("CASE", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.config)
        return
    from fedmuscle_secure.federation.checks import load_config
    from fedmuscle_secure.federation.setup import federation_wire_limits

    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    payload = hostile_payload()
    limit = federation_wire_limits(load_config(args.config)).max_payload_bytes
    print(f"config {args.config}: derived max_payload_bytes = {limit} bytes; hostile "
          f"UnmaskRequest of {len(payload)} bytes ({NAMES} one-byte survivor names)\n")
    print(f"{'case':36s} {'peak RSS growth':>16s} {'× message':>10s}  outcome")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "payload.bin"
        path.write_bytes(payload)
        for case in CASES:
            out = subprocess.run([sys.executable, __file__, args.config, "--child", case,
                                  str(path)], check=True, capture_output=True, text=True)
            kib, outcome = out.stdout.strip().splitlines()[-1].split("\t")
            mib = int(kib) / 1024
            print(f"{case:36s} {mib:12.1f} MiB {mib * 2**20 / len(payload):9.2f}×  {outcome}")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
