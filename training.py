"""The training loop behind train.py: GRID variants and baselines from a validated Config.

``train(cfg, resume=..., max_epochs=...)`` builds the model under the tf.distribute strategy,
runs the compiled step from ``models.grid`` over ``archives.pipeline.make_dataset`` batches,
logs TensorBoard scalars from the step's returned metrics (never inside the compiled step),
checkpoints every epoch before validating it (and on Ctrl-C, mid-epoch), stops on a non-finite
loss without saving the bad state, and finally writes ``feature_model.keras`` and the dumped
config atomically. Inputs are checked (``run_guard``) before any output of an earlier run is
touched, and an existing run is never replaced without ``overwrite=True``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

import run_guard
from atomic_files import atomic_path, remove_stale_temps, write_json_atomic
from config import Config, ConfigError
from models.grid import mean_metrics
from run_guard import RunError

MAX_CHECKPOINTS = 3


class TrainingDiverged(RuntimeError):
    """A loss became NaN or Inf; the run stopped and the last good checkpoint was kept."""


@dataclasses.dataclass
class RunResult:
    """What a call to :func:`train` achieved."""

    config: Config
    epochs_done: int
    completed: bool
    training_time_s: float
    train_metrics: dict[str, float]
    val_metrics: dict[str, float]
    feature_model_path: Path | None
    config_dump_path: Path | None
    model: Any = dataclasses.field(default=None, repr=False)
    optimizer: Any = dataclasses.field(default=None, repr=False)


# ---- devices and strategy -----------------------------------------------------------------
def configure_devices(cfg: Config) -> None:
    """Honour ``gpu`` for the default strategy (-1 hides every GPU). Call before TF runs ops."""
    if cfg.strategy != "default":
        return
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus and cfg.gpu <= 0:
        return
    if cfg.gpu >= len(gpus):
        raise ConfigError(f"gpu: index {cfg.gpu} asked for, but {len(gpus)} GPU(s) are visible")
    try:
        tf.config.set_visible_devices([] if cfg.gpu < 0 else [gpus[cfg.gpu]], "GPU")
    except RuntimeError as err:  # TF already initialised (e.g. a second run in one process)
        print(f"note: gpu setting not applied ({err})")


def make_strategy(name: str) -> tf.distribute.Strategy:
    """"default" -> the current strategy; "mirrored" -> every GPU (else every logical CPU);
    "multi_worker" -> MultiWorkerMirroredStrategy (cluster from TF_CONFIG)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy(devices=[d.name for d in devices])
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ConfigError(f"strategy: unknown value {name!r}")


def _worker_role(strategy) -> tuple[bool, str]:
    """(is_chief, a worker tag) for multi-worker runs; single-process runs are the chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True, "chief"
    task_type, task_id = resolver.task_type, resolver.task_id or 0
    spec = resolver.cluster_spec().as_dict() if resolver.cluster_spec() else {}
    chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in spec)
    return chief, f"{task_type}{task_id}"


def make_optimizer(cfg: Config) -> keras.optimizers.Optimizer:
    """The one optimizer of the run (``optimizer`` key: Adam or SGD) at ``learning_rate``."""
    if cfg.optimizer == "Adam":
        return keras.optimizers.Adam(learning_rate=cfg.learning_rate)
    if cfg.optimizer == "SGD":
        return keras.optimizers.SGD(learning_rate=cfg.learning_rate)
    raise ConfigError(f"optimizer: unknown value {cfg.optimizer!r}")


# ---- small helpers ----------------------------------------------------------------------------
def _print(msg: str) -> None:
    print(msg, flush=True)


def _to_numbers(strategy, metrics: Mapping[str, Any]) -> dict[str, float]:
    """Metric dict of scalar tensors (or per-replica values) -> Python floats (one host sync)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, tf.distribute.DistributedValues):
            value = strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
        out[key] = float(np.asarray(value))
    return out


def _is_loss(key: str) -> bool:
    return key == "loss" or key.endswith("_loss")


