"""Texts from files (``data.dataset: text_files``, DESIGN §8.2): read, labelled, tokenized.

The labelled file is JSONL (one JSON object per line) or CSV with a header row (fields may
span lines, as spreadsheets export them); the public file, when given, is plain text (one
text per line), JSONL or CSV. Lines end at ``\\n`` only (a Unicode line separator inside a
text stays in the text). Every text becomes one row of ``max_length`` token ids (int64,
padded with id 0, cut at ``max_length``) from the federation's one tokenizer, so the split,
the views and every client read the same array shape as for images.

Labels are strings or integers, compared as their text with surrounding spaces removed
(``1`` and ``"1"`` are one label); they become class indices in numeric order when every
label is a decimal integer (two spellings of one number, ``"1"`` and ``"01"``, are refused),
else in string order: the same order in every process. A labelled text that appears twice
(the same token row) is kept once, so no copy of a training text can land in the test split
or the public set; copies with different labels are refused. A public text equal to a
labelled one is refused: the public set is released by every client, outside the DP
accounting. A malformed line, a missing field, a text with no token but padding and
special tokens, a file with one label or no text is a :class:`ConfigError` naming the
config field, the file and the line.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmuscle_secure.config_data import TextConfig
from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.models.text import PAD_ID, minilm_tokenizer_json

#: Names a tokenizer may give its padding token (id 0 must be one of them).
PAD_TOKENS = ("[PAD]", "<pad>", "<PAD>", "[pad]")
_DECIMAL = re.compile(r"-?[0-9]+")
_SHOWN = 3


@dataclass(frozen=True, eq=False)
class TextData:
    """A ``text_files`` dataset, tokenized: ``ids`` (N, L) int64 and ``y`` (N,) int64 class
    indices of ``label_names``; ``public_ids`` (M, L) from the public file, or None;
    ``info``: what the run records about the source (digests, labels, duplicates, the
    vocabulary size the encoders' embeddings need)."""

    ids: np.ndarray
    y: np.ndarray
    label_names: tuple[str, ...]
    public_ids: np.ndarray | None
    info: dict


@dataclass(frozen=True)
class Texts:
    """Texts read from one file, with the line each starts on (for errors)."""

    path: Path
    texts: list[str]
    lines: list[int]


def load_text_data(cfg: TextConfig) -> TextData:
    """The labelled (and public) texts of ``cfg``, tokenized by its tokenizer (module docs)."""
    tokenizer, tok_digest = load_tokenizer(cfg.tokenizer, cfg.max_length, digest=True)
    field = "data.text.labelled"
    labelled, labels = read_labelled(Path(cfg.labelled), cfg.text_field, cfg.label_field)
    ids = tokenize(tokenizer, labelled, field)
    keep, dropped = _unique_rows(ids, labels, labelled)
    ids, labels = ids[keep], [labels[i] for i in keep]
    names, y = class_indices(labels, labelled.path)
    if len(names) < 2:
        raise ConfigError(field, f"{labelled.path}: expected at least two distinct labels in "
                                 f"{cfg.label_field!r}, got {list(names)}")
    public, public_digest = None, None
    if cfg.public is not None:
        texts = read_public(Path(cfg.public), cfg.text_field)
        public = tokenize(tokenizer, texts, "data.text.public")
        _refuse_labelled_in_public(public, texts, ids, [labelled.lines[i] for i in keep],
                                   labelled.path)
        public_digest = _file_digest(texts.path)
    info = {"labels": list(names), "duplicates_dropped": dropped, "vocab_size": vocab_size(tokenizer),
            "tokenizer_sha256": tok_digest, "labelled_sha256": _file_digest(labelled.path),
            "public_sha256": public_digest}
    return TextData(ids, y, names, public, info)


def vocab_size(tokenizer) -> int:
    """Rows an embedding needs for every id this tokenizer emits: 1 + its largest id (ids
    need not be consecutive)."""
    return 1 + max(tokenizer.get_vocab(with_added_tokens=True).values())


def load_tokenizer(spec: str, max_length: int, field: str = "data.text.tokenizer", *,
                   digest: bool = False):
    """``spec``: ``'minilm'`` or a ``tokenizer.json`` file; padded and cut to
    ``max_length``. Its id 0 must be its padding token (the encoders mask id 0). With
    ``digest``: (the tokenizer, the SHA-256 of its JSON)."""
    from tokenizers import Tokenizer  # deferred: text runs only

    try:
        raw = minilm_tokenizer_json(field) if spec == "minilm" else Path(spec).read_text("utf-8")
        tok = Tokenizer.from_str(raw)
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
    return (tok, hashlib.sha256(raw.encode()).hexdigest()) if digest else tok


def tokenize(tokenizer, texts: Texts | list[str], field: str = "data.text") -> np.ndarray:
    """(len(texts), L) int64 token ids; a text with no token but padding and special tokens
    (nothing the tokenizer knows) is refused, naming its line."""
    items = texts.texts if isinstance(texts, Texts) else texts
    try:
        encoded = tokenizer.encode_batch(items)
    except Exception as exc:  # noqa: BLE001 - e.g. a model without an unknown token
        raise ConfigError(field, f"the tokenizer cannot encode these texts "
                                 f"({type(exc).__name__}: {exc}); give it an unknown token") from None
    lengths = {len(e.ids) for e in encoded}
    if len(lengths) > 1:
        raise ConfigError("data.text.max_length", f"texts tokenize to {sorted(lengths)} tokens: "
                          "the tokenizer adds more special tokens than max_length holds")
    for k, e in enumerate(encoded):
        if not any(i != PAD_ID and not s for i, s in zip(e.ids, e.special_tokens_mask, strict=True)):
            where = (f"{texts.path}:{texts.lines[k]}" if isinstance(texts, Texts) else f"text {k}")
            raise ConfigError(field, f"{where}: the text {items[k][:40]!r} has no token but "
                                     "padding and special tokens")
    return np.array([e.ids for e in encoded], dtype=np.int64).reshape(len(items), -1)


def read_labelled(path: Path, text_field: str, label_field: str) -> tuple[Texts, list[str]]:
    """Texts and labels (as text, spaces stripped) of every record in ``path``."""
    field = "data.text.labelled"
    if text_field == label_field:
        raise ConfigError("data.text.label_field", f"{label_field!r} is also the text field")
    texts, lines, labels = [], [], []
    for line, record in _records(path, field, text_field):
        texts.append(_text(record, text_field, path, line, field))
        lines.append(line)
        label = record.get(label_field)
        if isinstance(label, bool) or not isinstance(label, str | int) or not str(label).strip():
            raise ConfigError(field, f"{path}:{line}: expected a string or integer "
                                     f"{label_field!r}, got {label!r}")
        labels.append(str(label).strip())
    return Texts(path, texts, lines), labels


def read_public(path: Path, text_field: str) -> Texts:
    """The unlabelled public texts of ``path``."""
    field = "data.text.public"
    if path.suffix.lower() == ".txt":
        texts, lines = [], []
        for line, raw in enumerate(_lines(path, field), 1):
            if raw.strip():
                texts.append(raw.strip())
                lines.append(line)
            elif raw:
                raise ConfigError(field, f"{path}:{line}: empty text")
        return Texts(path, _nonempty(texts, path, field), lines)
    records = _records(path, field, text_field)
    return Texts(path, [_text(r, text_field, path, line, field) for line, r in records],
                 [line for line, _ in records])


def class_indices(labels: list[str], path: Path | str = "") -> tuple[tuple[str, ...], np.ndarray]:
    """Label names in class order and each record's class index (module docs)."""
    names = sorted(set(labels))
    if all(_DECIMAL.fullmatch(n) for n in names):
        by_value: dict[int, str] = {}
        for n in names:
            other = by_value.setdefault(int(n), n)
            if other != n:
                raise ConfigError("data.text.labelled", f"{path}: labels {other!r} and {n!r} "
                                  "are two spellings of one number; use one")
        names = sorted(names, key=lambda n: (int(n), n))
    index = {n: i for i, n in enumerate(names)}
    return tuple(names), np.array([index[k] for k in labels], dtype=np.int64)


def _unique_rows(ids: np.ndarray, labels: list[str], texts: Texts) -> tuple[list[int], int]:
    """The first occurrence of every distinct token row, and how many copies were dropped;
    copies with different labels are refused."""
    first: dict[bytes, int] = {}
    keep = []
    for i, row in enumerate(ids):
        j = first.setdefault(row.tobytes(), i)
        if j == i:
            keep.append(i)
        elif labels[j] != labels[i]:
            raise ConfigError("data.text.labelled", f"{texts.path}:{texts.lines[i]} and line "
                              f"{texts.lines[j]} are the same text (after tokenizing and cutting "
                              f"at max_length) with labels {labels[i]!r} and {labels[j]!r}")
    return keep, len(ids) - len(keep)


def _refuse_labelled_in_public(public: np.ndarray, texts: Texts, labelled: np.ndarray,
                               lines: list[int], labelled_path: Path) -> None:
    rows = {row.tobytes(): line for row, line in zip(labelled, lines, strict=True)}
    hits = [(texts.lines[k], rows[row.tobytes()]) for k, row in enumerate(public)
            if row.tobytes() in rows]
    if hits:
        shown = ", ".join(f"{texts.path.name}:{a} = {labelled_path.name}:{b}" for a, b in hits[:_SHOWN])
        raise ConfigError("data.text.public", f"{len(hits)} public text(s) equal a labelled one "
                          f"({shown}{' ...' if len(hits) > _SHOWN else ''}): every client "
                          "releases the public set, so a private or test text there leaves "
                          "outside the accounting; remove them from the public file")


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _lines(path: Path, field: str) -> list[str]:
    """The file's lines, split at ``\\n`` only (``\\r\\n`` too); a byte-order mark dropped."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return [line.removesuffix("\r") for line in f.read().split("\n")]
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(field, f"cannot read {path} as UTF-8 text ({type(exc).__name__}: "
                                 f"{exc})") from None


def _records(path: Path, field: str, text_field: str) -> list[tuple[int, dict]]:
    """(line number, record dict) of a JSONL or CSV file."""
    if path.suffix.lower() == ".csv":
        return _csv_records(path, field, text_field)
    out = []
    for n, raw in enumerate(_lines(path, field), 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError as exc:  # JSONDecodeError, and int parsing limits
            raise ConfigError(field, f"{path}:{n}: not a JSON object "
                                     f"({getattr(exc, 'msg', None) or exc})") from None
        if not isinstance(record, dict):
            raise ConfigError(field, f"{path}:{n}: expected a JSON object, got "
                                     f"{type(record).__name__}")
        out.append((n, record))
    return _nonempty(out, path, field)


def _csv_records(path: Path, field: str, text_field: str) -> list[tuple[int, dict]]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or text_field not in header:
                raise ConfigError(field, f"{path}: expected a header row with a {text_field!r} "
                                         f"column, got {header}")
            doubled = sorted({h for h in header if header.count(h) > 1})
            if doubled:
                raise ConfigError(field, f"{path}: the header names {doubled} twice")
            out, start = [], reader.line_num + 1
            for row in reader:
                if any(cell.strip() for cell in row):
                    if len(row) != len(header):
                        raise ConfigError(field, f"{path}:{start}: {len(row)} fields, the header "
                                                 f"has {len(header)}")
                    out.append((start, dict(zip(header, row, strict=True))))
                start = reader.line_num + 1
    except csv.Error as exc:
        raise ConfigError(field, f"{path}:{reader.line_num}: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(field, f"cannot read {path} as UTF-8 text ({type(exc).__name__}: "
                                 f"{exc})") from None
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
