"""BigEarthNet v2.0 (reBEN): TFRecord schema, record reader per band set, and prep of a v2 download.

The raw layout and its readers are in ``archives.benv2_layout``; the pixel-map noise rule in
``archives.benv2_noise``. ``prep_BEN_noisy.py`` sends a v2 root here (``prepare``).

TFRecord schema (compact form only; one ``tf.train.Example`` per patch):

* ``B01_uint16`` .. ``B12_uint16`` bytes: the 12 S2 bands as little-endian uint16 at their own
  size, exactly as v1's compact BEN schema (``archives.ben``);
* ``VV_<form>``, ``VH_<form>`` bytes: S1 backscatter (120x120 row-major) in one of S1_STORAGES:
  ``int16`` (default) little-endian round(dB * 256), ``float16`` or ``float32`` little-endian dB;
* ``seg_map_int8``, ``noisy_seg_map_int8`` bytes: 120x120 int8 19-class ids, -1 unlabelled;
* ``label`` float list 19: clean multi-hot from metadata.parquet (nomenclature order);
* ``noisy_label`` float list 19: the BigEarthNet pair rule (``archives.ben.inject_noise``), for BCE;
* ``map_noisy_label`` float list 19: the DLRSD map rule (``archives.benv2_noise``): the classes of
  ``noisy_seg_map`` where the noise changed the map, else the clean label; for PCE/RRL;
* ``patch_name`` bytes: the v2 S2 patch name.

One set of ``train_noise_prcnt<N>`` files carries both rules under distinct keys, each drawn
independently over the train split with the published count (rounded down): the pair rule with
``default_rng([seed, N])`` (the same stream as a v1 prep), the map rule with
``default_rng([seed, N, 2])``. ``parse_records(..., noise_rule=)`` picks the one that becomes
``noisy_label``. In train/val/test every noisy key equals its clean one.

S1 storage, measured by ``benchmarks/bench_prep_benv2.py`` (200-patch sample; errors also over a
-50 .. +20 dB grid). Serialized bytes of an example holding only a band set's pixels (maps,
labels, name included; prep writes the full s1s2 record):

    S1 form   max abs error   s1 only   s1s2 (= a full record)   S1 part
    float32   0 dB            144,477   304,781                  115,200
    float16   0.0156 dB        86,877   247,181                   57,600
    int16     0.00195 dB       86,873   247,177                   57,600

(s2 only: 189,525.) int16 (round(dB * 256), range -128 .. +127.99 dB; a value outside, or not
finite, is an InvalidPatch naming the S1 folder: use ``--s1-storage float32``) is the default: half
the S1 bytes and 19 % fewer bytes per record, with an error 8x below float16's and about 2600x below
the S1 std (5.13 dB), far below the speckle. Retrieval check of the benchmark (small CNN trained on
the S1 images, 80 val+test queries against 120 train patches, top 30): NDCG@30 identical for all
three forms; against float32, int16 reorders 1 of 80 top-30 lists and float16 2, each a swap of
two items whose float32 distances differ by at most 0.001 % (int16) / 0.01 % (float16); float32
itself changes none when only the inference batch size differs.
"""
from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from archives import ben, benv2_noise, registry
from archives import benv2_layout as v2
from archives.ben import InvalidPatch
from archives.prep_cli import locks_output

NAME = "BENv2"
CLASS_NAMES = ben.CLASS_NAMES
NB_CLASS = ben.NB_CLASS
NOISE_LEVELS = ben.NOISE_LEVELS
SPLITS = ben.SPLITS
REPORT_NAME = ben.REPORT_NAME
PATCH_SIZE = v2.PATCH_SIZE

BAND_SETS = ("s2", "s1", "s1s2")
S2_BANDS = ben.MODEL_BANDS          # the published 10 bands, 10 m first then 20 m
S1_BANDS = v2.S1_BANDS              # VV, VH
S1_STORAGES = ("int16", "float16", "float32")
S1_STORAGE = "int16"
S1_INT16_SCALE = 256.0              # stored int16 = round(dB * 256)
NOISE_RULES = ("pairs", "map")

