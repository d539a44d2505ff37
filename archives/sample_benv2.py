"""A small BigEarthNet v2.0 (reBEN) archive in exactly the v2 download layout, deterministic by seed.

``python -m archives.sample_benv2 --out DIR [--patches 200] [--seed 0]`` writes under DIR
(see ``archives.benv2_layout`` for the layout):

* ``BigEarthNet-S2/<tile>/<patch>/<patch>_<band>.tif``: 12 uint16 bands at 120/60/20 px over
  4 tiles, EPSG:326xx, 10/20/60 m pixels;
* ``BigEarthNet-S1/<S1 product>/<S1 patch>/<S1 patch>_{VV,VH}.tif``: float32 dB, 120x120;
* ``Reference_Maps/<tile>/<patch>/<patch>_reference_map.tif``: uint16 CORINE codes, 120x120,
  including codes that map to no 19-class id (e.g. 122, 332) and 999;
* ``metadata.parquet`` (the ``n_patches`` usable patches, all the release's columns, ``labels`` sorted
  alphabetically within each row, about a third of ``s2v1_name`` null, all three splits) and
  ``metadata_for_patches_with_snow_cloud_or_shadow.parquet`` (a few more patches, present on
  disk too, flagged with snow or cloud/shadow).

Each patch's map is a Voronoi partition whose cells carry CORINE codes; the S2 pixels of a cell
follow its 19-class signature (``archives.sample_ben.class_signatures``, an own one per
unlabelled code) with texture and noise, and the S1 pixels a per-class VV/VH backscatter with
speckle, so a model can learn the labels and the maps from either sensor. A patch's labels are
the 19 classes present in its map.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from archives import ben
from archives import benv2_layout as v2
from archives.sample_ben import PIXEL_M, _downsample, class_signatures

# (S2 tile folder, S1 product, UTM zone, country)
TILES = (("S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP", "S1A_IW_GRDH_1SDV_20170613T165043", 33,
          "Austria"),
         ("S2B_MSIL2A_20170924T103019_N9999_R108_T32TMT", "S1B_IW_GRDH_1SDV_20170924T172245", 32,
          "Switzerland"),
         ("S2A_MSIL2A_20180204T094161_N9999_R036_T35VNL", "S1B_IW_GRDH_1SDV_20180204T154712", 35,
          "Finland"),
         ("S2B_MSIL2A_20180525T112119_N9999_R037_T29SND", "S1A_IW_GRDH_1SDV_20180525T183045", 29,
          "Portugal"))
SPLIT_SHARES = (("train", 0.6), ("validation", 0.2), ("test", 0.2))
UNMAPPED_CODES = (122, 131, 142, 332, 423)  # CORINE codes without a 19-class id
NO_DATA_CODE = 999
_CODES_PER_CLASS = [[c for c, k in v2.CORINE_TO_CLASS.items() if k == cls] for cls in range(ben.NB_CLASS)]


def s1_signatures() -> np.ndarray:
    """Per 19-class mean (VV, VH) backscatter in dB, (19, 2), around the v2 statistics; VH below
    VV, waters and wetlands darker; fixed across seeds."""
    rng = np.random.default_rng(29)
    vv = v2.BAND_STATS["mean"]["VV"] + rng.uniform(-4, 5, ben.NB_CLASS)
    vh = vv - rng.uniform(4, 9.5, ben.NB_CLASS)  # cross-polarised: always weaker
    wet = [ben.CLASS_NAMES.index(n) for n in ("Inland wetlands", "Coastal wetlands",
                                              "Inland waters", "Marine waters")]
    vv[wet] -= 8
    vh[wet] -= 7
    return np.stack([vv, vh], axis=1)


def _unlabelled_signatures() -> tuple[np.ndarray, np.ndarray]:
    """S2 (len(UNMAPPED_CODES)+1, 12) and S1 (.., 2) signatures of the unlabelled codes and 999."""
    rng = np.random.default_rng(999)
    n = len(UNMAPPED_CODES) + 1
    mean = np.array([ben.BAND_STATS["mean"][b] for b in ben.BAND_NAMES])
    std = np.array([ben.BAND_STATS["std"][b] for b in ben.BAND_NAMES])
    s2 = np.clip(mean + std * rng.normal(0, 0.9, (n, len(mean))), 60, None)
    s1 = np.array([v2.BAND_STATS["mean"]["VV"], v2.BAND_STATS["mean"]["VH"]]) + rng.uniform(-3, 3, (n, 2))
    return s2, s1


def _draw_map(rng: np.random.Generator, with_unmapped: bool, with_no_data: bool) -> np.ndarray:
    """uint16 (120, 120) CORINE codes: 1-4 labelled Voronoi cells (+ an unmapped one, + a 999 one)."""
    size = v2.PATCH_SIZE
    k = int(rng.choice([1, 2, 3, 4], p=[0.25, 0.35, 0.25, 0.15]))
    classes = rng.choice(ben.NB_CLASS, size=k, replace=False)
    codes = [int(rng.choice(_CODES_PER_CLASS[c])) for c in classes]
    if with_unmapped:
        codes.append(int(rng.choice(UNMAPPED_CODES)))
    if with_no_data:
        codes.append(NO_DATA_CODE)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    seeds = rng.uniform(0, size, size=(len(codes), 2))
    dist = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2
    return np.asarray(codes, np.uint16)[np.argmin(dist, axis=0)]


def _render(codes: np.ndarray, rng: np.random.Generator, sig: dict) -> tuple[np.ndarray, np.ndarray]:
    """S2 float (12, 120, 120) reflectance and S1 float32 (120, 120, 2) dB following ``codes``."""
    size = v2.PATCH_SIZE
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    s2 = np.zeros((len(ben.BAND_NAMES), size, size))
    s1 = np.zeros((size, size, 2))
    for code in np.unique(codes).tolist():
        mask = codes == code
        cls = v2.CORINE_TO_CLASS.get(code, -1)
        if cls >= 0:
            freq, angle, amp = sig["texture"][cls]
            s2_sig, s1_sig = sig["s2"][cls], sig["s1"][cls]
        else:
            j = UNMAPPED_CODES.index(code) if code in UNMAPPED_CODES else len(UNMAPPED_CODES)
            freq, angle, amp = 0.5, 0.0, 0.1
            s2_sig, s1_sig = sig["s2_unlabelled"][j], sig["s1_unlabelled"][j]
        phase = rng.uniform(0, 2 * np.pi)
        pattern = 1 + amp * np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
        s2[:, mask] = s2_sig[:, None] * pattern[mask][None]
        s1[mask] = s1_sig + 2.0 * amp * np.sin(phase + xx[mask] * freq)[:, None]
    s2 *= 1 + 0.05 * rng.standard_normal(s2.shape)
    s1 += 1.5 * rng.standard_normal(s1.shape)  # speckle, in dB
    return s2, s1.astype(np.float32)


def _write_tif(path: Path, data: np.ndarray, crs, ulx: float, uly: float, res: float) -> None:
    import rasterio

    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0],
                       count=1, dtype=data.dtype.name, crs=crs,
                       transform=rasterio.Affine(res, 0, ulx, 0, -res, uly)) as dst:
        dst.write(data, 1)


def _write_patch(lay: v2.Layout, patch: str, s1_name: str, zone: int, cell: tuple[int, int],
                 rng: np.random.Generator, sig: dict, snow: bool, unmapped: bool,
                 no_data: bool) -> np.ndarray:
    """Write the S2 bands, S1 VV/VH and reference map of one patch; returns its code map."""
    from rasterio.crs import CRS

    crs = CRS.from_epsg(32600 + zone)
    ulx, uly = 300000 + 1200 * cell[1], 5500000 - 1200 * cell[0]
    codes = _draw_map(rng, with_unmapped=unmapped, with_no_data=no_data)
    s2, s1 = _render(codes, rng, sig)
    if snow:
        s2 = s2 * 0.3 + 9000.0
    folder = lay.s2_dir(patch)
    for b, band in enumerate(ben.BAND_NAMES):
        size = ben.BAND_SIZES[band]
        data = np.clip(np.rint(_downsample(s2[b], size)), 0, 65535).astype(np.uint16)
        _write_tif(ben.band_path(folder.parent, patch, band), data, crs, ulx, uly, PIXEL_M[size])
    for k, band in enumerate(v2.S1_BANDS):
        _write_tif(lay.s1_path(s1_name, band), np.ascontiguousarray(s1[..., k]), crs, ulx, uly, 10)
    _write_tif(lay.map_path(patch), codes, crs, ulx, uly, 10)
    return codes


def _write_parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from atomic_files import atomic_path

    schema = pa.schema([("patch_id", pa.string()), ("labels", pa.list_(pa.string())),
                        ("split", pa.string()), ("country", pa.string()), ("s1_name", pa.string()),
                        ("s2v1_name", pa.string()), ("contains_seasonal_snow", pa.bool_()),
                        ("contains_cloud_or_shadow", pa.bool_())])
    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_sample_archive(root, seed: int = 0, n_patches: int = 200,
                         n_excluded: int | None = None) -> Path:
    """Write ``n_patches`` usable patches (listed in metadata.parquet, all three splits) and
    ``n_excluded`` snow/cloud/shadow patches (default n_patches // 20, at least 1) under ``root``;
    returns ``root``."""
    if n_patches < 3:
        raise ValueError("n_patches must be at least 3 (one patch per split)")
    n_excluded = max(1, n_patches // 20) if n_excluded is None else n_excluded
    lay = v2.Layout.at(root)
    lay.root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 2])
    s2_sig, texture = class_signatures()
    s2_un, s1_un = _unlabelled_signatures()
    sig = {"s2": s2_sig, "texture": texture, "s1": s1_signatures(), "s2_unlabelled": s2_un,
           "s1_unlabelled": s1_un}
    total = n_patches + n_excluded
    cells = rng.choice(100 * 100, size=total, replace=False)
    split_of = np.empty(n_patches, dtype=object)
    order, start = rng.permutation(n_patches), 0
    for j, (split, share) in enumerate(SPLIT_SHARES):
        stop = n_patches if j == len(SPLIT_SHARES) - 1 else start + max(1, round(share * n_patches))
        split_of[order[start:stop]] = split
        start = stop
    rows, flagged = [], []
    for i, cell in enumerate(cells):
        tile, product, zone, country = TILES[i % len(TILES)]
        h, v = divmod(int(cell), 100)
        patch = f"{tile}_{h}_{v}"
        s1_name = f"{product}_{tile[-5:]}_{(h + 3) % 100}_{(v + 97) % 100}"
        excluded = i >= n_patches
        snow = excluded and rng.random() < 0.5
        # every 4th patch has an unlabelled CORINE code, every 7th a 999 (no data) region
        codes = _write_patch(lay, patch, s1_name, zone, (h, v), rng, sig, snow=snow,
                             unmapped=i % 4 == 1 or rng.random() < 0.2,
                             no_data=i % 7 == 2 or rng.random() < 0.05)
        present = np.unique(v2.codes_to_classes(codes))
        labels = sorted(ben.CLASS_NAMES[c] for c in present if c >= 0)
        v1 = None if rng.random() < 0.35 else \
            f"{tile[:26]}_{int(rng.integers(100))}_{int(rng.integers(100))}"
        row = {"patch_id": patch, "labels": labels, "country": country, "s1_name": s1_name,
               "s2v1_name": v1, "contains_seasonal_snow": snow,
               "contains_cloud_or_shadow": excluded and not snow}
        if excluded:
            flagged.append({**row, "split": str(SPLIT_SHARES[i % 3][0])})
        else:
            rows.append({**row, "split": str(split_of[i])})
    _write_parquet(lay.metadata, rows)
    _write_parquet(lay.excluded_metadata, flagged)
    return lay.root


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder to write the archive into")
    p.add_argument("--patches", type=int, default=200, help="usable patches (metadata.parquet rows)")
    p.add_argument("--excluded", type=int, default=None,
                   help="snow/cloud/shadow patches (default: patches // 20)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    out = write_sample_archive(a.out, seed=a.seed, n_patches=a.patches, n_excluded=a.excluded)
    print(f"BENv2 sample archive written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
