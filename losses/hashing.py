"""MiLaN's hashing losses (Roy et al. 2018/2020; docs/hashing.md) and its triplet sampling.

Loss of a batch of T triplets, b = sigmoid outputs (.., K) of anchors, positives, negatives:
  triplet  mean_t max(|a_t - p_t|^2 - |a_t - n_t|^2 + margin, 0) on L2-normalised outputs;
  push     (beta / K) * mean over all 3T outputs of sum_k (b_k - 0.5)^2, SUBTRACTED
           (it pushes outputs away from 0.5, towards binary values);
  balance  gamma * mean over all 3T outputs of (mean_k b_k - 0.5)^2 (half the bits on);
  loss = triplet - push + balance.
Published: margin 0.2, beta 0.001, gamma 1.

Triplet sampling:
- single-label data (each row has one label; MiLaN's scene classes), as published: every
  batch picks two different classes at random, T anchors and T positives from the first,
  T negatives from the second (items drawn at random, with replacement);
- multi-label data (this project's decision, MiLaN's rule extended): anchors at random;
  a positive shares at least one label with its anchor, a negative shares none. Anchors with
  no possible positive or negative are not drawn.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

MARGIN = 0.2
BETA = 0.001
GAMMA = 1.0


def milan_losses(anchor, positive, negative, margin: float = MARGIN, beta: float = BETA,
                 gamma: float = GAMMA, weight=None) -> dict:
    """Scalar losses {triplet, push, balance, loss} of sigmoid outputs (T, K) each.

    ``weight`` (T,) 0/1: triplets that count (the in-batch sampler marks anchors without a
    positive or negative with 0); the triplet mean is over counted triplets (0 when none).
    Outputs in a mixed-precision compute dtype are cast to float32 first.
    """
    anchor, positive, negative = (tf.cast(x, tf.float32) for x in (anchor, positive, negative))
    def l2n(x):
        return tf.math.l2_normalize(x, axis=-1, epsilon=1e-12)

    a, p, n = l2n(anchor), l2n(positive), l2n(negative)
    per = tf.nn.relu(tf.reduce_sum(tf.square(a - p), -1) - tf.reduce_sum(tf.square(a - n), -1)
                     + margin)
    if weight is None:
        triplet = tf.reduce_mean(per)
    else:
        weight = tf.cast(weight, per.dtype)
        triplet = tf.math.divide_no_nan(tf.reduce_sum(per * weight), tf.reduce_sum(weight))
    b = tf.concat([anchor, positive, negative], 0)
    k = tf.cast(tf.shape(b)[-1], b.dtype)
    push = beta / k * tf.reduce_mean(tf.reduce_sum(tf.square(b - 0.5), -1))
    balance = gamma * tf.reduce_mean(tf.square(tf.reduce_mean(b, -1) - 0.5))
    return {"triplet_loss": triplet, "push_loss": push, "balance_loss": balance,
            "loss": triplet - push + balance}


def is_single_label(labels) -> bool:
    """True when every row of the 0/1 label matrix has exactly one label."""
    lab = np.asarray(labels) > 0.5
    return bool(lab.shape[0]) and bool((lab.sum(1) == 1).all())


def sample_triplets(labels, n_triplets: int, rng: np.random.Generator):
    """Indices (anchor, positive, negative), each (n_triplets,) int64, into ``labels`` (N, C).

    Single-label data: the published two-class rule; multi-label: the shared-label rule (see
    the module docstring). ValueError when no triplet exists (e.g. one class only).
    """
    lab = np.asarray(labels) > 0.5
    if is_single_label(lab):
        cls = lab.argmax(1)
        members = {c: np.flatnonzero(cls == c) for c in np.unique(cls)}
        usable = [c for c, m in members.items() if m.size >= 2]
        if not usable or len(members) < 2:
            raise ValueError("triplets need a class with >= 2 items and a second class")
        c_pos = usable[rng.integers(len(usable))]
        others = [c for c in members if c != c_pos]
        c_neg = others[rng.integers(len(others))]
        a = rng.choice(members[c_pos], n_triplets)
        p = rng.choice(members[c_pos], n_triplets)
        n = rng.choice(members[c_neg], n_triplets)
        return a, p, n
    out = [_multilabel_triplet(lab, rng) for _ in range(n_triplets)]
    return tuple(np.array(x, np.int64) for x in zip(*out))


def _multilabel_triplet(lab: np.ndarray, rng: np.random.Generator, probe: int = 256,
                        tries: int = 100) -> tuple[int, int, int]:
    """One (anchor, positive, negative) by the shared-label rule: a random probe of the archive
    first (no N x N matrix), the anchor's full row only when the probe finds no candidate."""
    n_items = lab.shape[0]
    for _ in range(tries):
        i = int(rng.integers(n_items))
        cand = rng.integers(n_items, size=min(probe, n_items))
        share = (lab[cand] & lab[i]).any(1)
        pos, neg = cand[share & (cand != i)], cand[~share]
        if pos.size == 0 or neg.size == 0:
            share_all = (lab & lab[i]).any(1)
            share_all[i] = False
            pos = np.flatnonzero(share_all) if pos.size == 0 else pos
            not_self = np.ones(n_items, bool)
            not_self[i] = False
            neg = np.flatnonzero(~(lab & lab[i]).any(1) & not_self) if neg.size == 0 else neg
        if pos.size and neg.size:
            return i, int(pos[rng.integers(pos.size)]), int(neg[rng.integers(neg.size)])
    raise ValueError(f"no triplet found in {tries} anchors: items need one that shares a label "
                     "and one that shares none")


def in_batch_triplets(labels, seed):
    """Triplets inside one batch (joint training): every item is an anchor; a positive shares a
    label with it (another item), a negative shares none; each drawn uniformly with stateless
    randomness from ``seed`` (2,). Returns (positive (B,), negative (B,) int32, valid (B,))."""
    lab = tf.cast(labels > 0.5, tf.float32)
    share = tf.matmul(lab, lab, transpose_b=True) > 0
    b = tf.shape(lab)[0]
    eye = tf.eye(b, dtype=tf.bool)
    pos_mask = share & ~eye
    neg_mask = ~share & ~eye
    s1, s2 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))

    def draw(mask, s):
        noise = tf.random.stateless_uniform(tf.shape(mask, out_type=tf.int32), s)
        return tf.argmax(tf.where(mask, noise + 1.0, tf.zeros_like(noise)), -1,
                         output_type=tf.int32)

    valid = tf.reduce_any(pos_mask, -1) & tf.reduce_any(neg_mask, -1)
    return draw(pos_mask, s1), draw(neg_mask, s2), valid
