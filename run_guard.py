"""Checks around a training run that keep finished work safe (used by training.py).

- :func:`check_inputs`: every training/validation file exists, is a file, and holds records of
  the config's archive (and the prep metadata beside them agrees with the config), before
  anything of an earlier run is touched;
- :func:`clear_for_fresh_start`: refuse to start over an existing run unless asked to
  (``--overwrite``), then set its outputs aside (:func:`set_aside`): renamed to hidden sibling
  names, deleted once the new run has checkpointed its first epoch (:func:`checkpoint_written`),
  put back when it fails or is interrupted before that (:func:`guards_overwrite`, the decorator
  of ``training.train``); run outputs that are symbolic links are refused before anything moves;
- :func:`restore_newest_readable`: restore the newest checkpoint that reads back, saying which;
- :func:`find_bad_record_file`: which of several TFRecord files is truncated or corrupt;
- :func:`remove_checkpoint_temps`: ``ckpt-N_temp/`` folders of a failed or killed save.

Every problem raises :class:`RunError` (a ValueError) whose message starts with the file.
See docs/reliability.md for what --overwrite guarantees.
"""
from __future__ import annotations

import contextvars
import functools
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable

import locks
from atomic_files import remove_stale_temps
from archives import registry
from config import Config


class RunError(ValueError):
    """A named problem with a run's inputs or outputs: ``<file>: <what>``."""


def _first_line(err: BaseException) -> str:
    text = getattr(err, "message", None) or str(err) or type(err).__name__
    return text.strip().splitlines()[0]


def check_record_file(key: str, path: str, dataset: str) -> None:
    """RunError unless ``path`` is a readable TFRecord file of ``dataset`` (first record)."""
    import tensorflow as tf

    from archives import get_archive

    p = Path(path)
    if p.is_dir():
        raise RunError(f"{path}: is a folder; {key} must name TFRecord files")
    if not p.is_file():
        raise RunError(f"{path}: TFRecord file not found ({key})")
    try:
        get_archive(dataset).parse_records([path])
        return
    except tf.errors.OpError as err:
        raise RunError(f"{path}: truncated or corrupt TFRecord ({_first_line(err)})") from None
    except ValueError as err:
        problem = err
    for other in registry.names():
        if other == dataset:
            continue
        try:
            get_archive(other).parse_records([path])
        except (ValueError, tf.errors.OpError):
            continue
        raise RunError(f"{path}: holds {other} records, but the config's dataset is {dataset} "
                       f"({key})") from None
    message = str(problem)
    raise RunError(message if message.startswith(str(path)) else f"{path}: {message}") from None


def record_files(key: str, paths) -> "list[str]":
    """The record files a config key's paths stand for (archives.record_files: files, globs,
    a sharded split's name); RunError naming the path that matches nothing."""
    from archives.record_files import RecordFilesError, resolve
    from archives.records_meta import RecordsMetaError

    if not paths:
        return []
    try:
        return list(resolve(paths).files)
    except RecordFilesError as err:
        raise RunError(f"{err} ({key})") from None
    except RecordsMetaError as err:
        raise RunError(str(err)) from None


def check_inputs(cfg: Config) -> None:
    """Check every input file of a training run before anything is created or removed."""
    hint = (f" (noise_prcnt {cfg.noise_prcnt} reads train_noise_prcnt{cfg.noise_prcnt}.tfrecord "
            "beside train_tfrecord_paths; make it with the prep script)" if cfg.noise_prcnt else "")
    for path in record_files("train_tfrecord_paths", cfg.noisy_train_paths):
        try:
            check_record_file("train_tfrecord_paths", path, cfg.dataset)
        except RunError as err:
            raise RunError(f"{err}{hint if 'not found' in str(err) else ''}") from None
    check_overlay(cfg)
    for path in record_files("val_tfrecord_paths", cfg.val_tfrecord_paths):
        check_record_file("val_tfrecord_paths", path, cfg.dataset)
    check_records_meta(cfg)


def check_overlay(cfg: Config) -> None:
    """RunError naming the noise overlay the run reads when it is missing, unreadable or made
    for other records than the train files."""
    from archives import overlay as ov
    from archives.record_files import counts_of, resolve

    res = resolve(cfg.noisy_train_paths)
    if res.overlay is None:
        return
    try:
        found = ov.load_overlay(res.overlay)
        ov.check_matches(found, counts_of(res), ov.overlay_digest_for(res.files), res.files)
    except ov.OverlayError as err:
        raise RunError(f"{err} (noise_prcnt {cfg.noise_prcnt})") from None


