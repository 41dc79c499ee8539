"""Texts from files (``data.dataset: text_files``, DESIGN §8.2): read, labelled, tokenized.

The labelled file is JSONL (one JSON object per line) or CSV with a header row; the public
file, when given, is plain text (one text per line), JSONL or CSV. Every text becomes one
row of ``max_length`` token ids (int64, padded with id 0, cut at ``max_length``) from the
federation's one tokenizer, so the split, the views and every client read the same array
shape as for images. Labels are whatever the file holds (strings, integers); they become
class indices in a fixed order: numeric order when every label is an integer, else sorted
as strings. A malformed line, a missing field or an empty text is a :class:`ConfigError`
naming the config field, the file and the line.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmuscle_secure.config_data import TextConfig
from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.models.text import PAD_ID, minilm_tokenizer_json

#: Names a tokenizer may give its padding token (id 0 must be one of them).
PAD_TOKENS = ("[PAD]", "<pad>", "<PAD>", "[pad]")


@dataclass(frozen=True, eq=False)
class TextData:
    """A ``text_files`` dataset, tokenized: ``ids`` (N, L) int64 and ``y`` (N,) int64 class
    indices of ``label_names``; ``public_ids`` (M, L) from the public file, or None."""

    ids: np.ndarray
    y: np.ndarray
    label_names: tuple[str, ...]
    public_ids: np.ndarray | None
    vocab_size: int


def load_text_data(cfg: TextConfig) -> TextData:
    """The labelled (and public) texts of ``cfg``, tokenized by its tokenizer."""
    tokenizer = load_tokenizer(cfg.tokenizer, cfg.max_length)
    texts, labels = read_labelled(Path(cfg.labelled), cfg.text_field, cfg.label_field)
    names, y = class_indices(labels)
    public = None
    if cfg.public is not None:
        public = tokenize(tokenizer, read_public(Path(cfg.public), cfg.text_field))
    return TextData(tokenize(tokenizer, texts), y, names, public,
                    tokenizer.get_vocab_size(with_added_tokens=True))


def load_tokenizer(spec: str, max_length: int, field: str = "data.text.tokenizer"):
    """``spec``: ``'minilm'`` or a ``tokenizer.json`` file; padded and cut to
    ``max_length``. Its id 0 must be its padding token (the encoders mask id 0)."""
    from tokenizers import Tokenizer  # deferred: text runs only

    try:
        if spec == "minilm":
            tok = Tokenizer.from_str(minilm_tokenizer_json(field))
        else:
            tok = Tokenizer.from_file(spec)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - the tokenizers library raises plain Exceptions
        raise ConfigError(field, f"cannot read {spec!r} as a tokenizer.json "
                                 f"({type(exc).__name__}: {exc})") from None
    pad = tok.id_to_token(PAD_ID)
    if pad not in PAD_TOKENS:
        raise ConfigError(field, f"{spec!r}: token id {PAD_ID} is {pad!r}; expected the padding "
                                 f"token ({' / '.join(PAD_TOKENS)}), which the encoders mask")
    tok.enable_padding(pad_id=PAD_ID, pad_token=pad, length=max_length)
    tok.enable_truncation(max_length=max_length)
    return tok


def tokenize(tokenizer, texts: list[str]) -> np.ndarray:
    """(len(texts), L) int64 token ids."""
    encoded = tokenizer.encode_batch(texts)
    return np.array([e.ids for e in encoded], dtype=np.int64).reshape(len(texts), -1)


def read_labelled(path: Path, text_field: str, label_field: str) -> tuple[list[str], list]:
    """Texts and labels of every record in ``path``."""
    field = "data.text.labelled"
    texts, labels = [], []
    for line, record in _records(path, field, text_field):
        texts.append(_text(record, text_field, path, line, field))
        label = record.get(label_field)
        if label is None or label == "" or isinstance(label, dict | list | float):
            raise ConfigError(field, f"{path}:{line}: expected a string or integer "
                                     f"{label_field!r}, got {label!r}")
        labels.append(label)
    if len(set(map(str, labels))) < 2:
        raise ConfigError(field, f"{path}: expected at least two distinct labels in "
                                 f"{label_field!r}, got {sorted(set(map(str, labels)))}")
    return texts, labels


def read_public(path: Path, text_field: str) -> list[str]:
    """The unlabelled public texts of ``path``."""
    field = "data.text.public"
    if path.suffix.lower() == ".txt":
        out = []
        for line, raw in enumerate(_lines(path, field), 1):
            if raw.strip():
                out.append(raw.strip())
            elif raw:
                raise ConfigError(field, f"{path}:{line}: empty text")
        return _nonempty(out, path, field)
    return _nonempty([_text(r, text_field, path, line, field)
                      for line, r in _records(path, field, text_field)], path, field)


def class_indices(labels: list) -> tuple[tuple[str, ...], np.ndarray]:
    """Label names in class order and each record's class index."""
    keys = [str(v) for v in labels]
    if all(_is_int(v) for v in labels):
        names = sorted(set(keys), key=int)
    else:
        names = sorted(set(keys))
    index = {n: i for i, n in enumerate(names)}
    return tuple(names), np.array([index[k] for k in keys], dtype=np.int64)


def _is_int(v) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True
    return isinstance(v, str) and v.strip().lstrip("-").isdigit()


def _lines(path: Path, field: str) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(field, f"cannot read {path} as UTF-8 text ({type(exc).__name__}: "
                                 f"{exc})") from None


def _records(path: Path, field: str, text_field: str):
    """(line number, record dict) of a JSONL or CSV file."""
    lines = _lines(path, field)
    if path.suffix.lower() == ".csv":
        rows = csv.DictReader(lines)
        if rows.fieldnames is None or text_field not in rows.fieldnames:
            raise ConfigError(field, f"{path}: expected a header row with a {text_field!r} "
                                     f"column, got {rows.fieldnames}")
        try:
            records = [(rows.line_num, dict(r)) for r in rows]
        except csv.Error as exc:
            raise ConfigError(field, f"{path}:{rows.line_num}: {exc}") from None
        return _nonempty(records, path, field)
    out = []
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(field, f"{path}:{n}: not a JSON object ({exc.msg})") from None
        if not isinstance(record, dict):
            raise ConfigError(field, f"{path}:{n}: expected a JSON object, got "
                                     f"{type(record).__name__}")
        out.append((n, record))
    return _nonempty(out, path, field)


def _text(record: dict, text_field: str, path: Path, line: int, field: str) -> str:
    text = record.get(text_field)
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(field, f"{path}:{line}: expected a non-empty string {text_field!r}, "
                                 f"got {text!r}")
    return text


def _nonempty(items: list, path: Path, field: str) -> list:
    if not items:
        raise ConfigError(field, f"{path}: holds no texts")
    return items
