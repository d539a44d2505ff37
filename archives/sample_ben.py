"""A small BigEarthNet-S2-style archive in exactly the real layout, deterministic by seed.

``<root>/<patch>/<patch>_<band>.tif``: 12 single-band uint16 GeoTIFFs (10/20/60 m pixels,
120/60/20 px, EPSG:32632), ``<patch>/<patch>_labels_metadata.json`` (``labels`` with 43-class
CORINE names that all map into the 19 classes, plus ``coordinates``, ``projection``,
``tile_source``, ``acquisition_date``) and ``train.csv``, ``val.csv``, ``test.csv`` in the root.

Each label of a patch owns a region (Voronoi cell) whose pixels follow a class-specific
spectral signature and texture plus noise, so a model can learn the labels from the pixels.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from archives import ben

CRS_EPSG = 32632
TILES = (("S2A_MSIL2A_20170613T101031", "T32UNU"), ("S2B_MSIL2A_20170924T103019", "T32TMT"),
         ("S2A_MSIL2A_20180329T102021", "T32ULC"))
PIXEL_M = {120: 10, 60: 20, 20: 60}
SPLIT_SHARES = (("train", 0.6), ("val", 0.2), ("test", 0.2))


def class_signatures() -> tuple[np.ndarray, np.ndarray]:
    """Per 19-class spectral signature (19, 12 bands) in reflectance units and texture
    parameters (19, 3): spatial frequency, orientation, relative amplitude. Fixed across seeds so
    that every sample archive shares one class appearance."""
    rng = np.random.default_rng(19)
    mean = np.array([ben.BAND_STATS["mean"][b] for b in ben.BAND_NAMES])
    std = np.array([ben.BAND_STATS["std"][b] for b in ben.BAND_NAMES])
    # around the real per-band statistics, so normalised sample images look like real ones
    z = rng.normal(0, 0.9, size=(ben.NB_CLASS, len(ben.BAND_NAMES)))
    signature = np.clip(mean + std * z, 60, None)
    texture = np.stack([rng.uniform(0.2, 1.0, ben.NB_CLASS),
                        rng.uniform(0, np.pi, ben.NB_CLASS),
                        rng.uniform(0.05, 0.3, ben.NB_CLASS)], axis=1)
    return signature, texture


def _names_43_per_class() -> list[list[str]]:
    """For each 19-class id, the 43-class names that map to it."""
    out = [[] for _ in range(ben.NB_CLASS)]
    for old in ben.OLD_CLASS_NAMES:
        new = ben.labels_43_to_19([old])
        if new:
            out[ben.CLASS_NAMES.index(new[0])].append(old)
    return out


def _render(classes: list[int], rng: np.random.Generator, signature: np.ndarray,
            texture: np.ndarray) -> np.ndarray:
    """float (12, 120, 120) reflectance with one Voronoi region per class (``class_signatures``)."""
    size = 120
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    seeds = rng.uniform(0, size, size=(len(classes), 2))
    dist = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2
    region = np.argmin(dist, axis=0)
    img = np.zeros((len(ben.BAND_NAMES), size, size))
    for k, c in enumerate(classes):
        freq, angle, amp = texture[c]
        phase = rng.uniform(0, 2 * np.pi)
        pattern = 1 + amp * np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
        mask = region == k
        img[:, mask] = signature[c][:, None] * pattern[mask][None]
    img *= 1 + 0.05 * rng.standard_normal(img.shape)
    return img


def _downsample(band: np.ndarray, size: int) -> np.ndarray:
    f = band.shape[0] // size
    return band.reshape(size, f, size, f).mean(axis=(1, 3))


def _write_patch(root: Path, patch: str, labels43: list[str], img: np.ndarray,
                 ulx: int, uly: int, tile: str, date: str) -> None:
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    folder = root / patch
    folder.mkdir(parents=True, exist_ok=True)
    crs = CRS.from_epsg(CRS_EPSG)
    for b, band in enumerate(ben.BAND_NAMES):
        size = ben.BAND_SIZES[band]
        data = np.clip(np.rint(_downsample(img[b], size)), 0, 65535).astype(np.uint16)
        res = PIXEL_M[size]
        with rasterio.open(ben.band_path(root, patch, band), "w", driver="GTiff", width=size,
                           height=size, count=1, dtype="uint16", crs=crs,
                           transform=from_origin(ulx, uly, res, res)) as dst:
            dst.write(data, 1)
    meta = {"labels": labels43,
            "coordinates": {"ulx": ulx, "uly": uly, "lrx": ulx + 1200, "lry": uly - 1200},
            "projection": crs.to_wkt(),
            "tile_source": f"{tile[:10].replace('L2A', 'L1C')}{tile[10:]}_N0205_R022_"
                           f"{dict(TILES)[tile]}_{tile[11:]}.SAFE",
            "acquisition_date": date}
    ben.metadata_path(root, patch).write_text(json.dumps(meta))


def write_sample_archive(root, seed: int = 0, n_patches: int = 60) -> Path:
    """Write ``n_patches`` patches and ``{train,val,test}.csv`` under ``root``; returns ``root``."""
    if n_patches < 3:
        raise ValueError("n_patches must be at least 3 (one patch per split)")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per_class = _names_43_per_class()
    signature, texture = class_signatures()
    cells = rng.choice(100 * 100, size=n_patches, replace=False)
    patches = []
    for i, cell in enumerate(cells):
        tile = TILES[i % len(TILES)][0]
        row, col = divmod(int(cell), 100)
        patch = f"{tile}_{row}_{col}"
        k = int(rng.choice([1, 2, 3, 4], p=[0.3, 0.35, 0.25, 0.1]))
        classes = sorted(rng.choice(ben.NB_CLASS, size=k, replace=False).tolist())
        labels43 = [per_class[c][int(rng.integers(len(per_class[c])))] for c in classes]
        date = f"{tile[11:15]}-{tile[15:17]}-{tile[17:19]} {tile[20:22]}:{tile[22:24]}:{tile[24:26]}"
        img = _render(classes, rng, signature, texture)
        _write_patch(root, patch, labels43, img, 400000 + 1200 * col, 5400000 - 1200 * row, tile,
                     date)
        patches.append(patch)
    order = rng.permutation(n_patches)
    splits, start = {}, 0
    for j, (split, share) in enumerate(SPLIT_SHARES):
        stop = n_patches if j == len(SPLIT_SHARES) - 1 else start + max(1, round(share * n_patches))
        splits[split] = [patches[o] for o in order[start:stop]]
        (root / f"{split}.csv").write_text("".join(p + "\n" for p in splits[split]))
        start = stop
    return root
