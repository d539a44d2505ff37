"""BigEarthNet v2.0 (reBEN) raw layout: recognition, parquet metadata, CORINE code table, patch readers.

docs/data.md, 'Getting the real data'. Under one root::

    BigEarthNet-S2/<tile>/<patch>/<patch>_<band>.tif           12 bands, uint16, 120/60/20 px
    BigEarthNet-S1/<S1 product>/<S1 patch>/<S1 patch>_VV.tif   float32 dB, 120x120 (and _VH)
    Reference_Maps/<tile>/<patch>/<patch>_reference_map.tif    uint16 CORINE level-3 codes, 120x120
    metadata.parquet                                           one row per usable patch
    metadata_for_patches_with_snow_cloud_or_shadow.parquet     patches left out of every split

``<tile>`` is the patch name without its last two ``_``-fields (``..._T33UUP_75_43`` ->
``..._T33UUP``); ``<S1 product>`` is the S1 patch name without its last three (``..._33UUP_70_48``).

What a later integration (prep, pipeline) gets from here:

* ``detect_layout(root)`` -> ``"v2"`` or ``"v1"`` (ValueError naming what is missing for a
  half v2 root); ``Layout.at(root)`` -> the paths above.
* ``read_metadata(layout, skip_invalid, skipped)`` -> ``Metadata``: ``patches`` (list of str,
  sorted), ``split`` (str array of "train"/"val"/"test"), ``labels`` float32 (N, 19) multi-hot
  in the nomenclature order of ``archives.ben.CLASS_NAMES``, ``label_names`` (19-class names in
  class-id order per patch), ``s1_names``, ``s2v1_names`` (None where null), ``countries``;
  ``splits()`` -> {"train"|"val"|"test": [patch, ...]}; ``csv_splits(meta, csvs)`` -> the same
  from -train/-val/-test CSV files (v2 names, or v1 names through ``s2v1_name``).
* ``codes_to_classes(codes)`` -> int8 array of the same shape, 19-class id or -1.
* ``read_s2_bands`` -> {band: uint16 (size, size)} at each band's native size (BAND_SIZES of
  archives.ben; the 60->120 bicubic resize stays in the TFRecord parser as for v1);
  ``read_s2_record_bands`` -> exactly ``archives.ben.read_patch_bands``' output (encode with
  ``archives.ben.encode_examples``); ``read_s1`` -> float32 (120, 120, 2), channels VV, VH (dB);
  ``read_reference_map`` -> int8 (120, 120) class ids in -1..18; ``read_patch`` -> a dict of
  those under "s2", "s1", "map"; ``read_patch_worker`` for process pools; ``iter_patches`` for
  one process with ``skip_invalid``; ``check_present`` drops (or names) the rows whose folders
  or map are missing before anything is read.
* ``BAND_STATS`` (12 S2 bands + VV, VH: mean/std of the v2 train split), ``S1_BANDS``.

Bad input is ``archives.ben.InvalidPatch`` (a ValueError naming the file and what was expected)
for one patch or one parquet row, skippable through ``archives.common.skip_or_raise``;
``InvalidMetadata`` (ValueError) for a parquet file that cannot be used at all.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from archives import ben, registry
from archives.ben import InvalidPatch

S2_DIR, S1_DIR, MAPS_DIR = "BigEarthNet-S2", "BigEarthNet-S1", "Reference_Maps"
METADATA = "metadata.parquet"
EXCLUDED_METADATA = "metadata_for_patches_with_snow_cloud_or_shadow.parquet"
REQUIRED_COLUMNS = ("patch_id", "labels", "split", "s1_name")
OPTIONAL_COLUMNS = ("country", "s2v1_name", "contains_seasonal_snow", "contains_cloud_or_shadow")
FLAG_COLUMNS = ("contains_seasonal_snow", "contains_cloud_or_shadow")
SPLIT_VALUES = {"train": "train", "validation": "val", "test": "test"}  # parquet -> project
PATCH_SIZE = 120
S1_BANDS = ("VV", "VH")
PARTS = ("s2", "s1", "map")

# 19-class id of every CORINE level-3 code that has one (the release's table); every other code,
# 999 (no CORINE data) included, is unlabelled (-1)
CORINE_TO_CLASS = {
    111: 0, 112: 0, 121: 1, 211: 2, 212: 2, 213: 2, 221: 3, 222: 3, 223: 3, 241: 3, 231: 4,
    242: 5, 243: 6, 244: 7, 311: 8, 312: 9, 313: 10, 321: 11, 333: 11, 322: 12, 323: 12,
    324: 13, 331: 14, 411: 15, 412: 15, 421: 16, 422: 16, 511: 17, 512: 17, 521: 18, 522: 18,
    523: 18,
}
UNLABELLED_CODES = (122, 123, 124, 131, 132, 133, 141, 142, 332, 334, 335, 423, 999)
_CODE_LUT = np.full(65536, -1, np.int8)
_CODE_LUT[list(CORINE_TO_CLASS)] = list(CORINE_TO_CLASS.values())

BAND_STATS = registry.BENV2_BAND_STATS  # v2 train split statistics, in the registry


class InvalidMetadata(ValueError):
    """A metadata parquet file that cannot be used; the message names the file."""


# ---------------------------------------------------------------- layout

@dataclass(frozen=True)
class Layout:
    root: Path
    s2: Path
    s1: Path
    maps: Path
    metadata: Path
    excluded_metadata: Path

    @classmethod
    def at(cls, root: str | os.PathLike) -> "Layout":
        root = Path(root)
        return cls(root, root / S2_DIR, root / S1_DIR, root / MAPS_DIR, root / METADATA,
                   root / EXCLUDED_METADATA)

    def s2_dir(self, patch: str) -> Path:
        return self.s2 / tile_of(patch) / patch

    def s1_dir(self, s1_name: str) -> Path:
        return self.s1 / s1_product_of(s1_name) / s1_name

    def s1_path(self, s1_name: str, band: str) -> Path:
        return self.s1_dir(s1_name) / f"{s1_name}_{band}.tif"

    def map_path(self, patch: str) -> Path:
        return self.maps / tile_of(patch) / patch / f"{patch}_reference_map.tif"


def tile_of(patch: str) -> str:
    """S2 tile folder of a v2 patch name (the name without its ``_<h>_<v>`` ending)."""
    parts = patch.rsplit("_", 2)
    if len(parts) != 3 or not parts[0]:
        raise InvalidPatch(f"{patch}: not a v2 S2 patch name (expected <tile>_<h>_<v>)")
    return parts[0]


def s1_product_of(s1_name: str) -> str:
    """S1 product folder of an S1 patch name (the name without its ``_<tile>_<h>_<v>`` ending)."""
    parts = s1_name.rsplit("_", 3)
    if len(parts) != 4 or not parts[0]:
        raise InvalidPatch(f"{s1_name}: not a v2 S1 patch name (expected <product>_<tile>_<h>_<v>)")
    return parts[0]


def detect_layout(root: str | os.PathLike) -> str:
    """"v2" when ``root`` holds BigEarthNet-S2/ and metadata.parquet, "v1" for any other
    existing folder (the v1 reader judges its content). ValueError naming the root when it does
    not exist, when only one of the two v2 parts is there, or when ``root`` is the S2 folder of
    a v2 root rather than the root itself."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: BigEarthNet root folder does not exist")
    lay = Layout.at(root)
    has_s2, has_meta = lay.s2.is_dir(), lay.metadata.is_file()
    if has_s2 and has_meta:
        return "v2"
    if has_s2 or has_meta:
        missing = METADATA if has_s2 else f"{S2_DIR}/"
        raise ValueError(f"{root}: looks like a BigEarthNet v2.0 root but {missing} is missing "
                         f"(expected {S2_DIR}/ and {METADATA} side by side)")
    if root.name == S2_DIR and (root.parent / METADATA).is_file():
        raise ValueError(f"{root}: this is the S2 folder of a BigEarthNet v2.0 download; give its "
                         f"parent {root.parent}, which holds {METADATA}")
    return "v1"


