import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import batch_gradient, batch_loss

from vaejax import checkpoint
from vaejax.batching import batch_indices, num_batches
from vaejax.config import Config
from vaejax.devices import choose_loop, choose_micro_batches, plan_devices
from vaejax.errors import VaejaxError
from vaejax.inference import binarize_pixels
from vaejax.keys import seed_keys
from vaejax.models import build_model, images_to_float, init_params
from vaejax.steps import LossSpec, init_state
from vaejax.training import Trainer, train


def quiet(_line):
    pass


def dense_config(tmp_path, name="run", **changes):
    base = Config(model="dense_ae", epochs=2, batch_size=64, workdir=str(tmp_path / name))
    return dataclasses.replace(base, **changes).resolved()


def params_bytes(config):
    return (Path(config.workdir) / checkpoint.PARAMS_FILE).read_bytes()


def test_same_seed_gives_byte_identical_params(tmp_path, small_mnist):
    first, second = dense_config(tmp_path, "a"), dense_config(tmp_path, "b")
    train(first, small_mnist, log=quiet)
    train(second, small_mnist, log=quiet)
    assert params_bytes(first) == params_bytes(second)


def test_conv_vae_same_seed_gives_byte_identical_params(tmp_path, small_mnist):
    configs = [Config(epochs=1, limit=256, workdir=str(tmp_path / name)).resolved() for name in "ab"]
    for config in configs:
        train(config, small_mnist, log=quiet)
    assert params_bytes(configs[0]) == params_bytes(configs[1])


def test_different_seeds_give_different_params(tmp_path, small_mnist):
    first, second = dense_config(tmp_path, "a", seed=0), dense_config(tmp_path, "b", seed=1)
    train(first, small_mnist, log=quiet)
    train(second, small_mnist, log=quiet)
    assert params_bytes(first) != params_bytes(second)


@pytest.mark.parametrize("micro_batches", [None, 2])
def test_interrupted_and_resumed_run_ends_byte_identical(tmp_path, small_mnist, micro_batches):
    straight = dense_config(tmp_path, "straight", epochs=3, micro_batches=micro_batches)
    train(straight, small_mnist, log=quiet)

    interrupted = dense_config(tmp_path, "resumed", epochs=1, micro_batches=micro_batches)
    train(interrupted, small_mnist, log=quiet)
    resumed = dataclasses.replace(interrupted, epochs=3, resume=True)
    lines = []
    result = train(resumed, small_mnist, log=lines.append)

    assert lines[0].startswith("resumed from") and lines[0].endswith("at epoch 1, step 0")
    assert [record["epoch"] for record in result.history] == [1, 2, 3]
    assert params_bytes(resumed) == params_bytes(straight)
    straight_metrics = (Path(straight.workdir) / checkpoint.METRICS_FILE).read_text().splitlines()
    resumed_metrics = (Path(resumed.workdir) / checkpoint.METRICS_FILE).read_text().splitlines()
    strip_time = [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in straight_metrics]
    assert strip_time == [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                          for line in resumed_metrics]


def test_training_learns_and_writes_the_work_directory(tmp_path, small_mnist):
    config = dense_config(tmp_path, epochs=4)
    result = train(config, small_mnist, log=quiet)
    workdir = Path(config.workdir)
    losses = [record["test"]["loss"] for record in result.history]
    assert losses[-1] < losses[0] - 20  # nats per image
    saved = json.loads((workdir / checkpoint.CONFIG_FILE).read_text())
    assert saved["model"] == "dense_ae" and saved["batch_size"] == 64 and saved["learning_rate"] == 1e-3
    records = [json.loads(line) for line in (workdir / checkpoint.METRICS_FILE).read_text().splitlines()]
    assert [record["epoch"] for record in records] == [1, 2, 3, 4]
    assert all(record["config_hash"] == config.result_hash() for record in records)
    assert set(records[0]["test"]) == {"loss", "bce", "kl", "bce_per_pixel"}
    np.testing.assert_allclose(records[0]["test"]["bce_per_pixel"], records[0]["test"]["bce"] / 784)
    model = build_model("dense_ae", 2)
    template = init_params(model, jax.random.key(9))
    loaded = checkpoint.load_params(workdir / checkpoint.PARAMS_FILE, template)
    for got, want in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(result.params), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("micro_batches", [1, 3])
def test_last_partial_batch_is_used_and_compiled_once(small_mnist, micro_batches):
    model = build_model("dense_ae", 2)
    optimizer = optax.adam(1e-3)
    keys = seed_keys(0)
    # 512 images in batches of 100: the last holds 12, so with 3 parts two of them hold no real image.
    plan = plan_devices("dense_ae", 100, loop="step", micro_batches=micro_batches)
    trainer = Trainer(model, optimizer, 100, small_mnist, keys.eval, plan)
    state = init_state(model, optimizer, keys, trainer.steps)
    for _ in range(2):
        state = trainer.train_epoch(state, *trainer.shuffle(state.rng)[1:]).replace(step=jnp.int32(0))
        trainer.evaluate(state.params)  # 300 test images: one padded batch of 1000
    assert int(state.opt_state[0].count) == 2 * num_batches(512, 100) == 12
    assert trainer.train_step._cache_size() == 1
    assert trainer.eval_step._cache_size() == 1


