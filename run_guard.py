"""Checks around a training run that keep finished work safe (used by training.py).

- :func:`check_inputs`: every training/validation file exists, is a file, and holds records of
  the config's archive (and the prep metadata beside them agrees with the config), before
  anything of an earlier run is touched;
- :func:`clear_for_fresh_start`: refuse to start over an existing run unless asked to
  (``--overwrite``), then remove its outputs;
- :func:`restore_newest_readable`: restore the newest checkpoint that reads back, saying which;
- :func:`find_bad_record_file`: which of several TFRecord files is truncated or corrupt;
- :func:`remove_checkpoint_temps`: ``ckpt-N_temp/`` folders of a failed or killed save.

Every problem raises :class:`RunError` (a ValueError) whose message starts with the file.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Iterable

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
    """Without ``overwrite``: RunError if the run already has outputs. With it: remove them."""
    found = existing_outputs(cfg)
    if not found:
        return
    if not overwrite:
        raise RunError(f"{found[0]}: run {cfg.run_name} already exists "
                       f"({', '.join(str(p) for p in found)}); continue it with --resume, or "
                       "start it over with --overwrite (deletes them)")
    for path in found:
        log(f"--overwrite: removing {path}")
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


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
