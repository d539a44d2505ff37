"""Helpers shared by the archive modules: TFRecord feature builders, atomic writers, the reader."""
from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from archives.prep_cli import lock_output_folder
from archives.record_files import first_record
from atomic_files import WriteError, atomic_path, remove_stale_temps


def _varint(n: int) -> bytes:
    """Protobuf base-128 varint encoding of a non-negative integer."""
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def float_feature(values) -> tf.train.Feature:
    """A float-list feature from any array-like (flattened, cast to float32).

    Built from the packed wire form (field 1, little-endian float32): several times faster
    than handing protobuf a list of 200k Python floats, and byte-identical on the wire.
    """
    raw = np.ascontiguousarray(values, dtype="<f4").tobytes()
    packed = tf.train.FloatList.FromString(b"\x0a" + _varint(len(raw)) + raw)
    return tf.train.Feature(float_list=packed)


def bytes_feature(values: bytes | str | Sequence[bytes | str]) -> tf.train.Feature:
    """A bytes-list feature from one bytes/str value or a sequence of them."""
    if isinstance(values, (bytes, str)):
        values = [values]
    encoded = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values]
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=encoded))


def example_keys(path: str | os.PathLike) -> set[str]:
    """Feature keys of the first record of a TFRecord file (used to tell schema forms apart).

    Raises ValueError naming the file when it does not exist or holds no record.
    """
    if not Path(path).is_file():
        raise ValueError(f"{path}: TFRecord file does not exist")
    raw = first_record(path)
    if raw is not None:
        try:
            return set(tf.train.Example.FromString(raw).features.feature.keys())
        except Exception:  # not an Example (a damaged or foreign file): TensorFlow's reader
            pass           # below checks the CRCs and names the fault
    for raw in tf.data.TFRecordDataset(str(path)).take(1):  # TensorFlow's reader names the fault
        return set(tf.train.Example.FromString(raw.numpy()).features.feature.keys())
    raise ValueError(f"{path}: TFRecord file holds no record")


class _NamedWriter:
    """A TFRecordWriter whose write errors (a full disk: ResourceExhaustedError) name the file."""

    def __init__(self, path: Path, tmp: Path):
        self.path = path
        self._writer = tf.io.TFRecordWriter(str(tmp))

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except tf.errors.OpError as err:
            raise WriteError(f"{self.path}: cannot be written "
                             f"({err.message.splitlines()[0] if err.message else err})") from None

    def write(self, raw: bytes) -> None:
        self._call(self._writer.write, raw)

    def flush(self) -> None:
        self._call(self._writer.flush)

    def close(self) -> None:
        self._call(self._writer.close)


@contextlib.contextmanager
def atomic_tfrecord_writer(path: str | os.PathLike) -> Iterator[_NamedWriter]:
    """Write a TFRecord file under a temporary name and rename it into place on success
    (see ``atomic_path``); write errors raise WriteError naming ``path``."""
    with atomic_path(path) as tmp:
        writer = _NamedWriter(Path(path), tmp)
        try:
            yield writer
        except BaseException:
            with contextlib.suppress(Exception):
                writer._writer.close()
            raise
        writer.close()


@dataclass(frozen=True)
class RecordParser:
    """How an archive parses its records: ``form_of(path)`` tells a file's schema form apart
    from its first record (ValueError naming the file for a foreign file); ``parser(form)``
    gives ``parse(raw) -> dict``; ``overlay_label`` is the overlay array that becomes
    ``noisy_label`` (archives.overlay)."""

    form_of: Callable[[str], Hashable]
    parser: Callable[[Hashable], Callable]
    overlay_label: str = "noisy_label"


def file_key(path) -> tuple:
    """What identifies a file's contents for the per-process caches below: its resolved path,
    inode, modification time and size (a rewritten or replaced file gets a new key)."""
    st = os.stat(path)
    return os.path.realpath(path), st.st_ino, st.st_mtime_ns, st.st_size


_FORM_CACHE: dict = {}  # (form_of, file_key) -> form
_OVERLAY_CACHE: dict = {}  # (label key, overlay file_key, records' file_keys, counts, digest)
_CACHE_LIMIT = 4096


