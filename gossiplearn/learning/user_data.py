"""A user's own dataset: a loader callable, an ``.npz`` file or a folder of images.

* ``MODULE:CALLABLE`` or ``path/to/file.py:CALLABLE``: called with the keyword arguments
  it accepts of ``seed`` (the run's seed, so that its shuffling is deterministic) and
  ``data_dir`` (``--data-dir``); returns ``(x_train, y_train, x_test, y_test)`` (numpy
  arrays or torch tensors) or a :class:`~gossiplearn.learning.datasets.Dataset`.
* ``path/to/data.npz``: arrays ``x_train``, ``y_train``, ``x_test``, ``y_test``, and
  optionally ``groups_train`` (one natural group per training row, for ``--partition
  natural``). Read with ``allow_pickle=False``.
* ``path/to/folder``: ``train/<class>/*.png|jpg`` and ``test/<class>/*``; classes are the
  sorted folder names of ``train``; every image must have the size of the first one.

Inputs are converted as a model expects them: unsigned bytes are pixels (float32 scaled to
``[0, 1]``), other integers are tokens (int64, e.g. characters for an embedding), floats
become float32. Labels must be whole numbers >= 0; there are ``max + 1`` classes.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from gossiplearn.errors import DatasetError
from gossiplearn.learning.datasets import Dataset
from gossiplearn.learning.plugins import call_user, is_plugin, load_callable

ARRAYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
FLAG = "--dataset"


def names_user_data(name: str) -> bool:
    """Whether ``name`` has the form of a user's dataset (it is not opened here)."""
    return is_plugin(name) or name.endswith(".npz") or Path(name).expanduser().is_dir()


def load_user_dataset(name: str, *, seed: int, data_dir: str | Path | None) -> Dataset:
    path = Path(name).expanduser()
    if name.endswith(".npz"):
        return _from_npz(name, path)
    if path.is_dir():
        return _from_image_folder(name, path)
    if is_plugin(name):
        return call_loader(name, seed=seed, data_dir=data_dir)
    from gossiplearn.learning.datasets import unknown_dataset

    raise unknown_dataset(name)


def call_loader(spec: str, *, seed: int, data_dir: str | Path | None) -> Dataset:
    """The dataset a user's loader returns, checked and converted."""
    loader = load_callable(spec, FLAG, DatasetError)
    offered: dict[str, Any] = {"seed": seed, "data_dir": data_dir}
    kwargs = {k: v for k, v in offered.items() if _accepts(loader, k)}
    got = call_user(loader, spec, FLAG, DatasetError, **kwargs)
    if isinstance(got, Dataset):
        return got
    if not isinstance(got, tuple | list) or len(got) != 4:
        raise DatasetError(
            f"{FLAG} {spec!r} returned {_describe(got)}: expected (x_train, y_train, x_test, "
            "y_test) or a gossiplearn Dataset"
        )
    return from_arrays(spec, *got)


