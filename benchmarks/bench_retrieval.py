"""Retrieval speed: exact chi-square throughput and metric scoring, against simple references.

  .venv/bin/python benchmarks/bench_retrieval.py            # ~1 minute
  .venv/bin/python benchmarks/bench_retrieval.py --scale    # + 10,000 x 50,000 x 1024-d run

Prints pair-dimensions per second (pairs x feature dims / s) of the tiled C kernel, of the
division-bound limit of this CPU (the same arithmetic on rows held in L1, on every core) and
their ratio, of the row-streaming kernel it replaced, the other backends, the float32
numpy-broadcasting reference and the published style per-pair Python callback (timed on a tiny
subset and extrapolated), all in the same run; the top-K selection's cost per pair and, from
both, an estimate for BigEarthNet v2 test x train on 16 cores; then the published per-query NDCG
loop against the vectorised metrics. ``--scale`` ranks and scores 10,000 random queries against
50,000 archive items (1024-d, K=1000) and reports time and peak memory (ru_maxrss).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import resource
import subprocess
import sys
import tracemalloc
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from evaluation import distances  # noqa: E402
from evaluation.evaluate import evaluate  # noqa: E402
from evaluation.features import FeatureSet  # noqa: E402
from evaluation.metrics import ndcg_published, ndcg_published_loop, per_query_metrics  # noqa: E402


def _timed(fn, repeat=1):
    fn()  # warm up (compilation, thread pool)
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def published_callback(u, v):
    """The per-pair distance callback of the published script, called once per pair."""
    return 0.5 * np.sum((u - v) ** 2 / (u + v + 1e-10))


def _features(rng, n: int, dim: int) -> np.ndarray:
    return np.maximum(rng.standard_normal((n, dim), dtype=np.float32), 0)  # post-ReLU-like


def _best_rates(fns: dict, work: dict, rounds: int) -> dict:
    """Best rate (work / s) of each function; rounds alternate between them, so that load from
    other processes hits all alike."""
    for fn in fns.values():
        fn()  # warm up (compilation, thread pool, page faults)
    best = dict.fromkeys(fns, 0.0)
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = max(best[name], work[name] / (time.perf_counter() - t))
    return best


def _l1_loop(dim: int, reps: int):
    """The division-bound ceiling: on every core at once, the kernel's arithmetic ``reps``
    times over 4 query rows and 1 archive row held in L1 (``chi2_l1_loop``)."""
    lib = distances._load_c()
    rng = np.random.default_rng(5)
    p = ctypes.POINTER(ctypes.c_float)
    rows = [(_features(rng, 4, dim), _features(rng, 1, dim), np.empty(4, np.float32))
            for _ in range(os.cpu_count() or 1)]

    def one(buf):
        q, a, out = buf
        lib.chi2_l1_loop(q.ctypes.data_as(p), a.ctypes.data_as(p), out.ctypes.data_as(p),
                         dim, reps)
    return lambda: distances.parallel(one, rows), len(rows) * 4 * dim * reps


def _rows_kernel(q, a):
    """The kernel before tiling (every query row streams the archive block), same thread
    split over the query rows."""
    lib = distances._load_c()
    out = np.empty((len(q), len(a)), np.float32)
    p = ctypes.POINTER(ctypes.c_float)
    cuts = np.linspace(0, len(q), (os.cpu_count() or 1) + 1).astype(int)

    def run(lo_hi):
        lo, hi = (int(x) for x in lo_hi)
        lib.chi2_rows(q[lo:].ctypes.data_as(p), a.ctypes.data_as(p), out[lo:].ctypes.data_as(p),
                      hi - lo, len(a), q.shape[1])
    distances.parallel(run, zip(cuts[:-1], cuts[1:]))
    return out


def bench_chi2(nq: int, na: int, dim: int, rounds: int) -> None:
    rng = np.random.default_rng(0)
    q, a = _features(rng, nq, dim), _features(rng, na, dim)
    cores = os.cpu_count() or 1
    work = nq * na * dim
    if not distances._load_c():
        print("c backend: unavailable (no working C compiler); the kernel figures need it")
        return
    l1_fn, l1_work = _l1_loop(dim, max(1, work // (4 * dim * cores)))
    fns = {"c (tiled kernel)": lambda: distances.chi2(q, a, "c"),
           "c before tiling (row-streaming kernel)": lambda: _rows_kernel(q, a),
           "division-bound limit (rows in L1)": l1_fn}
    works = {"c (tiled kernel)": work, "c before tiling (row-streaming kernel)": work,
             "division-bound limit (rows in L1)": l1_work}
    rates = _best_rates(fns, works, rounds)
    sub_q, sub_a = q[:8], a[:512]
    rates["xla"] = _best_rates({"x": lambda: distances.chi2(sub_q, sub_a, "xla")},
                               {"x": 8 * 512 * dim}, 2)["x"]
    rates["numpy broadcast"] = _best_rates(  # a (8, 512, D) temporary
        {"n": lambda: distances.chi2_numpy(sub_q, sub_a)}, {"n": 8 * 512 * dim}, 2)["n"]
    pairs = [(q[i], a[j]) for i in range(4) for j in range(50)]
    dt = _timed(lambda: [published_callback(u, v) for u, v in pairs])
    rates["per-pair callback (200 pairs, extrapolated)"] = len(pairs) * dim / dt
    limit = rates["division-bound limit (rows in L1)"]
    kernel = rates["c (tiled kernel)"]
    print(f"exact chi-square, {nq} x {na} x {dim}-d, {cores} cores, best of {rounds} "
          f"alternating rounds (default backend: {distances.chi2_backend()})")
    for name, r in rates.items():
        print(f"  {name:<45} {r:10.3e} pair-dims/s   of the limit: {r / limit:6.3f}")
    print(f"  tiled kernel / division-bound limit = {kernel / limit:.2f} (goal >= 0.6); "
          f"{kernel / cores:.2e} pair-dims/s per core")
    return kernel / cores


def bench_selection(nq: int, na: int, dim: int, k: int) -> float:
    """Seconds per pair spent outside the kernel by the blocked top-K (numpy, one thread)."""
    from evaluation.ranking import topk

    rng = np.random.default_rng(6)
    q, a = _features(rng, nq, dim), _features(rng, na, dim)
    kernel = _timed(lambda: distances.chi2(q, a, "c"))
    total = _timed(lambda: topk(q, a, k, "chi2"))
    per_pair = max(total - kernel, 0.0) / (nq * na)
    print(f"blocked top-{k}, {nq} x {na}: {total:.2f} s, of which the kernel {kernel:.2f} s; "
          f"selection {per_pair * 1e9:.2f} ns per pair (numpy, one thread)")
    return per_pair


def estimate_benv2(rate_per_core: float, select_s_per_pair: float, cores: int = 16) -> None:
    """BigEarthNet v2 test x train (119,825 x 237,871 pairs, 1024-d features) on ``cores``."""
    pairs = 119_825 * 237_871
    kernel_s = pairs * 1024 / (rate_per_core * cores)
    select_s = pairs * select_s_per_pair
    print(f"estimate, BigEarthNet v2 test x train ({pairs:.3e} pairs x 1024-d) on {cores} cores "
          f"at the measured per-core rate: kernel {kernel_s / 60:.1f} min (divider-bound, so it "
          f"scales with cores); top-K selection {select_s / 60:.1f} min on one thread "
          f"(or {select_s / cores / 60:.1f} min if spread over {cores} processes by query block)")


def bench_metrics(n: int, k: int) -> None:
    rng = np.random.default_rng(1)
    s = rng.integers(0, 4, (n, k))
    n_rel = np.full(n, k * 2)
    ideal = -np.sort(-s, 1)[:, :100]
    sub = min(n, 200)
    t = time.perf_counter()
    loop = [ndcg_published_loop(row, 20) for row in s[:sub]]
    loop_per_query = (time.perf_counter() - t) / sub
    loop_s = loop_per_query * n
    one = _timed(lambda: ndcg_published(s, 20))
    dt = _timed(lambda: per_query_metrics(s, n_rel, ideal))
    assert np.allclose(ndcg_published(s[:sub], 20), loop)
    n_metrics = len(per_query_metrics(s[:2], n_rel[:2], ideal[:2]))
    print(f"metrics, {n} queries x K={k}:")
    print(f"  published per-query NDCG@20 loop   {loop_s:8.3f} s (timed on {sub} queries, "
          f"extrapolated)")
    print(f"  vectorised NDCG@20                 {one:8.3f} s   ({loop_s / one:.0f}x faster)")
    print(f"  vectorised, all {n_metrics} metrics        {dt:8.3f} s   ({loop_s / dt:.0f}x)")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_scale(nq: int, na: int, dim: int, k: int, query_block: int, archive_block: int) -> None:
    rng = np.random.default_rng(2)

    def features(n):  # filled in chunks, so that making them adds no temporary to the peak
        out = np.empty((n, dim), np.float32)
        for lo in range(0, n, 4096):
            out[lo:lo + 4096] = rng.standard_normal((min(4096, n - lo), dim), dtype=np.float32)
        return np.maximum(out, 0, out=out)  # post-ReLU-like

    q = FeatureSet("queries", features(nq), (rng.random((nq, 19)) < 0.15).astype(np.float32),
                   np.zeros(nq, object))
    a = FeatureSet("archive", features(na), (rng.random((na, 19)) < 0.15).astype(np.float32),
                   np.zeros(na, object))
    feat_mb = (q.feature.nbytes + a.feature.nbytes) / 2**20
    distances.chi2(q.feature[:2], a.feature[:2])  # build/load the kernel before measuring
    before = _rss_mb()
    tracemalloc.start()
    t = time.perf_counter()
    res = evaluate(q, a, "chi2", k, None, query_block, archive_block, progress=True)
    dt = time.perf_counter() - t
    traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    peak = _rss_mb()
    full_gb = nq * na * 4 / 1e9
    print(f"scale: {nq} queries x {na} archive x {dim}-d, K={k}, chi2 "
          f"({distances.chi2_backend()}), blocks {query_block} x {archive_block}")
    print(f"  time {dt:.1f} s ({nq * na * dim / dt:.3e} pair-dims/s incl. top-K and metrics)")
    print(f"  peak RSS {peak:.0f} MB of the whole process (before ranking {before:.0f} MB, of which "
          f"feature arrays {feat_mb:.0f} MB); peak extra allocation while ranking "
          f"{traced_peak:.0f} MB (tracemalloc); a full float32 distance matrix: {full_gb:.1f} GB")
    print(f"  NDCG@30 {res['metrics']['NDCG@30']:.4f}  mAP@100 {res['metrics']['mAP@100']:.4f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--queries", type=int, default=256)
    p.add_argument("--archive", type=int, default=8192)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--scale", action="store_true", help="also the 10k x 50k x 1024-d run")
    p.add_argument("--only-scale", action="store_true", help="only the scale run")
    p.add_argument("--scale-queries", type=int, default=10000)
    p.add_argument("--scale-archive", type=int, default=50000)
    p.add_argument("--query-block", type=int, default=256)
    p.add_argument("--archive-block", type=int, default=8192)
    args = p.parse_args()
    if args.only_scale:
        bench_scale(args.scale_queries, args.scale_archive, args.dim, 1000, args.query_block,
                    args.archive_block)
        return
    per_core = bench_chi2(args.queries, args.archive, args.dim, args.rounds)
    if per_core:
        estimate_benv2(per_core, bench_selection(args.queries, 4 * args.archive, args.dim, 1000))
    bench_metrics(10000, 1000)
    if args.scale:  # a fresh process, so that its peak RSS is its own
        sys.stdout.flush()
        subprocess.run([sys.executable, __file__, "--only-scale", *sys.argv[1:]], check=True)


if __name__ == "__main__":
    main()
