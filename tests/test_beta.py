"""beta-VAE (`--beta`): the KL weight of the training ELBO. At 1 (the default) a run is the seeds' run
bit for bit and keeps its identity; otherwise the training loss is BCE + beta * KL, while the
evaluation still reports the true ELBO."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

from vaejax.config import Config
from vaejax.errors import VaejaxError
from vaejax.models import build_model, init_params
from vaejax.steps import Batch, LossSpec, make_loss
from vaejax.training import train


def quiet(line):
    pass


def vae_config(tmp_path, name, **options) -> Config:
    return Config(latent_dim=2, epochs=1, batch_size=32, limit=96, workdir=str(tmp_path / name), tensorboard=False,
                  plot_latent=False, loop="step", micro_batches=1, **options).resolved()


def test_beta_one_gives_the_bytes_and_the_identity_of_a_run_without_it(tmp_path, small_mnist):
    plain = train(vae_config(tmp_path, "plain"), small_mnist, log=quiet)
    weighted = train(dataclasses.replace(vae_config(tmp_path, "beta1"), beta=1.0), small_mnist, log=quiet)
    assert serialization.to_bytes(weighted.params) == serialization.to_bytes(plain.params)
    assert weighted.config.result_hash() == plain.config.result_hash() and "beta" not in plain.config.result_dict()
    assert dataclasses.replace(plain.config, beta=4.0).result_dict()["beta"] == 4.0


def test_beta_weighs_the_kl_of_the_training_loss_only(small_mnist):
    model = build_model("conv_vae", 2)
    params = init_params(model, jax.random.key(0))
    batch = Batch(jnp.asarray(small_mnist.train_images[:8]), jnp.asarray(small_mnist.train_labels[:8]), jnp.ones(8))
    key = jax.random.key(1)
    seeds_loss, (seeds_terms, _) = make_loss(model, LossSpec())(params, batch, key)
    loss, (terms, _) = make_loss(model, LossSpec(beta=4.0))(params, batch, key)
    np.testing.assert_array_equal(terms["bce"], seeds_terms["bce"])
    np.testing.assert_array_equal(terms["kl"], seeds_terms["kl"])
    np.testing.assert_allclose(loss, seeds_terms["bce"] + 4.0 * seeds_terms["kl"], rtol=1e-6)
    assert loss > seeds_loss  # the KL of an untrained encoder is positive


def test_a_beta_run_trains_on_the_weighted_loss_and_reports_the_true_elbo(tmp_path, small_mnist):
    result = train(vae_config(tmp_path, "beta4", beta=4.0), small_mnist, log=quiet)
    record = result.history[-1]
    np.testing.assert_allclose(record["test"]["loss"], record["test"]["bce"] + record["test"]["kl"], rtol=1e-5)
    np.testing.assert_allclose(record["train"]["loss"], record["train"]["bce"] + 4.0 * record["train"]["kl"],
                               rtol=1e-5)


@pytest.mark.parametrize(("options", "message"), [
    ({"beta": 0.0}, "--beta must be a positive finite number, got 0.0"),
    ({"beta": float("inf")}, "--beta must be a positive finite number"),
    ({"beta": 2.0, "model": "dense_ae"}, "--beta 2.0 weighs the KL of a VAE's ELBO"),
    ({"beta": 2.0, "objective": "iwae", "train_samples": 2}, "it needs --objective elbo"),
])
def test_beta_is_validated(options, message):
    with pytest.raises(VaejaxError, match=message.replace("(", r"\(").replace(".", r"\.")):
        Config(**options).resolved()
