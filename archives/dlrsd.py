"""DLRSD archive: UC Merced images + DLRSD pixel maps -> TFRecords, and the record reader.

Raw layout: ``UCMerced_LandUse/Images/<scene>/<scene>NN.tif`` (RGB, resized to 256x256 bicubic
when another size) and ``DLRSD/Images/<scene>/<scene>NN.png`` (colour-coded map, PALETTE below).
Folders and stems are sorted and paired by name.

TFRecord schemas (one ``tf.train.Example`` per image; the form is told apart by its keys).

Published form (what the original GRID scripts wrote; read, and written with ``--schema published``):
  ``img``            float list, 256*256*3, HWC, 0-255
  ``seg_map``        float list, 256*256, class id or -1 (unlabelled)
  ``noisy_seg_map``  float list, 256*256, same coding, after noise injection
  ``label``          float list, 17, clean multi-hot (class-id order)
  ``noisy_label``    float list, 17, multi-hot of the classes present in ``noisy_seg_map``
  ``patch_name``     bytes, image stem (e.g. ``airplane07``)

Compact form (default, ``--schema compact``): same ``label``, ``noisy_label``, ``patch_name``; pixel
data as raw bytes under different key names:
  ``image_uint8``          bytes, 256*256*3 uint8, HWC row-major (196,608 bytes)
  ``seg_map_int8``         bytes, 256*256 int8, class id or -1 (65,536 bytes)
  ``noisy_seg_map_int8``   bytes, 256*256 int8, same coding (65,536 bytes)
About 328 KB per example against about 1.31 MB for the published form (4.0x fewer bytes).

In clean files (train/val/test) ``noisy_seg_map`` equals ``seg_map`` and ``noisy_label`` equals
``label``. In ``train_noise_prcnt<N>`` files an image whose map the noise left unchanged keeps
``noisy_label == label``; a changed image gets the classes present in its noisy map.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import tensorflow as tf
from PIL import Image

from archives import registry
from archives.common import (RecordParser, atomic_tfrecord_writer, bytes_feature, check_writable, example_keys,
                             float_feature, records_dataset, skip_or_raise)
from archives.prep_cli import locks_output
from archives.report import PrepError

INFO = registry.DLRSD  # the archive's facts live in its light description
NAME = INFO.name
CLASS_NAMES = list(INFO.class_names)
NB_CLASS = INFO.nb_class
PALETTE = np.array([
    (166, 202, 240), (128, 128, 0), (0, 0, 128), (255, 0, 0), (0, 128, 0), (128, 0, 0),
    (255, 233, 233), (160, 160, 164), (0, 128, 128), (90, 87, 255), (255, 255, 0), (255, 192, 0),
    (0, 0, 255), (255, 0, 192), (128, 0, 128), (0, 255, 0), (0, 255, 255),
], dtype=np.uint8)
SCENE_CLASSES = list(INFO.scene_classes)
NOISE_LEVELS = list(INFO.noise_levels)
SHUFFLE_BUFFER = INFO.shuffle_buffer
IMAGE_SHAPE = INFO.image_shape
IMAGE_SIZE = IMAGE_SHAPE[0]
MODEL_INPUT_SHAPE = INFO.model_input_shape
TRAIN_CROP = INFO.train_crop
MODEL_MEAN = np.array(INFO.model_mean, dtype=np.float32)
MODEL_STD = np.array(INFO.model_std, dtype=np.float32)
HAS_PIXEL_MAPS = INFO.has_pixel_maps
SPLITS = ("train", "val", "test")
SCHEMAS = ("compact", "published")

PUBLISHED_KEYS = frozenset({"img", "seg_map", "noisy_seg_map", "label", "noisy_label", "patch_name"})
COMPACT_KEYS = frozenset({"image_uint8", "seg_map_int8", "noisy_seg_map_int8", "label",
                          "noisy_label", "patch_name"})
IMAGE_EXTS = (".tif", ".tiff")
MAP_EXTS = (".png",)


class InvalidInput(PrepError):
    """Bad raw input; ``item`` names the file or folder at fault (skippable with --skip-invalid)."""

    def __init__(self, item: str | os.PathLike, reason: str):
        self.item, self.reason = str(item), reason
        super().__init__(f"{item}: {reason}")


# ----------------------------------------------------------------------------- palette, split
_LUT: np.ndarray | None = None  # packed 24-bit colour -> class id (-1 where no class), built once


def _pack_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _palette_lut() -> np.ndarray:
    global _LUT
    if _LUT is None:
        lut = np.full(1 << 24, -1, np.int8)
        lut[_pack_rgb(PALETTE)] = np.arange(NB_CLASS, dtype=np.int8)
        _LUT = lut
    return _LUT


def decode_palette(rgb: np.ndarray) -> tuple[np.ndarray, int]:
    """Colour-coded map (H, W, 3) uint8 -> (class-id map int8 with -1 for unknown colours, misses)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"colour map must be (H, W, 3), got {rgb.shape}")
    ids = _palette_lut()[_pack_rgb(rgb)]
    return ids, int(np.count_nonzero(ids < 0))


