"""The contract between a model and the training loop (training.py): :class:`Model`.

The loop builds the model (``models.build_model``), then, for every run alike: ``prepare`` it,
build its ``make_train_step`` / ``make_eval_step``, checkpoint ``checkpointed()`` with the
optimizer and the run counters, read ``batches(epoch)`` (the archive pipeline unless the model
has its own, e.g. MiLaN's cached-feature triplets) skipping the steps a resumed epoch has done,
run ``epochs`` epochs, and save ``retrieval_model()`` as feature_model.keras. So every model
gets the same guarantees: exact mid-epoch resume, a checkpoint on Ctrl-C, the NaN stop, named
damaged files. See docs/contributing.md, "Adding a model".
"""
from __future__ import annotations

import functools
from typing import Callable

import tensorflow as tf

from models.config import ModelConfig


class Model:
    """Base of every model. A subclass sets ``keras_models`` (name -> keras.Model, the weights
    checkpointed and compared), ``trainable_variables`` and ``feature_model`` (image -> retrieval
    feature), and defines ``make_train_step``."""

    adam_betas = (0.9, 0.999)     # Adam's moment decays (the optimizer key picks Adam or SGD)
    checkpoint_every_s = 0.0      # epoch-end checkpoints at most this often (0: every epoch)
    # what the epoch line and the progress bar show (epoch_report.py): (step output key, label)
    # of the training losses, and of the validation losses (eval step outputs)
    epoch_terms: tuple = (("loss", "loss"),)
    val_terms: tuple = (("loss", "loss"),)
    # step outputs that mean nothing for this model (kept for a common layout, always 0):
    # logged to TensorBoard as before, left out of what is printed
    placeholder_metrics: tuple = ()

    def __init__(self, cfg):
        """``cfg``: a :class:`ModelConfig`, or a run Config (its model part is taken)."""
        self.cfg = ModelConfig.from_config(cfg)
        self.keras_models: dict = {}
        self.trainable_variables: list = []

    @property
    def epochs(self) -> int:
        """Epochs of a complete run (0: nothing to train, e.g. off-the-shelf features)."""
        return self.cfg.nb_epoch

    def prepare(self, log: Callable[[str], None], progress: bool = False) -> None:
        """Work before the first step and before a checkpoint is restored (e.g. a cache)."""

    def batches(self, epoch: int, drop_remainder: bool = False,
                skip_batches: int = 0) -> tf.data.Dataset:
        """The training batches of ``epoch`` after its first ``skip_batches`` (those a resumed
        epoch already did): the same for the same epoch in every process. Default: the archive
        pipeline's compact batches (skipped as serialized records, before parsing), finished
        by ``batch_transform()`` in the compiled step."""
        from archives.pipeline import make_dataset

        c = self.cfg
        return make_dataset(list(c.noisy_train_paths), c.archive, training=True,
                            batch_size=c.batch_size, seed=c.seed, epoch=epoch,
                            drop_remainder=drop_remainder, skip_batches=skip_batches,
                            compact=True)

    def expected_batches(self, drop_remainder: bool = False) -> int | None:
        """Steps of one epoch of ``batches()``, known before it runs (the first epoch's progress
        bar total), or None when unknown. Default: the records of the training files
        (archives.record_files.expected_records) in batches of ``batch_size``. A model whose
        ``batches`` is not the archive pipeline overrides it, unless its dataset knows its own
        length (``cardinality``, as for in-memory batches)."""
        from archives.record_files import expected_records

        n = expected_records(list(self.cfg.noisy_train_paths))
        if n is None:
            return None
        return n // self.cfg.batch_size if drop_remainder else -(-n // self.cfg.batch_size)

    def batch_transform(self) -> Callable | None:
        """What the training loop applies to each batch of ``batches()`` in the compiled step,
        before ``make_train_step``'s step (None: nothing). Default: the pipeline's crop, flips,
        normalisation and brightness (archives.pipeline.finish_batch)."""
        from archives.pipeline import finish_batch

        return functools.partial(finish_batch, dataset=self.cfg.archive, training=True)

    def make_train_step(self, optimizer, strategy=None) -> Callable:
        """Compiled step: batch -> dict of scalar tensors (losses ``loss``/``*_loss``; keys
        starting with "_" are counts summed over steps). Applies ``optimizer`` once."""
        raise NotImplementedError

    def make_eval_step(self, strategy=None) -> Callable | None:
        """Compiled validation step (same scalars), or None: the model is not validated."""
        return None

    def extra_state(self) -> dict:
        """Variables checkpointed beside the Keras models (e.g. a per-sample target memory)."""
        return {}

    def checkpointed(self) -> dict:
        """Everything a checkpoint holds of the model (name -> trackable)."""
        return {**self.keras_models, **self.extra_state()}

    def retrieval_model(self):
        """The model saved as feature_model.keras: image -> retrieval feature."""
        return self.feature_model


# step outputs: selected and corrupted, selected, corrupted (summed over steps by mean_metrics)
SELECTION_COUNTS = ("_tp", "_nsel", "_ncorr")


def mean_metrics(sums, weight) -> dict:
    """Metrics of many steps from the sums of their outputs: losses are ``sums[k] / weight``;
    selection precision and recall are pooled from the summed counts (sum of selected and
    corrupted / sum of selected, / sum of corrupted). A mean of per-step ratios would count a
    step that selects nothing (a short last batch) as precision 0."""
    out = {k: v / weight for k, v in sums.items() if not k.startswith("_")}
    if "_tp" in sums:
        tp, nsel, ncorr = (float(sums[k]) for k in SELECTION_COUNTS)
        out["sel_precision"] = tp / nsel if nsel else 0.0
        out["sel_recall"] = tp / ncorr if ncorr else 0.0
    return out


def compile_step(fn: Callable, **options):
    """``tf.function(fn, **options)`` with its own tracing statistics: TF counts retraces per
    code object, so the steps of the new models built in one process (study cells: one model
    after another) would add up as "retracing" of one function and trigger TF's warning,
    although each traces only for its own batch shapes (a full and a short last batch). A
    ``functools.partial`` has no code object, so TF counts each step on its own."""
    return tf.function(functools.partial(fn), **options)
