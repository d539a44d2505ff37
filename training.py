"""The one training loop behind train.py, for every model of models/registry.py.

``train(cfg, resume=..., max_epochs=...)`` builds the model (models/base.py is the contract)
under the tf.distribute strategy, runs its compiled step over its ``batches(epoch)``, logs
TensorBoard scalars from the step's returned metrics (never inside the compiled step),
checkpoints every epoch before validating it (and on Ctrl-C, mid-epoch, with the epoch's
partial sums), stops on a non-finite loss without saving the bad state, and finally writes
``feature_model.keras`` and the dumped config atomically. Inputs are checked (``run_guard``)
before any output of an earlier run is touched, and an existing run is never replaced without
``overwrite=True``. After each probed epoch (``val_retrieval_every``) it measures validation
retrieval and memorisation (evaluation/epoch_probe.py), keeps the per-epoch history and the best
validation epoch with the checkpoint (run_history.py) and exports the epoch ``select`` names.
Pieces: ``_set_up`` (guards, model, checkpoint), ``_train_epoch``, ``_end_epoch`` /
``_report_epoch`` (checkpoint, validation, probe, report), ``_export``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

import epoch_report
import run_guard
import run_history
import tb_logging
from atomic_files import atomic_path, remove_stale_temps, write_json_atomic
from config import Config, ConfigError, read_dump
from json_numbers import nan_for_null, to_json
from models.base import SELECTION_COUNTS, mean_metrics
from models.precision import float32_output, loss_scaled, with_config_policy
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
    epochs_total: int | None = None  # of a complete run (0: a model with nothing to train)
    chief: bool = True  # False: another worker of a multi-worker run (it writes no output)


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
    "multi_worker" -> MultiWorkerMirroredStrategy, its cluster from ``TF_CONFIG`` or, without
    it, from the SLURM job step (:func:`cluster_resolver`). Call before TensorFlow runs any op:
    collective ops are configured when the strategy is created (docs/training.md)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy(devices=[d.name for d in devices])
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=cluster_resolver())
    raise ConfigError(f"strategy: unknown value {name!r}")


SLURM_PORT_BASE = 8888  # first port of a SLURM node's workers (one port per task on the node)


def cluster_resolver(environ: Mapping[str, str] = os.environ):
    """The multi-worker cluster: ``TF_CONFIG`` when set (None: TensorFlow reads it); else,
    inside a SLURM job step of several tasks (``srun``: ``SLURM_STEP_NUM_TASKS``), a
    SlurmClusterResolver (one worker per task, worker 0 the chief); else None (one local
    worker). Several tasks on one GPU node each get their share of its GPUs."""
    if environ.get("TF_CONFIG") or int(environ.get("SLURM_STEP_NUM_TASKS", "1") or 1) < 2:
        return None
    gpus = tf.config.list_physical_devices("GPU")
    resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(
        port_base=SLURM_PORT_BASE, gpus_per_node=len(gpus), auto_set_gpu=False)
    tasks_here = max(resolver._task_configuration.values())  # noqa: SLF001 (no public getter)
    if gpus and tasks_here > 1:  # CUDA_VISIBLE_DEVICES would come too late: TF found the GPUs
        share = len(gpus) // tasks_here
        local = int(environ.get("SLURM_LOCALID", "0"))
        tf.config.set_visible_devices(gpus[local * share:(local + 1) * share], "GPU")
    return resolver


def _worker_role(strategy) -> tuple[bool, str]:
    """(is_chief, a worker tag) for multi-worker runs; single-process runs are the chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True, "chief"
    task_type, task_id = resolver.task_type, resolver.task_id or 0
    spec = resolver.cluster_spec().as_dict() if resolver.cluster_spec() else {}
    chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in spec)
    return chief, f"{task_type}{task_id}"


def synchronize_batch_norm(keras_models) -> int:
    """Batch normalisation over the global batch (statistics all-reduced over every replica)
    in each model; returns the number of layers changed. Without it each worker normalises by
    its own part of the batch and updates its own copy of the moving statistics, so the
    workers' models (and their validation figures) drift apart although every trainable
    weight agrees."""
    changed, seen = 0, set()
    stack = list(keras_models)
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized:
            layer.synchronized = True
            changed += 1
        stack.extend(getattr(layer, "layers", []))
    return changed


