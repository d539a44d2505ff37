"""Region-relation targets for GRID-RRL (docs/training.md), vectorised in numpy and TF.

For one pixel map (H, W) with class ids in [0, C) and -1 for unlabelled pixels:

- r_c = (number of pixels of class c) / (H * W). Decision: the denominator counts every pixel,
  unlabelled ones included ("share of class c" of the whole map), so shares sum to <= 1.
- m_c = centre of mass (mean row, mean col) of the pixels of class c.
- for present classes i <= j:
    s = (r_i + r_j) * (1 - (max(r_i, r_j) - (r_i + r_j) / 2))
    d = 1 - |m_i - m_j| / |(H - 1, W - 1)|      (Euclidean norms; d = 1 when H = W = 1)
    w = 1                                        if i == j and r_i > 0.5
    w = (s + d) / 2 * (1 - (max(s, d) - (s + d) / 2))   otherwise
  pairs with an absent class are 0.
- output: the upper triangle of the C x C matrix, diagonal included, row-major
  (order of ``np.triu_indices(C)``): C * (C + 1) / 2 values.
"""
import numpy as np
import tensorflow as tf

__all__ = ["relation_targets", "relation_targets_tf", "relations_from_stats"]


def _pairs_np(share, com, present, diag_norm):
    """share (B,C), com (B,C,2), present (B,C) bool -> (B, C(C+1)/2) float64, computed on the
    upper-triangle pairs only."""
    iu, ju = np.triu_indices(share.shape[1])
    ri, rj = share[:, iu], share[:, ju]
    rs = ri + rj
    s = rs * (1.0 - (np.maximum(ri, rj) - rs / 2.0))
    diff = com[:, iu] - com[:, ju]
    dist = np.sqrt(diff[..., 0] ** 2 + diff[..., 1] ** 2)
    d = 1.0 - dist / diag_norm if diag_norm > 0 else np.ones_like(dist)
    sd = s + d
    w = sd / 2.0 * (1.0 - (np.maximum(s, d) - sd / 2.0))
    w = np.where((iu == ju) & (ri > 0.5), 1.0, w)
    return np.where(present[:, iu] & present[:, ju], w, 0.0)


