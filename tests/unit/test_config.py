from pathlib import Path

import pytest
import yaml

from fedmuscle_secure.cli.main import main
from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.federation.checks import load_config, parse_config
from helpers.paths import REPO
from helpers.tiny import tiny_config

DEFAULT = REPO / "configs" / "digits.yaml"


def _raw():
    return yaml.safe_load(DEFAULT.read_text())


def test_shipped_default_config_is_valid_and_heterogeneous():
    cfg = load_config(DEFAULT)
    assert len({c.model for c in cfg.clients}) >= 3
    assert len({c.task for c in cfg.clients}) >= 3
    assert cfg.muscle.temperature != cfg.muscle.temperature_prime  # gamma != 0 (§2.1)


BAD = [
    ("unknown model", lambda r: r["clients"][1].update(model="resnet_does_not_exist"), "clients.1.model"),
    ("M >= N", lambda r: r["muscle"].update(num_selected=len(r["clients"])), "muscle.num_selected"),
    ("B > public", lambda r: r["muscle"].update(batch_size=r["data"]["public_size"] + 1), "muscle.batch_size"),
    ("tau <= 0", lambda r: r["muscle"].update(temperature=0.0), "muscle.temperature"),
    ("tau' < 0", lambda r: r["muscle"].update(temperature_prime=-0.1), "muscle.temperature_prime"),
    ("unknown task", lambda r: r["clients"][0].update(task="segmentation"), "clients.0.task"),
    ("missing data path", lambda r: r["data"].update(dataset="cifar10", path="/nonexistent/cifar"), "data.path"),
    ("no data path", lambda r: r["data"].update(dataset="image_folder"), "data.path"),
    ("unknown key", lambda r: r["training"].update(roundz=3), "training.roundz"),
    ("wrong type", lambda r: r["training"].update(rounds="many"), "training.rounds"),
    ("duplicate client", lambda r: r["clients"][1].update(name=r["clients"][0]["name"]), "clients.1.name"),
]


@pytest.mark.parametrize("label,mutate,field", BAD, ids=[b[0] for b in BAD])
def test_bad_config_names_the_field(label, mutate, field):
    raw = _raw()
    mutate(raw)
    with pytest.raises(ConfigError) as exc:
        parse_config(raw)
    assert exc.value.field == field
    assert field in str(exc.value)


@pytest.mark.parametrize("label,mutate,field", BAD[:7], ids=[b[0] for b in BAD[:7]])
def test_cli_exits_2_on_bad_config(tmp_path, capsys, label, mutate, field):
    raw = _raw()
    mutate(raw)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert field in err
    assert not (tmp_path / "run").exists()


def test_overrides_are_validated():
    cfg = load_config(DEFAULT)
    assert cfg.with_overrides(seed=5).seed == 5
    with pytest.raises(ConfigError) as exc:
        cfg.with_overrides(**{"muscle.batch_size": 100000})
    assert exc.value.field == "muscle.batch_size"


def test_config_errors_suggest_the_key_and_never_dump_the_config():
    """A misspelt key names the nearest valid one; a rule over the whole config (duplicate
    client names) says what is wrong without printing the config back."""
    raw = _raw()
    raw["trainig"] = raw.pop("training")
    with pytest.raises(ConfigError, match=r"trainig: unknown key \(did you mean 'training'\?\)"):
        parse_config(raw)
    raw = _raw()
    raw["clients"][1]["name"] = raw["clients"][0]["name"]
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert str(err.value).startswith("clients.1.name: duplicate client name")
    assert "{" not in str(err.value) and len(str(err.value)) < 120


def test_digit_tasks_are_refused_on_other_datasets(tmp_path):
    raw = _raw()
    raw["data"].update(dataset="cifar10", path=str(tmp_path))
    with pytest.raises(ConfigError, match=r"clients\.0\.task: task 'coarse' is defined on the "
                                          r"digits' labels .* use 'classify'"):
        parse_config(raw)
    for c in raw["clients"]:
        c["task"] = "classify"
    parse_config(raw)


def test_num_selected_is_not_checked_where_secagg_does_not_use_it():
    """Under secagg the group is every surviving member; a three-organisation secagg
    federation with the default M = 3 is valid, the same federation in plain is not."""
    raw = _raw()
    raw["clients"] = raw["clients"][:3]
    raw["muscle"].update(method="muscle_sum", num_selected=3)
    raw.update(protection="secagg", secagg={"threshold": 2})
    parse_config(raw)
    raw.update(protection="plain")
    with pytest.raises(ConfigError, match="muscle.num_selected"):
        parse_config(raw)


