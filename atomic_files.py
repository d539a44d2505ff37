"""Atomic output files: write under a temporary name beside the target, rename on success.

Standard library only, so every part of the project (prep, training, retrieval) can use it
without pulling in TensorFlow or h5py. A failed or interrupted write never leaves a half-written
file and never harms what already stood at the target path; the data reach the disk (fsync)
before the rename publishes them, and temporaries left by a killed process (``kill -9``) are
removed by :func:`remove_stale_temps` on the next run.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

# ``<stem>.tmp-<pid><suffix>``: the pid tells whether the writer still runs
_TEMP_RE = re.compile(r"\.tmp-(\d+)(\.[^/]*)?$")


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
    """Yield a temporary path beside ``path`` to write to; rename it onto ``path`` on success.

    The temporary name keeps the suffix (``x.tmp-<pid>.keras``), for writers that check it.
    The parent folder is created. On any exception (KeyboardInterrupt included) the temporary
    file is removed and whatever stood at ``path`` is left untouched; an OSError (a full disk,
    a folder in the way, ...) becomes a :class:`WriteError` naming ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                raise IsADirectoryError(21, "a folder stands at this path")
            yield tmp
            _fsync(tmp)
            os.replace(tmp, path)
        except WriteError:
            raise
        except OSError as err:
            raise WriteError(f"{path}: cannot be written ({err.strerror or err})") from err
        _fsync_dir(path.parent)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON (with a final newline) through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


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


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the ``*.tmp-<pid>*`` files and folders in ``folder`` whose writing process is gone
    (left by ``kill -9`` or a power cut); returns what was removed. Those of live processes stay."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in sorted(folder.iterdir()):
        m = _TEMP_RE.search(p.name)
        if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
            _remove(p)
            removed.append(p)
    return removed