def check_records_meta(cfg: Config) -> None:
    """RunError when the prep metadata beside the records (records_meta.json) disagrees with
    the config's dataset or classes; records without it pass."""
    from archives.records_meta import RecordsMetaError, check_against

    from archives.record_files import is_overlay

    config = f"the config {cfg.source}" if cfg.source else "the config"
    paths = [p for p in (*cfg.noisy_train_paths, *cfg.val_tfrecord_paths,
                         *cfg.test_tfrecord_paths) if not is_overlay(p)]
    try:
        check_against(paths, cfg.dataset, cfg.archive.class_names, config)
    except RecordsMetaError as err:
        raise RunError(str(err)) from None


def check_output_folder(key: str, folder: Path) -> None:
    """RunError unless ``folder`` exists as a writable folder or can be created (nothing is
    created here): its nearest existing ancestor must be a writable folder."""
    for candidate in [folder, *folder.parents]:
        if candidate.exists():
            if not candidate.is_dir():
                raise RunError(f"{folder}: cannot be created, {candidate} is a file ({key})")
            if not os.access(candidate, os.W_OK | os.X_OK):
                raise RunError(f"{folder}: cannot be written, {candidate} is not writable ({key})")
            return


def check_outputs(cfg: Config) -> None:
    """Every output folder of the run can be written (checked before training starts)."""
    check_output_folder("dumps.model_weights", cfg.weights_dir)
    check_output_folder("dumps.summaries", cfg.summaries_dir)
    check_output_folder("dumps.configs", cfg.config_dump_path.parent)


def existing_outputs(cfg: Config) -> list[Path]:
    """The outputs of an earlier run under this run name: checkpoints, summaries, feature model,
    dumped config."""
    found = []
    ckpt = cfg.checkpoint_dir
    if ckpt.is_dir() and any(ckpt.iterdir()):
        found.append(ckpt)
    if cfg.summaries_dir.is_dir() and any(cfg.summaries_dir.iterdir()):
        found.append(cfg.summaries_dir)
    found += [p for p in (cfg.feature_model_path, cfg.config_dump_path) if p.exists()]
    return found


def clear_for_fresh_start(cfg: Config, overwrite: bool, log: Callable[[str], None]) -> None:
    """Without ``overwrite``: RunError if the run already has outputs. With it: set them aside
    (:func:`set_aside`); inside :func:`guards_overwrite` they are deleted at the new run's first
    epoch checkpoint or put back if it fails before, outside it they are deleted now."""
    found = existing_outputs(cfg)
    if not found:
        return
    if not overwrite:
        raise RunError(f"{found[0]}: run {cfg.run_name} already exists "
                       f"({', '.join(str(p) for p in found)}); continue it with --resume, or "
                       "start it over with --overwrite (replaces them once the new run has "
                       "checkpointed its first epoch)")
    aside = set_aside(cfg, log)
    pending = _PENDING.get()
    if pending is None:  # no guarded train() around this call: nothing to wait for
        aside.commit()
    else:
        pending.append(aside)


# ---- --overwrite: the earlier run is set aside until the new one has checkpointed an epoch ------
# the asides of the guarded train() call running in this context (None outside one)
_PENDING: contextvars.ContextVar[list | None] = contextvars.ContextVar("_PENDING", default=None)
ASIDE_MARK = ".overwritten-"  # .<name>.overwritten-<token>: a set-aside output


def run_outputs(cfg: Config) -> list[Path]:
    """What --overwrite replaces: checkpoints folder, feature model, summaries folder, dumped
    config, features folder (retrieval). Other files of the weights folder stay (MiLaN's
    training-feature cache, which checks itself against the records)."""
    return [cfg.checkpoint_dir, cfg.feature_model_path, cfg.summaries_dir, cfg.config_dump_path,
            cfg.features_dir]


def overwrite_lock_path(cfg: Config) -> Path:
    """The lock of an --overwrite in progress, beside the run's weights folder; it records what
    was set aside, so that a killed process's overwrite can be finished or undone."""
    return cfg.weights_dir.with_name(f".{cfg.weights_dir.name}.overwrite.lock")