def _first_non_finite(values: Mapping[str, float]) -> str | None:
    for key, value in values.items():
        if _is_loss(key) and not math.isfinite(value):
            return key
    return None


def _read(variable) -> np.ndarray:
    """Value of a Keras/TF variable, also when it is mirrored (cross-replica read)."""
    return tf.convert_to_tensor(getattr(variable, "value", variable)).numpy()


def _iterations(optimizer) -> int:
    return int(_read(optimizer.iterations))


def _weights_finite(variables) -> bool:
    return all(bool(np.all(np.isfinite(_read(v)))) for v in variables
               if tf.as_dtype(v.dtype).is_floating)


def _write_scalars(writer, prefix: str, values: Mapping[str, float], step: int) -> None:
    with writer.as_default(step=step):
        for key, value in values.items():
            if not key.startswith("_"):  # selection counts: pooled into the ratios, not logged
                tf.summary.scalar(f"{prefix}/{key}", value)


def save_feature_model(model: keras.Model, path: Path) -> None:
    """Save the retrieval model as a .keras file under a temporary name, then rename it."""
    with atomic_path(path) as tmp:
        model.save(str(tmp))


def evaluate(eval_step: Callable, cfg: Config, paths) -> dict[str, float]:
    """Sample-weighted mean of the eval step's losses over ``paths`` (no augmentation);
    {} when no validation file is configured (``val_tfrecord_paths`` is optional)."""
    from archives.pipeline import make_dataset

    if not paths:
        return {}
    sums: dict[str, float] = {}
    count = 0
    for batch in make_dataset(list(paths), cfg.archive, training=False,
                              batch_size=cfg.batch_size, seed=cfg.seed):
        n = int(batch["label"].shape[0])
        for key, value in eval_step(batch).items():  # counts are summed, losses weighted
            sums[key] = sums.get(key, 0.0) + float(value) * (1 if key.startswith("_") else n)
        count += n
    return mean_metrics(sums, count) if count else {}


# ---- the loop -----------------------------------------------------------------------------
class _Run:
    """Model, optimizer, step functions, checkpoint and counters of one run."""

    def __init__(self, cfg: Config, strategy, resume: bool, log=_print):
        import models
        from models import make_eval as make_eval_step, make_step as make_train_step

        self.cfg, self.strategy, self.log = cfg, strategy, log
        self.chief, worker = _worker_role(strategy)
        self.distributed = strategy.num_replicas_in_sync > 1 or cfg.strategy != "default"
        keras.utils.set_random_seed(cfg.seed)
        with strategy.scope():
            self.model = models.build_model(cfg)
            self.optimizer = make_optimizer(cfg)
            # builds the optimizer over every trainable variable (before any restore)
            self.train_step = make_train_step(self.model, self.optimizer, cfg,
                                              strategy=strategy if self.distributed else None)
        # run counters live outside the strategy (plain host variables, not mirrored)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
        self.time_s = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="time_s")
        # JSON of the last epoch's training means while its validation and report are pending
        # (a checkpoint is written before validation); "" once the epoch is reported
        self.pending = tf.Variable("", dtype=tf.string, trainable=False, name="pending_report")
        self.checkpoint = tf.train.Checkpoint(
            optimizer=self.optimizer, epoch=self.epoch, step_in_epoch=self.step_in_epoch,
            training_time_s=self.time_s, pending_report=self.pending,
            **dict(self.model.keras_models),
            **getattr(self.model, "extra_state", {}))  # e.g. SAT/ELR target memory
        self.eval_step = make_eval_step(self.model, cfg)
        ckpt_dir = cfg.checkpoint_dir if self.chief else cfg.checkpoint_dir / f"tmp-{worker}"
        self.ckpt_dir = ckpt_dir
        if self.chief:
            for path in run_guard.remove_checkpoint_temps(ckpt_dir):
                log(f"removed {path}, left by an interrupted or failed checkpoint write")
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(ckpt_dir),
                                                  max_to_keep=MAX_CHECKPOINTS)
        self.last_good: str | None = None
        self.unsaved = False  # True once a step has changed the state since the last save
        self.saved_pending = False  # the newest checkpoint still awaits its epoch's report
        if resume and self.manager.checkpoints:
            self.last_good = run_guard.restore_newest_readable(
                self.checkpoint, self.manager.checkpoints, log)
            self.saved_pending = bool(self.pending.numpy())
            log(f"resumed from {self.last_good}: epoch {int(self.epoch)} done, "
                f"{int(self.step_in_epoch)} step(s) into the next")
        elif resume:
            log(f"--resume: no checkpoint in {ckpt_dir}; starting afresh")

    def save(self) -> None:
        """Write a checkpoint; a failed write (full disk) leaves no ``ckpt-N_temp`` and raises
        RunError naming the folder."""
        try:
            path = self.manager.save()
        except (tf.errors.OpError, OSError) as err:
            run_guard.remove_checkpoint_temps(self.ckpt_dir)
            raise RunError(f"{self.ckpt_dir}: checkpoint could not be written "
                           f"({run_guard._first_line(err)}); the previous checkpoint "
                           f"{self.last_good or '(none)'} is kept") from None
        self.unsaved = False
        self.saved_pending = bool(self.pending.numpy())
        if not self.chief:  # other workers must take part in saving but keep nothing
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)
        else:
            self.last_good = path


