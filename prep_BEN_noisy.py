"""BigEarthNet-S2 folder -> TFRecords with injected label noise and a report, under
<out_folder>/TFRecord/: each split as shards in a seeded random order and one noise overlay per
level (train_noise_prcnt<N>.overlay.npz), or with --layout files train.tfrecord, val.tfrecord,
test.tfrecord and a full train_noise_prcnt<N>.tfrecord per level (docs/full-scale.md).

Example: python prep_BEN_noisy.py -r BigEarthNet-v1.0 -train train.csv -val val.csv -test test.csv
Without the three CSVs the official splits of bigearthnet-common are used (snow and
cloud/shadow patches left out), restricted to the patches present under the root folder.

A BigEarthNet v2.0 (reBEN) root (BigEarthNet-S2/, BigEarthNet-S1/, Reference_Maps/,
metadata.parquet) is recognised and prepared by archives.benv2: splits from the parquet (or the
three CSVs, v2 or v1 names), S2 + S1 + reference maps in each record, both noise rules.
Example: python prep_BEN_noisy.py -r reBEN -o dumps/data/BENv2

Flags shared with the other prep scripts (archives/prep_cli.py): -o, --noise-levels, --seed,
--schema, --workers, --layout, --shard-size, --shard, --skip-invalid, --quiet, --verbose.
"""
from __future__ import annotations

import argparse
import sys

import cli_common
from archives import ben, benv2_layout, prep_cli, registry


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-r", "--root_folder", required=True,
                   help="BigEarthNet-S2 root holding one folder per patch, or a BigEarthNet "
                        "v2.0 root holding BigEarthNet-S2/ and metadata.parquet")
    p.add_argument("-train", "--train_csv", help="train split: one patch name per line")
    p.add_argument("-val", "--val_csv", help="validation split: one patch name per line")
    p.add_argument("-test", "--test_csv", help="test split: one patch name per line")
    prep_cli.add_common_args(p, registry.BEN, schemas=ben.SCHEMAS, default_out="",
                             out_help="dumps/data/BEN, or dumps/data/BENv2 for a v2 root",
                             workers_help="processes reading GeoTIFFs")
    p.add_argument("--s1-storage", choices=("int16", "float16", "float32"), default=None,
                   help="v2 roots only: S1 storage in the records (default int16, dB x 256; "
                        "see archives/benv2.py)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cli_common.quiet_tensorflow(args.verbose)

    def prepare():
        if benv2_layout.detect_layout(args.root_folder) == "v2":
            return _prepare_v2(args)
        if args.s1_storage:
            raise prep_cli.PrepError(f"{args.root_folder}: --s1-storage applies to BigEarthNet "
                                     "v2.0 roots only (this is a v1 root)")
        return ben.prepare(
            args.root_folder, args.out_folder or "dumps/data/BEN",
            {"train": args.train_csv, "val": args.val_csv, "test": args.test_csv},
            noise_levels=args.noise_levels, seed=args.seed, schema=args.schema,
            workers=args.workers, skip_invalid=args.skip_invalid, progress=not args.quiet,
            **prep_cli.layout_kwargs(args))

    def notes(report):
        if report.extra.get("layout") == "v2":
            from archives import benv2
            return benv2.summary_lines(report)
        absent = report.extra["listed_but_absent"]
        return ["listed but absent under the root: "
                + ", ".join(f"{k} {v}" for k, v in absent.items())]

    return prep_cli.run_prep(prepare, notes)


def _prepare_v2(args):
    from archives import benv2

    if args.schema != "compact":
        raise prep_cli.PrepError(f"{args.root_folder}: BigEarthNet v2.0 records are written in "
                                 f"the compact form only, not --schema {args.schema}")
    return benv2.prepare(
        args.root_folder, args.out_folder or "dumps/data/BENv2",
        {"train": args.train_csv, "val": args.val_csv, "test": args.test_csv},
        noise_levels=args.noise_levels, seed=args.seed,
        s1_storage=args.s1_storage or benv2.S1_STORAGE, workers=args.workers,
        skip_invalid=args.skip_invalid, progress=not args.quiet, **prep_cli.layout_kwargs(args))


if __name__ == "__main__":
    sys.exit(main())