def shard_by_data(ds: tf.data.Dataset) -> tf.data.Dataset:
    """``ds`` split among workers by DATA (docs/training.md, "Multi-worker training"): every
    worker runs the whole pipeline and keeps its replicas' slices of each global batch, so a
    step's global batch is exactly one process's batch (same shuffle, same augmentation, every
    record once per epoch, whatever the number of workers). Not FILE, which TensorFlow's
    default (AUTO) picks once there are as many record files as workers: each worker would
    shuffle and batch its own files, the batches would depend on the number of workers, and
    files of unequal sizes give the workers unequal numbers of records, padded with partial
    or empty batches (measured: 3 files of 24/24/15 records, 2 workers, batch 8: 8 steps
    instead of 7)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def make_optimizer(cfg: Config, adam_betas=(0.9, 0.999)) -> keras.optimizers.Optimizer:
    """The one optimizer of the run (``optimizer`` key: Adam or SGD) at ``learning_rate``;
    ``adam_betas``: the model's Adam moment decays (``models.base.Model.adam_betas``). Wrapped
    for dynamic loss scaling under ``mixed_precision`` "mixed_float16"."""
    if cfg.optimizer == "Adam":
        return loss_scaled(keras.optimizers.Adam(learning_rate=cfg.learning_rate,
                                                 beta_1=adam_betas[0], beta_2=adam_betas[1]),
                           cfg)
    if cfg.optimizer == "SGD":
        return loss_scaled(keras.optimizers.SGD(learning_rate=cfg.learning_rate), cfg)
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


def _save_feature_model(model: keras.Model, path: Path) -> None:
    """Save the retrieval model as a .keras file under a temporary name, then rename it; its
    output is float32 also under mixed precision (feature files stay float32)."""
    with atomic_path(path) as tmp:
        float32_output(model).save(str(tmp))


def with_batch_transform(step: Callable, transform: Callable | None, strategy=None) -> Callable:
    """``step`` applied to ``transform(batch)``, both in one compiled function (per replica
    under ``strategy``): the pipeline hands compact batches over, the step normalises them."""
    from models.base import compile_step

    if transform is None:
        return step
    if strategy is None:
        return compile_step(lambda batch: step(transform(batch)))
    return compile_step(lambda batch: step(strategy.run(transform, args=(batch,))))


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


# ---- set-up and guards ------------------------------------------------------------------------
class _Run:
    """Model, optimizer, steps, checkpoint, counters and the current epoch's sums of one run."""

    def __init__(self, cfg: Config, strategy, log=_print):
        import models

        self.cfg, self.strategy, self.log = cfg, strategy, log
        self.chief, worker = _worker_role(strategy)
        self.distributed = strategy.num_replicas_in_sync > 1 or cfg.strategy != "default"
        keras.utils.set_random_seed(cfg.seed)
        with strategy.scope():
            self.model = models.build_model(cfg)
            if cfg.strategy == "multi_worker":
                synchronize_batch_norm(self.model.keras_models.values())
            self.optimizer = make_optimizer(cfg, self.model.adam_betas)
            # builds the optimizer over every trainable variable (before any restore)
            self.train_step = (with_batch_transform(self.model.make_train_step(
                self.optimizer, strategy if self.distributed else None),
                self.model.batch_transform(), strategy if self.distributed else None)
                if self.model.epochs else None)
        self.eval_step = self.model.make_eval_step()
        # run counters live outside the strategy (plain host variables, not mirrored)
        variable = lambda value, dtype, name: tf.Variable(  # noqa: E731
            value, dtype=dtype, trainable=False, name=name)
        self.epoch = variable(0, tf.int64, "epoch")
        self.step_in_epoch = variable(0, tf.int64, "step_in_epoch")
        self.time_s = variable(0.0, tf.float64, "time_s")
        # JSON of the last epoch's training means while its validation and report are pending
        # (a checkpoint is written before validation); "" once the epoch is reported
        self.pending = variable("", tf.string, "pending_report")
        # JSON {"sums", "steps"} of the unfinished epoch at a mid-epoch save; "" otherwise
        self.partial = variable("", tf.string, "epoch_partial_sums")
        # JSON of the per-epoch history and the best validation epoch (run_history.py)
        self.curves = variable("", tf.string, "curves")
        self.checkpoint = tf.train.Checkpoint(
            optimizer=self.optimizer, epoch=self.epoch, step_in_epoch=self.step_in_epoch,
            training_time_s=self.time_s, pending_report=self.pending,
            epoch_partial_sums=self.partial, curves=self.curves, **self.model.checkpointed())
        self.probe = self.probe_fn = None
        if cfg.val_retrieval_every > 0 and self.model.epochs:
            from evaluation.epoch_probe import EpochProbe, make_probe_fn
            self.probe, self.probe_fn = EpochProbe(cfg, log), make_probe_fn(self.model, cfg)
        # other workers take part in every save (it may hold collective ops) but keep nothing:
        # they write into a scratch folder of their own, removed after each save and at the end
        self.ckpt_dir = (cfg.checkpoint_dir if self.chief else Path(tempfile.mkdtemp(
            prefix=f"{cfg.run_name}-{worker}-checkpoints-")))
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(self.ckpt_dir),
                                                  max_to_keep=MAX_CHECKPOINTS)
        self.last_good: str | None = None
        self.unsaved = False  # True once a step has changed the state since the last save
        self.saved_pending = False  # the newest checkpoint still awaits its epoch's report
        self.last_save_s = time.perf_counter()
        self.sums: dict[str, float] = {}  # of the current epoch's logged steps
        self.steps = 0
        self.unlogged = None  # the output of a step that ran but is not yet in the sums
        self.epoch_start_iter: int | None = None
        self.means: dict[str, float] = {}
        # the epoch's summed selection counts (None: not known, an epoch reported on resume)
        self.counts: dict[str, float] | None = None
        self.val: dict[str, float] = {}
        self.reported = False
        self.n_batches: int | None = None
        self._clock = (time.perf_counter(), 0.0)

    def restore(self, resume: bool, say_if_none: bool) -> None:
        """Continue from the newest readable checkpoint (when ``resume``); start the clock."""
        # every worker restores the chief's checkpoint (a shared folder): the same state
        paths = self.manager.checkpoints if self.chief else _checkpoints_in(self.cfg.checkpoint_dir)
        if resume and paths:
            self.last_good = run_guard.restore_newest_readable(self.checkpoint, paths, self.log)
            self.saved_pending = bool(self.pending.numpy())
            self.log(f"resumed from {self.last_good}: epoch {int(self.epoch)} done, "
                     f"{int(self.step_in_epoch)} step(s) into the next")
        elif resume and say_if_none:
            self.log(f"--resume: no checkpoint in {self.cfg.checkpoint_dir}; starting afresh")
        self._clock = (time.perf_counter(), float(self.time_s))

    def elapsed(self) -> float:
        """Training time of the run: earlier sessions plus this one."""
        return self._clock[1] + time.perf_counter() - self._clock[0]

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
        self.last_save_s = time.perf_counter()
        if self.chief:
            self.last_good = path
        else:
            self.remove_scratch()

    def remove_scratch(self) -> None:
        """A non-chief worker: delete its scratch checkpoints (after each save, at the end)."""
        if not self.chief:
            shutil.rmtree(self.ckpt_dir, ignore_errors=True)


