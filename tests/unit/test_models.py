import pytest
import torch

from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.models import build_client_model


@pytest.mark.parametrize("name,kwargs,size", [
    ("test_resnet", {}, 16),
    ("test_vit", {}, 16),
    ("mobilenetv3_small_050", {}, 16),   # pooled width differs from num_features
    ("resnet10t", {}, 8),
])
def test_encoder_gives_unit_norm_rows_and_task_logits(name, kwargs, size):
    torch.manual_seed(0)
    m = build_client_model(model=name, model_kwargs=kwargs, in_chans=1, image_size=size, dim=12,
                           num_outputs=5, projection="mlp", hidden=32, field="clients.0.model")
    x = torch.rand(6, 1, 8, 8)
    z = m.represent(x)
    assert z.shape == (6, 12)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(6))
    assert m(x).shape == (6, 5)
    enc = {id(p) for p in m.encoder_parameters()}
    assert all(id(p) not in enc for p in m.head.parameters())


def test_unknown_model_and_bad_kwargs_name_the_field():
    with pytest.raises(ConfigError) as exc:
        build_client_model(model="no_such_net", model_kwargs={}, in_chans=1, image_size=16, dim=4,
                           num_outputs=2, projection="mlp", hidden=8, field="clients.3.model")
    assert exc.value.field == "clients.3.model"
    with pytest.raises(ConfigError, match="clients.1.model"):
        build_client_model(model="vit_tiny_patch16_224", model_kwargs={"embed_dim": 96, "num_heads": 5}, in_chans=1,
                           image_size=16, dim=4, num_outputs=2, projection="linear", hidden=8,
                           field="clients.1.model")


@pytest.mark.parametrize("dp_sgd", [False, True])
def test_the_final_model_round_trips_through_its_files(tmp_path, dp_sgd):
    """What an organisation keeps (models.save_final) loads back (models.load_final) as the
    same model: same outputs on the same inputs, DP-SGD's replaced layers included."""
    from fedmuscle_secure.federation.clients import build_client, final_model_spec
    from fedmuscle_secure.federation.setup import federation_setup
    from fedmuscle_secure.federation.split import make_split
    from fedmuscle_secure.models import load_final, save_final
    from helpers.tiny import tiny_config

    over = {"compare_local": False}
    if dp_sgd:
        over["privacy"] = {"dp_sgd": {"enabled": True, "noise_multiplier": 1.0}}
    cfg = tiny_config(**over)
    split = make_split(cfg)
    setup = federation_setup(cfg, split, "muscle")
    client = build_client(cfg, split, "muscle", "a", setup)
    with torch.no_grad():  # weights that differ from a fresh initialisation
        for p in client.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    spec = final_model_spec(cfg, "a", setup, client)
    save_final(client.model, spec, tmp_path / "model")
    kept = load_final(tmp_path / "model" / "final.pt")
    assert kept.spec["dp_sgd"] is dp_sgd and kept.spec["task"] == "coarse"
    x = setup.public_x[:8]
    client.model.eval()
    with torch.no_grad():
        assert torch.equal(kept.model(x), client.model(x))
        assert torch.equal(kept.model.represent(x), client.model.represent(x))
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["final.json", "final.pt"]


def test_load_final_names_a_file_that_is_not_a_final_model(tmp_path):
    from fedmuscle_secure.errors import ConfigError
    from fedmuscle_secure.models import load_final

    (tmp_path / "final.json").write_text("{}")
    (tmp_path / "final.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="final.json"):
        load_final(tmp_path)