# --overwrite: the earlier run is set aside, not deleted, until this run checkpoints its first
# epoch (run_guard.checkpoint_written below); put back if train() raises before (run_guard)
@run_guard.guards_overwrite
def train(cfg: Config, *, resume: bool = False, overwrite: bool = False,
          max_epochs: int | None = None, show_progress: bool = True,
          log: Callable[[str], None] = _print) -> RunResult:
    """Train (or continue) the run of ``cfg``; at most ``max_epochs`` epochs in this call.

    Every input is checked first. Without ``resume``, a run whose outputs exist is refused
    (RunError) unless ``overwrite`` is given. Raises TrainingDiverged on a NaN/Inf loss (nothing
    saved), RunError naming the file for a damaged record file or a failed checkpoint write
    (after checkpointing what can be), and re-raises KeyboardInterrupt after saving a
    checkpoint that ``resume=True`` continues from.
    """
    from archives.pipeline import make_dataset

    run_guard.check_inputs(cfg)
    run_guard.check_outputs(cfg)
    if cfg.model_name in ("MiLaN", "OffTheShelf"):  # single-device models with their own loop
        if not resume:
            run_guard.clear_for_fresh_start(cfg, overwrite, log)
        if cfg.model_name == "MiLaN":  # hashing: milan_training.py
            import milan_training
            return milan_training.train(cfg, resume=resume, max_epochs=max_epochs,
                                        show_progress=show_progress, log=log)
        import deep_features  # pretrained features, nothing to train
        return deep_features.export_off_the_shelf(cfg, log=log)
    configure_devices(cfg)
    strategy = make_strategy(cfg.strategy)
    if _worker_role(strategy)[0]:
        for path in run_guard.remove_checkpoint_temps(cfg.checkpoint_dir):
            log(f"removed {path}, left by an interrupted or failed checkpoint write")
        if not resume:
            run_guard.clear_for_fresh_start(cfg, overwrite, log)
    for path in remove_stale_temps(cfg.weights_dir) + remove_stale_temps(cfg.config_dump_path.parent):
        log(f"removed {path}, left by an interrupted earlier run")
    run = _Run(cfg, strategy, resume, log)
    log(f"strategy {cfg.strategy}: {strategy.num_replicas_in_sync} replica(s)")
    writer = (tf.summary.create_file_writer(str(cfg.summaries_dir)) if run.chief
              else tf.summary.create_noop_writer())

    start_epoch = int(run.epoch)
    end_epoch = cfg.nb_epoch if max_epochs is None else min(cfg.nb_epoch, start_epoch + max_epochs)
    if start_epoch >= cfg.nb_epoch:
        log(f"run already complete ({start_epoch}/{cfg.nb_epoch} epochs); re-saving its outputs")
    n_batches: int | None = None
    epoch_means: dict[str, float] = {}
    val: dict[str, float] = {}
    reported = False
    epoch_start_iter: int | None = None
    session_start = time.perf_counter()
    time_at_start = float(run.time_s)

    def elapsed() -> float:
        return time_at_start + time.perf_counter() - session_start

    try:
        pending = run.pending.numpy().decode()
        if pending:  # stopped after its checkpoint, before validation/report: finish that epoch
            epoch_means = {k: float(v) for k, v in json.loads(pending).items()}
            log(f"epoch {start_epoch} was checkpointed but not yet validated: validating it now")
            val = _report_epoch(run, writer, epoch_means, start_epoch, elapsed)
            reported = True
        for epoch in range(start_epoch, end_epoch):
            skip = int(run.step_in_epoch)
            ds = make_dataset(list(cfg.noisy_train_paths), cfg.archive, training=True,
                              batch_size=cfg.batch_size, seed=cfg.seed, epoch=epoch,
                              drop_remainder=strategy.num_replicas_in_sync > 1)
            if skip:
                ds = ds.skip(skip)
            if run.distributed:
                ds = strategy.experimental_distribute_dataset(ds)
            epoch_start_iter = _iterations(run.optimizer) - skip
            sums: dict[str, float] = {}
            steps = 0
            bar = tqdm(total=n_batches, initial=skip, desc=f"epoch {epoch + 1}/{cfg.nb_epoch}",
                       disable=not show_progress, leave=False, dynamic_ncols=True)
            try:
                with bar:
                    for batch in ds:
                        run.unsaved = True  # from here on the state differs from the last save
                        values = _to_numbers(strategy, run.train_step(batch))
                        steps += 1
                        # each step applies the optimizer once: its counter, without another read
                        step = epoch_start_iter + skip + steps
                        bad = _first_non_finite(values)
                        if bad is not None:
                            last = run.last_good or "none (no epoch finished)"
                            raise TrainingDiverged(
                                f"non-finite {bad} = {values[bad]} at epoch {epoch + 1}, step "
                                f"{skip + steps} of the epoch (global step {step}); "
                                f"stopped without saving. Last good checkpoint: {last}")
                        _write_scalars(writer, "train", values, step)
                        for key, value in values.items():
                            sums[key] = sums.get(key, 0.0) + value
                        if show_progress:
                            bar.update(1)
                            bar.set_postfix(loss=f"{sums.get('loss', 0.0) / steps:.4f}")
            except tf.errors.OpError as err:
                named = run_guard.records_error(cfg.noisy_train_paths, cfg.dataset, err,
                                                "training stopped")
                if named is err:
                    raise
                _save_on_interrupt(run, epoch_start_iter, elapsed(), "stopped by a damaged file")
                raise named from None
            n_batches = steps + skip
            epoch_means = mean_metrics(sums, steps) if steps else {}
            run.epoch.assign(epoch + 1)
            run.step_in_epoch.assign(0)
            epoch_start_iter = None
            # checkpoint first: a failing or interrupted validation never costs the epoch
            run.pending.assign(json.dumps(epoch_means))
            run.time_s.assign(elapsed())
            run.save()
            run_guard.checkpoint_written()  # --overwrite: the set-aside earlier run is deleted now
            val = _report_epoch(run, writer, epoch_means, epoch + 1, elapsed)
            reported = True
        if run.saved_pending:  # this call ends here: record that its last epoch is reported
            run.save()
    except KeyboardInterrupt:
        _save_on_interrupt(run, epoch_start_iter, elapsed())
        writer.flush()
        raise
    finally:
        writer.close()

    done = int(run.epoch)
    completed = done >= cfg.nb_epoch
    feature_path = dump_path = None
    if completed and run.chief:
        feature_path = cfg.feature_model_path
        from deep_features import retrieval_model
        save_feature_model(retrieval_model(run.model, cfg), feature_path)
        dump_path = cfg.config_dump_path
        if not reported:  # nothing trained or validated in this call: keep the earlier metrics
            final = _previous_final_metrics(dump_path)
        else:
            final = {**epoch_means, **{f"val_{k}": v for k, v in val.items()}}
        write_json_atomic(dump_path, cfg.dump_dict(training_time_s=round(float(run.time_s), 3),
                                                   final_metrics=final))
    return RunResult(cfg, done, completed, float(run.time_s), epoch_means, val,
                     feature_path, dump_path, run.model, run.optimizer)


