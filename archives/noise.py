"""Label-noise injection helpers shared by the archive modules (docs/data.md, "Preparing the
records", Label noise)."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def check_levels(levels) -> list[int]:
    """Noise levels as a sorted list of distinct ints; ValueError naming a level outside 1..99."""
    out = sorted({int(n) for n in levels})
    for n in out:
        if not 0 < n < 100:
            raise ValueError(f"noise level {n} is outside 1..99 (levels given: {out})")
    return out


def pick_count(pairs_count: int, prcnt: float) -> int:
    """Number of pairs to pick: ``prcnt`` % of ``pairs_count``, rounded down.

    Written as the published prep scripts compute it, ``int(pairs * N * 0.01)``, so a user gets
    exactly the published amount of noise (docs/data.md, "Preparing the records", Label noise)."""
    return int(pairs_count * prcnt * 0.01)


def sample_pairs(pairs_count: int, prcnt: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``prcnt`` % of ``pairs_count`` pairs, uniform without replacement."""
    if not 0 <= prcnt <= 100:
        raise ValueError(f"noise percentage must be in 0..100, got {prcnt}")
    k = pick_count(pairs_count, prcnt)
    return np.sort(rng.choice(pairs_count, size=k, replace=False)) if k else np.zeros(0, np.int64)


def positive_pairs(labels: np.ndarray) -> np.ndarray:
    """(P, 2) int array of (sample index, class id) for every positive entry of a multi-hot matrix,
    ordered by sample then class."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return np.zeros((0, 2), np.int64)
    return np.argwhere(labels > 0.5).astype(np.int64)


def other_class(c: int, nb_class: int, rng: np.random.Generator) -> int:
    """A class id drawn uniformly from the ``nb_class - 1`` ids other than ``c``."""
    k = int(rng.integers(nb_class - 1))
    return k if k < c else k + 1


def inject_map_noise(seg_maps: Sequence[np.ndarray], labels: np.ndarray, prcnt: float,
                     rng: np.random.Generator, nb_class: int):
    """DLRSD noise for the train images of one class folder.

    Picks ``prcnt`` % of the (image, positive label) pairs; for each picked pair whose class occurs
    in the image's map, all pixels of that class (in the clean map, so changes never chain) become
    one other class drawn per change. Returns (list with a noisy map or None where the map is
    unchanged, stats dict with pairs_total, pairs_picked, pairs_changed).
    """
    pairs = positive_pairs(labels)
    picked = sample_pairs(len(pairs), prcnt, rng)
    out: list = [None] * len(seg_maps)
    changed = 0
    for i, c in pairs[picked]:
        mask = seg_maps[i] == c
        if not mask.any():
            continue
        if out[i] is None:
            out[i] = np.array(seg_maps[i], copy=True)
        out[i][mask] = other_class(int(c), nb_class, rng)
        changed += 1
    return out, {"pairs_total": len(pairs), "pairs_picked": len(picked), "pairs_changed": changed}
