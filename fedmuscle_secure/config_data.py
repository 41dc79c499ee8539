"""The config's ``data`` section (DESIGN §8): which labelled images, how they are split,
and how the procedural ``shapes`` benchmark is rendered.

:func:`fedmuscle_secure.config.check_semantics` validates it with :func:`check_data`: what
the config alone decides (paths, the shapes' sizes). Which tasks a dataset serves is a rule
of a layer above (:mod:`fedmuscle_secure.federation.checks`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from fedmuscle_secure.errors import ConfigError

if TYPE_CHECKING:
    from fedmuscle_secure.config import ExperimentConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ShapesConfig(_Strict):
    """How the procedural ``shapes`` benchmark is rendered (DESIGN §8); its image size is
    ``data.image_size`` (default 16)."""

    num_images: int = Field(default=10_000, gt=0, description="images rendered; the test, "
                            "public and private parts are drawn from them")
    channels: Literal[1, 3] = Field(default=1, description="1: grey levels; 3: coloured figures")
    clutter: bool = Field(default=True, description="distractor strokes and pixel noise")
    seed: int = Field(default=0, description="the rendering seed: the dataset itself, apart "
                      "from the experiment seed that splits it")


class TextConfig(_Strict):
    """The files of ``data.dataset: text_files`` (DESIGN §8.2): labelled texts, optionally
    unlabelled public texts, and the tokenizer every text client reads."""

    labelled: str = Field(description="labelled texts: a .jsonl file (one JSON object per line) "
                          "or a .csv file with a header row")
    public: str | None = Field(default=None, description="unlabelled public texts (.txt: one "
                               "per line, or .jsonl / .csv with text_field); null: the public set "
                               "is drawn from the labelled file with its labels dropped")
    text_field: str = "text"
    label_field: str = "label"
    max_length: int = Field(default=64, ge=4, le=512, description="tokens per text, [CLS] and "
                            "[SEP] included; longer texts are cut")
    tokenizer: str = Field(default="minilm", description="'minilm' (all-MiniLM-L6-v2's "
                           "WordPiece, from the text extra's package) or a tokenizer.json file")


class DataConfig(_Strict):
    """Public / test / private split of one labelled dataset of images or texts (DESIGN §8)."""

    dataset: Literal["digits", "shapes", "cifar10", "cifar100", "image_folder",
                     "text_files"] = "digits"
    shapes: ShapesConfig | None = None  # dataset 'shapes' only; null: ShapesConfig's defaults
    text: TextConfig | None = None  # dataset 'text_files' only
    path: str | None = None
    image_size: int | None = Field(default=None, gt=0)
    public_size: int = Field(default=900, gt=0)
    test_size: int = Field(default=300, gt=0)
    shard_size: int | None = Field(default=None, gt=1)
    partition: Literal["dirichlet", "classes", "iid"] = "dirichlet"
    dirichlet_alpha: float = Field(default=1.0, gt=0)
    classes_per_client: int | None = Field(default=None, gt=0)
    val_fraction: float = Field(default=0.2, ge=0, lt=1)


def check_data(cfg: ExperimentConfig) -> None:
    """A dataset read from disk needs its files; the rendered shapes need none, and only
    they take a ``data.shapes`` section. Which tasks a dataset serves is a layer rule
    (:mod:`fedmuscle_secure.federation.checks`)."""
    d = cfg.data
    if d.shapes is not None and d.dataset != "shapes":
        raise ConfigError("data.shapes", f"only data.dataset 'shapes' is rendered; remove this "
                          f"section for data.dataset {d.dataset!r}")
    if d.text is not None and d.dataset != "text_files":
        raise ConfigError("data.text", f"only data.dataset 'text_files' reads texts; remove this "
                          f"section for data.dataset {d.dataset!r}")
    if d.dataset == "shapes":
        _check_shapes(cfg)
    if d.dataset == "text_files":
        _check_text(cfg)
    if d.dataset in ("digits", "shapes", "text_files"):
        return
    if d.path is None:
        raise ConfigError("data.path", f"dataset {d.dataset!r} needs a path to its files")
    if not Path(d.path).exists():
        raise ConfigError("data.path", f"{d.path!r} does not exist")


#: Smallest rendered image: below it a small figure is one or two pixels wide.
MIN_SHAPES_IMAGE_SIZE = 8


def _check_shapes(cfg: ExperimentConfig) -> None:
    """The rendered set holds the test, public and private parts, at a resolvable size."""
    d = cfg.data
    if d.path is not None:
        raise ConfigError("data.path", "the shapes dataset is rendered, not read; remove "
                          "data.path")
    if d.image_size is not None and d.image_size < MIN_SHAPES_IMAGE_SIZE:
        raise ConfigError("data.image_size", f"shapes are rendered at {MIN_SHAPES_IMAGE_SIZE} "
                          f"pixels or more, got {d.image_size}")
    n = (d.shapes or ShapesConfig()).num_images
    shards = (d.shard_size or 1) * len(cfg.clients)
    need = d.test_size + d.public_size + shards
    if need > n:
        private = (f"{len(cfg.clients)} shards of {d.shard_size}" if d.shard_size
                   else f"one image per client ({len(cfg.clients)})")
        raise ConfigError("data.shapes.num_images", f"{n} images cannot hold the test split "
                          f"({d.test_size}), the public set ({d.public_size}) and {private}: "
                          f"expected at least {need}")


#: Suffixes of the text files (``.txt`` holds unlabelled public texts only).
TEXT_SUFFIXES = {"labelled": (".jsonl", ".csv"), "public": (".txt", ".jsonl", ".csv")}


def _check_text(cfg: ExperimentConfig) -> None:
    """The texts' files exist and have a readable type; the tokenizer is MiniLM's or a file."""
    d = cfg.data
    if d.text is None:
        raise ConfigError("data.text", "data.dataset 'text_files' needs a data.text section "
                          "naming its labelled file (data.text.labelled)")
    if d.path is not None:
        raise ConfigError("data.path", "text files are named in data.text; remove data.path")
    if d.image_size is not None:
        raise ConfigError("data.image_size", "texts have no image size; remove data.image_size")
    for part in ("labelled", "public"):
        name = getattr(d.text, part)
        if name is None:
            continue
        path = Path(name)
        if path.suffix.lower() not in TEXT_SUFFIXES[part]:
            raise ConfigError(f"data.text.{part}", f"{name!r}: expected a "
                              f"{' / '.join(TEXT_SUFFIXES[part])} file")
        if not path.is_file():
            raise ConfigError(f"data.text.{part}", f"{name!r} does not exist")
    if d.text.public is not None and Path(d.text.public).resolve() == Path(d.text.labelled).resolve():
        raise ConfigError("data.text.public", f"{d.text.public!r} is the labelled file: its "
                          "texts would be private and public at once (remove data.text.public "
                          "to draw the public set from the labelled file, labels dropped, "
                          "disjoint from the shards and the test split)")
    if d.text.text_field == d.text.label_field:
        raise ConfigError("data.text.label_field", f"{d.text.label_field!r} is also the text field")
    tok = d.text.tokenizer
    if tok != "minilm" and not Path(tok).is_file():
        raise ConfigError("data.text.tokenizer", f"{tok!r}: expected 'minilm' or an existing "
                          "tokenizer.json file")
