"""BEN prep speed and size: patches/s and bytes per example, compact vs published schema.

python benchmarks/bench_prep_ben.py [--patches 60] [--workers 2] [--noise-levels 50]
Writes a sample archive to a temporary folder (or reads --root with its train/val/test.csv),
runs archives.ben.prepare once per schema, then reads the train file back with parse_records.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from archives import ben, sample_ben  # noqa: E402
from benchmarks.bench_prep import read_rate  # noqa: E402


def bench(root: Path, out: Path, schema: str, workers: int, levels: list[int]) -> dict:
    csvs = {s: root / f"{s}.csv" for s in ben.SPLITS}
    start = time.perf_counter()
    report = ben.prepare(root, out, csvs, noise_levels=levels, schema=schema, workers=workers,
                         progress=False)
    prep_s = time.perf_counter() - start
    patches = sum(report.records[s] for s in ben.SPLITS)
    train = out / "TFRecord" / "train.tfrecord"
    return {"schema": schema, "patches": patches, "prep_patches_per_s": patches / prep_s,
            "bytes_per_example": train.stat().st_size / report.records["train"],
            "parse_records_per_s": read_rate(ben.parse_records, train)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", help="BEN folder with train/val/test.csv (default: a sample archive)")
    p.add_argument("--patches", type=int, default=60, help="sample archive size")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--noise-levels", type=int, nargs="+", default=[50])
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = Path(a.root) if a.root else sample_ben.write_sample_archive(tmp / "raw", seed=0,
                                                                           n_patches=a.patches)
        bench(root, tmp / "warm-up", "compact", 1, a.noise_levels)  # TF and GDAL start-up
        rows = [bench(root, tmp / schema, schema, a.workers, a.noise_levels)
                for schema in ("published", "compact")]
    print(f"{'schema':<10} {'patches':>8} {'prep patches/s':>15} {'bytes/example':>14} "
          f"{'parse rec/s':>12}")
    for r in rows:
        print(f"{r['schema']:<10} {r['patches']:>8} {r['prep_patches_per_s']:>15.1f} "
              f"{r['bytes_per_example']:>14.0f} {r['parse_records_per_s']:>12.1f}")
    pub, comp = rows
    print(f"compact vs published: {pub['bytes_per_example'] / comp['bytes_per_example']:.2f}x "
          f"fewer bytes, {comp['prep_patches_per_s'] / pub['prep_patches_per_s']:.2f}x prep speed, "
          f"{comp['parse_records_per_s'] / pub['parse_records_per_s']:.2f}x parse speed "
          f"({a.workers} worker(s), noise levels {a.noise_levels})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