def check_not_linked(cfg: Config) -> None:
    """RunError naming the first run output that is a symbolic link: --overwrite would move the
    link, not what it points to, so it refuses before anything is moved. (A link higher up,
    e.g. ``dumps/summaries`` or the run's weights folder, is followed: everything moves inside
    its target.)"""
    keys = ["dumps.model_weights", "dumps.model_weights", "dumps.summaries", "dumps.configs",
            "dumps.features"]
    for key, path in zip(keys, run_outputs(cfg), strict=True):
        if path.is_symlink():
            raise RunError(f"{path}: is a symbolic link (to {os.readlink(path)}); --overwrite "
                           f"does not replace linked run outputs: remove the link (its target "
                           f"is kept) or point {key} at the real folder. Nothing was changed")


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


class Aside:
    """An earlier run's outputs renamed to ``.<name>.overwritten-<token>`` beside them, under the
    overwrite lock (:func:`overwrite_lock_path`) that lists the moves."""

    def __init__(self, cfg: Config, lock: locks.Lock, moves: list[tuple[Path, Path]], log):
        self.cfg, self.lock, self.moves, self.log = cfg, lock, moves, log
        self.done = False

    def commit(self) -> None:
        """Delete the set-aside outputs (the new run has proved it can run); idempotent."""
        if self.done:
            return
        self.done = True
        self.lock.update(phase="committed")
        for _, aside in self.moves:
            _delete(aside)
        self.lock.release()
        self.log(f"--overwrite: deleted the earlier run {self.cfg.run_name} "
                 f"({', '.join(str(orig) for orig, _ in self.moves)})")

    def restore(self) -> None:
        """Remove what the new run wrote and put the earlier run back; idempotent."""
        if self.done:
            return
        self.done = True
        _undo(self.lock.info)
        self.lock.release()
        self.log(f"--overwrite: the new run stopped before its first epoch checkpoint; the "
                 f"earlier run {self.cfg.run_name} is restored")


def _undo(info: dict) -> None:
    """Put back what an overwrite lock's record says was moved aside; when every move was done
    (phase "moved"), first remove what the new run wrote at the run's output names."""
    moves = [(Path(a), Path(b)) for a, b in info.get("moves", [])]
    if info.get("phase") == "moved":
        moved = {orig for orig, _ in moves}
        for out in map(Path, info.get("outputs", [])):
            if out not in moved:
                _delete(out)
    for orig, aside in reversed(moves):
        if os.path.lexists(aside):
            _delete(orig)
            os.rename(aside, orig)


def set_aside(cfg: Config, log: Callable[[str], None]) -> Aside:
    """Rename the run's existing outputs to hidden sibling names (each rename is atomic) under
    the overwrite lock; RunError (nothing changed) for a linked output, an overwrite of this run
    already in progress, or a rename that fails (the done ones are undone)."""
    check_not_linked(cfg)
    try:
        lock = locks.acquire(overwrite_lock_path(cfg), f"--overwrite of run {cfg.run_name}",
                             what=f"run {cfg.run_name}", log=lambda m: log(f"note: {m}"))
    except locks.LockHeld as err:
        raise RunError(str(err)) from None
    mark = ASIDE_MARK + lock.info["token"]
    moves = [(p, p.with_name(f".{p.name}{mark}")) for p in run_outputs(cfg) if os.path.lexists(p)]
    lock.update(phase="moving", moves=[[str(a), str(b)] for a, b in moves],
                outputs=[str(p) for p in run_outputs(cfg)])
    done: list[tuple[Path, Path]] = []
    try:
        for orig, aside in moves:
            os.rename(orig, aside)
            done.append((orig, aside))
        lock.update(phase="moved")
    except BaseException as err:
        for orig, aside in reversed(done):
            os.rename(aside, orig)
        lock.release()
        if isinstance(err, OSError):
            raise RunError(f"{moves[len(done)][0] if len(done) < len(moves) else cfg.weights_dir}: "
                           f"cannot be moved aside for --overwrite ({err.strerror or err}); "
                           "nothing was changed") from None
        raise
    for orig, aside in moves:
        log(f"--overwrite: moved {orig} aside to {aside.name} (deleted once the new run has "
            "checkpointed its first epoch, put back if it stops before)")
    return Aside(cfg, lock, moves, log)


def checkpoint_written() -> None:
    """Tell the guard that the run just checkpointed a whole epoch: the earlier run that
    --overwrite set aside is deleted now (a no-op without one)."""
    for aside in _PENDING.get() or []:
        aside.commit()


