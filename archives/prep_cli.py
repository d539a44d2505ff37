"""The contract shared by the prep scripts (prep_DLRSD_noisy.py, prep_BEN_noisy.py, ...).

- the same flags where they mean the same (:func:`add_common_args`): ``-o/--out_folder``,
  ``--noise-levels``, ``--seed``, ``--schema``, ``--workers``, ``--skip-invalid``, ``--quiet``,
  ``--verbose`` (TensorFlow's start-up lines, cli_common.py);
- one error type, :class:`archives.report.PrepError` (a ValueError naming the file at fault; the
  archives' own ``InvalidInput`` / ``InvalidPatch`` are PrepErrors): the script prints
  ``error: <message>`` and exits 2;
- one report format: ``PrepReport.summary()`` (plus archive-specific notes), the JSON report and
  ``records_meta.json`` beside the records;
- one output folder, one prep at a time: every ``prepare`` function holds the lock of
  ``<out>/TFRecord`` from checking that folder until it returns (:func:`locks_output`; a second
  prep there exits 2 naming the holder). See docs/reliability.md.
"""
from __future__ import annotations

import argparse
import contextlib
import contextvars
import functools
import os
import sys
import warnings
from pathlib import Path
from typing import Callable, Iterable, Iterator

import cli_common
import locks
from atomic_files import remove_stale_temps
from archives.report import PrepError, PrepReport  # noqa: F401  (PrepError: re-exported)

PREP_LOCK = ".prep.lock"  # in <out>/TFRecord while a prepare function writes there

DEFAULT_WORKERS = min(4, os.cpu_count() or 1)


def add_common_args(p: argparse.ArgumentParser, info, *, schemas=("compact", "published"),
                    default_out: str | None = None, out_help: str = "%(default)s",
                    workers_help: str = "processes") -> None:
    """The flags every prep script takes, with ``info``'s (registry.ArchiveInfo) defaults."""
    out = default_out if default_out is not None else f"dumps/data/{info.name}"
    p.add_argument("-o", "--out_folder", default=out,
                   help=f"records go to <out>/TFRecord/ (default: {out_help})")
    p.add_argument("--noise-levels", type=int, nargs="+", default=list(info.noise_levels),
                   metavar="N", help="noise percentages (default: %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="noise seed (default: %(default)s)")
    p.add_argument("--schema", choices=schemas, default="compact",
                   help="record form: compact bytes or the published float lists "
                        "(default: %(default)s)")
    p.add_argument("--workers", type=_positive_int, default=DEFAULT_WORKERS,
                   help=f"{workers_help} (default: %(default)s); the records do not "
                        "depend on it")
    p.add_argument("--skip-invalid", action="store_true",
                   help="warn about, skip and report bad items instead of stopping")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    cli_common.add_verbose_arg(p)


def run_prep(prepare: Callable[[], PrepReport],
             notes: Callable[[PrepReport], Iterable[str]] | None = None) -> int:
    """Run ``prepare`` as a prep script does: print the report (exit 0), or ``error: ...``
    (exit 2) for bad input, or say that nothing was published when interrupted (exit 130)."""
    warnings.formatwarning = lambda msg, *_, **__: f"warning: {msg}\n"
    try:
        report = prepare()
        lines = list(notes(report)) if notes else []
    except ValueError as err:  # PrepError and the option checks (noise levels, schema, ...)
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no file was published (temporaries removed); run again to prepare",
              file=sys.stderr)
        return 130
    print(report.summary())
    for line in lines:
        print(line)
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, purpose: str) -> Iterator[locks.Lock]:
    """Hold the exclusive lock of a prep output folder (``<folder>/.prep.lock``) while the block
    runs; released on every way out (after removing this process's temporaries there when the
    block raised). A second process gets ``locks.LockHeld`` (a ValueError naming the holder:
    pid, host, since when); a stale lock (its process gone) is taken over with a warning."""
    folder = Path(folder)
    try:
        lock = locks.acquire(folder / PREP_LOCK, purpose, what=str(folder),
                             log=lambda msg: warnings.warn(msg, stacklevel=4))
    except OSError as err:
        raise ValueError(f"{folder}: output folder cannot be written "
                         f"({err.strerror or err})") from err
    with lock:
        try:
            yield lock
        except BaseException:  # Ctrl-C may strike before a temporary's own clean-up is armed
            remove_stale_temps(folder, own=True)
            raise


# the prepare() call running in this context: (its ExitStack, its name); see locks_output
_RUNNING: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("_RUNNING", default=None)


def locks_output(prepare: Callable) -> Callable:
    """Decorator of a ``prepare`` function: the output folder it checks with
    ``archives.common.check_writable`` (after validating its arguments, before reading or
    writing anything) is locked from then until the call returns (:func:`output_lock`)."""
    @functools.wraps(prepare)
    def locked(*args, **kwargs):
        with contextlib.ExitStack() as stack:
            token = _RUNNING.set((stack, f"{prepare.__module__}.prepare"))
            try:
                return prepare(*args, **kwargs)
            finally:
                _RUNNING.reset(token)
    return locked


def lock_output_folder(folder: str | os.PathLike) -> None:
    """Inside a :func:`locks_output` call, hold ``folder``'s lock until that call returns
    (``locks.LockHeld`` when another process holds it); elsewhere nothing."""
    running = _RUNNING.get()
    if running is not None:
        stack, purpose = running
        stack.enter_context(output_lock(folder, purpose))
