"""Small file helpers shared by corpus shards, run files and checkpoints."""

from __future__ import annotations

import errno
import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError

from mdmctl.errors import ConfigError, OutputError

# safetensors and tokenizers report I/O failures as their own exception types whose text carries
# the OS message ("No space left on device (os error 28)"), not as OSError with an errno.
_NO_SPACE_TEXT = ("no space left", "os error 28", "disk quota exceeded", "os error 122")


def sha256_file(path: Path) -> str:
    """sha256 of a file, read in 1 MiB chunks (checkpoints can be many GB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_no_space(e: BaseException) -> bool:
    """Whether ``e`` means the disk (or quota) is full, whatever library raised it."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(t in str(e).lower() for t in _NO_SPACE_TEXT)


def is_write_failure(e: BaseException) -> bool:
    """An I/O failure while writing (as opposed to a bug or a bad value, which must propagate)."""
    return isinstance(e, OSError | SafetensorError) or is_no_space(e)


def write_failure(e: BaseException, path: Path) -> OutputError:
    """The typed error for a failed write of ``path`` (call only when ``is_write_failure(e)``)."""
    if is_no_space(e):
        return OutputError(f"no space left on device while writing {path}; nothing was left behind")
    return OutputError(f"could not write {path}: {e}")


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename durable; a no-op where directories cannot be opened (some filesystems)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise  # unsupported on some filesystems; any other error is real
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` beside ``path``, fsync, rename over it: readers see old or new, never half.

    On failure the temporary file is removed, ``path`` is untouched, and write failures become
    ``OutputError`` (exit 4, "no space left ..." when the disk is full).
    """
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        # Some writers (safetensors) create 0600 files; give the user's umask its say, as a
        # plain open() would, so a shared run folder stays readable by the group.
        os.chmod(tmp, 0o666 & ~umask())
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if is_write_failure(e):
            raise write_failure(e, path) from None
        raise
    fsync_dir(path.parent)


def umask() -> int:
    """The process's umask (file mode bits new files must not get)."""
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: _write_text(tmp, text))


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def make_out_dir(out: Path) -> None:
    """Create ``--out`` with typed errors (exit 2) for a path that is a file or cannot be made."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot create the folder ({e.strerror})") from None
