"""Binary hash codes and exact Hamming top-K search.

Codes are packed bits: uint8 (N, K/8) in ``numpy.packbits`` order (bit j of a code is bit
7 - j % 8 of byte j // 8; bit = 1 where the sigmoid output > 0.5). Ranking: ascending Hamming
distance, ties broken by archive index, so results equal
``np.argsort(full_distances, kind="stable")[:, :K]`` (codes tie constantly: short codes have only
K + 1 distinct distances).

Backends (``GRID_HAMMING_BACKEND`` = auto | faiss | numpy; auto = numpy below 1e8 pairs):
- ``faiss``: ``IndexBinaryFlat`` (popcount scan with a per-query heap that keeps the earlier
  archive item on a tie; tests check this against the numpy reference on tie-heavy codes),
  with its OpenMP thread count set explicitly (``threads``, default all cores).
- ``numpy``: XOR + ``np.bitwise_count`` per block, then an exact selection without sorting
  whole rows: the K-th distance from ``np.partition``, every item below it, and the ties at it
  taken in archive order.
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np

BACKENDS = ("auto", "faiss", "numpy")
NUMPY_QUERY_BLOCK = 256
FAISS_MIN_PAIRS = 10**8


def pack_codes(outputs) -> np.ndarray:
    """Sigmoid outputs (N, K) -> packed codes uint8 (N, ceil(K/8)); bit = output > 0.5."""
    return np.packbits(np.asarray(outputs) > 0.5, axis=1)


def unpack_codes(codes, bits: int) -> np.ndarray:
    """Packed codes (N, B) uint8 -> bits (N, bits) uint8 0/1."""
    return np.unpackbits(np.asarray(codes, np.uint8), axis=1, count=bits)


def hamming_reference(q, a) -> np.ndarray:
    """Full Hamming distance matrix (nq, na) int32 by broadcasting: the direct formula."""
    q = np.asarray(q, np.uint8)
    a = np.asarray(a, np.uint8)
    return np.bitwise_count(q[:, None, :] ^ a[None, :, :]).sum(-1, dtype=np.int32)


def _words(codes: np.ndarray) -> np.ndarray:
    """View packed codes as the widest unsigned words that divide the byte count (fewer XORs)."""
    codes = np.ascontiguousarray(codes, np.uint8)
    for width, dtype in ((8, np.uint64), (4, np.uint32), (2, np.uint16)):
        if codes.shape[1] % width == 0:
            return codes.view(dtype)
    return codes


def hamming_numpy(q, a) -> np.ndarray:
    """Hamming distances (nq, na): uint8 for codes up to 255 bits, else int32."""
    qw, aw = _words(q), _words(a)
    bits = np.asarray(q).shape[1] * 8
    out_t = np.uint8 if bits <= 255 else np.int32
    out = np.zeros((qw.shape[0], aw.shape[0]), out_t)
    for j in range(qw.shape[1]):
        out += np.bitwise_count(qw[:, j:j + 1] ^ aw[None, :, j]).astype(out_t, copy=False)
    return out


def select_topk_int(dist: np.ndarray, k: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-row top-k of small integer distances, ties by column order.

    dist (n, m) ints -> (indices (n, k') int64 + offset, distances (n, k') int32), k' = min(k, m),
    sorted by (distance, index).
    """
    n, m = dist.shape
    k = min(k, m)
    if k == m:
        order = np.argsort(dist, axis=1, kind="stable")
        return order.astype(np.int64) + offset, np.take_along_axis(dist, order, 1).astype(np.int32)
    thr = np.partition(dist, k - 1, axis=1)[:, k - 1]   # the k-th smallest distance per row
    lt_r, lt_c = np.nonzero(dist < thr[:, None])         # all of these are in the top k
    need = k - np.bincount(lt_r, minlength=n)            # ties at the threshold to take
    at_r, at_c = np.nonzero(dist == thr[:, None])        # row-major: columns ascend per row
    counts = np.bincount(at_r, minlength=n)
    pos = np.arange(at_r.size) - (np.cumsum(counts) - counts)[at_r]
    take = pos < need[at_r]                              # the first ``need`` ties of each row
    rows = np.concatenate([lt_r, at_r[take]])
    cols = np.concatenate([lt_c, at_c[take]])
    order = np.lexsort((cols, rows))
    idx = cols[order].reshape(n, k)
    d = dist[rows[order], cols[order]].reshape(n, k)
    order = np.argsort(d, axis=1, kind="stable")          # (distance, index): index ascends
    return (np.take_along_axis(idx, order, 1).astype(np.int64) + offset,
            np.take_along_axis(d, order, 1).astype(np.int32))


