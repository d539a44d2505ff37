"""Tests of losses/: relation targets, task losses, VAE terms, noisy-sample selection."""
import math

import numpy as np
import pytest
import tensorflow as tf

from losses import (kl_per_sample, minmax_norm, mse_per_sample, pixel_ce_per_sample,
                    recon_per_sample, relation_targets, relation_targets_tf, select_noisy,
                    selection_counts, sigmoid_ce_per_sample)


# ---------------------------------------------------------------- relation targets
def test_relations_2x2_hand_computed():
    # class 0 at (0,0),(0,1); class 1 at (1,0); (1,1) unlabelled. H*W = 4 pixels.
    # r0 = 2/4 = 0.5, r1 = 1/4 = 0.25 (denominator counts the unlabelled pixel)
    # m0 = (0, 0.5), m1 = (1, 0), |(H-1, W-1)| = sqrt(2)
    # (0,0): r0 = 0.5 is not > 0.5 -> s = 2*0.5 = 1, d = 1, w = 1 * (1 - (1 - 1)) = 1
    # (1,1): s = 0.5, d = 1, w = 0.75 * (1 - (1 - 0.75)) = 0.5625
    # (0,1): s = 0.75 * (1 - (0.5 - 0.375)) = 0.65625
    #        d = 1 - sqrt(1.25) / sqrt(2) = 0.2094306
    #        w = (s+d)/2 * (1 - (s - (s+d)/2)) = 0.4328403 * 0.7765903 = 0.3361395
    seg = np.array([[[0, 0], [1, -1]]])
    d = 1 - math.sqrt(1.25) / math.sqrt(2)
    m = (0.65625 + d) / 2
    expected = [[1.0, m * (1 - (0.65625 - m)), 0.5625]]
    assert expected[0][1] == pytest.approx(0.3361395, abs=1e-6)
    np.testing.assert_allclose(relation_targets(seg, 2), expected, atol=1e-6)


def test_relations_4x4_hand_computed_with_absent_class():
    # class 0: the 2x2 top-left block (4 px): r0 = 0.25, m0 = (0.5, 0.5)
    # class 1: the other 12 px: r1 = 0.75 > 0.5 -> diagonal weight 1;
    #   row sum 0+0+1+1 + 4*2 + 4*3 = 22, col sum 2+3+2+3 + 2*(0+1+2+3) = 22 -> m1 = (11/6, 11/6)
    # class 2 absent -> its pairs are 0.
    # (0,0): (r0 + 0.5)^2 = 0.5625
    # (0,1): s = 1 * (1 - (0.75 - 0.5)) = 3/4; |m0 - m1| = sqrt(2) * 4/3, |(3,3)| = 3 sqrt(2)
    #        d = 1 - 4/9 = 5/9; (s+d)/2 = 47/72; w = 47/72 * (1 - (3/4 - 47/72)) = 47*65/72^2
    seg = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]])
    expected = [0.5625, 3055 / 5184, 0.0, 1.0, 0.0, 0.0]  # (00, 01, 02, 11, 12, 22)
    out = relation_targets(seg[None], 3)
    assert out.shape == (1, 6) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], expected, atol=1e-6)
    np.testing.assert_allclose(relation_targets(seg, 3), out)  # a single (H, W) map


def test_relations_unlabelled_map_is_zero_and_bad_ids_raise():
    assert not relation_targets(-np.ones((2, 3, 3), int), 4).any()
    with pytest.raises(ValueError, match=r"class ids must lie in \[-1, 4\), got \[5, 5\]"):
        relation_targets(np.full((1, 2, 2), 5), 4)


def test_relations_tf_twin_equals_numpy():
    rng = np.random.default_rng(1)
    maps = rng.integers(-1, 6, size=(5, 13, 9)).astype(np.int32)
    maps[1] = -1                       # nothing labelled
    maps[2] = np.where(maps[2] > 2, 3, maps[2])  # some classes absent
    maps[3, :, :] = 4                  # one class covers everything
    ref = relation_targets(maps, 6)
    out = relation_targets_tf(tf.constant(maps), 6).numpy()
    assert out.shape == (5, 21)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    graph = tf.function(lambda m: relation_targets_tf(m, 6),
                        input_signature=[tf.TensorSpec([None, 13, 9], tf.int32)])
    np.testing.assert_allclose(graph(maps).numpy(), ref, atol=1e-5)
    # the static-shape form (XLA steps), eager and XLA-compiled
    np.testing.assert_allclose(relation_targets_tf(maps, 6, static=True).numpy(), ref, atol=1e-5)
    xla = tf.function(lambda m: relation_targets_tf(m, 6, static=True), jit_compile=True)
    np.testing.assert_allclose(xla(maps).numpy(), ref, atol=1e-5)