S2_SUFFIX = ben.COMPACT_SUFFIX
SEG_KEY, NOISY_SEG_KEY = "seg_map_int8", "noisy_seg_map_int8"
LABEL_KEY, NOISY_LABEL_KEY, MAP_NOISY_LABEL_KEY = "label", "noisy_label", "map_noisy_label"
NAME_KEY = "patch_name"
_S1_NUMPY = {"int16": "<i2", "float16": "<f2", "float32": "<f4"}


def band_names(bands: str) -> tuple:
    """Channel names of a band set, in image channel order (S2 first, then S1)."""
    if bands not in BAND_SETS:
        raise ValueError(f"band set must be one of {BAND_SETS}, not {bands!r}")
    return (S2_BANDS if "s2" in bands else ()) + (S1_BANDS if "s1" in bands else ())


def image_shape(bands: str) -> tuple:
    return (PATCH_SIZE, PATCH_SIZE, len(band_names(bands)))


def model_stats(bands: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) float32 per channel of a band set, from the v2 train-split statistics."""
    names = band_names(bands)
    return (np.array([v2.BAND_STATS["mean"][b] for b in names], np.float32),
            np.array([v2.BAND_STATS["std"][b] for b in names], np.float32))


# ---------------------------------------------------------------- S1 storage

def s1_key(band: str, storage: str) -> str:
    return f"{band}_{storage}"


def _check_storage(storage: str) -> None:
    if storage not in S1_STORAGES:
        raise ValueError(f"S1 storage must be one of {S1_STORAGES}, not {storage!r}")


def encode_s1(s1: np.ndarray, storage: str, source: str = "") -> dict:
    """{``VV_<storage>``: bytes, ``VH_<storage>``: bytes} of a float32 (120, 120, 2) dB array;
    InvalidPatch naming ``source`` when int16 cannot hold a value."""
    _check_storage(storage)
    s1 = np.asarray(s1, np.float32)
    if storage == "int16":
        if not np.all(np.isfinite(s1)):
            raise InvalidPatch(f"{source}: S1 holds non-finite values, which int16 storage "
                               "cannot keep (use --s1-storage float32)")
        scaled = np.rint(s1.astype(np.float64) * S1_INT16_SCALE)
        if scaled.size and (scaled.min() < -32768 or scaled.max() > 32767):
            raise InvalidPatch(f"{source}: S1 values {s1.min():.2f} .. {s1.max():.2f} dB fall "
                               f"outside the int16 storage range -128 .. +127.99 dB (use "
                               "--s1-storage float32)")
        arrays = scaled.astype("<i2")
    else:
        arrays = s1.astype(_S1_NUMPY[storage])
    return {s1_key(b, storage): np.ascontiguousarray(arrays[..., k]).tobytes()
            for k, b in enumerate(S1_BANDS)}


def decode_s1(feats: dict, storage: str) -> np.ndarray:
    """float32 (120, 120, 2) dB from ``encode_s1``'s output (numpy; the reader does it in TF)."""
    out = np.stack([np.frombuffer(feats[s1_key(b, storage)], _S1_NUMPY[storage])
                    .reshape(PATCH_SIZE, PATCH_SIZE) for b in S1_BANDS], axis=-1).astype(np.float32)
    return out / np.float32(S1_INT16_SCALE) if storage == "int16" else out


# ---------------------------------------------------------------- one patch

def read_patch_worker(args: tuple) -> tuple[str, dict | None, str | None]:
    """Process-pool entry: (root, patch, s1_name, storage) -> (patch, {"s2": {band: bytes},
    "s1": {key: bytes}, "map": int8 (120, 120)} or None, error or None)."""
    root, patch, s1_name, storage = args
    try:
        lay = v2.Layout.at(root)
        parts = v2.read_patch(lay, patch, s1_name)
        s2 = {b: a.astype("<u2").tobytes() for b, a in parts["s2"].items()}
        s1 = encode_s1(parts["s1"], storage, str(lay.s1_dir(s1_name)))
        return patch, {"s2": s2, "s1": s1, "map": parts["map"]}, None
    except InvalidPatch as err:
        return patch, None, str(err)


