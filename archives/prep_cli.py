"""The contract shared by the prep scripts (prep_DLRSD_noisy.py, prep_BEN_noisy.py, ...).

- the same flags where they mean the same (:func:`add_common_args`): ``-o/--out_folder``,
  ``--noise-levels``, ``--seed``, ``--schema``, ``--workers``, ``--skip-invalid``, ``--quiet``,
  ``--verbose`` (TensorFlow's start-up lines, cli_common.py);
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
