"""BigEarthNet v2.0 prep: patches/s per worker, bytes per example per band set and S1 storage,
and whether the S1 storage forms change retrieval.

python benchmarks/bench_prep_benv2.py [--patches 96] [--workers 1 2] [--noise-levels 50]
                                      [--root V2_ROOT] [--epochs 8]
Writes a v2 sample archive to a temporary folder unless --root is given, then:

1. runs archives.benv2.prepare once per worker count: patches/s (wall), patches/s per worker,
   and CPU seconds per patch (this process and its workers; steadier on a shared machine);
2. serializes every patch in each S1 storage form with only the keys a band set needs (maps,
   labels and name always): bytes per example (a TFRecord file adds 16 bytes per record);
3. S1 storage error: max abs error in dB over the archive's S1 pixels and over -50 .. +20 dB;
4. retrieval check: a small CNN trained for --epochs on the S1 images (float32) describes the
   val + test patches (queries) and the train patches (archive) from each storage form; reports
   how many queries' top-30 lists change against float32 and the largest NDCG@30 change, beside
   what float32 itself changes when only the inference batch size differs.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from archives import benv2, sample_benv2  # noqa: E402
from archives import benv2_layout as v2  # noqa: E402

K = 30


def _cpu_s() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def prep_rate(root: Path, out: Path, workers: int, levels: list) -> dict:
    wall, cpu = time.perf_counter(), _cpu_s()
    report = benv2.prepare(root, out, noise_levels=levels, workers=workers, progress=False)
    wall, cpu = time.perf_counter() - wall, _cpu_s() - cpu
    n = sum(report.records[s] for s in benv2.SPLITS)
    return {"workers": workers, "patches": n, "per_s": n / wall, "per_s_per_worker": n / wall / workers,
            "cpu_ms_per_patch": 1000 * cpu / n}


def read_all(root: Path, storage: str) -> tuple[list, object]:
    meta = v2.read_metadata(v2.Layout.at(root))
    data = []
    for patch, s1 in zip(meta.patches, meta.s1_names):
        _, parts, err = benv2.read_patch_worker((str(root), patch, s1, storage))
        if err:
            raise SystemExit(err)
        data.append(parts)
    return data, meta


def example_bytes(data: list, meta, bands: str) -> float:
    """Mean serialized size of examples holding only ``bands``' pixel keys."""
    total = 0
    for d, patch, label in zip(data, meta.patches, meta.labels):
        part = {"s2": d["s2"] if "s2" in bands else {}, "s1": d["s1"] if "s1" in bands else {},
                "map": d["map"]}
        total += len(benv2.encode_examples(patch, part, label, [(label, label, None)])[0])
    return total / len(data)


def s1_errors(root: Path, meta) -> dict:
    lay = v2.Layout.at(root)
    real = np.stack([v2.read_s1(lay, s) for s in meta.s1_names])
    grid = np.linspace(-50, 20, 2 * 120 * 120 * 8, dtype=np.float32).reshape(-1, 120, 120, 2)
    out = {}
    for storage in benv2.S1_STORAGES:
        errs = []
        for arr in (real, grid):
            back = np.stack([benv2.decode_s1(benv2.encode_s1(a, storage), storage) for a in arr])
            errs.append(float(np.abs(back - arr).max()))
        out[storage] = errs
    return out, real


