"""Approximate chi-square top-K: explicit feature map + inner-product index + exact re-rank.

For nonnegative u, v: (u - v)^2 / (u + v) = (u + v) - 4uv / (u + v), so
  chi2(u, v) = 0.5 * sum((u - v)^2 / (u + v)) = 0.5 * |u|_1 + 0.5 * |v|_1 - k(u, v),
with k(u, v) = sum 2uv / (u + v), the additive chi-square kernel. scikit-learn's
``AdditiveChi2Sampler`` (``sample_steps`` 2) gives a map phi with phi(u).phi(v) ~ k(u, v). With
the norm correction the archive row is [phi(v), -0.5 |v|_1] and the query row [phi(u), 1]; their
inner product is 0.5 |u|_1 - chi2(u, v) up to the map's error, so the largest inner products are
the smallest distances (0.5 |u|_1 is the same for every item of one query). A faiss flat
inner-product index (BLAS) finds the ``candidates`` best per query; those are re-ranked with the
exact chi-square and the top K kept in (distance, archive index) order.
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from evaluation.distances import EPS

CANDIDATES = 500
SAMPLE_STEPS = 2
RECALL_SAMPLE = 100


def _sampler(dim: int, sample_steps: int):
    from sklearn.kernel_approximation import AdditiveChi2Sampler
    return AdditiveChi2Sampler(sample_steps=sample_steps).fit(np.zeros((1, dim), np.float32))


def embed(x: np.ndarray, sampler, side: str) -> np.ndarray:
    """Mapped rows float32 (n, D * (2 * steps - 1) + 1): archive ``side`` "archive" carries
    -0.5 |v|_1 in the last column, queries carry 1."""
    x = np.asarray(x, np.float32)
    if (x < 0).any():
        raise ValueError("approximate chi-square needs nonnegative features (the additive "
                         "chi-square map is defined for x >= 0); use --index exact")
    phi = np.asarray(sampler.transform(x), np.float32)
    last = -0.5 * x.sum(1, keepdims=True) if side == "archive" else np.ones((len(x), 1), np.float32)
    return np.ascontiguousarray(np.hstack([phi, last.astype(np.float32)]))


def rerank(q: np.ndarray, a: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact chi-square of each query against its candidate rows, top k by (distance, index).

    q (n, D), a (na, D), cand (n, c) int64 archive rows (-1 = none) -> (indices, distances) (n, k).
    """
    valid = cand >= 0
    safe = np.where(valid, cand, 0)
    out = np.empty(cand.shape, np.float32)
    for r in range(q.shape[0]):  # (c, D) per query: small, and no (n, c, D) temporary
        u, v = q[r][None, :], a[safe[r]]
        out[r] = 0.5 * ((u - v) ** 2 / (u + v + np.float32(EPS))).sum(1)
    out[~valid] = np.inf
    idx = np.where(valid, cand, np.iinfo(np.int64).max)
    order = np.lexsort((idx, out))[:, :k]
    return np.take_along_axis(idx, order, 1), np.take_along_axis(out, order, 1)


class ApproxChi2Index:
    """Approximate chi-square search over one archive (built once, queried in blocks)."""

    def __init__(self, archive, sample_steps: int = SAMPLE_STEPS, threads: int | None = None):
        import faiss
        faiss.omp_set_num_threads(int(threads or os.cpu_count() or 1))
        self.archive = np.ascontiguousarray(np.asarray(archive[()] if hasattr(archive, "id")
                                                       else archive, np.float32))
        self.sampler = _sampler(self.archive.shape[1], sample_steps)
        mapped = embed(self.archive, self.sampler, "archive")
        self.index = faiss.IndexFlatIP(mapped.shape[1])
        self.index.add(mapped)

    def search(self, q, k: int, candidates: int = CANDIDATES) -> tuple[np.ndarray, np.ndarray]:
        """(indices (n, K) int64, exact distances (n, K) float32), K = min(k, archive rows)."""
        q = np.asarray(q, np.float32)
        n_arch = self.archive.shape[0]
        k = min(k, n_arch)
        c = min(max(candidates, k), n_arch)
        _, cand = self.index.search(embed(q, self.sampler, "query"), c)
        return rerank(q, self.archive, cand.astype(np.int64), k)


def approx_chi2_blocks(query, archive, k: int, query_block: int = 1024,
                       candidates: int = CANDIDATES, index: ApproxChi2Index | None = None
                       ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield (first query row, indices (qb, K), distances (qb, K)) like ``topk_blocks``."""
    index = index or ApproxChi2Index(archive)
    for q0 in range(0, query.shape[0], query_block):
        i, d = index.search(np.asarray(query[q0:q0 + query_block], np.float32), k, candidates)
        yield q0, i, d


def recall_at_k(approx_idx: np.ndarray, exact_idx: np.ndarray) -> float:
    """Mean over rows of |approx top K & exact top K| / K."""
    k = exact_idx.shape[1]
    hits = [np.intersect1d(a, e).size for a, e in zip(approx_idx, exact_idx)]
    return float(np.mean(hits) / k) if hits else float("nan")


def sample_rows(n: int, size: int = RECALL_SAMPLE, seed: int = 0) -> np.ndarray:
    """Sorted sample of ``size`` query rows (all rows when fewer)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
