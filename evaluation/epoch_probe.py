"""Per-epoch probe of a training run: validation retrieval and memorisation (docs/studies.md).

Validation retrieval: the validation images (eval pipeline, no augmentation) query an archive
made of the *training* split, ranked with the distance of the model's retrieval
(chi-square; Hamming on packed codes for MiLaN; cosine for OffTheShelf) and scored with the
archive's headline metric (NDCG@20 DLRSD, NDCG@30 BigEarthNet; NDCG@K when the archive is
smaller than that cut-off). Relevance uses the *clean* labels of both sides; no test record is
read. The features are those of the exported feature model (pooled backbone output, or the
sigmoid class scores for ``feature_layer`` "output").

Memorisation (evaluation/memorisation.py) is measured in the same pass over the training
archive, from the discriminative head's predictions against the clean and noisy labels.

Bounds: at most ``val_retrieval_queries`` validation records and ``val_retrieval_archive``
training records (0: all), each a fixed subset drawn once with seed ``SUBSET_SEED`` (the same
in every run and cell, so runs are compared on the same images); ``val_retrieval_every`` sets
the epochs probed (every N-th and the last; 0: none).
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from evaluation.memorisation import FitCounts, PriorTally, batch_counts

SUBSET_SEED = 0
_TARGET_KEYS = ("label", "noisy_label", "seg_map", "noisy_seg_map")


def subset_indices(n: int, limit: int, seed: int = SUBSET_SEED) -> np.ndarray | None:
    """Sorted file positions of ``limit`` of ``n`` records drawn with ``seed``; None (every
    record) when ``limit`` is 0 or not below ``n``."""
    if limit <= 0 or limit >= n:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def is_due(epoch: int, every: int, nb_epoch: int) -> bool:
    """Whether epoch ``epoch`` (1-based) is probed: every ``every``-th, and always the last."""
    return every > 0 and (epoch % every == 0 or epoch == nb_epoch)


def distance_of(model_name: str) -> str:
    """The distance retrieval.py ranks this model's features with by default (its registry
    entry's, else chi-square)."""
    from models import registry
    return registry.get(model_name).retrieval_metric or "chi2"


def memorisation_task(cfg) -> str | None:
    """The head whose predictions measure memorisation: "BCE", "PCE", "RRL", or None for a
    model without a discriminative head (its registry task "hash" or "none")."""
    from evaluation.memorisation import TASKS
    from models import registry
    task = registry.get(cfg.model_name).task
    return task if task in TASKS else None


def score_retrieval(query_feature, query_label, archive_feature, archive_label,
                    distance: str, dataset) -> tuple[str, float]:
    """(metric name, value): the archive's headline metric of ``query`` ranked against
    ``archive`` (in-memory arrays; ``distance`` "hamming" packs sigmoid outputs into codes)."""
    from archives import registry
    from evaluation.evaluate import evaluate
    from evaluation.features import FeatureSet

    def side(name, feature, label):
        feature = np.asarray(feature, np.float32)
        code = None
        if distance == "hamming":
            from evaluation.hamming import pack_codes
            code = pack_codes(feature)
        names = np.array([str(i).encode() for i in range(len(feature))], dtype=object)
        return FeatureSet(name, feature, np.asarray(label, np.float32), names, code=code)

    query = side("validation queries", query_feature, query_label)
    archive = side("training archive", archive_feature, archive_label)
    with warnings.catch_warnings():  # an all-zero label set: counted, no warning per epoch
        warnings.simplefilter("ignore")
        res = evaluate(query, archive, distance, None, dataset)
    headline = registry.get(dataset).headline_metric
    if headline not in res["metrics"]:  # an archive smaller than the headline's cut-off
        headline = f"NDCG@{res['max_topk']}"
    return headline, float(res["metrics"][headline])


def make_probe_fn(model, cfg):
    """Compiled images -> (retrieval feature, discriminative output or None), training=False.

    GRID variants and baselines: the feature model's pooled feature (or the sigmoid scores for
    ``feature_layer`` "output") and the discriminative head's output, from one backbone pass.
    SAT/ELR/JoCoR: their first network's. MiLaN: its retrieval model (sigmoid hash outputs);
    OffTheShelf: its feature model; neither has a discriminative head.
    """
    import tensorflow as tf

    from models.base import compile_step

    net = getattr(model, "net", model)  # robust models: the retrieval network
    if not hasattr(net, "dis_head"):
        retrieval = model.retrieval_model()
        return compile_step(lambda images: (retrieval(images, training=False),))
    output = getattr(cfg, "feature_layer", "pooling") == "output"

    def fn(images):
        fmap = net.backbone(images, training=False)
        pooled = net.pool(fmap)
        dis = net.dis_head(pooled if net.pooled else fmap, training=False)
        return (tf.sigmoid(dis) if output else pooled), dis
    return compile_step(fn)


