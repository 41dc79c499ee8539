"""``python -m fedmuscle_secure``: the ``fedmuscle-secure`` command."""

import sys

from fedmuscle_secure.cli.main import main

sys.exit(main())