def encode_examples(patch: str, data: dict, clean: np.ndarray, variants: Sequence[tuple]) -> list:
    """Serialized tf.train.Examples of one patch, one per (noisy_label, map_noisy_label,
    noisy map int8 or None for the clean map) of ``variants``; the pixels are encoded once."""
    import tensorflow as tf

    from archives.common import bytes_feature, float_feature

    seg = np.ascontiguousarray(data["map"], np.int8).tobytes()
    feats = {b + S2_SUFFIX: bytes_feature(v) for b, v in data["s2"].items()}
    feats.update({k: bytes_feature(v) for k, v in data["s1"].items()})
    feats[SEG_KEY] = bytes_feature(seg)
    feats[LABEL_KEY] = float_feature(clean)
    feats[NAME_KEY] = bytes_feature(patch)
    example = tf.train.Example(features=tf.train.Features(feature=feats))
    fmap = example.features.feature
    out = []
    for noisy, map_noisy, noisy_map in variants:
        fmap[NOISY_LABEL_KEY].CopyFrom(float_feature(noisy))
        fmap[MAP_NOISY_LABEL_KEY].CopyFrom(float_feature(map_noisy))
        fmap[NOISY_SEG_KEY].CopyFrom(bytes_feature(
            seg if noisy_map is None else np.ascontiguousarray(noisy_map, np.int8).tobytes()))
        out.append(example.SerializeToString(deterministic=True))  # same bytes in any process
    return out


# ---------------------------------------------------------------- reader

def s1_storage_of(path: str | os.PathLike, keys: set | None = None) -> str:
    """The S1 storage form of a v2 record file (from its first record's keys); ValueError
    naming the file when it is not a v2 record file."""
    from archives.common import example_keys

    keys = example_keys(path) if keys is None else keys
    base = {LABEL_KEY, NOISY_LABEL_KEY, MAP_NOISY_LABEL_KEY, NAME_KEY, SEG_KEY, NOISY_SEG_KEY}
    base |= {b + S2_SUFFIX for b in ben.BAND_NAMES}
    for storage in S1_STORAGES:
        if base | {s1_key(b, storage) for b in S1_BANDS} <= keys:
            return storage
    raise ValueError(f"{path}: not a BigEarthNet v2 TFRecord file, unexpected keys {sorted(keys)}")


def _parser(storage: str, bands: str, noise_rule: str, compact_dtypes: bool):
    import tensorflow as tf

    size = PATCH_SIZE
    label_key = NOISY_LABEL_KEY if noise_rule == "pairs" else MAP_NOISY_LABEL_KEY
    spec = {k: tf.io.FixedLenFeature([NB_CLASS], tf.float32) for k in (LABEL_KEY, label_key)}
    spec.update({k: tf.io.FixedLenFeature([], tf.string) for k in (NAME_KEY, SEG_KEY, NOISY_SEG_KEY)})
    if "s2" in bands:
        spec.update({b + S2_SUFFIX: tf.io.FixedLenFeature([], tf.string) for b in S2_BANDS})
    if "s1" in bands:
        spec.update({s1_key(b, storage): tf.io.FixedLenFeature([], tf.string) for b in S1_BANDS})
    s1_dtype = {"int16": tf.int16, "float16": tf.float16, "float32": tf.float32}[storage]

    def s2_band(ex, name):
        n = ben.BAND_SIZES[name]
        flat = tf.io.decode_raw(ex[name + S2_SUFFIX], tf.uint16, little_endian=True)
        return tf.reshape(tf.cast(flat, tf.float32), (n, n))

    def s1_band(ex, name):
        flat = tf.cast(tf.io.decode_raw(ex[s1_key(name, storage)], s1_dtype, little_endian=True),
                       tf.float32)
        if storage == "int16":
            flat = flat / S1_INT16_SCALE
        return tf.reshape(flat, (size, size))

    def seg(ex, key):
        return tf.reshape(tf.io.decode_raw(ex[key], tf.int8), (size, size))

    def parse(raw):
        ex = tf.io.parse_single_example(raw, spec)
        chans = []
        if "s2" in bands:
            high = tf.stack([s2_band(ex, b) for b in ben.HIGH_RES_BANDS], axis=-1)
            low = tf.stack([s2_band(ex, b) for b in ben.LOW_RES_BANDS], axis=-1)
            s2 = tf.concat([high, tf.image.resize(low, (size, size), method="bicubic")], axis=-1)
            if compact_dtypes and bands == "s2":
                s2 = tf.cast(tf.clip_by_value(tf.round(s2), 0.0, 65535.0), tf.uint16)
            chans.append(s2)
        if "s1" in bands:
            chans.append(tf.stack([s1_band(ex, b) for b in S1_BANDS], axis=-1))
        image = chans[0] if len(chans) == 1 else tf.concat(chans, axis=-1)
        map_dtype = tf.int8 if compact_dtypes else tf.int32
        return {"image": tf.ensure_shape(image, image_shape(bands)),
                "seg_map": tf.cast(seg(ex, SEG_KEY), map_dtype),
                "noisy_seg_map": tf.cast(seg(ex, NOISY_SEG_KEY), map_dtype),
                "label": ex[LABEL_KEY], "noisy_label": ex[label_key],
                "patch_name": ex[NAME_KEY]}

    return parse


