"""A backbone's starting weights (DESIGN §2.5): the client's own file or timm's weights from
the local cache, loaded through timm, checked against the architecture before any training,
and never downloaded."""

from __future__ import annotations

import socket

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.models import Weights, build_client_model
from fedmuscle_secure.models.pretrained import mismatch_summary

FIELD = "clients.0.pretrained_file"


def _timm(name: str, seed: int, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    if "vit" in name:
        kw.setdefault("img_size", 16)
    return timm.create_model(name, **kw)


def _save(model: torch.nn.Module, path, wrap: str | None = None) -> None:
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({wrap: state} if wrap else state, path)


def _client(name: str, weights: Weights | None, in_chans: int = 1):
    torch.manual_seed(123)  # another seed than the file's: random weights would differ
    return build_client_model(model=name, model_kwargs={}, in_chans=in_chans, image_size=16,
                              dim=8, num_outputs=3, projection="mlp", hidden=16,
                              field="clients.0.model", weights=weights)


def _file_state(path) -> dict[str, torch.Tensor]:
    """The file read without timm (the oracle)."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = torch.load(path, weights_only=True)
    return state.get("state_dict", state)


@pytest.mark.parametrize("name,head", [("test_vit", "head"), ("test_resnet", "fc")])
@pytest.mark.parametrize("suffix,wrap", [(".safetensors", None), (".pth", None),
                                          (".pt", "state_dict")])
def test_the_backbone_holds_the_files_weights(tmp_path, name, head, suffix, wrap):
    """Every backbone tensor (buffers included) equals the file's; the file's classifier
    (a 10-class head) is dropped, as the backbone has none."""
    path = tmp_path / f"w{suffix}"
    _save(_timm(name, 5, in_chans=1, num_classes=10), path, wrap)
    expected = _file_state(path)
    got = _client(name, Weights(path, FIELD)).backbone.state_dict()
    assert set(got) == set(expected) - {f"{head}.weight", f"{head}.bias"}
    for key, value in got.items():
        assert torch.equal(value, expected[key]), key
    assert not all(torch.equal(a, b) for a, b in zip(
        got.values(), _client(name, None).backbone.state_dict().values(), strict=True))


def test_a_file_of_another_architecture_names_missing_and_unexpected_keys(tmp_path):
    path = tmp_path / "resnet.safetensors"
    _save(_timm("test_resnet", 0, in_chans=1, num_classes=0), path)
    vit_keys = set(_timm("test_vit", 0, in_chans=1, num_classes=0).state_dict())
    file_keys = set(load_file(str(path)))
    with pytest.raises(ConfigError) as exc:
        _client("test_vit", Weights(path, FIELD))
    err = exc.value
    assert err.field == FIELD and "resnet.safetensors" in str(err) and "'test_vit'" in str(err)
    assert "missing keys cls_token" in str(err) or "missing keys pos_embed" in str(err)
    assert f"({len(vit_keys - file_keys)} in all)" in str(err)
    assert f"({len(file_keys - vit_keys)} in all)" in str(err)
    assert "\n" not in str(err)


def test_shape_mismatches_are_named_with_both_shapes(tmp_path):
    path = tmp_path / "wide.pth"
    _save(_timm("test_vit", 0, in_chans=1, num_classes=0, mlp_ratio=2.0), path)
    wide = torch.load(path, weights_only=True)
    model = _timm("test_vit", 0, in_chans=1, num_classes=0).state_dict()
    off = sorted(k for k in model if model[k].shape != wide[k].shape)
    assert off  # the oracle: fc1/fc2 of every block
    with pytest.raises(ConfigError) as exc:
        _client("test_vit", Weights(path, FIELD))
    text = str(exc.value)
    assert exc.value.field == FIELD and "shape mismatches" in text and "missing" not in text
    first = next(k for k in off if k in text)
    dims = "x".join(str(d) for d in wide[first].shape)
    assert f"{first} (file {dims}, model " in text


def test_mismatch_summary_reads_torchs_message():
    """The summary of a real strict-load error (torch's own words, made here)."""
    a, b = torch.nn.Linear(2, 3), torch.nn.Sequential(torch.nn.Linear(2, 4))
    with pytest.raises(RuntimeError) as exc:
        a.load_state_dict({**b.state_dict(), "extra": torch.zeros(1)})
    summary = mismatch_summary(str(exc.value))
    assert summary == ("missing keys weight, bias (2); unexpected keys 0.weight, 0.bias, extra (3)")


@pytest.mark.parametrize("content,says", [(None, "does not exist"),
                                          (b"not safetensors", "cannot read"),
                                          (b"\x80\x04junk", "cannot read")])
def test_a_missing_or_unreadable_file_is_a_config_error(tmp_path, content, says):
    path = tmp_path / ("w.safetensors" if content != b"\x80\x04junk" else "w.pth")
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=says) as exc:
        _client("test_resnet", Weights(path, FIELD))
    assert exc.value.field == FIELD and str(path) in str(exc.value)


def test_a_file_of_another_type_is_refused(tmp_path):
    path = tmp_path / "w.npz"
    path.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"expected a \.safetensors / \.pth"):
        _client("test_resnet", Weights(path, FIELD))


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """Empty Hugging Face and torch caches under tmp_path, and no network: any connection
    attempt fails the test."""
    for var in ("HF_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise AssertionError(f"network used: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield tmp_path
    assert not attempts


def test_pretrained_with_an_empty_cache_says_where_it_looked(offline_cache):
    with pytest.raises(ConfigError) as exc:
        _client("test_vit", Weights(None, "clients.0.pretrained"))
    text = str(exc.value)
    assert exc.value.field == "clients.0.pretrained"
    assert str(offline_cache / "hf" / "hub") in text and "timm/test_vit.r160_in1k" in text
    assert "never downloaded" in text and "pretrained_file" in text


def test_pretrained_reads_the_hugging_face_cache(offline_cache):
    """A cache laid out as huggingface_hub lays it out (refs/main → snapshot); the RGB
    weights of the published model are adapted to one channel by summing (timm's rule)."""
    repo = offline_cache / "hf" / "hub" / "models--timm--test_vit.r160_in1k"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    _save(_timm("test_vit", 9, in_chans=3, num_classes=1000), snapshot / "model.safetensors")
    published = load_file(str(snapshot / "model.safetensors"))
    got = _client("test_vit", Weights(None, "clients.0.pretrained")).backbone.state_dict()
    stem = "patch_embed.proj.weight"
    assert torch.allclose(got[stem], published[stem].sum(dim=1, keepdim=True))
    for key in set(got) - {stem}:
        assert torch.equal(got[key], published[key]), key


@pytest.mark.parametrize("keep", ["classifier", "nothing"])
def test_a_file_without_backbone_weights_is_refused_without_going_online(offline_cache, keep):
    """timm reads an empty state dict as "no weights given" and falls back to fetching its
    own: a file holding only a classifier (or nothing) must be an error, with no network."""
    path = offline_cache / "head.safetensors"
    full = _timm("resnet18", 0).state_dict()
    save_file({k: v.contiguous() for k, v in full.items() if k.startswith("fc.")}
              if keep == "classifier" else {}, str(path))
    with pytest.raises(ConfigError, match="holds no weights of 'resnet18''s backbone") as err:
        _client("resnet18", Weights(path, FIELD))
    assert err.value.field == FIELD


def test_a_stem_timm_cannot_adapt_is_refused_not_loaded_loosely(tmp_path):
    """A first-convolution weight that is not a 4-D convolution over 3 channels makes timm drop
    it and load everything else non-strictly: a file missing every other key would pass."""
    path = tmp_path / "stem.safetensors"
    save_file({"conv1.weight": torch.zeros(64, 27), "junk": torch.zeros(1)}, str(path))
    with pytest.raises(ConfigError, match=r"conv1.weight has shape 64x27, expected a "
                                          r"convolution over 1 or 3 input channels"):
        _client("resnet18", Weights(path, FIELD))
