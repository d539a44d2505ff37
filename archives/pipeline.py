"""tf.data input pipeline: read, (shuffle the serialized records), parse + augment + normalise
in parallel, batch, prefetch (docs/full-scale.md, "The input pipeline").

Training order, a stateless function of (seed, epoch): the files of a sharded split are taken
in an order permuted every epoch and read ``cycle`` at a time in parallel, one record from each
in turn (files listed one by one keep their order and are read one after another); consecutive
windows of ``shuffle_buffer`` serialized records are each put in a random order (a full
permutation when the window holds every record, as for DLRSD's 1680). Only then are records
parsed, joined with the noise overlay and augmented, in parallel. Every random draw is a
stateless function of (seed, epoch, the record's global index: its position in the split's
file order), so the same (seed, epoch) gives the same batches in any process, whatever its
global TF seed, and ``skip`` after a restore yields the uninterrupted batches.
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from archives import registry
from archives.common import file_forms, file_offsets, indexed_records, overlay_table, parse_by_form

BRIGHTNESS_DELTA = 0.2
SHUFFLE_BYTES = 256 << 20  # serialized bytes a shuffle window holds when reading shards
MIN_WINDOW = 256
CYCLE = 8  # shards read at once
_LABEL_KEYS = ("label", "noisy_label", "patch_name")
_MAP_KEYS = ("seg_map", "noisy_seg_map")


def element_seeds(seed: int, epoch: int, index, count: int) -> tf.Tensor:
    """(count, 2) int64 stateless seeds for element ``index`` of epoch ``epoch``."""
    base = tf.constant([int(seed), int(epoch)], tf.int64)
    folded = tf.random.experimental.stateless_fold_in(base, tf.cast(index, tf.int64))
    return tf.random.experimental.stateless_split(folded, num=count)


def stateless_shuffle(ds: tf.data.Dataset, buffer: int, seed: int, epoch: int) -> tf.data.Dataset:
    """Permute each window of ``buffer`` elements of a dataset of tuples whose first item is
    the element's global index, statelessly (the window's key: its first element's index)."""
    base = tf.random.experimental.stateless_fold_in(
        tf.constant([int(seed), int(epoch)], tf.int64), tf.constant(-1, tf.int64))

    def permute(*window):
        key_seed = tf.random.experimental.stateless_fold_in(base, window[0][0])
        perm = tf.argsort(tf.random.stateless_uniform(tf.shape(window[0]), key_seed))
        return tf.nest.map_structure(lambda t: tf.gather(t, perm), window)

    # the permuted copy of a window is made while the previous one is handed on
    return ds.batch(buffer).map(permute, num_parallel_calls=2, deterministic=True).unbatch()


def epoch_file_order(n_files: int, shards: bool, seed: int, epoch: int) -> np.ndarray:
    """The order files are read in at ``epoch``: permuted per (seed, epoch) for a sharded split,
    as given otherwise."""
    if not shards or n_files < 2:
        return np.arange(n_files)
    return np.random.default_rng([int(seed), int(epoch), 0x5EED]).permutation(n_files)


