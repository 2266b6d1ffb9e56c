"""An exclusive lock on a run directory: two runs on one ``--out`` would interleave checkpoints and
``metrics.jsonl``, and retention in one would delete the other's steps.

The lock is ``DIR/.mdmctl.lock``, created with ``O_CREAT | O_EXCL`` (atomic, also on NFS v3+) and
holding JSON: the owner's pid, host, a random token and the creation time. A lock whose pid is not
running on this host is stale (a SIGKILL, an OOM kill, a power cut) and is taken over with a log
line; a lock held by a live process, or by another host (whose pids cannot be checked), is refused
with ``RunLockedError`` (exit 2). A pid-file rather than ``flock`` because ``flock`` is unreliable
on the network filesystems that run directories often live on, and because the file tells a person
who holds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mdmctl.errors import RunLockedError

LOCK_NAME = ".mdmctl.lock"
_ATTEMPTS = 3  # create, find stale, take over, create again; more means real contention


def lock_path(run_dir: Path) -> Path:
    return run_dir / LOCK_NAME


@contextlib.contextmanager
def hold(run_dir: Path, log: Callable[[str], None]) -> Iterator[Path]:
    """Hold ``run_dir``'s lock for the body; released on return, on any exception (errors,
    ``Interrupted`` after SIGTERM/SIGINT, a second Ctrl-C) but never if another process owns it."""
    path, token = acquire(run_dir, log)
    try:
        yield path
    finally:
        release(path, token)


def acquire(run_dir: Path, log: Callable[[str], None]) -> tuple[Path, str]:
    """Take the lock; returns (lock path, our token). Raises ``RunLockedError`` when it is held."""
    path = lock_path(run_dir)
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "token": uuid.uuid4().hex,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for _ in range(_ATTEMPTS):
        if _create(path, me):
            return path, me["token"]
        owner = _read(path)
        if owner is None:
            continue  # released between our attempt and the read: try again
        if not _is_stale(owner):
            raise RunLockedError(_held_message(path, owner))
        if _take_over(path, owner):
            log(
                f"recovered stale lock {path}: pid {owner['pid']} on {owner['host']} is not "
                "running (a killed run)"
            )
    raise RunLockedError(f"{path}: could not take the run directory lock (another run is racing)")


def release(path: Path, token: str) -> None:
    """Remove the lock if it is still ours (a takeover by someone else must not be undone)."""
    owner = _read(path)
    if isinstance(owner, dict) and owner.get("token") == token:
        path.unlink(missing_ok=True)


def _create(path: Path, me: dict[str, Any]) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, json.dumps(me).encode())
        os.fsync(fd)
    except OSError:
        os.close(fd)
        path.unlink(missing_ok=True)  # a lock we could not fill in would look corrupt to others
        raise
    os.close(fd)
    return True


def _read(path: Path) -> dict[str, Any] | None:
    """The owner record; None if the file is gone; raises on a file that is not a lock record."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        owner = json.loads(text)
        if isinstance(owner["pid"], int) and owner["pid"] > 0 and isinstance(owner["host"], str):
            return owner
    except (ValueError, KeyError, TypeError):
        pass
    # Also the instant between another process's O_EXCL create and its write: refusing is safe.
    raise RunLockedError(
        f"{path}: unreadable run directory lock {text[:80]!r}; if no mdmctl run is using "
        f"{path.parent}, delete {path.name}"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def _is_stale(owner: dict[str, Any]) -> bool:
    return owner["host"] == socket.gethostname() and not _pid_alive(owner["pid"])


def _take_over(path: Path, owner: dict[str, Any]) -> bool:
    """Remove a stale lock, safely against a second process doing the same at the same moment:
    move it aside atomically, and put it back if what we moved was not the stale record."""
    aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False  # another process took it over first
    try:
        moved = json.loads(aside.read_text(encoding="utf-8"))
    except ValueError:
        moved = None
    if moved == owner:
        aside.unlink(missing_ok=True)
        return True
    with contextlib.suppress(FileExistsError):
        os.link(aside, path)  # a fresh lock by someone else: restore it
    aside.unlink(missing_ok=True)
    return False


def _held_message(path: Path, owner: dict[str, Any]) -> str:
    here = owner["host"] == socket.gethostname()
    where = f"host {owner['host']}" + (" (this host)" if here else " (cannot check it from here)")
    return (
        f"{path.parent} is in use by another run: lock {path} is held by pid {owner['pid']} on "
        f"{where}, since {owner.get('created_utc', '?')}. Wait for it, use another --out, or "
        f"delete {path.name} if no mdmctl run is using it"
    )
