"""Sharded prep output: each split as record files in a random order fixed by the seed, written
by several processes at once (docs/full-scale.md, "Record layout").

A split of n items (listed in name order) is put in the order ``record_order(n, seed, split)``
and cut into shards of about ``per_shard`` records: ``<split>.tfrecord`` when one shard holds
it all, else ``<split>-KKKKK-of-NNNNN.tfrecord``. A record's global index is its position in the
split: shard by shard, in shard order. Each shard is written by one worker process under a
temporary name; nothing is renamed into place before every shard of the run is written, so an
interrupted or failed run leaves no shard behind (temporaries of killed workers are removed by
``atomic_files.remove_stale_temps`` on the next run).

``--shard K/N`` (a SLURM array task) writes the shards k with k % N == K, publishes them and
saves what the records need for their metadata and overlays in ``shard_parts/``; whichever
task finds every part present afterwards finishes the prep (records_meta.json, overlays,
report). Every task plans the same order and noise from the labels alone.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from archives.report import PrepError

SPLIT_CODES = {"train": 1, "val": 2, "test": 3}
DEFAULT_SHARD_SIZE = "200MB"
LAYOUTS = ("shards", "files")
PARTS_DIR = "shard_parts"
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(KB|MB|GB)?\s*$", re.I)


# ---------------------------------------------------------------- options

def parse_shard_size(text: str) -> tuple[str, float]:
    """("bytes", n) for "200MB" / "1.5GB" / "500KB", ("records", n) for a plain number."""
    m = _SIZE_RE.match(str(text))
    if not m or float(m.group(1)) <= 0:
        raise PrepError(f"--shard-size: expected records (e.g. 1000) or a size (e.g. 200MB), "
                        f"got {text!r}")
    unit = (m.group(2) or "").upper()
    if not unit:
        return "records", float(m.group(1))
    return "bytes", float(m.group(1)) * {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}[unit]


def records_per_shard(shard_size: str, record_bytes: int) -> int:
    kind, value = parse_shard_size(shard_size)
    return max(1, int(value if kind == "records" else value // max(1, record_bytes)))


def parse_select(text: str | None) -> tuple[int, int] | None:
    """``"K/N"`` -> (K, N) with 0 <= K < N; None for None."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise PrepError(f"--shard: expected K/N with 0 <= K < N (e.g. 3/16 for task 3 of 16), "
                        f"got {text!r}")
    return int(m.group(1)), int(m.group(2))


# ---------------------------------------------------------------- plan

def record_order(n: int, seed: int, split: str) -> np.ndarray:
    """The split's items (name order) in record order: a permutation fixed by the seed."""
    return np.random.default_rng([int(seed), SPLIT_CODES.get(split, 0), 0x5A4D]).permutation(n)


def shard_names(split: str, count: int) -> list[str]:
    if count == 1:
        return [f"{split}.tfrecord"]
    return [f"{split}-{k:05d}-of-{count:05d}.tfrecord" for k in range(count)]


