"""BigEarthNet v2.0 prep at scale: CPU per patch against the floor of opening the same GeoTIFFs.

python benchmarks/bench_prep_scale.py [--patches 200] [--workers 2] [--root V2_ROOT]

Writes a v2 sample archive to a temporary folder unless --root is given, then measures, in
CPU-seconds (user + system, of this process and its worker processes: the steady figure on a
shared machine):

* floor: every patch's 15 GeoTIFFs (12 S2 bands, VV, VH, the reference map) opened and read
  with rasterio alone, one process;
* prep, shards layout (default), one process: records, six noise levels as overlays;
* prep, files layout (one file per split, a full copy per level), one process;
* prep, shards layout with --workers processes writing shards at once (their start-up, a
  TensorFlow import each, included).

Prints patches per CPU-second, each prep's CPU against the floor, the output bytes, and the
time 549,488 patches (the v2 archive) take on 16 cores with 16 shard writers, extrapolated
from the one-process shards figure (the worker start-up is a few seconds each, once).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from archives import benv2, sample_benv2  # noqa: E402
from archives import benv2_layout as v2  # noqa: E402

V2_PATCHES = 549_488
CORES = 16
LEVELS = [10, 20, 30, 40, 50, 60]


def _cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def floor_cpu(root: Path) -> tuple[int, float]:
    """(patches, CPU-seconds) to open and read every GeoTIFF of the patches with rasterio."""
    import rasterio

    lay = v2.Layout.at(root)
    meta = v2.read_metadata(lay)
    start = _cpu()
    for patch, s1 in zip(meta.patches, meta.s1_names):
        files = sorted(lay.s2_dir(patch).glob("*.tif")) + sorted(lay.s1_dir(s1).glob("*.tif")) + \
            [lay.map_path(patch)]
        with rasterio.Env():
            for f in files:
                with rasterio.open(f) as src:
                    src.read(1)
    return len(meta.patches), _cpu() - start


def prep_cpu(root: Path, out: Path, **kw) -> tuple[int, float, int]:
    """(patches written, CPU-seconds, output bytes) of one prep."""
    start = _cpu()
    with contextlib.redirect_stderr(io.StringIO()):
        report = benv2.prepare(root, out, noise_levels=LEVELS, progress=False, **kw)
    cpu = _cpu() - start
    n = sum(report.records[s] for s in benv2.SPLITS)
    size = sum(p.stat().st_size for p in (out / "TFRecord").rglob("*") if p.is_file())
    return n, cpu, size


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patches", type=int, default=200)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--root", default=None)
    a = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench_prep_scale_"))
    root = Path(a.root) if a.root else sample_benv2.write_sample_archive(
        tmp / "raw", seed=0, n_patches=a.patches)
    import tensorflow  # noqa: F401  (imported before any timing: every prep below needs it)

    n, floor = floor_cpu(root)
    floor = min(floor, floor_cpu(root)[1])  # the second pass: files in the page cache, as prep's
    rows = {"floor (rasterio alone)": (n, floor, 0)}
    per_shard = str(max(1, n // (4 * a.workers)))
    rows["prep shards, 1 process"] = prep_cpu(root, tmp / "s1", workers=1, layout="shards")
    rows["prep files, 1 process"] = prep_cpu(root, tmp / "f1", workers=1, layout="files")
    rows[f"prep shards, {a.workers} writers"] = prep_cpu(root, tmp / "sw", workers=a.workers,
                                                         layout="shards", shard_size=per_shard)
    print(f"{n} patches, {len(LEVELS)} noise levels")
    print(f"  {'':<26} {'patches/CPU-s':>14} {'CPU vs floor':>13} {'output MB':>10}")
    for name, (count, cpu, size) in rows.items():
        print(f"  {name:<26} {count / cpu:>14.1f} {cpu / floor * n / count:>12.2f}x "
              f"{size / 2**20:>10.1f}")
    count, cpu, _ = rows["prep shards, 1 process"]
    hours = V2_PATCHES * cpu / count / CORES / 3600
    print(f"549,488 patches on {CORES} cores with {CORES} shard writers: about {hours:.2f} h "
          f"({cpu / count * 1000:.1f} CPU-ms per patch; the floor alone "
          f"{V2_PATCHES * floor / n / CORES / 3600:.2f} h)")
    print(f"output, six levels against a full copy per level: "
          f"{rows['prep shards, 1 process'][2] / rows['prep files, 1 process'][2]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
