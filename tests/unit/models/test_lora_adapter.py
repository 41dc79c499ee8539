"""LoRA adapters on a client's backbone (DESIGN §2.5): only the adapters and the two heads
train, in the task phase, the contrastive phase and under DP-SGD; the frozen backbone stays
bit-identical (batch-norm statistics included); checkpoints and the kept model round-trip."""

from __future__ import annotations

import copy

import pytest
import torch

from fedmuscle_secure.client.dp_sgd import make_private_model
from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.experiment.rundir import RunDir
from fedmuscle_secure.federation.clients import final_model_spec
from fedmuscle_secure.federation.setup import federation_setup
from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.models import Weights, build_client_model, load_final, save_final
from fedmuscle_secure.models.private import per_sample_gradient_error, recommended_grad_sample_mode
from fedmuscle_secure.simulator import build_federation, run_round
from helpers.tiny import tiny_config
from helpers.weights import trained_resnet

LORA = {"rank": 4, "alpha": 8.0}
CLIENTS = [  # a pretrained ResNet (batch norms) and a ViT with adapters, and one client without
    {"name": "a", "model": "test_resnet", "image_size": 16, "task": "coarse", "adapter": LORA},
    {"name": "b", "model": "test_vit", "image_size": 16, "task": "attributes", "adapter": LORA},
    {"name": "c", "model": "resnet10t", "image_size": 8, "task": "digit10"},
]
DP = {"dp_sgd": {"enabled": True, "noise_multiplier": 1.0, "expected_batch_size": 8}}


def _is_trainable(name: str) -> bool:
    """The oracle: an adapter weight, or the projection or task head."""
    return ".lora_A." in name or ".lora_B." in name or name.startswith(("projection.", "head."))


