"""The work directory: config, metrics, atomic msgpack checkpoints and the final params.

Checkpoints are msgpack (flax.serialization): loading one decodes plain arrays and never runs code.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import jax
import numpy as np
from flax import serialization

from vaejax.config import Config
from vaejax.errors import VaejaxError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.msgpack"
PARAMS_FILE = "params.msgpack"
FORMAT_VERSION = 1
RUN_FILES = (CONFIG_FILE, METRICS_FILE, CHECKPOINT_FILE, PARAMS_FILE)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the new one, whole."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def prepare_workdir(workdir: Path, config: Config) -> None:
    """Create the work directory, refusing to clobber another run, and write config.json."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise VaejaxError(f"cannot create work directory {workdir}: {error.strerror}") from None
    if not os.access(workdir, os.W_OK):
        raise VaejaxError(f"work directory {workdir} is not writable")
    config_path = workdir / CONFIG_FILE
    if config.resume:
        if not (workdir / CHECKPOINT_FILE).is_file():
            raise VaejaxError(f"--resume: no {CHECKPOINT_FILE} in {workdir}")
        saved = _read_config(config_path)
        if saved != config.result_dict():
            changed = sorted(k for k in config.result_dict() if saved.get(k) != config.result_dict()[k])
            raise VaejaxError(f"--resume: {workdir} was trained with different {', '.join(changed)}")
    elif config.overwrite:
        for name in RUN_FILES:
            (workdir / name).unlink(missing_ok=True)
    elif any((workdir / name).exists() for name in RUN_FILES):
        raise VaejaxError(
            f"{workdir} already holds a run: pass --resume to continue it, --overwrite to replace it, "
            "or another --workdir"
        )
    atomic_write(config_path, config.to_json().encode())


def _read_config(path: Path) -> dict:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise VaejaxError(f"{path}: unreadable run configuration ({error})") from None
    return {name: saved.get(name) for name in Config().result_dict()}


def save_state(workdir: Path, config: Config, state) -> None:
    """The full training state after an epoch, with what identifies the run it belongs to."""
    payload = {
        "format_version": FORMAT_VERSION,
        "config_hash": config.result_hash(),
        "model": config.model,
        "latent_dim": config.latent_dim,
        "state": _state_dict(state),
    }
    atomic_write(workdir / CHECKPOINT_FILE, serialization.msgpack_serialize(payload))


def restore_state(workdir: Path, config: Config, template):
    """Load the checkpoint into the structure of `template`, refusing one from another run."""
    path = workdir / CHECKPOINT_FILE
    payload = _load_msgpack(path)
    if not isinstance(payload, dict) or "state" not in payload:
        raise VaejaxError(f"{path}: not a vaejax checkpoint")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise VaejaxError(f"{path}: checkpoint format {version}, this vaejax reads {FORMAT_VERSION}")
    if (payload.get("model"), payload.get("latent_dim")) != (config.model, config.latent_dim):
        raise VaejaxError(
            f"{path}: checkpoint of {payload.get('model')} with latent_dim {payload.get('latent_dim')}, "
            f"this run is {config.model} with latent_dim {config.latent_dim}"
        )
    if payload.get("config_hash") != config.result_hash():
        raise VaejaxError(f"{path}: checkpoint belongs to a run with a different configuration")
    _check_same_shapes(path, _state_dict(template), payload["state"])
    restored = serialization.from_state_dict(template, payload["state"])
    return restored.replace(rng=jax.random.wrap_key_data(restored.rng))


def _state_dict(state) -> dict:
    """The state as nested dicts of arrays; the typed PRNG key as its raw uint32 data."""
    return serialization.to_state_dict(state) | {"rng": np.asarray(jax.random.key_data(state.rng))}


def _check_same_shapes(path: Path, expected, found) -> None:
    try:
        expected_shapes = jax.tree_util.tree_map(np.shape, expected)
        found_shapes = jax.tree_util.tree_map(np.shape, found)
    except Exception:  # a malformed tree: report it as such
        raise VaejaxError(f"{path}: malformed checkpoint") from None
    if expected_shapes != found_shapes:
        raise VaejaxError(f"{path}: parameter shapes do not match this model")


def _load_msgpack(path: Path):
    try:
        data = path.read_bytes()
    except OSError as error:
        raise VaejaxError(f"{path}: cannot read ({error.strerror})") from None
    try:
        return serialization.msgpack_restore(data)
    except Exception:  # msgpack raises many types for corrupt input
        raise VaejaxError(f"{path}: corrupt or truncated checkpoint") from None


def save_params(workdir: Path, params) -> None:
    atomic_write(workdir / PARAMS_FILE, serialization.to_bytes(params))


def load_params(path: Path, template):
    """Params saved by `save_params`, checked against the structure and shapes of `template`."""
    params = _load_msgpack(path)
    _check_same_shapes(path, serialization.to_state_dict(template), params)
    return serialization.from_state_dict(template, params)


def read_metrics(workdir: Path, upto_epoch: int) -> list[dict]:
    """The metrics records of epochs 1..upto_epoch (later ones belong to an epoch never checkpointed)."""
    path = workdir / METRICS_FILE
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [record for record in records if record["epoch"] <= upto_epoch]


def write_metrics(workdir: Path, records: list[dict]) -> None:
    text = "".join(json.dumps(record, sort_keys=True) + "\n" for record in records)
    atomic_write(workdir / METRICS_FILE, text.encode())


def append_metric(workdir: Path, record: dict) -> None:
    with open(workdir / METRICS_FILE, "a") as metrics:
        metrics.write(json.dumps(record, sort_keys=True) + "\n")
