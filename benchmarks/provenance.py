"""What produced a benchmark's JSON: the command, the date, the commit, the machine, the versions and XLA_FLAGS.

    python benchmarks/provenance.py     # this machine's record, printed as JSON

Every script in benchmarks/ stores `provenance(__file__, argv)` under the key "provenance" of the
JSON it writes, so a number can be traced to the machine (CPU model and the instruction sets XLA:CPU
picks kernels by, or the accelerator JAX ran on) and the versions that measured it.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from vaejax.devices import host_cpu  # noqa: E402  (model, vendor, instruction sets, cores)
from vaejax.files import write_json  # noqa: E402

PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "torch")  # those installed are recorded


def write_result(path: str | Path, record: dict) -> None:
    """A benchmark's JSON, its keys in the order they were built, written whole or not at all (vaejax's one
    atomic write)."""
    write_json(Path(path), record, sort_keys=False)


def accelerator() -> dict:
    """The JAX backend and its devices (starts the backend if nothing has yet)."""
    import jax

    devices = jax.devices()
    return {"backend": jax.default_backend(), "device_kind": devices[0].device_kind, "device_count": len(devices)}


def versions() -> dict:
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def commit() -> str | None:
    """The checked-out commit, with `-dirty` when tracked files differ from it; None outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def provenance(script: str, argv: list[str] | None = None) -> dict:
    """The record for a JSON written by `script` (its `__file__`) run with `argv` (default: this process's)."""
    path = Path(script).resolve()
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    arguments = sys.argv[1:] if argv is None else argv
    return {"command": shlex.join(["python", str(shown), *arguments]),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "commit": commit(), "machine": {"cpu": host_cpu(), **accelerator()}, "versions": versions(),
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


if __name__ == "__main__":
    print(json.dumps(provenance(__file__), indent=2))