def test_scan_loop_trains_the_same_function(tmp_path, small_mnist):
    step, scan = dense_config(tmp_path, "step", loop="step"), dense_config(tmp_path, "scan", loop="scan")
    step_history = train(step, small_mnist, log=quiet).history
    scan_history = train(scan, small_mnist, log=quiet).history
    for by_step, by_scan in zip(step_history, scan_history, strict=True):
        np.testing.assert_allclose(by_scan["train"]["loss"], by_step["train"]["loss"], rtol=1e-5)
        np.testing.assert_allclose(by_scan["test"]["loss"], by_step["test"]["loss"], rtol=1e-5)


def tree_allclose(got, want, rtol=1e-5, atol=1e-6):
    for got_leaf, want_leaf in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        np.testing.assert_allclose(got_leaf, want_leaf, rtol=rtol, atol=atol)


@pytest.mark.parametrize("micro_batches", [2, 3])
def test_micro_batches_sum_to_the_whole_batch_gradient(small_mnist, micro_batches):
    """A plain autoencoder draws no noise, so its parts must add up to the whole batch's gradient and
    terms, also when the padding of a short batch leaves a part with no real image."""
    model = build_model("dense_ae", 2)
    params = init_params(model, jax.random.key(0))
    images, labels = jnp.asarray(small_mnist.train_images[:12]), jnp.asarray(small_mnist.train_labels[:12])
    weights = jnp.array([1.0] * 5 + [0.0] * 7)  # in 3 parts of 4: 4 real, 1 real, none
    key = jax.random.key(1)
    whole_grads, whole_terms = batch_gradient(model, params, images, labels, weights, key)
    grads, terms = batch_gradient(model, params, images, labels, weights, key, micro_batches=micro_batches)
    tree_allclose(grads, whole_grads)
    tree_allclose(terms, whole_terms)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(grads))


def test_evaluation_in_micro_batches_gives_the_same_test_metrics(small_mnist):
    model = build_model("dense_ae", 2)
    optimizer = optax.adam(1e-3)
    keys = seed_keys(0)
    params = init_params(model, keys.init)
    metrics = [Trainer(model, optimizer, 64, small_mnist, keys.eval,
                       plan_devices("dense_ae", 64, loop="step", micro_batches=parts)).evaluate(params)[0]
               for parts in (1, 2)]
    for name in ("loss", "bce", "kl"):
        np.testing.assert_allclose(metrics[1][name], metrics[0][name], rtol=1e-6)


def test_micro_batches_of_a_vae_draw_each_part_from_its_own_key(small_mnist):
    model = build_model("conv_vae", 2)
    params = init_params(model, jax.random.key(0))
    images, labels = jnp.asarray(small_mnist.train_images[:8]), jnp.asarray(small_mnist.train_labels[:8])
    weights, key = jnp.ones(8), jax.random.key(1)

    def by_hand(params):  # two halves, each half the weight, part i from fold_in(key, i)
        first = batch_loss(model, params, images[:4], labels[:4], weights[:4], jax.random.fold_in(key, 0))[0]
        second = batch_loss(model, params, images[4:], labels[4:], weights[4:], jax.random.fold_in(key, 1))[0]
        return 0.5 * first + 0.5 * second

    want_loss, want_grads = jax.value_and_grad(by_hand)(params)
    grads, terms = batch_gradient(model, params, images, labels, weights, key, micro_batches=2)
    np.testing.assert_allclose(terms["loss"], want_loss, rtol=1e-6)
    np.testing.assert_allclose(terms["loss"], terms["bce"] + terms["kl"], rtol=1e-6)
    tree_allclose(grads, want_grads, rtol=1e-4, atol=1e-6)


def test_micro_batches_auto_follows_the_measurements():
    assert choose_micro_batches(None, "conv_vae", "cpu", devices=1) == 2
    assert choose_micro_batches(None, "conv_cvae", "cpu", devices=1) == 2
    assert choose_micro_batches(None, "dense_ae", "cpu", devices=1) == 1
    assert choose_micro_batches(None, "conv_vae", "gpu", devices=1) == 1  # one GPU: whole batches win
    assert choose_micro_batches(None, "conv_vae", "cpu", devices=8) == 1  # the devices split the batch already
    assert choose_micro_batches(3, "dense_ae", "cpu", devices=1) == 3


def test_loop_auto_is_the_epoch_scan_on_accelerators_and_the_measured_loop_on_cpu():
    for backend in ("gpu", "tpu"):
        assert {choose_loop("auto", model, backend) for model in ("conv_vae", "conv_cvae", "dense_ae")} == {"scan"}
    assert choose_loop("auto", "conv_vae", "cpu") == "step" and choose_loop("auto", "dense_ae", "cpu") == "scan"
    # an explicit --loop wins over the measurement, in both directions
    assert choose_loop("step", "dense_ae", "cpu") == "step" and choose_loop("scan", "conv_vae", "cpu") == "scan"
    assert choose_loop("step", "conv_vae", "gpu") == "step"


