"""DLRSD + UC Merced raw download -> TFRecords with injected label noise (see archives/dlrsd.py)."""
from __future__ import annotations

import argparse
import sys
import warnings

from archives import dlrsd


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("-r_dlrsd", "--root_DLRSD_folder", required=True,
                   help="DLRSD folder (holding Images/<class>/*.png) or its parent")
    p.add_argument("-r_ucm", "--root_UCM_folder", required=True,
                   help="UCMerced_LandUse folder (holding Images/<class>/*.tif) or its parent")
    p.add_argument("-o", "--out_folder", default="dumps/data/DLRSD",
                   help="records go to <out>/TFRecord/ (default: %(default)s)")
    p.add_argument("--noise-levels", type=int, nargs="+", default=dlrsd.NOISE_LEVELS,
                   help="noise percentages (default: 10 20 ... 90)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--schema", choices=("compact", "published"), default="compact")
    p.add_argument("--multi-labels", default=None,
                   help="multi-labels.xlsx or LandUse_Multilabeled.txt (default: multi-labels.xlsx "
                        "in the DLRSD root if there, else the classes present in each pixel map)")
    p.add_argument("--skip-invalid", action="store_true",
                   help="warn about and skip bad items instead of stopping")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    warnings.formatwarning = lambda msg, *_, **__: f"warning: {msg}\n"
    try:
        report = dlrsd.prepare(a.root_UCM_folder, a.root_DLRSD_folder, a.out_folder,
                               noise_levels=a.noise_levels, seed=a.seed, schema=a.schema,
                               multi_labels=a.multi_labels, skip_invalid=a.skip_invalid,
                               progress=not a.quiet)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no file was published (temporaries removed); run again to prepare",
              file=sys.stderr)
        return 130
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
