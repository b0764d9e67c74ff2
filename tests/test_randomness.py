"""The randomness contract: training is random where it must be and fixed where it must be.

Within an epoch every step draws new reparameterisation noise; every epoch has a new order that
uses each training image exactly once (the padded last batch included); the evaluation noise and
the figures' prior samples stay the same from epoch to epoch; another seed changes every stream.
The draws are recorded from inside the compiled steps (`jax.debug.callback`), so the tests see
what the real loop does, with micro-batches and with the epoch scan too.
"""

import dataclasses

import jax
import numpy as np
import pytest

from vaejax import batching, models, steps
from vaejax.config import Config
from vaejax.figures import RunFigures
from vaejax.keys import seed_keys
from vaejax.training import train

TRAIN_IMAGES, BATCH = 100, 32  # 4 steps an epoch, the last holding 4 real images and 28 padded rows


@dataclasses.dataclass
class Draws:
    noise: list  # every eps the model drew, in order: (rows, latent) arrays
    batches: list  # every batch's (indices, weights), in order


def record_draws(monkeypatch) -> Draws:
    """Wrap the model's noise and the batch selection so that each compiled call reports them."""
    draws = Draws([], [])
    draw_noise = models.reparameterize
    select = steps.batch_indices

    def reparameterize(key, mean, std):
        eps = jax.random.normal(key, mean.shape, mean.dtype)  # the noise the model draws from this key
        jax.debug.callback(lambda eps: draws.noise.append(np.asarray(eps)), eps, ordered=True)
        return draw_noise(key, mean, std)

    def batch_indices(order, step, batch_size):
        indices, weights = select(order, step, batch_size)
        jax.debug.callback(lambda *batch: draws.batches.append(tuple(map(np.asarray, batch))), indices, weights,
                           ordered=True)
        return indices, weights

    monkeypatch.setattr(models, "reparameterize", reparameterize)
    monkeypatch.setattr(steps, "batch_indices", batch_indices)
    return draws


def train_and_record(monkeypatch, tmp_path, small_mnist, name="run", **options) -> tuple[Draws, object]:
    draws = record_draws(monkeypatch)
    config = Config(epochs=2, batch_size=BATCH, limit=TRAIN_IMAGES, workdir=str(tmp_path / name), **options)
    result = train(config.resolved(), small_mnist, log=lambda line: None)
    return draws, result


