"""The contract shared by the prep scripts (prep_DLRSD_noisy.py, prep_BEN_noisy.py, ...).

- the same flags where they mean the same (:func:`add_common_args`): ``-o/--out_folder``,
  ``--noise-levels``, ``--seed``, ``--schema``, ``--workers``, ``--layout``, ``--shard-size``,
  ``--shard``, ``--skip-invalid``, ``--quiet``, ``--verbose`` (TensorFlow's start-up lines,
  cli_common.py);
- one error type, :class:`archives.report.PrepError` (a ValueError naming the file at fault; the
  archives' own ``InvalidInput`` / ``InvalidPatch`` are PrepErrors): the script prints
  ``error: <message>`` and exits 2;
- one report format: ``PrepReport.summary()`` (plus archive-specific notes), the JSON report and
  ``records_meta.json`` beside the records;
- one output folder, one prep at a time: every ``prepare`` function holds the lock of
  ``<out>/TFRecord`` from checking that folder until it returns (:func:`locks_output`; a second
  prep there exits 2 naming the holder; the tasks of one ``--shard K/N`` prep share it). See
  docs/reliability.md.
"""
from __future__ import annotations

import argparse
import contextlib
import contextvars
import functools
import inspect
import os
import re
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
    p.add_argument("--layout", choices=("shards", "files"), default=None,
                   help="shards (default for the compact schema): each split as record files "
                        "in a seeded random order, noise levels as small overlays; files (the "
                        "published schema's only layout): one file per split in name order and "
                        "a full copy per noise level (docs/full-scale.md)")
    p.add_argument("--shard-size", default=None, metavar="SIZE",
                   help="records per shard (e.g. 1000) or bytes (e.g. 200MB; the default)")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="write only task K's shards of N (a SLURM array: K = "
                        "$SLURM_ARRAY_TASK_ID); the task that completes the set finishes it")
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
    if report.extra.get("finished") is False:  # one task of a --shard K/N array
        print(f"{report.dataset} prep task {report.extra['shard_task']}: its shards are written "
              f"to {report.out_dir} ({report.time_s:.1f} s); the task that completes the set "
              "writes records_meta.json, the overlays and the report")
        return 0
    print(report.summary())
    for line in lines:
        print(line)
    return 0


def layout_kwargs(args: argparse.Namespace) -> dict:
    """The layout options of ``add_common_args`` as prepare() keyword arguments."""
    return {"layout": args.layout, "shard_size": args.shard_size, "shard": args.shard}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, purpose: str,
                task: str | None = None) -> Iterator[locks.Lock]:
    """Hold the lock of a prep output folder while the block runs; released on every way out
    (after removing this process's temporaries there when the block raised).

    A whole prep holds ``<folder>/.prep.lock``; task ``K/N`` of a ``--shard`` prep (several
    tasks write one folder together) holds ``.prep-task-K-of-N.lock`` and shares the folder with
    the other tasks, but not with a whole prep, nor with a second run of the same task. A
    second process gets ``locks.LockHeld`` (a ValueError naming the holder: pid, host, since
    when); a stale lock (its process gone) is taken over with a warning."""
    folder = Path(folder)
    k_n = _task(task)
    name = PREP_LOCK if k_n is None else f".prep-task-{k_n[0]}-of-{k_n[1]}.lock"
    try:
        lock = locks.acquire(folder / name, purpose, what=str(folder),
                             log=lambda msg: warnings.warn(msg, stacklevel=4))
    except OSError as err:
        raise ValueError(f"{folder}: output folder cannot be written "
                         f"({err.strerror or err})") from err
    with lock:
        # a whole prep and the tasks of a sharded one exclude each other (each looks after
        # taking its own lock: of two that start together, at least one sees the other)
        others = [folder / PREP_LOCK] if k_n else sorted(folder.glob(".prep-task-*-of-*.lock"))
        for other in others:
            holder = locks.read(other)
            if holder and not locks.is_stale(holder, other):
                raise locks.LockHeld(other, holder, str(folder))
        try:
            yield lock
        except BaseException:  # Ctrl-C may strike before a temporary's own clean-up is armed
            remove_stale_temps(folder, own=True)
            raise


def _task(text: str | None) -> tuple[int, int] | None:
    """(K, N) of a well-formed ``--shard K/N``, else None (the prep itself names a bad one)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text)) if text is not None else None
    return (int(m.group(1)), int(m.group(2))) if m and int(m.group(1)) < int(m.group(2)) else None


# the prepare() call running in this context: (its ExitStack, its name, its --shard); see
# locks_output
_RUNNING: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("_RUNNING", default=None)


def locks_output(prepare: Callable) -> Callable:
    """Decorator of a ``prepare`` function: the output folder it checks with
    ``archives.common.check_writable`` (after validating its arguments, before reading or
    writing anything) is locked from then until the call returns (:func:`output_lock`; the
    function's ``shard`` argument, when it has one, names its task)."""
    signature = inspect.signature(prepare)

    @functools.wraps(prepare)
    def locked(*args, **kwargs):
        shard = signature.bind(*args, **kwargs).arguments.get("shard")
        with contextlib.ExitStack() as stack:
            token = _RUNNING.set((stack, f"{prepare.__module__}.prepare", shard))
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
        stack, purpose, shard = running
        stack.enter_context(output_lock(folder, purpose, shard))


def init_worker() -> None:
    """A pool process (archives.common.worker_pool) ignores Ctrl-C, so that the main process
    alone reports it, and hides TensorFlow's start-up lines as the command does (cli_common).
    It lives here, in a module that does not import TensorFlow: unpickling it must not."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") != "0":
        cli_common.quiet_tensorflow(False)
