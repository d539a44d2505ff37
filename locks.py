"""Exclusive locks between processes: a lock file created with O_CREAT|O_EXCL naming its holder.

Used for a prep output folder (archives/prep_cli.py), a study cell (studies/runner.py) and an
``--overwrite`` in progress (run_guard.py). Standard library only; see docs/reliability.md.

A lock file is a small JSON object: ``pid``, ``host``, ``since`` (local time), ``start`` (the
process's start time on Linux, to tell a reused pid apart), ``purpose`` and a random ``token``.
Creating it with O_EXCL is atomic on local file systems and on NFS v3 and later, so of two
processes exactly one gets the lock. A lock is **stale** when its holder ran on this host and
that process is gone (or its pid now belongs to another process); a stale lock is taken over,
with a note. A lock held on another host cannot be judged by its pid; its holder touches the
file every ``heartbeat_s`` (a minute by default) while it holds it, and a lock of another host
that has not been touched for max(15 minutes, 10 heartbeats) is stale (that host died or lost
the file system). A lock file without a heartbeat (``heartbeat_s=None``) from another host stays
held until its holder releases it (delete the file by hand if that host died).
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Callable

# an unreadable (half-written) lock file younger than this is taken to be in the making
_YOUNG_S = 10.0
# a guard left by a process killed in the microseconds it takes over a stale lock
_GUARD_STALE_S = 30.0
# a held lock's file is touched this often; one of another host is stale after this much
# silence (and at least 10 beats)
HEARTBEAT_S = 60.0
_SILENCE_S, _MISSED_BEATS = 900.0, 10


class LockHeld(ValueError):
    """The lock is held by a live process; the message names the holder and the lock file."""

    def __init__(self, path: Path, holder: dict | None, what: str):
        self.path, self.holder = path, holder
        who = describe(holder) if holder else "a process whose lock file cannot be read yet"
        super().__init__(f"{what}: in use by {who}; wait for it to finish, or, if no such "
                         f"process runs any more, delete {path}")


def _process_start(pid: int) -> str | None:
    """Start time of process ``pid`` (clock ticks since boot, Linux /proc), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ")"
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (one we may not signal counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def hostname() -> str:
    return socket.gethostname() or "localhost"


def describe(info: dict) -> str:
    """``pid 123 on host h since 2026-05-01 10:00:00 (purpose)``."""
    text = f"pid {info.get('pid', '?')} on host {info.get('host', '?')}"
    if info.get("since"):
        text += f" since {info['since']}"
    return text + (f" ({info['purpose']})" if info.get("purpose") else "")


def is_stale(info: dict, path: str | os.PathLike | None = None) -> bool:
    """True when the holder ran on this host and its process is gone (or the pid was reused);
    for another host's lock with a heartbeat, when its file at ``path`` has been silent too long."""
    if info.get("host") != hostname():
        beat = info.get("heartbeat_s")
        if not (beat and path):
            return False
        try:
            silent = time.time() - Path(path).stat().st_mtime
        except OSError:
            return False
        return silent > max(_SILENCE_S, _MISSED_BEATS * float(beat))
    pid = info.get("pid")
    if not isinstance(pid, int) or not pid_alive(pid):
        return True
    start = info.get("start")
    now = _process_start(pid)
    return bool(start and now and start != now)


def read(path: str | os.PathLike) -> dict | None:
    """The holder recorded in a lock file; None when there is no lock file. A file that cannot
    be parsed yields ``{}`` (being written, or junk: see :func:`acquire`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        info = json.loads(text)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _write_new(path: Path, info: dict) -> bool:
    """Create ``path`` with O_EXCL and write ``info``; False when it already exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                     0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, (json.dumps(info) + "\n").encode())
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)
    return True


class Lock:
    """A held lock; :meth:`release` (or leaving the ``with`` block) removes its file."""

    def __init__(self, path: Path, info: dict):
        self.path, self.info = path, info
        self._stop = threading.Event()
        if info.get("heartbeat_s"):
            threading.Thread(target=self._beat, daemon=True, name=f"lock {path.name}").start()

    def _beat(self) -> None:
        """Touch the lock file every heartbeat until released (another host can tell that
        this holder still runs)."""
        while not self._stop.wait(self.info["heartbeat_s"]):
            with contextlib.suppress(OSError):
                if self.held:
                    os.utime(self.path)

    @property
    def held(self) -> bool:
        """Whether the lock file still carries this lock's token."""
        current = read(self.path)
        return bool(current) and current.get("token") == self.info["token"]

    def update(self, **fields) -> None:
        """Record more about the work in progress (rewritten atomically; the lock stays held)."""
        self.info.update(fields)
        tmp = self.path.with_name(f"{self.path.name}.{self.info['token']}.new")
        tmp.write_text(json.dumps(self.info) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)

    def release(self) -> None:
        """Remove the lock file if it is still this lock's (idempotent)."""
        self._stop.set()
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _take_over(path: Path, seen: dict) -> None:
    """Remove the stale lock ``seen`` at ``path`` unless another process replaced it meanwhile.

    A short-lived guard file (O_EXCL too) lets one process at a time re-read and remove it, so
    two processes that both found it stale cannot remove each other's fresh lock."""
    guard = path.with_name(path.name + ".takeover")
    if not _write_new(guard, {"pid": os.getpid(), "host": hostname()}):
        with contextlib.suppress(OSError):
            if time.time() - guard.stat().st_mtime > _GUARD_STALE_S:
                guard.unlink()
        return
    try:
        if read(path) == seen:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    finally:
        with contextlib.suppress(FileNotFoundError):
            guard.unlink()


def acquire(path: str | os.PathLike, purpose: str, what: str | None = None,
            log: Callable[[str], None] | None = None,
            heartbeat_s: float | None = HEARTBEAT_S) -> Lock:
    """Take the lock at ``path`` (its folder is created) or raise :class:`LockHeld`.

    ``purpose`` goes into the lock file (shown to a process that finds it held); ``what`` names
    the locked thing in the error (default: the lock file's folder). A stale lock is taken over
    and ``log`` (default: ignored) told so, naming the previous holder. ``heartbeat_s``: touch
    the file that often while held, so that processes on other hosts can judge it (see above;
    None: no heartbeat).
    """
    path = Path(path)
    what = what or str(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"pid": os.getpid(), "host": hostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "start": _process_start(os.getpid()), "purpose": purpose,
            "token": secrets.token_hex(8)}
    if heartbeat_s:
        info["heartbeat_s"] = heartbeat_s
    for attempt in range(50):
        if _write_new(path, info):
            return Lock(path, info)
        seen = read(path)
        if seen is None:  # released between our two calls: try again
            continue
        if not seen:  # cannot be parsed: being written right now, or junk left by a crash
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                continue
            if age < _YOUNG_S:
                if attempt < 10:
                    time.sleep(0.05)
                    continue
                raise LockHeld(path, None, what)
        elif not is_stale(seen, path):
            raise LockHeld(path, seen, what)
        if log:
            log(f"{path}: taking over the stale lock of "
                f"{describe(seen) if seen else 'an unknown process'} (that process is gone)")
        _take_over(path, seen)
    raise LockHeld(path, read(path), what)