def test_evaluation_in_one_scan_equals_a_call_per_batch(small_mnist):
    """The accelerators' evaluation (every test batch in one compiled call) gives the per-batch
    loop's metrics and latent means."""
    model = build_model("conv_vae", 2)
    keys = seed_keys(0)
    params = init_params(model, keys.init)
    dataset = dataclasses.replace(small_mnist, test_images=np.concatenate([small_mnist.test_images] * 4),
                                  test_labels=np.concatenate([small_mnist.test_labels] * 4))  # 1200: 2 batches
    results = [Trainer(model, optax.adam(1e-3), 64, dataset, keys.eval,
                       plan_devices("conv_vae", 64, loop=loop, micro_batches=1)).evaluate(params)
               for loop in ("step", "scan")]
    (by_step, step_means), (by_scan, scan_means) = results
    assert step_means.shape == scan_means.shape == (1200, 2)
    np.testing.assert_allclose(scan_means, step_means, rtol=1e-5, atol=1e-6)
    for name in ("loss", "bce", "kl"):
        np.testing.assert_allclose(by_scan[name], by_step[name], rtol=1e-5)


def test_batches_cover_every_image_once():
    order = jax.random.permutation(jax.random.key(0), 250)
    seen, total_weight = [], 0.0
    for step in range(num_batches(250, 64)):
        indices, weights = batch_indices(order, jnp.int32(step), 64)
        seen.extend(np.asarray(indices)[np.asarray(weights) > 0].tolist())
        total_weight += float(weights.sum())
    assert sorted(seen) == list(range(250)) and total_weight == 250


def test_refuses_to_clobber_a_run_unless_asked(tmp_path, small_mnist):
    config = dense_config(tmp_path, epochs=1)
    train(config, small_mnist, log=quiet)
    before = (Path(config.workdir) / checkpoint.CHECKPOINT_FILE).read_bytes()
    with pytest.raises(VaejaxError, match="already holds a run: pass --resume"):
        train(config, small_mnist, log=quiet)
    assert (Path(config.workdir) / checkpoint.CHECKPOINT_FILE).read_bytes() == before
    with pytest.raises(VaejaxError, match="holds a run with different learning_rate"):
        train(dataclasses.replace(config, resume=True, learning_rate=0.5), small_mnist, log=quiet)
    train(dataclasses.replace(config, overwrite=True), small_mnist, log=quiet)


def test_batch_larger_than_the_data_is_refused(tmp_path, small_mnist):
    with pytest.raises(VaejaxError, match="--batch_size 600 is larger than the 512 training images"):
        train(dense_config(tmp_path, batch_size=600), small_mnist, log=quiet)


def test_dynamic_binarization_draws_a_fresh_binary_batch_from_the_step_key(small_mnist):
    model = build_model("dense_ae", 2)
    params = init_params(model, jax.random.key(0))
    images, labels, weights = small_mnist.train_images[:8], small_mnist.train_labels[:8], jnp.ones(8)
    key = jax.random.key(3)
    loss, _ = batch_loss(model, params, images, labels, weights, key, binarize=True)
    binarize_key, _ = jax.random.split(key)
    binary = binarize_pixels(binarize_key, images_to_float(images))
    logits = model.apply({"params": params}, binary, key)[0]
    expected = jnp.mean(jnp.sum(jax.nn.softplus(logits) - binary.reshape(8, -1) * logits, axis=-1))
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    other, _ = batch_loss(model, params, images, labels, weights, jax.random.key(4), binarize=True)
    assert loss != other


def test_binarized_run_evaluates_on_the_fixed_binary_test_set(tmp_path, small_mnist):
    trainer = Trainer(build_model("dense_ae", 2), optax.adam(1e-3), 64, small_mnist, seed_keys(0).eval,
                      plan_devices("dense_ae", 64), LossSpec(binarize=True))
    test_images = np.asarray(trainer.test_data[0])
    assert set(np.unique(test_images).tolist()) == {0, 255}
    result = train(dense_config(tmp_path, binarize="dynamic"), small_mnist, log=quiet)
    plain = train(dense_config(tmp_path, "plain"), small_mnist, log=quiet)
    assert result.history[-1]["test"]["loss"] != plain.history[-1]["test"]["loss"]


def test_epoch_means_weigh_every_real_image_once(small_mnist):
    """300 test images in one padded batch of 1000: the test loss is the mean over the 300 images,
    the padding counted nowhere (neither in the batch mean nor in the epoch's image count)."""
    from vaejax.losses import bce_from_logits

    model, keys = build_model("dense_ae", 2), seed_keys(0)
    params = init_params(model, keys.init)
    trainer = Trainer(model, optax.adam(1e-3), 64, small_mnist, keys.eval, plan_devices("dense_ae", 64, loop="step"))
    metrics, means = trainer.evaluate(params)
    images = images_to_float(small_mnist.test_images)
    logits = model.apply({"params": params}, images, keys.eval)[0]
    expected = float(bce_from_logits(logits, images.reshape(len(images), -1)).mean())
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)
    assert means.shape == (300, 2)
