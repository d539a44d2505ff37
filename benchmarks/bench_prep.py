"""Prep benchmark: examples per second and bytes per example, compact vs. published schema.

``python benchmarks/bench_prep.py --dataset DLRSD [--per-class 10] [--json out.json]`` builds a
sample archive in a temporary folder, runs the prep in both schema forms and reads the records back.
Add another archive by registering a function ``(workdir, args) -> dict`` in ``BENCHES``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def read_rate(parse_records, path) -> float:
    """Records per second of ``parse_records([path])`` read through once."""
    t0, n = time.perf_counter(), 0
    for _ in parse_records([path]):
        n += 1
    return n / (time.perf_counter() - t0)


def bench_dlrsd(workdir: Path, args) -> dict:
    """Sample archive -> prep (one noise level) in both forms; rates and sizes per form."""
    from archives import dlrsd, sample

    raw = workdir / "raw"
    t0 = time.perf_counter()
    sample.write_sample_archive(raw, seed=0, per_class=args.per_class)
    result = {"dataset": "DLRSD", "per_class": args.per_class,
              "sample_generation_s": round(time.perf_counter() - t0, 2)}
    for schema in ("compact", "published"):
        out = workdir / schema
        t0 = time.perf_counter()
        rep = dlrsd.prepare(raw / "UCMerced_LandUse", raw / "DLRSD", out, noise_levels=[50],
                            schema=schema, progress=False)
        dt = time.perf_counter() - t0
        n = sum(rep.records.values())
        train = out / "TFRecord" / "train.tfrecord"
        result[schema] = {
            "examples_written": n, "prep_s": round(dt, 2), "examples_per_s": round(n / dt, 1),
            "bytes_per_example": round(train.stat().st_size / rep.records["train"]),
            "read_examples_per_s": round(read_rate(dlrsd.parse_records, train), 1)}
    result["size_ratio_published_over_compact"] = round(
        result["published"]["bytes_per_example"] / result["compact"]["bytes_per_example"], 2)
    return result


BENCHES = {"DLRSD": bench_dlrsd}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=sorted(BENCHES), default="DLRSD")
    p.add_argument("--per-class", type=int, default=10, help="DLRSD sample images per scene")
    p.add_argument("--json", default=None, help="also write the result here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        res = BENCHES[args.dataset](Path(d), args)
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
