"""Checks every command's options share: whole-number ranges, finite floats, seeds and paths.

Each check raises VaejaxError with one line naming the flag, what is accepted and what was given,
so a command can validate all of its options in one place (its options dataclass) before any work.
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

from vaejax.errors import VaejaxError

INT32_MAX = 2**31 - 1  # counters that JAX state or NumPy index arrays hold as int32
SEED_MAX = 2**64 - 1  # the largest seed: what a 64-bit field holds (see `vaejax.steps.root_key`)
PORT_MAX = 65535


def require(condition: bool, message: str) -> None:
    if not condition:
        raise VaejaxError(message)


def whole_number(flag: str, value: int, low: int, high: int, why: str = "") -> None:
    """`low <= value <= high`, or an error saying so (and why the upper bound is what it is)."""
    reason = f" ({why})" if why else ""
    require(low <= value <= high, f"{flag} must be from {low} to {high}{reason}, got {value}")


def positive_finite(flag: str, value: float) -> None:
    require(math.isfinite(value) and value > 0, f"{flag} must be a positive finite number, got {value}")


def seed(flag: str, value: int) -> None:
    whole_number(flag, value, 0, SEED_MAX, "a 64-bit seed")


def non_empty(flag: str, text: str) -> None:
    require(text.strip() != "", f"{flag} must not be empty")


def _file_kind(flag: str, path: Path) -> str:
    """"missing", "folder" or "file"; a path the system cannot even look up (too long, a loop of
    links, no permission on a parent) is an error of its own."""
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except OSError as error:
        raise VaejaxError(f"{flag} {path}: {error.strerror or error}") from None
    return "folder" if stat.S_ISDIR(mode) else "file"


def existing_folder(flag: str, path: str | Path) -> Path:
    """A folder that exists and can be read: otherwise say which of the three it is not."""
    non_empty(flag, str(path))
    path = Path(path)
    kind = _file_kind(flag, path)
    require(kind != "missing", f"{flag} {path} does not exist")
    require(kind == "folder", f"{flag} {path} is a file, not a folder")
    require(os.access(path, os.R_OK | os.X_OK), f"{flag} {path} is not readable")
    return path


def output_folder(flag: str, path: str | Path) -> Path:
    """A folder to write into: it may not exist yet, but must not be a file, and must be writable
    if it does exist (creating a missing one is checked when it is created)."""
    non_empty(flag, str(path))
    path = Path(path)
    kind = _file_kind(flag, path)
    require(kind != "file", f"{flag} {path} is a file, not a folder")
    require(kind == "missing" or os.access(path, os.W_OK | os.X_OK), f"{flag} {path} is not writable")
    return path


def memory_bound(flag: str, value: int, bytes_each: int, budget_bytes: int, what: str) -> None:
    """`value` items of `bytes_each` must fit `budget_bytes`: a count the memory cannot hold is refused
    before any work, instead of failing (or swapping) halfway."""
    most = max(1, budget_bytes // bytes_each)
    require(value <= most, f"{flag} {value} needs {value * bytes_each / 2**30:.3g} GiB for {what}; "
                           f"at most {most} fit in {budget_bytes / 2**30:.3g} GiB")


def host_memory_bytes() -> int:
    """Physical memory of this machine (the budget of a count's arrays on the host)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
