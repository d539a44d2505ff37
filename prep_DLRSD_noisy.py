"""DLRSD + UC Merced raw download -> TFRecords with injected label noise (see archives/dlrsd.py).

Flags shared with the other prep scripts (archives/prep_cli.py): -o, --noise-levels, --seed,
--schema, --workers, --layout, --shard-size, --shard, --skip-invalid, --quiet, --verbose.
"""
from __future__ import annotations

import argparse
import sys

import cli_common
from archives import prep_cli, registry


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-r_dlrsd", "--root_DLRSD_folder", required=True,
                   help="DLRSD folder (holding Images/<class>/*.png) or its parent")
    p.add_argument("-r_ucm", "--root_UCM_folder", required=True,
                   help="UCMerced_LandUse folder (holding Images/<class>/*.tif) or its parent")
    prep_cli.add_common_args(p, registry.DLRSD, workers_help="threads decoding images and maps")
    p.add_argument("--multi-labels", default=None,
                   help="multi-labels.xlsx or LandUse_Multilabeled.txt (default: multi-labels.xlsx "
                        "in the DLRSD root if there, else the classes present in each pixel map)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    cli_common.quiet_tensorflow(a.verbose)

    def prepare():
        from archives import dlrsd
        return dlrsd.prepare(a.root_UCM_folder, a.root_DLRSD_folder, a.out_folder,
                             noise_levels=a.noise_levels, seed=a.seed, schema=a.schema,
                             multi_labels=a.multi_labels, skip_invalid=a.skip_invalid,
                             progress=not a.quiet, workers=a.workers,
                             **prep_cli.layout_kwargs(a))

    return prep_cli.run_prep(prepare)


if __name__ == "__main__":
    sys.exit(main())