# ---------------------------------------------------------------- CORINE codes

def codes_to_classes(codes) -> np.ndarray:
    """19-class ids (int8, same shape) of CORINE level-3 codes; unmapped codes and 999 -> -1."""
    codes = np.asarray(codes)
    if codes.dtype == np.uint16:
        return _CODE_LUT[codes]
    inside = (codes >= 0) & (codes < _CODE_LUT.size)
    return np.where(inside, _CODE_LUT[np.where(inside, codes, 0).astype(np.intp)], -1).astype(np.int8)


# ---------------------------------------------------------------- parquet metadata

@dataclass
class Metadata:
    """The usable rows of metadata.parquet, sorted by patch name (see module docstring)."""
    patches: list
    split: np.ndarray
    labels: np.ndarray
    label_names: list
    s1_names: list
    s2v1_names: list
    countries: list
    source: str = ""
    left_out: int = 0                    # rows flagged or listed as snow / cloud / shadow
    excluded: frozenset = field(default_factory=frozenset)

    def __len__(self) -> int:
        return len(self.patches)

    def splits(self) -> dict:
        return {s: [p for p, t in zip(self.patches, self.split) if t == s]
                for s in SPLIT_VALUES.values()}

    def subset(self, keep: Sequence[int]) -> "Metadata":
        """The rows at positions ``keep`` (same order), other fields kept."""
        keep = list(keep)
        pick = lambda xs: [xs[i] for i in keep]  # noqa: E731
        return Metadata(pick(self.patches), self.split[keep], self.labels[keep],
                        pick(self.label_names), pick(self.s1_names), pick(self.s2v1_names),
                        pick(self.countries), self.source, self.left_out, self.excluded)


