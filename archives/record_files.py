"""Which record files a config's path list stands for, and which noise overlay goes with them.

A split may be named (docs/full-scale.md, "Naming a split in a config"):

* as one file or a list of files, read in the order given (published single files work as before);
* as a glob (``dumps/data/BENv2/TFRecord/train-*.tfrecord``), its files in name order;
* as ``<folder>/<split>.tfrecord`` where prep wrote that split as several shards: the shards that
  ``<folder>/records_meta.json`` lists for the split, in their order.

A ``*.overlay.npz`` path in the list is the noise overlay of the records (``archives.overlay``);
``Config.noisy_train_paths`` adds it for ``noise_prcnt`` > 0 when prep wrote overlays.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

OVERLAY_SUFFIX = ".overlay.npz"
_GLOB_CHARS = set("*?[")


class RecordFilesError(ValueError):
    """A split that names no file, or an overlay that does not belong to its records."""


@dataclass(frozen=True)
class Resolved:
    """Record files in global-index order, their record counts (None where unknown without a
    read), whether they are the shards of one prepared split, and the overlay path (or None)."""

    files: tuple[str, ...]
    counts: tuple[int | None, ...]
    shards: bool
    overlay: str | None


def overlay_name(level: int) -> str:
    return f"train_noise_prcnt{int(level)}{OVERLAY_SUFFIX}"


def is_overlay(path) -> bool:
    return str(path).endswith(OVERLAY_SUFFIX)


def split_entry(folder, split: str) -> dict | None:
    """records_meta.json's entry for ``split`` in ``folder`` ({"shards", "records", "digest"}),
    or None when the folder has no metadata or the metadata lists no shards."""
    from archives.records_meta import read_meta

    meta = read_meta(folder)
    if not meta:
        return None
    return (meta.get("splits") or {}).get(split)


def _expand(path: str) -> tuple[list[str], list[int | None], bool]:
    p = Path(path)
    if _GLOB_CHARS & set(p.name):
        found = sorted(glob.glob(str(p)))
        if not found:
            raise RecordFilesError(f"{path}: no record file matches this pattern")
        return found, [None] * len(found), False
    if p.suffix == ".tfrecord":
        # the metadata prep wrote last is authoritative: a split it lists as several shards
        # replaces a file of that name left by an earlier prep
        entry = split_entry(p.parent, p.stem)
        if entry and entry.get("shards") and p.name not in entry["shards"]:
            files = [str(p.parent / name) for name in entry["shards"]]
            return files, [int(n) for n in entry["records"]], True
    return [str(p)], [None], False


def resolve(paths) -> Resolved:
    """The record files (and overlay) a path or list of paths stands for; see the module doc.
    Counts come from records_meta.json where it lists the files (else None)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files, counts, overlays, shards = [], [], [], []
    for path in map(str, paths):
        if is_overlay(path):
            overlays.append(path)
            continue
        f, c, s = _expand(path)
        files += f
        counts += c
        shards.append(s)
    if len(overlays) > 1:
        raise RecordFilesError(f"{overlays[1]}: only one noise overlay can be joined to a set "
                               f"of records (also given: {overlays[0]})")
    if not files:
        raise RecordFilesError("no TFRecord paths given")
    counts = _known_counts(files, counts)
    return Resolved(tuple(files), tuple(counts), bool(shards) and all(shards),
                    overlays[0] if overlays else None)


def _known_counts(files: list[str], counts: list) -> list:
    """Fill in counts that records_meta.json beside a file states (single-shard splits)."""
    out = list(counts)
    for i, (f, c) in enumerate(zip(files, counts)):
        if c is not None:
            continue
        p = Path(f)
        entry = split_entry(p.parent, p.stem.split("-")[0])
        if entry and p.name in entry.get("shards", ()):
            out[i] = int(entry["records"][entry["shards"].index(p.name)])
    return out


_COUNT_CACHE: dict[tuple, int] = {}


def count_records(path: str) -> int:
    """Records in one TFRecord file (one pass over its bytes; cached by path, size, mtime)."""
    import tensorflow as tf

    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _COUNT_CACHE:
        _COUNT_CACHE[key] = int(tf.data.TFRecordDataset(path).reduce(
            tf.constant(0, tf.int64), lambda n, _: n + 1))
    return _COUNT_CACHE[key]