def _checkpoints_in(folder: Path) -> list[str]:
    """The checkpoints listed in ``folder``'s index, oldest first ([] if none)."""
    state = tf.train.get_checkpoint_state(str(folder))
    return list(state.all_model_checkpoint_paths) if state else []


def _set_up(cfg: Config, resume: bool, overwrite: bool, say_if_none: bool, log,
            progress: bool) -> _Run:
    """Check every input, apply the existing-run rule, clear leftovers, build the run and
    restore its checkpoint."""
    # the strategy first: a multi-worker one must exist before TensorFlow runs any op (the
    # input checks read the record files); creating it writes nothing
    configure_devices(cfg)
    strategy = make_strategy(cfg.strategy)
    run_guard.check_inputs(cfg)
    run_guard.check_outputs(cfg)
    chief = _worker_role(strategy)[0]
    if chief:  # only the chief touches the run's outputs (other workers may share the folders)
        for path in run_guard.remove_checkpoint_temps(cfg.checkpoint_dir):
            log(f"removed {path}, left by an interrupted or failed checkpoint write")
        if not resume:
            run_guard.clear_for_fresh_start(cfg, overwrite, log)
        for path in (remove_stale_temps(cfg.weights_dir)
                     + remove_stale_temps(cfg.config_dump_path.parent)):
            log(f"removed {path}, left by an interrupted earlier run")
    run = _Run(cfg, strategy, log)
    run.model.prepare(log, progress)  # e.g. MiLaN's feature cache (before the restore)
    run.restore(resume, say_if_none)
    if chief and not run.last_good:  # a run that starts: its config as TensorBoard hparams
        tb_logging.write_hparams(cfg)
    log(f"strategy {cfg.strategy}: {strategy.num_replicas_in_sync} replica(s)")
    return run


