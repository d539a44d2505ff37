"""Hamming top-K search on packed 32-bit codes: faiss IndexBinaryFlat and the numpy counting
selection of evaluation/hamming.py against a straightforward numpy reference, in one run.

Reference: XOR + np.bitwise_count over the whole (query block x archive) matrix, then a stable
argsort per row (the direct way to rank with ties in archive order). Codes are drawn to tie a
lot, like trained codes: each archive code is one of 64 "class" codes with 0-3 bits flipped.
The reference (and, at the largest sizes, the numpy backend) is timed on a sample of queries
and scaled linearly to all queries (ranking is independent per query); the table says so.

  python benchmarks/bench_hamming.py [--sizes 1000x10000 10000x100000 ...] [--k 20] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from evaluation.hamming import hamming_topk  # noqa: E402

DEFAULT_SIZES = ("100x10000", "1000x10000", "1000x100000", "10000x100000", "10000x1000000",
                 "100000x1000000")


def codes(n: int, rng, centres) -> np.ndarray:
    base = centres[rng.integers(len(centres), size=n)]
    flips = rng.integers(0, 32, size=(n, 3))
    keep = rng.random((n, 3)) < 0.5
    bits = np.unpackbits(base, axis=1)
    for j in range(3):
        rows = np.flatnonzero(keep[:, j])
        bits[rows, flips[rows, j]] ^= 1
    return np.packbits(bits, axis=1)


def reference(q, a, k, block=256):
    out = []
    for q0 in range(0, len(q), block):
        d = np.bitwise_count(q[q0:q0 + block, None, :] ^ a[None, :, :]).sum(-1, dtype=np.int32)
        out.append(np.argsort(d, axis=1, kind="stable")[:, :k])
    return np.concatenate(out)


def timed(fn, nq_all, nq_run):
    t0 = time.perf_counter()
    res = fn()
    return (time.perf_counter() - t0) * nq_all / nq_run, res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="QUERIESxARCHIVE")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--ref-queries", type=int, default=200, help="queries the reference times")
    p.add_argument("--numpy-queries", type=int, default=2000,
                   help="queries the numpy backend times (scaled up beyond this)")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    centres = rng.integers(0, 256, (64, 4), dtype=np.uint8)
    print(f"32-bit codes, K={args.k}, faiss threads={args.threads}, {os.cpu_count()} cores")
    print(f"{'queries x archive':>20} {'reference s':>12} {'numpy s':>9} {'faiss s':>9} "
          f"{'numpy/ref':>9} {'faiss/ref':>9} {'same':>5}")
    for size in args.sizes:
        nq, na = (int(x) for x in size.split("x"))
        q, a = codes(nq, rng, centres), codes(na, rng, centres)
        nr = min(nq, args.ref_queries)
        t_ref, ref = timed(lambda: reference(q[:nr], a, args.k), nq, nr)
        nn = min(nq, args.numpy_queries)
        t_np, (i_np, _) = timed(lambda: hamming_topk(q[:nn], a, args.k, backend="numpy"), nq, nn)
        t_fa, (i_fa, _) = timed(lambda: hamming_topk(q, a, args.k, backend="faiss",
                                                     threads=args.threads), nq, nq)
        same = bool((i_np[:nr] == ref).all() and (i_fa[:nr] == ref).all())
        note = "" if nr == nq else f"  (reference on {nr} queries" + \
            ("" if nn == nq else f", numpy on {nn}") + ", scaled)"
        print(f"{size:>20} {t_ref:12.2f} {t_np:9.2f} {t_fa:9.2f} {t_ref / t_np:8.1f}x "
              f"{t_ref / t_fa:8.1f}x {str(same):>5}{note}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
