"""``run_experiment`` refuses to overwrite a run directory or to resume it with another
config, naming the keys that differ; a start that fails a config check leaves nothing behind."""

import pytest

from fedmuscle_secure.errors import CheckpointError, ConfigError
from fedmuscle_secure.experiment.run import run_experiment
from helpers.tiny import tiny_config


def test_refuses_to_overwrite_and_to_resume_with_another_config(tmp_path):
    cfg = tiny_config(**{"training.rounds": 1, "compare_local": False})
    run_experiment(cfg, tmp_path / "r", progress=False)
    with pytest.raises(CheckpointError):
        run_experiment(cfg, tmp_path / "r", progress=False)
    with pytest.raises(CheckpointError, match=r"config differs .* \(in seed\)"):
        run_experiment(cfg.with_overrides(seed=1), tmp_path / "r", resume=True, progress=False)
    with pytest.raises(CheckpointError, match=r"\(in muscle\.dim, training\.rounds\)"):
        run_experiment(cfg.with_overrides(**{"training.rounds": 2, "muscle.dim": 8}),
                       tmp_path / "r", resume=True, progress=False)


def test_a_start_that_fails_a_config_check_leaves_no_run_directory(tmp_path):
    bad = tiny_config(**{"training.rounds": 1, "compare_local": False,
                         "data.test_size": 10**7})  # more than the dataset holds: the split refuses
    with pytest.raises(ConfigError, match="data.test_size"):
        run_experiment(bad, tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists()
    (tmp_path / "made").mkdir()
    with pytest.raises(ConfigError, match="data.test_size"):
        run_experiment(bad, tmp_path / "made", progress=False)
    assert (tmp_path / "made").is_dir() and not any((tmp_path / "made").iterdir())


def test_resume_of_a_run_that_never_ran_a_round_starts_it(tmp_path):
    from fedmuscle_secure.config import dump_config
    from fedmuscle_secure.experiment.rundir import RunDir

    cfg = tiny_config(**{"training.rounds": 1, "compare_local": False})
    RunDir(tmp_path / "r").start(dump_config(cfg))  # recorded, then stopped before round 1
    res = run_experiment(cfg, tmp_path / "r", resume=True, progress=False)
    assert set(res.final[cfg.muscle.method]) == {c.name for c in cfg.clients}


def test_a_failed_start_never_deletes_a_ledger_that_recorded_a_release(tmp_path):
    from fedmuscle_secure.config import dump_config
    from fedmuscle_secure.experiment.rundir import RunDir

    cfg = tiny_config(**{"training.rounds": 1, "compare_local": False})
    for entries, kept in ((['{"kind": "genesis"}'], False),
                          (['{"kind": "genesis"}', '{"kind": "egress"}'], True)):
        run = RunDir(tmp_path / f"r{len(entries)}")
        run.start(dump_config(cfg))
        (run.root / "ledger").mkdir()
        (run.root / "ledger" / "a.jsonl").write_text("\n".join(entries) + "\n")
        run.remove_unstarted(existed=False)
        assert run.root.exists() == kept


def test_a_config_that_spells_out_a_null_text_section_is_the_same_run():
    """dump_config leaves ``data.text`` out while it is null; a config written with
    ``text: null`` (or before the key existed) compares equal for resume and cell markers."""
    import yaml

    from fedmuscle_secure.config import dump_config
    from fedmuscle_secure.experiment.rundir import config_differences, results_config
    from helpers.tiny import tiny_config

    now = dump_config(tiny_config())
    raw = yaml.safe_load(now)
    assert "text" not in raw["data"]
    raw["data"]["text"] = None
    spelled = yaml.safe_dump(raw, sort_keys=False)
    assert config_differences(spelled, now) == []
    assert results_config(spelled) == results_config(now)
    raw["data"]["text"] = {"labelled": "x.jsonl"}
    assert config_differences(yaml.safe_dump(raw, sort_keys=False), now) == ["data.text.labelled"]


def test_a_config_recorded_before_a_setting_existed_is_the_same_run_and_the_same_cell(tmp_path):
    """A release that adds a setting (here ``privacy.update_noise``, as if the recorded
    config predates it) must not turn every finished run and ``compare`` cell into another
    config: the recorded config is read again under today's schema, where the new setting
    takes its default. A recorded value that differs still differs."""
    import yaml

    from fedmuscle_secure.compare.grid import Cell
    from fedmuscle_secure.compare.runner import config_sha, same_config
    from fedmuscle_secure.config import dump_config
    from fedmuscle_secure.experiment.rundir import config_differences

    cfg = tiny_config()
    now = dump_config(cfg)
    raw = yaml.safe_load(now)
    del raw["privacy"]["update_noise"]
    older = yaml.safe_dump(raw, sort_keys=False)
    assert config_differences(older, now) == []
    cell_dir = tmp_path / "cell"
    cell_dir.mkdir()
    (cell_dir / "config.resolved.yaml").write_text(older)
    cell = Cell(id="c", method="muscle", protection="plain", dp="none", exchange="per_batch",
                seed=7, config=cfg, ref=None)
    assert config_sha(older) != config_sha(now)
    assert same_config({"config_sha256": config_sha(older)}, cell, cell_dir)
    assert not same_config({"config_sha256": "0" * 16}, cell, cell_dir)  # marker of another file
    raw["training"]["rounds"] = 99
    other = yaml.safe_dump(raw, sort_keys=False)
    (cell_dir / "config.resolved.yaml").write_text(other)
    assert config_differences(other, now) == ["training.rounds"]
    assert not same_config({"config_sha256": config_sha(other)}, cell, cell_dir)
