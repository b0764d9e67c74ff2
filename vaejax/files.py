"""Every file vaejax writes or reads: one atomic write, readers bounded in kind, size and depth, and the
lock that makes one process the owner of a work directory.

A write goes to a temporary file in the same folder, is fsynced and renamed over its target: a crash
leaves the old file or the new one, whole, and a symlink at the target is replaced, never written
through. A read follows a symlink (a user may link a data folder or a run's file) but takes only a
regular file: a FIFO, a device such as /dev/zero or a folder is refused before a byte is read, and so
is a file larger than what it can legitimately hold. JSON is checked for depth before it is parsed
(without recursion), and NaN, Infinity and over-long numbers are refused unless a format allows them.
Every refusal is one VaejaxError line naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from vaejax.errors import VaejaxError

MAX_NUMBER_CHARS = 40  # a float's repr has at most 24, a 64-bit seed 20 digits
LOCK_FILE = ".lock"
LOCK_PID_BYTES = 32
FILE_KINDS = {stat.S_IFDIR: "folder", stat.S_IFIFO: "FIFO", stat.S_IFCHR: "character device",
              stat.S_IFBLK: "block device", stat.S_IFSOCK: "socket"}


def atomic_write(path: Path, data: bytes, verify: Callable[[Path], object] | None = None,
                 keep_previous: Path | None = None) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the new one, whole.

    The bytes go to a temporary file in the same folder, are fsynced, checked by `verify` (reading
    the temporary file back) and only then renamed over `path` (a symlink there is replaced, not
    followed). With `keep_previous`, the old file stays there (hard-linked) as a second copy. A
    failed write (disk full, a read-only folder...) is one VaejaxError and leaves `path` as it was.
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


def write_json(path: Path, record: dict, sort_keys: bool = True) -> None:
    atomic_write(path, (json.dumps(record, indent=2, sort_keys=sort_keys) + "\n").encode())


def make_folder(folder: Path, what: str = "folder") -> None:
    """Create `folder` (and its parents) unless it exists; a failure is one VaejaxError line."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise VaejaxError(f"cannot create {what} {folder}: {error.strerror or error}") from None


@contextlib.contextmanager
def open_regular(path: Path) -> Iterator[tuple[BinaryIO, int]]:
    """`path` open for reading, with its size, if it is a regular file (a symlink to one is followed).

    Opened non-blocking, so that a FIFO cannot hang the open, then checked on the open descriptor
    (no race between the check and the read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError) as error:  # ValueError: a NUL in the path
        raise VaejaxError(f"{path}: unreadable ({getattr(error, 'strerror', None) or error})") from None
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode):
        os.close(fd)
        kind = FILE_KINDS.get(stat.S_IFMT(status.st_mode), "special file")
        raise VaejaxError(f"{path}: a {kind}, not a regular file")
    with os.fdopen(fd, "rb") as file:
        try:
            yield file, status.st_size
        except OSError as error:
            raise VaejaxError(f"{path}: unreadable ({error.strerror or error})") from None


def read_regular_file(path: Path, max_bytes: int, what: str) -> bytes:
    """The bytes of the regular file `path`, refused (before reading) when larger than `max_bytes`,
    the most that a `what` can legitimately hold."""
    with open_regular(path) as (file, size):
        too_large = f"{path}: more than the {max_bytes:,} bytes that a {what} can hold"
        if size > max_bytes:
            raise VaejaxError(f"{too_large} ({size:,} bytes)")
        data = file.read(max_bytes + 1)  # a file may grow after fstat, or report no size (/proc)
    if len(data) > max_bytes:
        raise VaejaxError(too_large)
    return data


def json_depth(text: str) -> int:
    """How deep `text`'s arrays and objects nest, found without parsing (nor recursion): the brackets
    outside strings, a string's quotes being those no odd run of backslashes escapes."""
    codes = np.frombuffer(text.encode("utf-8", "surrogatepass"), np.uint8)
    if not len(codes):
        return 0
    positions = np.arange(len(codes), dtype=np.int64)
    last_other = np.maximum.accumulate(np.where(codes == ord("\\"), -1, positions))  # last non-backslash so far
    escaped = np.zeros(len(codes), bool)
    escaped[1:] = (positions[1:] - 1 - last_other[:-1]) % 2 == 1
    outside = np.cumsum((codes == ord('"')) & ~escaped) % 2 == 0
    opening = outside & ((codes == ord("[")) | (codes == ord("{")))
    closing = outside & ((codes == ord("]")) | (codes == ord("}")))
    return int(np.cumsum(opening.astype(np.int64) - closing).max())


