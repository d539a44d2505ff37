"""BigEarthNet v2.0 read speed, one process: patches/s for S2, S1, the reference map and all
three (what v2 prep will do per patch), against the v1 reader on the same S2 folders; and
metadata.parquet rows/s.

python benchmarks/bench_benv2_read.py [--patches 200] [--root V2_ROOT] [--repeat 3]
                                      [--metadata-rows 480038]
Writes a v2 sample archive to a temporary folder unless --root is given. The parquet figure
reads a metadata.parquet of --metadata-rows rows built from the sample's rows (the real one
has 480,038).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from archives import ben, sample_benv2  # noqa: E402
from archives import benv2_layout as v2  # noqa: E402


def rates(readers: dict, items: list, repeat: int) -> dict:
    """(items per wall-clock second, items per CPU second of this process) of each reader over
    ``items``, best of ``repeat`` passes; the readers take turns within a pass so that a busy
    spell of the machine hits them alike (CPU seconds are the steadier figure on a shared one)."""
    best = {name: [float("inf"), float("inf")] for name in readers}
    for _ in range(repeat):
        for name, fn in readers.items():
            wall, cpu = time.perf_counter(), time.process_time()
            for item in items:
                fn(item)
            best[name][0] = min(best[name][0], time.perf_counter() - wall)
            best[name][1] = min(best[name][1], time.process_time() - cpu)
    return {name: (len(items) / w, len(items) / c) for name, (w, c) in best.items()}


def metadata_rate(root: Path, rows: int, tmp: Path) -> float:
    """Rows/s of read_metadata on a parquet of ``rows`` rows (the sample's rows, renamed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = pq.read_table(Path(root) / v2.METADATA).to_pylist()
    out = []
    for i in range(rows):
        r = dict(base[i % len(base)])
        r["patch_id"] = f"{r['patch_id']}{i // len(base):07d}"  # fixed width: unique
        out.append(r)
    big = v2.Layout.at(tmp / "big")
    big.root.mkdir()
    pq.write_table(pa.Table.from_pylist(out), big.metadata)
    start = time.perf_counter()
    meta = v2.read_metadata(big)
    assert len(meta) == rows
    return rows / (time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", help="a v2 root (default: a sample archive)")
    p.add_argument("--patches", type=int, default=200, help="sample archive size")
    p.add_argument("--repeat", type=int, default=3, help="passes; the best one counts")
    p.add_argument("--metadata-rows", type=int, default=100000)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = Path(a.root) if a.root else sample_benv2.write_sample_archive(
            tmp / "raw", seed=0, n_patches=a.patches)
        lay = v2.Layout.at(root)
        meta = v2.read_metadata(lay)
        items = list(zip(meta.patches, meta.s1_names))
        v2.read_patch(lay, *items[0])  # GDAL start-up
        rows = list(rates({
            "v1 reader, S2 (ben.read_patch_bands)":
                lambda it: ben.read_patch_bands(lay.s2_dir(it[0]).parent, it[0], "compact"),
            "v2 S2 (12 bands)": lambda it: v2.read_s2_bands(lay, it[0]),
            "v2 S1 (VV, VH)": lambda it: v2.read_s1(lay, it[1]),
            "v2 reference map": lambda it: v2.read_reference_map(lay, it[0]),
            "v2 S2 + S1 + map": lambda it: v2.read_patch(lay, *it),
        }, items, a.repeat).items())
        md = metadata_rate(root, a.metadata_rows, tmp) if a.metadata_rows else None
    print(f"{len(items)} patches, one process, best of {a.repeat}")
    print(f"{'reader':<40} {'patches/s':>10} {'per CPU s':>10}")
    for name, (wall, cpu) in rows:
        print(f"{name:<40} {wall:>10.1f} {cpu:>10.1f}")
    ref, full = rows[0][1], rows[-1][1]
    print(f"S2 + S1 + map vs v1 S2 reader: {full[0] / ref[0]:.2f}x the patches/s, "
          f"{full[1] / ref[1]:.2f}x per CPU second")
    if md:
        print(f"read_metadata: {md:,.0f} rows/s on {a.metadata_rows:,} rows "
              f"(480,038 rows: ~{480038 / md:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
