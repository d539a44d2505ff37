"""MiLaN's cache of backbone features (frozen backbone) and its triplet relevance labels.

The pooled backbone features of the (noisy) training records are computed once, without
augmentation, and cached in ``<weights>/<run>/train_features.h5``; the cache is reused while
backbone, weights file (or seed), band set and records are unchanged.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import tensorflow as tf

from atomic_files import atomic_path

CACHE_FILE = "train_features.h5"


def all_files(paths) -> list[str]:
    """The record files (a sharded split's shards) and the noise overlay ``paths`` stand for."""
    from archives.record_files import all_files as expand

    return expand(paths)


def _file_id(path) -> dict:
    st = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_key(cfg) -> str:
    """What the cached features depend on: backbone, weights file (or seed), records."""
    key = {"backbone": cfg.backbone, "dataset": cfg.dataset,
           "weights": _file_id(cfg.weights) if cfg.weights else {"seed": cfg.seed},
           "records": [_file_id(p) for p in all_files(cfg.noisy_train_paths)]}
    if cfg.bands is not None:  # another band set, other features (absent: keys stay as before)
        key["bands"] = cfg.archive.band_set
    return json.dumps(key, sort_keys=True)


def cached_features(cfg, feature_model, log=print, progress: bool = False):
    """(pooled features (N, F) float32, noisy labels (N, C), patch names (N,)) of the training
    records, from the cache when its key matches, else extracted and cached atomically.
    ``cfg``: the model's ModelConfig (files, archive, weights folder)."""
    from archives.pipeline import make_dataset
    from evaluation.features import extract_features

    path = Path(cfg.weights_dir) / CACHE_FILE
    key = cache_key(cfg)
    if path.is_file():
        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("key") == key:
                    log(f"MiLaN: reusing cached backbone features {path}")
                    return f["feature"][()], f["noisy_label"][()], f["patch_name"][()]
        except (OSError, KeyError):
            pass
    ds = make_dataset(list(cfg.noisy_train_paths), cfg.archive, training=False,
                      batch_size=max(cfg.batch_size, 32), seed=cfg.seed)
    feat, label, names = extract_features(feature_model, ds, label_key="noisy_label",
                                          progress=progress)
    if not np.isfinite(feat).all():
        raise ValueError(f"backbone features of {cfg.noisy_train_paths} hold NaN/Inf")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f["feature"], f["noisy_label"] = feat, label
        f.create_dataset("patch_name", data=np.array(names, dtype=object),
                         dtype=h5py.string_dtype("utf-8"))
        f.attrs["key"] = key
    log(f"MiLaN: cached backbone features of {len(feat)} images in {path}")
    return feat, label, names


def relevance_labels(cfg, noisy_label, patch_names) -> np.ndarray:
    """Labels that define positives/negatives: noisy multi-hot, or one-hot scene classes."""
    if cfg.triplet_labels == "scene":
        from evaluation.scene import scene_labels
        return scene_labels(patch_names)
    return np.asarray(noisy_label)


def scene_label_fn(scene_classes):
    """batch -> one-hot scene classes (B, S) from the patch names (in-graph)."""
    classes = tf.constant(list(scene_classes))

    def fn(batch):
        scene = tf.strings.regex_replace(tf.strings.lower(batch["patch_name"]), r"_?\d+$", "")
        return tf.cast(tf.equal(scene[:, None], classes[None, :]), tf.float32)
    return fn
