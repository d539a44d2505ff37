"""BigEarthNet-S2 (BEN): raw layout reader, 43 -> 19 nomenclature, TFRecord schemas, label noise.

Raw layout: ``<root>/<patch>/<patch>_<band>.tif`` (one single-band GeoTIFF per band of
BAND_NAMES, at BAND_SIZES) and ``<patch>/<patch>_labels_metadata.json`` whose ``labels`` key
lists CORINE level-3 names of the 43-class nomenclature. They are converted to the 19-class
nomenclature (CLASS_NAMES, the published GRID order) with ``bigearthnet-common``'s mapping.

TFRecord schema, one ``tf.train.Example`` per patch, in one of two forms:

* published: ``B01`` .. ``B12`` (incl. ``B8A``) float list, raw reflectance flattened row-major at
  the band's own size (20x20, 120x120 or 60x60);
* compact: ``B01_uint16`` .. ``B12_uint16`` bytes, the same pixels as little-endian uint16,
  row-major, at the band's own size (every BEN band is integral and fits uint16; writing the
  compact form fails, naming the file, if one does not). About 2x fewer bytes per example.

Both forms share ``BEN-19_labels`` (bytes list of 19-class names, class-id order),
``BEN-19_multi_hot`` (float list 19, always the clean label), ``noisy_BEN-19_multi_hot``
(float list 19; equal to the clean one outside ``train_noise_prcnt<N>``) and ``patch_name``
(bytes). ``parse_records`` tells the forms apart per file.

TensorFlow is imported inside the functions that need it: the GeoTIFF reader processes import
this module and should start fast.
"""
from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from bigearthnet_common import constants as ben_constants

from archives import registry
from archives.prep_cli import locks_output
from archives.report import PrepError

INFO = registry.BEN  # the archive's facts live in its light description
NAME = INFO.name
CLASS_NAMES: list[str] = list(INFO.class_names)
NB_CLASS = INFO.nb_class
OLD_CLASS_NAMES: list[str] = list(ben_constants.OLD_LABELS_ORIGINAL_ORDER)
NOISE_LEVELS = INFO.noise_levels
SHUFFLE_BUFFER = INFO.shuffle_buffer
HAS_PIXEL_MAPS = INFO.has_pixel_maps
TRAIN_CROP = INFO.train_crop

BAND_NAMES = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
BAND_SIZES = {"B01": 20, "B02": 120, "B03": 120, "B04": 120, "B05": 60, "B06": 60, "B07": 60,
              "B08": 120, "B8A": 60, "B09": 20, "B11": 60, "B12": 60}
BAND_STATS = registry.BEN_BAND_STATS  # per-band mean / std of raw reflectance (the published values)
MODEL_BANDS = INFO.channel_names
HIGH_RES_BANDS = MODEL_BANDS[:4]  # 10 m bands, then the 20 m ones resized to 120 x 120
LOW_RES_BANDS = MODEL_BANDS[4:]
IMAGE_SHAPE = INFO.image_shape
MODEL_INPUT_SHAPE = INFO.model_input_shape
MODEL_MEAN = np.array(INFO.model_mean, np.float32)
MODEL_STD = np.array(INFO.model_std, np.float32)

LABELS_KEY = "BEN-19_labels"
LABEL_KEY = "BEN-19_multi_hot"
NOISY_LABEL_KEY = "noisy_BEN-19_multi_hot"
NAME_KEY = "patch_name"
COMPACT_SUFFIX = "_uint16"
SCHEMAS = ("compact", "published")


class InvalidPatch(PrepError):
    """A raw patch that cannot be used; the message names the file and what is wrong."""


# ---------------------------------------------------------------- nomenclature

