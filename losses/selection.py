"""Noisy-sample selection of the GRID step (docs/training.md; ties: docs/differences.md)."""
import tensorflow as tf


def minmax_norm(x):
    """(x - min) / (max - min) over the batch; all zeros where max == min. x (B,) -> (B,)."""
    lo, hi = tf.reduce_min(x), tf.reduce_max(x)
    span = hi - lo
    return tf.where(span > 0, (x - lo) / tf.where(span > 0, span, 1.0), tf.zeros_like(x))


def select_noisy(dis, gen, noisy_sel_prcnt):
    """Mask of the samples treated as noisy. dis, gen (B,) per-sample losses -> float32 (B,).

    n = floor(B * noisy_sel_prcnt / 100); the n samples with the largest
    norm(dis) - norm(gen) get 1 (ties: lower index first), the rest 0. No gradient flows.
    """
    dis, gen = (tf.stop_gradient(tf.cast(x, tf.float32)) for x in (dis, gen))
    B = tf.shape(dis)[0]
    n = tf.cast(tf.floor(tf.cast(B, tf.float64) * float(noisy_sel_prcnt) / 100.0), tf.int32)
    score = minmax_norm(dis) - minmax_norm(gen)
    _, idx = tf.math.top_k(score, k=n)
    return tf.scatter_nd(idx[:, None], tf.ones_like(idx, tf.float32), [B])


def selection_counts(noisy_mask, label, noisy_label):
    """Counts for selection precision/recall.

    noisy_mask (B,) float 0/1; label, noisy_label (B, C). A sample is truly corrupted when any
    element of noisy_label differs from label. Returns float32 scalars
    (true_positives, n_selected, n_corrupted).
    """
    corrupted = tf.cast(tf.reduce_any(tf.not_equal(tf.cast(label, tf.float32),
                                                   tf.cast(noisy_label, tf.float32)), axis=-1),
                        tf.float32)
    return (tf.reduce_sum(noisy_mask * corrupted), tf.reduce_sum(noisy_mask),
            tf.reduce_sum(corrupted))
