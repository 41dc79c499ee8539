"""``python -m fedmuscle_secure.transport.wire_pb [OUT_DIR]``: regenerate the wire code (DESIGN §6)."""

from __future__ import annotations

import sys

from fedmuscle_secure.transport.wire_pb._generate import PACKAGE_DIR, generate

if __name__ == "__main__":
    for path in generate(sys.argv[1] if len(sys.argv) > 1 else PACKAGE_DIR):
        print(path)
