"""Pixel-map label noise for BigEarthNet v2.0: the DLRSD rule (docs/data.md) on reference maps.

Over the whole train split: the (patch, positive label) pairs of the clean multi-hot labels are
listed patch by patch, class by class; ``archives.noise.pick_count`` of them (the published
count, rounded down) are picked uniformly without replacement. For each picked pair whose class occurs
in the patch's map, every pixel of that class (in the clean map, so changes never chain)
becomes one other of the 19 classes, drawn uniformly per pick. The noisy multi-hot of a patch
with a changed region is the set of classes present in its noisy map; other patches keep their
clean label (as DLRSD's prep does). Unlabelled pixels (-1) never change.

The picks and their new classes depend on the labels only, never on the maps, so prep can plan
them once (``plan_map_noise``) and apply them while it streams the maps (``apply_picks``);
``inject_map_noise`` does both for maps held in memory. What integration gets:

* ``plan_map_noise(clean (N, 19), percent, rng)`` -> int64 (K, 3): patch row, class, new class,
  sorted by row then class; ``picks_per_patch(plan, N)`` -> list of N (k, 2) arrays (class, new);
* ``apply_picks(map int (120, 120), picks (k, 2))`` -> (noisy map int8 or None when unchanged,
  changed pair count); ``noisy_multi_hot(clean row, noisy map or None)`` -> float32 (19,);
* ``inject_map_noise(maps, clean, percent, rng)`` -> (list of noisy maps or None, noisy labels
  float32 (N, 19), stats ready for ``archives.report.PrepReport.noise_entry(**stats)``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from archives.noise import positive_pairs, sample_pairs

NB_CLASS = 19


def plan_map_noise(clean: np.ndarray, percent: int, rng: np.random.Generator) -> np.ndarray:
    """(K, 3) int64 picks (patch row, class, new class) for the multi-hot labels ``clean``."""
    clean = np.asarray(clean)
    if clean.ndim != 2 or clean.shape[1] != NB_CLASS:
        raise ValueError(f"clean labels must be (N, {NB_CLASS}), got shape {clean.shape}")
    pairs = positive_pairs(clean)
    picked = pairs[sample_pairs(len(pairs), percent, rng)]  # the published count, rounded down
    new = rng.integers(NB_CLASS - 1, size=len(picked))
    new += new >= picked[:, 1]  # uniform over the 18 classes other than the picked one
    return np.column_stack([picked, new]).astype(np.int64)


def picks_per_patch(plan: np.ndarray, n: int) -> list:
    """The plan's (class, new class) rows of each of the ``n`` patches, in patch order."""
    bounds = np.searchsorted(plan[:, 0], np.arange(n + 1))
    return [plan[bounds[i]:bounds[i + 1], 1:] for i in range(n)]


def apply_picks(seg_map: np.ndarray, picks: np.ndarray) -> tuple[np.ndarray | None, int]:
    """(noisy copy of ``seg_map`` as int8, or None when no picked class occurs in it; the number
    of picks whose class occurs). Masks come from the clean map, so changes never chain."""
    seg_map = np.asarray(seg_map)
    out, changed = None, 0
    for c, new in picks:
        mask = seg_map == c
        if not mask.any():
            continue
        if out is None:
            out = seg_map.astype(np.int8, copy=True)
        out[mask] = new
        changed += 1
    return out, changed


def classes_present(seg_map: np.ndarray) -> np.ndarray:
    """float32 (19,) multi-hot of the classes occurring in a class-id map (-1 ignored)."""
    counts = np.bincount(np.asarray(seg_map).ravel().astype(np.int64) + 1, minlength=NB_CLASS + 1)
    return (counts[1:NB_CLASS + 1] > 0).astype(np.float32)


def noisy_multi_hot(clean_row: np.ndarray, noisy_map: np.ndarray | None) -> np.ndarray:
    """The classes of ``noisy_map``, or the clean label when the map is unchanged (None)."""
    if noisy_map is None:
        return np.asarray(clean_row, np.float32)
    return classes_present(noisy_map)


def inject_map_noise(seg_maps: Sequence[np.ndarray], clean: np.ndarray, percent: int,
                     rng: np.random.Generator):
    """Noise for maps held in memory: (noisy maps, None where unchanged; noisy labels float32
    (N, 19); stats with pairs_total, pairs_picked, pairs_changed, images_total, images_changed)."""
    clean = np.asarray(clean, np.float32)
    if len(seg_maps) != len(clean):
        raise ValueError(f"{len(seg_maps)} maps but {len(clean)} label rows")
    plan = plan_map_noise(clean, percent, rng)
    maps, labels, changed = [], np.empty_like(clean), 0
    for i, (seg, picks) in enumerate(zip(seg_maps, picks_per_patch(plan, len(clean)))):
        noisy, n = apply_picks(seg, picks)
        maps.append(noisy)
        labels[i] = noisy_multi_hot(clean[i], noisy)
        changed += n
    stats = {"pairs_total": int((clean > 0.5).sum()), "pairs_picked": len(plan),
             "pairs_changed": changed, "images_total": len(clean),
             "images_changed": int((labels != clean).any(axis=1).sum())}
    return maps, labels, stats
