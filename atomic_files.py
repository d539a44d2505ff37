"""Atomic output files: write under a temporary name beside the target, rename on success.

Standard library only, so every part of the project (prep, training, retrieval) can use it
without pulling in TensorFlow or h5py. A failed or interrupted write never leaves a half-written
file and never harms what already stood at the target path; the data reach the disk (fsync)
before the rename publishes them, and temporaries left by a killed process (``kill -9``) are
removed by :func:`remove_stale_temps` on the next run.

Temporaries are created with O_CREAT|O_EXCL|O_NOFOLLOW (``tempfile.mkstemp``, :func:`new_temp`)
under an unpredictable name, ``<stem>.tmp-<pid>-<host>-<random><suffix>`` (``<host>``: 8 hex
digits of the host name), so a link planted in the folder is never written through. A symbolic
link at the final name is refused (WriteError), not replaced. See docs/reliability.md.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from json_numbers import to_json
from locks import hostname, pid_alive  # noqa: F401  (pid_alive: re-exported)

# the names :func:`atomic_path` gives its temporaries, and nothing else
_TEMP_RE = re.compile(r"^.+\.tmp-(\d+)-([0-9a-f]{8})-[a-z0-9_]{8}(\.[^./]*)?$")


def host_tag() -> str:
    """8 hex digits of this host's name: temporaries of other hosts are left alone."""
    return hashlib.sha1(hostname().encode()).hexdigest()[:8]


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (/proc)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class WriteError(OSError, ValueError):
    """An output could not be written (full disk, read-only folder, ...); names the file.

    Both an OSError and a ValueError, so the scripts' "bad input or output" handlers catch it."""


def _fsync(path: Path) -> None:
    """Flush a written file (or, for a folder, every file below it) to the disk."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a folder; the rename itself is still atomic
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new, empty temporary file beside ``path`` to write to; rename it onto ``path``
    on success.

    The temporary (:func:`new_temp`) keeps the suffix (``x.tmp-<pid>-<host>-<random>.keras``),
    for writers that check it. The parent folder is created. On any exception
    (KeyboardInterrupt included) the temporary is removed and whatever stood at ``path`` is left
    untouched; an OSError (a full disk, a folder in the way, ...) becomes a :class:`WriteError`
    naming ``path``, and so does a symbolic link at ``path`` (refused, not replaced).
    """
    path = Path(path)
    tmp = None
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _check_target(path)
            tmp = new_temp(path)
            yield tmp
            if tmp.is_symlink() or not tmp.is_file():
                raise WriteError(f"{path}: not published: its temporary {tmp} was removed "
                                 "or replaced meanwhile")
            _fsync(tmp)
            _check_target(path)
            os.replace(tmp, path)
        except WriteError:
            raise
        except OSError as err:
            raise WriteError(f"{path}: cannot be written ({err.strerror or err})") from err
        _fsync_dir(path.parent)
    finally:
        if tmp is not None and (tmp.exists() or tmp.is_symlink()):
            _remove(tmp)


def new_temp(path: str | os.PathLike) -> Path:
    """A new, empty regular file beside ``path`` named ``<stem>.tmp-<pid>-<host>-<random>
    <suffix>``, created exclusively (O_EXCL, never through a link) with the permissions of a
    new file (0666 less the umask); for writers that rename it themselves (archives/shards.py)."""
    path = Path(path)
    fd, name = tempfile.mkstemp(suffix=path.suffix, dir=path.parent,
                                prefix=f"{path.stem}.tmp-{os.getpid()}-{host_tag()}-")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    return Path(name)


def _check_target(path: Path) -> None:
    """WriteError for a symbolic link at ``path``; IsADirectoryError for a folder."""
    if path.is_symlink():
        raise WriteError(f"{path}: is a symbolic link (to {os.readlink(path)}); outputs are "
                         "not written through links: remove it, or write elsewhere")
    if path.is_dir():
        raise IsADirectoryError(21, "a folder stands at this path")


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented, strict JSON (with a final newline) through
    :func:`atomic_path`: NaN and infinite floats are written as null (json_numbers.py)."""
    text = to_json(data, indent=2) + "\n"  # before the temporary: a value it cannot write raises
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def is_temp_name(name: str) -> bool:
    """Whether ``name`` has the form of an :func:`atomic_path` temporary."""
    return _TEMP_RE.match(name) is not None


def remove_stale_temps(folder: str | os.PathLike, own: bool = False) -> list[Path]:
    """Remove the temporaries of :func:`atomic_path` in ``folder`` whose writing process is gone
    (left by ``kill -9`` or a power cut); returns what was removed. Only names of that exact
    form are touched, and only those written on this host by a process that no longer runs.
    ``own``: also this process's (after an interruption that may have struck between creating a
    temporary and handing it to its ``with`` block)."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    me, host = os.getpid(), host_tag()
    for p in sorted(folder.iterdir()):
        m = _TEMP_RE.match(p.name)
        if not m or m.group(2) != host:
            continue
        pid = int(m.group(1))
        if (own and pid == me) or (pid != me and not pid_alive(pid)):
            _remove(p)
            removed.append(p)
    return removed
