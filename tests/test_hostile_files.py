"""Hostile files where vaejax reads: huge, special, mistyped, deeply nested. Each ends in one line naming
the file (exit 2 through a command), never a traceback, a hang or memory without bound."""

import dataclasses
import gzip
import hashlib
import json
import os
import threading
import zlib
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaejax import checkpoint, files, plot
from vaejax.classifier import cached_classifier, init_classifier
from vaejax.config import Config
from vaejax.data import IDX_FILES, IMAGES_MAGIC, LABELS_MAGIC, Dataset, load_idx_dir, read_idx_bytes, write_idx
from vaejax.errors import VaejaxError
from vaejax.keys import seed_keys
from vaejax.models import build_model, init_params
from vaejax.samplers import load_fit
from vaejax.steps import init_state

EIGHT_GIB = 8 * 2**30
DEEP = 100_000
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
JSON = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children,
                                                                                     max_size=4), max_leaves=20)


def finishes(call, seconds: float = 20.0):
    """Run `call` in a thread; fail (instead of hanging the suite) if it does not end in `seconds`."""
    outcome = {}

    def target():
        try:
            outcome["value"] = call()
        except BaseException as error:  # handed back to the test
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def refused(call, *fragments: str) -> str:
    """`call` raises one VaejaxError line holding every fragment; its text is returned."""
    with pytest.raises(VaejaxError) as caught:
        finishes(call)
    message = str(caught.value)
    assert "\n" not in message and all(fragment in message for fragment in fragments), message
    return message


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished dense_ae run's work directory, written by the code that writes runs (no training)."""
    workdir = tmp_path_factory.mktemp("run")
    config = Config(model="dense_ae", latent_dim=2, epochs=1, workdir=str(workdir)).resolved()
    model = build_model("dense_ae", 2)
    checkpoint.prepare_workdir(workdir, config)
    state = init_state(model, optax.adam(1e-3), seed_keys(0), 4)
    metrics = {"bce": 1.0, "bce_per_pixel": 0.1, "kl": 0.0, "loss": 1.0}
    history = [{"epoch": 1, "train": metrics, "test": metrics, "seconds": 1.0, "config_hash": config.result_hash()}]
    for _ in range(2):  # the second keeps the first as checkpoint.prev.msgpack
        checkpoint.save_state(workdir, config, state, history)
    checkpoint.write_metrics(workdir, history)
    checkpoint.save_params(workdir, state.params)
    return workdir, config, state


def copy_run(run, tmp_path) -> Path:
    workdir = tmp_path / "run"
    workdir.mkdir()
    for name in checkpoint.RUN_FILES:
        (workdir / name).write_bytes((run[0] / name).read_bytes())
    return workdir


def restore(workdir: Path, run):
    _, config, state = run
    return checkpoint.restore_state(workdir, dataclasses.replace(config, workdir=str(workdir)), state,
                                    log=lambda line: None)


def load_params(workdir: Path):
    return checkpoint.load_params(workdir / checkpoint.PARAMS_FILE, init_params(build_model("dense_ae", 2),
                                                                                jax.random.key(0)))


LOADERS = {  # each file of a run, and what reads it
    checkpoint.CONFIG_FILE: lambda workdir, run: checkpoint.read_run_config(workdir),
    checkpoint.METRICS_FILE: lambda workdir, run: checkpoint.load_finished_run(workdir),
    checkpoint.PARAMS_FILE: lambda workdir, run: load_params(workdir),
    checkpoint.CHECKPOINT_FILE: restore,
}


def make_special(path: Path, kind: str) -> None:
    path.unlink(missing_ok=True)
    if kind == "8 GiB sparse file":
        with open(path, "wb") as file:
            file.truncate(EIGHT_GIB)
    elif kind == "link to /dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "FIFO":
        os.mkfifo(path)
    else:
        path.mkdir()


SPECIAL = {"8 GiB sparse file": "more than the", "link to /dev/zero": "a character device, not a regular file",
           "FIFO": "a FIFO, not a regular file", "folder": "a folder, not a regular file"}


@pytest.mark.parametrize("kind", SPECIAL)
@pytest.mark.parametrize("name", LOADERS)
def test_a_run_file_that_is_huge_or_not_a_regular_file_is_refused_unread(run, tmp_path, name, kind):
    workdir = copy_run(run, tmp_path)
    make_special(workdir / name, kind)
    if name == checkpoint.CHECKPOINT_FILE:
        (workdir / checkpoint.PREVIOUS_CHECKPOINT_FILE).unlink()  # else the loader falls back to it, rightly
    refused(lambda: LOADERS[name](workdir, run), str(workdir / name), SPECIAL[kind])