def labels_43_to_19(names: Sequence[str], source: str = "") -> list[str]:
    """19-class names (class-id order, no repeats) of a list of 43-class CORINE names.

    Names that the 19-class nomenclature dropped (e.g. "Airports") vanish; an unknown name
    raises InvalidPatch naming ``source``.
    """
    new = set()
    for name in names:
        if name not in ben_constants.OLD2NEW_LABELS_DICT:
            raise InvalidPatch(f"{source}: label {name!r} is not in the 43-class BigEarthNet "
                               "nomenclature")
        mapped = ben_constants.OLD2NEW_LABELS_DICT[name]
        if mapped is not None:
            new.add(mapped)
    return [c for c in CLASS_NAMES if c in new]


def multi_hot(names19: Iterable[str]) -> np.ndarray:
    """float32 (19,) multi-hot vector of 19-class names."""
    out = np.zeros(NB_CLASS, np.float32)
    for name in names19:
        out[CLASS_NAMES.index(name)] = 1.0
    return out


# ---------------------------------------------------------------- raw layout

def band_path(root: str | os.PathLike, patch: str, band: str) -> Path:
    return Path(root) / patch / f"{patch}_{band}.tif"


def metadata_path(root: str | os.PathLike, patch: str) -> Path:
    return Path(root) / patch / f"{patch}_labels_metadata.json"


def read_labels19(root: str | os.PathLike, patch: str) -> list[str]:
    """The 19-class names (class-id order) of the 43-class names in a patch's metadata JSON;
    InvalidPatch naming the JSON when it is missing, unreadable or names an unknown class."""
    path = metadata_path(root, patch)
    if not path.is_file():
        raise InvalidPatch(f"{path}: metadata JSON is missing")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InvalidPatch(f"{path}: metadata JSON cannot be read ({err})") from None
    labels = meta.get("labels") if isinstance(meta, dict) else None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise InvalidPatch(f"{path}: metadata JSON has no list of names under 'labels'")
    if not labels:
        raise InvalidPatch(f"{path}: metadata JSON lists no label ('labels' is empty); every "
                           "BigEarthNet patch has at least one")
    return labels_43_to_19(labels, str(path))


def read_single_band(path: Path, what: str) -> np.ndarray:
    """The one band of the GeoTIFF at ``path``; InvalidPatch naming it (as ``what``) when it is
    missing, unreadable or has several bands."""
    import rasterio

    if not path.is_file():
        raise InvalidPatch(f"{path}: {what} is missing")
    try:
        with rasterio.open(path) as src:
            if src.count != 1:
                raise InvalidPatch(f"{path}: {what} has {src.count} bands, expected 1")
            return src.read(1)
    except InvalidPatch:
        raise
    except Exception as err:  # rasterio raises several unrelated types for broken files
        raise InvalidPatch(f"{path}: {what} cannot be read ({err})") from None


def read_band(root: str | os.PathLike, patch: str, band: str) -> np.ndarray:
    """One band as a 2-D array of its native dtype, checked against BAND_SIZES."""
    path = band_path(root, patch, band)
    arr = read_single_band(path, f"band file {band}")
    size = BAND_SIZES[band]
    if arr.shape != (size, size):
        raise InvalidPatch(f"{path}: band {band} is {arr.shape[0]}x{arr.shape[1]}, "
                           f"expected {size}x{size}")
    return arr


def to_uint16(arr: np.ndarray, source: str) -> np.ndarray:
    """``arr`` as uint16, or InvalidPatch naming ``source`` if a value is not an integer in range."""
    if arr.dtype == np.uint16:
        return arr
    if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
        raise InvalidPatch(f"{source}: non-integral values cannot be stored in the compact "
                           "schema (use --schema published)")
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise InvalidPatch(f"{source}: values {arr.min()}..{arr.max()} do not fit uint16 "
                           "(use --schema published)")
    return arr.astype(np.uint16)


def read_patch_bands(root: str | os.PathLike, patch: str, schema: str) -> dict:
    """All bands of a patch, ready for ``encode_example``: uint16 little-endian bytes
    (compact) or float32 arrays (published)."""
    import rasterio

    out = {}
    with rasterio.Env():  # one GDAL environment for the 12 opens instead of one each
        arrays = {band: read_band(root, patch, band) for band in BAND_NAMES}
    for band, arr in arrays.items():
        if schema == "compact":
            out[band] = to_uint16(arr, str(band_path(root, patch, band))).astype("<u2").tobytes()
        else:
            out[band] = arr.astype(np.float32)
    return out


