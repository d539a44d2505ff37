"""GRID model and its compiled training / evaluation steps (docs/training.md).

Shapes: images (B, H, W, Cin) float32 normalised; ``feature`` (B, F) pooled (BCE, RRL) or
(B, h, w, F) map (PCE); latent mu / std / z (B, E) or (B, h, w, E).
"""
import contextlib

import keras
import tensorflow as tf
from keras import layers

from losses.selection import select_noisy, selection_counts
from losses.vae import kl_per_sample, recon_per_sample
from models import bce, pce, rrl
from models.backbones import build_backbone
from models.base import Model, compile_step

VARIANTS = {"BCE": bce, "PCE": pce, "RRL": rrl}
LOSS_KEYS = ("dis_loss", "gen_loss", "recon_loss", "kl_loss", "hybrid_loss", "loss")
GRID_ONLY = ("gen_loss", "recon_loss", "kl_loss", "hybrid_loss")  # 0 in a baseline's outputs
# printed per epoch (epoch_report.py); the total (KL-dominated) stays in TensorBoard
GRID_TERMS = (("dis_loss", "dis"), ("gen_loss", "gen"), ("recon_loss", "recon"),
              ("kl_loss", "KL"), ("hybrid_loss", "hybrid"))


def _dense_or_conv(units, pooled, activation, name):
    if pooled:
        return layers.Dense(units, activation=activation, name=name)
    return layers.Conv2D(units, 1, activation=activation, name=name)