def counts_of(resolved: Resolved) -> list[int]:
    """Every file's record count: from the metadata, else by counting (cached)."""
    return [c if c is not None else count_records(f)
            for f, c in zip(resolved.files, resolved.counts)]


def total_records(paths) -> int:
    """Number of records the paths stand for (overlays ignored)."""
    return int(sum(counts_of(resolve(paths))))


def expected_records(paths) -> int | None:
    """Number of records the paths stand for, without parsing any (overlays ignored), or None
    when it cannot be told: the counts records_meta.json states (a sharded split's shards, or
    the per-file counts of a one-file-per-split prep), else a walk over each file's record
    headers (the published single-file layout). For display (a progress bar's total): a stale
    metadata file gives a wrong number, not an error."""
    try:
        res = resolve(paths)
    except (RecordFilesError, ValueError):
        return None
    total = 0
    for path, count in zip(res.files, res.counts):
        if count is None:
            count = _meta_file_count(path)
        if count is None:
            count = _walk_count(path)
        if count is None:
            return None
        total += count
    return total


def _meta_file_count(path: str) -> int | None:
    """The record count a one-file-per-split prep states for ``path`` (keys: the split, or the
    noise level for ``train_noise_prcnt<N>.tfrecord``), or None."""
    from archives.records_meta import RecordsMetaError, read_meta

    p = Path(path)
    try:
        meta = read_meta(p.parent)
    except RecordsMetaError:
        return None
    if not meta or meta.get("layout", "files") != "files":
        return None
    key = p.stem.removeprefix("train_noise_prcnt") if p.suffix == ".tfrecord" else None
    count = (meta.get("records") or {}).get(key)
    return count if isinstance(count, int) and count >= 0 else None


_HEADER = 8 + 4  # a TFRecord: length (uint64 LE), its CRC, the data, the data's CRC (4 bytes)


def first_record(path) -> bytes | None:
    """The data of an uncompressed TFRecord file's first record, read directly (no tf.data
    reader, whose set-up costs about 0.1 CPU-s per file), CRCs not checked; None when the file
    holds no whole first record (empty, compressed, truncated) or cannot be read."""
    try:
        with open(path, "rb") as f:
            head = f.read(_HEADER)
            if len(head) < _HEADER:
                return None
            n = int.from_bytes(head[:8], "little")
            if _HEADER + n + 4 > os.fstat(f.fileno()).st_size:
                return None
            data = f.read(n)
    except OSError:
        return None
    return data if len(data) == n else None


def _walk_count(path: str) -> int | None:
    """Records in an uncompressed TFRecord file, from their length headers alone (one small
    read per record, no data read); None when the headers do not end exactly at the file's end
    (a compressed, truncated or foreign file) or the file cannot be read."""
    try:
        size = os.path.getsize(path)
        f = open(path, "rb")
    except OSError:
        return None
    count = pos = 0
    with f:
        while pos < size:
            f.seek(pos)
            head = f.read(8)
            if len(head) < 8:
                return None
            pos += _HEADER + int.from_bytes(head, "little") + 4
            count += 1
    return count if pos == size else None


def all_files(paths) -> list[str]:
    """Every file ``paths`` stands for: the record files, then the overlay if any (the paths
    as given when one matches nothing, so that an existence check names it)."""
    try:
        res = resolve(paths)
    except RecordFilesError:
        return [str(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    return list(res.files) + ([res.overlay] if res.overlay else [])


def prepared(folder, levels=()) -> bool:
    """Whether a prep in ``folder`` left train, val, test and every noise level of ``levels``
    (as overlays beside shards, or as full train_noise_prcnt<N>.tfrecord files)."""
    from archives.records_meta import overlay_layout

    folder = Path(folder)
    try:
        splits = [resolve([str(folder / f"{s}.tfrecord")]).files for s in ("train", "val", "test")]
    except (RecordFilesError, ValueError):
        return False
    if not all(Path(f).is_file() for files in splits for f in files):
        return False
    overlays = overlay_layout(folder)
    return all((folder / (overlay_name(n) if overlays else f"train_noise_prcnt{n}.tfrecord"))
               .is_file() for n in levels)
