"""CIFAR pickle and image-folder loaders (DESIGN §8) on tiny files written in the real formats.

The fixtures use ``pickle.dump`` to *write* files exactly as the CIFAR python
distribution lays them out (dicts with bytes keys, uint8 N×3072 arrays, int lists);
the loader under test must never ``pickle.load`` them.
"""

from __future__ import annotations

import builtins
import os
import pickle
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from fedmuscle_secure.data import load_cifar, load_image_folder
from fedmuscle_secure.errors import ConfigError, DataError

C10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def dump(path: Path, obj, protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def write_cifar10(root: Path, n: int = 3, seed: int = 0) -> dict[str, tuple[np.ndarray, list]]:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    out = {}
    for name in C10_FILES:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        dump(
            folder / name,
            {
                b"batch_label": name.encode(),
                b"labels": labels,
                b"data": data,
                b"filenames": [b"img.png"] * n,
            },
        )
        out[name] = (data, labels)
    dump(
        folder / "batches.meta",
        {b"label_names": [b"airplane"] * 10, b"num_cases_per_batch": n, b"num_vis": 3072},
    )
    return out


def write_cifar100(root: Path, n: int = 4, seed: int = 0) -> dict[str, tuple]:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    out = {}
    for name in ("train", "test"):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, n).tolist()
        coarse = rng.integers(0, 20, n).tolist()
        dump(
            folder / name,
            {
                b"filenames": [b"x.png"] * n,
                b"batch_label": b"b",
                b"fine_labels": fine,
                b"coarse_labels": coarse,
                b"data": data,
            },
        )
        out[name] = (data, fine, coarse)
    dump(
        folder / "meta",
        {b"fine_label_names": [b"apple"] * 100, b"coarse_label_names": [b"fish"] * 20},
    )
    return out


def test_cifar10_round_trip_layout(tmp_path):
    written = write_cifar10(tmp_path)
    x, y = load_cifar(tmp_path, variant="cifar10", split="train")
    assert x.shape == (15, 3, 32, 32) and x.dtype == np.float32
    assert y.dtype == np.int64
    data = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = [v for i in range(1, 6) for v in written[f"data_batch_{i}"][1]]
    assert y.tolist() == labels
    for i, c, h, w in [(0, 0, 0, 0), (0, 1, 5, 7), (0, 2, 31, 31), (7, 2, 3, 30), (14, 0, 31, 0)]:
        assert x[i, c, h, w] == np.float32(data[i, c * 1024 + h * 32 + w]) / np.float32(255)
    xt, yt = load_cifar(tmp_path / "cifar-10-batches-py", split="test")  # the folder itself
    assert xt.shape == (3, 3, 32, 32) and yt.tolist() == written["test_batch"][1]
    assert 0.0 <= x.min() and x.max() <= 1.0


@pytest.mark.parametrize(("label", "idx"), [("fine", 1), ("coarse", 2)])
def test_cifar100_round_trip(tmp_path, label, idx):
    written = write_cifar100(tmp_path)
    for split in ("train", "test"):
        x, y = load_cifar(tmp_path, variant="cifar100", split=split, label=label)
        assert y.tolist() == written[split][idx]
        np.testing.assert_array_equal(
            x, written[split][0].reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255)
        )


@settings(max_examples=20, deadline=None)
@given(
    data=arrays(np.uint8, st.tuples(st.integers(1, 4), st.just(3072))), protocol=st.integers(2, 5)
)
def test_property_cifar_decode_matches_layout(data, protocol):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        labels = list(range(len(data)))
        for name in ("train", "test"):
            dump(
                root / "cifar-100-python" / name,
                {b"data": data, b"fine_labels": labels, b"coarse_labels": labels},
                protocol,
            )
        x, y = load_cifar(root, variant="cifar100", split="train")
    ref = np.empty((len(data), 3, 32, 32), dtype=np.float32)
    for c in range(3):
        for h in range(32):
            ref[:, c, h, :] = data[:, c * 1024 + h * 32 : c * 1024 + h * 32 + 32] / np.float32(255)
    np.testing.assert_array_equal(x, ref)
    assert y.tolist() == labels


def test_missing_directory_names_expected_files(tmp_path):
    with pytest.raises(DataError) as e:
        load_cifar(tmp_path)
    assert "cifar-10-batches-py" in str(e.value) and "data_batch_1" in str(e.value)
    assert "test_batch" in str(e.value)


def test_missing_file_is_named(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError) as e:
        load_cifar(tmp_path)
    assert e.value.path.endswith("data_batch_3") and "data_batch_5" in str(e.value)
    load_cifar(tmp_path, split="test")  # the test split does not need it


def _corrupt(tmp_path: Path, name: str, obj) -> Path:
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / name
    dump(path, obj)
    return path


GOOD = np.zeros((10, 3072), dtype=np.uint8)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({b"labels": [0] * 10}, "expected a pickled dict with keys b'data' and b'labels'"),
        ({"data": GOOD, "labels": [0] * 10}, "expected a pickled dict with keys b'data'"),
        ([GOOD, [0] * 10], "expected a pickled dict with keys b'data' and b'labels'"),
        (
            {b"data": np.zeros((10, 100), np.uint8), b"labels": [0] * 10},
            r"expected data of shape \(N, 3072\), got \(10, 100\)",
        ),
        (
            {b"data": np.zeros((10, 3, 32, 32), np.uint8), b"labels": [0] * 10},
            r"expected data of shape \(N, 3072\)",
        ),
        ({b"data": GOOD.astype(np.float32), b"labels": [0] * 10}, "uint8"),
        ({b"data": b"\x00" * 3072, b"labels": [0]}, "uint8"),
        ({b"data": GOOD, b"labels": [0] * 9}, "expected 10 labels"),
        ({b"data": GOOD, b"labels": [0] * 9 + [12]}, r"label 12 out of range \[0, 10\)"),
        ({b"data": GOOD, b"labels": [0] * 9 + [-1]}, r"label -1 out of range"),
        ({b"data": GOOD, b"labels": ["cat"] * 10}, "list of integers"),
    ],
)
def test_bad_batch_names_the_file(tmp_path, obj, message):
    path = _corrupt(tmp_path, "data_batch_2", obj)
    with pytest.raises(DataError, match=message) as e:
        load_cifar(tmp_path)
    assert e.value.path == str(path) and "data_batch_2" in str(e.value)


