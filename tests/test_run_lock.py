"""Run-directory lock: one live owner at a time, stale locks from dead pids taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest

from mdmctl.errors import RunLockedError
from mdmctl.train import lock as runlock


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_second_acquire_is_refused_until_release(tmp_path):
    path, token = runlock.acquire(tmp_path, log=lambda m: None)
    owner = json.loads(path.read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    with pytest.raises(RunLockedError, match=f"held by pid {os.getpid()}"):
        runlock.acquire(tmp_path, log=lambda m: None)
    runlock.release(path, token)
    assert not path.exists()
    with runlock.hold(tmp_path, log=lambda m: None) as p:
        assert p.exists()
    assert not p.exists()


def test_lock_of_another_host_is_refused_and_never_released_by_us(tmp_path):
    path = runlock.lock_path(tmp_path)
    foreign = json.dumps({"pid": _dead_pid(), "host": "some-other-host", "token": "x"})
    path.write_text(foreign)
    with pytest.raises(RunLockedError, match="host some-other-host .cannot check"):
        runlock.acquire(tmp_path, log=lambda m: None)
    runlock.release(path, "not-x")
    assert path.read_text() == foreign


def test_stale_lock_is_taken_over_with_a_log_line(tmp_path):
    path = runlock.lock_path(tmp_path)
    path.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
    logs: list[str] = []
    with runlock.hold(tmp_path, log=logs.append):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert len(logs) == 1 and "recovered stale lock" in logs[0]
    assert [p.name for p in tmp_path.iterdir()] == []  # no '.stale-' leftovers


def test_unreadable_lock_is_refused_with_how_to_fix(tmp_path):
    runlock.lock_path(tmp_path).write_text("garbage")
    with pytest.raises(RunLockedError, match="unreadable run directory lock.*delete .mdmctl.lock"):
        runlock.acquire(tmp_path, log=lambda m: None)


def test_lock_released_when_the_body_raises(tmp_path):
    with pytest.raises(KeyboardInterrupt), runlock.hold(tmp_path, log=lambda m: None):
        raise KeyboardInterrupt  # a second Ctrl-C: no save, but the lock still goes
    assert not runlock.lock_path(tmp_path).exists()