@with_config_policy  # mixed_precision: Keras' global policy for this run, restored after it
# --overwrite: the earlier run is set aside, not deleted, until this run checkpoints its first
# epoch (run_guard.checkpoint_written in _end_epoch); put back if train() raises before (run_guard)
@run_guard.guards_overwrite
def train(cfg: Config, *, resume: bool = False, overwrite: bool = False,
          max_epochs: int | None = None, show_progress: bool = True,
          log: Callable[[str], None] = _print, say_if_nothing_to_resume: bool = True
          ) -> RunResult:
    """Train (or continue) the run of ``cfg``; at most ``max_epochs`` epochs in this call.

    Every input is checked first. Without ``resume``, a run whose outputs exist is refused
    (RunError) unless ``overwrite`` is given; with it, a run without a checkpoint starts afresh
    (saying so unless ``say_if_nothing_to_resume`` is false: studies and the demo resume
    whatever is there). Raises TrainingDiverged on a NaN/Inf loss (nothing saved), RunError
    naming the file for a damaged record file or a failed checkpoint write (after
    checkpointing what can be), and re-raises KeyboardInterrupt after saving a checkpoint that
    ``resume=True`` continues from.
    """
    run = _set_up(cfg, resume, overwrite, say_if_nothing_to_resume, log, show_progress)
    writer = (tf.summary.create_file_writer(str(cfg.summaries_dir)) if run.chief
              else tf.summary.create_noop_writer())
    total = run.model.epochs
    start = int(run.epoch)
    end = total if max_epochs is None else min(total, start + max_epochs)
    if start >= total and run.last_good:
        log(f"run already complete ({start}/{total} epochs); re-saving its outputs")
    try:
        pending = run.pending.numpy().decode()
        if pending:  # stopped after its checkpoint, before validation/report: finish that epoch
            run.means = {k: float(v) for k, v in nan_for_null(json.loads(pending)).items()}
            run.counts = None  # not checkpointed: the selection line falls back to noise_prcnt
            log(f"epoch {start} was checkpointed but not yet validated: validating it now")
            _report_epoch(run, writer, start)
        for epoch in range(start, end):
            _train_epoch(run, writer, epoch, show_progress)
            _end_epoch(run, writer, epoch, last=epoch + 1 == end)
        if run.saved_pending:  # this call ends here: record that its last epoch is reported
            run.save()
    except KeyboardInterrupt:
        _save_on_interrupt(run)
        writer.flush()
        raise
    finally:
        writer.close()
        run.remove_scratch()
    return _export(run)


