"""The shipped architectures as small private models, and random image batches, for the
DP-SGD tests (unit: exact per-sample gradients, clipping, noise, refusal; end to end: whole
epochs of every architecture around a contrastive step)."""

from __future__ import annotations

import torch

from fedmuscle_secure.data.tasks import get_task
from fedmuscle_secure.models import ClientModel, build_client_model

# the architectures of configs/digits.yaml
SHIPPED = {
    "resnet10t": {},
    "mobilenetv3_small_050": {},
    "vit_tiny_patch16_224": {"patch_size": 4, "embed_dim": 96, "depth": 4, "num_heads": 3},
    "regnetx_002": {},
}
TASK = get_task("digit10")


def build_model(name: str) -> ClientModel:
    torch.manual_seed(0)
    return build_client_model(model=name, model_kwargs=SHIPPED[name], in_chans=1, image_size=16,
                              dim=16, num_outputs=10, projection="mlp", hidden=32, field="x")


def private_forms() -> dict[str, ClientModel]:
    """One private form (Opacus' layers) per architecture; tests deep-copy before they train."""
    from fedmuscle_secure.client.dp_sgd import make_private_model

    return {name: make_private_model(build_model(name), client=name) for name in SHIPPED}


def random_batch(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    return x, TASK.targets(torch.randint(0, 10, (n,), generator=g))
