"""The work directory: config, metrics, atomic msgpack checkpoints and the final params, and the
`RunDirectory` a run opens once from its config to reach them all.

Checkpoints are msgpack (flax.serialization): loading one decodes plain arrays and never runs code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from flax import serialization

from vaejax.config import Config, check_option_types
from vaejax.devices import bits_differ
from vaejax.errors import VaejaxError
from vaejax.files import (
    WorkdirLock,
    atomic_write,
    is_number,
    is_whole_number,
    make_folder,
    parse_json,
    read_json,
    read_regular_file,
    write_json,
)

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.msgpack"
PREVIOUS_CHECKPOINT_FILE = "checkpoint.prev.msgpack"
PARAMS_FILE = "params.msgpack"
FORMAT_VERSION = 1
ENVIRONMENT_KEY = "environment"  # in config.json: what the run's bits depend on beyond its options
EARLIER_ENVIRONMENTS_KEY = "earlier_environments"  # those of the run's parts before a resume elsewhere
PAYLOAD_KEYS = {"model", "latent_dim", "config_hash", "history", "state"}
RUN_FILES = (CONFIG_FILE, METRICS_FILE, CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE, PARAMS_FILE)

# What each file can legitimately hold, so that a reader refuses anything larger before reading it.
CONFIG_BYTES = 2**20  # the options and environments take about 1 KB, plus 0.5 KB per resume elsewhere
CONFIG_DEPTH = 3  # {"earlier_environments": [{...}]}
METRICS_LINE_BYTES = 4096  # an epoch's record takes about 330 bytes
METRICS_DEPTH = 2  # {"train": {...}}
HISTORY_DEPTH = 3  # [{"train": {...}}]
LEAF_BYTES = 1024  # msgpack's name, shape and dtype of one array, far more than they take
MARGIN_BYTES = 2**20  # the envelope, the checksum, the small fields; records of a run resumed with fewer --epochs
MAX_CHECKPOINT_BYTES = 2**32  # when no model says what its state takes (`decode_checkpoint`'s default)


class RunDirectory:
    """The work directory of the run `config` describes, opened once: its path, its identity (the config)
    and whether this process writes it. The writing process holds its lock (vaejax.files.WorkdirLock)
    from `open` until the run ends; every other process (over `jax.distributed`) reads it to resume and
    writes nothing: its `save`, `write_metrics`, `save_params` and `discard_params` do nothing."""

    def __init__(self, config: Config, writes: bool = True):
        self.path, self.config, self.writes = Path(config.workdir), config, writes

    def open(self, owned: contextlib.ExitStack, environment: dict, log: Callable[[str], None]) -> None:
        """Take the lock (released when `owned` closes) and write config.json (see `prepare_workdir`)."""
        if not self.writes:
            return
        owned.enter_context(WorkdirLock(self.path))
        changed = prepare_workdir(self.path, self.config, environment)
        if changed:
            log(f"warning: resuming with another {', '.join(changed)} than the run began with: the result "
                "will not equal an uninterrupted run's bits (config.json keeps both)")

    def restore(self, template, log: Callable[[str], None] = print):
        """(state, history) to start from: with --resume, the checkpoint's (`restore_state`); else (template, [])."""
        return restore_state(self.path, self.config, template, log) if self.config.resume else (template, [])

    def save(self, state, history: list[dict]) -> None:
        """A checkpoint of `state` (host arrays) and `history`, then metrics.jsonl from the same history."""
        if self.writes:
            save_state(self.path, self.config, state, history)
            write_metrics(self.path, history)

    def write_metrics(self, history: list[dict]) -> None:
        if self.writes:
            write_metrics(self.path, history)

    def save_params(self, params) -> None:
        if self.writes:
            save_params(self.path, params)

    def discard_params(self) -> None:
        if self.writes:
            discard_params(self.path)


