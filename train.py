"""Train a model from a JSON config: ``python train.py CONFIG.json [--resume]``.

The loop itself lives in ``training.py``; this file only parses the command line.
``--set key=value`` (repeatable) overrides a config key, validated like the file's keys; the
dumped config (dumps/configs/<run>.json) records the effective values.
Exit codes: 0 done (or stopped by --max-epochs); 2 a named error (`error: <file>: <what>`):
bad config, missing or damaged input, an existing run without --resume/--overwrite, an output
that cannot be written; 3 a loss became NaN/Inf; 130 interrupted (a checkpoint was saved).
"""
from __future__ import annotations

import argparse
import sys

import cli_common


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config",
                        help="JSON config file (every key: docs/training.md#configuration)")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true",
                       help="continue from the run's newest readable checkpoint (even mid-epoch)")
    start.add_argument("--resume-if-any", action="store_true",
                       help="as --resume, but start a run without a checkpoint silently "
                            "(for scripts that re-run a config until it is done)")
    start.add_argument("--overwrite", action="store_true",
                       help="start over a run that already exists: its checkpoints, summaries "
                            "and outputs are set aside and deleted once the new run has "
                            "checkpointed its first epoch, put back if it fails before (without "
                            "it such a run is refused; see docs/reliability.md)")
    parser.add_argument("--max-epochs", type=int, default=None, metavar="N",
                        help="stop after N more epochs in this call (the run keeps nb_epoch; "
                             "finish later with --resume)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    cli_common.add_set_arg(parser)
    cli_common.add_verbose_arg(parser)
    args = parser.parse_args(argv)
    if args.max_epochs is not None and args.max_epochs < 1:
        parser.error("--max-epochs must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from config import Config, ConfigError

    overrides, problems = cli_common.parse_sets(args.set)
    try:
        cfg = Config.from_json(args.config, overrides)
    except ConfigError as err:
        problems += err.problems
    if problems:
        for problem in problems:  # every mistake of the config and --set, one line each
            print(f"error: {problem}", file=sys.stderr)
        return 2
    cli_common.quiet_tensorflow(args.verbose)

    import training
    from atomic_files import WriteError

    print(f"run {cfg.run_name} ({cfg.model_name}, backbone {cfg.backbone}, "
          f"strategy {cfg.strategy})")
    try:
        result = training.train(cfg, resume=args.resume or args.resume_if_any,
                                 overwrite=args.overwrite, max_epochs=args.max_epochs,
                                 show_progress=not args.no_progress,
                                 say_if_nothing_to_resume=not args.resume_if_any)
    except (ConfigError, training.RunError, WriteError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except training.TrainingDiverged as err:
        print(f"training stopped: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        again = [args.config, *(f"--set={s}" for s in args.set), "--resume"]
        print(f"interrupted; continue with: {cli_common.command('train.py', *again)}",
              file=sys.stderr)
        return 130
    print("\n".join(training.summary_lines(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
