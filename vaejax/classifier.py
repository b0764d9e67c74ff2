"""A small convolutional digit classifier: the judge of generated samples.

Its penultimate features (128 values per image) give a Frechet distance between generated and real
images (an MNIST analogue of FID), and its predictions give the samples' class confidence and spread.
Trained by the project itself (seeded, a few minutes on a CPU) and cached on disk, so every
evaluation of a dataset uses the same judge.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import serialization

from vaejax import checkpoint
from vaejax.batching import SET_BATCH, batch_indices, map_batches, num_batches
from vaejax.data import IMAGE_SIDE, NUM_CLASSES, Dataset
from vaejax.errors import VaejaxError
from vaejax.files import atomic_write, is_number, make_folder, read_json, write_json
from vaejax.models import images_to_float

CLASSIFIER_EPOCHS = 5
CLASSIFIER_BATCH = 128
CLASSIFIER_LEARNING_RATE = 1e-3
FEATURES = 128
RECIPE_VERSION = 2  # bump when the network or its training changes, so cached classifiers are retrained
INFO_BYTES = 2**16  # classifier.json: four short fields


class DigitClassifier(nn.Module):
    """Two 3x3 conv + 2x2 max-pool stages (32, 64 channels), a 128-unit layer, 10 logits."""

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Float images (B, 28, 28, 1) in [0, 1] -> (logits (B, 10), penultimate features (B, 128))."""
        x = images
        for channels in (32, 64):
            x = nn.relu(nn.Conv(channels, (3, 3), padding="SAME")(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        features = nn.relu(nn.Dense(FEATURES)(x.reshape((x.shape[0], -1))))
        return nn.Dense(NUM_CLASSES)(features), features


@dataclass
class Classifier:
    params: dict
    test_accuracy: float

    def __post_init__(self):
        self._apply = jax.jit(lambda params, images: DigitClassifier().apply({"params": params}, images))

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Float images (N, 28, 28) or (N, 784) in [0, 1] -> (class probabilities, features), in batches."""
        images = np.asarray(images, np.float32).reshape(-1, IMAGE_SIDE, IMAGE_SIDE, 1)
        logits, features = map_batches(lambda images: self._apply(self.params, images), (images,), SET_BATCH)
        return np.asarray(jax.nn.softmax(logits)), features

    def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
        return float((self.predict(images)[0].argmax(axis=1) == labels).mean())


def init_classifier(key: jax.Array) -> dict:
    return DigitClassifier().init(key, jnp.zeros((1, IMAGE_SIDE, IMAGE_SIDE, 1), jnp.float32))["params"]


def make_classifier_step(optimizer: optax.GradientTransformation, batch_size: int):
    """A compiled step: gather a batch by index from device-resident uint8 images, one Adam update."""
    model = DigitClassifier()

    def step(params, opt_state, images_uint8, labels, order, step_index):
        indices, weights = batch_indices(order, step_index, batch_size)

        def loss(params):
            logits, _ = model.apply({"params": params}, images_to_float(images_uint8[indices]))
            per_image = optax.softmax_cross_entropy_with_integer_labels(logits, labels[indices])
            return jnp.sum(per_image * weights) / weights.sum()

        grads = jax.grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return jax.jit(step, donate_argnums=(0, 1))


def train_classifier(train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray,
                     test_labels: np.ndarray, seed: int, epochs: int = CLASSIFIER_EPOCHS,
                     log: Callable[[str], None] = print) -> Classifier:
    """Train on uint8 images (N, 28, 28) with Adam; every key derives from `seed`.

    The learning rate follows a cosine from 1e-3 to 0, so the last epoch settles instead of
    jittering by a few tenths of a percent of test accuracy (as a constant rate does).
    """
    init_key, shuffle_stream = jax.random.split(jax.random.key(seed))
    params = init_classifier(init_key)
    steps = num_batches(len(train_images), CLASSIFIER_BATCH)
    optimizer = optax.adam(optax.cosine_decay_schedule(CLASSIFIER_LEARNING_RATE, epochs * steps))
    opt_state = optimizer.init(params)
    step = make_classifier_step(optimizer, CLASSIFIER_BATCH)
    images, labels = jax.device_put((np.asarray(train_images, np.uint8), np.asarray(train_labels, np.int32)))
    classifier = Classifier(params, float("nan"))
    for epoch in range(epochs):
        order = jax.random.permutation(jax.random.fold_in(shuffle_stream, epoch), len(train_images))
        for step_index in range(steps):
            params, opt_state = step(params, opt_state, images, labels, order, jnp.int32(step_index))
        classifier.params = params
        accuracy = classifier.accuracy(np.asarray(test_images) / 255.0, test_labels)
        log(f"classifier epoch {epoch + 1}/{epochs}: test accuracy {accuracy:.4f}")
    classifier.test_accuracy = accuracy
    return classifier


def cached_classifier(dataset: Dataset, cache_dir: Path, seed: int = 0, epochs: int = CLASSIFIER_EPOCHS,
                      log: Callable[[str], None] = print) -> Classifier:
    """The classifier of `dataset` from `cache_dir`, trained (and stored there) on first use."""
    name = f"classifier-{dataset.name}-n{len(dataset.train_images)}-s{seed}-e{epochs}-v{RECIPE_VERSION}"
    folder = cache_dir / name
    params_path, info_path = folder / checkpoint.PARAMS_FILE, folder / "classifier.json"
    if params_path.is_file() and info_path.is_file():
        params = checkpoint.load_params(params_path, init_classifier(jax.random.key(0)))
        accuracy = read_json(info_path, INFO_BYTES, 1).get("test_accuracy")
        if not is_number(accuracy):
            raise VaejaxError(f"{info_path}: no test_accuracy (remove {folder} to retrain it)")
        return Classifier(params, float(accuracy))
    log(f"training the {dataset.name} classifier ({epochs} epochs), cached in {folder}")
    classifier = train_classifier(dataset.train_images, dataset.train_labels, dataset.test_images,
                                  dataset.test_labels, seed, epochs, log)
    make_folder(folder)
    atomic_write(params_path, serialization.to_bytes(classifier.params))
    info = {"dataset": dataset.name, "seed": seed, "epochs": epochs, "test_accuracy": classifier.test_accuracy}
    write_json(info_path, info)
    return classifier