@pytest.mark.parametrize("kind", SPECIAL)
def test_an_idx_file_or_a_sampler_fit_that_is_huge_or_special_is_refused_unread(tmp_path, kind):
    path = tmp_path / "train-images-idx3-ubyte"
    make_special(path, kind)
    expected = SPECIAL[kind] if kind != "8 GiB sparse file" else "bytes but the header (1 examples) needs 800"
    if kind == "8 GiB sparse file":  # a valid header for one image, then 8 GiB: refused from the file's size
        with open(path, "r+b") as file:
            file.write(write_idx(np.zeros((1, 28, 28), np.uint8))[:16])
    refused(lambda: read_idx_bytes(path, IMAGES_MAGIC), str(path), expected)
    fit = tmp_path / "gmm2-n100-s0.json"
    make_special(fit, kind)
    refused(lambda: load_fit(fit, 10_000), str(fit), SPECIAL[kind])


def test_a_link_to_dev_zero_in_a_data_folder_is_named_not_missing(tmp_path):
    (tmp_path / f"{IDX_FILES['train_images']}.gz").symlink_to("/dev/zero")
    refused(lambda: load_idx_dir(tmp_path, "mnist", ()), "train-images-idx3-ubyte.gz: a character device")


def zeros_gzip(path: Path, header: bytes, zero_bytes: int) -> None:
    """A gzip file of `header` then `zero_bytes` zeros, compressed as it is written (a gzip bomb)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(2**20)
    with open(path, "wb") as file:
        file.write(compressor.compress(header))
        for _ in range(zero_bytes // len(chunk)):
            file.write(compressor.compress(chunk))
        file.write(compressor.flush())


@pytest.mark.parametrize(("examples", "message"), [
    (2, "bytes but the header (2 examples) needs 1584"),  # 64 MiB of zeros behind a header for two images
    (2**24 + 1, "the header declares 16,777,217 examples, more than the 16,777,216 any dataset holds"),
    (2**24, "the header"),  # 13 GB declared (more than memory takes, or more than is there)
])
def test_a_gzip_bomb_is_decompressed_no_further_than_its_header_says(tmp_path, examples, message):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    header = b"".join(value.to_bytes(4, "big") for value in (IMAGES_MAGIC, examples, 28, 28))
    zeros_gzip(path, header, 2**26)
    assert path.stat().st_size < 2**20
    refused(lambda: read_idx_bytes(path, IMAGES_MAGIC), str(path), message)


def write_config(run_folder: Path, **changes) -> None:
    path = run_folder / checkpoint.CONFIG_FILE
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


@pytest.mark.parametrize(("changes", "message"), [
    ({"latent_dim": 2.5}, "latent_dim must be a whole number, got float 2.5"),
    ({"latent_dim": True}, "latent_dim must be a whole number, got bool True"),
    ({"dataset": 7}, "dataset must be a text, got int 7"),
    ({"dataset": ["mnist"]}, "dataset must be a text, got list"),
    ({"data_dir": "a\0b"}, "data_dir must be a text or null"),
    ({"environment": [1, 2]}, "an environment is not an object"),
    ({"latent_dim": 0}, "--latent_dim must be from 1 to 784"),
    ({"colour": "blue"}, "unexpected keyword argument 'colour'"),
])
def test_a_mistyped_config_json_is_one_line_naming_the_field(run, tmp_path, changes, message):
    workdir = copy_run(run, tmp_path)
    write_config(workdir, **changes)
    refused(lambda: checkpoint.read_run_config(workdir), f"{workdir / checkpoint.CONFIG_FILE}: ", message)


@pytest.mark.parametrize("text", ["[1, 2]", '{"latent_dim": NaN}', '{"latent_dim": 1e999}', "{" + "1" * 50 + "}",
                                  '{"seed": ' + "9" * 5000 + "}", '{"a":' * DEEP + "1" + "}" * DEEP, "\xff"])
def test_config_json_that_is_not_an_object_of_plain_values_is_refused(run, tmp_path, text):
    workdir = copy_run(run, tmp_path)
    (workdir / checkpoint.CONFIG_FILE).write_bytes(text.encode("latin-1"))
    refused(lambda: checkpoint.read_run_config(workdir), str(workdir / checkpoint.CONFIG_FILE))


@pytest.mark.parametrize(("line", "message"), [
    ("[1, 2]", "line 1: a record is not an object"),
    ("5", "line 1: a record is not an object"),
    ('{"epoch": 1.5}', "epoch 1.5 is not a whole number from 1"),
    ('{"epoch": 1, "train": {"loss": "x"}}', "'train' is not an object of names -> numbers"),
    ('{"epoch": 1, "train": {"loss": 1}}', "epoch 1: no test loss"),
    ("[" * DEEP + "]" * DEEP, f"line 1: nested {DEEP} deep, more than the 2 of this format"),
])
def test_a_metrics_line_that_is_not_a_record_is_one_line(run, tmp_path, line, message):
    workdir = copy_run(run, tmp_path)
    (workdir / checkpoint.METRICS_FILE).write_text(line + "\n")
    refused(lambda: checkpoint.load_finished_run(workdir), str(workdir / checkpoint.METRICS_FILE), message)


def test_a_vae_run_needs_the_loss_parts_its_learning_curves_draw():
    record = {"epoch": 1, "train": {"loss": 1.0}, "test": {"loss": 1.0}}
    checkpoint.check_finished_history([record], variational=False)
    with pytest.raises(ValueError, match="epoch 1: no train bce kl"):
        checkpoint.check_finished_history([record], variational=True)


def test_plot_of_a_nested_metrics_file_exits_2_with_one_line(run, tmp_path, capsys):
    workdir = copy_run(run, tmp_path)
    (workdir / checkpoint.METRICS_FILE).write_text("[" * DEEP + "]" * DEEP + "\n")
    assert finishes(lambda: plot.main(["--workdir", str(workdir)])) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "nested 100000 deep" in error and "Traceback" not in error


def rewrap(body: bytes) -> bytes:
    return serialization.msgpack_serialize(
        {"format_version": checkpoint.FORMAT_VERSION, "sha256": hashlib.sha256(body).hexdigest(), "body": body})


def checkpoint_payload(run) -> dict:
    data = (run[0] / checkpoint.CHECKPOINT_FILE).read_bytes()
    return serialization.msgpack_restore(serialization.msgpack_restore(data)["body"])


@pytest.mark.parametrize(("history", "message"), [
    ("[" * DEEP + "]" * DEEP, f"unreadable metrics history (nested {DEEP} deep, more than the 3 of this format)"),
    ('[{"epoch": {"a": {"b": 1}}}]', "unreadable metrics history"),
    ('{"epoch": 1}', "unreadable metrics history (not a list)"),
    ('[{"epoch": 1, "test": {"loss": NaN}}]', None),  # a non-finite test loss is a record like any other
])
def test_a_checkpoint_history_under_a_valid_checksum_is_type_checked(run, tmp_path, history, message):
    workdir = copy_run(run, tmp_path)
    body = serialization.msgpack_serialize(checkpoint_payload(run) | {"history": history})
    (workdir / checkpoint.CHECKPOINT_FILE).write_bytes(rewrap(body))
    (workdir / checkpoint.PREVIOUS_CHECKPOINT_FILE).unlink()
    if message is None:
        assert finishes(lambda: restore(workdir, run))[1][0]["epoch"] == 1
    else:
        refused(lambda: restore(workdir, run), message)


def nested_msgpack(depth: int) -> bytes:
    """A msgpack value nested `depth` deep: one-element arrays around a 0."""
    return b"\x91" * depth + b"\x00"


@pytest.mark.parametrize("field", ["state", "history", "model", "latent_dim"])
def test_a_checkpoint_payload_nested_or_of_the_wrong_type_under_a_valid_checksum_is_refused(run, tmp_path, field):
    workdir = copy_run(run, tmp_path)
    payload = serialization.msgpack_serialize(checkpoint_payload(run) | {field: 0})
    marker = serialization.msgpack_serialize({field: 0})[1:]  # the field's key and its value 0
    nested = payload.replace(marker, marker[:-1] + nested_msgpack(DEEP))
    (workdir / checkpoint.CHECKPOINT_FILE).write_bytes(rewrap(nested))
    (workdir / checkpoint.PREVIOUS_CHECKPOINT_FILE).unlink()
    refused(lambda: restore(workdir, run), str(workdir / checkpoint.CHECKPOINT_FILE))


def test_json_depth_is_found_without_recursion():
    assert files.json_depth("[" * DEEP + "]" * DEEP) == DEEP
    assert files.json_depth('{"a": "[[[\\"[[", "b": [{}]}') == 3
    assert files.json_depth('"\\\\"[]') == 1 and files.json_depth("") == 0


# Property tests: every loader on arbitrary bytes and arbitrary JSON. Only VaejaxError escapes.

def only_vaejax_error(call) -> None:
    try:
        call()
    except VaejaxError as error:
        assert "\n" not in str(error)


@PROPERTY
@given(value=JSON)
def test_json_depth_agrees_with_the_parsed_value(value):
    def depth(node) -> int:
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        return 0 if children is None else 1 + max((depth(child) for child in children), default=0)

    assert files.json_depth(json.dumps(value)) == depth(value)


def json_or_bytes():
    def encoded(value) -> bytes:
        return json.dumps(value).encode()

    return st.one_of(st.binary(max_size=300), JSON.map(encoded),
                     st.dictionaries(st.text(max_size=6), JSON, max_size=4).map(encoded))


@PROPERTY
@given(data=json_or_bytes(), name=st.sampled_from(sorted(LOADERS)))
def test_every_run_file_loader_on_arbitrary_bytes_and_json(run, tmp_path, data, name):
    workdir = tmp_path / "run"
    if not workdir.exists():
        copy_run(run, tmp_path)
    for other in checkpoint.RUN_FILES:
        (workdir / other).write_bytes((run[0] / other).read_bytes())
    (workdir / name).write_bytes(data)
    only_vaejax_error(lambda: LOADERS[name](workdir, run))


@PROPERTY
@given(field=st.sampled_from([field.name for field in dataclasses.fields(Config)] + ["environment"]), value=JSON)
def test_config_json_with_any_value_in_any_field(run, tmp_path, field, value):
    workdir = tmp_path / "run"
    if not workdir.exists():
        copy_run(run, tmp_path)
    (workdir / checkpoint.CONFIG_FILE).write_bytes((run[0] / checkpoint.CONFIG_FILE).read_bytes())
    write_config(workdir, **{field: value})
    only_vaejax_error(lambda: checkpoint.read_run_config(workdir))


@PROPERTY
@given(lines=st.lists(st.one_of(JSON.map(json.dumps), st.text(max_size=20)), max_size=4))
def test_metrics_jsonl_of_arbitrary_lines(run, tmp_path, lines):
    workdir = tmp_path / "run"
    if not workdir.exists():
        copy_run(run, tmp_path)
    (workdir / checkpoint.METRICS_FILE).write_text("\n".join(lines))
    only_vaejax_error(lambda: checkpoint.load_finished_run(workdir))


@PROPERTY
@given(data=json_or_bytes(), field=st.sampled_from(["weights", "means", "covariances", "fit", "setting"]),
       value=JSON)
def test_sampler_fit_of_arbitrary_bytes_or_fields(tmp_path, data, field, value):
    path = tmp_path / "fit.json"
    path.write_bytes(data)
    only_vaejax_error(lambda: load_fit(path, 10_000))
    valid = {"weights": [1.0], "means": [[0.0, 0.0]], "covariances": [[[1.0, 0.0], [0.0, 1.0]]],
             "fit": {"log_likelihood": -1.0, "iterations": 3, "converged": True}, "setting": {}}
    path.write_text(json.dumps(valid | {field: value}))
    only_vaejax_error(lambda: load_fit(path, 10_000))


@pytest.fixture(scope="module")
def classifier_cache(tmp_path_factory):
    """A cached classifier's folder for a tiny dataset: the params of an untrained network."""
    dataset = Dataset("tiny", np.zeros((1, 28, 28), np.uint8), np.zeros(1, np.uint8),
                      np.zeros((1, 28, 28), np.uint8), np.zeros(1, np.uint8), ("0",))
    cache = tmp_path_factory.mktemp("classifiers")
    folder = cache / "classifier-tiny-n1-s0-e5-v2"
    folder.mkdir()
    files.atomic_write(folder / checkpoint.PARAMS_FILE, serialization.to_bytes(init_classifier(jax.random.key(0))))
    return dataset, cache, folder