def _report_epoch(run: _Run, writer, epoch_means: Mapping[str, float], epoch: int,
                  elapsed: Callable[[], float]) -> dict[str, float]:
    """Log epoch ``epoch``'s training means, validate, log and print; clears ``run.pending``.
    A damaged validation file raises RunError naming it (the epoch's checkpoint is saved)."""
    cfg = run.cfg
    step = _iterations(run.optimizer)
    try:
        val = evaluate(run.eval_step, cfg, cfg.val_tfrecord_paths)
    except tf.errors.OpError as err:
        named = run_guard.records_error(
            cfg.val_tfrecord_paths, cfg.dataset, err,
            f"epoch {epoch} is checkpointed ({run.last_good}); replace the file and continue "
            "with --resume, which validates it")
        if named is err:
            raise
        raise named from None
    # both written once validation succeeded: a resumed epoch never logs them twice
    _write_scalars(writer, "epoch_train", epoch_means, step)
    _write_scalars(writer, "val", val, step)
    writer.flush()
    run.pending.assign("")
    msg = f"epoch {epoch}/{cfg.nb_epoch}: loss {epoch_means.get('loss', math.nan):.4f}"
    if val:
        msg += f", val loss {val.get('loss', math.nan):.4f}"
    run.log(f"{msg} ({elapsed():.1f} s total)")
    return val


