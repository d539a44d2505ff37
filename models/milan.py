"""MiLaN (SPEC section 8): a hashing network on pooled backbone features, and its compiled steps.

Hashing network: feature (B, F) -> Dense 1024, LeakyReLU 0.2 -> Dense 512, LeakyReLU 0.2 ->
Dense K, sigmoid -> (B, K); code bit = output > 0.5. The published network reads the 2048-d
pooled output of a frozen ImageNet InceptionV3; here any backbone of models/backbones.py with
optional local weights, frozen (``train_backbone`` false: features are computed once and
cached) or trained jointly with the hashing network.
"""
from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from losses.hashing import in_batch_triplets, milan_losses
from models.backbones import build_backbone
from models.config import ModelConfig

LOSS_KEYS = ("triplet_loss", "push_loss", "balance_loss", "loss")


def build_hash_net(feature_dim: int, bits: int, name: str = "hash_net") -> keras.Model:
    """(B, feature_dim) -> sigmoid outputs (B, bits).

    A ``Normalization`` layer ("hash_norm", identity until adapted) comes first: the frozen
    path adapts it to the cached training features (per-dimension mean and variance), so any
    backbone's feature scale suits the network (see README, MiLaN decisions).
    """
    inp = keras.Input(shape=(int(feature_dim),), name="hash_in")
    x = layers.Normalization(axis=-1, name="hash_norm")(inp)
    x = layers.Dense(1024, name="hash_fc1")(x)
    x = layers.LeakyReLU(negative_slope=0.2, name="hash_act1")(x)
    x = layers.Dense(512, name="hash_fc2")(x)
    x = layers.LeakyReLU(negative_slope=0.2, name="hash_act2")(x)
    out = layers.Dense(int(bits), activation="sigmoid", name="hash_out")(x)
    return keras.Model(inp, out, name=name)


class MilanModel:
    """Backbone (+ global average pooling) and hashing network.

    ``feature_model``: image -> pooled feature (B, F); ``hash_net``: (B, F) -> (B, K);
    ``retrieval_model``: image -> sigmoid outputs (B, K) (saved as feature_model.keras; the
    retrieval side packs its outputs into codes); ``trainable_variables``: the hashing network,
    plus the backbone when ``cfg.train_backbone``; ``keras_models`` for checkpoints.
    """

    def __init__(self, cfg):
        cfg = ModelConfig.from_config(cfg)  # a run Config works too: its model part is taken
        self.cfg = cfg
        self.backbone = build_backbone(cfg.backbone, tuple(cfg.input_shape), cfg.weights)
        self.feature_dim = int(self.backbone.output.shape[-1])
        self.pool = layers.GlobalAveragePooling2D(name="feature")
        image = keras.Input(shape=tuple(cfg.input_shape), name="image")
        feat = self.pool(self.backbone(image))
        self.feature_model = keras.Model(image, feat, name="feature_model")
        self.hash_net = build_hash_net(self.feature_dim, cfg.hash_bits)
        self.retrieval_model = keras.Model(image, self.hash_net(feat), name="hash_model")
        self.keras_models = {"backbone": self.backbone, "hash_net": self.hash_net}
        self.trainable_variables = list(self.hash_net.trainable_variables)
        if cfg.train_backbone:
            self.trainable_variables = (list(self.backbone.trainable_variables)
                                        + self.trainable_variables)
        else:
            self.backbone.trainable = False


def make_optimizer(cfg) -> keras.optimizers.Optimizer:
    """Adam with MiLaN's published moments (beta1 0.5, beta2 0.9) at ``cfg.learning_rate``;
    SGD when the config says so; loss-scaled under mixed_float16 (models/precision.py)."""
    from models.precision import loss_scaled

    if cfg.optimizer == "SGD":
        return loss_scaled(keras.optimizers.SGD(learning_rate=cfg.learning_rate), cfg)
    return loss_scaled(keras.optimizers.Adam(learning_rate=cfg.learning_rate, beta_1=0.5,
                                             beta_2=0.9), cfg)


def make_feature_step(model: MilanModel, optimizer):
    """Compiled step on cached features: (anchor, positive, negative) (T, F) -> loss dict."""
    if not optimizer.built:
        optimizer.build(model.trainable_variables)

    @tf.function(reduce_retracing=True)
    def step(a, p, n):
        with tf.GradientTape() as tape:
            out = model.hash_net(tf.concat([a, p, n], 0), training=True)
            oa, op, on = tf.split(out, 3, axis=0)
            losses = milan_losses(oa, op, on)
            scaled = optimizer.scale_loss(losses["loss"])  # x loss scale under float16
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return losses
    return step


def make_joint_step(model: MilanModel, optimizer, seed: int, label_fn):
    """Compiled step on image batches (backbone trained too): in-batch triplets drawn from
    (seed, optimizer.iterations). ``label_fn(batch) -> (B, C)`` labels that define relevance."""
    if not optimizer.built:
        optimizer.build(model.trainable_variables)

    @tf.function
    def step(batch):
        s = tf.stack([tf.constant(seed, tf.int64), tf.cast(optimizer.iterations, tf.int64)])
        pos, neg, valid = in_batch_triplets(label_fn(batch), s)
        with tf.GradientTape() as tape:
            out = model.hash_net(model.pool(model.backbone(batch["image"], training=True)),
                                 training=True)
            losses = milan_losses(out, tf.gather(out, pos), tf.gather(out, neg), weight=valid)
            scaled = optimizer.scale_loss(losses["loss"])  # x loss scale under float16
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return {**losses, "valid_triplets": tf.reduce_sum(tf.cast(valid, tf.float32))}
    return step