def shard_bounds(n: int, per_shard: int) -> list[tuple[int, int]]:
    """Even cuts of n records into ceil(n / per_shard) shards (at least one)."""
    count = max(1, math.ceil(n / max(1, per_shard)))
    cuts = [round(k * n / count) for k in range(count + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


@dataclass
class ShardTask:
    """One shard to write: ``items`` are the encoder's arguments in record order, ``rows`` their
    positions in the split's name-ordered list."""

    split: str
    index: int
    path: str
    items: list
    rows: list
    encode: Callable
    skip_invalid: bool


@dataclass
class ShardResult:
    split: str
    index: int
    path: str
    tmp: str = ""
    rows: list = field(default_factory=list)
    names: list = field(default_factory=list)
    extras: dict = field(default_factory=dict)   # key -> list, one value per written record
    skipped: list = field(default_factory=list)  # (item, reason)
    error: str = ""


def plan_tasks(tf_dir: Path, split_items: dict, *, seed: int, per_shard: int, encode: Callable,
               skip_invalid: bool) -> dict[str, list[ShardTask]]:
    """Every split's shard tasks, in shard order."""
    out = {}
    for split, items in split_items.items():
        order = record_order(len(items), seed, split)
        bounds = shard_bounds(len(items), per_shard)
        names = shard_names(split, len(bounds))
        out[split] = [ShardTask(split, k, str(tf_dir / names[k]),
                                [items[r] for r in order[a:b]], [int(r) for r in order[a:b]],
                                encode, skip_invalid)
                      for k, (a, b) in enumerate(bounds)]
    return out


# ---------------------------------------------------------------- writing

def temp_path(path: str) -> str:
    """A new temporary file beside ``path`` (``atomic_files.new_temp``: an unpredictable name,
    created exclusively, never through a link)."""
    from atomic_files import new_temp

    return str(new_temp(path))


def write_shard(task: ShardTask) -> ShardResult:
    """Write one shard under a temporary name (process-pool entry). ``task.encode(item)`` ->
    (name, serialized record, extras dict or None) or raises PrepError for a bad item."""
    from archives.common import _NamedWriter

    out = ShardResult(task.split, task.index, task.path, tmp=temp_path(task.path))
    writer = _NamedWriter(Path(task.path), Path(out.tmp))
    try:
        for row, item in zip(task.rows, task.items):
            try:
                name, raw, extra = task.encode(item)
            except PrepError as err:
                if not task.skip_invalid:
                    out.error = str(err)
                    break
                out.skipped.append((getattr(err, "item", None) or str(err).split(": ", 1)[0],
                                    str(err)))
                continue
            writer.write(raw)
            out.rows.append(row)
            out.names.append(name)
            for k, v in (extra or {}).items():
                out.extras.setdefault(k, []).append(v)
        writer.close()
    except BaseException:
        with contextlib.suppress(Exception):
            writer._writer.close()
        _unlink(out.tmp)
        raise
    if out.error:
        _unlink(out.tmp)
    return out


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _stop_pool(pool) -> None:
    """Stop a process pool now: running shard writers are killed (their temporaries are
    removed by the caller)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.join(timeout=30)


def write_shards(tasks: Sequence[ShardTask], pool, *, progress: bool = True,
                 desc: str = "shards") -> list[ShardResult]:
    """Write ``tasks`` (in ``pool`` when given); returns their results with the shards still
    under temporary names. On an error, a bad item (without --skip-invalid) or an interrupt,
    every temporary is removed and nothing is published."""
    from tqdm import tqdm

    from atomic_files import remove_stale_temps

    results: list[ShardResult] = []
    folders = {str(Path(t.path).parent) for t in tasks}
    try:
        if pool is None:
            it = map(write_shard, tasks)
        else:
            futures = [pool.submit(write_shard, t) for t in tasks]
            it = (f.result() for f in futures)
        for res in tqdm(it, total=len(tasks), desc=desc, unit="shard", disable=not progress):
            results.append(res)
            if res.error:
                raise PrepError(res.error)
    except BaseException:
        if pool is not None:
            _stop_pool(pool)
        for res in results:
            _unlink(res.tmp)
        for folder in folders:  # temporaries of the killed writers
            remove_stale_temps(folder)
        raise
    return results


def publish(results: Sequence[ShardResult]) -> None:
    """Rename every written shard into place (after all were written)."""
    from atomic_files import _fsync_dir

    for res in results:
        os.replace(res.tmp, res.path)
    for folder in {str(Path(r.path).parent) for r in results}:
        _fsync_dir(Path(folder))


def discard(results: Sequence[ShardResult]) -> None:
    for res in results:
        _unlink(res.tmp)


# ---------------------------------------------------------------- parts (--shard K/N)

def part_path(tf_dir: Path, k: int, n: int) -> Path:
    return Path(tf_dir) / PARTS_DIR / f"part-{k:05d}-of-{n:05d}.npz"


def save_part(tf_dir: Path, k: int, n: int, results: Sequence[ShardResult]) -> Path:
    """What task k of n wrote (rows, names, extras per shard), for the task that finishes."""
    from atomic_files import atomic_path

    arrays = {}
    for r in results:
        key = f"{r.split}/{r.index}"
        arrays[f"{key}/rows"] = np.asarray(r.rows, np.int64)
        arrays[f"{key}/names"] = np.asarray([s.encode() for s in r.names], "S")
        for name, values in r.extras.items():
            arrays[f"{key}/extra/{name}"] = np.asarray(values)
        arrays[f"{key}/skipped"] = np.asarray([f"{a}\t{b}".encode() for a, b in r.skipped], "S")
    path = part_path(tf_dir, k, n)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return path


def load_parts(tf_dir: Path, n: int, planned: dict[str, list[ShardTask]]) -> list[ShardResult] | None:
    """Every shard's result from the parts of all n tasks, or None while one is missing."""
    paths = [part_path(tf_dir, k, n) for k in range(n)]
    if not all(p.is_file() for p in paths):
        return None
    found: dict[str, ShardResult] = {}
    for p in paths:
        with np.load(p, allow_pickle=False) as z:
            for key in z.files:
                split, index, what = key.split("/", 2)
                r = found.setdefault(f"{split}/{index}", ShardResult(
                    split, int(index), planned[split][int(index)].path))
                if what == "rows":
                    r.rows = z[key].tolist()
                elif what == "names":
                    r.names = [b.decode() for b in z[key]]
                elif what == "skipped":
                    r.skipped = [tuple(b.decode().split("\t", 1)) for b in z[key]]
                else:
                    r.extras[what.split("/", 1)[1]] = list(z[key])
    missing = [t.path for ts in planned.values() for t in ts if f"{t.split}/{t.index}" not in found]
    if missing:
        raise PrepError(f"{paths[0].parent}: the parts name no result for {missing[0]} (and "
                        f"{len(missing) - 1} more); were all tasks run with the same options?")
    return [found[f"{t.split}/{t.index}"] for ts in planned.values() for t in ts]


def run(tf_dir: Path, split_items: dict, *, encode: Callable, seed: int, per_shard: int,
        workers: int, select: tuple[int, int] | None, skip_invalid: bool,
        progress: bool) -> list[ShardResult] | None:
    """Plan, write and publish the shards of every split (this task's only, with ``select``);
    returns every shard's result, or None when other tasks' parts are still missing."""
    from archives.common import worker_pool

    planned = plan_tasks(Path(tf_dir), split_items, seed=seed, per_shard=per_shard,
                         encode=encode, skip_invalid=skip_invalid)
    tasks = [t for ts in planned.values() for t in ts
             if select is None or t.index % select[1] == select[0]]
    pool = worker_pool(min(workers, len(tasks))) if tasks else None
    try:
        results = write_shards(tasks, pool, progress=progress)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    if select is None:
        for split in planned:
            if not any(r.names for r in results if r.split == split):
                discard(results)
                raise PrepError(f"{split}: split is empty after skipping invalid items")
    publish(results)
    if select is None:
        return results
    save_part(Path(tf_dir), select[0], select[1], results)
    return load_parts(Path(tf_dir), select[1], planned)


def split_summary(results: Sequence[ShardResult]) -> dict[str, dict]:
    """records_meta.json's "splits": per split its shards (file names), their record counts
    and the digest of the names in global-index order."""
    from archives.overlay import names_digest

    out: dict[str, dict] = {}
    for r in sorted(results, key=lambda r: (SPLIT_CODES.get(r.split, 9), r.index)):
        e = out.setdefault(r.split, {"shards": [], "records": [], "names": []})
        e["shards"].append(Path(r.path).name)
        e["records"].append(len(r.names))
        e["names"] += r.names
    for split, e in out.items():
        if sum(e["records"]) == 0:
            raise PrepError(f"{split}: split is empty after skipping invalid items")
        e["digest"] = names_digest(e.pop("names"))
    return out


def global_rows(results: Sequence[ShardResult], split: str) -> np.ndarray:
    """Name-order rows of the split's written records, in global-index order."""
    rs = sorted((r for r in results if r.split == split), key=lambda r: r.index)
    return np.asarray([row for r in rs for row in r.rows], np.int64)


def global_extra(results: Sequence[ShardResult], split: str, key: str) -> np.ndarray:
    rs = sorted((r for r in results if r.split == split), key=lambda r: r.index)
    return np.asarray([v for r in rs for v in r.extras.get(key, [])])


def global_names(results: Sequence[ShardResult], split: str) -> list[str]:
    rs = sorted((r for r in results if r.split == split), key=lambda r: r.index)
    return [n for r in rs for n in r.names]


# ---------------------------------------------------------------- finishing a prep

def finish(tf_dir: Path, info, report, results: Sequence[ShardResult], levels, seed: int,
           overlay_arrays: Callable[[int, np.ndarray], dict]) -> tuple[dict, dict]:
    """Write the train overlays and fill ``report`` (records, skipped); returns (splits,
    overlays) for records_meta.json. ``overlay_arrays(level, rows)``: the overlay's arrays
    ({"noisy_label", ...; "map_lut"}) for the name-order ``rows`` in global-index order."""
    import warnings

    from archives.overlay import write_overlay
    from archives.record_files import overlay_name

    tf_dir = Path(tf_dir)
    splits = split_summary(results)
    names, rows = global_names(results, "train"), global_rows(results, "train")
    overlays = {}
    for n in levels:
        arrays = dict(overlay_arrays(n, rows))
        lut = arrays.pop("map_lut", None)
        write_overlay(tf_dir / overlay_name(n), names=names, labels=arrays, map_lut=lut, level=n,
                      seed=seed, archive=info.name)
        overlays[n] = overlay_name(n)
    report.records = {s: int(sum(e["records"])) for s, e in splits.items()}
    report.records.update({str(n): len(rows) for n in levels})
    for r in sorted(results, key=lambda r: (SPLIT_CODES.get(r.split, 9), r.index)):
        for item, reason in r.skipped:
            warnings.warn(f"skipped: {reason}", stacklevel=2)
            report.skipped.append({"item": str(item), "reason": str(reason)})
    for path in stale_outputs(tf_dir, splits):
        warnings.warn(f"removed {path}, left by an earlier prep (replaced by the shards listed "
                      "in records_meta.json)", stacklevel=2)
        path.unlink()
    report.extra.update(record_layout="shards", shards={s: len(e["shards"]) for s, e in splits.items()})
    return splits, overlays


def stale_outputs(tf_dir: Path, splits: dict) -> list[Path]:
    """Record files of an earlier prep that the new shards replace: other shards of a split,
    and ``<split>.tfrecord`` when the split now has several shards."""
    out = []
    for split, e in splits.items():
        keep = set(e["shards"])
        for p in sorted(Path(tf_dir).glob(f"{split}-*-of-*.tfrecord")) + \
                [Path(tf_dir) / f"{split}.tfrecord"]:
            if p.is_file() and p.name not in keep and ".tmp-" not in p.name:
                out.append(p)
    return out


def check_layout(layout: str | None, schema: str, shard: str | None = None) -> str:
    """The layout a prep writes: "shards" by default, "files" for the published schema (its
    only layout); PrepError for a combination that cannot be written."""
    layout = layout or ("files" if schema == "published" else "shards")
    if layout not in LAYOUTS:
        raise PrepError(f"--layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout == "shards" and schema == "published":
        raise PrepError("--layout shards: the published schema is written as one file per "
                        "split with full noise copies (--layout files); use --schema compact")
    if shard is not None and layout != "shards":
        raise PrepError(f"--shard {shard}: only the shards layout is written in parts")
    return layout


def task_report(report, shard: str, start: float):
    """The report of an array task whose part is written while others are still missing."""
    import time

    report.extra.update(record_layout="shards", shard_task=shard, finished=False)
    report.time_s = round(time.time() - start, 3)
    return report