# ---- one epoch ----------------------------------------------------------------------------------
def _train_epoch(run: _Run, writer, epoch: int, show_progress: bool) -> None:
    """Run the steps of ``epoch`` (those after ``step_in_epoch`` when resumed mid-epoch);
    its sums and step count accumulate in ``run`` (restored from a mid-epoch checkpoint)."""
    cfg, skip = run.cfg, int(run.step_in_epoch)
    partial = json.loads(run.partial.numpy().decode() or "{}") if skip else {}
    run.sums, run.steps = dict(partial.get("sums", {})), int(partial.get("steps", 0))
    drop = run.strategy.num_replicas_in_sync > 1
    # the steps done before the restore are skipped as serialized records, not parsed
    ds = run.model.batches(epoch, drop_remainder=drop, skip_batches=skip)
    if show_progress and run.n_batches is None:  # the first epoch of this call: the bar's total
        run.n_batches = _expected_batches(run.model, ds, drop, skip)
    if run.distributed:
        ds = run.strategy.experimental_distribute_dataset(shard_by_data(ds))
    run.epoch_start_iter = _iterations(run.optimizer) - skip
    done = skip
    bar = tqdm(total=run.n_batches, initial=skip, desc=f"epoch {epoch + 1}/{cfg.nb_epoch}",
               disable=not show_progress, leave=False, dynamic_ncols=True)
    try:
        with bar:
            for batch in ds:
                run.unsaved = True  # from here on the state differs from the last save
                run.unlogged = run.train_step(batch)
                values = _to_numbers(run.strategy, run.unlogged)
                done += 1
                # each step applies the optimizer once: its counter, without another read
                step = run.epoch_start_iter + done
                bad = _first_non_finite(values)
                if bad is not None:
                    raise TrainingDiverged(
                        f"non-finite {bad} = {values[bad]} at epoch {epoch + 1}, step {done} of "
                        f"the epoch (global step {step}); stopped without saving. Last good "
                        f"checkpoint: {run.last_good or 'none (no epoch finished)'}")
                _write_scalars(writer, "train", values, step)
                _add(run, values)
                if show_progress:
                    bar.set_postfix_str(epoch_report.bar_text(run.sums, run.steps,
                                                              run.model.epoch_terms),
                                        refresh=False)
                    bar.update(1)
    except tf.errors.OpError as err:
        named = run_guard.records_error(cfg.noisy_train_paths, cfg.dataset, err,
                                        "training stopped")
        if named is err:
            raise
        _save_on_interrupt(run, "stopped by a damaged file")
        raise named from None
    run.n_batches = done


def _expected_batches(model, ds: tf.data.Dataset, drop_remainder: bool,
                      skipped: int = 0) -> int | None:
    """Steps of a whole epoch before it runs: the dataset's own length when it knows it
    (in-memory batches; ``skipped`` batches already left out on resume), else the model's count
    from the records (metadata or record headers)."""
    known = int(ds.cardinality())
    return known + skipped if known >= 0 else model.expected_batches(drop_remainder)


def _add(run: _Run, values: Mapping[str, float]) -> None:
    """Add a logged step's values to the epoch's sums."""
    for key, value in values.items():
        run.sums[key] = run.sums.get(key, 0.0) + value
    run.steps += 1
    run.unlogged = None


# ---- end of an epoch: checkpoint, validation, report ------------------------------------------
def _end_epoch(run: _Run, writer, epoch: int, last: bool) -> None:
    """Count the epoch done, checkpoint it (before validating: a failing or interrupted
    validation never costs the epoch; a model may space its checkpoints), then report it."""
    run.means = mean_metrics(run.sums, run.steps) if run.steps else {}
    run.counts = {k: run.sums[k] for k in SELECTION_COUNTS if k in run.sums}
    run.epoch.assign(epoch + 1)
    run.step_in_epoch.assign(0)
    run.partial.assign("")
    run.epoch_start_iter = None
    run.time_s.assign(run.elapsed())
    # multi-worker: every epoch (each worker's clock differs; all must take part in a save)
    every = 0.0 if run.cfg.strategy == "multi_worker" else run.model.checkpoint_every_s
    if last or time.perf_counter() - run.last_save_s >= every:
        run.pending.assign(to_json(run.means))
        run.save()
        run_guard.checkpoint_written()  # --overwrite: the set-aside earlier run is deleted now
    _report_epoch(run, writer, epoch + 1)