def _frozen(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every frozen tensor of the model: backbone parameters that do not train and buffers."""
    state = model.state_dict()
    return {k: v.clone() for k, v in state.items() if not _is_trainable(k)}


def _build(model: str, adapter: dict, image_size: int = 16, weights: Weights | None = None):
    torch.manual_seed(0)
    return build_client_model(model=model, model_kwargs={}, in_chans=1, image_size=image_size,
                              dim=8, num_outputs=3, projection="mlp", hidden=16,
                              field="clients.0.model", adapter=adapter, weights=weights,
                              adapter_field="clients.0.adapter")


@pytest.mark.parametrize("model,targets", [("test_vit", None), ("test_vit", ["qkv", "fc2"]),
                                           ("test_resnet", None), ("resnet10t", ["conv2"])])
def test_only_adapters_and_heads_require_grad(model, targets):
    m = _build(model, {**LORA, "targets": targets}, 8 if model == "resnet10t" else 16)
    names = {n: p.requires_grad for n, p in m.named_parameters()}
    assert all(trainable == _is_trainable(n) for n, trainable in names.items())
    adapted = {n.split(".lora_")[0] for n in names if ".lora_A." in n}
    assert adapted and all(n.rpartition(".")[2] in (targets or ["qkv", "conv1", "conv2",
                                                                 "conv3"]) for n in adapted)
    assert m.encoder_parameters() and all(p.requires_grad for p in m.encoder_parameters())


@pytest.mark.parametrize("targets,says", [
    (["nothing_here"], "'nothing_here' matches no layer of 'test_vit'"),
    (["attn"], "'attn' names only Attention layers, which LoRA does not adapt"),
])
def test_a_target_naming_no_adaptable_layer_lists_valid_names(targets, says):
    with pytest.raises(ConfigError) as exc:
        _build("test_vit", {**LORA, "targets": targets})
    assert exc.value.field == "clients.0.adapter.targets"
    assert says in str(exc.value) and "'qkv'" in str(exc.value) and "'fc1'" in str(exc.value)


def test_an_architecture_without_a_default_asks_for_targets():
    with pytest.raises(ConfigError, match="no default adapter targets for 'mobilenetv3_small_050'"
                                          r".*'conv_pw'") as exc:
        _build("mobilenetv3_small_050", LORA)
    assert exc.value.field == "clients.0.adapter.targets"


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "resnet.safetensors"
    trained_resnet(path)
    clients = copy.deepcopy(CLIENTS)
    clients[0]["pretrained_file"] = str(path)
    cfg = tiny_config(clients=clients, **{"training.rounds": 2})
    return cfg, make_split(cfg)


def _one_round(cfg, split):
    fed = build_federation(cfg, split, "muscle")
    before = {n: (_frozen(c.model), copy.deepcopy(c.model.state_dict()))
              for n, c in fed.clients.items()}
    run_round(fed, 1)
    return fed, before


@pytest.mark.parametrize("dp", [False, True], ids=["plain", "dp_sgd"])
def test_a_round_moves_the_adapters_and_leaves_the_backbone_bit_identical(split, dp):
    cfg, data = split
    cfg = cfg.with_overrides(privacy=DP) if dp else cfg
    fed, before = _one_round(cfg, data)
    for name in ("a", "b"):
        client = fed.clients[name]
        frozen, start = before[name]
        after = client.model.state_dict()
        assert all(torch.equal(after[k], v) for k, v in frozen.items())
        moved = {k for k in after if not torch.equal(after[k], start[k])}
        assert any(".lora_A." in k for k in moved) and any(".lora_B." in k for k in moved)
        assert any(k.startswith("head.") for k in moved)
        assert any(k.startswith("projection.") for k in moved)
        optimizers = [client.training.task_optimizer, client.contrastive.optimizer]
        if dp:
            optimizers.append(client.dpsgd._optimizer)
        for opt in optimizers:
            params = [p for g in opt.param_groups for p in g["params"]]
            assert params and all(p.requires_grad for p in params)
    # the ResNet's batch norms are kept (in eval mode) under DP-SGD, not made GroupNorm
    norms = fed.clients["a"].model.frozen_norms()
    assert norms and not any(isinstance(m, torch.nn.GroupNorm)
                             for m in fed.clients["a"].model.backbone.modules())
    assert all(not m.training for m in norms)
    without = fed.clients["c"].model
    assert all(p.requires_grad for p in without.parameters())


@pytest.mark.parametrize("model", ["test_resnet", "test_vit"])
def test_dp_sgd_per_sample_gradients_are_exact_with_adapters(model, tmp_path):
    """Opacus's per-sample gradients of the adapters and heads equal each sample's gradient
    computed alone (the frozen batch norms mix no samples), and the adapters get some."""
    weights = None
    if model == "test_resnet":
        trained_resnet(tmp_path / "w.safetensors")
        weights = Weights(tmp_path / "w.safetensors", "clients.0.pretrained_file")
    private = make_private_model(_build(model, LORA, weights=weights), client="a")
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    mode = recommended_grad_sample_mode(private)
    assert per_sample_gradient_error(private, x, grad_sample_mode=mode) <= 1e-6
    probe = private.double()
    (probe(x) ** 2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for n, p in probe.named_parameters() if ".lora_B." in n)


def test_checkpoint_and_kept_model_round_trip_with_adapters(split, tmp_path):
    cfg, data = split
    fed, _ = _one_round(cfg, data)
    run = RunDir(tmp_path / "run")
    run.create()
    run.save_checkpoint("muscle", 1, {n: c.state_dict() for n, c in fed.clients.items()}, keep=1)
    _, saved = run.latest_checkpoint("muscle")
    fresh = build_federation(cfg, data, "muscle")
    setup = federation_setup(cfg, data, "muscle")
    x = setup.public_x[:6]
    for name in ("a", "b"):
        old, new = fed.clients[name], fresh.clients[name]
        new.load_state_dict(saved[name])
        assert all(torch.equal(v, new.model.state_dict()[k])
                   for k, v in old.model.state_dict().items())
        assert new.training.task_optimizer.state_dict()["state"].keys() == \
            old.training.task_optimizer.state_dict()["state"].keys()
        spec = final_model_spec(cfg, name, setup, old)
        save_final(old.model, spec, tmp_path / name)
        kept = load_final(tmp_path / name)
        old.model.eval()
        with torch.no_grad():
            assert torch.equal(kept.model(x), old.model(x))
            assert torch.equal(kept.model.represent(x), old.model.represent(x))
        assert kept.spec["architecture"]["adapter"]["rank"] == LORA["rank"]

