"""TensorBoard beyond the training scalars: the run's config as hyper-parameters (the HParams
dashboard) and the retrieval metrics of an evaluation as scalars, both in the run's summaries
folder (``<dumps.summaries>/<run_name>``), so runs compare in one dashboard:
``tensorboard --logdir dumps/summaries``.

- ``write_hparams(cfg)``: every config key (paths joined, null as "none"; the output folders
  left out) as one HParams session, with the metrics the dashboard shows as columns
  (``HPARAM_METRICS``); called once when a run starts.
- ``write_retrieval_metrics(summaries_dir, metrics, step)``: each retrieval metric as the
  scalar ``retrieval/<name>`` at ``step`` (retrieval.py: the run's last epoch).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

# the columns of the HParams table: final retrieval figures and the last epoch's losses
HPARAM_METRICS = ("retrieval/NDCG@20", "retrieval/NDCG@30", "retrieval/mAP@20",
                  "retrieval/P@20", "epoch_train/loss", "epoch_train/sel_precision",
                  "epoch_train/sel_recall", "val/loss")
SKIPPED_KEYS = ("dumps",)  # where outputs go: not a hyper-parameter


def hparam_values(cfg) -> dict[str, bool | int | float | str]:
    """The config's keys as values the HParams plugin takes (bool, int, float, str)."""
    out = {}
    for key, value in cfg.to_dict().items():
        if key in SKIPPED_KEYS:
            continue
        if value is None:
            value = "none"
        elif isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value))
        elif not isinstance(value, (bool, int, float, str)):
            value = str(value)
        out[key] = value
    out["run_name"] = cfg.run_name
    return out


def write_hparams(cfg, logdir: str | Path | None = None) -> Path:
    """Write the run's config as an HParams session (and the experiment's columns) into
    ``logdir`` (default: the run's summaries folder); returns the folder."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    logdir = Path(logdir or cfg.summaries_dir)
    values = hparam_values(cfg)
    writer = tf.summary.create_file_writer(str(logdir))
    try:
        with writer.as_default():
            hp.hparams_config(hparams=[hp.HParam(k) for k in values],
                              metrics=[hp.Metric(m, display_name=m.split("/", 1)[1] if
                                                 m.startswith("retrieval/") else m)
                                       for m in HPARAM_METRICS])
            hp.hparams(values, trial_id=cfg.run_name)
        writer.flush()
    finally:
        writer.close()
    return logdir


def write_retrieval_metrics(summaries_dir: str | Path, metrics: Mapping[str, float],
                            step: int, prefix: str = "retrieval") -> list[str]:
    """Each finite metric as the scalar ``<prefix>/<name>`` at ``step``; returns the tags."""
    import tensorflow as tf

    tags = []
    writer = tf.summary.create_file_writer(str(summaries_dir))
    try:
        with writer.as_default(step=int(step)):
            for name, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    tags.append(f"{prefix}/{name}")
                    tf.summary.scalar(tags[-1], float(value))
        writer.flush()
    finally:
        writer.close()
    return tags