def parse_records(paths, *, bands: str = "s2", noise_rule: str = "pairs",
                  compact_dtypes: bool = False):
    """tf.data.Dataset of unbatched dicts from v2 record files (file order kept):

    * ``image`` float32 (120, 120, C), raw values: "s2" C=10 reflectance in ``S2_BANDS`` order
      (20 m bands bicubic 60->120, as v1), "s1" C=2 VV, VH in dB, "s1s2" C=12 (S2 then S1);
    * ``seg_map``, ``noisy_seg_map`` int32 (120, 120), 19-class ids, -1 unlabelled;
    * ``label``, ``noisy_label`` float32 (19,): ``noisy_label`` from the pair rule
      (``noise_rule="pairs"``, for BCE) or the map rule (``"map"``, for PCE/RRL);
    * ``patch_name`` tf.string.

    ``compact_dtypes=True`` (the input pipeline's option) yields maps as int8 and, for "s2",
    ``image`` as uint16 (bicubic values rounded, clipped); "s1"/"s1s2" images stay float32.
    """
    from archives.common import records_dataset

    return records_dataset(paths, record_parser(bands=bands, noise_rule=noise_rule,
                                                compact_dtypes=compact_dtypes))


def record_form(path) -> str:
    """A file's S1 storage, from its first record's keys."""
    from archives.common import example_keys

    return s1_storage_of(path, example_keys(path))


def record_parser(*, bands: str = "s2", noise_rule: str = "pairs", compact_dtypes: bool = False):
    """How ``parse_records`` parses a file (common.RecordParser): the S1 storage per file, and
    the noise rule's overlay labels (``noisy_label`` or ``map_noisy_label``)."""
    from archives.common import RecordParser

    band_names(bands)
    if noise_rule not in NOISE_RULES:
        raise ValueError(f"noise rule must be one of {NOISE_RULES}, not {noise_rule!r}")
    return RecordParser(
        form_of=record_form,
        parser=lambda storage: _parser(storage, bands, noise_rule, compact_dtypes),
        overlay_label=NOISY_LABEL_KEY if noise_rule == "pairs" else MAP_NOISY_LABEL_KEY)


# ---------------------------------------------------------------- v2 root -> TFRecords

def resolve_splits(layout: v2.Layout, csvs: dict, skip_invalid: bool, skipped: list):
    """(metadata, {split: [patch, ...]}, names found through s2v1_name, source per split):
    the parquet's ``split`` column or the three CSVs, then the patches whose folders or map are
    missing named (or skipped). Every split must keep a patch."""
    meta = v2.read_metadata(layout, skip_invalid, skipped)
    if any(csvs.values()):
        splits, via_v1 = v2.csv_splits(meta, csvs, skip_invalid, skipped)
        source = {s: str(csvs[s]) for s in SPLITS}
    else:
        splits, via_v1 = meta.splits(), 0
        source = {s: f"{layout.metadata} (split column, snow and cloud/shadow left out)"
                  for s in SPLITS}
    row = {p: i for i, p in enumerate(meta.patches)}
    meta = meta.subset([row[p] for s in SPLITS for p in splits[s]])
    meta = v2.check_present(layout, meta, skip_invalid=skip_invalid, skipped=skipped)
    present = set(meta.patches)
    splits = {s: [p for p in splits[s] if p in present] for s in SPLITS}
    for s in SPLITS:
        if not splits[s]:
            raise ValueError(f"{source[s]}: {s} split is empty")
    return meta, splits, via_v1, source


