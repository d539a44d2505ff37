"""`make demo`: sample archive -> TFRecords -> GRID and its baseline at 50% noise -> retrieval table.

DLRSD (default) and BEN train GRID-BCE and BCE; BENv2 trains GRID-PCE and PCE on the v2 sample's
reference maps. DLRSD uses the hard variant of the sample archive (``--variant hard``, 20 per
class), a setting of the robustness study (docs/studies.md).

Every stage runs the project's own command-line scripts, exactly as a user would, and is
skipped when its output already exists, so a second run only prints the table again. Each
command is echoed as it can be pasted into a shell in the folder the demo runs in (the
repository root; an installed ``grid-demo`` runs in the current folder, which then needs the
repository's ``configs/``).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import cli_common  # noqa: E402
from archives import registry  # noqa: E402
from config import Config, read_dump  # noqa: E402  (needs HERE on the path when run from elsewhere)
from json_numbers import nan_for_null  # noqa: E402

# where the commands run: the repository root; an installed copy (no configs/ beside it) runs
# in the current folder
ROOT = HERE if (HERE / "configs").is_dir() else Path.cwd()

DEMO = Path("dumps/demo")
# the configs, sample folder and options, and prep command of each archive are in its
# description (archives/registry.py)
CONFIGS = {a.name: list(a.demo_configs) for a in registry.ARCHIVES.values() if a.demo_configs}
NOISE = 50


def run(cmd: list[str]) -> None:
    """Run one project script (``x.py ...`` or ``-m module ...``) in ROOT, echoing a command a
    user can paste there, and stop the demo if it fails."""
    if ROOT != HERE and cmd[0].endswith(".py"):  # installed: the scripts are modules
        cmd = ["-m", cmd[0][:-3], *cmd[1:]]
    print("\n$ " + cli_common.command(*cmd), flush=True)
    start = time.time()
    subprocess.run([sys.executable, *cmd], cwd=ROOT, check=True)
    print(f"  ({time.time() - start:.0f} s)", flush=True)


def prepare(dataset: str, verbose: list[str] = ()) -> None:
    """Write the sample archive and its TFRecords unless they already exist."""
    info = registry.get(dataset)
    folder = info.demo_folder or dataset
    raw = DEMO / "raw" / folder
    out = DEMO / "data" / folder
    if not (ROOT / raw).exists():
        run(["-m", "archives.sample", "--dataset", dataset, "--out", str(raw), "--seed", "0",
             *info.demo_sample_args, *verbose])
    from archives.record_files import prepared

    if not prepared(ROOT / out / "TFRecord", [NOISE]):
        run([arg.format(raw=raw, out=out) for arg in info.demo_prep]
            + ["--noise-levels", str(NOISE), *verbose])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", choices=sorted(CONFIGS), default="DLRSD")
    parser.add_argument("--plot", type=int, default=3, help="retrieval pictures per model")
    cli_common.add_verbose_arg(parser)
    args = parser.parse_args()
    verbose = ["--verbose"] if args.verbose else []
    start = time.time()

    if ROOT != Path.cwd().resolve():
        print(f"(commands run in {ROOT})")
    prepare(args.dataset, verbose)
    cfgs = [Config.from_json(ROOT / path) for path in CONFIGS[args.dataset]]
    for path, cfg in zip(CONFIGS[args.dataset], cfgs):
        if not (ROOT / cfg.config_dump_path).exists():
            run(["train.py", path, "--resume-if-any", *verbose])  # continues an interrupted run
        run(["retrieval.py", str(cfg.config_dump_path), "--plot", str(args.plot), *verbose])

    print_table([summary_row(cfg) for cfg in cfgs])
    for cfg in cfgs:
        print(f"pictures: {ROOT / cfg.features_dir / 'plots'}")
    print(f"\nDemo finished in {time.time() - start:.0f} s. Results are from a synthetic "
          f"sample archive, not from {args.dataset} itself.")


def summary_row(cfg: Config) -> dict:
    """One table row from a run's dumped config and the retrieval results beside its features."""
    results = nan_for_null(
        json.loads((ROOT / cfg.features_dir / "retrieval.json").read_text())["metrics"])
    final = read_dump(ROOT / cfg.config_dump_path).get("final_metrics", {})
    row = {"model": cfg.model_name, "noise %": cfg.noise_prcnt,
           "NDCG@20": results.get("NDCG@20")}
    headline = cfg.archive.headline_metric  # e.g. BigEarthNet's NDCG@30, after NDCG@20
    row[headline] = results.get(headline)
    row.update({"mAP@20": results.get("mAP@20"), "sel. precision": final.get("sel_precision"),
                "sel. recall": final.get("sel_recall")})
    return row


def print_table(rows: list[dict]) -> None:
    """Print the rows as a plain-text table; missing values show as '-'."""
    def cell(value) -> str:
        if value is None:
            return "-"
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    headers = list(rows[0])
    table = [[cell(row[h]) for h in headers] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(headers)]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
