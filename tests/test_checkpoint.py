import dataclasses
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import serialization

from vaejax import checkpoint
from vaejax.config import Config
from vaejax.errors import VaejaxError
from vaejax.models import build_model
from vaejax.training import init_state, seed_keys


def make_state(model_name="dense_ae", latent_dim=2, seed=0):
    model = build_model(model_name, latent_dim)
    return init_state(model, optax.adam(1e-3), seed_keys(seed))


def make_config(tmp_path, **changes):
    return dataclasses.replace(Config(model="dense_ae", workdir=str(tmp_path)), **changes).resolved()


def test_state_round_trips_exactly(tmp_path):
    config = make_config(tmp_path)
    state = make_state(seed=3).replace(epoch=np.int32(7))
    checkpoint.save_state(tmp_path, config, state)
    restored = checkpoint.restore_state(tmp_path, config, make_state(seed=4))
    assert int(restored.epoch) == 7
    np.testing.assert_array_equal(jax.random.key_data(restored.rng), jax.random.key_data(state.rng))
    for got, want in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state), strict=True):
        if not jax.dtypes.issubdtype(want.dtype, jax.dtypes.prng_key):
            np.testing.assert_array_equal(got, want)


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "file.bin"
    checkpoint.atomic_write(target, b"old")
    with pytest.raises(TypeError):
        checkpoint.atomic_write(target, object())  # fails mid-write
    assert target.read_bytes() == b"old"
    assert [path.name for path in tmp_path.iterdir()] == ["file.bin"]


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda data: data[: len(data) // 3], "corrupt or truncated checkpoint"),
    (lambda data: b"", "corrupt or truncated checkpoint|not a vaejax checkpoint"),
    (lambda data: serialization.msgpack_serialize({"hello": 1}), "not a vaejax checkpoint"),
])
def test_damaged_checkpoints_are_refused(tmp_path, mutate, message):
    config = make_config(tmp_path)
    checkpoint.save_state(tmp_path, config, make_state())
    path = tmp_path / checkpoint.CHECKPOINT_FILE
    path.write_bytes(mutate(path.read_bytes()))
    with pytest.raises(VaejaxError, match=message):
        checkpoint.restore_state(tmp_path, config, make_state())


def test_checkpoint_of_another_model_or_latent_size_is_refused(tmp_path):
    checkpoint.save_state(tmp_path, make_config(tmp_path, latent_dim=3), make_state(latent_dim=3))
    with pytest.raises(VaejaxError, match="latent_dim 3, this run is dense_ae with latent_dim 2"):
        checkpoint.restore_state(tmp_path, make_config(tmp_path), make_state())
    conv = make_config(tmp_path, model="conv_vae")
    with pytest.raises(VaejaxError, match="checkpoint of dense_ae .* this run is conv_vae"):
        checkpoint.restore_state(tmp_path, conv, make_state("conv_vae"))


def test_newer_format_is_refused(tmp_path):
    config = make_config(tmp_path)
    checkpoint.save_state(tmp_path, config, make_state())
    path = tmp_path / checkpoint.CHECKPOINT_FILE
    payload = serialization.msgpack_restore(path.read_bytes())
    payload["format_version"] = 99
    path.write_bytes(serialization.msgpack_serialize(payload))
    with pytest.raises(VaejaxError, match="checkpoint format 99"):
        checkpoint.restore_state(tmp_path, config, make_state())


def test_params_of_other_shapes_are_refused(tmp_path):
    checkpoint.save_params(tmp_path, make_state(latent_dim=4).params)
    with pytest.raises(VaejaxError, match="parameter shapes do not match"):
        checkpoint.load_params(Path(tmp_path) / checkpoint.PARAMS_FILE, make_state().params)
