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