def read_patch_worker(args: tuple) -> tuple[str, dict | None, str | None]:
    """Process-pool entry: (root, patch, schema) -> (patch, bands or None, error or None)."""
    root, patch, schema = args
    try:
        return patch, read_patch_bands(root, patch, schema), None
    except InvalidPatch as err:
        return patch, None, str(err)


# ---------------------------------------------------------------- splits

def name_problem(name: str) -> str | None:
    """Why ``name`` (a patch name from a split CSV or a metadata parquet) cannot be used as one
    folder name under the archive root, or None: it must be non-empty and hold no path
    separator (``/`` or ``\\``), no ``..`` and no NUL, so that the folder it names stays under
    the root. (Symbolic links inside the root are followed: a root assembled from links works.)"""
    if not name or name == ".":
        return "empty or '.'"
    if "/" in name or "\\" in name:
        return "holds a path separator"
    if "\0" in name:
        return "holds a NUL character"
    if ".." in name:
        return "holds '..'"
    return None



def read_split_csv(path: str | os.PathLike) -> list[str]:
    """Patch names of a split file (first field of each non-empty line, file order kept).

    UTF-8, with or without a byte-order mark; ValueError naming the file (and line) for
    another encoding, a folder, or a patch listed twice."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = [(i, row[0].strip()) for i, row in enumerate(csv.reader(fh), 1)
                    if row and row[0].strip()]
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: split file is not UTF-8 text (byte {err.object[err.start]:#04x} "
                         f"at offset {err.start})") from None
    except OSError as err:
        raise ValueError(f"{path}: split file cannot be read ({err.strerror or err})") from None
    first: dict[str, int] = {}
    for line, name in rows:
        if name in first:
            raise ValueError(f"{path}: patch {name} is listed twice (lines {first[name]} and "
                             f"{line})")
        first[name] = line
    return [name for _, name in rows]


def official_splits(root: str | os.PathLike) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Official S2 train/val/test lists (snow and cloud/shadow patches left out), restricted to
    patches present under ``root``, sorted by name. Returns (splits, absent count per split)."""
    from bigearthnet_common import base

    excluded = base.get_s2_patches_with_seasonal_snow() | base.get_s2_patches_with_cloud_and_shadow()
    listed = {"train": base.get_s2_patches_from_original_train_split(),
              "val": base.get_s2_patches_from_original_validation_split(),
              "test": base.get_s2_patches_from_original_test_split()}
    root = Path(root)
    present = {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()
    splits, absent = {}, {}
    for split, names in listed.items():
        names = names - excluded
        splits[split] = sorted(names & present)
        absent[split] = len(names) - len(splits[split])
    return splits, absent


# ---------------------------------------------------------------- label noise

def inject_noise(clean: np.ndarray, percent: int, rng: np.random.Generator) -> np.ndarray:
    """Noisy copy of clean multi-hot labels (N, C) float32: BigEarthNet's rule (docs/data.md).

    ``archives.noise.pick_count`` (percent % of the positive (patch, class) pairs, rounded
    down as published) pairs are picked uniformly without replacement; each picked class is set to 0 and one
    other class, drawn uniformly among the classes not being removed from that patch, is set
    to 1. Excluding the patch's other removed classes keeps every picked pair changed, so the
    realised share of changed pairs is exactly pick_count / pairs; a draw may land on a class
    the patch keeps (a collision: the patch then has one positive fewer).
    """
    from archives.noise import positive_pairs, sample_pairs

    clean = np.asarray(clean, np.float32)
    pairs = positive_pairs(clean)  # patch order, then class id
    picked = pairs[sample_pairs(len(pairs), percent, rng)]
    noisy = clean.copy()
    noisy[picked[:, 0], picked[:, 1]] = 0.0
    removed: dict[int, set[int]] = {}
    for i, c in picked:
        removed.setdefault(int(i), set()).add(int(c))
    for i, c in picked:
        candidates = [k for k in range(clean.shape[1]) if k not in removed[int(i)]]
        if candidates:
            noisy[i, candidates[int(rng.integers(len(candidates)))]] = 1.0
    return noisy


def noise_counts(clean: np.ndarray, noisy: np.ndarray) -> dict:
    """Realised noise as ``PrepReport.noise_entry`` arguments. A picked pair is exactly a clean
    positive turned 0 (see inject_noise), so pairs_picked == pairs_changed."""
    clean, noisy = np.asarray(clean) > 0, np.asarray(noisy) > 0
    changed = int((clean & ~noisy).sum())
    return {"pairs_total": int(clean.sum()), "pairs_picked": changed, "pairs_changed": changed,
            "images_total": len(clean), "images_changed": int((clean != noisy).any(axis=1).sum())}


# ---------------------------------------------------------------- TFRecord schema

def encode_examples(patch: str, bands: dict, labels19: Sequence[str], clean: np.ndarray,
                    noisy_list: Sequence[np.ndarray], schema: str) -> list[bytes]:
    """Serialized tf.train.Examples of one patch, one per noisy label of ``noisy_list``
    (the pixels are encoded once); ``bands`` as from ``read_patch_bands``."""
    import tensorflow as tf

    from archives.common import bytes_feature, float_feature

    feats = {}
    for band in BAND_NAMES:
        if schema == "compact":
            feats[band + COMPACT_SUFFIX] = bytes_feature(bands[band])
        else:
            feats[band] = float_feature(bands[band])
    feats[LABELS_KEY] = bytes_feature(list(labels19))
    feats[LABEL_KEY] = float_feature(clean)
    feats[NAME_KEY] = bytes_feature(patch)
    example = tf.train.Example(features=tf.train.Features(feature=feats))
    out = []
    for noisy in noisy_list:
        example.features.feature[NOISY_LABEL_KEY].CopyFrom(float_feature(noisy))
        out.append(example.SerializeToString(deterministic=True))  # same bytes in any process
    return out


def encode_example(patch: str, bands: dict, labels19: Sequence[str], clean: np.ndarray,
                   noisy: np.ndarray, schema: str) -> bytes:
    """Serialized tf.train.Example of one patch; ``bands`` as from ``read_patch_bands``."""
    return encode_examples(patch, bands, labels19, clean, [noisy], schema)[0]


def schema_of(path: str | os.PathLike, keys: set[str] | None = None) -> str:
    """"compact" or "published" from a file's first record (or its ``keys`` when already read);
    ValueError naming file and keys."""
    from archives.common import example_keys

    keys = example_keys(path) if keys is None else keys
    if {LABEL_KEY, NAME_KEY} <= keys:
        if set(BAND_NAMES) <= keys:
            return "published"
        if {b + COMPACT_SUFFIX for b in BAND_NAMES} <= keys:
            return "compact"
    raise ValueError(f"{path}: not a BEN TFRecord file, unexpected keys {sorted(keys)}")


def _parser(schema: str, has_noisy: bool, compact_dtypes: bool):
    import tensorflow as tf

    spec = {LABEL_KEY: tf.io.FixedLenFeature([NB_CLASS], tf.float32),
            NAME_KEY: tf.io.FixedLenFeature([], tf.string)}
    if has_noisy:
        spec[NOISY_LABEL_KEY] = tf.io.FixedLenFeature([NB_CLASS], tf.float32)
    for band in MODEL_BANDS:
        size = BAND_SIZES[band]
        if schema == "compact":
            spec[band + COMPACT_SUFFIX] = tf.io.FixedLenFeature([], tf.string)
        else:
            spec[band] = tf.io.FixedLenFeature([size * size], tf.float32)

    def band(ex, name):
        size = BAND_SIZES[name]
        if schema == "compact":
            flat = tf.io.decode_raw(ex[name + COMPACT_SUFFIX], tf.uint16, little_endian=True)
            flat = tf.cast(flat, tf.float32)
        else:
            flat = ex[name]
        return tf.reshape(flat, (size, size))

    def parse(raw):
        ex = tf.io.parse_single_example(raw, spec)
        high = tf.stack([band(ex, b) for b in HIGH_RES_BANDS], axis=-1)
        low = tf.stack([band(ex, b) for b in LOW_RES_BANDS], axis=-1)
        low = tf.image.resize(low, IMAGE_SHAPE[:2], method="bicubic")
        image = tf.ensure_shape(tf.concat([high, low], axis=-1), IMAGE_SHAPE)
        if compact_dtypes:
            image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 65535.0), tf.uint16)
        label = ex[LABEL_KEY]
        return {"image": image,
                "label": label,
                "noisy_label": ex[NOISY_LABEL_KEY] if has_noisy else label,
                "patch_name": ex[NAME_KEY]}

    return parse