def file_forms(files: Sequence[str], reader: RecordParser) -> tuple[list, list[int]]:
    """(the distinct forms, each file's form id); reads the first record of every file it has
    not seen unchanged in this process (make_dataset runs once per epoch)."""
    forms, ids = [], []
    for f in files:
        try:
            key = (reader.form_of, file_key(f))
        except OSError:  # missing: form_of names the file
            key = None
        form = _FORM_CACHE.get(key) if key else None
        if form is None:
            form = reader.form_of(f)
            if key:
                if len(_FORM_CACHE) >= _CACHE_LIMIT:
                    _FORM_CACHE.clear()
                _FORM_CACHE[key] = form
        if form not in forms:
            forms.append(form)
        ids.append(forms.index(form))
    return forms, ids


def parse_by_form(forms: list, reader: RecordParser) -> Callable:
    """parse(form id, raw) for files of one or several forms (a switch over their parsers)."""
    parsers = [reader.parser(f) for f in forms]
    if len(parsers) == 1:
        return lambda form_id, raw: parsers[0](raw)
    return lambda form_id, raw: tf.switch_case(
        tf.cast(form_id, tf.int32), [lambda p=p: p(raw) for p in parsers])


def indexed_records(files: Sequence[str], offsets: Sequence[int], form_ids: Sequence[int],
                    cycle: int = 1) -> tf.data.Dataset:
    """(global index, form id, serialized record) of the files in the given order; ``cycle`` > 1
    reads that many files at once, in parallel, taking one record from each in turn."""
    # plain TensorFlow functions: autograph's conversion would only add set-up time
    @tf.autograph.experimental.do_not_convert
    def one(path, offset, form_id):
        return tf.data.TFRecordDataset(path, buffer_size=1 << 22).enumerate().map(
            tf.autograph.experimental.do_not_convert(lambda i, raw: (offset + i, form_id, raw)))

    files_ds = tf.data.Dataset.from_tensor_slices(
        (tf.constant(list(files), tf.string), tf.constant(list(offsets), tf.int64),
         tf.constant(list(form_ids), tf.int64)))
    if cycle <= 1:
        return files_ds.flat_map(one)
    return files_ds.interleave(one, cycle_length=cycle, block_length=1,
                               num_parallel_calls=cycle, deterministic=True)


def file_offsets(counts: Sequence[int]) -> list[int]:
    """Global index of each file's first record."""
    return [int(x) for x in np.concatenate([[0], np.cumsum(counts)[:-1]])] if len(counts) else []


