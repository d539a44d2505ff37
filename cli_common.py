"""Start-up shared by the command-line entry points (train, retrieval, study, demo, prep).

- ``add_verbose_arg`` / ``quiet_tensorflow``: TensorFlow's start-up lines (oneDNN, CUDA stubs,
  ``E0000 ... failed call to cuInit`` on a machine without a GPU) are hidden unless
  ``--verbose`` is given. TensorFlow 2.21 writes them through absl before its log level applies,
  so the environment variable alone does not hide them: the import and the device discovery
  run with the process's stderr (file descriptor 2) sent to a temporary file, which is replayed
  only when the import fails. Later C++ messages follow ``TF_CPP_MIN_LOG_LEVEL`` (default 2:
  errors only).
- ``add_set_arg`` / ``parse_sets``: ``--set key=value`` config overrides (see config.py
  ``Config.from_json(..., overrides=)``).
- ``command``: a command line a user can paste from the repository root.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def add_verbose_arg(parser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's start-up and C++ log lines (hidden by default)")


def quiet_tensorflow(verbose: bool = False) -> None:
    """Import TensorFlow (and find its devices) without its start-up lines unless ``verbose``.

    Call before anything imports TensorFlow; once it is imported this only sets the Python-side
    absl verbosity. ``verbose`` shows everything (``TF_CPP_MIN_LOG_LEVEL`` 0)."""
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        import tensorflow  # noqa: F401
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules:
        with _stderr_to_file() as captured:
            try:
                import tensorflow as tf
                tf.config.list_physical_devices()  # device discovery: the cuInit line
            except BaseException:
                captured.replay = True
                raise
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.ERROR)


class _stderr_to_file:
    """Send file descriptor 2 to a temporary file inside the block; ``replay`` = True copies
    what was written back to stderr on exit (used when the import fails)."""

    def __enter__(self):
        self.replay = False
        _flush_stderr()
        self._fd = 2  # the process's stderr, whatever object sys.stderr is now
        try:
            self._saved = os.dup(self._fd)
        except OSError:  # no real descriptor (an embedding host): leave stderr alone
            self._saved = None
            return self
        self._tmp = tempfile.TemporaryFile()
        os.dup2(self._tmp.fileno(), self._fd)
        return self

    def __exit__(self, *exc):
        if self._saved is None:
            return False
        _flush_stderr()
        os.dup2(self._saved, self._fd)
        os.close(self._saved)
        if self.replay:
            self._tmp.seek(0)
            sys.stderr.write(self._tmp.read().decode("utf-8", "replace"))
            sys.stderr.flush()
        self._tmp.close()
        return False


def _flush_stderr() -> None:
    for stream in (sys.stderr, sys.__stderr__):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass


def add_set_arg(parser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        dest="set",
                        help="override a config key (repeatable); VALUE is read as JSON when it "
                             "parses (numbers, true/false, null, lists), else as a string; "
                             "dumps.<sub>=PATH sets one output folder")


def parse_sets(items) -> tuple[dict, list[str]]:
    """``["key=value", ...]`` -> ({key: value}, problems). A value is JSON when it parses
    (``1e-4``, ``true``, ``[1, 2]``, ``null``), else the string itself. Dotted keys
    (``dumps.features``) are kept as given; config.with_overrides merges them."""
    out: dict = {}
    problems = []
    for item in items or ():
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"--set {item}: expected KEY=VALUE")
            continue
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        out[key] = value
    return out, problems


def command(script: str, *args) -> str:
    """A command line that can be pasted into a shell at the repository root: ``python``
    followed by the script (or ``-m module``) and its quoted arguments. ``python`` is the
    interpreter running this program when it is the one found first on PATH, else its path
    relative to the root when it lies inside the repository (``.venv/bin/python``), else its
    absolute path."""
    return " ".join([shlex.quote(python_name()), *map(shlex.quote, [script, *map(str, args)])])


def python_name() -> str:
    import shutil
    exe = Path(sys.executable)
    found = shutil.which("python")
    # compared unresolved: a venv's python is a link to the system one, yet another program
    if found and os.path.abspath(found) == os.path.abspath(exe):
        return "python"
    try:
        return str(exe.relative_to(ROOT))
    except ValueError:
        return str(exe)