# ---------------------------------------------------------------- task losses
def test_sigmoid_ce_mean_over_classes():
    logits = tf.constant([[0.0, 0.0], [100.0, -100.0]])
    labels = tf.constant([[1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(sigmoid_ce_per_sample(labels, logits).numpy(),
                               [math.log(2), 0.0], atol=1e-6)


def test_pixel_ce_ignores_unlabelled_pixels():
    # sample 0: pixel (0,0) class 0 with logits (0,0) -> ln 2; pixel (0,1) is -1 with a huge
    # wrong logit that must not count. sample 1: no labelled pixel -> 0, not NaN.
    logits = tf.constant([[[[0.0, 0.0], [-50.0, 50.0]]], [[[3.0, 1.0], [1.0, 3.0]]]])
    seg = tf.constant([[[0, -1]], [[-1, -1]]])
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = pixel_ce_per_sample(seg, logits)
        total = tf.reduce_sum(loss)
    np.testing.assert_allclose(loss.numpy(), [math.log(2), 0.0], atol=1e-6)
    grad = tape.gradient(total, logits).numpy()
    assert np.isfinite(grad).all() and not grad[1].any() and not grad[0, 0, 1].any()


def test_mse_per_sample():
    np.testing.assert_allclose(mse_per_sample(tf.constant([[0.0, 1.0]]),
                                              tf.constant([[1.0, 3.0]])).numpy(), [2.5])


# ---------------------------------------------------------------- VAE terms
def test_kl_hand_computed():
    # sample 0: mu (0, 1), std (1, 2): dims give log(1+1e-7) ~ 1e-7 and 1 + log 4 - 1 - 4
    # -> KL = -0.5 * (log 4 - 4) = 1.3068528; sample 1: mu 0, std 1 -> ~0
    mu = tf.constant([[0.0, 1.0], [0.0, 0.0]])
    std = tf.constant([[1.0, 2.0], [1.0, 1.0]])
    np.testing.assert_allclose(kl_per_sample(mu, std).numpy(), [1.3068528, 0.0], atol=1e-6)
    # pixel variant: sum over latent dims, mean over the positions
    mu4 = tf.reshape(tf.stack([mu, mu]), [1, 2, 2, 2])
    std4 = tf.reshape(tf.stack([std, std]), [1, 2, 2, 2])
    np.testing.assert_allclose(kl_per_sample(mu4, std4).numpy(), [1.3068528 / 2], atol=1e-6)


def test_kl_reductions_on_a_hand_made_latent_map():
    # std = 1 makes each element's term t = 0.5 * mu^2 (up to 5e-8): choose mu = sqrt(2 t) with
    # t = 0..23 over (h, w, E) = (2, 3, 4); sample 1 has 2 t. Sum of t = 276 (552).
    t = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    t = np.concatenate([t, 2 * t])
    mu, std = tf.constant(np.sqrt(2 * t)), tf.ones((2, 2, 3, 4))
    # latent: sum over E, mean over the 6 positions -> 276 / 6 = 46
    np.testing.assert_allclose(kl_per_sample(mu, std, "latent").numpy(), [46.0, 92.0], atol=1e-4)
    # published: sum over the 2 rows, mean over w x E = 12 values -> 276 / 12 = 23 = 46 * h / E
    np.testing.assert_allclose(kl_per_sample(mu, std, "published").numpy(), [23.0, 46.0],
                               atol=1e-4)
    np.testing.assert_allclose(kl_per_sample(mu, std).numpy(), [46.0, 92.0], atol=1e-4)
    # a pooled latent (B, E): both reductions are the sum over the latent dims
    mu2, std2 = tf.constant([[0.0, 1.0], [2.0, 0.0]]), tf.constant([[1.0, 2.0], [1.0, 1.0]])
    for reduction in ("latent", "published"):
        np.testing.assert_allclose(kl_per_sample(mu2, std2, reduction).numpy(),
                                   [1.3068528, 2.0], atol=1e-6)
    with pytest.raises(ValueError, match="kl_reduction: 'rows' is not one of latent, published"):
        kl_per_sample(mu2, std2, "rows")


def test_recon_hand_computed_and_stops_feature_gradient():
    feat = tf.Variable([[0.0, 0.0], [1.0, 1.0]])
    dec = tf.Variable([[1.0, 2.0], [1.0, 1.0]])
    with tf.GradientTape() as tape:
        loss = recon_per_sample(dec, feat)
        total = tf.reduce_sum(loss)
    np.testing.assert_allclose(loss.numpy(), [2.5, 0.0])
    g_feat, g_dec = tape.gradient(total, [feat, dec])
    assert g_feat is None and g_dec is not None


# ---------------------------------------------------------------- selection
def test_minmax_norm_constant_is_zero():
    np.testing.assert_allclose(minmax_norm(tf.constant([2.0, 2.0])).numpy(), [0, 0])
    np.testing.assert_allclose(minmax_norm(tf.constant([1.0, 3.0, 2.0])).numpy(), [0, 1, 0.5])


def test_selection_hand_computed():
    # norm(dis) = (0, 1, .5, .25); norm(gen) = (0, 0, 1, 1/3); diff = (0, 1, -.5, -1/12)
    dis = tf.constant([0.1, 0.9, 0.5, 0.3])
    gen = tf.constant([0.2, 0.2, 0.8, 0.4])
    np.testing.assert_array_equal(select_noisy(dis, gen, 50).numpy(), [1, 1, 0, 0])  # n = 2
    np.testing.assert_array_equal(select_noisy(dis, gen, 25).numpy(), [0, 1, 0, 0])  # n = 1
    np.testing.assert_array_equal(select_noisy(dis, gen, 74).numpy(), [1, 1, 0, 0])  # floor 2.96
    np.testing.assert_array_equal(select_noisy(dis, gen, 75).numpy(), [1, 1, 0, 1])  # n = 3
    np.testing.assert_array_equal(select_noisy(dis, gen, 24).numpy(), [0, 0, 0, 0])  # n = 0


def test_selection_counts():
    label = tf.constant([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    noisy = tf.constant([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])  # 1 and 2 corrupted
    mask = tf.constant([1.0, 1.0, 0.0, 0.0])
    tp, nsel, ncorr = (float(x) for x in selection_counts(mask, label, noisy))
    assert (tp, nsel, ncorr) == (1.0, 2.0, 2.0)
