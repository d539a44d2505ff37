"""The contract shared by the prep scripts (prep_DLRSD_noisy.py, prep_BEN_noisy.py, ...).

- the same flags where they mean the same (:func:`add_common_args`): ``-o/--out_folder``,
  ``--noise-levels``, ``--seed``, ``--schema``, ``--workers``, ``--layout``, ``--shard-size``,
  ``--shard``, ``--skip-invalid``, ``--quiet``, ``--verbose`` (TensorFlow's start-up lines,
  cli_common.py);
- one error type, :class:`archives.report.PrepError` (a ValueError naming the file at fault; the
  archives' own ``InvalidInput`` / ``InvalidPatch`` are PrepErrors): the script prints
  ``error: <message>`` and exits 2;
- one report format: ``PrepReport.summary()`` (plus archive-specific notes), the JSON report and
  ``records_meta.json`` beside the records.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Callable, Iterable

import cli_common
from archives.report import PrepError, PrepReport  # noqa: F401  (PrepError: re-exported)

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


def init_worker() -> None:
    """A pool process (archives.common.worker_pool) ignores Ctrl-C, so that the main process
    alone reports it, and hides TensorFlow's start-up lines as the command does (cli_common).
    It lives here, in a module that does not import TensorFlow: unpickling it must not."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") != "0":
        cli_common.quiet_tensorflow(False)