RECORD_BYTES = {"int16": 247_177, "float16": 247_181, "float32": 304_781}


def encode_shard_item(item: tuple) -> tuple[str, bytes, dict]:
    """Shard-writer entry (archives.shards): (root, patch, s1_name, storage, clean multi-hot,
    map-rule picks per level or None) -> (patch, clean record, extras: per level the map rule's
    multi-hot ``map_noisy_<N>`` and changed pairs ``changed_<N>``; ``unlabelled`` pixels)."""
    root, patch, s1_name, storage, clean, picks = item
    _, data, err = read_patch_worker((root, patch, s1_name, storage))
    if err:
        raise InvalidPatch(err)
    extras = {"unlabelled": int((data["map"] < 0).sum())}
    for n, p in (picks or {}).items():
        noisy_map, changed = benv2_noise.apply_picks(data["map"], p)
        extras[f"map_noisy_{n}"] = benv2_noise.noisy_multi_hot(clean, noisy_map).astype(np.uint8)
        extras[f"changed_{n}"] = changed
    raw = encode_examples(patch, data, clean, [(clean, clean, None)])[0]
    return patch, raw, extras


@locks_output
def prepare(root, out, csvs: dict | None = None, noise_levels: Sequence[int] = NOISE_LEVELS,
            seed: int = 42, s1_storage: str = S1_STORAGE, workers: int = 1,
            skip_invalid: bool = False, progress: bool = True, layout: str | None = None,
            shard_size: str | None = None, shard: str | None = None):
    """v2 root -> records under ``<out>/TFRecord/`` (schema above); returns the
    ``archives.report.PrepReport`` (also saved as REPORT_NAME).

    ``layout`` "shards" (default; docs/full-scale.md): each split as shards of ``shard_size``
    in a seeded random order, one ``train_noise_prcnt<N>.overlay.npz`` per level holding both
    rules' labels and the map remap; ``shard`` "K/N" writes task K's part (a SLURM array).
    "files": ``{train,val,test}.tfrecord`` in name order and a full
    ``train_noise_prcnt<N>.tfrecord`` per level.

    ``report.noise`` holds the realised pair-rule noise (as for v1), ``report.extra["map_noise"]``
    the map rule's. Invalid items stop the run with a ValueError naming the file, or with
    ``skip_invalid`` are warned about, skipped and listed.
    """
    from archives.common import check_writable, skip_or_raise, worker_pool, write_split_files
    from archives.noise import check_levels
    from archives.records_meta import write_meta
    from archives.report import PrepReport

    from archives import shards

    start = time.time()
    _check_storage(s1_storage)
    record_layout = shards.check_layout(layout, "compact", shard)
    levels = check_levels(noise_levels)
    layout = v2.Layout.at(root)
    if v2.detect_layout(root) != "v2":
        raise ValueError(f"{root}: not a BigEarthNet v2.0 root (expected {v2.S2_DIR}/ and "
                         f"{v2.METADATA})")
    tf_dir = Path(out) / "TFRecord"
    check_writable(tf_dir)
    skipped: list[dict] = []
    csvs = csvs or {}
    meta, splits, via_v1, source = resolve_splits(layout, csvs, skip_invalid, skipped)
    labels = dict(zip(meta.patches, meta.labels))
    s1_names = dict(zip(meta.patches, meta.s1_names))

    clean_train = np.stack([labels[p] for p in splits["train"]])
    pair_noisy = {n: ben.inject_noise(clean_train, n, np.random.default_rng([seed, n]))
                  for n in levels}
    map_picks = {n: benv2_noise.picks_per_patch(benv2_noise.plan_map_noise(
        clean_train, n, np.random.default_rng([seed, n, 2])), len(clean_train)) for n in levels}
    map_stats = {n: dict(pairs_changed=0, images_changed=0) for n in levels}
    if record_layout == "shards":
        return _prepare_shards(**locals())

    pool = worker_pool(workers)
    window = max(64, 64 * workers)
    px = {"unlabelled": 0, "total": 0}

    def encode(split, row, result):
        patch, data, err = result
        if err:
            skip_or_raise(InvalidPatch(err), skip_invalid, skipped, layout.s2_dir(patch), err)
            return None
        clean = labels[patch]
        variants = [(clean, clean, None)]
        for n in (levels if split == "train" else ()):
            noisy_map, changed = benv2_noise.apply_picks(data["map"], map_picks[n][row])
            map_noisy = benv2_noise.noisy_multi_hot(clean, noisy_map)
            map_stats[n]["pairs_changed"] += changed
            map_stats[n]["images_changed"] += bool((map_noisy != clean).any())
            variants.append((pair_noisy[n][row], map_noisy, noisy_map))
        px["unlabelled"] += int((data["map"] < 0).sum())
        px["total"] += data["map"].size
        return encode_examples(patch, data, clean, variants)

    try:
        records, written_rows = write_split_files(
            tf_dir, SPLITS, levels,
            items=lambda split: [(str(layout.root), p, s1_names[p], s1_storage)
                                 for p in splits[split]],
            worker=read_patch_worker, encode=encode, pool=pool, window=window,
            progress=progress, source=lambda split: source[split])
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)

    rows = np.array(written_rows, int)
    report = PrepReport(dataset=NAME, out_dir=str(tf_dir), schema="compact", seed=seed,
                        noise_levels=levels, records=records, skipped=skipped)
    _finish_report(report, layout, csvs, meta, via_v1, labels, splits, clean_train, rows,
                   pair_noisy, map_picks, map_stats, px, s1_storage, start)
    # every record holds all 12 channels (S2 + S1): the metadata names the full band set
    write_meta(tf_dir, registry.BENV2.with_bands("s1s2"), report, band_set="s1s2")
    return report