def _previous_final_metrics(path: Path) -> dict[str, float]:
    try:
        return dict(json.loads(path.read_text()).get("final_metrics") or {})
    except (OSError, ValueError):
        return {}


def _save_on_interrupt(run: _Run, epoch_start_iter: int | None, total_s: float,
                       why: str = "interrupted") -> None:
    """Checkpoint the current (finite) state so that resume continues from it (mid-epoch too)."""
    if not run.unsaved and run.last_good and run.saved_pending == bool(run.pending.numpy()):
        where = ("its validation and report are done by --resume"
                 if run.pending.numpy() else "continue with --resume")
        run.log(f"{why}: {run.last_good} already holds the current state (epoch "
                f"{int(run.epoch)} done); {where}")
        return
    if not _weights_finite(run.model.trainable_variables):
        run.log(f"{why}: weights are not finite; kept the last good checkpoint")
        return
    if epoch_start_iter is not None:
        run.step_in_epoch.assign(_iterations(run.optimizer) - epoch_start_iter)
    run.time_s.assign(total_s)
    run.save()
    run.log(f"{why}: saved {run.last_good} (epoch {int(run.epoch)} done, "
            f"{int(run.step_in_epoch)} step(s) into the next); continue with --resume")


def summary_lines(result: RunResult) -> list[str]:
    """Human-readable end-of-run summary."""
    cfg = result.config
    lines = [f"run {cfg.run_name}: {result.epochs_done}/{cfg.nb_epoch} epochs, "
             f"training time {result.training_time_s:.1f} s"]
    if result.train_metrics:
        lines.append("  last epoch (train): " + ", ".join(
            f"{k} {v:.4f}" for k, v in result.train_metrics.items()))
    if result.val_metrics:
        lines.append("  last epoch (val):   " + ", ".join(
            f"{k} {v:.4f}" for k, v in result.val_metrics.items()))
    lines.append(f"  checkpoints: {cfg.checkpoint_dir}")
    lines.append(f"  TensorBoard: tensorboard --logdir {cfg.summaries_dir}")
    if result.completed:
        lines.append(f"  feature model: {result.feature_model_path}")
        lines.append(f"  config: {result.config_dump_path}")
    else:
        lines.append("  not finished: continue with --resume")
    return lines
