"""Multi-label retrieval metrics, vectorised over queries (no per-query Python loop).

Notation, for one query and its ranked list of K retrieved archive items (K = --max-topk,
default min(420, M) for DLRSD and min(1000, M) for BEN or unknown, M = archive size):
  s_r    number of labels shared by the query and the item at rank r (r = 1..K);
  rel_r  1 if s_r >= 1 (the item shares at least one label), else 0;
  Rel@k  sum_{r<=k} rel_r;   N_rel  number of relevant (s >= 1) items in the whole archive;
  DCG@k  sum_{r<=k} (2^{s_r} - 1) / log2(1 + r).

  NDCG@k         (published GRID definition) DCG@k / IDCG@k, where IDCG@k is the DCG@k of the
                 same K retrieved items re-sorted by s descending (the ideal comes from the
                 retrieved list, not from the archive).
  NDCG_global@k  DCG@k / IDCG_global@k, where IDCG_global@k uses the k largest s values of the
                 whole archive (the usual definition; never above NDCG@k).
  P@k            Rel@k / k.
  R@k            Rel@k / N_rel.
  mAP@k          mean over queries of AP@k = (1 / Rel@k) * sum_{r<=k} rel_r * P@r.
  ACG@k          (1 / k) * sum_{r<=k} s_r   (average cumulative gain).
  WAP@k          (1 / Rel@k) * sum_{r<=k} rel_r * ACG@r   (weighted AP, Zhao et al. 2015).

Zero denominators: a query whose IDCG is 0 (no retrieved / no archive item shares a label),
whose Rel@k is 0, or whose N_rel is 0 scores 0 on that metric and stays in the mean; every
metric is averaged over all queries, and the JSON reports how many had no relevant item.
(The published code divided 0 by 0 here, which gives NaN and a NaN mean.)
"""
from __future__ import annotations

import numpy as np

REPORT_KS = (10, 20, 30, 50, 100)
NDCG_KS = (20, 30)


def _binary(labels) -> np.ndarray:
    return np.asarray(labels) > 0.5


def shared_counts(query_labels, archive_labels, indices) -> np.ndarray:
    """s (n, K) int32: labels shared by query i and archive item indices[i, r]."""
    q = _binary(query_labels)
    a = _binary(archive_labels)
    return (q[:, None, :] & a[np.asarray(indices)]).sum(-1, dtype=np.int32)


def archive_gains(query_labels, archive_labels, kmax: int, chunk: int = 16384):
    """Per query: N_rel (n,) int64 and the kmax largest s over the whole archive (n, kmax) int32.

    Works through the archive ``chunk`` items at a time with a histogram of s values.
    """
    q = _binary(query_labels).astype(np.float32)
    a = _binary(archive_labels).astype(np.float32)
    n, c = q.shape
    count_ge = np.zeros((n, c + 1), np.int64)  # count_ge[:, v] = #items with s >= v
    for a0 in range(0, a.shape[0], chunk):
        s = np.rint(q @ a[a0:a0 + chunk].T).astype(np.int32)
        for v in range(1, c + 1):
            count_ge[:, v] += (s >= v).sum(1)
    return count_ge[:, 1], _descending_from_counts(count_ge[:, 1:], kmax)


def _descending_from_counts(count_ge: np.ndarray, k: int) -> np.ndarray:
    """count_ge (n, L): per row, how many entries reach level v = 1..L -> the k largest
    entries of each row, descending (n, k) int32: the value at rank r (0-based) is the number
    of levels that more than r entries reach."""
    return (count_ge[:, :, None] > np.arange(k)[None, None, :]).sum(1, dtype=np.int32)


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def dcg(s: np.ndarray, k: int) -> np.ndarray:
    """DCG@k (n,) of gains s (n, >=k) in rank order."""
    return ((np.exp2(s[:, :k].astype(np.float64)) - 1.0) * _discounts(k)).sum(1)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (the documented 0/0 rule)."""
    num = np.asarray(num, np.float64)
    den = np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def top_values(s: np.ndarray, k: int) -> np.ndarray:
    """The k largest values of each row of s (n, K) small nonnegative ints, descending (n, k).

    Counting instead of sorting (see ``_descending_from_counts``).
    """
    s = np.asarray(s)
    top = int(s.max(initial=0))
    count_ge = np.stack([(s >= v).sum(1) for v in range(1, top + 1)], 1) if top else \
        np.zeros((s.shape[0], 0), np.int64)
    return _descending_from_counts(count_ge, k)


def ndcg_published(s: np.ndarray, k: int, ideal: np.ndarray | None = None) -> np.ndarray:
    """Published NDCG@k (n,): ideal from the same K retrieved items sorted by s descending.

    ``ideal``: precomputed ``top_values(s, >=k)`` (saves recounting for several k).
    """
    if ideal is None:
        ideal = top_values(s, k)
    return _ratio(dcg(s, k), dcg(ideal, k))


def ndcg_global(s: np.ndarray, ideal_s: np.ndarray, k: int) -> np.ndarray:
    """Global-ideal NDCG@k (n,): ideal from the archive's k best s values (ideal_s sorted desc)."""
    return _ratio(dcg(s, k), dcg(ideal_s, k))


def per_query_metrics(s: np.ndarray, n_relevant: np.ndarray, ideal_s: np.ndarray,
                      ks=REPORT_KS, ndcg_ks=NDCG_KS) -> dict[str, np.ndarray]:
    """Every metric per query: name -> (n,) float64, for the k's not above K = s.shape[1]."""
    s = np.asarray(s)
    kk = s.shape[1]
    ndcg_ks = [k for k in ndcg_ks if k <= kk]
    ks = [k for k in ks if k <= kk]
    ideal_list = top_values(s, max(ndcg_ks)) if ndcg_ks else None
    s = s[:, :max(ks + ndcg_ks + [1])]  # every metric reads only the first max(k) ranks
    kk = s.shape[1]
    rel = (s > 0).astype(np.float64)
    ranks = np.arange(1, kk + 1, dtype=np.float64)
    cum_rel = np.cumsum(rel, 1)
    prec_at_r = cum_rel / ranks
    acg_at_r = np.cumsum(s, 1, dtype=np.float64) / ranks
    cum_ap = np.cumsum(rel * prec_at_r, 1)
    cum_wap = np.cumsum(rel * acg_at_r, 1)
    out: dict[str, np.ndarray] = {}
    for k in ndcg_ks:
        out[f"NDCG@{k}"] = ndcg_published(s, k, ideal_list)
    for k in ks:
        rel_k = cum_rel[:, k - 1]
        out[f"mAP@{k}"] = _ratio(cum_ap[:, k - 1], rel_k)
        out[f"P@{k}"] = prec_at_r[:, k - 1]
        out[f"R@{k}"] = _ratio(rel_k, n_relevant)
        out[f"ACG@{k}"] = acg_at_r[:, k - 1]
        out[f"WAP@{k}"] = _ratio(cum_wap[:, k - 1], rel_k)
        out[f"NDCG_global@{k}"] = ndcg_global(s, ideal_s, k)
    return out


def ndcg_published_loop(s_row, k: int) -> float:
    """One query, plain Python, the way the published script scores it (benchmarks, tests)."""
    s_row = [int(x) for x in s_row]
    dcg_k = sum((2 ** s_row[r] - 1) / np.log2(r + 2) for r in range(min(k, len(s_row))))
    ideal = sorted(s_row, reverse=True)
    idcg_k = sum((2 ** ideal[r] - 1) / np.log2(r + 2) for r in range(min(k, len(ideal))))
    return dcg_k / idcg_k if idcg_k > 0 else 0.0