def _report_epoch(run: _Run, writer, epoch: int) -> None:
    """Log epoch ``epoch``'s training means (``run.means``), validate, log and print; sets
    ``run.val`` and clears ``run.pending``. A damaged validation file raises RunError naming it
    (the epoch's checkpoint is saved)."""
    cfg = run.cfg
    step = _iterations(run.optimizer)
    val = {}
    if run.eval_step is not None:
        try:
            val = evaluate(run.eval_step, cfg, cfg.val_tfrecord_paths)
        except tf.errors.OpError as err:
            named = run_guard.records_error(
                cfg.val_tfrecord_paths, cfg.dataset, err,
                f"epoch {epoch} is checkpointed ({run.last_good}); replace the file and "
                "continue with --resume, which validates it")
            if named is err:
                raise
            raise named from None
    probed = _probe_epoch(run, val, epoch)
    # all written once validation succeeded: a resumed epoch never logs them twice
    _write_scalars(writer, "epoch_train", run.means, step)
    _write_scalars(writer, "val", val, step)
    _write_probe_scalars(writer, probed, step)
    writer.flush()
    run.pending.assign("")
    run.val, run.reported = val, True
    model = run.model
    run.log(epoch_report.epoch_line(
        epoch, cfg.nb_epoch, run.means, val, probed, terms=model.epoch_terms,
        val_terms=model.val_terms, counts=run.counts, noisy=cfg.noise_prcnt > 0,
        elapsed_s=run.elapsed(), total_epochs=model.epochs))


def _probe_epoch(run: _Run, val: Mapping[str, float], epoch: int) -> dict:
    """Record epoch ``epoch`` (``run.means``, ``val``) in the run's history, with validation
    retrieval and memorisation when the epoch is probed (returned; {} otherwise); writes the
    best feature model when the validation retrieval improves. A damaged record file raises
    RunError naming it."""
    cfg = run.cfg
    probed: dict = {}
    if run.probe is not None and run.probe.due(epoch):
        paths = list(cfg.noisy_train_paths) + list(cfg.val_tfrecord_paths)
        try:
            probed = run.probe.measure(run.probe_fn)
        except tf.errors.OpError as err:
            named = run_guard.records_error(
                paths, cfg.dataset, err,
                f"epoch {epoch} is checkpointed ({run.last_good}); replace the file and "
                "continue with --resume, which validates it")
            if named is err:
                raise
            raise named from None
    entry = {"epoch": epoch, **run.means, **{f"val_{k}": v for k, v in val.items()}, **probed}
    state, best = run_history.record(run_history.load_state(run.curves.numpy().decode()), entry)
    if best and run.chief:
        _save_feature_model(run.model.retrieval_model(), cfg.weights_dir / run_history.BEST_FILE)
    run.curves.assign(run_history.dump_state(state))
    return probed


def _write_probe_scalars(writer, probed: Mapping, step: int) -> None:
    """``val/retrieval_<metric>``, ``memorisation/corrupted_fitted`` and ``.../clean_fitted``
    (the finite ones)."""
    values = {}
    if "retrieval_metric" in probed:
        values[f"val/retrieval_{probed['retrieval_metric']}"] = probed["val_retrieval"]
    for key in ("corrupted_fitted", "clean_fitted"):
        if key in probed:
            values[f"memorisation/{key}"] = probed[key]
    with writer.as_default(step=step):
        for tag, value in values.items():
            if math.isfinite(value):
                tf.summary.scalar(tag, value)


