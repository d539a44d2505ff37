"""MiLaN: a hashing network on pooled backbone features, its batches and compiled steps.

Hashing network: feature (B, F) -> Dense 1024, LeakyReLU 0.2 -> Dense 512, LeakyReLU 0.2 ->
Dense K, sigmoid -> (B, K); code bit = output > 0.5. The published network reads the 2048-d
pooled output of a frozen ImageNet InceptionV3; here any backbone of models/backbones.py with
optional local weights, frozen or trained jointly with the hashing network.

Frozen backbone (``train_backbone`` false, as published): the pooled backbone features of the
(noisy) training records are computed once, without augmentation, and cached
(models/milan_cache.py); the hash net's first layer is adapted to their per-dimension mean and
variance; an epoch is ceil(N / batch_size) batches of ``batch_size / 3`` triplets sampled from
the cache with the published rule (losses/hashing.py), from (seed, epoch), so runs repeat
exactly and a resumed epoch skips exactly the steps done; only the hashing network is updated.
Joint training (``train_backbone`` true): augmented image batches from the input pipeline,
triplets drawn inside each batch from (seed, optimizer step), both networks updated together.
Relevance labels for triplets: ``triplet_labels`` "label" = the records' noisy multi-hot
labels, "scene" = the UC Merced scene class from the patch name (DLRSD only).
"""
from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from losses.hashing import in_batch_triplets, milan_losses, sample_triplets
from models import milan_cache
from models.backbones import build_backbone
from models.base import Model, compile_step

LOSS_KEYS = ("triplet_loss", "push_loss", "balance_loss", "loss")


def build_hash_net(feature_dim: int, bits: int, name: str = "hash_net") -> keras.Model:
    """(B, feature_dim) -> sigmoid outputs (B, bits).

    A ``Normalization`` layer ("hash_norm", identity until adapted) comes first: the frozen
    path adapts it to the cached training features (per-dimension mean and variance), so any
    backbone's feature scale suits the network (docs/hashing.md, "MiLaN: metric-learning deep
    hashing", Decisions).
    """
    inp = keras.Input(shape=(int(feature_dim),), name="hash_in")
    x = layers.Normalization(axis=-1, name="hash_norm")(inp)
    x = layers.Dense(1024, name="hash_fc1")(x)
    x = layers.LeakyReLU(negative_slope=0.2, name="hash_act1")(x)
    x = layers.Dense(512, name="hash_fc2")(x)
    x = layers.LeakyReLU(negative_slope=0.2, name="hash_act2")(x)
    out = layers.Dense(int(bits), activation="sigmoid", name="hash_out")(x)
    return keras.Model(inp, out, name=name)


class MilanModel(Model):
    """Backbone (+ global average pooling) and hashing network.

    ``feature_model``: image -> pooled feature (B, F); ``hash_net``: (B, F) -> (B, K);
    ``retrieval_model()``: image -> sigmoid outputs (B, K) (saved as feature_model.keras; the
    retrieval side packs its outputs into codes); ``trainable_variables``: the hashing network,
    plus the backbone when ``cfg.train_backbone``; ``keras_models``: both networks (a frozen
    backbone is rebuilt from its weights file or seed, so checkpoints leave it out).
    """

    adam_betas = (0.5, 0.9)  # MiLaN's published Adam moments
    epoch_terms = (("loss", "loss"), ("triplet_loss", "triplet"), ("push_loss", "push"),
                   ("balance_loss", "balance"))
    checkpoint_every_s = 60.0  # its epochs are tiny: at most one epoch-end checkpoint a minute

    def __init__(self, cfg):
        super().__init__(cfg)
        cfg = self.cfg
        self.backbone = build_backbone(cfg.backbone, tuple(cfg.input_shape), cfg.weights)
        self.feature_dim = int(self.backbone.output.shape[-1])
        self.pool = layers.GlobalAveragePooling2D(name="feature")
        image = keras.Input(shape=tuple(cfg.input_shape), name="image")
        feat = self.pool(self.backbone(image))
        self.feature_model = keras.Model(image, feat, name="feature_model")
        self.hash_net = build_hash_net(self.feature_dim, cfg.hash_bits)
        self.hash_model = keras.Model(image, self.hash_net(feat), name="hash_model")
        self.keras_models = {"backbone": self.backbone, "hash_net": self.hash_net}
        self.trainable_variables = list(self.hash_net.trainable_variables)
        if cfg.train_backbone:
            self.trainable_variables = (list(self.backbone.trainable_variables)
                                        + self.trainable_variables)
        else:
            self.backbone.trainable = False
        self.features = self.labels = None  # the cache (frozen backbone), set by prepare

    def prepare(self, log, progress=False):
        if self.cfg.train_backbone:
            return
        feat, noisy, names = milan_cache.cached_features(self.cfg, self.feature_model, log,
                                                         progress)
        self.features = tf.constant(feat)
        self.labels = milan_cache.relevance_labels(self.cfg, noisy, names)
        self.hash_net.get_layer("hash_norm").adapt(feat)  # standardise the hash net's input

    def batches(self, epoch, drop_remainder=False, skip_batches=0):
        if self.cfg.train_backbone:
            return super().batches(epoch, drop_remainder, skip_batches)
        rng = np.random.default_rng([self.cfg.seed, epoch])
        n_steps = math.ceil(len(self.labels) / self.cfg.batch_size)
        n_triplets = self.cfg.batch_size // 3
        steps = [np.stack(sample_triplets(self.labels, n_triplets, rng), axis=1)
                 for _ in range(n_steps)]  # (T, 3): anchor, positive, negative rows
        return tf.data.Dataset.from_tensor_slices({"triplet": np.stack(steps)}).skip(skip_batches)

    def batch_transform(self):
        return super().batch_transform() if self.cfg.train_backbone else None

    def make_train_step(self, optimizer, strategy=None):
        if strategy is not None:
            raise ValueError("MiLaN: distributed strategies are not supported")
        if self.cfg.train_backbone:
            label_fn = (milan_cache.scene_label_fn(self.cfg.archive.scene_classes)
                        if self.cfg.triplet_labels == "scene"
                        else (lambda batch: batch["noisy_label"]))
            return make_joint_step(self, optimizer, self.cfg.seed, label_fn)
        return make_feature_step(self, optimizer)

    def checkpointed(self) -> dict:
        if self.cfg.train_backbone:
            return dict(self.keras_models)
        return {"hash_net": self.hash_net}

    def retrieval_model(self):
        return self.hash_model


def make_feature_step(model: MilanModel, optimizer):
    """Compiled step on cached features: batch {"triplet": (T, 3) row indices} -> loss dict."""
    if not optimizer.built:
        optimizer.build(model.trainable_variables)

    def step(batch):
        idx = batch["triplet"]
        rows = tf.gather(model.features, tf.concat([idx[:, 0], idx[:, 1], idx[:, 2]], 0))
        with tf.GradientTape() as tape:
            out = model.hash_net(rows, training=True)
            oa, op, on = tf.split(out, 3, axis=0)
            losses = milan_losses(oa, op, on)
            scaled = optimizer.scale_loss(losses["loss"])  # x loss scale under float16
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return losses
    return compile_step(step)


def make_joint_step(model: MilanModel, optimizer, seed: int, label_fn):
    """Compiled step on image batches (backbone trained too): in-batch triplets drawn from
    (seed, optimizer.iterations). ``label_fn(batch) -> (B, C)`` labels that define relevance."""
    if not optimizer.built:
        optimizer.build(model.trainable_variables)

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
    return compile_step(step)
