"""``protection: ckks`` set up from a config (DESIGN §4 table, §4.3): the server holds no
secret key, and noise the modulus cannot hold is refused."""

from __future__ import annotations

import pytest
import torch

from fedmuscle_secure.crypto.ckks import decrypt_matrix
from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.messages import EncryptedRepresentations
from fedmuscle_secure.simulator import build_federation
from helpers.tiny import tiny_config


def test_server_holds_no_secret_key_and_counts_ciphertext_bytes():
    cfg = tiny_config(**{"muscle.method": "muscle_sum", "training.rounds": 1, "protection": "ckks"})
    fed = build_federation(cfg, make_split(cfg), "muscle_sum")
    client = fed.clients["a"]
    plan = fed.server.start_round(1)[0]
    client.training.run = lambda label, r: 0.0  # only the release matters here
    (release,) = client.handle(plan)
    assert isinstance(release, EncryptedRepresentations)
    with pytest.raises(ConfigError, match="secret key"):
        decrypt_matrix(fed.server.protection.context, release.z[0])
    decrypted = decrypt_matrix(client.protection.context, release.z[0])
    assert decrypted.shape == (cfg.muscle.batch_size, cfg.muscle.dim)
    assert torch.allclose(decrypted.norm(dim=1), torch.ones(cfg.muscle.batch_size, dtype=torch.float64),
                          atol=1e-5)
    from fedmuscle_secure.messages import payload_bytes

    assert payload_bytes(release) == sum(len(c) for c in release.payload_parts()) > 10 * 4 * 32 * 16
    fed.close()


def test_noise_too_large_for_the_ckks_modulus_is_refused_naming_the_parameter():
    from fedmuscle_secure.federation.ckks import ckks_parameters

    cfg = tiny_config(**{"muscle.method": "muscle_sum", "protection": "ckks",
                         "privacy": {"representation_noise": {"enabled": True, "noise_multiplier": 5.0}}})
    with pytest.raises(ConfigError) as exc:
        ckks_parameters(cfg, cfg.privacy.representation_noise.noise_multiplier)
    assert "ckks.coeff_mod_bit_sizes" in exc.value.field



@pytest.mark.parametrize("method", ["muscle_sum", "local"])
def test_a_ckks_deployment_sizes_its_wire_limits_from_its_parameters_whatever_the_method(method):
    """Both deployment processes decode under these limits; ``local`` under ``ckks`` starts
    too (it exchanges nothing, but its limits are the federation's)."""
    from fedmuscle_secure.federation.setup import federation_wire_limits

    cfg = tiny_config(**{"muscle.method": method, "protection": "ckks"})
    limits = federation_wire_limits(cfg)
    assert limits.ciphertexts >= 1
