"""Texts from files (DESIGN §8.2): reading JSONL / CSV / plain text, labels to classes,
tokenization, the public file in the split, token-dropout views, and the config's refusals."""

from __future__ import annotations

import hashlib
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
    for path, lines in ((j, [1, 2, 3]), (c, [2, 3, 4])):  # file lines: the CSV's header is 1
        texts, labels = read_labelled(path, "text", "label")
        assert (texts.texts, texts.lines, labels) == (["a b", "c, d", "e"], lines, ["x", "y", "x"])


def test_labels_become_classes_in_a_fixed_order():
    names, y = class_indices(["b", "a", "c", "a"])
    assert names == ("a", "b", "c") and y.tolist() == [1, 0, 2, 0]
    names, y = class_indices(["10", "2", "9", "2", "-1"])  # decimal integers: numeric order
    assert names == ("-1", "2", "9", "10") and y.tolist() == [3, 1, 2, 1, 0]
    names, _ = class_indices(["²", "1"])  # not an ASCII decimal: string order
    assert names == ("1", "²")
    with pytest.raises(ConfigError, match="'01' and '1' are two spellings of one number|"
                                          "'1' and '01' are two spellings of one number"):
        class_indices(["1", "01", "2"])


def test_labels_are_read_as_their_text(tmp_path):
    path = _jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": "1"},
                                         {"text": "c", "label": " pos "}, {"text": "d", "label": "pos"}])
    assert read_labelled(path, "text", "label")[1] == ["1", "1", "pos", "pos"]
    bad = _jsonl(tmp_path / "b.jsonl", [{"text": "a", "label": True}])
    with pytest.raises(ConfigError, match="b.jsonl:1: expected a string or integer"):
        read_labelled(bad, "text", "label")
    with pytest.raises(ConfigError, match="data.text.label_field: 'text' is also the text field"):
        read_labelled(path, "text", "text")


@pytest.mark.parametrize("line, expected", [
    ("{not json", "t.jsonl:2: not a JSON object"),
    ('["text", "label"]', "t.jsonl:2: expected a JSON object, got list"),
    ('{"label": "x"}', "t.jsonl:2: expected a non-empty string 'text'"),
    ('{"text": "  ", "label": "x"}', "t.jsonl:2: expected a non-empty string 'text'"),
    ('{"text": "a", "label": 1.5}', "t.jsonl:2: expected a string or integer 'label'"),
    ('{"text": "a"}', "t.jsonl:2: expected a string or integer 'label'"),
    ('{"text": "a", "label": ' + "9" * 5000 + "}", "t.jsonl:2: not a JSON object"),
])
def test_a_bad_line_is_named_by_file_and_line(tmp_path, line, expected):
    path = _jsonl(tmp_path / "t.jsonl", [{"text": "ok", "label": "x"}, line, {"text": "z", "label": "y"}])
    with pytest.raises(ConfigError, match="data.text.labelled") as err:
        read_labelled(path, "text", "label")
    assert expected in str(err.value)


def test_one_label_or_no_text_is_refused(tmp_path):
    text = write_corpus(tmp_path, n=3)
    _jsonl(tmp_path / "t.jsonl", [{"text": f"goal {w}", "label": 1} for w in ("team", "bank", "rate")])
    with pytest.raises(ConfigError, match="at least two distinct labels"):
        load_text_data(TextConfig(labelled=str(tmp_path / "t.jsonl"), tokenizer=text["tokenizer"]))
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(ConfigError, match="holds no texts"):
        read_labelled(tmp_path / "e.jsonl", "text", "label")
    (tmp_path / "h.csv").write_text("body,label\nx,1\n")
    with pytest.raises(ConfigError, match="header row with a 'text' column"):
        read_labelled(tmp_path / "h.csv", "text", "label")


def test_public_texts_from_plain_lines(tmp_path):
    (tmp_path / "p.txt").write_text("first text\r\n second \u2028 same  \n")
    public = read_public(tmp_path / "p.txt", "text")
    assert public.texts == ["first text", "second \u2028 same"] and public.lines == [1, 2]
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


def test_a_text_with_nothing_the_tokenizer_knows_is_refused(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "goal": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["[CLS]"])
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="[CLS] $A", special_tokens=[("[CLS]", 3)])
    tok.save(str(tmp_path / "tok.json"))
    loaded = load_tokenizer(str(tmp_path / "tok.json"), 6)
    assert tokenize(loaded, ["goal"]).tolist() == [[3, 2, 0, 0, 0, 0]]
    with pytest.raises(ConfigError, match="text 0: the text ' ' has no token but padding"):
        tokenize(loaded, [" "])
    with pytest.raises(ConfigError, match="has no token but padding and special tokens"):
        tokenize(load_tokenizer(str(tmp_path / "tok.json"), 1), ["goal", "goal goal"])