def encode_palette(ids: np.ndarray) -> np.ndarray:
    """Class-id map (H, W) with -1 for unlabelled -> colour map (H, W, 3) uint8 (-1 -> black)."""
    ids = np.asarray(ids)
    lut = np.concatenate([PALETTE, np.zeros((1, 3), np.uint8)])
    return lut[np.where(ids < 0, NB_CLASS, ids)]


def split_of(index: int) -> str:
    """Split of the image at 0-based position ``index`` of its sorted class folder."""
    r = (index + 1) % 10
    return "test" if r in (2, 7) else "val" if r == 5 else "train"


def classes_present(seg_map: np.ndarray) -> np.ndarray:
    """Multi-hot float32 (17,) of the classes occurring in a class-id map (-1 ignored)."""
    counts = np.bincount(np.asarray(seg_map).ravel().astype(np.int64) + 1, minlength=NB_CLASS + 1)
    return (counts[1:NB_CLASS + 1] > 0).astype(np.float32)


# ----------------------------------------------------------------------------- raw layout
@dataclass(frozen=True)
class Item:
    scene: str
    stem: str
    image_path: Path
    map_path: Path
    index: int  # position among the paired stems of its folder, sorted by name

    @property
    def split(self) -> str:
        return split_of(self.index)


def images_dir(root: str | os.PathLike, sub: str) -> Path:
    """``root/Images`` or ``root/<sub>/Images``; ValueError naming root when neither exists."""
    root = Path(root)
    for cand in (root / "Images", root / sub / "Images"):
        if cand.is_dir():
            return cand
    if not root.exists():
        raise ValueError(f"{root}: folder does not exist")
    raise ValueError(f"{root}: no 'Images' folder (expected {root}/Images or {root}/{sub}/Images)")


def _listing(folder: Path, exts: Sequence[str]) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir(), key=lambda p: p.name)
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts}