def read_parquet(path: str | os.PathLike, required: Sequence[str] = REQUIRED_COLUMNS):
    """A parquet file as a pyarrow Table with the ``required`` columns and whichever of
    OPTIONAL_COLUMNS it has; InvalidMetadata naming the file when it is missing, unreadable or
    lacks a required column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise InvalidMetadata(f"{path}: metadata parquet file does not exist")
    try:
        names = pq.read_schema(path).names
        missing = [c for c in required if c not in names]
        if missing:
            raise InvalidMetadata(f"{path}: column(s) {', '.join(missing)} missing; expected "
                                  f"{', '.join(required)} (found: {', '.join(names)})")
        cols = list(required) + [c for c in OPTIONAL_COLUMNS if c in names and c not in required]
        return pq.read_table(path, columns=cols)
    except (pa.ArrowException, OSError) as err:
        raise InvalidMetadata(f"{path}: metadata parquet cannot be read ({err})") from None


def _strings(table, column: str, path: Path) -> list:
    import pyarrow as pa

    col = table.column(column)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
            or pa.types.is_null(col.type)):
        raise InvalidMetadata(f"{path}: column {column} has type {col.type}, expected strings")
    return col.to_pylist()


def excluded_patches(layout: Layout) -> frozenset:
    """patch_id of every row of the snow/cloud/shadow parquet; empty when the file is absent."""
    if not layout.excluded_metadata.is_file():
        return frozenset()
    table = read_parquet(layout.excluded_metadata, required=("patch_id",))
    return frozenset(_strings(table, "patch_id", layout.excluded_metadata))


def _label_ids(table, path: Path) -> tuple[np.ndarray, np.ndarray, list]:
    """(row index, class id or -1) per label entry of the ``labels`` list column, and the
    rows whose list is null."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table.column("labels")
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)) or \
            not (pa.types.is_string(col.type.value_type) or pa.types.is_large_string(col.type.value_type)):
        raise InvalidMetadata(f"{path}: column labels has type {col.type}, expected a list of "
                              "class names")
    col = col.combine_chunks()
    rows = pc.list_parent_indices(col).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(col)
    ids = pc.index_in(flat, value_set=pa.array(ben.CLASS_NAMES, type=flat.type))
    ids = ids.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    null_rows = np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False)).tolist()
    return rows.astype(np.int64), ids, null_rows


