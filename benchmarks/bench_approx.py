"""Approximate chi-square top-K (additive chi2 map, 2 steps + faiss inner product + exact
re-rank of the top 500) against the exact blocked chi-square search, in one run.

Exact: evaluation.ranking.topk (the project's blocked top-K with its fastest chi-square
backend). Features: sparse nonnegative 256-d vectors like pooled post-ReLU features. Recall@K
is measured against the exact result on every query.

  python benchmarks/bench_approx.py [--sizes 200x10000 1000x20000 5000x100000] [--k 100] [--dim 256]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from evaluation.approx import ApproxChi2Index, recall_at_k  # noqa: E402
from evaluation.distances import chi2_backend  # noqa: E402
from evaluation.ranking import topk  # noqa: E402


def features(n, dim, rng, centres):
    x = centres[rng.integers(len(centres), size=n)] * rng.gamma(2.0, 0.5, (n, dim))
    return (x * (rng.random((n, dim)) < 0.5)).astype(np.float32)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["200x10000", "1000x20000", "5000x100000"])
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--candidates", type=int, default=500)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    centres = rng.gamma(1.0, 1.0, (50, args.dim))
    ApproxChi2Index(features(10, args.dim, rng, centres)).search(  # imports and thread start-up
        features(2, args.dim, rng, centres), 5)
    topk(features(2, args.dim, rng, centres), features(10, args.dim, rng, centres), 5)
    print(f"{args.dim}-d features, K={args.k}, {args.candidates} candidates re-ranked, exact "
          f"chi2 backend {chi2_backend()}, {os.cpu_count()} cores")
    print(f"{'queries x archive':>20} {'exact s':>9} {'approx s':>9} {'(build s)':>9} "
          f"{'speed-up':>8} {'recall@K':>9}")
    for size in args.sizes:
        nq, na = (int(x) for x in size.split("x"))
        q, a = features(nq, args.dim, rng, centres), features(na, args.dim, rng, centres)
        t0 = time.perf_counter()
        exact, _ = topk(q, a, args.k, "chi2", 256, 8192)
        t_exact = time.perf_counter() - t0
        t0 = time.perf_counter()
        index = ApproxChi2Index(a)
        t_build = time.perf_counter() - t0
        approx, _ = index.search(q, args.k, args.candidates)
        t_approx = time.perf_counter() - t0
        print(f"{size:>20} {t_exact:9.2f} {t_approx:9.2f} {t_build:9.2f} "
              f"{t_exact / t_approx:7.1f}x {recall_at_k(approx, exact):9.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