def parse_records(paths: str | os.PathLike | Sequence[str | os.PathLike], *,
                  compact_dtypes: bool = False):
    """tf.data.Dataset of unbatched dicts: ``image`` float32 (120,120,10) raw reflectance in
    MODEL_BANDS order (20 m bands bicubic 60->120), ``label`` and ``noisy_label`` float32 (19,),
    ``patch_name`` tf.string. Files keep their order; each may be in either schema form.

    ``compact_dtypes=True`` (the input pipeline's option, to halve its shuffle buffer) yields
    ``image`` as uint16: the bicubic values rounded and clipped to 0..65535.
    """
    from archives.common import records_dataset

    return records_dataset(paths, record_parser(compact_dtypes=compact_dtypes))


def record_parser(*, compact_dtypes: bool = False):
    """How ``parse_records`` parses a file (common.RecordParser; the input pipeline uses it to
    parse after shuffling the serialized records)."""
    from archives.common import RecordParser

    return RecordParser(form_of=record_form, parser=lambda form: _parser(*form, compact_dtypes))


def record_form(path) -> tuple:
    """(schema, whether the records carry noisy labels) of a file, from its first record."""
    from archives.common import example_keys

    keys = example_keys(path)
    return schema_of(path, keys), NOISY_LABEL_KEY in keys