def prepare_workdir(workdir: Path, config: Config, environment: dict | None = None) -> list[str]:
    """Create the work directory, refusing to clobber another run, and write config.json (with the
    `environment` the bits depend on: backend, versions, XLA flags, loop; see DevicePlan.bits_record).

    `--resume` continues the run there, or starts it when it has no checkpoint yet (so a job can
    always be launched with --resume); its configuration must be the same. Its environment may
    differ (another machine, another JAX): the earlier ones are kept in config.json under
    `earlier_environments`, and the entries whose change changes the bits (`devices.bits_differ`: not
    the CPU model in portable mode) are returned, for a warning.
    """
    make_folder(workdir, "work directory")
    _check_writable(workdir)
    config_path = workdir / CONFIG_FILE
    environment, earlier, changed_environment = environment or {}, [], []
    if config.resume:
        if os.path.lexists(config_path):
            saved = read_config_record(config_path)
            changed = sorted(name for name, value in config.result_dict().items() if saved.get(name) != value)
            if changed:
                raise VaejaxError(f"--resume: {workdir} holds a run with different {', '.join(changed)}")
            previous = saved.get(ENVIRONMENT_KEY) or {}
            earlier = saved.get(EARLIER_ENVIRONMENTS_KEY, [])
            if previous and any(previous.get(name) != value for name, value in environment.items()):
                earlier = [*earlier, previous]
                changed_environment = bits_differ(previous, environment)
    elif config.overwrite:
        for name in RUN_FILES:
            remove_file(workdir / name)
    elif any(os.path.lexists(workdir / name) for name in RUN_FILES):
        raise VaejaxError(
            f"{workdir} already holds a run: pass --resume to continue it, --overwrite to replace it, "
            "or another --workdir"
        )
    record = dataclasses.asdict(config) | {ENVIRONMENT_KEY: environment}
    if earlier:
        record[EARLIER_ENVIRONMENTS_KEY] = earlier
    write_json(config_path, record)
    return changed_environment


def _check_writable(workdir: Path) -> None:
    """Try to create a file: permission bits alone say nothing for root or read-only mounts."""
    try:
        with tempfile.TemporaryFile(dir=workdir):
            pass
    except OSError as error:
        raise VaejaxError(f"work directory {workdir} is not writable ({error.strerror or error})") from None