def test_the_vocabulary_covers_ids_with_gaps(tmp_path):
    from tokenizers import Tokenizer, models

    from fedmuscle_secure.data.text import vocab_size

    Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "hello": 5000}, unk_token="[UNK]")).save(
        str(tmp_path / "tok.json"))
    assert vocab_size(load_tokenizer(str(tmp_path / "tok.json"), 4)) == 5001


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
    (lambda r: r["clients"][2].update(model="minilm", model_kwargs={}), "data.text.tokenizer",
     "'minilm', which reads MiniLM's own WordPiece ids"),
    (lambda r: r["clients"][0]["model_kwargs"].update(max_position_embeddings=8),
     "data.text.max_length", "16 tokens exceed clients.0's max_position_embeddings \\(8\\)"),
    (lambda r: r["clients"][0]["model_kwargs"].update(num_attention_heads=0), "clients.0.model",
     "model_kwargs.num_attention_heads: expected an integer >= 1, got 0"),
    (lambda r: r["clients"][0]["model_kwargs"].update(hidden_size="128"), "clients.0.model",
     "model_kwargs.hidden_size: expected an integer >= 1, got '128'"),
    (lambda r: r["data"]["text"].update(label_field="text"), "data.text.label_field",
     "is also the text field"),
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


def test_csv_fields_keep_their_line_breaks_and_odd_headers_are_refused(tmp_path):
    c = tmp_path / "t.csv"
    c.write_bytes("\ufefftext,label\n\"Chest pain after\nexercise\",cardio\nok,ortho\n".encode())
    texts, labels = read_labelled(c, "text", "label")
    assert texts.texts == ["Chest pain after\nexercise", "ok"] and texts.lines == [2, 4]
    (tmp_path / "d.csv").write_text("text,label,text\na,x,b\n")
    with pytest.raises(ConfigError, match="the header names \\['text'\\] twice"):
        read_labelled(tmp_path / "d.csv", "text", "label")
    (tmp_path / "w.csv").write_text("text,label\na,x\nb,y,z\n")
    with pytest.raises(ConfigError, match="w.csv:3: 3 fields, the header has 2"):
        read_labelled(tmp_path / "w.csv", "text", "label")


def test_a_labelled_text_is_kept_once_and_conflicting_copies_are_refused(tmp_path):
    text = write_corpus(tmp_path, n=3)
    rows = [{"text": "goal team", "label": "a"}, {"text": "bank rate", "label": "b"},
            {"text": "goal  team", "label": "a"}, {"text": "goal team good", "label": "a"}]
    _jsonl(tmp_path / "t.jsonl", rows)
    data = load_text_data(TextConfig(labelled=str(tmp_path / "t.jsonl"), tokenizer=text["tokenizer"],
                                     max_length=4))
    assert len(data.ids) == 3 and data.info["duplicates_dropped"] == 1
    rows.append({"text": "bank rate", "label": "a"})
    _jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(ConfigError, match="t.jsonl:5 and line 2 are the same text"):
        load_text_data(TextConfig(labelled=str(tmp_path / "t.jsonl"), tokenizer=text["tokenizer"]))


def test_public_texts_equal_to_labelled_ones_are_refused(tmp_path):
    text = write_corpus(tmp_path, n=60, public=20)
    labelled = [json.loads(line)["text"] for line in open(text["labelled"])]
    with open(text["public"], "a") as f:
        f.write(labelled[7] + "\n")
    with pytest.raises(ConfigError, match="data.text.public: 1 public text\\(s\\) equal a labelled "
                                          "one \\(public.txt:21 = labelled.jsonl:8\\)"):
        load_text_data(TextConfig(**text))
    raw = text_config_raw(write_corpus(tmp_path / "two", n=20))
    raw["data"]["text"]["public"] = raw["data"]["text"]["labelled"]
    with pytest.raises(ConfigError, match="data.text.public: .* is the labelled file"):
        parse_config(raw)


def test_the_split_records_its_source_and_digest(tmp_path):
    text = write_corpus(tmp_path, n=300)
    cfg = parse_config(text_config_raw(text))
    first, again = make_split(cfg).summary(), make_split(cfg).summary()
    assert first["digest"] == again["digest"]
    assert first["source"]["labels"] == ["health", "money", "sport"]
    assert len(first["source"]["tokenizer_sha256"]) == 64
    assert first["source"]["labelled_sha256"] == hashlib.sha256(
        open(text["labelled"], "rb").read()).hexdigest()
