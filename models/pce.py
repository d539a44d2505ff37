"""Pixel head (GRID-PCE / PCE): feature map (B, h, w, F) -> logits (B, H, W, nb_class).

Three Conv2DTranspose layers (64 ReLU, 32 ReLU, nb_class linear), padding "same", so each
multiplies the size by its stride. The strides come from the actual feature-map size: with
f = H / h an integer (224 / 7 = 32 for DenseNet121 on DLRSD -> strides 4, 4, 2; 120 / 3 = 40 on
BigEarthNet -> 5, 4, 2) the chain is exact; otherwise the strides cover ceil(H / h) and a final
bilinear Resizing layer brings the logits to exactly (H, W) (e.g. a 7 x 7 map to 120: strides
3, 3, 2 give 126, resized to 120). Kernel size = 2 * stride (3 for stride 1).
"""
import math

import keras
from keras import layers

from losses.task import pixel_ce_per_sample

POOLED = False


def _factor3(f):
    """Strides (c, b, a), c >= b >= a >= 1, with product >= f: least excess, then most balanced."""
    best = None
    for a in range(1, f + 1):
        for b in range(a, f + 1):
            c = max(b, math.ceil(f / (a * b)))
            key = (a * b * c - f, c - a)
            if best is None or key < best[0]:
                best = (key, (c, b, a))
            if a * b >= f:
                break
        if a * a * a >= f:
            break
    return best[1]


def upsampling_plan(feat_hw, map_hw):
    """Strides (s1, s2, s3) and whether a final resize is needed, for feat_hw -> map_hw."""
    h, w = feat_hw
    H, W = map_hw
    f = max(math.ceil(H / h), math.ceil(W / w), 1)
    strides = _factor3(f)
    prod = strides[0] * strides[1] * strides[2]
    return strides, (h * prod, w * prod) != (H, W)


def build_head(in_shape, cfg, name, map_hw=None):
    """in_shape: (h, w, F) or (h, w, E); map_hw: pixel-map size, default cfg.input_shape[:2].
    Returns keras.Model (B, h, w, F) -> (B, H, W, nb_class) logits."""
    H, W = map_hw or tuple(cfg.input_shape[:2])
    strides, resize = upsampling_plan(in_shape[:2], (H, W))
    inp = keras.Input(shape=tuple(in_shape), name=f"{name}_in")
    x = inp
    for i, (ch, act, s) in enumerate(zip((64, 32, cfg.nb_class), ("relu", "relu", None), strides)):
        x = layers.Conv2DTranspose(ch, 2 * s if s > 1 else 3, strides=s, padding="same",
                                   activation=act, name=f"{name}_deconv{i + 1}")(x)
    if resize:
        x = layers.Resizing(H, W, interpolation="bilinear", name=f"{name}_resize")(x)
    return keras.Model(inp, x, name=name)


def targets(batch, cfg):
    """Noisy pixel map (B, H, W) int32, -1 = unlabelled."""
    return batch["noisy_seg_map"]


def loss_per_sample(target, output):
    """Softmax cross-entropy per labelled pixel, mean per sample -> (B,)."""
    return pixel_ce_per_sample(target, output)