def remove_file(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as error:
        raise VaejaxError(f"cannot remove {path}: {error.strerror or error}") from None


def read_config_record(path: Path) -> dict:
    """config.json as written by `prepare_workdir`: each option of its field's type, the environments
    as names -> plain values; anything else is one VaejaxError naming the file."""
    saved = read_json(path, CONFIG_BYTES, CONFIG_DEPTH)
    try:
        check_option_types({name: value for name, value in saved.items()
                            if name not in (ENVIRONMENT_KEY, EARLIER_ENVIRONMENTS_KEY)})
        environments = saved.get(EARLIER_ENVIRONMENTS_KEY, [])
        if not isinstance(environments, list):
            raise VaejaxError(f"{EARLIER_ENVIRONMENTS_KEY} is not a list")
        for environment in [saved.get(ENVIRONMENT_KEY) or {}, *environments]:
            if not (isinstance(environment, dict) and all(
                    value is None or isinstance(value, str | int | float) for value in environment.values())):
                raise VaejaxError("an environment is not an object of names -> plain values")
    except VaejaxError as error:
        raise VaejaxError(f"{path}: not a vaejax run configuration ({error})") from None
    return saved


def read_run_config(workdir: Path) -> Config:
    """The Config a run in `workdir` was trained with, pointing at `workdir` wherever it was made."""
    path = workdir / CONFIG_FILE
    saved = read_config_record(path) | {"workdir": str(workdir)}
    for key in (ENVIRONMENT_KEY, EARLIER_ENVIRONMENTS_KEY):
        saved.pop(key, None)
    try:
        config = Config(**saved)
    except TypeError as error:
        raise VaejaxError(f"{path}: not a vaejax run configuration ({error})") from None
    try:
        return config.resolved()
    except VaejaxError as error:
        raise VaejaxError(f"{path}: {error}") from None


def check_metrics_record(record) -> None:
    """An epoch's record: names -> numbers or texts, or one level of names -> numbers (train, test), with
    `epoch` a whole number from 1; raises ValueError saying what is wrong."""
    if not isinstance(record, dict):
        raise ValueError("a record is not an object")
    for name, value in record.items():
        if isinstance(value, dict):
            if not all(is_number(number) for number in value.values()):
                raise ValueError(f"{name!r} is not an object of names -> numbers")
        elif not (is_number(value) or isinstance(value, str)):
            raise ValueError(f"{name!r} is not a number, a text or an object of numbers")
    epoch = record.get("epoch", 1)
    if not (is_whole_number(epoch) and epoch >= 1):
        raise ValueError(f"epoch {epoch!r} is not a whole number from 1")


def check_finished_history(history: list[dict], variational: bool) -> None:
    """What the figures and commands read of a finished run's records: every epoch, and the train
    and test losses (with a VAE's BCE and KL parts); raises ValueError saying what is missing."""
    parts = ("loss", "bce", "kl") if variational else ("loss",)
    for record in history:
        if "epoch" not in record:
            raise ValueError("a record without its epoch")
        for split in ("train", "test"):
            missing = [part for part in parts if part not in record.get(split, {})]
            if not isinstance(record.get(split), dict) or missing:
                raise ValueError(f"epoch {record['epoch']}: no {split} {' '.join(missing) or 'metrics'}")


def read_metrics(workdir: Path, epochs: int) -> list[dict]:
    """metrics.jsonl of a run of `epochs` epochs: a line of at most METRICS_LINE_BYTES for each, each an
    object of the records' form (`check_metrics_record`)."""
    path = workdir / METRICS_FILE
    data = read_regular_file(path, epochs * METRICS_LINE_BYTES + MARGIN_BYTES, f"{METRICS_FILE} of {epochs} epochs")
    records = []
    try:
        for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
            if line.strip():
                try:
                    record = parse_json(line, METRICS_DEPTH, allow_nonfinite=True)  # a test loss may be infinite
                    check_metrics_record(record)
                except (ValueError, RecursionError) as error:
                    raise ValueError(f"line {number}: {error}") from None
                records.append(record)
    except ValueError as error:  # also a UnicodeDecodeError
        raise VaejaxError(f"{path}: unreadable metrics ({error})") from None
    return records


def encode_checkpoint(config: Config, state, history: list[dict]) -> bytes:
    """The training state and the metrics so far, wrapped with a format version and a SHA-256."""
    body = serialization.msgpack_serialize({
        "config_hash": config.result_hash(),
        "model": config.model,
        "latent_dim": config.latent_dim,
        "history": json.dumps(history),
        "state": host_state(state),
    })
    return serialization.msgpack_serialize({
        "format_version": FORMAT_VERSION, "sha256": hashlib.sha256(body).hexdigest(), "body": body,
    })


PAYLOAD_TYPES = {"model": str, "latent_dim": int, "config_hash": str, "history": str, "state": dict}


def decode_checkpoint(path: Path, max_bytes: int = MAX_CHECKPOINT_BYTES) -> dict:
    """Read and verify a checkpoint file of at most `max_bytes` (see `checkpoint_bytes`); any damage ends
    in a VaejaxError naming the file."""
    envelope = _load_msgpack(path, max_bytes, "checkpoint of this run")
    if not isinstance(envelope, dict) or not {"format_version", "sha256", "body"} <= envelope.keys():
        raise VaejaxError(f"{path}: not a vaejax checkpoint")
    version = envelope["format_version"]
    if not isinstance(version, int):
        raise VaejaxError(f"{path}: not a vaejax checkpoint")
    if version != FORMAT_VERSION:
        raise VaejaxError(f"{path}: checkpoint format {version}, this vaejax reads format {FORMAT_VERSION}")
    body = envelope["body"]
    if not isinstance(body, bytes) or hashlib.sha256(body).hexdigest() != envelope["sha256"]:
        raise VaejaxError(f"{path}: checksum mismatch, the checkpoint is corrupt")
    payload = _restore_msgpack(path, body)
    if not (isinstance(payload, dict) and PAYLOAD_KEYS <= payload.keys()
            and all(isinstance(payload[name], kind) and not isinstance(payload[name], bool)
                    for name, kind in PAYLOAD_TYPES.items())):
        raise VaejaxError(f"{path}: not a vaejax checkpoint")
    return payload


def serialized_bytes(tree) -> int:
    """The most bytes msgpack can take for `tree` (nested dicts of arrays): the arrays' own bytes, and
    LEAF_BYTES for each one's name, shape and dtype."""
    leaves = jax.tree_util.tree_leaves(tree)
    return sum(np.asarray(leaf).nbytes for leaf in leaves) + LEAF_BYTES * len(leaves) + MARGIN_BYTES


def checkpoint_bytes(host_template: dict, epochs: int) -> int:
    """The most a checkpoint of this state (params, Adam's moments, the epoch's sums...) can take after
    `epochs` epochs: its serialized state and a metrics line per epoch."""
    return serialized_bytes(host_template) + epochs * METRICS_LINE_BYTES


def save_state(workdir: Path, config: Config, state, history: list[dict]) -> None:
    """Checkpoint atomically, verified, keeping the previous one as checkpoint.prev.msgpack."""
    data = encode_checkpoint(config, state, history)
    atomic_write(workdir / CHECKPOINT_FILE, data, verify=lambda path: decode_checkpoint(path, len(data)),
                 keep_previous=workdir / PREVIOUS_CHECKPOINT_FILE)


def restore_state(workdir: Path, config: Config, template, log: Callable[[str], None] = print):
    """(state, metrics history) from the work directory's checkpoint, or (template, []) if it has none.

    A damaged checkpoint.msgpack falls back to checkpoint.prev.msgpack, saying so; a checkpoint of
    another run is refused. A checkpoint larger than this model's state and `config.epochs` epochs of
    history is refused before it is read.
    """
    path, previous = workdir / CHECKPOINT_FILE, workdir / PREVIOUS_CHECKPOINT_FILE
    if not os.path.lexists(path) and not os.path.lexists(previous):
        return template, []
    expected = host_state(template)
    max_bytes = checkpoint_bytes(expected, config.epochs)
    try:
        payload = decode_checkpoint(path, max_bytes)
    except VaejaxError as error:
        if not os.path.lexists(previous):
            raise
        log(f"warning: {error}; using {previous.name}")
        path, payload = previous, decode_checkpoint(previous, max_bytes)
    if (payload["model"], payload["latent_dim"]) != (config.model, config.latent_dim):
        raise VaejaxError(
            f"{path}: checkpoint of {payload['model']} with latent_dim {payload['latent_dim']}, "
            f"this run is {config.model} with latent_dim {config.latent_dim}"
        )
    if payload["config_hash"] != config.result_hash():
        raise VaejaxError(f"{path}: checkpoint belongs to a run with a different configuration")
    _check_same_shapes(path, expected, payload["state"])
    try:
        history = parse_json(payload["history"], HISTORY_DEPTH, allow_nonfinite=True)
        if not isinstance(history, list):
            raise ValueError("not a list")
        for record in history:
            check_metrics_record(record)
    except (ValueError, RecursionError) as error:
        raise VaejaxError(f"{path}: unreadable metrics history ({error})") from None
    restored = serialization.from_state_dict(template, payload["state"])
    state = restored.replace(rng=jax.random.wrap_key_data(restored.rng))
    log(f"resumed from {path} at epoch {int(state.epoch)}, step {int(state.step)}")
    return state, history


def host_state(state) -> dict:
    """What a checkpoint stores of a train state: nested dicts of host arrays, the typed PRNG key as
    its raw uint32 data (a dict passes as it is). Made in the training thread, so that the
    background writer never reads device buffers that the next step may donate."""
    if isinstance(state, dict):
        return state
    return jax.device_get(serialization.to_state_dict(state) | {"rng": jax.random.key_data(state.rng)})


def _check_same_shapes(path: Path, expected, found) -> None:
    """Refuse unless `found` has the tree structure, shapes and dtypes of `expected`."""

    def signature(tree):
        return jax.tree_util.tree_map(lambda leaf: (np.shape(leaf), np.asarray(leaf).dtype), tree)

    try:
        same = signature(expected) == signature(found)
    except Exception:  # a malformed tree: report it as such
        same = False
    if not same:
        raise VaejaxError(f"{path}: parameter shapes do not match this model")


def _load_msgpack(path: Path, max_bytes: int, what: str):
    return _restore_msgpack(path, read_regular_file(path, max_bytes, what))


def _restore_msgpack(path: Path, data: bytes):
    try:
        return serialization.msgpack_restore(data)
    except Exception:  # msgpack raises many types for corrupt input (and for nesting past its stack)
        raise VaejaxError(f"{path}: corrupt or truncated file") from None


def load_finished_run(workdir: Path):
    """(config, model, params, history) of a finished run in `workdir`."""
    from vaejax.models import build_model, init_params  # models are needed here only

    config = read_run_config(workdir)
    params_path = workdir / PARAMS_FILE
    if not os.path.lexists(params_path):
        raise VaejaxError(f"no {PARAMS_FILE} in {workdir}: the run has not finished")
    model = build_model(config.model, config.latent_dim, config.inputs_decoder)
    params = load_params(params_path, init_params(model, jax.random.key(0)))
    history = read_metrics(workdir, config.epochs)
    if not history:
        raise VaejaxError(f"{workdir / METRICS_FILE}: no epochs recorded")
    try:
        check_finished_history(history, model.variational)
    except ValueError as error:
        raise VaejaxError(f"{workdir / METRICS_FILE}: unreadable metrics ({error})") from None
    return config, model, params, history


def save_params(workdir: Path, params) -> None:
    atomic_write(workdir / PARAMS_FILE, serialization.to_bytes(params))


def discard_params(workdir: Path) -> None:
    """Remove params.msgpack, which holds a finished run's params, before the run trains on: so it is
    never behind the checkpoint (it is written again once the run has finished)."""
    remove_file(workdir / PARAMS_FILE)


def load_params(path: Path, template):
    """Params saved by `save_params`, checked against the structure and shapes of `template` (and no
    larger than it serializes to)."""
    expected = serialization.to_state_dict(template)
    params = _load_msgpack(path, serialized_bytes(expected), "params file of this model")
    _check_same_shapes(path, expected, params)
    return serialization.from_state_dict(template, params)


def write_metrics(workdir: Path, records: list[dict]) -> None:
    """metrics.jsonl, rewritten whole from the checkpoint's history (so it never runs ahead of it)."""
    text = "".join(json.dumps(record, sort_keys=True) + "\n" for record in records)
    atomic_write(workdir / METRICS_FILE, text.encode())
