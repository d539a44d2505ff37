"""Which top-K search ranks a query set: exact blocked (chi2, euclidean, cosine), exact Hamming
on packed codes, or approximate chi-square; optionally with each query's own row excluded.

Every generator yields (first query row, indices (qb, K) int64, distances (qb, K)) in
(distance, archive index) order, like ``evaluation.ranking.topk_blocks``.
"""
from __future__ import annotations

import numpy as np

from evaluation.features import FeatureSet, check_pair
from evaluation.ranking import topk, topk_blocks

INDEXES = ("exact", "approx")


def search_blocks(query: FeatureSet, archive: FeatureSet, k: int, metric: str,
                  index: str = "exact", query_block: int = 256, archive_block: int = 8192,
                  info: dict | None = None):
    """The block generator for ``metric`` and ``index``; notes (backend, recall) go to ``info``.

    ``index="approx"``: approximate chi-square (evaluation/approx.py); recall@K against the
    exact search on a sample of queries is measured first and stored in ``info``.
    """
    info = {} if info is None else info
    if index not in INDEXES:
        raise ValueError(f"--index {index!r}: expected one of {', '.join(INDEXES)}")
    if metric == "hamming":
        from evaluation.hamming import hamming_backend, hamming_topk_blocks
        check_pair(query, archive, metric)  # both hold codes of one width (named otherwise)
        if index != "exact":
            raise ValueError("--index approx applies to chi2; Hamming search is exact")
        info["hamming_backend"] = hamming_backend(pairs=len(query) * len(archive))
        return hamming_topk_blocks(query.code, archive.code, k, query_block=max(query_block, 4096))
    if index == "approx":
        if metric != "chi2":
            raise ValueError(f"--index approx is approximate chi-square; got --metric {metric}")
        from evaluation import approx
        ann = approx.ApproxChi2Index(archive.feature)
        rows = approx.sample_rows(len(query))
        qs = np.asarray(query.feature[rows], np.float32)
        exact_idx, _ = topk(qs, archive.feature, k, "chi2", query_block, archive_block)
        approx_idx, _ = ann.search(qs, k)
        info.update({"approx_candidates": approx.CANDIDATES,
                     "approx_sample_steps": approx.SAMPLE_STEPS,
                     "approx_recall_queries": int(rows.size),
                     f"approx_recall@{exact_idx.shape[1]}": approx.recall_at_k(approx_idx,
                                                                                exact_idx)})
        return approx.approx_chi2_blocks(query.feature, archive.feature, k,
                                         max(query_block, 1024), index=ann)
    return topk_blocks(query.feature, archive.feature, k, metric, query_block, archive_block)


def exclude_self(blocks, k: int):
    """Wrap blocks of a search run with K + 1 on query = archive: drop each query's own row
    (or, when ties pushed it out of the K + 1, the last one), keeping K in order."""
    for q0, idx, dist in blocks:
        own = np.arange(q0, q0 + idx.shape[0])[:, None]
        is_self = idx == own
        drop = np.where(is_self.any(1), is_self.argmax(1), idx.shape[1] - 1)
        keep = np.ones(idx.shape, bool)
        keep[np.arange(idx.shape[0]), drop] = False
        n = idx.shape[0]
        yield q0, idx[keep].reshape(n, -1)[:, :k], dist[keep].reshape(n, -1)[:, :k]
