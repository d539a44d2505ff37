"""Atomic output files: write under a temporary name beside the target, rename on success.

Standard library only, so every part of the project (prep, training, retrieval) can use it
without pulling in TensorFlow or h5py. A failed or interrupted write never leaves a half-written
file and never harms what already stood at the target path.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; rename it onto ``path`` on success.

    The temporary name keeps the suffix (``x.tmp-<pid>.keras``), for writers that check it.
    The parent folder is created. On any exception (KeyboardInterrupt included) the temporary
    file is removed and whatever stood at ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON (with a final newline) through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