def _finish_report(report, layout, csvs, meta, via_v1, labels, splits, clean_train, rows,
                   pair_noisy, map_picks, map_stats, px, s1_storage, start) -> None:
    """Realised noise of both rules, the v2 counts; saves the report."""
    from archives.report import PrepReport

    levels = report.noise_levels
    kept = clean_train[rows]
    no_target = sum(not labels[p].any() for s in SPLITS for p in splits[s])
    if no_target:
        warnings.warn(f"{no_target} patch(es) have no 19-class label in {layout.metadata}: their "
                      "multi-hot is all zero", stacklevel=2)
    report.noise = {n: PrepReport.noise_entry(**ben.noise_counts(kept, pair_noisy[n][rows]))
                    for n in levels}
    report.extra.update(
        root=str(layout.root), layout="v2", s1_storage=s1_storage,
        noise_rules={"noisy_label": "BigEarthNet pair rule (report.noise)",
                     "map_noisy_label, noisy_seg_map": "DLRSD map rule (extra.map_noise)"},
        map_noise={str(n): PrepReport.noise_entry(
            pairs_total=int(kept.sum()),
            pairs_picked=int(sum(len(map_picks[n][r]) for r in rows)),
            pairs_changed=map_stats[n]["pairs_changed"], images_total=len(rows),
            images_changed=map_stats[n]["images_changed"]) for n in levels},
        split_source="csv" if any(csvs.values()) else f"{v2.METADATA} split column",
        snow_cloud_shadow_listed=len(meta.excluded),
        flagged_rows_left_out=meta.left_out,
        csv_names_via_s2v1_name=via_v1,
        patches_with_s2v1_name=sum(v is not None for v in meta.s2v1_names),
        unlabelled_pixel_share=px["unlabelled"] / px["total"] if px["total"] else 0.0,
        patches_without_19_class_label=int(no_target))
    report.time_s = round(time.time() - start, 3)
    report.save(Path(report.out_dir) / REPORT_NAME)


