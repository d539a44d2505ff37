"""tf.data input pipeline: parse, (shuffle + stateless augmentation), normalise, batch, prefetch.

Every random draw is a stateless function of (seed, epoch, element index), the index being the
element's position in file order: the same (seed, epoch) gives the same batches in any process,
whatever its global TF seed. The shuffle is a stateless window shuffle: consecutive windows of
``shuffle_buffer`` elements are each put in a random order (a full permutation when the buffer
holds the whole file, as for DLRSD's 1680).
"""
from __future__ import annotations

import tensorflow as tf

from archives import registry

BRIGHTNESS_DELTA = 0.2
_LABEL_KEYS = ("label", "noisy_label", "patch_name")
_MAP_KEYS = ("seg_map", "noisy_seg_map")


def element_seeds(seed: int, epoch: int, index, count: int) -> tf.Tensor:
    """(count, 2) int64 stateless seeds for element ``index`` of epoch ``epoch``."""
    base = tf.constant([int(seed), int(epoch)], tf.int64)
    folded = tf.random.experimental.stateless_fold_in(base, tf.cast(index, tf.int64))
    return tf.random.experimental.stateless_split(folded, num=count)


def stateless_shuffle(ds: tf.data.Dataset, buffer: int, seed: int, epoch: int) -> tf.data.Dataset:
    """Permute each window of ``buffer`` elements of an ``enumerate()``d dataset, statelessly."""
    base = tf.random.experimental.stateless_fold_in(
        tf.constant([int(seed), int(epoch)], tf.int64), tf.constant(-1, tf.int64))

    def permute(index, ex):
        key_seed = tf.random.experimental.stateless_fold_in(base, index[0])
        perm = tf.argsort(tf.random.stateless_uniform(tf.shape(index), key_seed))
        # picking one element at a time keeps a single copy of the window in memory
        return tf.data.Dataset.from_tensor_slices(perm).map(
            lambda j: (index[j], tf.nest.map_structure(lambda t: t[j], ex)))

    return ds.batch(buffer).flat_map(permute)


def _flip(tensors: list, do: tf.Tensor, axis: int) -> list:
    return [tf.cond(do, lambda t=t: tf.reverse(t, [axis]), lambda t=t: t) for t in tensors]


def _crop(tensors: list, oy, ox, size: int) -> list:
    return [tf.ensure_shape(t[oy:oy + size, ox:ox + size], [size, size] + t.shape[2:].as_list())
            for t in tensors]


def _finish(ex: dict, spatial: list, map_keys, mean, std) -> dict:
    out = {k: ex[k] for k in _LABEL_KEYS}
    out["image"] = (tf.cast(spatial[0], tf.float32) - mean) / std
    for k, t in zip(map_keys, spatial[1:]):
        out[k] = tf.cast(t, tf.int32)
    return out


def make_dataset(paths, dataset: str, *, training: bool, batch_size: int, seed: int = 0,
                 epoch: int = 0, shuffle_buffer: int | None = None,
                 drop_remainder: bool = False, indices=None) -> tf.data.Dataset:
    """Batched dicts ready for the model (docs/interfaces.md, "Input pipeline"). ``dataset``: a
    registered name or an ``archives.registry.ArchiveInfo`` (e.g. one band set's).
    ``indices`` (evaluation only): keep just the records at these file positions (each record
    is still read and parsed; only the kept ones are cropped, batched and returned)."""
    info = registry.get(dataset)
    if indices is not None and training:
        raise ValueError("make_dataset: indices select evaluation records; training reads all")
    map_keys = _MAP_KEYS if info.has_pixel_maps else ()
    # small element dtypes (uint8/uint16 images, int8 maps) keep the shuffle buffer small
    ds = info.load().parse_records(paths, compact_dtypes=True, **dict(info.parse_kwargs))
    mean = tf.constant(info.model_mean, tf.float32)
    std = tf.constant(info.model_std, tf.float32)
    h, w = info.image_shape[:2]
    crop = info.train_crop

    def augment(index, ex):
        s = element_seeds(seed, epoch, index, 5)
        spatial = [ex["image"]] + [ex[k] for k in map_keys]
        if crop:
            oy = tf.random.stateless_uniform([], s[0], minval=0, maxval=h - crop + 1, dtype=tf.int32)
            ox = tf.random.stateless_uniform([], s[1], minval=0, maxval=w - crop + 1, dtype=tf.int32)
            spatial = _crop(spatial, oy, ox, crop)
        spatial = _flip(spatial, tf.random.stateless_uniform([], s[2]) < 0.5, axis=1)
        spatial = _flip(spatial, tf.random.stateless_uniform([], s[3]) < 0.5, axis=0)
        out = _finish(ex, spatial, map_keys, mean, std)
        out["image"] = tf.image.stateless_random_brightness(out["image"], BRIGHTNESS_DELTA, s[4])
        out["sample_index"] = index  # position in file order: per-sample memory (SAT, ELR)
        return out

    def evaluate(index, ex):
        spatial = [ex["image"]] + [ex[k] for k in map_keys]
        if crop:
            spatial = _crop(spatial, (h - crop) // 2, (w - crop) // 2, crop)
        out = _finish(ex, spatial, map_keys, mean, std)
        out["sample_index"] = index
        return out

    if training:
        buffer = int(shuffle_buffer or info.shuffle_buffer)
        ds = stateless_shuffle(ds.enumerate(), buffer, seed, epoch)
        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        ds = ds.enumerate()
        if indices is not None:
            keep = tf.constant(_position_mask(indices))
            last = tf.cast(tf.shape(keep)[0] - 1, tf.int64)
            ds = ds.filter(lambda i, ex: (i <= last) & tf.gather(keep, tf.minimum(i, last)))
        ds = ds.map(evaluate, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def _position_mask(indices):
    """Boolean mask over file positions 0..max(indices), True at ``indices``."""
    import numpy as np

    idx = np.asarray(indices, np.int64).reshape(-1)
    if idx.size and idx.min() < 0:
        raise ValueError(f"make_dataset: indices must be >= 0, got {int(idx.min())}")
    mask = np.zeros(int(idx.max()) + 1 if idx.size else 1, bool)
    mask[idx] = True
    return mask