# ---------------------------------------------------------------- raw archive -> TFRecords

SPLITS = ("train", "val", "test")
REPORT_NAME = "prep_report.json"


def read_labels_worker(args: tuple) -> tuple[str, list | None, str | None]:
    """Process-pool entry: (root, patch) -> (patch, 19-class names or None, error or None)."""
    root, patch = args
    try:
        return patch, read_labels19(root, patch), None
    except InvalidPatch as err:
        return patch, None, str(err)


def resolve_splits(root: Path, csvs: dict, skip_invalid: bool, skipped: list) -> tuple[dict, dict]:
    """Patch names per split: from the CSVs when given (a listed patch absent under ``root`` is
    an error, or skipped), else the official lists restricted to ``root``. Returns
    (splits, absent count per split)."""
    from archives.common import skip_or_raise

    if not root.is_dir():
        raise ValueError(f"{root}: BigEarthNet root folder does not exist")
    given = {s: p for s, p in csvs.items() if p}
    if not given:
        return official_splits(root)
    if set(given) != set(SPLITS):
        missing = [s for s in SPLITS if s not in given]
        raise ValueError(f"give all three split files (-train, -val, -test) or none; "
                         f"missing: {', '.join(missing)}")
    splits, absent = {}, {}
    for split in SPLITS:
        names = read_split_csv(given[split])
        kept = []
        for name in names:
            problem = name_problem(name)
            if problem is None and (root / name).is_dir():
                kept.append(name)
                continue
            msg = (f"{given[split]}: patch {name!r} is not a folder name ({problem}); names "
                   "must not leave the root" if problem else
                   f"{given[split]}: patch {name} is not under {root}")
            skip_or_raise(InvalidPatch(msg), skip_invalid, skipped, root / name, msg)
        splits[split], absent[split] = kept, len(names) - len(kept)
    seen: dict[str, str] = {}
    for split in SPLITS:
        for name in splits[split]:
            if name in seen:
                raise ValueError(f"{given[split]}: patch {name} is also listed in "
                                 f"{given[seen[name]]}; splits must not overlap")
            seen[name] = split
    return splits, absent


