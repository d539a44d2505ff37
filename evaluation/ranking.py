"""Blocked exact top-K ranking: never holds the full query x archive distance matrix.

Order: ascending distance, ties broken by archive index (a stable sort on (distance, index)),
so results are reproducible and equal ``np.argsort(full_distances, kind="stable")[:, :K]``.
Memory: one query block x one archive block of distances plus the running (query block, K)
candidates. ``query`` and ``archive`` may be numpy arrays or h5py datasets (read block by block).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from evaluation.distances import pairwise


def select_topk(dist: np.ndarray, index: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k smallest (distance, index) pairs in stable order.

    dist (n, m) float32, index (n, m) int64 -> (index (n, k'), dist (n, k')), k' = min(k, m).
    """
    n, m = dist.shape
    if m > k:
        part = np.argpartition(dist, k - 1, axis=1)[:, :k]
        sd = np.take_along_axis(dist, part, 1)
        si = np.take_along_axis(index, part, 1)
        thr = sd.max(1, keepdims=True)
        # argpartition is not stable: where ties straddle the k-th place, redo the row exactly.
        bad = np.flatnonzero((dist == thr).sum(1) > (sd == thr).sum(1))
        if bad.size:
            order = np.lexsort((index[bad], dist[bad]))[:, :k]
            sd[bad] = np.take_along_axis(dist[bad], order, 1)
            si[bad] = np.take_along_axis(index[bad], order, 1)
        dist, index = sd, si
    order = np.lexsort((index, dist))
    return np.take_along_axis(index, order, 1), np.take_along_axis(dist, order, 1)


def topk_blocks(query, archive, k: int, metric: str = "chi2", query_block: int = 256,
                archive_block: int = 8192) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield (first query row, indices (qb, K) int64, distances (qb, K) float32) per query block.

    K = min(k, archive rows). The archive is read ``archive_block`` rows at a time for every
    query block, so an h5py dataset larger than memory works (at the cost of re-reading it).
    """
    nq, na = query.shape[0], archive.shape[0]
    if na == 0:
        raise ValueError("empty archive")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    for q0 in range(0, nq, query_block):
        qb = np.asarray(query[q0:q0 + query_block], np.float32)
        best_i = np.empty((qb.shape[0], 0), np.int64)
        best_d = np.empty((qb.shape[0], 0), np.float32)
        for a0 in range(0, na, archive_block):
            ab = np.asarray(archive[a0:a0 + archive_block], np.float32)
            d = pairwise(qb, ab, metric)
            if best_d.shape[1] >= k:
                d, idx = _below(d, best_d[:, -1], a0)
            else:
                idx = np.broadcast_to(np.arange(a0, a0 + ab.shape[0], dtype=np.int64), d.shape)
            best_i, best_d = select_topk(np.concatenate([best_d, d], 1),
                                         np.concatenate([best_i, idx], 1), k)
        yield q0, best_i, best_d


def _below(d: np.ndarray, thr: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Only the entries of each row of d that can still enter the top K (d <= the row's
    current K-th distance; later indices lose ties), packed left and padded with +inf.

    -> (distances (n, m'), archive indices (n, m')), m' = the largest count in a row.
    """
    mask = d <= thr[:, None]
    counts = mask.sum(1)
    width = int(counts.max(initial=0))
    rows, cols = np.nonzero(mask)
    pos = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    out_d = np.full((d.shape[0], width), np.inf, np.float32)
    out_i = np.full((d.shape[0], width), np.iinfo(np.int64).max, np.int64)
    out_d[rows, pos] = d[rows, cols]
    out_i[rows, pos] = cols + offset
    return out_d, out_i


def topk(query, archive, k: int, metric: str = "chi2", query_block: int = 256,
         archive_block: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """All query rows at once: (indices (nq, K) int64, distances (nq, K) float32)."""
    parts = list(topk_blocks(query, archive, k, metric, query_block, archive_block))
    if not parts:
        kk = min(k, archive.shape[0])
        return np.empty((0, kk), np.int64), np.empty((0, kk), np.float32)
    return (np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts]))