def _class_stats_np(maps, nb_class):
    """Pixel count, row sum and column sum per (map, class) from row runs.

    maps (B, H, W) int -> three float64 (B, C). Each row is cut into runs of equal class
    (one vectorised comparison + ``np.flatnonzero``); a run of length L starting at column c0
    in row r adds L pixels, L * r to the row sum and L * c0 + L (L - 1) / 2 to the column sum.
    One ``np.bincount`` per statistic over (map index, class); no per-map Python loop.
    """
    B, H, W = maps.shape
    C = nb_class
    flat = np.ascontiguousarray(maps).ravel()
    start = np.empty(flat.size, dtype=bool)
    np.not_equal(flat[1:], flat[:-1], out=start[1:])
    start[::W] = True  # every row starts a run
    idx = np.flatnonzero(start)
    length = np.diff(idx, append=flat.size)
    cls = flat[idx].astype(np.int64)
    if cls.size and (cls.max() >= C or cls.min() < -1):
        raise ValueError(f"class ids must lie in [-1, {C}), got [{cls.min()}, {cls.max()}]")
    keep = cls >= 0
    idx, length, cls = idx[keep], length[keep].astype(np.float64), cls[keep]
    row = idx // W
    col0 = idx - row * W
    bins = (row // H) * C + cls
    r = (row % H).astype(np.float64)

    def total(weights):
        return np.bincount(bins, weights=weights, minlength=B * C).reshape(B, C)

    return total(length), total(length * r), total(length * col0 + length * (length - 1) / 2)


def relation_targets(seg_maps, nb_class):
    """Relation targets of a batch of pixel maps.

    seg_maps: int array (B, H, W) (or one (H, W) map), class ids in [0, nb_class) and
    -1 = unlabelled. Returns float32 (B, nb_class * (nb_class + 1) / 2); ValueError for
    class ids outside [-1, nb_class).
    """
    maps = np.asarray(seg_maps)
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3 or not np.issubdtype(maps.dtype, np.integer):
        raise ValueError(f"seg_maps must be integer (B, H, W), got {maps.dtype} {maps.shape}")
    B, H, W = maps.shape
    counts, rsum, csum = _class_stats_np(maps, nb_class)
    present = counts > 0
    safe = np.maximum(counts, 1.0)
    com = np.stack([rsum / safe, csum / safe], axis=-1)
    share = counts / float(H * W)
    diag_norm = float(np.hypot(H - 1, W - 1))
    return _pairs_np(share, com, present, diag_norm).astype(np.float32)


def relations_from_stats(share, com, present, diag_norm):
    """TF pair formula of the twin.

    share (B, C), com (B, C, 2) float, present (B, C) bool -> (B, C(C+1)/2) of share's dtype.
    """
    C = share.shape[-1]
    ri, rj = share[:, :, None], share[:, None, :]
    rs = ri + rj
    s = rs * (1.0 - (tf.maximum(ri, rj) - rs / 2.0))
    diff = com[:, :, None, :] - com[:, None, :, :]
    dist = tf.sqrt(tf.reduce_sum(tf.square(diff), axis=-1))
    d = 1.0 - dist / diag_norm if diag_norm > 0 else tf.ones_like(dist)
    sd = s + d
    w = sd / 2.0 * (1.0 - (tf.maximum(s, d) - sd / 2.0))
    eye = tf.eye(C, dtype=tf.bool)[None]
    w = tf.where(eye & (ri > 0.5), tf.ones_like(w), w)
    both = present[:, :, None] & present[:, None, :]
    w = tf.where(both, w, tf.zeros_like(w))
    iu, ju = np.triu_indices(C)
    flat_idx = tf.constant(iu * C + ju, dtype=tf.int32)
    return tf.gather(tf.reshape(w, [-1, C * C]), flat_idx, axis=1)


def relation_targets_tf(seg_maps, nb_class, static: bool = False):
    """In-graph twin of ``relation_targets`` (same row-run algorithm, no one-hot).

    seg_maps: int tensor (B, H, W) with static H, W; -1 = unlabelled -> float32 (B, C(C+1)/2).
    Class ids are assumed to lie in [-1, nb_class) (not checked in-graph). ``static``: sum per
    pixel instead of per row run, so that every shape is static (XLA compiles the row runs'
    data-dependent shapes wrongly on CPU); same result, slower without XLA.
    """
    if static:
        return _relation_targets_per_pixel(seg_maps, nb_class)
    maps = tf.cast(tf.convert_to_tensor(seg_maps), tf.int32)
    H, W = int(maps.shape[1]), int(maps.shape[2])
    C = int(nb_class)
    B = tf.shape(maps)[0]
    flat = tf.reshape(maps, [-1])
    n = tf.size(flat)
    pos = tf.range(n)
    prev = tf.concat([[-2], flat[:-1]], axis=0)
    start = tf.logical_or(tf.not_equal(flat, prev), tf.equal(pos % W, 0))
    idx = tf.cast(tf.where(start)[:, 0], tf.int32)
    length = tf.concat([idx[1:], [n]], axis=0) - idx
    cls = tf.gather(flat, idx)
    keep = cls >= 0
    idx, length, cls = tf.boolean_mask(idx, keep), tf.boolean_mask(length, keep), \
        tf.boolean_mask(cls, keep)
    row = idx // W
    bins = (row // H) * C + cls
    L = tf.cast(length, tf.float64)  # float64 keeps the coordinate sums exact
    col0 = tf.cast(idx - row * W, tf.float64)
    r = tf.cast(row % H, tf.float64)
    data = tf.stack([L, L * r, L * col0 + L * (L - 1.0) / 2.0], axis=-1)
    sums = tf.reshape(tf.math.unsorted_segment_sum(data, bins, B * C), [B, C, 3])
    counts = sums[..., 0]
    present = counts > 0
    com = sums[..., 1:] / tf.maximum(counts, 1.0)[..., None]
    share = counts / float(H * W)
    diag_norm = float(np.hypot(H - 1, W - 1))
    return tf.cast(relations_from_stats(share, com, present, diag_norm), tf.float32)


def _relation_targets_per_pixel(seg_maps, nb_class):
    """``relation_targets_tf`` with static shapes: pixel counts and coordinate sums per
    (image, class) by one segment sum over all pixels (unlabelled pixels go to a spare bin)."""
    maps = tf.cast(tf.convert_to_tensor(seg_maps), tf.int32)
    H, W = int(maps.shape[1]), int(maps.shape[2])
    C = int(nb_class)
    B = tf.shape(maps)[0]
    bins = tf.where(maps >= 0, tf.range(B)[:, None, None] * C + maps, B * C)
    zeros = tf.zeros(tf.shape(maps), tf.float64)
    r = zeros + tf.range(H, dtype=tf.float64)[None, :, None]
    c = zeros + tf.range(W, dtype=tf.float64)[None, None, :]
    data = tf.reshape(tf.stack([zeros + 1.0, r, c], axis=-1), [-1, 3])
    sums = tf.math.unsorted_segment_sum(data, tf.reshape(bins, [-1]), B * C + 1)
    sums = tf.reshape(sums[:-1], [B, C, 3])
    counts = sums[..., 0]
    com = sums[..., 1:] / tf.maximum(counts, 1.0)[..., None]
    diag_norm = float(np.hypot(H - 1, W - 1))
    return tf.cast(relations_from_stats(counts / float(H * W), com, counts > 0, diag_norm),
                   tf.float32)