def default_window(info, res, counts) -> int:
    """The shuffle window: the archive's buffer, held to SHUFFLE_BYTES of serialized records
    when reading a sharded split (prep already put its records in a random order)."""
    buffer = int(info.shuffle_buffer)
    if not res.shards:
        return buffer
    size = sum(os.path.getsize(f) for f in res.files) / max(1, sum(counts))
    return max(MIN_WINDOW, min(buffer, int(SHUFFLE_BYTES // max(size, 1))))


def _draws(seed: int, epoch: int, index, h: int, w: int, crop: int | None) -> dict:
    """The record's augmentation draws, stateless in (seed, epoch, index): crop offsets,
    left-right and up-down flips, brightness delta."""
    s = element_seeds(seed, epoch, index, 5)
    if crop:
        oy = tf.random.stateless_uniform([], s[0], minval=0, maxval=h - crop + 1, dtype=tf.int32)
        ox = tf.random.stateless_uniform([], s[1], minval=0, maxval=w - crop + 1, dtype=tf.int32)
    else:
        oy = ox = tf.constant(0, tf.int32)
    # the draw tf.image.stateless_random_brightness makes
    delta = tf.random.stateless_uniform([], s[4], minval=-BRIGHTNESS_DELTA,
                                        maxval=BRIGHTNESS_DELTA)
    return {"_oy": oy, "_ox": ox, "_flip_lr": tf.random.stateless_uniform([], s[2]) < 0.5,
            "_flip_ud": tf.random.stateless_uniform([], s[3]) < 0.5, "_delta": delta}


def _window(t, oy, ox, flip_ud, flip_lr, size_h: int, size_w: int):
    """Per-sample crop at (oy, ox) of size (size_h, size_w), then flips, of a batch (B, H, W, ...)
    as two gathers."""
    def axis_index(offset, flip, size):
        r = tf.range(size, dtype=tf.int32)
        return offset[:, None] + tf.where(flip[:, None], size - 1 - r, r)

    t = tf.gather(t, axis_index(oy, flip_ud, size_h), axis=1, batch_dims=1)
    return tf.gather(t, axis_index(ox, flip_lr, size_w), axis=2, batch_dims=1)


def finish_batch(b: dict, dataset, training: bool) -> dict:
    """A compact batch of ``make_dataset(..., compact=True)`` as the model sees it: crop, flips,
    normalisation ((x - mean) / std, float32) and brightness, vectorised; maps follow the image
    (int32) and the noisy map is looked up. The pipeline applies it itself by default; the
    training loop applies it in the compiled step instead (docs/full-scale.md)."""
    info = registry.get(dataset)
    h, w = info.image_shape[:2]
    crop = info.train_crop
    maps = {k: b[k] for k in _MAP_KEYS if k in b}
    spatial = [b["image"]] + list(maps.values())
    ch, cw = (crop, crop) if crop else (h, w)
    if training:
        spatial = [_window(t, b["_oy"], b["_ox"], b["_flip_ud"], b["_flip_lr"], ch, cw)
                   for t in spatial]
    elif crop:
        oy, ox = (h - crop) // 2, (w - crop) // 2
        spatial = [t[:, oy:oy + crop, ox:ox + crop] for t in spatial]
    out = {k: b[k] for k in _LABEL_KEYS + ("sample_index",) if k in b}
    mean = tf.constant(info.model_mean, tf.float32)
    std = tf.constant(info.model_std, tf.float32)
    out["image"] = (tf.cast(spatial[0], tf.float32) - mean) / std
    if training:
        out["image"] = out["image"] + b["_delta"][:, None, None, None]
    for k, t in zip(maps, spatial[1:]):
        out[k] = tf.cast(t, tf.int32)
    if "_lut" in b:
        out["noisy_seg_map"] = tf.gather(b["_lut"], out["seg_map"] + 1, batch_dims=1)
    return out


def make_dataset(paths, dataset: str, *, training: bool, batch_size: int, seed: int = 0,
                 epoch: int = 0, shuffle_buffer: int | None = None,
                 drop_remainder: bool = False, skip_batches: int = 0,
                 cycle: int | None = None, indices=None,
                 compact: bool = False) -> tf.data.Dataset:
    """Batched dicts ready for the model (docs/interfaces.md, "Input pipeline"). ``dataset``: a
    registered name or an ``archives.registry.ArchiveInfo`` (e.g. one band set's). ``paths``:
    record files, a glob or a sharded split's name, and optionally its noise overlay
    (archives.record_files). ``skip_batches``: start after that many batches of the epoch,
    skipping serialized records (as ``ds.skip(skip_batches)`` would, without parsing them).
    ``cycle``: shards read at once (default CYCLE). ``indices`` (evaluation only): keep just the
    records at these positions (the ``sample_index`` values), dropped before parsing.
    ``compact``: batches as parsed (uint8/uint16 images, int8 maps, full size) with the
    augmentation draws (keys starting with "_"), for ``finish_batch`` to turn into the model's
    batches in the compiled step: the cast and normalisation cost the input pipeline as much CPU
    as parsing does."""
    from archives.record_files import RecordFilesError, counts_of, resolve

    info = registry.get(dataset)
    if indices is not None and training:
        raise ValueError("make_dataset: indices select evaluation records; training reads all")
    map_keys = _MAP_KEYS if info.has_pixel_maps else ()
    module = info.load()
    # small element dtypes (uint8/uint16 images, int8 maps) keep the parsed buffers small
    kwargs = dict(compact_dtypes=True, **dict(info.parse_kwargs))
    table = res = None
    if hasattr(module, "record_parser"):
        reader = module.record_parser(**kwargs)
        try:
            res = resolve(paths)
        except RecordFilesError as err:
            raise ValueError(str(err)) from None
        forms, form_ids = file_forms(res.files, reader)
        parse = parse_by_form(forms, reader)
        single = len(res.files) == 1
        counts = [0] if single and not res.overlay else counts_of(res)
        table = overlay_table(res, reader) if res.overlay else None
    else:  # an archive module with parse_records only: parsed records, in file order
        def parse(form_id, ex):
            return ex
    h, w = info.image_shape[:2]
    crop = info.train_crop
    lut = None
    if table is not None and "map_lut" in table:  # -1 (unlabelled) first: index = class + 1
        lut = tf.concat([tf.fill([tf.shape(table["map_lut"])[0], 1], -1), table["map_lut"]], 1)

    def element(index, form_id, raw):
        """Parse one record; overlay rows and augmentation draws ride along to the batch."""
        ex = parse(form_id, raw)
        out = {k: ex[k] for k in _LABEL_KEYS + ("image",)}
        out["sample_index"] = index
        if map_keys:
            out["seg_map"] = ex["seg_map"]
            if lut is None:
                out["noisy_seg_map"] = ex["noisy_seg_map"]
            else:
                out["_lut"] = tf.gather(lut, index)
        if table is not None:
            out["noisy_label"] = tf.gather(table["noisy_label"], index)
        if training:
            out.update(_draws(seed, epoch, index, h, w, crop))
        return out

    if res is None:
        ds = module.parse_records(paths, **kwargs).enumerate().map(
            lambda i, ex: (i, tf.constant(0, tf.int64), ex))
        if training:
            ds = stateless_shuffle(ds, int(shuffle_buffer or info.shuffle_buffer), seed, epoch)
    elif training:
        offsets = file_offsets(counts) if not single else [0]
        order = epoch_file_order(len(res.files), res.shards, seed, epoch)
        n_read = min(len(res.files), cycle or CYCLE) if res.shards else 1
        ds = indexed_records([res.files[i] for i in order], [offsets[i] for i in order],
                             [form_ids[i] for i in order], cycle=n_read)
        buffer = int(shuffle_buffer or default_window(info, res, counts))
        ds = stateless_shuffle(ds, buffer, seed, epoch)
    else:
        ds = indexed_records(res.files, file_offsets(counts) if not single else [0], form_ids)
    if indices is not None:
        keep = tf.constant(_position_mask(indices))
        last = tf.cast(tf.shape(keep)[0] - 1, tf.int64)
        ds = ds.filter(lambda i, *_: (i <= last) & tf.gather(keep, tf.minimum(i, last)))
    if skip_batches:
        ds = ds.skip(int(skip_batches) * int(batch_size))
    ds = ds.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if not compact:
        ds = ds.map(lambda b: finish_batch(b, info, training),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def _position_mask(indices):
    """Boolean mask over record positions 0..max(indices), True at ``indices``."""
    import numpy as np

    idx = np.asarray(indices, np.int64).reshape(-1)
    if idx.size and idx.min() < 0:
        raise ValueError(f"make_dataset: indices must be >= 0, got {int(idx.min())}")
    mask = np.zeros(int(idx.max()) + 1 if idx.size else 1, bool)
    mask[idx] = True
    return mask