def _prepare_shards(*, layout, tf_dir, splits, labels, s1_names, s1_storage, seed,
                    levels, clean_train, pair_noisy, map_picks, map_stats, workers, skip_invalid,
                    progress, shard_size, shard, start, skipped, csvs, meta, via_v1, **_):
    """The shards layout of ``prepare``: clean shards in record order, noise as overlays
    (both rules' labels and the map remap, from the picks planned on the labels)."""
    from archives import overlay, shards
    from archives.records_meta import write_meta
    from archives.report import PrepReport

    items = {split: [(str(layout.root), p, s1_names[p], s1_storage, labels[p],
                      {n: map_picks[n][i] for n in levels} if split == "train" else None)
                     for i, p in enumerate(splits[split])] for split in SPLITS}
    results = shards.run(tf_dir, items, encode=encode_shard_item, seed=seed,
                         per_shard=shards.records_per_shard(
                             shard_size or shards.DEFAULT_SHARD_SIZE, RECORD_BYTES[s1_storage]),
                         workers=workers, select=shards.parse_select(shard),
                         skip_invalid=skip_invalid, progress=progress)
    report = PrepReport(dataset=NAME, out_dir=str(tf_dir), schema="compact", seed=seed,
                        noise_levels=levels, skipped=list(skipped))
    if results is None:
        return shards.task_report(report, shard, start)
    rows = shards.global_rows(results, "train")

    def arrays(n, rows):
        return {"noisy_label": pair_noisy[n][rows],
                "map_noisy_label": shards.global_extra(results, "train", f"map_noisy_{n}"),
                "map_lut": np.stack([overlay.lut_from_picks(map_picks[n][r], NB_CLASS)
                                     for r in rows])}

    split_meta, overlays = shards.finish(tf_dir, registry.BENV2, report, results, levels, seed,
                                         arrays)
    for n in levels:
        changed = shards.global_extra(results, "train", f"map_noisy_{n}")
        map_stats[n]["pairs_changed"] = int(shards.global_extra(results, "train",
                                                                 f"changed_{n}").sum())
        map_stats[n]["images_changed"] = int((changed != (clean_train[rows] > 0.5)).any(
            axis=1).sum())
    unlabelled = sum(int(shards.global_extra(results, s, "unlabelled").sum()) for s in SPLITS)
    total_px = sum(report.records[s] for s in SPLITS) * PATCH_SIZE * PATCH_SIZE
    _finish_report(report, layout, csvs, meta, via_v1, labels, splits, clean_train, rows,
                   pair_noisy, map_picks, map_stats, {"unlabelled": unlabelled, "total": total_px},
                   s1_storage, start)
    write_meta(tf_dir, registry.BENV2.with_bands("s1s2"), report, band_set="s1s2",
               splits=split_meta, overlays=overlays)
    return report


def summary_lines(report) -> list[str]:
    """The v2 lines printed after ``report.summary()``: map-rule noise, left-out and v1-name counts."""
    e = report.extra
    lines = [f"S1 stored as {e['s1_storage']}; noisy_label = pair rule (above), "
             "map_noisy_label/noisy_seg_map = map rule:"]
    for level, m in e["map_noise"].items():
        lines.append(f"  map noise {level:>2}%: pairs changed {m['pairs_changed']}/{m['pairs_total']}"
                     f" ({100 * m['share_pairs_changed']:.1f}%, {m['pairs_picked']} picked), "
                     f"images with changed multi-hot {m['images_changed']}/{m['images_total']}"
                     f" ({100 * m['share_images_changed']:.1f}%)")
    lines.append(f"left out: {e['snow_cloud_shadow_listed']} snow/cloud/shadow patches listed in "
                 f"{v2.EXCLUDED_METADATA}, {e['flagged_rows_left_out']} flagged rows of "
                 f"{v2.METADATA}; split source: "
                 f"{e['split_source']}; CSV names found through s2v1_name: "
                 f"{e['csv_names_via_s2v1_name']}; patches with a v1 name: "
                 f"{e['patches_with_s2v1_name']}")
    lines.append(f"unlabelled map pixels: {100 * e['unlabelled_pixel_share']:.1f}%")
    return lines