def hamming_backend(name: str | None = None, pairs: int | None = None) -> str:
    """The backend in use. auto: numpy below FAISS_MIN_PAIRS query x archive pairs (faiss's
    start-up costs more there; benchmarks/bench_hamming.py), else faiss when importable."""
    choice = name or os.environ.get("GRID_HAMMING_BACKEND", "auto")
    if choice not in BACKENDS:
        raise ValueError(f"GRID_HAMMING_BACKEND={choice!r}: expected one of {', '.join(BACKENDS)}")
    if choice == "numpy" or (choice == "auto" and pairs is not None and pairs < FAISS_MIN_PAIRS):
        return "numpy"
    try:
        import faiss  # noqa: F401
        return "faiss"
    except ImportError:
        if choice == "faiss":
            raise RuntimeError("Hamming backend faiss asked for, but faiss is not "
                               "installed") from None
        return "numpy"


def _check_codes(q, a) -> None:
    for name, c in (("query", q), ("archive", a)):
        if c.ndim != 2 or c.dtype != np.uint8:
            raise ValueError(f"{name} codes must be uint8 (N, bytes), got {c.dtype} {c.shape}")
    if q.shape[1] != a.shape[1]:
        raise ValueError(f"code widths differ: query {q.shape[1]} bytes, archive {a.shape[1]}")


def hamming_topk_blocks(query, archive, k: int, query_block: int = 4096,
                        archive_block: int = 262144, backend: str | None = None,
                        threads: int | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield (first query row, indices (qb, K) int64, distances (qb, K) int32) per query block.

    K = min(k, archive rows); order (distance, archive index). ``query``/``archive``: packed
    codes, arrays or h5py datasets (read whole: codes are small, 1M x 32 bits = 4 MB).
    """
    q = np.asarray(query[()] if hasattr(query, "id") else query)
    a = np.asarray(archive[()] if hasattr(archive, "id") else archive)
    _check_codes(q, a)
    if a.shape[0] == 0:
        raise ValueError("empty archive")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    kk = min(k, a.shape[0])
    if hamming_backend(backend, q.shape[0] * a.shape[0]) == "faiss":
        import faiss
        faiss.omp_set_num_threads(int(threads or os.cpu_count() or 1))
        index = faiss.IndexBinaryFlat(a.shape[1] * 8)
        index.add(np.ascontiguousarray(a))
        for q0 in range(0, q.shape[0], query_block):
            d, i = index.search(np.ascontiguousarray(q[q0:q0 + query_block]), kk)
            yield q0, i.astype(np.int64), d.astype(np.int32)
        return
    query_block = min(query_block, NUMPY_QUERY_BLOCK)  # (block x archive block) uint8 stays small
    for q0 in range(0, q.shape[0], query_block):
        qb = q[q0:q0 + query_block]
        best_i = best_d = None
        for a0 in range(0, a.shape[0], archive_block):
            i, d = select_topk_int(hamming_numpy(qb, a[a0:a0 + archive_block]), kk, a0)
            if best_i is not None:  # earlier blocks first: ties keep archive order
                i2, d2 = select_topk_int(np.concatenate([best_d, d], 1), kk)
                i = np.take_along_axis(np.concatenate([best_i, i], 1), i2, 1)
                d = d2
            best_i, best_d = i, d
        yield q0, best_i, best_d


def hamming_topk(query, archive, k: int, **kw) -> tuple[np.ndarray, np.ndarray]:
    """All queries at once: (indices (nq, K) int64, distances (nq, K) int32)."""
    parts = list(hamming_topk_blocks(query, archive, k, **kw))
    if not parts:
        kk = min(k, np.asarray(archive).shape[0])
        return np.empty((0, kk), np.int64), np.empty((0, kk), np.int32)
    return np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])
