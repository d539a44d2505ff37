"""Score a query feature set against an archive: blocked top-K, then metrics per query block.

Only one query block of rankings exists at a time; the per-query metric values are summed as
blocks finish. K (``max_topk``) defaults to the archive's published K (archives/registry.py:
420 DLRSD, 1000 BEN; 1000 when the dataset is unknown), clipped to the archive size; an explicit K larger than the archive is an error.
"""
from __future__ import annotations

import time
import warnings

import numpy as np

from evaluation.features import FeatureFileError, FeatureSet, check_nonnegative, check_pair
from evaluation.metrics import NDCG_KS, REPORT_KS, archive_gains, per_query_metrics, shared_counts
from evaluation.label_metrics import per_item_metrics
from evaluation.search import exclude_self as _exclude_self
from evaluation.search import search_blocks

UNKNOWN_TOPK = 1000  # K when the dataset is not known


def _archive(dataset):
    """The description of ``dataset`` (a registered name or an ArchiveInfo), or None (feature
    files of an unknown set)."""
    from archives import registry
    if isinstance(dataset, registry.ArchiveInfo):
        return dataset
    return registry.ARCHIVES.get(dataset) if dataset else None


def resolve_topk(max_topk: int | None, archive: FeatureSet, dataset: str | None) -> int:
    """The K to rank: the given one (error if above the archive size) or the published default."""
    n = len(archive)
    if max_topk is None:
        info = _archive(dataset)
        return min(info.default_topk if info else UNKNOWN_TOPK, n)
    if max_topk < 1:
        raise ValueError(f"--max-topk must be >= 1, got {max_topk}")
    if max_topk > n:
        raise FeatureFileError(f"{archive.path}: --max-topk {max_topk} is larger than the "
                               f"archive ({n} items); use at most {n}")
    return max_topk


def evaluate(query: FeatureSet, archive: FeatureSet, metric: str = "chi2",
             max_topk: int | None = None, dataset: str | None = None, query_block: int = 256,
             archive_block: int = 8192, keep: int = 0, progress: bool = False,
             index: str = "exact", exclude_self: bool = False) -> dict:
    """Rank every query and return the result dict (means of every metric, counts, timing).

    ``keep``: also return the top-K indices and distances of the first ``keep`` queries (keys
    ``topk_index``, ``topk_distance``).
    ``metric="hamming"`` ranks packed codes; ``index="approx"``: approximate chi-square (its
    recall@K against exact search is in the result). ``exclude_self``: query = archive (same
    rows), each query's own row is not retrieved and not counted as relevant.
    """
    check_pair(query, archive, metric)
    if exclude_self and len(archive) < 2:
        raise FeatureFileError(f"{archive.path}: a set that queries itself needs >= 2 items")
    if metric == "chi2":  # chi-square is defined for non-negative features only
        check_nonnegative(query.path, query.feature)
        check_nonnegative(archive.path, archive.feature)
    k = resolve_topk(max_topk, archive, dataset)
    if exclude_self:
        k = min(k, len(archive) - 1)
    # the standard cutoffs up to K, and K itself (an archive smaller than 10 still gets a table)
    report_ks = sorted({x for x in REPORT_KS if x <= k} | {k})
    ndcg_ks = sorted({x for x in NDCG_KS if x <= k} | {k})
    kmax_global = max(report_ks)
    empty = {}
    for side in (query, archive):
        n_empty = int((np.asarray(side.label).sum(1) == 0).sum())
        empty[side.path] = n_empty
        if n_empty:
            warnings.warn(f"{side.path}: {n_empty} of {len(side)} label sets are all zero (they "
                          "share no label with anything: such queries score 0)", stacklevel=2)
    sums: dict[str, float] = {}
    no_relevant = 0
    kept, kept_dist = [], []
    t0 = time.perf_counter()
    info: dict = {}
    blocks = search_blocks(query, archive, k + int(exclude_self), metric, index, query_block,
                           archive_block, info)
    if exclude_self:
        blocks = _exclude_self(blocks, k)
    if progress:
        from tqdm import tqdm
        blocks = tqdm(blocks, total=-(-len(query) // query_block), desc="ranking", unit="block")
    for q0, idx, dist in blocks:
        qlab = query.label[q0:q0 + idx.shape[0]]
        s = shared_counts(qlab, archive.label, idx)
        n_rel, ideal = archive_gains(qlab, archive.label, kmax_global + int(exclude_self))
        if exclude_self:  # the query's own row: relevant, and the largest s of all
            n_rel = n_rel - (qlab > 0.5).any(1)
            ideal = ideal[:, 1:]
        no_relevant += int((n_rel == 0).sum())
        for name, values in per_query_metrics(s, n_rel, ideal, report_ks, ndcg_ks).items():
            sums[name] = sums.get(name, 0.0) + float(values.sum())
        for name, values in per_item_metrics(qlab, archive.label, idx, s, report_ks).items():
            sums[name] = sums.get(name, 0.0) + float(values.sum())
        if len(kept) * query_block < keep:
            kept.append(idx)
            kept_dist.append(np.asarray(dist))
    seconds = time.perf_counter() - t0
    n = len(query)
    result = {
        "query_features": query.path, "archive_features": archive.path, "metric": metric,
        "max_topk": k, "num_queries": n, "num_archive": len(archive), "feature_dim": query.dim,
        "queries_without_relevant": no_relevant, "queries_without_labels": empty[query.path],
        "archive_without_labels": empty[archive.path], "ranking_seconds": round(seconds, 3),
        "metrics": {name: total / n for name, total in sums.items()},
        "index": index, "exclude_self": exclude_self, **info,
    }
    info = _archive(dataset)
    if info and info.headline_metric in result["metrics"]:
        result["headline"] = {info.headline_metric: result["metrics"][info.headline_metric]}
    if keep:
        result["topk_index"] = np.concatenate(kept)[:keep] if kept else np.empty((0, k), np.int64)
        result["topk_distance"] = (np.concatenate(kept_dist)[:keep] if kept_dist
                                   else np.empty((0, k), np.float32))
    return result
