"""BigEarthNet-S2 folder -> TFRecords with injected label noise (train.tfrecord, val.tfrecord,
test.tfrecord, train_noise_prcnt<N>.tfrecord) and a report, under <out_folder>/TFRecord/.

Example: python prep_BEN_noisy.py -r BigEarthNet-v1.0 -train train.csv -val val.csv -test test.csv
Without the three CSVs the official splits of bigearthnet-common are used (snow and
cloud/shadow patches left out), restricted to the patches present under the root folder.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

from archives import ben


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-r", "--root_folder", required=True,
                   help="BigEarthNet-S2 root holding one folder per patch")
    p.add_argument("-o", "--out_folder", default="dumps/data/BEN",
                   help="output folder; records go to <out_folder>/TFRecord (default %(default)s)")
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
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    warnings.formatwarning = lambda msg, *_, **__: f"warning: {msg}\n"
    try:
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


if __name__ == "__main__":
    sys.exit(main())