def _accepts(function: Any, name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: pass nothing
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def from_arrays(
    name: str,
    x_train: Any,
    y_train: Any,
    x_test: Any,
    y_test: Any,
    groups_train: Any = None,
) -> Dataset:
    """A Dataset from arrays or tensors, converted as the module docstring says."""
    y_tr, y_te = _labels(name, "y_train", y_train), _labels(name, "y_test", y_test)
    x_tr, x_te = _inputs(name, "x_train", x_train), _inputs(name, "x_test", x_test)
    for what, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
        if len(x) != len(y):
            raise DatasetError(
                f"{FLAG} {name!r}: {len(x)} {what} inputs but {len(y)} {what} labels"
            )
        if not len(y):
            raise DatasetError(f"{FLAG} {name!r}: the {what} split is empty")
    groups = None
    if groups_train is not None:
        groups = _labels(name, "groups_train", groups_train)
    classes = int(max(y_tr.max(), y_te.max())) + 1
    try:
        return Dataset(name, x_tr, y_tr, x_te, y_te, classes, train_groups=groups)
    except DatasetError as error:
        raise DatasetError(f"{FLAG} {name!r}: {error}") from None


def _array(name: str, what: str, value: Any) -> npt.NDArray[Any]:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise DatasetError(f"{FLAG} {name!r}: {what} holds {array.dtype} values: expected numbers")
    return array


def _labels(name: str, what: str, value: Any) -> npt.NDArray[np.int64]:
    array = _array(name, what, value)
    if array.ndim != 1:
        raise DatasetError(f"{FLAG} {name!r}: {what} must be 1-D, got shape {array.shape}")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise DatasetError(
                f"{FLAG} {name!r}: {what} holds values that are not integers (e.g. "
                f"{array[~np.isclose(array, np.round(array))][:3].tolist()}): labels must be "
                "class numbers 0, 1, 2, ..."
            )
    elif array.dtype.kind == "b":
        raise DatasetError(f"{FLAG} {name!r}: {what} is boolean: labels must be class numbers")
    labels = array.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise DatasetError(f"{FLAG} {name!r}: {what} holds negative values ({labels.min()})")
    return labels


def _inputs(name: str, what: str, value: Any) -> npt.NDArray[Any]:
    array = _array(name, what, value)
    if array.ndim < 2:
        raise DatasetError(
            f"{FLAG} {name!r}: {what} must be [N, ...] (one row per sample), got shape "
            f"{array.shape}"
        )
    if array.dtype == np.uint8:  # pixels
        return array.astype(np.float32) / np.float32(255)
    if array.dtype.kind in "iub":  # tokens
        return array.astype(np.int64)
    out = array.astype(np.float32)
    if not np.all(np.isfinite(out)):
        raise DatasetError(f"{FLAG} {name!r}: {what} holds NaN or infinite values")
    return out


def _from_npz(name: str, path: Path) -> Dataset:
    if not path.is_file():
        raise DatasetError(f"{FLAG} {name!r}: there is no file {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ARRAYS if key not in archive.files]
            if missing:
                raise DatasetError(
                    f"{FLAG} {name!r}: {path} has no array {', '.join(missing)} (it holds "
                    f"{', '.join(archive.files) or 'nothing'}); save x_train, y_train, x_test "
                    "and y_test"
                )
            arrays = [archive[key] for key in ARRAYS]
            groups = archive["groups_train"] if "groups_train" in archive.files else None
    except DatasetError:
        raise
    except (OSError, ValueError) as error:  # not a zip, or an object array (pickle)
        raise DatasetError(
            f"{FLAG} {name!r}: {path} is not a readable .npz file: {error}"
        ) from None
    x_train, y_train, x_test, y_test = arrays
    return from_arrays(name, x_train, y_train, x_test, y_test, groups_train=groups)


def _from_image_folder(name: str, root: Path) -> Dataset:
    train, test = root / "train", root / "test"
    for split in (train, test):
        if not split.is_dir():
            raise DatasetError(
                f"{FLAG} {name!r}: {root} has no {split.name}/ folder: a folder of images needs "
                "train/<class>/*.png and test/<class>/*.png"
            )
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    if not classes:
        raise DatasetError(f"{FLAG} {name!r}: {train} has no class folders")
    unknown = sorted({p.name for p in test.iterdir() if p.is_dir()} - set(classes))
    if unknown:
        raise DatasetError(
            f"{FLAG} {name!r}: test classes {unknown} have no train/ folder of their own"
        )
    files = [_image_files(train / cls) for cls in classes]
    if not any(files):
        raise DatasetError(
            f"{FLAG} {name!r}: no images in {train}/<class>/ (looked for "
            f"{', '.join(IMAGE_SUFFIXES)})"
        )
    mode = _mode_of(name, next(f for f in files if f)[0])
    x_train, y_train = _read_images(name, files, mode)
    x_test, y_test = _read_images(name, [_image_files(test / cls) for cls in classes], mode)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DatasetError(
            f"{FLAG} {name!r}: test images are {_size(x_test[0])}, train images "
            f"{_size(x_train[0])}: give every image one size"
        )
    return from_arrays(name, x_train, y_train, x_test, y_test)


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _mode_of(name: str, file: Path) -> str:
    """Greyscale when the first image is, else RGB: one mode for the whole dataset."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as image:
            return "L" if image.mode in ("1", "L", "I", "I;16", "F") else "RGB"
    except (OSError, UnidentifiedImageError) as error:
        raise DatasetError(f"{FLAG} {name!r}: cannot read image {file}: {error}") from None


def _read_images(
    name: str, files_by_class: list[list[Path]], mode: str
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Images ``[N, C, H, W]`` (uint8) and their class numbers."""
    from PIL import Image, UnidentifiedImageError

    images: list[npt.NDArray[np.uint8]] = []
    labels: list[int] = []
    for label, files in enumerate(files_by_class):
        for file in files:
            try:
                with Image.open(file) as opened:
                    pixels = np.asarray(opened.convert(mode), dtype=np.uint8)
            except (OSError, UnidentifiedImageError) as error:
                raise DatasetError(f"{FLAG} {name!r}: cannot read image {file}: {error}") from None
            array = pixels[np.newaxis] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
            if images and array.shape != images[0].shape:
                raise DatasetError(
                    f"{FLAG} {name!r}: image {file} is {_size(array)}, the first image is "
                    f"{_size(images[0])}: give every image one size"
                )
            images.append(array)
            labels.append(label)
    if not images:
        raise DatasetError(f"{FLAG} {name!r}: the test/ folder holds no images")
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _size(image: npt.NDArray[Any]) -> str:
    channels, height, width = image.shape
    return f"{width}x{height} with {channels} channel{'s' if channels > 1 else ''}"


def _describe(value: Any) -> str:
    if isinstance(value, tuple | list):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"
