"""The deployment processes set up logging (``-v``/``-q``) with :func:`logging.basicConfig`,
which does nothing once the root logger has a handler. Some libraries add one when they
are imported (opacus does), so building the CLI must not import them: otherwise ``client
-vv`` would silently print nothing but warnings."""

import subprocess
import sys


def test_building_the_cli_leaves_the_root_logger_bare():
    code = ("import logging, sys\n"
            "from fedmuscle_secure.cli.main import build_parser\n"
            "build_parser()\n"
            "print(len(logging.getLogger().handlers), 'opacus' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["0", "False"], out