def scan_archive(ucm_root, dlrsd_root, *, skip_invalid: bool = False,
                 skipped: list | None = None) -> list[Item]:
    """Pair UC Merced images and DLRSD maps by folder and stem, sorted by name.

    A folder or stem on one side only raises InvalidInput naming it; with ``skip_invalid`` it is
    warned about, appended to ``skipped`` as {"item", "reason"} and left out.
    """
    ucm_dir, dl_dir = images_dir(ucm_root, "UCMerced_LandUse"), images_dir(dlrsd_root, "DLRSD")
    skipped = [] if skipped is None else skipped

    def bad(item, reason):
        skip_or_raise(InvalidInput(item, reason), skip_invalid, skipped, item, reason)

    ucm_scenes = {p.name for p in ucm_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
    dl_scenes = {p.name for p in dl_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
    for s in sorted(ucm_scenes - dl_scenes):
        bad(ucm_dir / s, f"class folder has no DLRSD counterpart {dl_dir / s}")
    for s in sorted(dl_scenes - ucm_scenes):
        bad(dl_dir / s, f"class folder has no UC Merced counterpart {ucm_dir / s}")
    items = []
    for scene in sorted(ucm_scenes & dl_scenes):
        imgs, maps = _listing(ucm_dir / scene, IMAGE_EXTS), _listing(dl_dir / scene, MAP_EXTS)
        for stem in sorted(set(imgs) - set(maps)):
            bad(imgs[stem], f"image has no DLRSD map {dl_dir / scene / (stem + '.png')}")
        for stem in sorted(set(maps) - set(imgs)):
            bad(maps[stem], f"map has no UC Merced image {ucm_dir / scene / (stem + '.tif')}")
        for i, stem in enumerate(sorted(set(imgs) & set(maps))):
            items.append(Item(scene, stem, imgs[stem], maps[stem], i))
    if not items:
        raise ValueError(f"{ucm_dir} / {dl_dir}: no paired images found")
    return items


def _read_rgb(path: Path, resample, what: str) -> tuple[np.ndarray, bool]:
    """RGB uint8 (256, 256, 3) of an image file, resized with ``resample`` if needed, and resized flag."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            resized = im.size != (IMAGE_SIZE, IMAGE_SIZE)
            if resized:
                im = im.resize((IMAGE_SIZE, IMAGE_SIZE), resample)
            return np.asarray(im, dtype=np.uint8), resized
    except Exception as e:  # PIL raises many types for broken files
        raise InvalidInput(path, f"cannot read {what} ({type(e).__name__}: {e})") from e


def read_image(path: Path) -> tuple[np.ndarray, bool]:
    """RGB uint8 (256, 256, 3) from a UC Merced TIFF (bicubic resize if needed), and resized flag."""
    return _read_rgb(path, Image.BICUBIC, "image")


def read_map(path: Path) -> tuple[np.ndarray, int, bool]:
    """Class-id map int8 (256, 256) from a DLRSD PNG, palette misses, and resized flag (nearest)."""
    rgb, resized = _read_rgb(path, Image.NEAREST, "pixel map")
    ids, misses = decode_palette(rgb)
    return ids, misses, resized


# ----------------------------------------------------------------------------- multi-labels
def _label_row(path, where, stem, values) -> np.ndarray:
    values = list(values)
    while values and values[-1] in (None, ""):  # spreadsheets pad short rows with empty cells
        values.pop()
    if len(values) < NB_CLASS:
        raise ValueError(f"{path}: {where} ({stem}): expected {NB_CLASS} label columns, got {len(values)}")
    out = np.zeros(NB_CLASS, np.float32)
    for j, v in enumerate(values[:NB_CLASS]):
        try:
            f = float(str(v).strip())
        except ValueError:
            f = None
        if f not in (0.0, 1.0):
            raise ValueError(f"{path}: {where} ({stem}), column '{CLASS_NAMES[j]}': "
                             f"value {v!r} is not 0 or 1")
        out[j] = f
    return out


def read_multilabels(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Stem -> clean multi-hot (17,) from ``multi-labels.xlsx`` (Sheet1) or ``LandUse_Multilabeled.txt``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: multi-label file does not exist")
    if path.suffix.lower() in (".xlsx", ".xlsm"):
        import openpyxl
        try:
            wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
        except Exception as e:
            raise ValueError(f"{path}: cannot read spreadsheet ({type(e).__name__}: {e})") from e
        try:
            if "Sheet1" not in wb.sheetnames:
                raise ValueError(f"{path}: no sheet 'Sheet1' (sheets: {wb.sheetnames})")
            rows = [list(r) for r in wb["Sheet1"].iter_rows(values_only=True)]
        finally:
            wb.close()
    else:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: cannot read multi-label text ({e})") from e
        rows = [line.rstrip("\r\n").split("\t") for line in text.splitlines() if line.strip()]
    rows = [r for r in rows if any(c not in (None, "") for c in r)]
    if not rows or str(rows[0][0]).strip().upper() != "IMAGE\\LABEL":
        got = rows[0][0] if rows else "nothing"
        raise ValueError(f"{path}: first column header must be 'IMAGE\\LABEL', got {got!r}")
    if len([c for c in rows[0][1:] if c not in (None, "")]) != NB_CLASS:
        raise ValueError(f"{path}: header must name {NB_CLASS} classes, got {rows[0][1:]}")
    labels = {}
    for n, row in enumerate(rows[1:], start=2):
        stem = str(row[0]).strip()
        if stem.lower().endswith((".tif", ".tiff", ".png")):
            stem = stem.rsplit(".", 1)[0]
        if stem in labels:
            raise ValueError(f"{path}: row {n}: image '{stem}' listed twice")
        labels[stem] = _label_row(path, f"row {n}", stem, row[1:])
    return labels


def find_multilabel_file(dlrsd_root) -> Path | None:
    """``multi-labels.xlsx`` in the DLRSD root (or in ``<root>/DLRSD``), if there."""
    root = Path(dlrsd_root)
    for cand in (root / "multi-labels.xlsx", root / "DLRSD" / "multi-labels.xlsx"):
        if cand.is_file():
            return cand
    return None


# ----------------------------------------------------------------------------- schema
def _check_schema(schema: str) -> None:
    if schema not in SCHEMAS:
        raise ValueError(f"schema must be 'compact' or 'published', got {schema!r}")


def encode_example(image, seg_map, noisy_seg_map, label, noisy_label, patch_name: str,
                   schema: str = "compact") -> bytes:
    """Serialised ``tf.train.Example`` of one image in the ``compact`` or ``published`` form."""
    _check_schema(schema)
    if schema == "compact":
        feats = {
            "image_uint8": bytes_feature(np.ascontiguousarray(image, np.uint8).tobytes()),
            "seg_map_int8": bytes_feature(np.ascontiguousarray(seg_map, np.int8).tobytes()),
            "noisy_seg_map_int8": bytes_feature(np.ascontiguousarray(noisy_seg_map, np.int8).tobytes()),
        }
    else:
        feats = {"img": float_feature(image), "seg_map": float_feature(seg_map),
                 "noisy_seg_map": float_feature(noisy_seg_map)}
    feats.update(label=float_feature(label), noisy_label=float_feature(noisy_label),
                 patch_name=bytes_feature(patch_name))
    example = tf.train.Example(features=tf.train.Features(feature=feats))
    return example.SerializeToString(deterministic=True)  # map keys sorted: same bytes in any process


_H, _W = IMAGE_SHAPE[:2]
_LABEL_SPEC = {"label": tf.io.FixedLenFeature([NB_CLASS], tf.float32),
               "noisy_label": tf.io.FixedLenFeature([NB_CLASS], tf.float32),
               "patch_name": tf.io.FixedLenFeature([], tf.string)}
_COMPACT_SPEC = {k: tf.io.FixedLenFeature([], tf.string)
                 for k in ("image_uint8", "seg_map_int8", "noisy_seg_map_int8")} | _LABEL_SPEC
_PUBLISHED_SPEC = {"img": tf.io.FixedLenFeature([_H * _W * 3], tf.float32),
                   "seg_map": tf.io.FixedLenFeature([_H * _W], tf.float32),
                   "noisy_seg_map": tf.io.FixedLenFeature([_H * _W], tf.float32)} | _LABEL_SPEC


def _parse_fn(form: str, compact_dtypes: bool):
    img_dtype = tf.uint8 if compact_dtypes else tf.float32
    map_dtype = tf.int8 if compact_dtypes else tf.int32

    def parse(raw):
        if form == "compact":
            f = tf.io.parse_single_example(raw, _COMPACT_SPEC)
            image = tf.reshape(tf.io.decode_raw(f["image_uint8"], tf.uint8), IMAGE_SHAPE)
            seg = tf.reshape(tf.io.decode_raw(f["seg_map_int8"], tf.int8), (_H, _W))
            noisy = tf.reshape(tf.io.decode_raw(f["noisy_seg_map_int8"], tf.int8), (_H, _W))
        else:
            f = tf.io.parse_single_example(raw, _PUBLISHED_SPEC)
            image = tf.reshape(f["img"], IMAGE_SHAPE)
            if compact_dtypes:
                image = tf.clip_by_value(tf.round(image), 0.0, 255.0)
            seg = tf.reshape(tf.round(f["seg_map"]), (_H, _W))
            noisy = tf.reshape(tf.round(f["noisy_seg_map"]), (_H, _W))
        return {"image": tf.cast(image, img_dtype), "seg_map": tf.cast(seg, map_dtype),
                "noisy_seg_map": tf.cast(noisy, map_dtype), "label": f["label"],
                "noisy_label": f["noisy_label"], "patch_name": f["patch_name"]}
    return parse


def record_form(path) -> str:
    """'compact' or 'published' from the keys of the file's first record; ValueError otherwise."""
    keys = example_keys(path)
    if COMPACT_KEYS <= keys:
        return "compact"
    if PUBLISHED_KEYS <= keys:
        return "published"
    raise ValueError(f"{path}: unexpected DLRSD record keys {sorted(keys)}; expected "
                     f"{sorted(COMPACT_KEYS)} (compact) or {sorted(PUBLISHED_KEYS)} (published)")


def parse_records(paths, *, compact_dtypes: bool = False) -> tf.data.Dataset:
    """Unbatched dicts from DLRSD TFRecords of either form, in file order.

    ``compact_dtypes=True`` (used by the input pipeline to keep its shuffle buffer small) yields
    ``image`` uint8 (published-form values rounded) and maps int8 instead of float32 / int32.
    """
    return records_dataset(paths, record_parser(compact_dtypes=compact_dtypes))


def record_parser(*, compact_dtypes: bool = False) -> RecordParser:
    """How ``parse_records`` parses a file (used by the input pipeline, which shuffles the
    serialized records before parsing them)."""
    return RecordParser(form_of=record_form, parser=lambda form: _parse_fn(form, compact_dtypes))


# ----------------------------------------------------------------------------- preparation
def _level_rng(seed: int, level: int, scene: str) -> np.random.Generator:
    # one stream per (seed, level, folder) so results do not depend on processing order
    return np.random.default_rng([seed, level, zlib.crc32(scene.encode())])


def _load(it: Item, label_table: dict | None, ml_path):
    """(image, map, clean label, palette misses, image resized, map resized) of one item."""
    image, r1 = read_image(it.image_path)
    seg, miss, r2 = read_map(it.map_path)
    if label_table is None:
        label = classes_present(seg)
    elif it.stem not in label_table:
        raise InvalidInput(ml_path, f"multi-label file has no row for image '{it.stem}'")
    else:
        label = label_table[it.stem]
    return image, seg, label, miss, r1, r2


def _try_load(it: Item, label_table: dict | None, ml_path):
    """``_load``'s result and None, or None and the InvalidInput it raised (for a thread pool)."""
    try:
        return _load(it, label_table, ml_path), None
    except InvalidInput as e:
        return None, e


RECORD_BYTES = 328_000  # a compact record (shard sizes are planned with it)


def encode_shard_item(item: tuple) -> tuple[str, bytes, None]:
    """Shard-writer entry (archives.shards): (image path, map path, stem, clean label, schema)
    -> (stem, clean record, no extras)."""
    image_path, map_path, stem, label, schema = item
    image, _ = read_image(Path(image_path))
    seg, _, _ = read_map(Path(map_path))
    return stem, encode_example(image, seg, seg, label, label, stem, schema), None


def _scene_loads(items, pool, label_table, ml_path, bar, skip_invalid: bool, skipped: list,
                 tally: dict):
    """(scene, [(item, image, map, clean label), ...]) per class folder, in item order whatever
    the pool; bad items skipped or raised; palette misses, resized files and label/map
    disagreements counted in ``tally``."""
    for scene, scene_items in itertools.groupby(items, key=lambda i: i.scene):
        scene_items, out = list(scene_items), []
        args = (scene_items, itertools.repeat(label_table), itertools.repeat(ml_path))
        loads = pool.map(_try_load, *args) if pool else map(_try_load, *args)
        for it, (loaded, e) in zip(scene_items, loads):
            bar.update(1)
            if e is not None:
                skip_or_raise(e, skip_invalid, skipped, e.item, e.reason)
                continue
            image, seg, label, miss, r1, r2 = loaded
            tally["resized"] += r1 + r2
            if miss:
                tally["misses"][str(it.map_path)] = miss
            tally["disagree"] += bool(np.any(classes_present(seg) != label))
            out.append((it, image, seg, label))
        yield scene, out


def _noise_stats(levels) -> dict[int, dict[str, int]]:
    """Per level, the counts a PrepReport noise entry holds, all zero."""
    return {n: dict(pairs_total=0, pairs_picked=0, pairs_changed=0, images_total=0,
                    images_changed=0) for n in levels}


def _scene_noise(maps: list, labels: list, level: int, seed: int, scene: str,
                 stats: dict) -> list[tuple[np.ndarray | None, np.ndarray]]:
    """Draw ``level``'s map noise over one class folder's train maps (the same draw in both
    layouts) and add its counts to ``stats[level]``. Per image: (noisy map, or None where the
    map is unchanged; noisy label)."""
    from archives.noise import inject_map_noise

    noisy, st = inject_map_noise(maps, np.array(labels), level, _level_rng(seed, level, scene),
                                 NB_CLASS)
    count = stats[level]
    for k in ("pairs_total", "pairs_picked", "pairs_changed"):
        count[k] += st[k]
    out = []
    for label, nmap in zip(labels, noisy):
        nlabel = label if nmap is None else classes_present(nmap)
        count["images_changed"] += bool(np.any(nlabel != label))
        count["images_total"] += 1
        out.append((nmap, nlabel))
    return out


def _finish_report(report, out_dir: Path, stats: dict, tally: dict, t0: float, **meta):
    """Fill ``report``'s noise, palette-miss and tally fields, save it as prep_report.json
    and write records_meta.json (``meta``: write_meta's splits/overlays of a shards layout)."""
    from archives.records_meta import write_meta
    from archives.report import PrepReport

    misses = tally["misses"]
    report.noise = {n: PrepReport.noise_entry(**s) for n, s in stats.items()}
    report.palette_misses = {"pixels": int(sum(misses.values())), "maps": len(misses),
                             "per_map": dict(sorted(misses.items()))}
    report.extra.update(resized_files=int(tally["resized"]),
                        label_map_disagreements=int(tally["disagree"]))
    report.time_s = time.time() - t0
    report.save(out_dir / "prep_report.json")
    write_meta(out_dir, INFO, report, **meta)
    return report


@locks_output
def prepare(ucm_root, dlrsd_root, out_folder, *, noise_levels: Iterable[int] = NOISE_LEVELS,
            seed: int = 42, schema: str = "compact", multi_labels=None, skip_invalid: bool = False,
            progress: bool = True, workers: int = 1, layout: str | None = None,
            shard_size: str | None = None, shard: str | None = None):
    """Write the records under ``<out>/TFRecord/``.

    ``layout`` "shards" (default for the compact schema; docs/full-scale.md): each split as
    shards of ``shard_size`` in a seeded random order and one
    ``train_noise_prcnt<N>.overlay.npz`` per level (noisy labels and map remaps); "files" (the
    only layout of the published schema): ``{train,val,test}.tfrecord`` in name order and a
    full ``train_noise_prcnt<N>.tfrecord`` per level. The noise is the same in both.

    ``multi_labels``: path to the multi-label file; None looks for ``multi-labels.xlsx`` in the
    DLRSD root and otherwise takes the classes present in each pixel map. ``workers``: threads
    decoding the images and maps (processes writing shards); the records are the same for any
    number. Returns the PrepReport (also saved as ``<out>/TFRecord/prep_report.json``).
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from archives.noise import check_levels
    from archives.report import PrepReport

    t0 = time.time()
    if workers < 1:
        raise PrepError(f"--workers: must be >= 1, got {workers}")
    from archives import shards

    levels = check_levels(noise_levels)
    _check_schema(schema)
    layout = shards.check_layout(layout, schema, shard)
    out_dir = Path(out_folder) / "TFRecord"
    check_writable(out_dir)
    report = PrepReport(dataset=NAME, out_dir=str(out_dir), schema=schema, seed=seed,
                        noise_levels=levels)
    skipped: list = []
    items = scan_archive(ucm_root, dlrsd_root, skip_invalid=skip_invalid, skipped=skipped)
    ml_path = Path(multi_labels) if multi_labels else find_multilabel_file(dlrsd_root)
    label_table = read_multilabels(ml_path) if ml_path else None
    report.extra["multi_label_source"] = str(ml_path) if ml_path else "pixel maps"
    counts = {s: sum(it.split == s for it in items) for s in SPLITS}
    for s in SPLITS:
        if counts[s] == 0:
            raise ValueError(f"{ucm_root}: split '{s}' would be empty ({len(items)} paired images; "
                             f"the split rule needs at least 5 images in a class folder)")

    if layout == "shards":
        return _prepare_shards(items, out_dir, report, levels, seed=seed, schema=schema,
                               label_table=label_table, ml_path=ml_path, skipped=skipped,
                               skip_invalid=skip_invalid, progress=progress, workers=workers,
                               shard_size=shard_size, shard=shard, t0=t0)
    names = {s: out_dir / f"{s}.tfrecord" for s in SPLITS}
    names |= {n: out_dir / f"train_noise_prcnt{n}.tfrecord" for n in levels}
    stats = _noise_stats(levels)
    written = {k: 0 for k in names}
    with contextlib.ExitStack() as stack:
        writers = {k: stack.enter_context(atomic_tfrecord_writer(p)) for k, p in names.items()}
        bar = stack.enter_context(tqdm(total=len(items), desc="DLRSD", unit="img", disable=not progress))
        pool = stack.enter_context(ThreadPoolExecutor(workers)) if workers > 1 else None
        # scan_archive lists items grouped by scene folder, in sorted order
        tally = {"misses": {}, "resized": 0, "disagree": 0}
        for scene, loaded_items in _scene_loads(items, pool, label_table, ml_path, bar,
                                                skip_invalid, skipped, tally):
            train = []  # (stem, image, seg, label, clean bytes)
            for it, image, seg, label in loaded_items:
                raw = encode_example(image, seg, seg, label, label, it.stem, schema)
                writers[it.split].write(raw)
                written[it.split] += 1
                if it.split == "train":
                    train.append((it.stem, image, seg, label, raw))
            for n in levels:
                noisy = _scene_noise([t[2] for t in train], [t[3] for t in train], n, seed,
                                     scene, stats)
                for (stem, image, seg, label, raw), (nmap, nlabel) in zip(train, noisy):
                    if nmap is None:  # unchanged: identical to the clean record
                        writers[n].write(raw)
                    else:
                        writers[n].write(encode_example(image, seg, nmap, label, nlabel, stem, schema))
                    written[n] += 1
        for s in SPLITS:
            if written[s] == 0:
                raise ValueError(f"{out_dir}: split '{s}' is empty after skipping invalid items")
    report.records = {str(k): v for k, v in written.items()}
    report.skipped = skipped
    return _finish_report(report, out_dir, stats, tally, t0)


def _prepare_shards(items, out_dir, report, levels, *, seed, schema, label_table, ml_path, skipped,
                    skip_invalid, progress, workers, shard_size, shard, t0):
    """The shards layout of ``prepare``: the noise is drawn per class folder exactly as for the
    files layout (the maps are read once for it), then the clean records are written as shards
    by worker processes and each level's noisy labels and map remaps as an overlay."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from archives import overlay, shards

    kept = {s: [] for s in SPLITS}  # (item, label) in name order
    noisy = {n: {} for n in levels}  # level -> stem -> (noisy label, lut)
    stats = _noise_stats(levels)
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(tqdm(total=len(items), desc="DLRSD labels and noise",
                                       unit="img", disable=not progress))
        pool = stack.enter_context(ThreadPoolExecutor(workers)) if workers > 1 else None
        tally = {"misses": {}, "resized": 0, "disagree": 0}
        for scene, loaded_items in _scene_loads(items, pool, label_table, ml_path, bar,
                                                skip_invalid, skipped, tally):
            train = []
            for it, _, seg, label in loaded_items:
                kept[it.split].append((it, label))
                if it.split == "train":
                    train.append((it.stem, seg, label))
            for n in levels:
                drawn = _scene_noise([t[1] for t in train], [t[2] for t in train], n, seed,
                                     scene, stats)
                for (stem, seg, _), (nmap, nlabel) in zip(train, drawn):
                    noisy[n][stem] = (nlabel, overlay.lut_from_maps(seg, nmap, NB_CLASS))
    for s in SPLITS:
        if not kept[s]:
            raise ValueError(f"{out_dir}: split '{s}' is empty after skipping invalid items")
    split_items = {s: [(str(it.image_path), str(it.map_path), it.stem, label, schema)
                       for it, label in kept[s]] for s in SPLITS}
    results = shards.run(out_dir, split_items, encode=encode_shard_item, seed=seed,
                         per_shard=shards.records_per_shard(shard_size or shards.DEFAULT_SHARD_SIZE,
                                                            RECORD_BYTES),
                         workers=workers, select=shards.parse_select(shard),
                         skip_invalid=skip_invalid, progress=progress)
    report.skipped = skipped
    if results is None:
        return shards.task_report(report, shard, t0)
    stems = [it.stem for it, _ in kept["train"]]

    def arrays(n, rows):
        return {"noisy_label": np.stack([noisy[n][stems[r]][0] for r in rows]),
                "map_lut": np.stack([noisy[n][stems[r]][1] for r in rows])}

    split_meta, overlays = shards.finish(out_dir, INFO, report, results, levels, seed, arrays)
    return _finish_report(report, out_dir, stats, tally, t0, splits=split_meta, overlays=overlays)
