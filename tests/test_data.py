import gzip
import hashlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from vaejax.data import (
    DIGIT_NAMES,
    FASHION_NAMES,
    IDX_FILES,
    MNIST_MD5,
    load_dataset,
    load_idx_dir,
    load_tfds,
    write_idx,
)
from vaejax.errors import VaejaxError


def write_idx_dir(folder: Path, arrays: dict, compress: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in IDX_FILES.items():
        raw = write_idx(np.asarray(arrays[key], np.uint8))
        path = folder / (f"{stem}.gz" if compress else stem)
        path.write_bytes(gzip.compress(raw) if compress else raw)
    return folder


def random_arrays(train=20, test=10, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (train, 28, 28)),
        "train_labels": rng.integers(0, 10, train),
        "test_images": rng.integers(0, 256, (test, 28, 28)),
        "test_labels": rng.integers(0, 10, test),
    }


def test_bundled_mnist_is_the_real_thing(mnist):
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.train_images.dtype == np.uint8
    assert mnist.test_images.shape == (10000, 28, 28)
    assert mnist.train_labels.shape == (60000,) and mnist.test_labels.shape == (10000,)
    assert set(np.unique(mnist.test_labels)) == set(range(10))
    assert mnist.class_names == DIGIT_NAMES
    assert load_dataset("mnist").train_images.shape == (60000, 28, 28)


def test_bundled_mnist_md5_is_checked(tmp_path, mnist):
    arrays = {"train_images": mnist.train_images[:3], "train_labels": mnist.train_labels[:3],
              "test_images": mnist.test_images[:3], "test_labels": mnist.test_labels[:3]}
    folder = write_idx_dir(tmp_path / "mnist", arrays)
    with pytest.raises(VaejaxError, match=r"train-images-idx3-ubyte.gz: MD5 mismatch"):
        load_idx_dir(folder, "mnist", DIGIT_NAMES, expected_md5=MNIST_MD5)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_folder_gzip_or_raw(tmp_path, compress):
    arrays = random_arrays()
    dataset = load_dataset("fashion_mnist", str(write_idx_dir(tmp_path, arrays, compress)))
    np.testing.assert_array_equal(dataset.train_images, arrays["train_images"])
    np.testing.assert_array_equal(dataset.test_labels, arrays["test_labels"])
    assert dataset.train_images.dtype == np.uint8
    assert dataset.class_names == FASHION_NAMES


def test_limit_keeps_the_first_training_images(tmp_path):
    dataset = load_dataset("mnist", str(write_idx_dir(tmp_path, random_arrays())))
    limited = dataset.limited(5)
    np.testing.assert_array_equal(limited.train_images, dataset.train_images[:5])
    assert len(limited.test_images) == len(dataset.test_images)


def corrupt(folder: Path, stem: str, mutate) -> None:
    path = folder / f"{stem}.gz"
    path.write_bytes(mutate(path.read_bytes()))


def regzip(edit):
    return lambda data: gzip.compress(edit(gzip.decompress(data)))


@pytest.mark.parametrize(("stem", "mutate", "message"), [
    ("train-images-idx3-ubyte", lambda data: b"", "train-images-idx3-ubyte.gz: file is empty"),
    ("train-images-idx3-ubyte", lambda data: data[: len(data) // 2], "corrupt or truncated gzip"),
    ("train-labels-idx1-ubyte", regzip(lambda raw: (2051).to_bytes(4, "big") + raw[4:]),
     "wrong magic number 2051, expected 2049"),
    ("t10k-images-idx3-ubyte", regzip(lambda raw: raw[:-5]), "bytes but the header"),
    ("t10k-labels-idx1-ubyte", regzip(lambda raw: raw[:-1] + b"\x0c"), "label 12 outside 0..9"),
    ("t10k-images-idx3-ubyte", regzip(lambda raw: raw[:4]), "too short for an IDX header"),
])
def test_bad_files_name_the_file_and_the_problem(tmp_path, stem, mutate, message):
    folder = write_idx_dir(tmp_path, random_arrays())
    corrupt(folder, stem, mutate)
    with pytest.raises(VaejaxError, match=message) as caught:
        load_dataset("mnist", str(folder))
    assert stem in str(caught.value) and "\n" not in str(caught.value)


def test_image_and_label_counts_must_agree(tmp_path):
    arrays = random_arrays()
    arrays["train_labels"] = arrays["train_labels"][:-1]
    with pytest.raises(VaejaxError, match="train set has 20 images but 19 labels"):
        load_dataset("mnist", str(write_idx_dir(tmp_path, arrays)))


def test_images_must_be_28x28(tmp_path):
    arrays = random_arrays()
    arrays["test_images"] = np.zeros((10, 32, 32))
    with pytest.raises(VaejaxError, match="images are 32x32, expected 28x28"):
        load_dataset("mnist", str(write_idx_dir(tmp_path, arrays)))


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(VaejaxError, match="does not exist"):
        load_dataset("mnist", str(tmp_path / "nowhere"))
    folder = write_idx_dir(tmp_path / "d", random_arrays())
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(VaejaxError, match="missing t10k-labels-idx1-ubyte.gz"):
        load_dataset("mnist", str(folder))


def test_debian_fashion_mnist_reads_when_installed():
    folder = Path("/usr/share/datasets/fashion-mnist")
    if not folder.is_dir():
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    dataset = load_dataset("fashion_mnist", str(folder))
    assert dataset.train_images.shape == (60000, 28, 28) and dataset.test_images.shape == (10000, 28, 28)


@pytest.mark.parametrize(("name", "names"), [("fashion_mnist", FASHION_NAMES), ("kmnist", None)])
def test_tfds_datasets_through_data_source(name, names):
    tfds = pytest.importorskip("tensorflow_datasets")

    with tfds.testing.mock_data(num_examples=12):
        dataset = load_dataset(name)
    assert dataset.train_images.shape == (12, 28, 28) and dataset.train_images.dtype == np.uint8
    assert dataset.test_labels.shape == (12,) and dataset.test_labels.max() < 10
    assert len(dataset.class_names) == 10
    if names:
        assert dataset.class_names == names


def test_tfds_rejects_colour_images_and_unknown_names():
    tfds = pytest.importorskip("tensorflow_datasets")

    with tfds.testing.mock_data(num_examples=4), pytest.raises(VaejaxError, match="needs 28x28x1 grayscale"):
        load_dataset("cifar10")
    with pytest.raises(VaejaxError, match="unknown dataset 'no_such_set'"):
        load_dataset("no_such_set")


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None, reason="TensorFlow would prepare it")
def test_unprepared_tfds_dataset_says_what_to_install(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(VaejaxError, match="pip install tensorflow"):
        load_tfds("kmnist", tfds_data_dir=str(tmp_path))


def test_missing_tfds_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # as if it were not installed
    with pytest.raises(VaejaxError, match="TFDS, which is not installed: pip install tensorflow-datasets"):
        load_dataset("no_such_set")


def test_bundled_files_have_the_readme_checksums():
    import vaejax

    folder = Path(vaejax.__file__).parent / "mnist"
    readme = (folder / "README.md").read_text()
    for key, stem in IDX_FILES.items():
        raw = gzip.decompress((folder / f"{stem}.gz").read_bytes())
        assert hashlib.md5(raw).hexdigest() == MNIST_MD5[key]
        assert MNIST_MD5[key] in readme