def read_metadata(layout: Layout, skip_invalid: bool = False,
                  skipped: list | None = None) -> Metadata:
    """The usable rows of ``metadata.parquet``: rows flagged with snow or cloud/shadow, or listed
    in the snow/cloud/shadow parquet, are left out (counted in ``left_out``). A row with a label
    outside the 19-class nomenclature, a split other than train/validation/test, a null
    ``labels`` or ``s1_name``, a malformed patch name, or a ``patch_id`` / ``s1_name`` that is
    not one plain folder name (a path separator or ``..``: ``archives.ben.name_problem``) raises
    InvalidPatch naming the parquet and the patch, or is skipped and listed in ``skipped``; a
    repeated patch_id raises."""
    from archives.common import skip_or_raise

    skipped = [] if skipped is None else skipped
    path = layout.metadata
    table = read_parquet(path)
    n = table.num_rows
    patches = _strings(table, "patch_id", path)
    splits = _strings(table, "split", path)
    s1 = _strings(table, "s1_name", path)
    s2v1 = _strings(table, "s2v1_name", path) if "s2v1_name" in table.column_names else [None] * n
    country = _strings(table, "country", path) if "country" in table.column_names else [None] * n
    rows, ids, null_rows = _label_ids(table, path)

    excluded = excluded_patches(layout)
    drop = np.array([p in excluded for p in patches], bool)
    for flag in FLAG_COLUMNS:
        if flag in table.column_names:
            values = table.column(flag).fill_null(False).to_numpy(zero_copy_only=False)
            drop |= np.asarray(values, bool)

    labels = np.zeros((n, ben.NB_CLASS), np.float32)
    known = ids >= 0
    labels[rows[known], ids[known]] = 1.0
    bad: dict[int, str] = {}
    if not known.all():  # name the first unknown label of each row
        import pyarrow.compute as pc

        flat = pc.list_flatten(table.column("labels").combine_chunks()).to_pylist()
        for j in np.flatnonzero(~known).tolist():
            bad.setdefault(int(rows[j]), f"label {flat[j]!r} is not in the 19-class BigEarthNet "
                                         "nomenclature")
    for r in null_rows:
        bad[r] = "labels is null (expected a list of 19-class names)"
    for r, (p, s, s1n) in enumerate(zip(patches, splits, s1)):
        if r in bad:
            continue
        if p is None:
            bad[r] = "patch_id is null"
        elif s not in SPLIT_VALUES:
            bad[r] = f"split {s!r} is not one of {', '.join(SPLIT_VALUES)}"
        elif s1n is None:
            bad[r] = "s1_name is null (expected the paired S1 patch name)"
        elif ben.name_problem(p) or ben.name_problem(s1n):
            column, value = ("patch_id", p) if ben.name_problem(p) else ("s1_name", s1n)
            bad[r] = (f"{column} {value!r} is not a folder name ({ben.name_problem(value)}); "
                      "names must not leave the root")
        else:
            try:
                tile_of(p)
                s1_product_of(s1n)
            except InvalidPatch as err:
                bad[r] = str(err)

    keep, seen = [], {}
    for r in range(n):
        if drop[r]:
            continue
        if r in bad:
            msg = f"{path}: row {r} (patch {patches[r]}): {bad[r]}"
            skip_or_raise(InvalidPatch(msg), skip_invalid, skipped, f"{path}:{patches[r]}", msg)
            continue
        if patches[r] in seen:
            raise InvalidMetadata(f"{path}: patch {patches[r]} is listed twice "
                                  f"(rows {seen[patches[r]]} and {r})")
        seen[patches[r]] = r
        keep.append(r)
    keep.sort(key=lambda r: patches[r])
    names = [[ben.CLASS_NAMES[c] for c in np.flatnonzero(labels[r])] for r in keep]
    split = np.array([SPLIT_VALUES[splits[r]] for r in keep], dtype="<U5")
    return Metadata([patches[r] for r in keep], split, labels[keep], names, [s1[r] for r in keep], [s2v1[r] for r in keep],
                    [country[r] for r in keep], str(path), int(drop.sum()), excluded)


