"""The repository's root, for tests that read its files (docs, configs, pyproject.toml).

Computed once here, so a test reads the same root whatever its depth under ``tests/``.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
