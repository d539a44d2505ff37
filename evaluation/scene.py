"""Scene-class relevance (MiLaN's evaluation): relevant = same UC Merced scene class.

The scene class comes from the patch name: a DLRSD / UC Merced stem is ``<scene><NN>``
(e.g. ``denseresidential07``), so the class is the name without its trailing digits. Labels
become one-hot (N, 21) in DLRSD's ``scene_classes`` order (archives/registry.py); with them the
ranking metrics of evaluation/metrics.py give MiLaN's numbers: mAP@20 with AP's denominator =
relevant items within the top 20. Every test image queries the rest of the test set, itself excluded.
"""
from __future__ import annotations

import re

import numpy as np

from archives.registry import DLRSD
from evaluation.features import FeatureFileError, FeatureSet

SCENE_CLASSES = list(DLRSD.scene_classes)
_STEM = re.compile(r"^([a-z_ ]+?)_?\d+$")


def scene_of(patch_name) -> str:
    """``denseresidential07`` -> ``denseresidential``; ValueError for other names."""
    name = patch_name.decode() if isinstance(patch_name, bytes) else str(patch_name)
    m = _STEM.match(name.strip().lower())
    if not m or m.group(1) not in SCENE_CLASSES:
        raise ValueError(f"patch name {name!r} is not a UC Merced <scene><NN> stem "
                         f"(scenes: {', '.join(SCENE_CLASSES)})")
    return m.group(1)


def scene_labels(patch_names) -> np.ndarray:
    """One-hot scene classes (N, 21) float32 from patch names."""
    ids = np.array([SCENE_CLASSES.index(scene_of(n)) for n in patch_names], np.int64)
    out = np.zeros((len(ids), len(SCENE_CLASSES)), np.float32)
    out[np.arange(len(ids)), ids] = 1.0
    return out


def with_scene_labels(fs: FeatureSet) -> FeatureSet:
    """The same features with one-hot scene labels (FeatureFileError names the file)."""
    try:
        labels = scene_labels(fs.patch_name)
    except ValueError as err:
        raise FeatureFileError(f"{fs.path}: scene relevance needs UC Merced patch names: {err}") \
            from None
    return FeatureSet(fs.path, fs.feature, labels, fs.patch_name, fs.handle, code=fs.code)