def recover_overwrite(cfg: Config, log: Callable[[str], None]) -> None:
    """Finish an --overwrite of this run that a killed process left (its lock is stale): delete
    the set-aside outputs if the new run had committed, else put the earlier run back. An
    overwrite in progress in a live process is left alone."""
    path = overwrite_lock_path(cfg)
    info = locks.read(path)
    if info is None or not info or not locks.is_stale(info, path):
        return
    try:
        lock = locks.acquire(path, f"recovering run {cfg.run_name}", what=f"run {cfg.run_name}")
    except locks.LockHeld:
        return  # another process is recovering it right now
    with lock:
        if info.get("phase") == "committed":
            for _, aside in info.get("moves", []):
                _delete(Path(aside))
            log(f"note: finished the --overwrite of run {cfg.run_name} that "
                f"{locks.describe(info)} left: deleted the earlier run's set-aside outputs")
        else:
            _undo(info)
            log(f"note: the --overwrite of run {cfg.run_name} by {locks.describe(info)} stopped "
                "before its first epoch checkpoint: the earlier run is restored")


def guards_overwrite(train: Callable) -> Callable:
    """Decorator of ``training.train(cfg, ...)``: first finishes a killed process's overwrite of
    the run (:func:`recover_overwrite`); then, for the outputs that ``clear_for_fresh_start``
    sets aside during the call, puts them back when the call raises (or is interrupted) before
    :func:`checkpoint_written`, and deletes them when it returns."""
    @functools.wraps(train)
    def guarded(cfg: Config, *args, **kwargs):
        log = kwargs.get("log") or (lambda m: print(m, flush=True))
        recover_overwrite(cfg, log)
        token = _PENDING.set([])
        try:
            result = train(cfg, *args, **kwargs)
        except BaseException:
            for aside in reversed(_PENDING.get()):
                try:
                    aside.restore()
                except OSError as err:  # say where the earlier run is; keep the first error
                    log(f"warning: --overwrite: the earlier run could not be put back ({err}); "
                        f"it is kept under {', '.join(str(b) for _, b in aside.moves)}")
            raise
        else:
            for aside in _PENDING.get():
                aside.commit()
            return result
        finally:
            _PENDING.reset(token)
    return guarded


def remove_checkpoint_temps(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Remove ``ckpt-N_temp`` folders (a save that failed or was killed) and stale temporaries."""
    folder = Path(ckpt_dir)
    removed = remove_stale_temps(folder)
    if folder.is_dir():
        for p in sorted(folder.glob("ckpt-*_temp")):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def restore_newest_readable(checkpoint, paths: Iterable[str], log: Callable[[str], None]) -> str:
    """Restore the newest of ``paths`` (oldest first, as CheckpointManager lists them) that reads
    back; log every one skipped and which was used. RunError when none can be read."""
    paths, tried = list(paths), []
    for path in reversed(paths):
        try:
            checkpoint.restore(path).assert_existing_objects_matched()
        except Exception as err:  # a damaged file fails in many ways (IndexError, DataLossError, ...)
            tried.append(f"{Path(path).name}: {_first_line(err)}")
            log(f"warning: checkpoint {path} cannot be read ({_first_line(err)}); "
                "trying an older one")
            continue
        if tried:
            log(f"resuming from {path}, the newest readable checkpoint")
        return path
    raise RunError(f"{Path(paths[0]).parent if paths else '?'}: no checkpoint can be read "
                   f"({'; '.join(tried)}); start the run over with --overwrite")


def find_bad_record_file(paths: Iterable[str], dataset: str) -> tuple[str, str] | None:
    """(path, problem) of the first file that cannot be read to its end, or None."""
    import tensorflow as tf

    from archives import get_archive

    from archives.record_files import resolve

    for path in resolve(list(paths)).files:
        try:
            for _ in tf.data.TFRecordDataset(str(path)):
                pass
            for _ in get_archive(dataset).parse_records([str(path)]):
                pass
        except (tf.errors.OpError, ValueError) as err:
            return str(path), _first_line(err)
    return None


def records_error(paths: Iterable[str], dataset: str, err: Exception, what: str) -> Exception:
    """A RunError naming the damaged file among ``paths`` for a TF read error ``err``, or
    ``err`` itself when every file reads (the error came from elsewhere)."""
    bad = find_bad_record_file(paths, dataset)
    if bad is None:
        return err
    return RunError(f"{bad[0]}: truncated or corrupt TFRecord ({bad[1]}); {what}")