RECORD_BYTES = 164_600  # a compact record (shard sizes are planned with it)


def encode_shard_item(item: tuple) -> tuple[str, bytes, None]:
    """Shard-writer entry (archives.shards): (root, patch, schema, 19-class names, clean
    multi-hot) -> (patch, clean record, no extras); InvalidPatch for a bad patch."""
    root, patch, schema, labels19, clean = item
    bands = read_patch_bands(root, patch, schema)
    return patch, encode_examples(patch, bands, labels19, clean, [clean], schema)[0], None


@locks_output
def prepare(root, out, csvs: dict | None = None, noise_levels: Sequence[int] = NOISE_LEVELS,
            seed: int = 42, schema: str = "compact", workers: int = 1,
            skip_invalid: bool = False, progress: bool = True, layout: str | None = None,
            shard_size: str | None = None, shard: str | None = None):
    """Raw BEN archive -> records under ``<out>/TFRecord/``; returns the
    ``archives.report.PrepReport`` (also saved as REPORT_NAME there).

    ``layout`` "shards" (default for the compact schema; docs/full-scale.md): each split as
    shards of ``shard_size`` in a seeded random order, one ``train_noise_prcnt<N>.overlay.npz``
    per level; ``shard`` "K/N" writes task K's part of them (a SLURM array). "files" (the only
    layout of the published schema): ``{train,val,test}.tfrecord`` in name order and a full
    ``train_noise_prcnt<N>.tfrecord`` per level.

    csvs: {"train"|"val"|"test": path or None}. Invalid items stop the run with InvalidPatch
    (ValueError) naming the file, or with ``skip_invalid`` are warned about, skipped and listed.
    """
    import time

    from tqdm import tqdm

    from archives.common import (check_writable, ordered_map, skip_or_raise, worker_pool,
                                 write_split_files)
    from archives.noise import check_levels
    from archives.records_meta import write_meta
    from archives.report import PrepReport

    from archives import shards

    start = time.time()
    if schema not in SCHEMAS:
        raise ValueError(f"schema must be one of {SCHEMAS}, not {schema!r}")
    layout = shards.check_layout(layout, schema, shard)
    levels = check_levels(noise_levels)
    root, tf_dir = Path(root), Path(out) / "TFRecord"
    check_writable(tf_dir)
    skipped: list[dict] = []
    csvs = csvs or {}
    splits, absent = resolve_splits(root, csvs, skip_invalid, skipped)

    def reject(patch, msg):
        skip_or_raise(InvalidPatch(msg), skip_invalid, skipped, root / patch, msg)

    def source(split):
        return csvs.get(split) or f"official {split} list restricted to {root}"

    pool = worker_pool(workers)
    window = max(64, 64 * workers)
    try:
        labels, no_target = {}, 0  # patch -> 19-class names
        for split in SPLITS:
            names = []
            items = [(str(root), p) for p in splits[split]]
            for patch, names19, err in tqdm(ordered_map(pool, read_labels_worker, items, window),
                                            total=len(items), desc=f"{split} labels",
                                            disable=not progress):
                if err:
                    reject(patch, err)
                else:
                    names.append(patch)
                    labels[patch] = names19
                    no_target += not names19
            if not names:
                raise ValueError(f"{source(split)}: {split} split is empty")
            splits[split] = names

        clean_train = np.stack([multi_hot(labels[p]) for p in splits["train"]])
        noisy = {n: inject_noise(clean_train, n, np.random.default_rng([seed, n])) for n in levels}
        if layout == "shards":  # the shard writers are processes of their own
            if pool:
                pool.shutdown()
            pool = None
            return _prepare_shards(root, tf_dir, splits, labels, clean_train, noisy, levels,
                                   seed=seed, schema=schema, workers=workers,
                                   skip_invalid=skip_invalid, progress=progress,
                                   shard_size=shard_size, shard=shard, start=start,
                                   skipped=skipped, absent=absent, no_target=no_target,
                                   csvs=csvs)

        def encode(split, row, result):
            patch, bands, err = result
            if err:
                reject(patch, err)
                return None
            clean = clean_train[row] if split == "train" else multi_hot(labels[patch])
            noisy_hots = [clean] + ([noisy[n][row] for n in levels] if split == "train" else [])
            return encode_examples(patch, bands, labels[patch], clean, noisy_hots, schema)

        records, written_rows = write_split_files(
            tf_dir, SPLITS, levels, items=lambda split: [(str(root), p, schema)
                                                         for p in splits[split]],
            worker=read_patch_worker, encode=encode, pool=pool, window=window,
            progress=progress, source=source)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)

    rows = np.array(written_rows, int)
    report = PrepReport(dataset=NAME, out_dir=str(tf_dir), schema=schema, seed=seed,
                        noise_levels=levels, records=records, skipped=skipped)
    _finish_report(report, root, csvs, absent, no_target, clean_train[rows],
                   {n: noisy[n][rows] for n in levels}, start)
    write_meta(tf_dir, INFO, report)
    return report