def retrieval_check(real: np.ndarray, meta, epochs: int) -> dict:
    """Top-30 lists and NDCG@30 of val+test queries against the train archive, per S1 form."""
    import keras

    from evaluation.metrics import ndcg_published, shared_counts
    from models.backbones import small_cnn

    keras.utils.set_random_seed(0)
    mean, std = benv2.model_stats("s1")
    train = meta.split == "train"
    norm = lambda x: (x - mean) / std  # noqa: E731
    backbone = small_cnn((120, 120, 2))
    feat = keras.layers.GlobalAveragePooling2D()(backbone.output)
    model = keras.Model(backbone.input, keras.layers.Dense(benv2.NB_CLASS, activation="sigmoid")(feat))
    model.compile("adam", "binary_crossentropy")
    model.fit(norm(real[train]), meta.labels[train], epochs=epochs, batch_size=16, verbose=0)
    describe = keras.Model(backbone.input, feat)
    results, ref = {}, None
    # float32 first (the reference); "float32, batch 7" shows what the float arithmetic alone
    # changes (same input, another batch size)
    runs = [("float32", 32), ("float32, batch 7", 7), ("int16", 32), ("float16", 32)]
    for name, batch in runs:
        storage = name.split(",")[0]
        x = np.stack([benv2.decode_s1(benv2.encode_s1(a, storage), storage) for a in real])
        f = describe.predict(norm(x), batch_size=batch, verbose=0)
        q, a = f[~train], f[train]
        d = ((q[:, None, :] - a[None, :, :]) ** 2).sum(-1)
        k = min(K, len(a))
        idx = np.argsort(d, axis=1, kind="stable")[:, :k]
        ndcg = ndcg_published(shared_counts(meta.labels[~train], meta.labels[train], idx), k)
        if ref is None:
            ref = (idx, ndcg, d)
        changed = np.flatnonzero((idx != ref[0]).any(axis=1))
        gaps = [0.0]  # at a changed list's first differing rank: relative gap of the two items'
        for qi in changed:  # distances under float32 (a small gap = a near-tie swapped)
            r = int(np.argmax(idx[qi] != ref[0][qi]))
            da, db = ref[2][qi, ref[0][qi, r]], ref[2][qi, idx[qi, r]]
            gaps.append(float(abs(db - da) / max(da, 1e-12)))
        results[name] = {"lists_changed": len(changed), "max_gap": max(gaps),
                            "queries": len(q), "max_ndcg_change": float(np.abs(ndcg - ref[1]).max()),
                            "mean_ndcg": float(ndcg.mean())}
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", help="a v2 root (default: a sample archive)")
    p.add_argument("--patches", type=int, default=96, help="sample archive size")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--noise-levels", type=int, nargs="+", default=[50])
    p.add_argument("--epochs", type=int, default=8, help="training epochs of the retrieval check")
    a = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = Path(a.root) if a.root else sample_benv2.write_sample_archive(
            tmp / "raw", seed=0, n_patches=a.patches)
        benv2.prepare(root, tmp / "warm-up", noise_levels=a.noise_levels, progress=False)
        rows = [prep_rate(root, tmp / f"w{w}", w, a.noise_levels) for w in a.workers]
        sizes = {}
        for storage in benv2.S1_STORAGES:
            data, meta = read_all(root, storage)
            for bands in benv2.BAND_SETS:
                if storage == benv2.S1_STORAGES[0] or "s1" in bands:
                    sizes[(bands, storage)] = example_bytes(data, meta, bands)
        errors, real = s1_errors(root, meta)
    print(f"v2 prep, {rows[0]['patches']} patches, noise levels {a.noise_levels} "
          f"(train patches write 1 + {len(a.noise_levels)} records):")
    print(f"{'workers':>8} {'patches/s':>10} {'per worker':>11} {'CPU ms/patch':>13}")
    for r in rows:
        print(f"{r['workers']:>8} {r['per_s']:>10.1f} {r['per_s_per_worker']:>11.1f} "
              f"{r['cpu_ms_per_patch']:>13.1f}")
    print(f"{os.cpu_count()} CPU(s) on this machine, load average {os.getloadavg()[0]:.1f} "
          "(per-worker rates only mean something when the load is below the CPU count)")
    print("\nbytes per example (serialized; maps, labels, name included):")
    print(f"{'band set':<9} {'S1 storage':<11} {'bytes':>9}")
    for (bands, storage), n in sizes.items():
        print(f"{bands:<9} {storage if 's1' in bands else '-':<11} {n:>9.0f}")
    print("against float32 S1: " + ", ".join(
        f"{s} {sizes[('s1', s)] - sizes[('s1', 'float32')]:+.0f} bytes"
        for s in benv2.S1_STORAGES if s != "float32"))
    print("\nS1 max abs error, dB (archive pixels / grid -50..+20):")
    for storage, (e_real, e_grid) in errors.items():
        print(f"  {storage:<8} {e_real:.6f} / {e_grid:.6f}")
    print(f"\nretrieval check (small CNN, {a.epochs} epochs on S1 float32, top-{K}):")
    for storage, r in retrieval_check(real, meta, a.epochs).items():
        print(f"  {storage:<17} top-{K} lists changed {r['lists_changed']}/{r['queries']} "
              f"(float32 distance gap of the swapped items <= {100 * r['max_gap']:.3f}%), "
              f"max |NDCG@{K} change| {r['max_ndcg_change']:.2e}, mean NDCG@{K} {r['mean_ndcg']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
