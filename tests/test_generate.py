"""`python -m vaejax.evaluate` and `python -m vaejax.generate` on small trained runs, and the classifier."""

import dataclasses
import json
from pathlib import Path

import jax
import matplotlib.image
import numpy as np
import pytest

from vaejax import evaluate, generate
from vaejax.checkpoint import load_finished_run
from vaejax.classifier import cached_classifier, train_classifier
from vaejax.config import Config
from vaejax.data import IMAGES_MAGIC, LABELS_MAGIC, parse_idx
from vaejax.samplers import prior_sampler
from vaejax.training import train


def quiet(_line):
    pass


def finished_run(folder: Path, dataset, **changes) -> Path:
    config = dataclasses.replace(Config(epochs=1, batch_size=64, workdir=str(folder)), **changes).resolved()
    train(config, dataset, log=quiet)
    return folder


@pytest.fixture(scope="module")
def cvae_run(tmp_path_factory, small_mnist):
    """conv_cvae, one epoch on 512 images: the conditional path through every command."""
    return finished_run(tmp_path_factory.mktemp("cvae") / "run", small_mnist, model="conv_cvae")


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory, small_mnist):
    return finished_run(tmp_path_factory.mktemp("dense") / "run", small_mnist, model="dense_ae")


@pytest.fixture(scope="module")
def small_classifier(small_mnist):
    return train_classifier(small_mnist.train_images, small_mnist.train_labels, small_mnist.test_images,
                            small_mnist.test_labels, seed=0, epochs=2, log=quiet)


def test_evaluate_writes_the_setting_and_bounds_and_repeats_bit_for_bit(cvae_run, capsys):
    args = ["--workdir", str(cvae_run), "--limit", "30", "--iw_samples", "20", "--batch_size", "16",
            "--no-sample_quality"]
    assert evaluate.main(args) == 0
    first = (cvae_run / evaluate.EVALUATION_FILE).read_bytes()
    results = json.loads(first)
    assert results["setting"] | {"backend": None} == {
        "model": "conv_cvae", "dataset": "mnist", "binarize": "none", "latent_dim": 2, "epochs": 1,
        "test_images": 30, "iw_samples": 20, "seed": 0, "backend": None}
    likelihood = results["likelihood"]
    assert likelihood["iwae"] <= likelihood["elbo"]
    assert likelihood["elbo"] == pytest.approx(likelihood["bce"] + likelihood["kl"], rel=1e-6)
    recon = results["reconstruction"]
    assert 0 < recon["mse"] < 1 and 0 < recon["ssim"] < 1 and recon["psnr"] > 0
    assert "IWAE bound on -log p(x), k = 20" in capsys.readouterr().out
    assert evaluate.main(args) == 0
    assert (cvae_run / evaluate.EVALUATION_FILE).read_bytes() == first


def test_evaluate_a_plain_autoencoder_gives_reconstruction_metrics_only(dense_run):
    assert evaluate.main(["--workdir", str(dense_run), "--limit", "50"]) == 0
    results = json.loads((dense_run / evaluate.EVALUATION_FILE).read_text())
    assert set(results) == {"setting", "reconstruction"} and results["setting"]["iw_samples"] is None


