"""Benchmark: vectorised relation_targets vs. a straightforward per-map networkx version.

    .venv/bin/python benchmarks/bench_relations.py [--batch 64] [--size 224] [--classes 17]

The reference (here only) builds one networkx graph per map: nodes = present classes with
their pixel share and centre of mass, weighted edges = the relation of docs/training.md, then reads
the adjacency matrix. Both must agree; the ratio printed is reference time / vectorised time
(target >= 50x).
"""
import argparse
import itertools
import os
import sys
import time

import networkx as nx
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from losses.relations import relation_targets, relation_targets_tf  # noqa: E402


def reference_one(seg, nb_class):
    """Per-map graph implementation (the slow, obvious way)."""
    H, W = seg.shape
    g = nx.Graph()
    g.add_nodes_from(range(nb_class))
    present = []
    for c in np.unique(seg):
        if c < 0:
            continue
        pix = np.argwhere(seg == c)
        g.add_node(int(c), share=len(pix) / (H * W), com=pix.mean(axis=0))
        present.append(int(c))
    diag = np.hypot(H - 1, W - 1)
    for i, j in itertools.combinations_with_replacement(present, 2):
        ri, rj = g.nodes[i]["share"], g.nodes[j]["share"]
        if i == j and ri > 0.5:
            g.add_edge(i, j, weight=1.0)
            continue
        s = (ri + rj) * (1 - (max(ri, rj) - (ri + rj) / 2))
        d = 1 - np.linalg.norm(g.nodes[i]["com"] - g.nodes[j]["com"]) / diag
        g.add_edge(i, j, weight=(s + d) / 2 * (1 - (max(s, d) - (s + d) / 2)))
    adj = nx.to_numpy_array(g, nodelist=range(nb_class), weight="weight")
    return adj[np.triu_indices(nb_class)]


def reference(seg_maps, nb_class):
    return np.stack([reference_one(m, nb_class) for m in seg_maps]).astype(np.float32)


def make_maps(batch, size, nb_class, seed=0):
    """Blocky maps like land-cover annotations: a few rectangles of classes, some -1."""
    rng = np.random.default_rng(seed)
    maps = np.full((batch, size, size), -1, np.int32)
    for b in range(batch):
        maps[b] = rng.integers(0, nb_class)
        for _ in range(rng.integers(2, 8)):
            r0, c0 = rng.integers(0, size, 2)
            h, w = rng.integers(size // 8, size // 2, 2)
            maps[b, r0:r0 + h, c0:c0 + w] = rng.integers(-1, nb_class)
    return maps


def best_of(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--classes", type=int, default=17)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    maps = make_maps(a.batch, a.size, a.classes)
    ref = reference(maps, a.classes)
    np.testing.assert_allclose(relation_targets(maps, a.classes), ref, atol=1e-5)
    t_ref = best_of(lambda: reference(maps, a.classes), a.repeat)
    t_np = best_of(lambda: relation_targets(maps, a.classes), a.repeat)
    print(f"{a.batch} maps {a.size}x{a.size}, {a.classes} classes")
    print(f"networkx per map : {t_ref * 1e3:9.2f} ms")
    print(f"relation_targets : {t_np * 1e3:9.2f} ms   "
          f"speed-up {t_ref / t_np:6.1f}x (target >= 50x)")
    import tensorflow as tf
    fn = tf.function(lambda m: relation_targets_tf(m, a.classes))
    tmaps = tf.constant(maps)
    np.testing.assert_allclose(fn(tmaps).numpy(), ref, atol=1e-5)
    t_tf = best_of(lambda: fn(tmaps).numpy(), a.repeat)
    print(f"relation_targets_tf (tf.function): {t_tf * 1e3:9.2f} ms   "
          f"speed-up {t_ref / t_tf:6.1f}x")


if __name__ == "__main__":
    main()