class GridModel(Model):
    """Backbone + discriminative head, and for GRID a VAE branch with a generative head.

    Attributes: ``backbone`` (image -> feature map), ``feature_model`` (plain keras.Model,
    image -> pooled feature (B, F), shares the backbone's layers), ``dis_head``; GRID only:
    ``latent`` (feature -> 2E: mu, rho), ``decoder`` (z -> F channels, ReLU), ``gen_head``
    (z -> task output). ``groups`` {"backbone", "discriminative", "generative"} -> variables,
    taken from the sub-models that own them; ``trainable_variables``; ``keras_models``.
    """

    def __init__(self, cfg):
        """``cfg``: a :class:`models.config.ModelConfig`, or a run Config (its model part is
        taken)."""
        super().__init__(cfg)
        cfg = self.cfg
        self.variant_name, self.is_grid = cfg.task, cfg.is_grid
        if self.is_grid:  # a baseline keeps the defaults: its loss (the dis term) alone
            self.epoch_terms, self.val_terms = GRID_TERMS, (("dis_loss", "dis"),)
        else:
            self.placeholder_metrics = GRID_ONLY
        if self.variant_name not in VARIANTS:
            raise ValueError(f"model_name {cfg.model_name!r} is not a GRID variant or baseline")
        self.variant = VARIANTS[self.variant_name]
        self.pooled = self.variant.POOLED
        self.seed = cfg.seed
        self.backbone = build_backbone(cfg.backbone, tuple(cfg.input_shape), cfg.weights)
        fmap_shape = tuple(self.backbone.output.shape[1:])
        self.feature_dim = int(fmap_shape[-1])
        self.pool = layers.GlobalAveragePooling2D(name="feature")
        image = keras.Input(shape=tuple(cfg.input_shape), name="image")
        self.feature_model = keras.Model(image, self.pool(self.backbone(image)),
                                         name="feature_model")
        feat_shape = (self.feature_dim,) if self.pooled else fmap_shape
        self.dis_head = self.variant.build_head(feat_shape, cfg, "discriminative_head")
        self.keras_models = {"backbone": self.backbone, "discriminative_head": self.dis_head}
        gen_vars = []
        if self.is_grid:
            E = int(cfg.embed_dim)
            inp = keras.Input(shape=feat_shape, name="latent_in")
            self.latent = keras.Model(inp, _dense_or_conv(2 * E, self.pooled, None, "latent")(inp),
                                      name="latent")
            z_shape = (E,) if self.pooled else fmap_shape[:-1] + (E,)
            self.z_shape = tuple(int(d) for d in z_shape)  # per sample: (E,) or (h, w, E)
            zin = keras.Input(shape=z_shape, name="decoder_in")
            self.decoder = keras.Model(
                zin, _dense_or_conv(self.feature_dim, self.pooled, "relu", "decoder")(zin),
                name="decoder")
            self.gen_head = self.variant.build_head(z_shape, cfg, "generative_head")
            self.keras_models.update(latent=self.latent, decoder=self.decoder,
                                     generative_head=self.gen_head)
            gen_vars = (list(self.latent.trainable_variables)
                        + list(self.decoder.trainable_variables)
                        + list(self.gen_head.trainable_variables))
        self.groups = {"backbone": list(self.backbone.trainable_variables),
                       "discriminative": list(self.dis_head.trainable_variables),
                       "generative": gen_vars}
        self.trainable_variables = (self.groups["backbone"] + self.groups["discriminative"]
                                    + self.groups["generative"])

    def noise_seed(self, iterations, replica_id=None):
        """Stateless seed (2,) int64 for eps from (cfg.seed, iterations[, replica id])."""
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(iterations, tf.int64)])
        if replica_id is not None:
            seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(replica_id, tf.int64))
        return seed

    @staticmethod
    def draw_eps(shape, seed):
        """eps ~ N(0, 1) of ``shape`` from a stateless seed (TF's kernel, outside XLA too)."""
        return tf.random.stateless_normal(shape, seed, dtype=tf.float32)

    def forward(self, images, training=False, seed=None, eps=None):
        """Forward pass -> dict: feature, dis (discriminative output) and, for GRID, mu, std, z,
        decoded, gen. seed: (2,) int stateless seed for eps ~ N(0, 1) per sample and element;
        ``eps`` (mu's shape): the draw itself, made outside (XLA steps); neither gives z = mu."""
        fmap = self.backbone(images, training=training)
        feat = self.pool(fmap) if self.pooled else fmap
        out = {"feature": feat, "dis": self.dis_head(feat, training=training)}
        if self.is_grid:
            # float32 from here (mixed precision): the KL and the noise live in float32
            mu, rho = tf.split(tf.cast(self.latent(feat, training=training), tf.float32), 2, -1)
            std = tf.math.softplus(rho)
            if eps is None and seed is not None:
                eps = self.draw_eps(tf.shape(mu), seed)
            z = mu if eps is None else mu + std * tf.cast(eps, mu.dtype)
            out.update(mu=mu, std=std, z=z, decoded=self.decoder(z, training=training),
                       gen=self.gen_head(z, training=training))
        return out

    def per_sample_losses(self, batch, training=False, seed=None):
        """Per-sample losses (B,) of one batch: dis, and for GRID gen, recon, kl, noisy (mask).
        A batch key ``_eps`` (drawn outside an XLA step) replaces the draw from ``seed``."""
        out = self.forward(batch["image"], training=training, seed=seed, eps=batch.get("_eps"))
        target = self.variant.targets(batch, self.cfg)
        res = {"dis": self.variant.loss_per_sample(target, out["dis"])}
        if self.is_grid:
            res["gen"] = self.variant.loss_per_sample(target, out["gen"])
            res["recon"] = recon_per_sample(out["decoded"], out["feature"])
            res["kl"] = kl_per_sample(out["mu"], out["std"], self.cfg.kl_reduction)
            res["noisy"] = select_noisy(res["dis"], res["gen"], self.cfg.noisy_sel_prcnt)
        return res

    def make_train_step(self, optimizer, strategy=None):
        return make_train_step(self, optimizer, strategy)

    def make_eval_step(self, strategy=None):
        return make_eval_step(self, strategy)

    def retrieval_model(self) -> keras.Model:
        """Pooled feature, or for ``feature_layer`` "output" image -> sigmoid(discriminative
        head) (B, nb_class): the class scores of the multi-label head."""
        if self.cfg.feature_layer != "output":
            return self.feature_model
        image = keras.Input(shape=tuple(self.cfg.input_shape), name="image")
        logits = self.dis_head(self.feature_model(image))
        return keras.Model(image, keras.layers.Activation("sigmoid", name="scores")(logits),
                           name="output_feature_model")


def _objectives(model, res, global_b, kl_weight):
    """Scalar objectives (summed per replica, divided by the global batch size)."""
    s = lambda x: tf.reduce_sum(x) / global_b  # noqa: E731
    obj = {"dis_loss": s(res["dis"])}
    if model.is_grid:
        obj["gen_loss"] = s(res["gen"])
        obj["recon_loss"] = s(res["recon"])
        obj["kl_loss"] = s(res["kl"])
        obj["hybrid_loss"] = s(res["gen"] * res["noisy"] + res["dis"] * (1.0 - res["noisy"]))
        obj["generative_total"] = obj["gen_loss"] + obj["recon_loss"] + kl_weight * obj["kl_loss"]
        obj["loss"] = obj["dis_loss"] + obj["generative_total"] + obj["hybrid_loss"]
    else:
        zero = tf.zeros_like(obj["dis_loss"])
        obj.update(gen_loss=zero, recon_loss=zero, kl_loss=zero, hybrid_loss=zero,
                   loss=obj["dis_loss"])
    return obj


def _global_batch(batch):
    """(replica id or None, global batch size float32) in the current replica context."""
    ctx = tf.distribute.get_replica_context()
    b = tf.cast(tf.shape(batch["image"])[0], tf.float32)
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return None, b
    return ctx.replica_id_in_sync_group, ctx.all_reduce(tf.distribute.ReduceOp.SUM, b)