def _save_on_interrupt(run: _Run, why: str = "interrupted") -> None:
    """Checkpoint the current (finite) state so that resume continues from it (mid-epoch too,
    with the epoch's partial sums)."""
    if not run.unsaved and run.last_good and run.saved_pending == bool(run.pending.numpy()):
        where = ("its validation and report are done by --resume"
                 if run.pending.numpy() else "continue with --resume")
        run.log(f"{why}: {run.last_good} already holds the current state (epoch "
                f"{int(run.epoch)} done); {where}")
        return
    if not _weights_finite(run.model.trainable_variables):
        run.log(f"{why}: weights are not finite; kept the last good checkpoint")
        return
    if run.epoch_start_iter is not None:  # mid-epoch
        if run.unlogged is not None:  # the step ran (the weights hold it): count it too
            values = _to_numbers(run.strategy, run.unlogged)
            if _first_non_finite(values) is None:
                _add(run, values)
        run.step_in_epoch.assign(_iterations(run.optimizer) - run.epoch_start_iter)
        run.partial.assign(json.dumps({"sums": run.sums, "steps": run.steps}))
    run.time_s.assign(run.elapsed())
    run.save()
    run.log(f"{why}: saved {run.last_good} (epoch {int(run.epoch)} done, "
            f"{int(run.step_in_epoch)} step(s) into the next); continue with --resume")


# ---- export -------------------------------------------------------------------------------------
def _export(run: _Run) -> RunResult:
    """A complete run (chief): save the retrieval model and the dumped config atomically."""
    cfg = run.cfg
    done, total = int(run.epoch), run.model.epochs
    completed = done >= total
    feature_path = dump_path = None
    if completed and run.chief:
        feature_path = cfg.feature_model_path
        state = run_history.load_state(run.curves.numpy().decode())
        selected = run_history.selected_epoch(state, cfg.select, done)
        if selected == done:
            _save_feature_model(run.model.retrieval_model(), feature_path)
        else:
            run_history.copy_atomic(cfg.weights_dir / run_history.BEST_FILE, feature_path)
            run.log(f"select best_val: exported epoch {selected} (validation retrieval "
                    f"{state['best_value']:.4f}), not the last ({done})")
        dump_path = cfg.config_dump_path
        if not run.reported:  # nothing trained or validated in this call: keep earlier metrics
            final = _previous_final_metrics(dump_path)
        else:
            final = {**run.means, **{f"val_{k}": v for k, v in run.val.items()}}
        write_json_atomic(dump_path, cfg.dump_dict(training_time_s=round(float(run.time_s), 3),
                                                   final_metrics=final,
                                                   history=state["history"],
                                                   selected_epoch=selected))
    return RunResult(cfg, done, completed, float(run.time_s), run.means, run.val,
                     feature_path, dump_path, run.model, run.optimizer, total, run.chief)


def _previous_final_metrics(path: Path) -> dict[str, float]:
    try:
        return dict(read_dump(path).get("final_metrics") or {})
    except (OSError, ValueError):
        return {}


def summary_lines(result: RunResult) -> list[str]:
    """Human-readable end-of-run summary."""
    cfg = result.config
    total = cfg.nb_epoch if result.epochs_total is None else result.epochs_total
    lines = [f"run {cfg.run_name}: {result.epochs_done}/{total} epochs, "
             f"training time {result.training_time_s:.1f} s"]
    unused = set(getattr(result.model, "placeholder_metrics", ()))  # a baseline's GRID terms
    for side, metrics in (("train", result.train_metrics), ("val", result.val_metrics)):
        # validation labels are clean: nothing to select, so its selection shares are undefined
        skip = unused | ({"sel_precision", "sel_recall"} if side == "val" else set())
        shown = {k: v for k, v in metrics.items() if k not in skip}
        if shown:
            lines.append(f"  last epoch ({side}):".ljust(22) + ", ".join(
                f"{k} {v:.4f}" for k, v in shown.items()))
    lines.append(f"  checkpoints: {cfg.checkpoint_dir}")
    lines.append(f"  TensorBoard: tensorboard --logdir {cfg.summaries_dir}")
    if result.completed and not result.chief:
        lines.append("  outputs are written by the chief worker")
    elif result.completed:
        lines.append(f"  feature model: {result.feature_model_path}")
        lines.append(f"  config: {result.config_dump_path}")
    else:
        lines.append("  not finished: continue with --resume")
    return lines
