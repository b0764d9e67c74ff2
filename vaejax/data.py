"""Datasets as uint8 arrays: the bundled MNIST, any folder of IDX files, or a TFDS dataset."""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from vaejax.errors import VaejaxError
from vaejax.files import open_regular
from vaejax.validation import host_memory_bytes

IMAGE_SIDE = 28
IMAGE_PIXELS = IMAGE_SIDE * IMAGE_SIDE
NUM_CLASSES = 10

MAX_EXAMPLES = 2**24  # far above any MNIST-like set (EMNIST: 697,932), below where float32 counts lose 1s

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# MD5 of the decompressed bytes of the bundled files (the official values, see vaejax/mnist/README.md).
MNIST_MD5 = {
    "train_images": "6bbc9ace898e44ae57da46a324031adb",
    "train_labels": "a25bea736e30d166cdddb491f175f624",
    "test_images": "2646ac647ad5339dbf082846283269ea",
    "test_labels": "27ae3e4e09519cfbb04c329615203637",
}

DIGIT_NAMES = tuple(str(digit) for digit in range(NUM_CLASSES))
FASHION_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
DEBIAN_FASHION_DIR = "/usr/share/datasets/fashion-mnist"


@dataclass(frozen=True)
class Dataset:
    """Images as uint8 (N, 28, 28), labels as uint8 (N,), and the names of the ten classes."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]

    def limited(self, limit: int | None) -> Dataset:
        """Keep only the first `limit` training images (the test set stays whole)."""
        if limit is None:
            return self
        return Dataset(
            self.name, self.train_images[:limit], self.train_labels[:limit],
            self.test_images, self.test_labels, self.class_names,
        )


def load_dataset(name: str, data_dir: str | None = None) -> Dataset:
    """Load `name`: from `data_dir` (IDX files) if given, the bundled copy for mnist, else TFDS."""
    class_names = FASHION_NAMES if name == "fashion_mnist" else DIGIT_NAMES
    if data_dir is not None:
        return load_idx_dir(Path(data_dir), name, class_names)
    if name == "mnist":
        return load_bundled_mnist()
    return load_tfds(name)


def load_bundled_mnist() -> Dataset:
    """The MNIST copy shipped inside the package, checked against the official MD5s."""
    folder = resources.files("vaejax") / "mnist"
    with resources.as_file(folder) as path:
        return load_idx_dir(Path(path), "mnist", DIGIT_NAMES, expected_md5=MNIST_MD5)


def load_idx_dir(
    folder: Path,
    name: str,
    class_names: tuple[str, ...],
    expected_md5: dict[str, str] | None = None,
) -> Dataset:
    """Read the four standard IDX files (gzip or raw) from `folder` and check they agree."""
    if not folder.is_dir():
        raise VaejaxError(f"data folder {folder} does not exist")
    arrays = {}
    for key, stem in IDX_FILES.items():
        path = _find_idx_file(folder, stem)
        magic = IMAGES_MAGIC if key.endswith("images") else LABELS_MAGIC
        raw = read_idx_bytes(path, magic)
        if expected_md5 is not None and hashlib.md5(raw).hexdigest() != expected_md5[key]:
            raise VaejaxError(f"{path}: MD5 mismatch, the file is corrupt (expected {expected_md5[key]})")
        arrays[key] = parse_idx(raw, magic, path)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise VaejaxError(
                f"{folder}: {split} set has {len(images)} images but {len(labels)} labels"
            )
    return Dataset(name=name, class_names=class_names, **arrays)


def _find_idx_file(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if os.path.lexists(candidate):  # whatever it is: the reader says what is wrong with it
            return candidate
    raise VaejaxError(f"{folder}: missing {stem}.gz (or uncompressed {stem})")


def read_idx_bytes(path: Path, expected_magic: int) -> bytes:
    """The IDX bytes of the regular file `path`, decompressed when it is gzip (recognised by its magic,
    not its name), read no further than its header says it holds (and one byte more, to tell a longer
    file): so a file (or a gzip bomb) far larger than its header is refused without being read."""
    header_size = 4 * (1 + (3 if expected_magic == IMAGES_MAGIC else 1))
    with open_regular(path) as (file, size):
        compressed = file.read(2) == b"\x1f\x8b"
        file.seek(0)
        stream = gzip.GzipFile(fileobj=file, mode="rb") if compressed else file
        try:
            header = stream.read(header_size)
            dims = idx_dims(header, expected_magic, path)
            expected_size = header_size + math.prod(dims)  # exact: the header may claim absurd sizes
            _check_declared_size(path, dims[0], expected_size)
            if not compressed:
                _check_size(path, size, dims[0], expected_size)
            raw = header + stream.read(expected_size + 1 - header_size)
        except (EOFError, zlib.error, gzip.BadGzipFile) as error:
            raise VaejaxError(f"{path}: corrupt or truncated gzip ({error})") from None
        except OSError as error:
            if compressed:
                raise VaejaxError(f"{path}: corrupt or truncated gzip ({error})") from None
            raise
    _check_size(path, len(raw), dims[0], expected_size)
    return raw


def _check_size(path: Path, size: int, examples: int, expected_size: int) -> None:
    if size != expected_size:
        raise VaejaxError(f"{path}: {size} bytes but the header ({examples} examples) needs {expected_size}")


def _check_declared_size(path: Path, examples: int, size: int) -> None:
    """Refuse a header that declares more examples than any dataset holds, or more than memory takes."""
    if examples > MAX_EXAMPLES:
        raise VaejaxError(f"{path}: the header declares {examples:,} examples, more than the {MAX_EXAMPLES:,} "
                          "any dataset holds")
    if size > host_memory_bytes() // 4:  # the arrays are copied (to the devices, into batches)
        raise VaejaxError(f"{path}: the header declares {size / 2**30:.3g} GiB, more than a quarter of "
                          "this machine's memory")


def write_idx(array: np.ndarray) -> bytes:
    """uint8 images (N, 28, 28) or labels (N,) as IDX bytes, the inverse of `parse_idx`."""
    magic = IMAGES_MAGIC if array.ndim == 3 else LABELS_MAGIC
    header = magic.to_bytes(4, "big") + b"".join(size.to_bytes(4, "big") for size in array.shape)
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def idx_dims(raw: bytes, expected_magic: int, path: Path) -> list[int]:
    """The dimensions an IDX header (the start of `raw`) declares, checked: magic, 28x28, some examples."""
    if len(raw) == 0:
        raise VaejaxError(f"{path}: file is empty")
    ndim = 3 if expected_magic == IMAGES_MAGIC else 1
    header_size = 4 * (1 + ndim)
    if len(raw) < header_size:
        raise VaejaxError(f"{path}: file too short for an IDX header ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        kind = "images" if expected_magic == IMAGES_MAGIC else "labels"
        raise VaejaxError(f"{path}: wrong magic number {magic}, expected {expected_magic} for IDX {kind}")
    dims = [int.from_bytes(raw[4 * (i + 1): 4 * (i + 2)], "big") for i in range(ndim)]
    if ndim == 3 and dims[1:] != [IMAGE_SIDE, IMAGE_SIDE]:
        raise VaejaxError(f"{path}: images are {dims[1]}x{dims[2]}, expected 28x28")
    if dims[0] == 0:
        raise VaejaxError(f"{path}: header says it holds no examples")
    return dims


def parse_idx(raw: bytes, expected_magic: int, path: Path) -> np.ndarray:
    """Parse IDX bytes into uint8 images (N, 28, 28) or labels (N,), validating the header."""
    dims = idx_dims(raw, expected_magic, path)
    header_size = 4 * (1 + len(dims))
    _check_size(path, len(raw), dims[0], header_size + math.prod(dims))  # exact: the header may claim absurd sizes
    array = np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)
    if len(dims) == 1 and array.max() >= NUM_CLASSES:
        raise VaejaxError(f"{path}: label {int(array.max())} outside 0..9")
    return array


def load_tfds(name: str, tfds_data_dir: str | None = None) -> Dataset:
    """A 28x28 grayscale TFDS dataset through `tfds.data_source` (random access, no TensorFlow).

    Reads data already prepared in `tfds_data_dir` (default: TFDS's own, `TFDS_DATA_DIR` or
    ~/tensorflow_datasets). Preparing needs TensorFlow and the network: done only when TF is there.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise VaejaxError(f"dataset {name!r} is not 'mnist', and other datasets come through TFDS, which is "
                          "not installed: pip install tensorflow-datasets, or give IDX files with --data_dir") from None
    try:
        builder = tfds.builder(name, data_dir=tfds_data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise VaejaxError(f"unknown dataset {name!r}: not 'mnist' and not a TFDS dataset") from None
    _check_tfds_features(name, builder.info.features)
    splits = {}
    for split in ("train", "test"):
        try:
            source = tfds.data_source(name, split=split, data_dir=tfds_data_dir, download=False)
        except Exception:  # TFDS raises several types for "not prepared"; we diagnose it ourselves
            _prepare_tfds(name, builder)
            source = tfds.data_source(name, split=split, data_dir=tfds_data_dir, download=False)
        records = [source[index] for index in range(len(source))]
        images = np.stack([record["image"] for record in records]).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
        labels = np.array([record["label"] for record in records])
        splits[split] = (images.astype(np.uint8), labels.astype(np.uint8))
    class_names = tuple(builder.info.features["label"].names)
    return Dataset(name, *splits["train"], *splits["test"], class_names)


def _check_tfds_features(name: str, features) -> None:
    image = features["image"] if "image" in features else None
    label = features["label"] if "label" in features else None
    if image is None or label is None or tuple(image.shape) != (IMAGE_SIDE, IMAGE_SIDE, 1):
        shape = None if image is None else tuple(image.shape)
        raise VaejaxError(f"dataset {name!r} has images of shape {shape}; vaejax needs 28x28x1 grayscale")
    if getattr(label, "num_classes", None) != NUM_CLASSES:
        raise VaejaxError(f"dataset {name!r} has {getattr(label, 'num_classes', '?')} classes, not 10")


def _prepare_tfds(name: str, builder) -> None:
    """Download and prepare `name` as array_record if TensorFlow is there; else say what to do."""
    try:
        import tensorflow  # noqa: F401  (TFDS needs it to write prepared data)
    except ImportError:
        hint = ""
        if name == "fashion_mnist" and os.path.isdir(DEBIAN_FASHION_DIR):
            hint = f"; or read the IDX files with --data_dir {DEBIAN_FASHION_DIR}"
        raise VaejaxError(
            f"TFDS dataset {name!r} is not prepared in {builder.data_dir} and preparing it needs "
            f"TensorFlow: pip install tensorflow, then rerun (it downloads once){hint}"
        ) from None
    builder.download_and_prepare(file_format="array_record")