def _finish_report(report, root, csvs, absent, no_target, clean, noisy: dict, start) -> None:
    """The realised noise, split source and counts; saves the report."""
    import time

    from archives.report import PrepReport

    if no_target:
        warnings.warn(f"{no_target} patch(es) have no label in the 19-class nomenclature (all "
                      "their CORINE classes were dropped): their multi-hot is all zero; "
                      "see patches_without_19_class_label in the report", stacklevel=3)
    report.noise = {n: PrepReport.noise_entry(**noise_counts(clean, noisy[n])) for n in noisy}
    report.extra.update(
        root=str(root),
        split_source="csv" if any(csvs.values()) else "bigearthnet-common official lists "
                                                      "(snow, cloud/shadow left out)",
        listed_but_absent=absent,
        patches_without_19_class_label=no_target)
    report.time_s = round(time.time() - start, 3)
    report.save(Path(report.out_dir) / REPORT_NAME)


def _prepare_shards(root, tf_dir, splits, labels, clean_train, noisy, levels, *, seed, schema,
                    workers, skip_invalid, progress, shard_size, shard, start, skipped, absent,
                    no_target, csvs):
    """The shards layout of ``prepare``: clean shards in record order, noise as overlays."""
    from archives import shards
    from archives.records_meta import write_meta
    from archives.report import PrepReport

    items = {split: [(str(root), p, schema, labels[p],
                      clean_train[i] if split == "train" else multi_hot(labels[p]))
                     for i, p in enumerate(splits[split])] for split in SPLITS}
    results = shards.run(tf_dir, items, encode=encode_shard_item, seed=seed,
                         per_shard=shards.records_per_shard(shard_size or
                                                            shards.DEFAULT_SHARD_SIZE,
                                                            RECORD_BYTES),
                         workers=workers, select=shards.parse_select(shard),
                         skip_invalid=skip_invalid, progress=progress)
    report = PrepReport(dataset=NAME, out_dir=str(tf_dir), schema=schema, seed=seed,
                        noise_levels=levels, skipped=list(skipped))
    if results is None:
        return shards.task_report(report, shard, start)
    split_meta, overlays = shards.finish(
        tf_dir, INFO, report, results, levels, seed,
        lambda n, rows: {"noisy_label": noisy[n][rows]})
    rows = shards.global_rows(results, "train")
    _finish_report(report, root, csvs, absent, no_target, clean_train[rows],
                   {n: noisy[n][rows] for n in levels}, start)
    write_meta(tf_dir, INFO, report, splits=split_meta, overlays=overlays)
    return report
