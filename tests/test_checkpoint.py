import dataclasses
import errno
import os
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import serialization

from vaejax import checkpoint, files
from vaejax.config import Config
from vaejax.errors import VaejaxError
from vaejax.keys import seed_keys
from vaejax.models import build_model
from vaejax.steps import init_state


def make_state(model_name="dense_ae", latent_dim=2, seed=0, epoch=0):
    model = build_model(model_name, latent_dim)
    return init_state(model, optax.adam(1e-3), seed_keys(seed), 8).replace(epoch=np.int32(epoch))


def make_config(tmp_path, **changes):
    return dataclasses.replace(Config(model="dense_ae", workdir=str(tmp_path)), **changes).resolved()


def restore(tmp_path, config=None, template=None, log=None):
    return checkpoint.restore_state(tmp_path, config or make_config(tmp_path), template or make_state(),
                                    log or (lambda line: None))


def test_state_round_trips_exactly(tmp_path):
    config = make_config(tmp_path)
    state = make_state(seed=3, epoch=7).replace(step=np.int32(5))
    history = [{"epoch": 7, "test": {"loss": 1.5}}]
    checkpoint.save_state(tmp_path, config, state, history)
    restored, restored_history = restore(tmp_path, config, make_state(seed=4))
    assert (int(restored.epoch), int(restored.step)) == (7, 5) and restored_history == history
    np.testing.assert_array_equal(jax.random.key_data(restored.rng), jax.random.key_data(state.rng))
    for got, want in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state), strict=True):
        if not jax.dtypes.issubdtype(want.dtype, jax.dtypes.prng_key):
            np.testing.assert_array_equal(got, want)


def test_no_checkpoint_means_a_fresh_start(tmp_path):
    template = make_state()
    state, history = restore(tmp_path, template=template)
    assert state is template and history == []


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "file.bin"
    files.atomic_write(target, b"old")
    with pytest.raises(TypeError):
        files.atomic_write(target, object())  # fails mid-write
    assert target.read_bytes() == b"old"
    assert [path.name for path in tmp_path.iterdir()] == ["file.bin"]


def test_disk_full_is_reported_and_the_previous_checkpoint_survives(tmp_path, monkeypatch):
    config = make_config(tmp_path)
    checkpoint.save_state(tmp_path, config, make_state(epoch=1), [])
    before = (tmp_path / checkpoint.CHECKPOINT_FILE).read_bytes()

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(VaejaxError, match="No space left on device; the previous file is kept"):
        checkpoint.save_state(tmp_path, config, make_state(epoch=2), [])
    monkeypatch.undo()
    assert (tmp_path / checkpoint.CHECKPOINT_FILE).read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == [checkpoint.CHECKPOINT_FILE]
    assert int(restore(tmp_path)[0].epoch) == 1


def test_previous_checkpoint_is_kept_and_used_when_the_latest_is_damaged(tmp_path):
    config = make_config(tmp_path)
    checkpoint.save_state(tmp_path, config, make_state(epoch=1), [])
    checkpoint.save_state(tmp_path, config, make_state(epoch=2), [])
    latest = tmp_path / checkpoint.CHECKPOINT_FILE
    assert int(restore(tmp_path)[0].epoch) == 2
    latest.write_bytes(latest.read_bytes()[:1000])
    lines = []
    assert int(restore(tmp_path, log=lines.append)[0].epoch) == 1
    assert lines[0].startswith("warning:") and "using checkpoint.prev.msgpack" in lines[0]


def flip_a_bit_in_the_middle(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x10]) + data[middle + 1:]


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda data: data[: len(data) // 3], "corrupt or truncated file"),
    (lambda data: b"", "corrupt or truncated file|not a vaejax checkpoint"),
    (flip_a_bit_in_the_middle, "checksum mismatch, the checkpoint is corrupt"),
    (lambda data: serialization.msgpack_serialize({"hello": 1}), "not a vaejax checkpoint"),
])
def test_damaged_checkpoints_are_refused(tmp_path, mutate, message):
    config = make_config(tmp_path)
    checkpoint.save_state(tmp_path, config, make_state(), [])
    path = tmp_path / checkpoint.CHECKPOINT_FILE
    path.write_bytes(mutate(path.read_bytes()))
    with pytest.raises(VaejaxError, match=message) as caught:
        restore(tmp_path, config)
    assert str(caught.value).startswith(str(path))