def split_by_batch_size(arrays, parts: int = 1):
    """Training draws have the training batch's rows, evaluation draws a test batch's (initialisation
    draws one row, ignored)."""
    training = [array for array in arrays if len(array) == BATCH // parts]
    evaluation = [array for array in arrays if len(array) == batching.SET_BATCH // parts]
    return training, evaluation


def distinct(arrays) -> int:
    return len({array.tobytes() for array in arrays})


@pytest.mark.parametrize(("loop", "micro_batches"), [("step", 1), ("step", 2), ("scan", 1)])
def test_every_step_draws_new_noise_and_every_epoch_a_new_order_over_every_image(
        monkeypatch, tmp_path, small_mnist, loop, micro_batches):
    draws, _ = train_and_record(monkeypatch, tmp_path, small_mnist, loop=loop, micro_batches=micro_batches)
    steps_per_epoch, epochs = 4, 2

    noise, eval_noise = split_by_batch_size(draws.noise, micro_batches)
    assert len(noise) == epochs * steps_per_epoch * micro_batches
    assert distinct(noise) == len(noise)  # every step, every part, every epoch: its own noise
    assert all(abs(eps.mean()) < 0.5 and 0.5 < eps.std() < 1.5 for eps in noise)  # standard normal draws

    batches, _ = split_by_batch_size([indices for indices, _ in draws.batches])
    weights = [weight for indices, weight in draws.batches if len(indices) == BATCH]
    assert len(batches) == epochs * steps_per_epoch
    orders = []
    for epoch in range(epochs):
        chosen = slice(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch)
        real = [indices[weight > 0] for indices, weight in zip(batches[chosen], weights[chosen], strict=True)]
        order = np.concatenate(real)
        assert sorted(order.tolist()) == list(range(TRAIN_IMAGES))  # each image exactly once
        assert [len(part) for part in real] == [32, 32, 32, 4]  # the last batch padded, its padding weightless
        orders.append(order)
    assert not np.array_equal(orders[0], orders[1])  # a new shuffle each epoch

    per_epoch = len(eval_noise) // epochs
    assert per_epoch == micro_batches  # 300 test images: one padded batch of 1000
    for first, second in zip(eval_noise[:per_epoch], eval_noise[per_epoch:], strict=True):
        np.testing.assert_array_equal(first, second)  # the evaluation sees the same noise every epoch


def test_every_draw_is_the_documented_key_tree_of_the_seed(monkeypatch, tmp_path, small_mnist):
    """The exact streams, rebuilt from `--seed` alone as README's Reproducibility section describes:
    root key -> (init, train, eval, sample); each epoch's key -> (next epoch's, shuffle, step key);
    step s draws from fold_in(step key, s); test batch b from fold_in(eval key, b)."""
    seed, epochs, steps_per_epoch = 5, 2, 4
    draws, _ = train_and_record(monkeypatch, tmp_path, small_mnist, seed=seed, loop="step", micro_batches=1)
    noise, eval_noise = split_by_batch_size(draws.noise)
    batches, _ = split_by_batch_size([indices for indices, _ in draws.batches])

    init, train_key, eval_key, _ = jax.random.split(jax.random.key(seed), 4)
    rng, expected_noise, expected_orders = train_key, [], []
    for _ in range(epochs):
        rng, shuffle_key, step_key = jax.random.split(rng, 3)
        expected_orders.append(np.asarray(jax.random.permutation(shuffle_key, TRAIN_IMAGES)))
        expected_noise += [jax.random.normal(jax.random.fold_in(step_key, step), (BATCH, 2))
                           for step in range(steps_per_epoch)]
    for drawn, expected in zip(noise, expected_noise, strict=True):
        np.testing.assert_array_equal(drawn, expected)
    for epoch, order in enumerate(expected_orders):
        drawn_order = np.concatenate(batches[epoch * steps_per_epoch:(epoch + 1) * steps_per_epoch])
        np.testing.assert_array_equal(drawn_order[:TRAIN_IMAGES], order)
    expected_eval = jax.random.normal(jax.random.fold_in(eval_key, 0), (batching.SET_BATCH, 2))
    np.testing.assert_array_equal(eval_noise[0], expected_eval)
    np.testing.assert_array_equal(eval_noise[-1], expected_eval)
    run_keys = seed_keys(seed)
    for stream, expected in zip(("init", "train", "eval"), (init, train_key, eval_key), strict=True):
        np.testing.assert_array_equal(jax.random.key_data(getattr(run_keys, stream)), jax.random.key_data(expected))


def test_another_seed_changes_every_stream(monkeypatch, tmp_path, small_mnist):
    runs = [train_and_record(monkeypatch, tmp_path, small_mnist, name=f"seed{seed}", seed=seed, loop="step",
                             micro_batches=1) for seed in (0, 1)]
    (first, first_result), (second, second_result) = runs
    first_noise, first_eval = split_by_batch_size(first.noise)
    second_noise, second_eval = split_by_batch_size(second.noise)
    assert not np.array_equal(first_noise[0], second_noise[0])  # training noise
    assert not np.array_equal(first_eval[0], second_eval[0])  # evaluation noise
    assert not np.array_equal(first.batches[0][0], second.batches[0][0])  # shuffle order
    keys = [seed_keys(seed) for seed in (0, 1)]
    for stream in ("init", "train", "eval", "sample"):
        assert not np.array_equal(jax.random.key_data(getattr(keys[0], stream)),
                                  jax.random.key_data(getattr(keys[1], stream))), stream
    figure_z = [RunFigures.for_run(result.config, result.model, result.dataset).prior_z
                for result in (first_result, second_result)]
    assert not np.array_equal(figure_z[0], figure_z[1])  # figure samples


def test_figure_samples_are_the_same_z_every_epoch(tmp_path, small_mnist):
    """The sample grid decodes one fixed set of z (from the seed's sample key), so epochs compare."""
    config = Config(epochs=1, limit=64, batch_size=32, workdir=str(tmp_path / "run")).resolved()
    model = models.build_model("conv_vae", 2)
    figures = [RunFigures.for_run(config, model, small_mnist) for _ in range(2)]
    np.testing.assert_array_equal(figures[0].prior_z, figures[1].prior_z)
    expected = jax.random.normal(seed_keys(config.seed).sample, (64, 2))
    np.testing.assert_array_equal(figures[0].prior_z, expected)
    params = [models.init_params(model, jax.random.key(index)) for index in range(2)]
    samples = [figures[0].epoch_arrays(p).samples for p in params]  # other params, same z
    assert samples[0].shape == (64, 784) and not np.array_equal(samples[0], samples[1])


def test_each_test_batch_draws_its_own_evaluation_noise(monkeypatch, small_mnist):
    """The evaluation key is folded with the batch index: two test batches never share their noise."""
    import optax

    from vaejax.devices import plan_devices
    from vaejax.training import Trainer

    draws = record_draws(monkeypatch)
    dataset = dataclasses.replace(small_mnist, test_images=np.concatenate([small_mnist.test_images] * 4),
                                  test_labels=np.concatenate([small_mnist.test_labels] * 4))  # 1200: 2 batches
    model, keys = models.build_model("conv_vae", 2), seed_keys(0)
    trainer = Trainer(model, optax.adam(1e-3), BATCH, dataset, keys.eval,
                      plan_devices("conv_vae", BATCH, loop="step", micro_batches=1))
    trainer.evaluate(models.init_params(model, keys.init))
    _, eval_noise = split_by_batch_size(draws.noise)
    assert len(eval_noise) == 2 and distinct(eval_noise) == 2