def csv_splits(meta: Metadata, csvs: dict, skip_invalid: bool = False,
               skipped: list | None = None) -> tuple[dict, int]:
    """Patch names per split from the -train/-val/-test CSV files (``archives.ben.read_split_csv``
    format) instead of the parquet's ``split`` column; labels still come from the parquet.

    A CSV name is looked up as a v2 ``patch_id``, else as a v1 name through ``s2v1_name`` (so v1
    split files keep working). A name found in neither, or a snow/cloud/shadow patch, raises
    InvalidPatch naming the CSV (or is skipped and listed); a patch in two splits raises.
    Returns ({"train"|"val"|"test": [v2 patch, ...]}, count of names found through s2v1_name).
    """
    from archives.common import skip_or_raise

    skipped = [] if skipped is None else skipped
    splits_ = tuple(SPLIT_VALUES.values())
    given = {s: p for s, p in csvs.items() if p}
    if set(given) != set(splits_):
        missing = [s for s in splits_ if s not in given]
        raise ValueError(f"give all three split files (-train, -val, -test) or none; "
                         f"missing: {', '.join(missing)}")
    known = set(meta.patches)
    from_v1 = {v1: p for p, v1 in zip(meta.patches, meta.s2v1_names) if v1}
    out, seen, via_v1 = {}, {}, 0
    for split in splits_:
        out[split] = []
        for name in ben.read_split_csv(given[split]):  # a repeat is read_split_csv's error
            patch = name if name in known else from_v1.get(name)
            if patch is None:
                why = ("is a snow/cloud/shadow patch, left out of every split" if name in meta.excluded
                       else f"is in {METADATA} neither as patch_id nor as s2v1_name")
                msg = f"{given[split]}: patch {name} {why}"
                skip_or_raise(InvalidPatch(msg), skip_invalid, skipped, given[split], msg)
                continue
            if patch in seen:
                raise ValueError(f"{given[split]}: patch {name} is also listed in "
                                 f"{given[seen[patch]]}; splits must not overlap")
            seen[patch] = split
            via_v1 += patch != name
            out[split].append(patch)
    return out, via_v1


# ---------------------------------------------------------------- one patch

def _check_shape(arr: np.ndarray, path: Path, what: str) -> None:
    if arr.shape != (PATCH_SIZE, PATCH_SIZE):
        raise InvalidPatch(f"{path}: {what} is {arr.shape[0]}x{arr.shape[1]}, expected "
                           f"{PATCH_SIZE}x{PATCH_SIZE}")


def _s2_folder(layout: Layout, patch: str) -> Path:
    folder = layout.s2_dir(patch)
    if not folder.is_dir():
        raise InvalidPatch(f"{folder}: S2 folder of patch {patch} (listed in {METADATA}) is missing")
    return folder


def read_s2_bands(layout: Layout, patch: str) -> dict:
    """{band: uint16 (size, size)} for the 12 bands of ``archives.ben.BAND_NAMES`` at their
    native sizes; InvalidPatch naming the folder or band file that is missing or wrong."""
    import rasterio

    folder = _s2_folder(layout, patch)
    with rasterio.Env():
        out = {b: ben.read_band(folder.parent, patch, b) for b in ben.BAND_NAMES}
    return {b: ben.to_uint16(a, str(ben.band_path(folder.parent, patch, b))) for b, a in out.items()}


def read_s2_record_bands(layout: Layout, patch: str, schema: str) -> dict:
    """``archives.ben.read_patch_bands`` of the patch's S2 folder (bytes for "compact", float32
    arrays for "published"), ready for ``archives.ben.encode_examples``."""
    folder = _s2_folder(layout, patch)
    return ben.read_patch_bands(folder.parent, patch, schema)


def read_s1(layout: Layout, s1_name: str, patch: str = "") -> np.ndarray:
    """float32 (120, 120, 2), channels VV, VH in dB; InvalidPatch when ``s1_name`` points to no
    folder, or a file is missing, not 120x120 or not floating point."""
    folder = layout.s1_dir(s1_name)
    if not folder.is_dir():
        whose = f" (s1_name of patch {patch})" if patch else ""
        raise InvalidPatch(f"{folder}: S1 folder of {s1_name}{whose} is missing")
    out = np.empty((PATCH_SIZE, PATCH_SIZE, len(S1_BANDS)), np.float32)
    for k, band in enumerate(S1_BANDS):
        path = layout.s1_path(s1_name, band)
        arr = ben.read_single_band(path, f"S1 {band} file")
        _check_shape(arr, path, f"S1 {band}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise InvalidPatch(f"{path}: S1 {band} has dtype {arr.dtype}, expected float32 "
                               "backscatter in dB")
        out[..., k] = arr
    return out