@pytest.mark.parametrize(("args", "message"), [
    (["--iw_samples", "0"], "--iw_samples must be from 1 to 2147483647, got 0"),
    (["--limit", "0"], "--limit must be from 1 to 16777216 (no dataset holds more images), got 0"),
])
def test_evaluate_bad_options_end_in_one_line(dense_run, capsys, args, message):
    assert evaluate.main(["--workdir", str(dense_run), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_evaluate_of_an_unfinished_run_is_one_clear_error(tmp_path, capsys):
    assert evaluate.main(["--workdir", str(tmp_path)]) == 2
    assert "config.json: unreadable" in capsys.readouterr().err


def test_sample_quality_judges_generated_against_real_images(cvae_run, small_mnist, small_classifier):
    _, model, params, _ = load_finished_run(cvae_run)
    quality = evaluate.sample_quality(model, params, small_mnist, small_classifier, jax.random.key(0), 200,
                                      [prior_sampler(model)])
    generated, real = quality["samplers"]["prior"], quality["real_train_images"]
    assert set(generated) == {"frechet_distance", "mean_confidence", "class_entropy", "label_agreement"}
    assert real["frechet_distance"] < generated["frechet_distance"]  # one epoch on 512 images: far from real
    assert real["class_entropy"] > 2.0  # real digits spread over the ten classes (log 10 = 2.30)


def test_classifier_is_seeded_and_cached(tmp_path, small_mnist, small_classifier):
    dataset = small_mnist.limited(256)
    trained, logged = cached_classifier(dataset, tmp_path, epochs=1, log=quiet), []
    cached = cached_classifier(dataset, tmp_path, epochs=1, log=logged.append)
    assert logged == []  # loaded, not trained again
    again = train_classifier(dataset.train_images, dataset.train_labels, dataset.test_images,
                             dataset.test_labels, seed=0, epochs=1, log=quiet)
    for a, b, c in zip(*(jax.tree_util.tree_leaves(x.params) for x in (trained, cached, again)), strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert cached.test_accuracy == trained.test_accuracy
    assert small_classifier.test_accuracy > 0.5  # 2 epochs on 512 images (chance: 0.1); the full one: README


def test_generate_writes_labelled_idx_npz_and_pngs_the_same_bytes_each_time(cvae_run, tmp_path, capsys):
    outputs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert generate.main(["--workdir", str(cvae_run), "--count", "25", "--labels", "--out", str(out)]) == 0
        outputs.append(out)
    names = sorted(path.name for path in outputs[0].iterdir())
    assert names == ["generated-images-idx3-ubyte", "generated-labels-idx1-ubyte", "generated.npz",
                     "generated.png", "interpolations.png"]
    for name in names:
        assert (outputs[0] / name).read_bytes() == (outputs[1] / name).read_bytes(), name
    images = parse_idx((outputs[0] / names[0]).read_bytes(), IMAGES_MAGIC, outputs[0] / names[0])
    labels = parse_idx((outputs[0] / names[1]).read_bytes(), LABELS_MAGIC, outputs[0] / names[1])
    assert images.shape == (25, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [3, 3, 3, 3, 3, 2, 2, 2, 2, 2]
    with np.load(outputs[0] / "generated.npz") as npz:
        np.testing.assert_array_equal(npz["images"], images)
        np.testing.assert_array_equal(npz["labels"], labels)
        np.testing.assert_array_equal(np.rint(npz["probabilities"].reshape(-1, 28, 28) * 255), images)
    assert matplotlib.image.imread(outputs[0] / "interpolations.png").ndim == 3


def test_generate_seed_changes_the_images(cvae_run, tmp_path):
    for seed in ("1", "2"):
        generate.main(["--workdir", str(cvae_run), "--count", "5", "--labels", "--seed", seed,
                       "--out", str(tmp_path / seed)])
    name = "generated-images-idx3-ubyte"
    assert (tmp_path / "1" / name).read_bytes() != (tmp_path / "2" / name).read_bytes()


@pytest.mark.parametrize(("run", "args", "message"), [
    ("dense_run", ["--sampler", "prior"], "a plain autoencoder has no prior; use --sampler gmm:K"),
    ("cvae_run", ["--labels", "--sampler", "gmm:0"], "gmm:0"),
    ("dense_run", ["--labels"], "--labels needs a class-conditional model (conv_cvae)"),
    ("cvae_run", [], "conv_cvae generates a chosen class: pass --labels"),
    ("cvae_run", ["--labels", "--count", "0"],
     "--count must be from 1 to 4294967295 (an IDX header holds the count in 32 bits), got 0"),
])
def test_generate_misuse_ends_in_one_line(request, tmp_path, capsys, run, args, message):
    workdir = request.getfixturevalue(run)
    assert generate.main(["--workdir", str(workdir), "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()


def test_a_plain_autoencoder_generates_from_a_mixture_fitted_once(dense_run, tmp_path, capsys):
    outputs = []
    for name in ("a", "b"):
        assert generate.main(["--workdir", str(dense_run), "--count", "20", "--out", str(tmp_path / name)]) == 0
        outputs.append(capsys.readouterr().out)
    assert "sampler: gmm:10 fitted to 20000 training codes" in outputs[0]
    assert "fitting gmm:10" in outputs[0] and "fitting" not in outputs[1]  # the fit is cached and reused
    path = tmp_path / "a" / "generated-images-idx3-ubyte"
    images = parse_idx(path.read_bytes(), IMAGES_MAGIC, path)
    assert images.shape == (20, 28, 28) and images.max() > 100  # digits, not blank
    assert (tmp_path / "b" / path.name).read_bytes() == path.read_bytes()
    with np.load(tmp_path / "a" / "generated.npz") as npz:
        assert str(npz["sampler"]) == "gmm:10 fitted to 20000 training codes"


def test_the_extremes_of_count_and_seed_generate(cvae_run, tmp_path):
    for seed in ("0", str(2**64 - 1)):
        assert generate.main(["--workdir", str(cvae_run), "--count", "1", "--labels", "--seed", seed,
                              "--out", str(tmp_path / seed)]) == 0
    images = [(tmp_path / seed / "generated-images-idx3-ubyte").read_bytes() for seed in ("0", str(2**64 - 1))]
    assert images[0] != images[1]
