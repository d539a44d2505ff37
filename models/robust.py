"""Established label-noise-robust methods beside GRID: SAT, ELR, JoCoR (multi-label, sigmoid).

Each reuses the baseline BCE network of ``models.grid.GridModel`` (same backbone, same head,
same retrieval feature) and only changes the loss: see ``losses.robust`` for the per-sample
losses and their hyperparameters. SAT and ELR keep a per-sample target memory (N, C), indexed
by the pipeline's ``sample_index`` and checkpointed with the run (``extra_state``), so a resumed
run continues exactly. JoCoR trains two networks; the first one's feature is the retrieval
feature, and the samples it discards are reported as its noisy selection (``sel_precision``,
``sel_recall``), like GRID's. The epoch a step belongs to is ``iterations // steps_per_epoch``.
"""
from __future__ import annotations

import math

import tensorflow as tf

from losses import robust as R
from losses.selection import selection_counts
from losses.task import sigmoid_ce_per_sample
from models import grid
from models.base import Model, compile_step


def count_records(paths) -> int:
    """Number of records in the TFRecord files ``paths`` (read once, at model build; for a
    BigEarthNet-size file this is one pass over its bytes)."""
    from archives.record_files import total_records

    return total_records(list(paths))  # a noise overlay in ``paths`` is not counted


def schedule(cfg) -> dict:
    """Epoch schedules of the published 200-epoch runs, scaled to ``cfg.nb_epoch``."""
    return {"sat_start_epoch": int(round(R.SAT_START_FRACTION * cfg.nb_epoch)),
            "jocor_ramp_epochs": max(1, int(round(R.JOCOR_RAMP_FRACTION * cfg.nb_epoch))),
            "jocor_tau": cfg.noisy_sel_prcnt / 100.0}


class RobustModel(Model):
    """The BCE network and the schedule; a subclass defines the method's ``loss``."""

    is_grid = False
    # the method's objective, and the plain BCE on the noisy labels (the validation loss)
    epoch_terms = (("loss", "loss"), ("dis_loss", "BCE"))
    val_terms = (("loss", "BCE"),)
    placeholder_metrics = grid.GRID_ONLY

    def __init__(self, cfg, n_train: int | None = None):
        """``n_train``: training records (default: counted in ``cfg.noisy_train_paths``)."""
        super().__init__(cfg)
        self.method = self.cfg.model_name
        self.net = grid.GridModel(self.cfg.replace(model_name="BCE"))
        self.feature_model = self.net.feature_model
        self.keras_models = dict(self.net.keras_models)
        self.trainable_variables = list(self.net.trainable_variables)
        self.groups = {"backbone": list(self.net.groups["backbone"]),
                       "discriminative": list(self.net.groups["discriminative"]),
                       "generative": []}
        self.n_train = (count_records(self.cfg.noisy_train_paths) if n_train is None
                        else int(n_train))
        self.steps_per_epoch = max(1, math.ceil(self.n_train / self.cfg.batch_size))
        self.schedule = schedule(self.cfg)

    def loss(self, batch, epoch, labels, logits, bce):
        """(scalar loss, rows to store in the memory or None, keep mask or None)."""
        raise NotImplementedError

    def make_train_step(self, optimizer, strategy=None):
        return make_train_step(self, optimizer, strategy)

    def make_eval_step(self, strategy=None):
        return self.net.make_eval_step(strategy)


class _MemoryModel(RobustModel):
    """SAT and ELR: a per-sample target memory (N, C), checkpointed with the run."""

    def __init__(self, cfg, n_train: int | None = None):
        super().__init__(cfg, n_train)
        self.memory = tf.Variable(tf.zeros((self.n_train, self.cfg.nb_class), tf.float32),
                                  trainable=False, name="target_memory")

    def extra_state(self) -> dict:
        return {"target_memory": self.memory}


class SATModel(_MemoryModel):
    def loss(self, batch, epoch, labels, logits, bce):
        start = self.schedule["sat_start_epoch"]
        old = tf.gather(self.memory, batch["sample_index"])
        old = tf.where(epoch == start, labels, old)  # targets start from the labels at E_s
        targets = R.moving_targets(old, tf.sigmoid(logits), R.SAT_MOMENTUM)
        loss_i, w_i = R.sat_loss_per_sample(targets, logits)
        active = epoch >= start
        loss = tf.where(active, tf.math.divide_no_nan(tf.reduce_sum(loss_i), tf.reduce_sum(w_i)),
                        tf.reduce_mean(bce))
        return loss, tf.where(active, targets, old), None


class ELRModel(_MemoryModel):
    def loss(self, batch, epoch, labels, logits, bce):
        old = tf.gather(self.memory, batch["sample_index"])
        targets = R.moving_targets(old, tf.sigmoid(logits), R.ELR_BETA)
        return tf.reduce_mean(R.elr_loss_per_sample(labels, targets, logits)), targets, None


class JoCoRModel(RobustModel):
    """Two networks trained together; the first one's feature is the retrieval feature."""

    def __init__(self, cfg, n_train: int | None = None):
        super().__init__(cfg, n_train)
        self.peer = grid.GridModel(self.net.cfg)
        self.keras_models.update(peer_backbone=self.peer.backbone,
                                 peer_discriminative_head=self.peer.dis_head)
        self.trainable_variables += list(self.peer.trainable_variables)

    def loss(self, batch, epoch, labels, logits, bce):
        logits2 = self.peer.forward(batch["image"], training=True)["dis"]
        joint = R.jocor_loss_per_sample(labels, logits, logits2)
        rate = R.forget_rate(epoch, self.schedule["jocor_tau"],
                             self.schedule["jocor_ramp_epochs"])
        keep = R.small_loss_mask(joint, rate)
        return tf.reduce_sum(joint * keep) / tf.reduce_sum(keep), None, keep


def make_train_step(model: RobustModel, optimizer, strategy=None):
    """Compiled step of SAT / ELR / JoCoR: one ``apply_gradients``; the memory rows of the
    batch are written after the update. Returns the loop's scalars (``dis_loss`` = mean BCE on
    the noisy labels, ``loss`` = the method's objective; JoCoR adds sel_precision/recall)."""
    if strategy is not None:
        raise ValueError(f"{model.method}: distributed strategies are not supported")
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    variables = model.trainable_variables

    def step(batch):
        epoch = optimizer.iterations // model.steps_per_epoch
        labels = tf.cast(batch["noisy_label"], tf.float32)
        with tf.GradientTape() as tape:
            logits = model.net.forward(batch["image"], training=True)["dis"]
            bce = sigmoid_ce_per_sample(labels, logits)
            loss, rows, keep = model.loss(batch, epoch, labels, logits, bce)
            scaled = optimizer.scale_loss(loss)  # x loss scale under float16, else the loss
        grads = tape.gradient(scaled, variables)
        optimizer.apply_gradients(
            [(tf.zeros_like(v) if g is None else g, v) for g, v in zip(grads, variables)])
        if rows is not None:
            model.memory.scatter_nd_update(batch["sample_index"][:, None], rows)
        zero = tf.zeros_like(loss)
        out = {"dis_loss": tf.reduce_mean(bce), "gen_loss": zero, "recon_loss": zero,
               "kl_loss": zero, "hybrid_loss": zero, "loss": loss}
        if keep is not None:
            tp, nsel, ncorr = selection_counts(1.0 - keep, batch["label"], batch["noisy_label"])
            out.update(_tp=tp, _nsel=nsel, _ncorr=ncorr)
        return grid.finish(out)

    return compile_step(step)