def read_reference_map(layout: Layout, patch: str) -> np.ndarray:
    """int8 (120, 120) 19-class ids (-1 unlabelled) of the patch's CORINE reference map;
    InvalidPatch when the file is missing, not 120x120 or not uint16."""
    path = layout.map_path(patch)
    codes = ben.read_single_band(path, "reference map")
    _check_shape(codes, path, "reference map")
    if codes.dtype != np.uint16:
        raise InvalidPatch(f"{path}: reference map has dtype {codes.dtype}, expected uint16 "
                           "CORINE codes")
    return _CODE_LUT[codes]


def _check_parts(parts: Iterable[str]) -> tuple:
    parts = tuple(parts)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown patch part(s) {unknown}; expected some of {PARTS}")
    return parts


def read_patch(layout: Layout, patch: str, s1_name: str | None = None,
               parts: Sequence[str] = PARTS) -> dict:
    """The requested parts of one patch: "s2" (``read_s2_bands``), "s1" (``read_s1``, needs
    ``s1_name``), "map" (``read_reference_map``)."""
    import rasterio

    out = {}
    with rasterio.Env():  # one GDAL environment for the up to 15 opens instead of one each
        for part in _check_parts(parts):
            if part == "s2":
                out["s2"] = read_s2_bands(layout, patch)
            elif part == "s1":
                if not s1_name:
                    raise InvalidPatch(f"{patch}: no s1_name given for its S1 part")
                out["s1"] = read_s1(layout, s1_name, patch)
            else:
                out["map"] = read_reference_map(layout, patch)
    return out


def read_patch_worker(args: tuple) -> tuple[str, dict | None, str | None]:
    """Process-pool entry: (root, patch, s1_name, parts) -> (patch, read_patch or None, error or None)."""
    root, patch, s1_name, parts = args
    try:
        return patch, read_patch(Layout.at(root), patch, s1_name, parts), None
    except InvalidPatch as err:
        return patch, None, str(err)


def check_present(layout: Layout, meta: Metadata, parts: Sequence[str] = PARTS,
                  skip_invalid: bool = False, skipped: list | None = None) -> Metadata:
    """``meta`` without the patches whose S2 folder, S1 folder ("s1") or reference map ("map")
    is missing: InvalidPatch naming the first missing path, or (``skip_invalid``) skipped and
    listed. Only looks for folders and files (fast: a prep can fail before writing anything);
    their content is checked when read."""
    from archives.common import skip_or_raise

    skipped = [] if skipped is None else skipped
    parts = _check_parts(parts)
    keep = []
    for i, (patch, s1_name) in enumerate(zip(meta.patches, meta.s1_names)):
        checks = [(layout.s2_dir(patch), "S2 folder of patch {p} (listed in " + METADATA + ")")]
        if "s1" in parts:
            checks.append((layout.s1_dir(s1_name), "S1 folder of {s} (s1_name of patch {p})"))
        if "map" in parts:
            checks.append((layout.map_path(patch), "reference map of patch {p}"))
        missing = next(((path, what) for path, what in checks if not path.exists()), None)
        if missing is None:
            keep.append(i)
            continue
        msg = f"{missing[0]}: " + missing[1].format(p=patch, s=s1_name) + " is missing"
        skip_or_raise(InvalidPatch(msg), skip_invalid, skipped, missing[0], msg)
    return meta.subset(keep)


def iter_patches(layout: Layout, meta: Metadata, patches: Sequence[str] | None = None,
                 parts: Sequence[str] = PARTS, skip_invalid: bool = False,
                 skipped: list | None = None) -> Iterator[tuple[str, dict]]:
    """(patch, read_patch(...)) for ``patches`` (default: every row of ``meta``) in order, in this
    process; a patch that cannot be read raises, or is skipped and listed in ``skipped``."""
    from archives.common import skip_or_raise

    skipped = [] if skipped is None else skipped
    parts = _check_parts(parts)
    s1 = dict(zip(meta.patches, meta.s1_names))
    for patch in meta.patches if patches is None else patches:
        try:
            yield patch, read_patch(layout, patch, s1.get(patch), parts)
        except InvalidPatch as err:
            skip_or_raise(err, skip_invalid, skipped, layout.s2_dir(patch), str(err))
