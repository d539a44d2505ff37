"""Per-sample task losses (each returns float32 (B,)).

Model outputs may come in a mixed-precision compute dtype (bfloat16 / float16); every loss
casts them to float32 first, so losses, the noisy selection and the gradients' start are
float32 (a no-op in float32 runs)."""
import tensorflow as tf

f32 = tf.float32


def sigmoid_ce_per_sample(labels, logits):
    """Multi-label loss. labels (B, C) 0/1, logits (B, C) -> mean over classes, (B,)."""
    labels, logits = tf.cast(labels, f32), tf.cast(logits, f32)
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_mean(ce, axis=-1)


def pixel_ce_per_sample(seg_map, logits):
    """Pixel loss. seg_map int (B, H, W) with -1 unlabelled, logits (B, H, W, C).

    Softmax cross-entropy per pixel, mean over the labelled pixels of each sample; a sample
    with no labelled pixel contributes 0.
    """
    seg_map, logits = tf.cast(seg_map, tf.int32), tf.cast(logits, f32)
    valid = seg_map >= 0
    safe = tf.where(valid, seg_map, tf.zeros_like(seg_map))
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=logits)
    mask = tf.cast(valid, ce.dtype)
    total = tf.reduce_sum(ce * mask, axis=[1, 2])
    count = tf.reduce_sum(mask, axis=[1, 2])
    return tf.math.divide_no_nan(total, count)


def mse_per_sample(targets, preds):
    """Relation loss. targets, preds (B, K) -> mean squared error over K, (B,)."""
    targets, preds = tf.cast(targets, f32), tf.cast(preds, f32)
    return tf.reduce_mean(tf.square(preds - targets), axis=-1)