@PROPERTY
@given(info=json_or_bytes(), params=st.one_of(st.none(), st.binary(max_size=300)))
def test_classifier_cache_of_arbitrary_bytes_and_json(classifier_cache, info, params):
    dataset, cache, folder = classifier_cache
    valid_params = (folder / checkpoint.PARAMS_FILE).read_bytes()
    (folder / "classifier.json").write_bytes(info)
    only_vaejax_error(lambda: cached_classifier(dataset, cache, log=lambda line: None))
    if params is not None:
        (folder / "classifier.json").write_text('{"test_accuracy": 0.5}')
        (folder / checkpoint.PARAMS_FILE).write_bytes(params)
        try:
            only_vaejax_error(lambda: cached_classifier(dataset, cache, log=lambda line: None))
        finally:
            (folder / checkpoint.PARAMS_FILE).write_bytes(valid_params)


@PROPERTY
@given(data=st.binary(max_size=300), magic=st.sampled_from([IMAGES_MAGIC, LABELS_MAGIC]), compress=st.booleans())
def test_idx_reader_on_arbitrary_bytes(tmp_path, data, magic, compress):
    path = tmp_path / "idx"
    path.write_bytes(gzip.compress(data) if compress else data)
    only_vaejax_error(lambda: read_idx_bytes(path, magic))
