"""BigEarthNet-S2 folder -> TFRecords with injected label noise (train.tfrecord, val.tfrecord,
test.tfrecord, train_noise_prcnt<N>.tfrecord) and a report, under <out_folder>/TFRecord/.

Example: python prep_BEN_noisy.py -r BigEarthNet-v1.0 -train train.csv -val val.csv -test test.csv
Without the three CSVs the official splits of bigearthnet-common are used (snow and
cloud/shadow patches left out), restricted to the patches present under the root folder.

A BigEarthNet v2.0 (reBEN) root (BigEarthNet-S2/, BigEarthNet-S1/, Reference_Maps/,
metadata.parquet) is recognised and prepared by archives.benv2: splits from the parquet (or the
three CSVs, v2 or v1 names), S2 + S1 + reference maps in each record, both noise rules.
Example: python prep_BEN_noisy.py -r reBEN -o dumps/data/BENv2
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

from archives import ben
from archives import benv2_layout


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-r", "--root_folder", required=True,
                   help="BigEarthNet-S2 root holding one folder per patch, or a BigEarthNet "
                        "v2.0 root holding BigEarthNet-S2/ and metadata.parquet")
    p.add_argument("-o", "--out_folder", default=None,
                   help="output folder; records go to <out_folder>/TFRecord (default "
                        "dumps/data/BEN, or dumps/data/BENv2 for a v2 root)")
    p.add_argument("-train", "--train_csv", help="train split: one patch name per line")
    p.add_argument("-val", "--val_csv", help="validation split: one patch name per line")
    p.add_argument("-test", "--test_csv", help="test split: one patch name per line")
    p.add_argument("--noise-levels", type=int, nargs="+", default=list(ben.NOISE_LEVELS),
                   metavar="N", help="noise percentages (default %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="noise seed (default %(default)s)")
    p.add_argument("--schema", choices=ben.SCHEMAS, default="compact",
                   help="pixel encoding: compact uint16 bytes or published float lists "
                        "(default %(default)s)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="processes reading GeoTIFFs (default %(default)s)")
    p.add_argument("--skip-invalid", action="store_true",
                   help="warn about, skip and report invalid patches instead of stopping")
    p.add_argument("--s1-storage", choices=("int16", "float16", "float32"), default=None,
                   help="v2 roots only: S1 storage in the records (default int16, dB x 256; "
                        "see archives/benv2.py)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    warnings.formatwarning = lambda msg, *_, **__: f"warning: {msg}\n"
    try:
        if benv2_layout.detect_layout(args.root_folder) == "v2":
            return _prepare_v2(args)
        args.out_folder = args.out_folder or "dumps/data/BEN"
        if args.s1_storage:
            raise ValueError(f"{args.root_folder}: --s1-storage applies to BigEarthNet v2.0 roots "
                             "only (this is a v1 root)")
        report = ben.prepare(
            args.root_folder, args.out_folder,
            {"train": args.train_csv, "val": args.val_csv, "test": args.test_csv},
            noise_levels=args.noise_levels, seed=args.seed, schema=args.schema,
            workers=args.workers, skip_invalid=args.skip_invalid)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no file was published (temporaries removed); run again to prepare",
              file=sys.stderr)
        return 130
    print(report.summary())
    absent = report.extra["listed_but_absent"]
    print("listed but absent under the root: " + ", ".join(f"{k} {v}" for k, v in absent.items()))
    return 0


def _prepare_v2(args) -> int:
    from archives import benv2

    if args.schema != "compact":
        raise ValueError(f"{args.root_folder}: BigEarthNet v2.0 records are written in the "
                         f"compact form only, not --schema {args.schema}")
    report = benv2.prepare(
        args.root_folder, args.out_folder or "dumps/data/BENv2",
        {"train": args.train_csv, "val": args.val_csv, "test": args.test_csv},
        noise_levels=args.noise_levels, seed=args.seed,
        s1_storage=args.s1_storage or benv2.S1_STORAGE, workers=args.workers,
        skip_invalid=args.skip_invalid)
    print(report.summary())
    print("\n".join(benv2.summary_lines(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