def is_number(value) -> bool:
    """A JSON number: an int or a float, not a bool (which Python counts as an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_whole_number(value) -> bool:
    """A JSON whole number: an int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def parse_json(text: str, max_depth: int, allow_nonfinite: bool = False):
    """JSON `text` nested at most `max_depth` deep, numbers of at most MAX_NUMBER_CHARS characters and,
    unless `allow_nonfinite`, finite; raises ValueError saying what is wrong."""
    depth = json_depth(text)
    if depth > max_depth:
        raise ValueError(f"nested {depth} deep, more than the {max_depth} of this format")

    def number(kind: Callable[[str], float]) -> Callable[[str], float]:
        def parse(literal: str) -> float:
            if len(literal) > MAX_NUMBER_CHARS:
                raise ValueError(f"a number of {len(literal)} characters")
            value = kind(literal)
            if not (allow_nonfinite or math.isfinite(value)):
                raise ValueError(f"{literal} is not a finite number")
            return value

        return parse

    def constant(name: str) -> float:
        if not allow_nonfinite:
            raise ValueError(f"{name} is not a finite number")
        return float(name)

    return json.loads(text, parse_int=number(int), parse_float=number(float), parse_constant=constant)


def read_json(path: Path, max_bytes: int, max_depth: int, what: str | None = None, kind: type = dict,
              allow_nonfinite: bool = False):
    """The JSON value (of type `kind`) of the regular file `path` (a `what`, by default its name), read
    as `read_regular_file` and parsed as `parse_json` do; anything else is one VaejaxError naming the file."""
    data = read_regular_file(path, max_bytes, what or path.name)
    try:
        value = parse_json(data.decode("utf-8"), max_depth, allow_nonfinite)
        if not isinstance(value, kind):
            raise ValueError(f"not a JSON {'object' if kind is dict else kind.__name__}")
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise VaejaxError(f"{path}: unreadable ({error})") from None
    return value


class WorkdirLock:
    """An advisory lock (flock) on `<folder>/.lock`, so that one process at a time writes the folder.

    The kernel releases it when its process ends, however it ends, so a run killed with -9 can be
    resumed at once. A second process is refused with one line naming the owner's pid. On release the
    lock file is removed: a process that opened it before then finds, once it holds the lock, that
    the path names another file (or none) and tries again, so two processes never both own the folder.
    """

    def __init__(self, folder: Path, required: bool = True):
        self.folder = folder
        self.required = required  # False: a folder nobody may write (a shared run, read-only) goes unlocked
        self.fd: int | None = None

    def __enter__(self) -> WorkdirLock:
        make_folder(self.folder, "work directory")
        path = self.folder / LOCK_FILE
        while self.fd is None:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
            except OSError as error:
                if not self.required and error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                    return self
                raise VaejaxError(f"work directory {self.folder} is not writable "
                                  f"({path.name}: {error.strerror or error})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                owner = os.pread(fd, LOCK_PID_BYTES, 0).decode("ascii", "replace").strip()
                os.close(fd)
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise VaejaxError(f"cannot lock {path}: {error.strerror or error}") from None
                pid = f" (pid {owner})" if owner.isdigit() else ""
                raise VaejaxError(f"{self.folder} is in use by another vaejax process{pid}; wait for it to end, "
                                  "or use another --workdir") from None
            if _same_file(fd, path):
                self.fd = fd
            else:  # released and removed between our open and our lock: lock the new file
                os.close(fd)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        return self

    def __exit__(self, *exc_info) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                (self.folder / LOCK_FILE).unlink()
            os.close(self.fd)  # releases the lock
            self.fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)
