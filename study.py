"""Run a robustness study: every (model, noise level, seed) cell, then study.csv, summary, plots.

  python study.py STUDY.json                 # run every unfinished cell, then collect
  python study.py STUDY.json --list          # cells with their index and state
  python study.py STUDY.json --cell I        # one cell (e.g. I = $SLURM_ARRAY_TASK_ID)
  python study.py STUDY.json --shard K/N     # cells K, K+N, K+2N, ... (N machines)
  python study.py STUDY.json --collect       # only gather finished cells into the outputs
  python study.py STUDY.json --set nb_epoch=5 # override a train config key in every cell

Finished cells are skipped; an interrupted cell resumes from its last checkpoint. A cell that
another process is training (its claim in <out>/claims/) is skipped; --list shows who holds it
(docs/reliability.md). See README, "Robustness study". Exit codes: 0 done, 2 bad study file or
input, or the study's sample data could not be written (``error: <file>: <step> failed``; the
other outputs are left as they were), 130 interrupted.
"""
from __future__ import annotations

import argparse
import sys

import cli_common


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("study", help="study JSON (base_config, models, noise_levels, seeds, out, ...)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--list", action="store_true", help="list the cells and stop")
    g.add_argument("--cell", type=int, metavar="I", help="run only cell I (no collecting)")
    g.add_argument("--shard", metavar="K/N", help="run only cells K, K+N, ... (no collecting)")
    g.add_argument("--collect", action="store_true", help="only collect finished cells")
    p.add_argument("--progress", action="store_true", help="tqdm bars during training")
    cli_common.add_set_arg(p)
    cli_common.add_verbose_arg(p)
    a = p.parse_args(argv)
    if a.shard is not None:
        try:
            k, n = (int(x) for x in a.shard.split("/"))
            assert n >= 1 and 0 <= k < n
        except (ValueError, AssertionError):
            p.error(f"--shard: expected K/N with 0 <= K < N, got {a.shard!r}")
        a.shard = (k, n)
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    from atomic_files import write_json_atomic
    from studies import report, runner
    from studies.spec import StudyError, load_study, to_dict

    overrides, problems = cli_common.parse_sets(args.set)
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        study = load_study(args.study, overrides)
        if args.list:
            for cell, state in runner.status(study):
                print(f"{cell.index:4d}  {cell.name:<32} {state}")
            return 0
        skipped = []  # cells that another process is training
        if not args.collect:
            cli_common.quiet_tensorflow(args.verbose)
            write_json_atomic(study.out / "study.json", to_dict(study))
            for i in runner.select(study, args.cell, args.shard):
                if runner.run_cell(study, i, show_progress=args.progress) is None:
                    skipped.append(i)
        if skipped:
            print(f"{len(skipped)} cell(s) being trained by other processes were skipped "
                  f"({', '.join(map(str, skipped))}); see --list, and collect once they finish")
        if args.cell is not None or args.shard is not None:
            return 0
        res = report.collect(study)
    except (StudyError, IndexError, FileNotFoundError, ValueError) as err:
        for line in str(err).splitlines():  # a study error may list several problems
            print(f"error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    print(f"\n{res['rows']}/{res['cells']} cells finished")
    if res.get("table"):
        print(res["table"])
        print("\n".join(res["files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
