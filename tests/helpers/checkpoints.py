"""The checkpoint files a run directory holds for one method, by name, for tests that count
what is kept."""

from fedmuscle_secure.experiment.rundir import RunDir


def checkpoint_files(run: RunDir, method: str) -> list[str]:
    return sorted(p.name for p in run.checkpoint_dir(method).iterdir())