def records_dataset(paths, reader: RecordParser | Callable[[str], Callable]) -> tf.data.Dataset:
    """Parsed records of the files ``paths`` stands for (archives.record_files: files, globs,
    a sharded split's name), in file order, with the noise overlay in ``paths`` joined.

    ``reader``: the archive's RecordParser (or a plain ``parser_for(path)``). Every file's form is
    read before any record, so a foreign file raises its ValueError at once. ValueError when no
    path is given.
    """
    from archives import overlay as ov
    from archives.record_files import RecordFilesError, counts_of, resolve

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not list(paths):
        raise ValueError("parse_records: no TFRecord paths given")
    try:
        res = resolve(paths)
    except RecordFilesError as err:
        raise ValueError(str(err)) from None
    if not isinstance(reader, RecordParser):
        reader = RecordParser(form_of=lambda p: p, parser=reader)
    forms, ids = file_forms(res.files, reader)
    parse = parse_by_form(forms, reader)
    table = None
    if res.overlay:
        table = overlay_table(res, reader)
        offsets = file_offsets(counts_of(res))
    else:
        offsets = [0] * len(res.files)  # the index is not needed without an overlay

    @tf.autograph.experimental.do_not_convert
    def one(index, form_id, raw):
        ex = parse(form_id, raw)
        return ov.apply(ex, index, table) if table is not None else ex

    return indexed_records(res.files, offsets, ids).map(
        one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def overlay_table(res, reader: RecordParser) -> dict:
    """The overlay of ``res`` (record_files.Resolved) checked against its records, as tensors.
    The last one is kept for the next call with the same unchanged files (make_dataset runs once
    per epoch; a full v2 overlay is about 50 MB to decompress)."""
    from archives import overlay as ov
    from archives.record_files import counts_of

    counts, digest = counts_of(res), ov.overlay_digest_for(res.files)
    try:
        key = (reader.overlay_label, file_key(res.overlay),
               tuple(file_key(f) for f in res.files), tuple(counts), digest)
    except OSError:  # a missing file: load_overlay / the reader names it
        key = None
    if key is not None and key in _OVERLAY_CACHE:
        return _OVERLAY_CACHE[key]
    overlay = ov.load_overlay(res.overlay)
    ov.check_matches(overlay, counts, digest, res.files)
    table = ov.tensors(overlay, reader.overlay_label)
    if key is not None:
        _OVERLAY_CACHE.clear()  # one overlay at a time: a full v2 table is tens of MB
        _OVERLAY_CACHE[key] = table
    return table


def check_writable(folder: str | os.PathLike) -> None:
    """Create ``folder`` and probe it with a tiny file; ValueError naming it when it cannot be
    written. Inside a prep function (``prep_cli.locks_output``) the folder is locked from here
    on (``locks.LockHeld`` naming the holder when another prep writes there)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):  # an unpredictable, exclusive name
            pass
    except OSError as err:
        raise ValueError(f"{folder}: output folder cannot be written ({err.strerror or err})") from err
    lock_output_folder(folder)
    for path in remove_stale_temps(folder):
        warnings.warn(f"removed {path}, left by an interrupted earlier run", stacklevel=2)


def skip_or_raise(error: Exception, skip_invalid: bool, skipped: list, item, reason: str) -> None:
    """Raise ``error``, or (with ``skip_invalid``) warn about it and append
    ``{"item": item, "reason": reason}`` to ``skipped`` (the prep report's list)."""
    if not skip_invalid:
        raise error
    warnings.warn(f"skipped: {error}", stacklevel=3)
    skipped.append({"item": str(item), "reason": reason})


def worker_pool(workers: int):
    """A process pool of ``workers`` (spawned; they ignore Ctrl-C, so that the main process
    alone reports it, once), or None for one worker."""
    if workers <= 1:
        return None
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from archives.prep_cli import init_worker  # a module without TensorFlow: see there

    return ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=init_worker)


def ordered_map(pool, fn, items: list, window: int):
    """fn over items in input order, in ``pool`` when given; at most ``window`` items in flight
    so that a fast reader cannot fill memory ahead of the writer."""
    for start in range(0, len(items), window):
        chunk = items[start:start + window]
        yield from (pool.map(fn, chunk, chunksize=max(1, window // 32)) if pool
                    else map(fn, chunk))


def write_split_files(tf_dir: Path, split_names: Sequence[str], levels: Sequence[int], *,
                      items: Callable, worker: Callable, encode: Callable, pool, window: int,
                      progress: bool, source: Callable) -> tuple[dict, list]:
    """Write ``<split>.tfrecord`` per split and, beside train, ``train_noise_prcnt<N>.tfrecord``
    per noise level; returns (record counts by file key, the train rows written).

    ``items(split)`` gives the worker arguments of a split's items in order; ``worker`` reads
    one (in ``pool``) and returns (name, data, error); ``encode(split, row, result)`` returns the
    serialised examples for the split's files (clean first, then the levels in order), or None
    when the item was skipped. No file is renamed into place before every split is written, so
    a stopped run never leaves this run's train files beside an earlier run's val/test files.
    """
    from contextlib import ExitStack

    from tqdm import tqdm

    records, written_rows = {}, []
    with ExitStack() as stack:
        for split in split_names:
            names = [split]
            if split == "train":
                names += [f"train_noise_prcnt{n}" for n in levels]
            writers = [stack.enter_context(atomic_tfrecord_writer(tf_dir / f"{name}.tfrecord"))
                       for name in names]
            split_items = items(split)
            count = 0
            for row, result in enumerate(tqdm(
                    ordered_map(pool, worker, split_items, window), total=len(split_items),
                    desc=f"{split} -> {len(writers)} file(s)", disable=not progress)):
                raws = encode(split, row, result)
                if raws is None:
                    continue
                for writer, raw in zip(writers, raws, strict=True):
                    writer.write(raw)
                count += 1
                if split == "train":
                    written_rows.append(row)
            if count == 0:  # raised inside the writers' block: no file is left
                raise ValueError(f"{source(split)}: {split} split is empty after skipping "
                                 "invalid items")
            records[split] = count
            if split == "train":
                records.update({str(n): count for n in levels})
    return records, written_rows
