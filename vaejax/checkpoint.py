"""The work directory: config, metrics, atomic msgpack checkpoints and the final params.

Checkpoints are msgpack (flax.serialization): loading one decodes plain arrays and never runs code.
"""

from __future__ import annotations

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

from vaejax.config import Config
from vaejax.errors import VaejaxError

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


def atomic_write(path: Path, data: bytes, verify: Callable[[Path], object] | None = None,
                 keep_previous: Path | None = None) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the new one, whole.

    The bytes go to a temporary file in the same folder, are fsynced, checked by `verify` (reading
    the temporary file back) and only then renamed over `path`. With `keep_previous`, the old file
    stays there (hard-linked) as a second copy. A failed write (disk full...) leaves `path` as it was.
    """
    tmp_path = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp_path = Path(tmp_name)
        with os.fdopen(fd, "wb") as tmp:
            os.fchmod(tmp.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        if verify is not None:
            verify(tmp_path)
        if keep_previous is not None and path.exists():
            _replace_with_link(path, keep_previous)
        os.replace(tmp_path, path)
        tmp_path = None
        _fsync_dir(path.parent)  # make the renames themselves durable
    except OSError as error:
        raise VaejaxError(f"cannot write {path}: {error.strerror or error}; the previous file is kept") from None
    finally:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)


def _replace_with_link(source: Path, target: Path) -> None:
    """Make `target` another name of `source`, atomically replacing what `target` was."""
    link = target.with_name(f".{target.name}.link")
    link.unlink(missing_ok=True)
    os.link(source, link)
    os.replace(link, target)


def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def prepare_workdir(workdir: Path, config: Config, environment: dict | None = None) -> list[str]:
    """Create the work directory, refusing to clobber another run, and write config.json (with the
    `environment` the bits depend on: backend, versions, XLA flags, loop; see DevicePlan.bits_record).

    `--resume` continues the run there, or starts it when it has no checkpoint yet (so a job can
    always be launched with --resume); its configuration must be the same. Its environment may
    differ (another machine, another JAX): the earlier ones are kept in config.json under
    `earlier_environments`, and the entries that changed are returned, for a warning.
    """
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise VaejaxError(f"cannot create work directory {workdir}: {error.strerror or error}") from None
    _check_writable(workdir)
    config_path = workdir / CONFIG_FILE
    environment, earlier, changed_environment = environment or {}, [], []
    if config.resume:
        if config_path.exists():
            saved = read_json(config_path)
            changed = sorted(name for name, value in config.result_dict().items() if saved.get(name) != value)
            if changed:
                raise VaejaxError(f"--resume: {workdir} holds a run with different {', '.join(changed)}")
            previous = saved.get(ENVIRONMENT_KEY) or {}
            earlier = saved.get(EARLIER_ENVIRONMENTS_KEY, [])
            changed_environment = sorted(name for name in environment if previous.get(name) != environment[name])
            if previous and changed_environment:
                earlier = [*earlier, previous]
    elif config.overwrite:
        for name in RUN_FILES:
            (workdir / name).unlink(missing_ok=True)
    elif any((workdir / name).exists() for name in RUN_FILES):
        raise VaejaxError(
            f"{workdir} already holds a run: pass --resume to continue it, --overwrite to replace it, "
            "or another --workdir"
        )
    record = dataclasses.asdict(config) | {ENVIRONMENT_KEY: environment}
    if earlier:
        record[EARLIER_ENVIRONMENTS_KEY] = earlier
    write_json(config_path, record)
    return changed_environment if earlier else []


def _check_writable(workdir: Path) -> None:
    """Try to create a file: permission bits alone say nothing for root or read-only mounts."""
    try:
        with tempfile.TemporaryFile(dir=workdir):
            pass
    except OSError as error:
        raise VaejaxError(f"work directory {workdir} is not writable ({error.strerror or error})") from None


def read_run_config(workdir: Path) -> Config:
    """The Config a run in `workdir` was trained with, pointing at `workdir` wherever it was made."""
    path = workdir / CONFIG_FILE
    saved = read_json(path) | {"workdir": str(workdir)}
    for key in (ENVIRONMENT_KEY, EARLIER_ENVIRONMENTS_KEY):
        saved.pop(key, None)
    try:
        return Config(**saved).resolved()
    except TypeError as error:
        raise VaejaxError(f"{path}: not a vaejax run configuration ({error})") from None


def read_metrics(workdir: Path) -> list[dict]:
    path = workdir / METRICS_FILE
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as error:
        raise VaejaxError(f"{path}: unreadable metrics ({error})") from None


def read_json(path: Path) -> dict:
    """A JSON object from `path`; a missing or malformed file ends in one VaejaxError line."""
    try:
        saved = json.loads(path.read_text())
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as error:
        raise VaejaxError(f"{path}: unreadable ({error})") from None
    return saved


def write_json(path: Path, record: dict) -> None:
    atomic_write(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())


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


def decode_checkpoint(path: Path) -> dict:
    """Read and verify a checkpoint file; any damage ends in a VaejaxError naming the file."""
    envelope = _load_msgpack(path)
    if not isinstance(envelope, dict) or not {"format_version", "sha256", "body"} <= envelope.keys():
        raise VaejaxError(f"{path}: not a vaejax checkpoint")
    version = envelope["format_version"]
    if version != FORMAT_VERSION:
        raise VaejaxError(f"{path}: checkpoint format {version}, this vaejax reads format {FORMAT_VERSION}")
    body = envelope["body"]
    if not isinstance(body, bytes) or hashlib.sha256(body).hexdigest() != envelope["sha256"]:
        raise VaejaxError(f"{path}: checksum mismatch, the checkpoint is corrupt")
    payload = _restore_msgpack(path, body)
    if not isinstance(payload, dict) or not PAYLOAD_KEYS <= payload.keys():
        raise VaejaxError(f"{path}: not a vaejax checkpoint")
    return payload


def save_state(workdir: Path, config: Config, state, history: list[dict]) -> None:
    """Checkpoint atomically, verified, keeping the previous one as checkpoint.prev.msgpack."""
    atomic_write(workdir / CHECKPOINT_FILE, encode_checkpoint(config, state, history),
                 verify=decode_checkpoint, keep_previous=workdir / PREVIOUS_CHECKPOINT_FILE)


def restore_state(workdir: Path, config: Config, template, log: Callable[[str], None] = print):
    """(state, metrics history) from the work directory's checkpoint, or (template, []) if it has none.

    A damaged checkpoint.msgpack falls back to checkpoint.prev.msgpack, saying so; a checkpoint of
    another run is refused.
    """
    path, previous = workdir / CHECKPOINT_FILE, workdir / PREVIOUS_CHECKPOINT_FILE
    if not path.exists() and not previous.exists():
        return template, []
    try:
        payload = decode_checkpoint(path)
    except VaejaxError as error:
        if not previous.exists():
            raise
        log(f"warning: {error}; using {previous.name}")
        path, payload = previous, decode_checkpoint(previous)
    if (payload["model"], payload["latent_dim"]) != (config.model, config.latent_dim):
        raise VaejaxError(
            f"{path}: checkpoint of {payload['model']} with latent_dim {payload['latent_dim']}, "
            f"this run is {config.model} with latent_dim {config.latent_dim}"
        )
    if payload["config_hash"] != config.result_hash():
        raise VaejaxError(f"{path}: checkpoint belongs to a run with a different configuration")
    _check_same_shapes(path, host_state(template), payload["state"])
    try:
        history = json.loads(payload["history"])
    except (TypeError, ValueError):
        history = None
    if not (isinstance(history, list) and all(isinstance(record, dict) for record in history)):
        raise VaejaxError(f"{path}: unreadable metrics history")
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


def _load_msgpack(path: Path):
    try:
        data = path.read_bytes()
    except OSError as error:
        raise VaejaxError(f"{path}: cannot read ({error.strerror or error})") from None
    return _restore_msgpack(path, data)


def _restore_msgpack(path: Path, data: bytes):
    try:
        return serialization.msgpack_restore(data)
    except Exception:  # msgpack raises many types for corrupt input
        raise VaejaxError(f"{path}: corrupt or truncated file") from None


def load_finished_run(workdir: Path):
    """(config, model, params, history) of a finished run in `workdir`."""
    from vaejax.models import build_model, init_params  # models are needed here only

    config = read_run_config(workdir)
    params_path = workdir / PARAMS_FILE
    if not params_path.is_file():
        raise VaejaxError(f"no {PARAMS_FILE} in {workdir}: the run has not finished")
    model = build_model(config.model, config.latent_dim, config.inputs_decoder)
    params = load_params(params_path, init_params(model, jax.random.key(0)))
    history = read_metrics(workdir)
    if not history:
        raise VaejaxError(f"{workdir / METRICS_FILE}: no epochs recorded")
    return config, model, params, history


def save_params(workdir: Path, params) -> None:
    atomic_write(workdir / PARAMS_FILE, serialization.to_bytes(params))


def load_params(path: Path, template):
    """Params saved by `save_params`, checked against the structure and shapes of `template`."""
    params = _load_msgpack(path)
    _check_same_shapes(path, serialization.to_state_dict(template), params)
    return serialization.from_state_dict(template, params)


def write_metrics(workdir: Path, records: list[dict]) -> None:
    """metrics.jsonl, rewritten whole from the checkpoint's history (so it never runs ahead of it)."""
    text = "".join(json.dumps(record, sort_keys=True) + "\n" for record in records)
    atomic_write(workdir / METRICS_FILE, text.encode())