def test_checkpoint_of_another_model_or_latent_size_is_refused(tmp_path):
    checkpoint.save_state(tmp_path, make_config(tmp_path, latent_dim=3), make_state(latent_dim=3), [])
    with pytest.raises(VaejaxError, match="latent_dim 3, this run is dense_ae with latent_dim 2"):
        restore(tmp_path)
    conv = make_config(tmp_path, model="conv_vae")
    with pytest.raises(VaejaxError, match="checkpoint of dense_ae .* this run is conv_vae"):
        restore(tmp_path, conv, make_state("conv_vae"))
    with pytest.raises(VaejaxError, match="belongs to a run with a different configuration"):
        restore(tmp_path, make_config(tmp_path, latent_dim=3, seed=5), make_state(latent_dim=3))


def test_newer_format_is_refused(tmp_path):
    config = make_config(tmp_path)
    checkpoint.save_state(tmp_path, config, make_state(), [])
    path = tmp_path / checkpoint.CHECKPOINT_FILE
    envelope = serialization.msgpack_restore(path.read_bytes())
    envelope["format_version"] = 99
    path.write_bytes(serialization.msgpack_serialize(envelope))
    with pytest.raises(VaejaxError, match="checkpoint format 99, this vaejax reads format 1"):
        restore(tmp_path, config)


def test_params_of_other_shapes_are_refused(tmp_path):
    checkpoint.save_params(tmp_path, make_state(latent_dim=4).params)
    with pytest.raises(VaejaxError, match="parameter shapes do not match"):
        checkpoint.load_params(Path(tmp_path) / checkpoint.PARAMS_FILE, make_state().params)


def test_resuming_in_another_environment_is_named_and_both_are_kept(tmp_path):
    config = make_config(tmp_path)
    first = {"backend": "cpu", "jax": "0.10.2", "loop": "step"}
    assert checkpoint.prepare_workdir(tmp_path, config, first) == []
    resumed = dataclasses.replace(config, resume=True)
    assert checkpoint.prepare_workdir(tmp_path, resumed, first) == []  # the same machine: nothing to say
    second = first | {"backend": "gpu", "loop": "scan"}
    assert checkpoint.prepare_workdir(tmp_path, resumed, second) == ["backend", "loop"]
    saved = checkpoint.read_config_record(tmp_path / checkpoint.CONFIG_FILE)
    assert saved["environment"] == second and saved["earlier_environments"] == [first]
    assert checkpoint.read_run_config(tmp_path).model == "dense_ae"  # the records do not disturb reading it


def test_a_resume_on_another_cpu_is_warned_of_only_where_the_bits_depend_on_it(tmp_path):
    """In portable mode another CPU model or core count gives the same bytes: kept in config.json, not
    warned of; in machine mode (or from a run that was) it is."""
    config = make_config(tmp_path)
    resumed = dataclasses.replace(config, resume=True)
    xeon = {"backend": "cpu", "cpu_bits": "portable", "cpu_model": "Intel(R) Xeon(R) Processor",
            "cpu_instruction_sets": "avx avx2 fma avx512f", "cpu_cores": 2}
    epyc = xeon | {"cpu_model": "AMD EPYC", "cpu_instruction_sets": "avx avx2 fma", "cpu_cores": 16}
    checkpoint.prepare_workdir(tmp_path, config, xeon)
    assert checkpoint.prepare_workdir(tmp_path, resumed, epyc) == []
    assert checkpoint.read_config_record(tmp_path / checkpoint.CONFIG_FILE)["earlier_environments"] == [xeon]
    local = {name: value | {"cpu_bits": "machine"} for name, value in (("xeon", xeon), ("epyc", epyc))}
    assert checkpoint.prepare_workdir(tmp_path, resumed, local["xeon"]) == [
        "cpu_bits", "cpu_cores", "cpu_instruction_sets", "cpu_model"]
    assert checkpoint.prepare_workdir(tmp_path, resumed, local["epyc"]) == [
        "cpu_cores", "cpu_instruction_sets", "cpu_model"]
    zen5 = local["epyc"] | {"cpu_generation": "family 26 model 2"}  # recorded since 2026-12-03; epyc lacks it
    assert checkpoint.prepare_workdir(tmp_path, resumed, zen5) == []
    assert checkpoint.prepare_workdir(tmp_path, resumed, zen5 | {"cpu_generation": "family 25 model 17"}) == [
        "cpu_generation"]
    gpu = {"backend": "gpu", "cpu_bits": "machine", "device_kind": "NVIDIA H200", "cpu_model": "AMD EPYC"}
    checkpoint.prepare_workdir(tmp_path, dataclasses.replace(config, overwrite=True), gpu)
    assert checkpoint.prepare_workdir(tmp_path, resumed, gpu | {"cpu_model": "Intel Xeon"}) == []  # a GPU's bits