def _metrics(model, obj, res, batch):
    m = {k: obj[k] for k in LOSS_KEYS}
    if model.is_grid:
        tp, nsel, ncorr = selection_counts(res["noisy"], batch["label"], batch["noisy_label"])
        m.update(_tp=tp, _nsel=nsel, _ncorr=ncorr)
    return m


def finish(metrics):
    """Add the step's selection precision (0 when nothing selected) and recall (0 when no
    sample is corrupted); the counts stay in the output (keys starting with "_") so that many
    steps can be pooled by ``models.base.mean_metrics``."""
    out = dict(metrics)
    if "_tp" in metrics:
        out["sel_precision"] = tf.math.divide_no_nan(metrics["_tp"], metrics["_nsel"])
        out["sel_recall"] = tf.math.divide_no_nan(metrics["_tp"], metrics["_ncorr"])
    return out


def _distribute(fn, strategy):
    """Wrap a replica function: run per replica and SUM-reduce the metric dict."""
    if strategy is None:
        return lambda batch: finish(fn(batch))

    def run(batch):
        per_replica = strategy.run(fn, args=(batch,))
        reduced = {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                   for k, v in per_replica.items()}
        return finish(reduced)
    return run


def make_train_step(model, optimizer, strategy=None):
    """Compiled training step: callable(batch dict) -> dict of scalar tensors.

    GRID: mean(dis) -> discriminative head; mean(gen) + recon + kl_weight * KL -> generative
    part; hybrid -> backbone; one ``optimizer.apply_gradients`` over all three groups, so
    ``optimizer.iterations`` advances by 1 per step. Baselines: mean(dis) -> backbone + head.
    eps is drawn from (cfg.seed, optimizer.iterations before the update). With ``strategy``
    (batch = a distributed batch), losses are divided by the global batch size and gradients
    are summed over replicas by the optimizer; metrics are reduced.
    """
    kl_weight = float(model.cfg.kl_weight)
    g = model.groups
    if not optimizer.built:
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            optimizer.build(model.trainable_variables)

    def replica_step(batch):
        replica_id, global_b = _global_batch(batch)
        seed = model.noise_seed(optimizer.iterations, replica_id) if model.is_grid else None
        with tf.GradientTape(persistent=model.is_grid) as tape:
            res = model.per_sample_losses(batch, training=True, seed=seed)
            obj = _objectives(model, res, global_b, kl_weight)
            # scale_loss: x loss scale under float16 (LossScaleOptimizer), else the loss itself;
            # apply_gradients divides every group's gradients by the same scale
            scaled = optimizer.scale_loss
            if model.is_grid:
                pairs = [(scaled(obj["dis_loss"]), g["discriminative"]),
                         (scaled(obj["generative_total"]), g["generative"]),
                         (scaled(obj["hybrid_loss"]), g["backbone"])]
            else:
                pairs = [(scaled(obj["dis_loss"]), g["backbone"] + g["discriminative"])]
        grads, variables = [], []
        for loss, vs in pairs:
            for grad, v in zip(tape.gradient(loss, vs), vs):
                grads.append(tf.zeros_like(v) if grad is None else grad)
                variables.append(v)
        del tape
        optimizer.apply_gradients(zip(grads, variables))
        return _metrics(model, obj, res, batch)

    def draw_eps(batch):  # XLA's random kernels differ from TF's: draw eps outside, same values
        shape = tf.stack([tf.shape(batch["image"])[0], *model.z_shape])
        return model.draw_eps(shape, model.noise_seed(optimizer.iterations))

    return _compile(_distribute(replica_step, strategy), model.cfg.jit_compile,
                    draw_eps if model.is_grid else None)


def _compile(fn, jit_compile, draw_eps=None):
    """``fn`` as a compiled step; with ``jit_compile`` an XLA-compiled ``fn`` inside a
    plain step that drops the batch's string tensors (patch names: XLA has no string type, and
    no step reads them) and adds ``_eps`` from ``draw_eps(batch)`` when given."""
    if not jit_compile:
        return compile_step(fn)
    compiled = compile_step(fn, jit_compile=True)

    def outer(batch):
        batch = {k: v for k, v in batch.items() if v.dtype != tf.string}
        if draw_eps is not None:
            batch["_eps"] = draw_eps(batch)
        return compiled(batch)
    return compile_step(outer)


def make_eval_step(model, strategy=None):
    """Compiled evaluation step (training=False, z = mu): callable(batch) -> same scalars."""
    kl_weight = float(model.cfg.kl_weight)

    def replica_step(batch):
        _, global_b = _global_batch(batch)
        res = model.per_sample_losses(batch, training=False, seed=None)
        return _metrics(model, _objectives(model, res, global_b, kl_weight), res, batch)

    return _compile(_distribute(replica_step, strategy), model.cfg.jit_compile)