@pytest.mark.parametrize(("label", "bad", "bound"), [("fine", 100, 100), ("coarse", 20, 20)])
def test_cifar100_label_range(tmp_path, label, bad, bound):
    write_cifar100(tmp_path, n=2)
    key = b"fine_labels" if label == "fine" else b"coarse_labels"
    d = {b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 0], b"coarse_labels": [0, 0]}
    d[key] = [0, bad]
    dump(tmp_path / "cifar-100-python" / "test", d)
    with pytest.raises(DataError, match=rf"label {bad} out of range \[0, {bound}\)") as e:
        load_cifar(tmp_path, variant="cifar100", split="test", label=label)
    assert e.value.path.endswith("test")


def test_garbage_file(tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(b"this is not a pickle at all")
    with pytest.raises(DataError, match="could not unpickle") as e:
        load_cifar(tmp_path, split="test")
    assert e.value.path == str(path)
    path.write_bytes(b"")
    with pytest.raises(DataError, match="test_batch"):
        load_cifar(tmp_path, split="test")


class _Evil:
    """Unpickling this would call ``fn(*args)``."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("where", ["top", "labels", "object_array"])
@pytest.mark.parametrize("kind", ["system", "mkdir", "exec"])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, where, kind):
    marker = tmp_path / f"pwned_{where}_{kind}"
    if kind == "system":
        evil = _Evil(os.system, f"touch {marker}")
    elif kind == "mkdir":
        evil = _Evil(os.mkdir, str(marker))
    else:
        evil = _Evil(builtins.exec, f"open({str(marker)!r}, 'w').close()")
    if where == "top":
        obj = evil
    elif where == "labels":
        obj = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [evil]}
    else:
        arr = np.empty(1, dtype=object)
        arr[0] = evil
        obj = {b"data": arr, b"labels": [0]}
    path = _corrupt(tmp_path, "test_batch", obj)
    with pytest.raises(DataError, match="refused to load global") as e:
        load_cifar(tmp_path, split="test")
    assert e.value.path == str(path)
    assert ("system" in str(e.value)) or ("mkdir" in str(e.value)) or ("exec" in str(e.value))
    assert not marker.exists(), "the payload ran"


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="data.variant"):
        load_cifar(tmp_path, variant="cifar1000")
    with pytest.raises(ConfigError, match="data.split"):
        load_cifar(tmp_path, split="val")
    with pytest.raises(ConfigError, match="data.label"):
        load_cifar(tmp_path, variant="cifar10", label="coarse")


# ----------------------------------------------------------------------------- image folder


def write_png(path: Path, color, size=(10, 6), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_image_folder(tmp_path):
    write_png(tmp_path / "dog" / "a.png", (0, 255, 0))  # written first; classes still sorted
    write_png(tmp_path / "dog" / "b.PNG", (0, 0, 255), size=(5, 5))
    write_png(tmp_path / "cat" / "c.png", (255, 0, 0), size=(20, 3))
    Image.new("RGB", (4, 4), (10, 20, 30)).save(tmp_path / "cat" / "d.jpg", quality=100)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "cat" / ".hidden.png").write_bytes(b"garbage")
    x, y, classes = load_image_folder(tmp_path, image_size=8)
    assert classes == ["cat", "dog"]
    assert x.shape == (4, 3, 8, 8) and x.dtype == np.float32
    assert y.tolist() == [0, 0, 1, 1] and y.dtype == np.int64
    np.testing.assert_allclose(x[0].reshape(3, -1).mean(1), [1, 0, 0])  # cat/c.png red
    np.testing.assert_allclose(x[2, :, 4, 4], [0, 1, 0])  # dog/a.png green, channel-first
    np.testing.assert_allclose(x[3, :, 0, 0], [0, 0, 1])
    assert 0.0 <= x.min() and x.max() <= 1.0
    g, _, _ = load_image_folder(tmp_path, image_size=5, channels=1)
    assert g.shape == (4, 1, 5, 5)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not found") as e:
        load_image_folder(tmp_path / "nope", image_size=8)
    assert e.value.path == str(tmp_path / "nope")
    with pytest.raises(DataError, match="no class sub-folders") as e:
        load_image_folder(tmp_path, image_size=8)
    assert e.value.path == str(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images") as e:
        load_image_folder(tmp_path, image_size=8)
    assert e.value.path == str(tmp_path / "empty")
    write_png(tmp_path / "empty" / "ok.png", (1, 2, 3))
    bad = tmp_path / "empty" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match="unreadable image") as e:
        load_image_folder(tmp_path, image_size=8)
    assert e.value.path == str(bad)
    with pytest.raises(ConfigError, match="data.image_size"):
        load_image_folder(tmp_path, image_size=0)
    with pytest.raises(ConfigError, match="data.channels"):
        load_image_folder(tmp_path, image_size=8, channels=4)
