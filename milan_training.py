"""Training of MiLaN (SPEC section 8), called by ``training.train`` for model_name "MiLaN".

Frozen backbone (``train_backbone`` false, as published): the pooled backbone features of the
(noisy) training records are computed once, without augmentation, and cached in
``<weights>/<run>/train_features.h5`` (reused while backbone, weights file and records are
unchanged); the hash net's first layer is adapted to their per-dimension mean and variance; each
step then samples ``batch_size / 3`` triplets from the cache with the
published rule (losses/hashing.py) and updates the hashing network only. An epoch has
ceil(N / batch_size) steps; randomness comes from (seed, epoch), so runs repeat exactly.
Joint training (``train_backbone`` true): augmented image batches from the input pipeline,
triplets drawn inside each batch, backbone and hashing network updated together.

Relevance labels for triplets: ``triplet_labels`` "label" = the records' noisy multi-hot
labels (the noise of ``noise_prcnt`` applies, as for GRID), "scene" = the UC Merced scene class
from the patch name (MiLaN's single-label setting; DLRSD only).
Outputs as for every model: ``feature_model.keras`` (image -> sigmoid outputs (B, K); retrieval
packs them into codes), the dumped config, TensorBoard scalars, checkpoints
(``--resume`` continues from the last checkpointed epoch; checkpoints are written at most once a
minute and after the last epoch, without a frozen backbone, which is rebuilt from its weights
file or seed).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import h5py
import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

import run_guard
from atomic_files import atomic_path, write_json_atomic
from config import Config
from losses.hashing import sample_triplets
from models.milan import LOSS_KEYS, MilanModel, make_feature_step, make_joint_step, make_optimizer

CACHE_FILE = "train_features.h5"
CHECKPOINT_EVERY_S = 60.0


def _file_id(path) -> dict:
    st = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_key(cfg: Config) -> str:
    """What the cached features depend on: backbone, weights file (or seed), records."""
    key = {"backbone": cfg.backbone, "dataset": cfg.dataset,
           "weights": _file_id(cfg.weights) if cfg.weights else {"seed": cfg.seed},
           "records": [_file_id(p) for p in cfg.noisy_train_paths]}
    if cfg.bands is not None:  # another band set, other features (absent: keys stay as before)
        key["bands"] = cfg.archive.band_set
    return json.dumps(key, sort_keys=True)


def cached_features(cfg: Config, model: MilanModel, log=print, progress: bool = False):
    """(pooled features (N, F) float32, noisy labels (N, C), patch names (N,)) of the training
    records, from the cache when its key matches, else extracted and cached atomically."""
    from archives.pipeline import make_dataset
    from evaluation.features import extract_features

    path = cfg.weights_dir / CACHE_FILE
    key = cache_key(cfg)
    if path.is_file():
        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("key") == key:
                    log(f"MiLaN: reusing cached backbone features {path}")
                    return f["feature"][()], f["noisy_label"][()], f["patch_name"][()]
        except (OSError, KeyError):
            pass
    ds = make_dataset(list(cfg.noisy_train_paths), cfg.archive, training=False,
                      batch_size=max(cfg.batch_size, 32), seed=cfg.seed)
    feat, label, names = extract_features(model.feature_model, ds, label_key="noisy_label",
                                          progress=progress)
    if not np.isfinite(feat).all():
        raise ValueError(f"backbone features of {cfg.noisy_train_paths} hold NaN/Inf")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f["feature"], f["noisy_label"] = feat, label
        f.create_dataset("patch_name", data=np.array(names, dtype=object),
                         dtype=h5py.string_dtype("utf-8"))
        f.attrs["key"] = key
    log(f"MiLaN: cached backbone features of {len(feat)} images in {path}")
    return feat, label, names


def relevance_labels(cfg: Config, noisy_label, patch_names) -> np.ndarray:
    """Labels that define positives/negatives: noisy multi-hot, or one-hot scene classes."""
    if cfg.triplet_labels == "scene":
        from evaluation.scene import scene_labels
        return scene_labels(patch_names)
    return np.asarray(noisy_label)


def _scene_label_fn(scene_classes):
    classes = tf.constant(list(scene_classes))

    def fn(batch):
        scene = tf.strings.regex_replace(tf.strings.lower(batch["patch_name"]), r"_?\d+$", "")
        return tf.cast(tf.equal(scene[:, None], classes[None, :]), tf.float32)
    return fn


def train(cfg: Config, *, resume: bool = False, max_epochs: int | None = None,
          show_progress: bool = True, log=print):
    """Train MiLaN; returns ``training.RunResult`` like the other models."""
    from training import (RunResult, TrainingDiverged, _write_scalars, configure_devices,
                          save_feature_model)

    # inputs and outputs were checked, and a fresh start cleared, by training.train
    configure_devices(cfg)
    keras.utils.set_random_seed(cfg.seed)
    model = MilanModel(cfg)
    optimizer = make_optimizer(cfg)
    if cfg.train_backbone:
        label_fn = (_scene_label_fn(cfg.archive.scene_classes) if cfg.triplet_labels == "scene"
                    else (lambda batch: batch["noisy_label"]))
        step = make_joint_step(model, optimizer, cfg.seed, label_fn)
    else:
        step = make_feature_step(model, optimizer)
        feat, noisy, names = cached_features(cfg, model, log, show_progress)
        labels = relevance_labels(cfg, noisy, names)
        model.hash_net.get_layer("hash_norm").adapt(feat)  # standardise the hash net's input
    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    time_var = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="time_s")
    # a frozen backbone is rebuilt identically (weights file or seed): keep it out of checkpoints
    saved = model.keras_models if cfg.train_backbone else {"hash_net": model.hash_net}
    ckpt = tf.train.Checkpoint(optimizer=optimizer, epoch=epoch_var, training_time_s=time_var,
                               **saved)
    manager = tf.train.CheckpointManager(ckpt, str(cfg.checkpoint_dir), max_to_keep=3)
    if resume and manager.checkpoints:
        used = run_guard.restore_newest_readable(ckpt, manager.checkpoints, log)
        log(f"resumed from {used}: epoch {int(epoch_var)} done")
    writer = tf.summary.create_file_writer(str(cfg.summaries_dir))
    start = int(epoch_var)
    end = cfg.nb_epoch if max_epochs is None else min(cfg.nb_epoch, start + max_epochs)
    t_session, t_before = time.perf_counter(), float(time_var)
    means: dict[str, float] = {}
    n_triplets = cfg.batch_size // 3
    last_save = time.perf_counter()
    try:
        for epoch in range(start, end):
            sums: dict[str, float] = {}
            if cfg.train_backbone:
                from archives.pipeline import make_dataset
                batches = make_dataset(list(cfg.noisy_train_paths), cfg.archive, training=True,
                                       batch_size=cfg.batch_size, seed=cfg.seed, epoch=epoch)
                run = (step(b) for b in batches)
            else:
                rng = np.random.default_rng([cfg.seed, epoch])
                n_steps = math.ceil(len(feat) / cfg.batch_size)
                run = (step(*(tf.constant(feat[i]) for i in sample_triplets(labels, n_triplets,
                                                                              rng)))
                       for _ in range(n_steps))
            steps = 0
            for out in tqdm(run, desc=f"epoch {epoch + 1}/{cfg.nb_epoch}", leave=False,
                            disable=not show_progress):
                values = {k: float(v) for k, v in out.items()}
                steps += 1
                if not all(math.isfinite(values[k]) for k in LOSS_KEYS):
                    raise TrainingDiverged(f"non-finite MiLaN loss {values} at epoch {epoch + 1}, "
                                           f"step {steps}; stopped without saving")
                _write_scalars(writer, "train", values, int(optimizer.iterations))
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
            means = {k: v / max(steps, 1) for k, v in sums.items()}
            epoch_var.assign(epoch + 1)
            time_var.assign(t_before + time.perf_counter() - t_session)
            if epoch + 1 == end or time.perf_counter() - last_save >= CHECKPOINT_EVERY_S:
                manager.save()  # MiLaN epochs are tiny: at most one checkpoint a minute
                run_guard.checkpoint_written()  # --overwrite: the set-aside earlier run goes now
                last_save = time.perf_counter()
            log(f"epoch {epoch + 1}/{cfg.nb_epoch}: loss {means.get('loss', math.nan):.4f} "
                f"(triplet {means.get('triplet_loss', math.nan):.4f}), {steps} steps")
    finally:
        writer.close()
    done = int(epoch_var)
    completed = done >= cfg.nb_epoch
    feature_path = dump_path = None
    if completed:
        feature_path = cfg.feature_model_path
        save_feature_model(model.retrieval_model, feature_path)
        dump_path = cfg.config_dump_path
        write_json_atomic(dump_path, cfg.dump_dict(training_time_s=round(float(time_var), 3),
                                                   final_metrics=means))
    return RunResult(cfg, done, completed, float(time_var), means, {}, feature_path, dump_path,
                     model, optimizer)
