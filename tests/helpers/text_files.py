"""Small text datasets written by the tests themselves: a labelled corpus whose label is a
topic the words carry, unlabelled public texts, and a word-level tokenizer for them."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

TOPICS = {"sport": ["match", "goal", "team", "score", "player", "coach"],
          "money": ["bank", "loan", "rate", "market", "stock", "fund"],
          "health": ["doctor", "patient", "clinic", "drug", "nurse", "care"]}
MOODS = ["great", "good", "happy", "win", "bad", "sad", "loss", "poor"]
FILLER = ["the", "a", "today", "very", "new", "of", "and", "in"]


def sentence(rng: random.Random, topic: str) -> str:
    words = [rng.choice(TOPICS[topic]) for _ in range(3)] + [rng.choice(MOODS) for _ in range(2)]
    words += [rng.choice(FILLER) for _ in range(rng.randint(1, 5))]
    rng.shuffle(words)
    return " ".join(words)


def write_corpus(folder: Path, n: int = 400, *, public: int = 0, seed: int = 0) -> dict[str, str]:
    """``labelled.jsonl`` (n texts, labels the topic names), ``public.txt`` (``public``
    unlabelled texts, when > 0) and ``tokenizer.json``; returns ``data.text`` for them."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "labelled.jsonl", "w") as f:
        for _ in range(n):
            topic = rng.choice(sorted(TOPICS))
            f.write(json.dumps({"text": sentence(rng, topic), "label": topic}) + "\n")
    out = {"labelled": str(folder / "labelled.jsonl"), "tokenizer": str(folder / "tokenizer.json")}
    if public:
        (folder / "public.txt").write_text(
            "\n".join(sentence(rng, rng.choice(sorted(TOPICS))) for _ in range(public)) + "\n")
        out["public"] = str(folder / "public.txt")
    words = sorted({w for ws in TOPICS.values() for w in ws} | set(MOODS) | set(FILLER))
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(out["tokenizer"])
    return out


#: Three small from-scratch text encoders of different sizes (the heterogeneous federation).
TEXT_CLIENTS = [
    {"name": "a", "model": "text_transformer", "task": "classify",
     "model_kwargs": {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}},
    {"name": "b", "model": "text_transformer", "task": "classify",
     "model_kwargs": {"hidden_size": 48, "num_hidden_layers": 1, "num_attention_heads": 4,
                      "intermediate_size": 96}},
    {"name": "c", "model": "text_transformer", "task": "classify",
     "model_kwargs": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                      "intermediate_size": 64}},
]


def text_config_raw(text: dict, **over) -> dict:
    """A small text federation's raw config over the files of :func:`write_corpus`."""
    raw = {
        "name": "text", "seed": 3,
        "data": {"dataset": "text_files", "text": {**text, "max_length": 16},
                 "public_size": 96, "test_size": 90, "val_fraction": 0.2},
        "clients": copy.deepcopy(TEXT_CLIENTS),
        "training": {"rounds": 2, "local_epochs": 2, "local_batch_size": 16},
        "muscle": {"method": "muscle", "num_selected": 2, "batch_size": 32, "dim": 16},
        "server": {"device": "cpu"},
    }
    raw.update(over)
    return raw
