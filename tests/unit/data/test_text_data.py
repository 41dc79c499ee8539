"""Texts from files (DESIGN §8.2): reading JSONL / CSV / plain text, labels to classes,
tokenization, the public file in the split, token-dropout views, and the config's refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedmuscle_secure.config_data import TextConfig
from fedmuscle_secure.data.splits import federated_split
from fedmuscle_secure.data.text import (
    class_indices,
    load_text_data,
    load_tokenizer,
    read_labelled,
    read_public,
    tokenize,
)
from fedmuscle_secure.data.views import random_view, token_dropout_view
from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.federation.checks import parse_config
from fedmuscle_secure.federation.split import make_split
from helpers.text_files import text_config_raw, write_corpus


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_jsonl_and_csv_give_the_same_records(tmp_path):
    rows = [{"text": "a b", "label": "x"}, {"text": "c, d", "label": "y"}, {"text": "e", "label": "x"}]
    j = _jsonl(tmp_path / "t.jsonl", rows)
    c = tmp_path / "t.csv"
    c.write_text('label,text\nx,a b\ny,"c, d"\nx,e\n')
    assert read_labelled(j, "text", "label") == read_labelled(c, "text", "label") == (
        ["a b", "c, d", "e"], ["x", "y", "x"])


def test_labels_become_classes_in_a_fixed_order():
    names, y = class_indices(["b", "a", "c", "a"])
    assert names == ("a", "b", "c") and y.tolist() == [1, 0, 2, 0]
    names, y = class_indices([10, 2, "9", 2])  # integers (or integer strings): numeric order
    assert names == ("2", "9", "10") and y.tolist() == [2, 0, 1, 0]


@pytest.mark.parametrize("line, expected", [
    ("{not json", "t.jsonl:2: not a JSON object"),
    ('["text", "label"]', "t.jsonl:2: expected a JSON object, got list"),
    ('{"label": "x"}', "t.jsonl:2: expected a non-empty string 'text'"),
    ('{"text": "  ", "label": "x"}', "t.jsonl:2: expected a non-empty string 'text'"),
    ('{"text": "a", "label": 1.5}', "t.jsonl:2: expected a string or integer 'label'"),
    ('{"text": "a"}', "t.jsonl:2: expected a string or integer 'label'"),
])
def test_a_bad_line_is_named_by_file_and_line(tmp_path, line, expected):
    path = _jsonl(tmp_path / "t.jsonl", [{"text": "ok", "label": "x"}, line, {"text": "z", "label": "y"}])
    with pytest.raises(ConfigError, match="data.text.labelled") as err:
        read_labelled(path, "text", "label")
    assert expected in str(err.value)


def test_one_label_or_no_text_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="at least two distinct labels"):
        read_labelled(_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": 1}] * 3), "text", "label")
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(ConfigError, match="holds no texts"):
        read_labelled(tmp_path / "e.jsonl", "text", "label")
    (tmp_path / "h.csv").write_text("body,label\nx,1\n")
    with pytest.raises(ConfigError, match="header row with a 'text' column"):
        read_labelled(tmp_path / "h.csv", "text", "label")


def test_public_texts_from_plain_lines(tmp_path):
    (tmp_path / "p.txt").write_text("first text\n second  \n")
    assert read_public(tmp_path / "p.txt", "text") == ["first text", "second"]
    (tmp_path / "q.txt").write_text("one\n   \ntwo\n")
    with pytest.raises(ConfigError, match=r"q.txt:2: empty text"):
        read_public(tmp_path / "q.txt", "text")


def test_tokenize_pads_with_zero_and_cuts_at_max_length(tmp_path):
    text = write_corpus(tmp_path, n=10)
    tok = load_tokenizer(text["tokenizer"], 6)
    ids = tokenize(tok, ["goal team", "bank bank bank bank bank bank bank bank", "zzz"])
    assert ids.dtype == np.int64 and ids.shape == (3, 6)
    vocab = tok.get_vocab()
    assert ids[0].tolist() == [vocab["goal"], vocab["team"], 0, 0, 0, 0]
    assert ids[1].tolist() == [vocab["bank"]] * 6  # cut
    assert ids[2].tolist() == [vocab["[UNK]"], 0, 0, 0, 0, 0]


def test_a_tokenizer_whose_id_zero_is_not_padding_is_refused(tmp_path):
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"hello": 0, "[UNK]": 1}, unk_token="[UNK]")).save(
        str(tmp_path / "tok.json"))
    with pytest.raises(ConfigError, match="data.text.tokenizer.*token id 0 is 'hello'"):
        load_tokenizer(str(tmp_path / "tok.json"), 8)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ConfigError, match="cannot read .* as a tokenizer.json"):
        load_tokenizer(str(tmp_path / "bad.json"), 8)


def test_the_public_file_is_the_only_source_of_public_rows(tmp_path):
    text = write_corpus(tmp_path, n=300, public=150)
    data = load_text_data(TextConfig(**text, max_length=12))
    split = federated_split(data.ids, data.y, num_clients=3, public_size=100, test_size=60,
                            shard_size=None, partition="dirichlet", seed=0,
                            public_pool=data.public_ids)
    as_rows = lambda a: {tuple(r) for r in a.tolist()}  # noqa: E731
    assert split.public_x.shape == (100, 12) and split.public_x.dtype == np.int64
    assert as_rows(split.public_x) <= as_rows(data.public_ids)
    # every labelled row is used for the test split or a shard: none went to the public set
    used = len(split.test_x) + sum(len(s.x_train) + len(s.x_val) for s in split.shards)
    assert used == 300
    with pytest.raises(ConfigError, match="data.public_size.*holds 150 texts"):
        federated_split(data.ids, data.y, num_clients=3, public_size=151, test_size=60,
                        shard_size=None, partition="dirichlet", seed=0, public_pool=data.public_ids)


def test_without_a_public_file_the_public_rows_are_labelled_rows_without_labels(tmp_path):
    text = write_corpus(tmp_path, n=300)
    split = make_split(parse_config(text_config_raw(text)))
    assert split.public_x.shape == (96, 16) and split.num_classes == 3
    assert sum(len(s.x_train) + len(s.x_val) for s in split.shards) == 300 - 96 - 90


def test_token_dropout_keeps_the_first_token_and_the_padding():
    ids = torch.randint(1, 50, (400, 20))
    ids[:, 15:] = 0
    view = token_dropout_view(ids, torch.Generator().manual_seed(0), p=0.25)
    assert torch.equal(view[:, 0], ids[:, 0]) and torch.equal(view[:, 15:], ids[:, 15:])
    changed = view[:, 1:15] != ids[:, 1:15]
    assert torch.all(view[:, 1:15][changed] == 0)
    assert abs(changed.float().mean().item() - 0.25) < 0.02  # 5,600 draws: std 0.006
    again = random_view(ids, torch.Generator().manual_seed(0), size=16)  # dispatch on dtype
    assert torch.equal(again, token_dropout_view(ids, torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("change, field, message", [
    (lambda r: r["data"].pop("text"), "data.text", "needs a data.text section"),
    (lambda r: r["data"]["text"].update(labelled="missing.jsonl"), "data.text.labelled", "does not exist"),
    (lambda r: r["data"]["text"].update(labelled="x.parquet"), "data.text.labelled", "expected a .jsonl / .csv"),
    (lambda r: r["data"]["text"].update(tokenizer="nope.json"), "data.text.tokenizer", "expected 'minilm' or"),
    (lambda r: r["data"].update(image_size=16), "data.image_size", "texts have no image size"),
    (lambda r: r["clients"][0].update(model="resnet10t"), "clients.0.model", "not by the image model"),
    (lambda r: r["clients"][0].update(model="no_such_model"), "clients.0.model", "not by the image model"),
    (lambda r: r["clients"][1].update(pretrained=True), "clients.1.pretrained", "no published weights"),
    (lambda r: r["clients"][2].update(task="digit10"), "clients.2.task", "use 'classify'"),
])
def test_text_configs_are_checked_on_loading(tmp_path, change, field, message):
    raw = text_config_raw(write_corpus(tmp_path, n=20))
    change(raw)
    with pytest.raises(ConfigError, match=message) as err:
        parse_config(raw)
    assert err.value.field == field


def test_image_configs_refuse_text_models_and_the_text_section(tmp_path):
    from helpers.tiny import tiny_config

    with pytest.raises(ConfigError, match="is a text encoder; it reads data.dataset 'text_files'"):
        tiny_config(clients=[{"name": n, "model": m, "task": "digit10"}
                             for n, m in (("a", "resnet10t"), ("b", "resnet10t"), ("c", "minilm"))])
    text = write_corpus(tmp_path, n=20)
    with pytest.raises(ConfigError, match="only data.dataset 'text_files' reads texts"):
        tiny_config(data={"dataset": "digits", "text": text})


def test_the_shipped_text_template_is_valid_once_it_names_files(tmp_path):
    import yaml

    from helpers.paths import REPO

    raw = yaml.safe_load((REPO / "configs" / "text.yaml").read_text())
    with pytest.raises(ConfigError, match="data.text.labelled: 'data/texts/labelled.jsonl' does not"):
        parse_config(raw)
    text = write_corpus(tmp_path, n=20, public=10)
    raw["data"]["text"].update(labelled=text["labelled"], public=text["public"])
    cfg = parse_config(raw)
    assert [c.model for c in cfg.clients] == ["minilm", "text_transformer", "text_transformer"]
    assert cfg.clients[0].pretrained and cfg.clients[0].adapter is not None
