import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# One test suite for every backend: subprocess tests share one GPU (no process takes most of its
# memory up front), and in-process runs use deterministic kernels as train.py does by default.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# One persistent XLA cache for the session, this process and every train.py or benchmark it starts: they
# compile the same few programs dozens of times, most of a short run's time on a 2-core CPU. XLA's
# flags are part of the cache key, so runs with other settings compile their own; the cache is new
# each session, so no program outlives the code that made it.
SESSION_XLA_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    SESSION_XLA_CACHE = tempfile.mkdtemp(prefix="vaejax-tests-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = SESSION_XLA_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
from vaejax.devices import use_deterministic_kernels  # noqa: E402

use_deterministic_kernels()

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mnist():
    from vaejax.data import load_bundled_mnist

    return load_bundled_mnist()


@pytest.fixture(scope="session")
def small_mnist(mnist):
    """512 training and 300 test images of real MNIST: enough to learn, fast to train."""
    from vaejax.data import Dataset

    return Dataset("mnist", mnist.train_images[:512], mnist.train_labels[:512],
                   mnist.test_images[:300], mnist.test_labels[:300], mnist.class_names)


def run_cli(*args, cwd=None, env=None):
    """Run `python train.py ARGS` in a subprocess, as a user would."""
    import subprocess

    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=600,
    )


def pytest_unconfigure(config):
    if SESSION_XLA_CACHE is not None:
        shutil.rmtree(SESSION_XLA_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` run only where JAX's default backend is a GPU."""
    import jax

    if jax.default_backend() == "gpu":
        return
    skip = pytest.mark.skip(reason="needs a GPU (JAX's default backend here is not one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def batch_loss(model, params, images, labels, weights, key, binarize: bool = False):
    """The weighted batch loss and its terms, as vaejax.steps.make_loss computes them."""
    from vaejax.steps import Batch, LossSpec, make_loss

    loss, (terms, _) = make_loss(model, LossSpec(binarize=binarize))(params, Batch(images, labels, weights), key)
    return loss, terms


def batch_gradient(model, params, images, labels, weights, key, micro_batches: int = 1):
    """The gradient of the seeds' batch loss over `micro_batches` parts, and its terms."""
    import jax

    from vaejax.steps import Batch, LossSpec, make_loss, micro_batched

    loss_fn = micro_batched(make_loss(model, LossSpec()), micro_batches)
    grads, (terms, _) = jax.grad(loss_fn, has_aux=True)(params, Batch(images, labels, weights), key)
    return grads, terms
