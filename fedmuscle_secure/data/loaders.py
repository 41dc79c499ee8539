"""Loaders for real datasets on disk: CIFAR-10/100 (python pickles) and image folders (DESIGN §8).

CIFAR ships as Python pickles, and ``pickle.load`` on an untrusted file runs
arbitrary code. These loaders therefore never call ``pickle.load``/``pickle.loads``:
:class:`_CifarUnpickler` resolves only the handful of globals a CIFAR batch needs to
rebuild its ``uint8`` array and refuses every other one with a :class:`DataError`
naming the file and the global, *before* anything is called. Files are opened with
``encoding="bytes"`` (the original batches were written by Python 2), so dict keys
are ``bytes`` (``b"data"``, ``b"labels"``).

Every error names the file (or folder) and what was expected.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from fedmuscle_secure.errors import ConfigError, DataError

try:  # numpy >= 2 keeps the implementation in numpy._core
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    from numpy.core.numeric import _frombuffer  # type: ignore[no-redef]

# (module, name) -> object. This is everything a CIFAR batch (or one re-pickled by
# numpy 1.x/2.x with protocol 2-5) references: ndarray reconstruction (protocols
# 2-4), _frombuffer (protocol 5), and _codecs.encode, with which Python 3 writes bytes
# under protocol 2 (it only turns a str into bytes). Object arrays are refused after
# loading: the data must be uint8.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}

_ROW = 3 * 32 * 32
_LAYOUT = {
    "cifar10": {
        "dir": "cifar-10-batches-py",
        "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test": ("test_batch",),
        "labels": {"fine": (b"labels", 10)},
    },
    "cifar100": {
        "dir": "cifar-100-python",
        "train": ("train",),
        "test": ("test",),
        "labels": {"fine": (b"fine_labels", 100), "coarse": (b"coarse_labels", 20)},
    },
}
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that can only build numpy arrays, lists, dicts, bytes and numbers."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                str(self._path),
                f"refused to load global {module}.{name}: a CIFAR batch only needs numpy "
                "array reconstruction; this file is not a CIFAR batch or has been tampered with",
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(str(self._path), "refused a persistent id: not a CIFAR batch")


def _read_batch(path: Path) -> Any:
    if not path.is_file():
        raise DataError(str(path), "file not found")
    try:
        with path.open("rb") as f:
            return _CifarUnpickler(f, path).load()
    except DataError:
        raise
    # A corrupt pickle can raise almost anything (EOFError, ValueError, TypeError,
    # UnicodeDecodeError, ...); each becomes a DataError naming the file.
    except Exception as e:  # noqa: BLE001
        raise DataError(
            str(path), f"expected a pickled CIFAR batch, could not unpickle it: {e!r}"
        ) from None


def _check_batch(
    obj: Any, path: Path, label_key: bytes, num_labels: int
) -> tuple[np.ndarray, np.ndarray]:
    where = str(path)
    if not isinstance(obj, dict) or b"data" not in obj or label_key not in obj:
        found = sorted(map(repr, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise DataError(
            where, f"expected a pickled dict with keys b'data' and {label_key!r}, found {found}"
        )
    data = obj[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        kind = f"dtype {data.dtype}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(where, f"expected b'data' to be a uint8 numpy array, got {kind}")
    if data.ndim != 2 or data.shape[1] != _ROW:
        raise DataError(where, f"expected data of shape (N, {_ROW}), got {data.shape}")
    raw = obj[label_key]
    if not isinstance(raw, list | tuple | np.ndarray) or not all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) for v in raw
    ):
        raise DataError(where, f"expected {label_key!r} to be a list of integers")
    labels = np.asarray(raw, dtype=np.int64).reshape(-1)
    if len(labels) != len(data):
        raise DataError(where, f"expected {len(data)} labels (one per data row), got {len(labels)}")
    bad = labels[(labels < 0) | (labels >= num_labels)]
    if bad.size:
        raise DataError(where, f"label {int(bad[0])} out of range [0, {num_labels})")
    return data, labels


def _cifar_dir(root: Path, dirname: str, files: tuple[str, ...]) -> Path:
    if (root / dirname).is_dir():
        return root / dirname
    if root.is_dir() and root.name == dirname:
        return root
    raise DataError(
        str(root / dirname),
        f"CIFAR directory not found; expected {dirname}/ (under {root}) holding {', '.join(files)}",
    )


def load_cifar(
    root: str | Path, *, variant: str = "cifar10", split: str = "train", label: str = "fine"
) -> tuple[np.ndarray, np.ndarray]:
    """Load CIFAR-10 or CIFAR-100 from the python-pickle distribution, safely.

    ``root`` is the folder containing ``cifar-10-batches-py/`` (or
    ``cifar-100-python/``), or that folder itself. ``label`` picks CIFAR-100's
    ``fine`` (100) or ``coarse`` (20) labels; CIFAR-10 has only ``fine``.

    Returns ``x`` float32 (N, 3, 32, 32) in [0, 1] (each 3072-byte row is
    channel-major: R plane, G plane, B plane, each 32×32 row-major) and ``y`` int64.
    """
    if variant not in _LAYOUT:
        raise ConfigError(
            "data.variant", f"unknown CIFAR variant {variant!r}; expected one of {tuple(_LAYOUT)}"
        )
    layout = _LAYOUT[variant]
    if split not in ("train", "test"):
        raise ConfigError("data.split", f"expected 'train' or 'test', got {split!r}")
    if label not in layout["labels"]:
        raise ConfigError(
            "data.label", f"{variant} has labels {tuple(layout['labels'])}, got {label!r}"
        )
    label_key, num_labels = layout["labels"][label]
    files = layout[split]
    folder = _cifar_dir(Path(root), layout["dir"], layout["train"] + layout["test"])
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise DataError(
            str(folder / missing[0]),
            f"file not found; the {variant} {split} split expects {', '.join(files)} in {folder}",
        )
    xs, ys = [], []
    for name in files:
        data, labels = _check_batch(
            _read_batch(folder / name), folder / name, label_key, num_labels
        )
        xs.append(data)
        ys.append(labels)
    raw = np.concatenate(xs) if len(xs) > 1 else xs[0]
    x = raw.reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255.0)
    return x, np.concatenate(ys)


def load_image_folder(
    root: str | Path, *, image_size: int, channels: int = 3
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Load ``root/<class>/<image>`` into arrays, one class per sub-folder (sorted by name).

    Images (``IMAGE_EXTENSIONS``, case-insensitive; hidden files and other files are
    skipped) are converted to RGB (``channels=3``) or grey (``channels=1``) and
    resized to ``image_size``×``image_size`` (bilinear). Returns ``x`` float32
    (N, channels, image_size, image_size) in [0, 1], ``y`` int64 class index, and the
    class names.
    """
    from PIL import Image

    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ConfigError("data.image_size", f"expected an integer >= 1, got {image_size!r}")
    modes = {1: "L", 3: "RGB"}
    if channels not in modes:
        raise ConfigError("data.channels", f"expected 1 or 3, got {channels!r}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(str(root), "image folder not found; expected a directory root/<class>/")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(str(root), "no class sub-folders; expected root/<class>/<image files>")
    xs: list[np.ndarray] = []
    ys: list[int] = []
    for k, cls in enumerate(classes):
        files = sorted(
            p
            for p in (root / cls).iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise DataError(
                str(root / cls),
                f"class folder holds no images; expected files ending in {IMAGE_EXTENSIONS}",
            )
        for path in files:
            try:
                with Image.open(path) as im:
                    im = im.convert(modes[channels]).resize(
                        (image_size, image_size), Image.Resampling.BILINEAR
                    )
                    arr = np.asarray(im, dtype=np.uint8)
            # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError, ...
            except Exception as e:  # noqa: BLE001
                raise DataError(str(path), f"unreadable image: {e}") from None
            xs.append(arr.reshape(image_size, image_size, channels).transpose(2, 0, 1))
            ys.append(k)
    x = np.stack(xs).astype(np.float32) / np.float32(255.0)
    return x, np.asarray(ys, dtype=np.int64), classes