def test_resume_without_out_picks_a_run_of_this_very_config(tmp_path, monkeypatch):
    """`run --resume` looks for runs/<name>-seed<seed>-* started with this config: neither
    another config sharing the name's prefix nor the same name with other settings."""
    import os
    import time as _time

    from fedmuscle_secure.cli.run import latest_run as _latest_run
    from fedmuscle_secure.config import dump_config

    monkeypatch.chdir(tmp_path)
    cfg = load_config(DEFAULT)
    other = cfg.with_overrides(name=f"{cfg.name}-dp")
    changed = cfg.with_overrides(**{"training.rounds": cfg.training.rounds + 1})
    for folder, c in ((f"{cfg.name}-seed{cfg.seed}-1", cfg),
                      (f"{other.name}-seed{cfg.seed}-2", other),
                      (f"{cfg.name}-seed{cfg.seed}-3", changed)):
        (tmp_path / "runs" / folder).mkdir(parents=True)
        (tmp_path / "runs" / folder / "config.resolved.yaml").write_text(dump_config(c))
        _time.sleep(0.01)
        os.utime(tmp_path / "runs" / folder)
    assert _latest_run(cfg) == Path("runs") / f"{cfg.name}-seed{cfg.seed}-1"
    assert _latest_run(cfg.with_overrides(seed=cfg.seed + 1)) is None
    assert main(["run", str(DEFAULT), "--seed", str(cfg.seed + 1), "--resume"]) == 2


@pytest.mark.parametrize("pair, says", [
    ("training.rounds=many", "training.rounds: Input should be a valid integer"),
    ("training.roundz=3", "training.roundz: unknown key (did you mean 'rounds'?)"),
    ("nosuch.key=1", "nosuch.key: no such setting"),
    ("clients.9.model=resnet18", "clients.9.model: no such setting"),
    ("rounds", "--set: expected KEY=VALUE"),
])
def test_set_overrides_are_validated_like_the_file(pair, says, capsys):
    assert main(["run", str(DEFAULT), "--set", pair]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err


def test_set_overrides_reach_the_resolved_config(tmp_path):
    from fedmuscle_secure.config import dump_config
    from helpers.tiny import tiny_config

    config = tmp_path / "tiny.yaml"
    config.write_text(dump_config(tiny_config(compare_local=False)))
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "-q", "--set", "training.rounds=1",
                 "--set", "muscle.dim=8"]) == 0
    resolved = load_config(out / "config.resolved.yaml")
    assert resolved.training.rounds == 1 and resolved.muscle.dim == 8


def test_pretrained_and_pretrained_file_exclude_each_other():
    raw = tiny_config().model_dump(mode="json")
    raw["clients"][1].update(pretrained=True, pretrained_file="w.safetensors")
    with pytest.raises(ConfigError) as exc:
        parse_config(raw)
    assert exc.value.field == "clients.1.pretrained_file" and "not both" in str(exc.value)


@pytest.mark.parametrize("adapter,field", [({"rank": 0}, "clients.0.adapter.rank"),
                                           ({"kind": "ia3"}, "clients.0.adapter.kind"),
                                           ({"targets": []}, "clients.0.adapter.targets"),
                                           ({"dropout": 1.0}, "clients.0.adapter.dropout")])
def test_adapter_settings_are_validated(adapter, field):
    raw = tiny_config().model_dump(mode="json")
    raw["clients"][0]["adapter"] = adapter
    with pytest.raises(ConfigError) as exc:
        parse_config(raw)
    assert exc.value.field == field


def test_adapter_dropout_is_refused_under_dp_sgd_and_allowed_without():
    raw = tiny_config().model_dump(mode="json")
    raw["clients"][0]["adapter"] = {"dropout": 0.1}
    parse_config(raw)  # no DP-SGD: fine
    raw["privacy"] = {"delta": 1e-5, "dp_sgd": {"enabled": True, "noise_multiplier": 1.0,
                                                 "expected_batch_size": 8}}
    with pytest.raises(ConfigError) as exc:
        parse_config(raw)
    assert exc.value.field == "clients.0.adapter.dropout" and "under DP-SGD" in str(exc.value)
