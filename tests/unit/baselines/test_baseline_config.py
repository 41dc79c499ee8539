"""Config rules for the baselines: plain only, no representation noise where nothing
unit-norm is released, DP-SGD everywhere, and the deployment's refusal."""

import pytest

from fedmuscle_secure.config import validate_deployable
from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.methods import BASELINES
from helpers.tiny import tiny_config

NOISE = {"representation_noise": {"enabled": True, "noise_multiplier": 1.0}}
DPSGD = {"dp_sgd": {"enabled": True, "noise_multiplier": 1.0}}


@pytest.mark.parametrize("method", BASELINES)
@pytest.mark.parametrize("protection", ["secagg", "ckks"])
def test_baselines_are_plain_only(method, protection):
    with pytest.raises(ConfigError) as exc:
        tiny_config(**{"muscle.method": method, "protection": protection})
    assert exc.value.field == "muscle.method" and "plain" in str(exc.value)


@pytest.mark.parametrize("method", ["cofed", "feddf", "simclr", "pseudo_label"])
def test_representation_noise_refused_where_no_unit_rows_are_released(method):
    with pytest.raises(ConfigError) as exc:
        tiny_config(**{"muscle.method": method, "privacy": NOISE})
    assert exc.value.field == "privacy.representation_noise.enabled"


@pytest.mark.parametrize("method", BASELINES)
def test_dp_sgd_is_accepted_with_every_method(method):
    assert tiny_config(**{"muscle.method": method, "privacy": DPSGD}).muscle.method == method


@pytest.mark.parametrize("method", ["gram", "fedhenn"])
def test_representation_noise_accepted_for_representation_baselines(method):
    assert tiny_config(**{"muscle.method": method, "privacy": NOISE}).muscle.method == method


def test_group_baselines_do_not_need_m_below_n():
    cfg = tiny_config(**{"muscle.method": "feddf", "muscle.num_selected": 3})
    assert cfg.muscle.num_selected == 3
    with pytest.raises(ConfigError, match="M=3"):
        tiny_config(**{"muscle.method": "gram", "muscle.num_selected": 3})


def test_deployment_refuses_baselines_and_accepts_muscle():
    validate_deployable(tiny_config())
    for method in BASELINES:
        with pytest.raises(ConfigError) as exc:
            validate_deployable(tiny_config(**{"muscle.method": method}))
        assert exc.value.field == "muscle.method"
