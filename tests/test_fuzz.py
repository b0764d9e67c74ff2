"""Random and mutated bytes into the IDX reader and the checkpoint loader: only VaejaxError escapes."""

import gzip
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaejax import checkpoint
from vaejax.config import Config
from vaejax.data import IMAGES_MAGIC, LABELS_MAGIC, parse_idx, read_idx_bytes
from vaejax.errors import VaejaxError
from vaejax.keys import seed_keys
from vaejax.models import build_model
from vaejax.steps import init_state

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def valid_idx(images: bool) -> bytes:
    rng = np.random.default_rng(0)
    if images:
        header = IMAGES_MAGIC.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in (2, 28, 28))
        return header + rng.integers(0, 256, 2 * 784, dtype=np.uint8).tobytes()
    return LABELS_MAGIC.to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes([1, 7, 9])


@st.composite
def mutated(draw, original: bytes):
    """Bit flips, truncation, insertion and splices of `original`."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "truncate", "insert", "overwrite"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if action == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "truncate":
            del data[position:]
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif data:
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[position:position + len(chunk)] = chunk
    return bytes(data)


def read_idx_file(path: Path, data: bytes, magic: int) -> None:
    path.write_bytes(data)
    try:
        parse_idx(read_idx_bytes(path, magic), magic, path)
    except VaejaxError as error:
        assert str(path) in str(error) and "\n" not in str(error)


@FUZZ
@given(data=st.binary(max_size=2000), magic=st.sampled_from([IMAGES_MAGIC, LABELS_MAGIC]))
def test_idx_reader_random_bytes(tmp_path, data, magic):
    read_idx_file(tmp_path / "random-idx", data, magic)


@FUZZ
@given(data=st.one_of(mutated(valid_idx(True)), mutated(gzip.compress(valid_idx(True)))))
def test_idx_reader_mutated_images(tmp_path, data):
    read_idx_file(tmp_path / "images-idx3-ubyte", data, IMAGES_MAGIC)


@FUZZ
@given(data=st.one_of(mutated(valid_idx(False)), mutated(gzip.compress(valid_idx(False)))))
def test_idx_reader_mutated_labels(tmp_path, data):
    read_idx_file(tmp_path / "labels-idx1-ubyte", data, LABELS_MAGIC)


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("valid")
    config = Config(model="dense_ae", latent_dim=1, workdir=str(folder)).resolved()
    template = init_state(build_model("dense_ae", 1), __import__("optax").adam(1e-3), seed_keys(0), 4)
    checkpoint.save_state(folder, config, template, [{"epoch": 1}])
    return config, template, (folder / checkpoint.CHECKPOINT_FILE).read_bytes()


def load_checkpoint_bytes(folder: Path, data: bytes, config, template) -> None:
    """Loading either succeeds with a usable state and history or raises VaejaxError."""
    (folder / checkpoint.CHECKPOINT_FILE).write_bytes(data)
    try:
        state, history = checkpoint.restore_state(folder, config, template, log=lambda line: None)
    except VaejaxError as error:
        assert "\n" not in str(error)
    else:
        assert isinstance(history, list) and int(state.epoch) >= 0


def rewrap(body: bytes) -> bytes:
    """A checkpoint envelope with a correct checksum around `body`: reaches the payload checks."""
    import hashlib

    from flax import serialization

    return serialization.msgpack_serialize(
        {"format_version": checkpoint.FORMAT_VERSION, "sha256": hashlib.sha256(body).hexdigest(), "body": body})


@FUZZ
@given(data=st.binary(max_size=3000))
def test_checkpoint_loader_random_bytes(tmp_path, saved_checkpoint, data):
    config, template, _ = saved_checkpoint
    load_checkpoint_bytes(tmp_path, data, config, template)
    load_checkpoint_bytes(tmp_path, rewrap(data), config, template)


@FUZZ
@given(data=st.data())
def test_checkpoint_loader_mutated_bytes(tmp_path, saved_checkpoint, data):
    from flax import serialization

    config, template, valid = saved_checkpoint
    load_checkpoint_bytes(tmp_path, data.draw(mutated(valid)), config, template)
    body = serialization.msgpack_restore(valid)["body"]
    load_checkpoint_bytes(tmp_path, rewrap(data.draw(mutated(body))), config, template)


def replace_a_leaf(tree, index: int, value):
    """`tree` (nested dicts) with its index-th leaf, in sorted order, replaced by `value`."""
    leaves = []

    def walk(node, keys):
        if isinstance(node, dict):
            for key in sorted(node, key=str):
                walk(node[key], (*keys, key))
        else:
            leaves.append(keys)

    walk(tree, ())
    *parents, last = leaves[index % len(leaves)]
    node = tree
    for key in parents:
        node = node[key]
    node[last] = value
    return tree


@FUZZ
@given(index=st.integers(0, 1000), value=st.one_of(
    st.text(max_size=5), st.integers(-(2**63), 2**63 - 1), st.floats(), st.binary(max_size=8), st.none(),
    st.lists(st.integers(0, 9), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(0, 9), max_size=2)))
def test_checkpoint_loader_well_formed_but_wrong_values(tmp_path, saved_checkpoint, index, value):
    from flax import serialization

    config, template, valid = saved_checkpoint
    payload = serialization.msgpack_restore(serialization.msgpack_restore(valid)["body"])
    body = serialization.msgpack_serialize(replace_a_leaf(payload, index, value))
    load_checkpoint_bytes(tmp_path, rewrap(body), config, template)
