"""Per-item multi-label metrics of deep-feature retrieval (docs/hashing.md), vectorised.

For a query with label set y_q and the item at rank r with label set y_r (C classes):
  accuracy  |y_q & y_r| / |y_q | y_r|      precision  |y_q & y_r| / |y_r|
  recall    |y_q & y_r| / |y_q|            Hamming loss  |y_q xor y_r| / C
Each is averaged over the top k retrieved items, then over queries (reported as ACC@k, PREC@k,
REC@k, HL@k). A zero denominator (an empty label set) scores 0, the project's 0/0 rule.
"""
from __future__ import annotations

import numpy as np

NAMES = ("ACC", "PREC", "REC", "HL")


def per_item_metrics(query_labels, archive_labels, indices, shared, ks) -> dict[str, np.ndarray]:
    """name@k -> (n,) float64 for each k in ``ks`` not above K.

    query_labels (n, C), archive_labels (M, C) 0/1, indices (n, K) archive rows, shared (n, K)
    = |y_q & y_r| (``metrics.shared_counts``).
    """
    q = (np.asarray(query_labels) > 0.5).sum(1).astype(np.float64)[:, None]
    r = (np.asarray(archive_labels) > 0.5).sum(1).astype(np.float64)[np.asarray(indices)]
    s = np.asarray(shared, np.float64)
    c = np.asarray(archive_labels).shape[1]

    def ratio(num, den):
        return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)

    per_item = {"ACC": ratio(s, q + r - s), "PREC": ratio(s, r),
                "REC": ratio(s, np.broadcast_to(q, s.shape)), "HL": (q + r - 2 * s) / c}
    out = {}
    for k in [k for k in ks if k <= s.shape[1]]:
        for name, v in per_item.items():
            out[f"{name}@{k}"] = v[:, :k].mean(1)
    return out