class EpochProbe:
    """The probe of one run: its fixed query and archive subsets, and ``measure(model)``."""

    def __init__(self, cfg, log=print):
        self.cfg, self.log = cfg, log
        self.unscored = False  # validation retrieval could not be scored (said once)
        self.task = memorisation_task(cfg)
        self.distance = distance_of(cfg.model_name)
        self.has_queries = bool(cfg.val_tfrecord_paths)
        self._subsets = None  # counted at the first probe (reads the record files)
        self.prior = None  # PriorTally of the last training-archive pass

    @property
    def subsets(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(training archive positions, validation query positions); None = every record."""
        if self._subsets is None:
            from models.robust import count_records
            cfg = self.cfg
            archive = subset_indices(count_records(cfg.noisy_train_paths),
                                     cfg.val_retrieval_archive)
            query = (subset_indices(count_records(cfg.val_tfrecord_paths),
                                    cfg.val_retrieval_queries) if self.has_queries else None)
            self._subsets = (archive, query)
        return self._subsets

    def due(self, epoch: int) -> bool:
        return is_due(epoch, self.cfg.val_retrieval_every, self.cfg.nb_epoch)

    def _pass(self, fn, paths, indices, counts: bool):
        from archives.pipeline import make_dataset

        ds = make_dataset(list(paths), self.cfg.archive, training=False,
                          batch_size=self.cfg.batch_size, indices=indices)
        feats, labels, total = [], [], None
        prior = PriorTally(self.task, self.cfg.nb_class) if counts else None
        for batch in ds:
            out = [t.numpy() for t in fn(batch["image"])]
            feats.append(out[0].astype(np.float32).reshape(out[0].shape[0], -1))
            labels.append(batch["label"].numpy().astype(np.float32))
            if counts and self.task is not None and len(out) > 1:  # a discriminative head
                total = total or FitCounts()
                arrays = {k: v.numpy() for k, v in batch.items() if k in _TARGET_KEYS}
                total = total + batch_counts(self.task, out[1], arrays, self.cfg.nb_class)
                prior.add(arrays)
        if not feats:
            raise ValueError(f"{list(paths)}: no records to probe")
        self.prior = prior if counts else self.prior
        return np.concatenate(feats), np.concatenate(labels), total

    def measure(self, fn) -> dict[str, float | str]:
        """One probe with ``fn`` (from :func:`make_probe_fn`): ``retrieval_metric`` (its
        name), ``val_retrieval`` (NaN without validation records), ``corrupted_fitted``,
        ``clean_fitted`` (NaN where not measured: no task head, or a model whose ``fn`` gives
        no discriminative output), and the prior-only reference of both
        (``corrupted_fitted_prior``, ``clean_fitted_prior``; evaluation/memorisation.py)."""
        archive_idx, query_idx = self.subsets
        a_feat, a_lab, counts = self._pass(fn, self.cfg.noisy_train_paths, archive_idx,
                                           counts=True)
        out: dict[str, float | str] = {"val_retrieval": math.nan}
        if self.has_queries:
            q_feat, q_lab, _ = self._pass(fn, self.cfg.val_tfrecord_paths, query_idx,
                                          counts=False)
            from evaluation.features import FeatureFileError
            try:
                name, value = score_retrieval(q_feat, q_lab, a_feat, a_lab, self.distance,
                                              self.cfg.archive)
                out.update(retrieval_metric=name, val_retrieval=value)
            except FeatureFileError as err:  # e.g. negative features for chi-square
                if not self.unscored:
                    self.log(f"note: validation retrieval not scored ({err}); training goes on")
                self.unscored = True
        if counts is not None:
            out.update(counts.shares())
            out.update(self.prior.shares())
        else:
            out.update({"corrupted_fitted": math.nan, "clean_fitted": math.nan})
        return out
