"""tf.data input pipeline: read, shuffle the serialized records, parse in parallel, batch; per
batch, vectorised: overlay join, augmentation draws (and, unless ``compact``, crop, flips,
normalisation) (docs/full-scale.md, "The input pipeline").

Training order, a function of (seed, epoch) alone: the files of a sharded split are taken in an
order permuted every epoch and read ``cycle`` at a time in parallel, one record from each in
turn, then pass a shuffle buffer of serialized records (TensorFlow's shuffle op, which moves
records without copying them, seeded from (seed, epoch) explicitly so that TensorFlow's global
seed plays no part). Files listed one by one keep their order and are read one after another;
consecutive windows of ``shuffle_buffer`` records are then each put in a random order (a full
permutation when the window holds every record). Every augmentation draw is a stateless function
of (seed, epoch, the record's global index: its position in the split's file order), so the same
(seed, epoch) gives the same batches in any process, and ``skip`` after a restore yields the
uninterrupted batches.
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from archives import registry
from archives.common import file_forms, file_offsets, indexed_records, overlay_table, parse_by_form

BRIGHTNESS_DELTA = 0.2
SHUFFLE_BYTES = 256 << 20  # serialized bytes the shuffle buffer holds when reading shards
MIN_WINDOW = 256
CYCLE = 8  # shards read at once
DRAWS = 5  # per record: crop row, crop column, left-right flip, up-down flip, brightness
_GOLDEN = 0x9E3779B97F4A7C15  # SplitMix64's state increment
_LABEL_KEYS = ("label", "noisy_label", "patch_name")
_MAP_KEYS = ("seg_map", "noisy_seg_map")


def epoch_seeds(seed: int, epoch: int, stream: int = 0) -> tuple[int, int]:
    """Two nonzero 63-bit seeds for (seed, epoch, stream), the same in every process."""
    a, b = np.random.default_rng([int(seed), int(epoch), int(stream), 0x5F5F]).integers(
        1, 2**63 - 1, size=2)
    return int(a), int(b)


def seeded_shuffle(ds: tf.data.Dataset, buffer: int, seeds) -> tf.data.Dataset:
    """``ds`` through TensorFlow's shuffle buffer of ``buffer`` elements with the seed pair
    ``seeds`` (ints or an int64 tensor of two, not both zero) as given: ``Dataset.shuffle``
    would mix in the global seed. For a fixed input order the output order is fixed; elements
    are moved, not copied."""
    spec = ds.element_spec
    flat = tf.nest.flatten(spec)
    variant = tf.raw_ops.ShuffleDatasetV3(
        input_dataset=tf.data.experimental.to_variant(ds),
        buffer_size=tf.constant(int(buffer), tf.int64),
        seed=tf.cast(seeds[0], tf.int64), seed2=tf.cast(seeds[1], tf.int64),
        seed_generator=tf.raw_ops.DummySeedGenerator(), reshuffle_each_iteration=False,
        output_types=[s.dtype for s in flat], output_shapes=[s.shape for s in flat])
    return tf.data.experimental.from_variant(variant, spec)


def window_shuffle(ds: tf.data.Dataset, buffer: int, seed: int, epoch: int) -> tf.data.Dataset:
    """Each window of ``buffer`` consecutive elements in a random order (a full permutation of
    the window), keyed by (seed, epoch, the window's number)."""
    base = tf.constant(epoch_seeds(seed, epoch, 1), tf.int64)

    @tf.autograph.experimental.do_not_convert
    def permuted(k, window):
        key = tf.random.experimental.stateless_fold_in(base, k)
        pair = tf.random.stateless_uniform([2], key, minval=None, maxval=None, dtype=tf.int64)
        return seeded_shuffle(tf.data.Dataset.zip(window), buffer,
                              (pair[0], tf.bitwise.bitwise_or(pair[1], 1)))

    return ds.window(int(buffer)).enumerate().flat_map(permuted)


def epoch_file_order(n_files: int, shards: bool, seed: int, epoch: int) -> np.ndarray:
    """The order files are read in at ``epoch``: permuted per (seed, epoch) for a sharded split,
    as given otherwise."""
    if not shards or n_files < 2:
        return np.arange(n_files)
    return np.random.default_rng([int(seed), int(epoch), 0x5EED]).permutation(n_files)


def default_window(info, res, counts) -> int:
    """The shuffle buffer (or window): the archive's buffer, held to SHUFFLE_BYTES of
    serialized records when reading a sharded split (prep already put its records in a random
    order)."""
    buffer = int(info.shuffle_buffer)
    if not res.shards:
        return buffer
    size = sum(os.path.getsize(f) for f in res.files) / max(1, sum(counts))
    return max(MIN_WINDOW, min(buffer, int(SHUFFLE_BYTES // max(size, 1))))


def splitmix64(z: tf.Tensor) -> tf.Tensor:
    """SplitMix64's output function of uint64 states ``z``, elementwise (wrapping products)."""
    def mix(z, shift, mult):
        z = tf.bitwise.bitwise_xor(z, tf.bitwise.right_shift(z, tf.constant(shift, tf.uint64)))
        return z * tf.constant(mult, tf.uint64) if mult else z

    return mix(mix(mix(z, 30, 0xBF58476D1CE4E5B9), 27, 0x94D049BB133111EB), 31, 0)


def uniform_draws(seed: int, epoch: int, index, count: int) -> tf.Tensor:
    """(len(index), count) float64 uniforms in [0, 1): draw d of the record with global index
    i is output number i * count + d of a SplitMix64 generator keyed by (seed, epoch), so it
    depends on nothing else (not on the batch or the order), vectorised over ``index``."""
    key = int(np.random.default_rng([int(seed), int(epoch), 0xD7A5]).integers(
        0, 2**63, dtype=np.int64))
    draw = tf.cast(tf.range(count, dtype=tf.int64), tf.uint64)
    slot = tf.cast(index, tf.uint64)[:, None] * count + draw + 1
    z = splitmix64(tf.constant(key, tf.uint64) + slot * tf.constant(_GOLDEN, tf.uint64))
    return tf.cast(tf.bitwise.right_shift(z, tf.constant(11, tf.uint64)), tf.float64) * 2.0**-53


def batch_draws(seed: int, epoch: int, index, h: int, w: int, crop: int | None) -> dict:
    """The augmentation draws of the records with global indices ``index`` (a vector): crop
    offsets, left-right and up-down flips, brightness delta (uniform_draws)."""
    u = uniform_draws(seed, epoch, index, DRAWS)

    def offset(x, size):
        if not crop:
            return tf.zeros_like(x, tf.int32)
        return tf.cast(tf.floor(x * (size - crop + 1)), tf.int32)

    return {"_oy": offset(u[:, 0], h), "_ox": offset(u[:, 1], w), "_flip_lr": u[:, 2] < 0.5,
            "_flip_ud": u[:, 3] < 0.5,
            "_delta": tf.cast((2.0 * u[:, 4] - 1.0) * BRIGHTNESS_DELTA, tf.float32)}


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

    @tf.autograph.experimental.do_not_convert
    def element(index, form_id, raw):
        """Parse one record (the overlay rows and the draws are added per batch)."""
        ex = parse(form_id, raw)
        out = {k: ex[k] for k in _LABEL_KEYS + ("image",) + map_keys
               if not (k == "noisy_seg_map" and lut is not None)}
        out["sample_index"] = index
        return out

    @tf.autograph.experimental.do_not_convert
    def per_batch(b):
        """Overlay join and augmentation draws by the batch's global indices, vectorised; then
        ``finish_batch`` unless compact."""
        b = dict(b)
        if table is not None:
            b["noisy_label"] = tf.gather(table["noisy_label"], b["sample_index"])
        if lut is not None:
            b["_lut"] = tf.gather(lut, b["sample_index"])
        if training:
            b.update(batch_draws(seed, epoch, b["sample_index"], h, w, crop))
        return b if compact else finish_batch(b, info, training)

    if res is None:
        ds = module.parse_records(paths, **kwargs).enumerate().map(
            lambda i, ex: (i, tf.constant(0, tf.int64), ex))
        if training:
            ds = window_shuffle(ds, int(shuffle_buffer or info.shuffle_buffer), seed, epoch)
    elif training:
        offsets = file_offsets(counts) if not single else [0]
        order = epoch_file_order(len(res.files), res.shards, seed, epoch)
        n_read = min(len(res.files), cycle or CYCLE) if res.shards else 1
        ds = indexed_records([res.files[i] for i in order], [offsets[i] for i in order],
                             [form_ids[i] for i in order], cycle=n_read)
        buffer = int(shuffle_buffer or default_window(info, res, counts))
        if res.shards:  # records already in prep's random order: one running buffer
            ds = seeded_shuffle(ds, buffer, epoch_seeds(seed, epoch))
        else:  # e.g. a published file in name order: windows, each a full permutation
            ds = window_shuffle(ds, buffer, seed, epoch)
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
    ds = ds.map(per_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
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
