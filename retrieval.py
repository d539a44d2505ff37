"""Retrieval evaluation of trained GRID models, or of saved feature files.

  python retrieval.py dumps/configs/<run>.json [more.json ...]
  python retrieval.py --query-features Q.h5 --archive-features A.h5 [--metric chi2]
                      [--max-topk K] [--json OUT.json] [--plot N]
  [--metric hamming]  rank packed hash codes (MiLaN runs; their default)
  [--index approx]    approximate chi-square, with its recall@K against exact search
  [--relevance scene] UC Merced scene classes; the archive (test) set queries itself

Config mode extracts features (query = train records with clean labels, archive = test
records) into <dumps.features>/<run_name>/{query,archive}.h5, reusing them while the model and
records are unchanged, saves <dumps.features>/<run_name>/retrieval.json and adds the metrics to
the run's TensorBoard summaries when training wrote them (retrieval/<metric> at the last epoch;
tb_logging.py). See evaluation/metrics.py for the metric definitions.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cli_common
from atomic_files import write_json_atomic
from evaluation.distances import METRICS, chi2_backend
from evaluation.evaluate import evaluate
from evaluation.features import FeatureFileError, ensure_features, read_features

CONFIG_KEYS = ("run_name", "dataset", "feature_model_path", "train_tfrecord_paths",
               "test_tfrecord_paths", "dumps")


def _dataset_names() -> tuple[str, ...]:
    from archives import registry
    return registry.names()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("configs", nargs="*", help="dumped run configs (dumps/configs/<run>.json)")
    p.add_argument("--query-features", help="query feature HDF5 (feature, label, patch_name; "
                   "code instead of feature for --metric hamming)")
    p.add_argument("--archive-features", help="archive feature HDF5")
    p.add_argument("--metric", choices=METRICS + ("hamming",), default=None,
                   help="distance (default chi2; hamming for MiLaN runs)")
    p.add_argument("--index", choices=("exact", "approx"), default="exact",
                   help="exact search (default) or approximate chi-square with exact re-rank")
    p.add_argument("--relevance", choices=("multilabel", "scene"), default="multilabel",
                   help="multilabel: shared labels (default); scene: same UC Merced scene class, "
                        "every archive item queries the rest of the archive (MiLaN)")
    p.add_argument("--max-topk", type=int, default=None,
                   help="K retrieved per query (default: the archive's, 420 DLRSD, 1000 BEN; "
                        "1000 unknown; clipped to the archive size; a larger explicit K is "
                        "an error)")
    p.add_argument("--dataset", choices=_dataset_names(), help="dataset of feature files "
                   "(default K, headline metric, class names for --plot)")
    p.add_argument("--json", help="write the results here (config mode: also "
                   "<dumps.features>/<run>/retrieval.json)")
    p.add_argument("--plot", type=int, default=0, metavar="N", help="PNG for the first N queries")
    p.add_argument("--plot-topk", type=int, default=10, help="retrieved images per PNG")
    p.add_argument("--plot-dir", help="where PNGs go (default: next to the results)")
    p.add_argument("--query-records", nargs="+", help="query TFRecords (for --plot)")
    p.add_argument("--archive-records", nargs="+", help="archive TFRecords (for --plot)")
    p.add_argument("--query-block", type=int, default=256, help="queries ranked at once")
    p.add_argument("--archive-block", type=int, default=8192, help="archive rows per block")
    p.add_argument("--max-memory-mb", type=float, default=4096,
                   help="feature arrays larger than this stay on disk and are streamed")
    p.add_argument("--batch-size", type=int, default=64, help="feature extraction batch size")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    cli_common.add_verbose_arg(p)
    args = p.parse_args(argv)
    if bool(args.query_features) != bool(args.archive_features):
        p.error("--query-features and --archive-features go together")
    if bool(args.configs) == bool(args.query_features):
        p.error("give either run configs or --query-features/--archive-features")
    return args


def _open(path: str, max_mb: float):
    import h5py
    try:
        with h5py.File(path, "r") as f:
            size = f["feature"].size * 4 if "feature" in f else 0
    except OSError:
        size = 0
    return read_features(path, in_memory=size <= max_mb * 2**20)


def score(query_path, archive_path, args, dataset=None, records=(None, None), plot_dir=None,
          run_name: str = ""):
    """Rank and score one pair of feature files; optionally plot (titled with ``run_name``, or
    the feature file names); returns the result dict."""
    metric = args.metric or "chi2"
    archive = _open(archive_path, args.max_memory_mb)
    scene = args.relevance == "scene"
    if scene:  # MiLaN's protocol: the test set queries itself, relevant = same scene class
        from evaluation.scene import with_scene_labels
        try:
            archive = query = with_scene_labels(archive)
        except FeatureFileError:
            archive.close()
            raise
        records = (records[1], records[1])  # pictures: queries are archive items
    else:
        query = _open(query_path, args.max_memory_mb)
    # a streamed archive is re-read once per query block: use bigger query blocks then
    qblock = args.query_block if archive.handle is None else max(args.query_block, 4096)
    try:
        res = evaluate(query, archive, metric, args.max_topk, dataset, qblock,
                       args.archive_block, keep=max(args.plot, 0), progress=not args.quiet,
                       index=args.index, exclude_self=scene)
        res["chi2_backend"] = chi2_backend() if metric == "chi2" else None
        res["relevance"] = args.relevance
        if scene and "mAP@20" in res["metrics"]:
            res["headline"] = {"mAP@20": res["metrics"]["mAP@20"]}
        top = res.pop("topk_index", None)
        top_dist = res.pop("topk_distance", None)
        if args.plot > 0:
            if not (dataset and records[0] and records[1]):
                print("--plot skipped: needs --dataset, --query-records and --archive-records "
                      "(or a run config)", file=sys.stderr)
            else:
                from evaluation.plots import plot_results
                from evaluation.scene import SCENE_CLASSES
                label = run_name or f"{Path(query_path).name} against {Path(archive_path).name}"
                paths = plot_results(plot_dir, dataset, records[0], records[1], top, query.label,
                                     archive.label, query.patch_name, args.plot_topk,
                                     distances=top_dist, metric=metric, run_name=label,
                                     class_names=SCENE_CLASSES if scene else None,
                                     relevance=args.relevance)
                res["plots"] = [str(p) for p in paths]
    finally:
        query.close()
        archive.close()
    return res


def run_config(path: str, args) -> tuple[str, dict]:
    """Extract (or reuse) the features of one dumped run config, then score them."""
    cfg_path = Path(path)
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    from config import read_dump
    data = read_dump(path)  # ValueError naming the file: not JSON, or not an object
    missing = [k for k in CONFIG_KEYS if k not in data]
    if "dumps" in data and "features" not in (data["dumps"] or {}):
        missing.append("dumps.features")
    if missing:
        raise ValueError(f"{path}: config lacks key(s) {missing}")
    from config import Config
    run = Config.from_json(cfg_path)  # ConfigError (a ValueError) names the file and key
    # where training put its outputs, as the dump records them
    cfg = {"run_name": data["run_name"], "feature_model_path": data["feature_model_path"],
           "dataset": run.dataset, "model_name": run.model_name,
           "train_tfrecord_paths": list(run.train_tfrecord_paths),
           "test_tfrecord_paths": list(run.test_tfrecord_paths), "dumps": dict(run.dumps)}
    from archives.record_files import all_files
    # a sharded split's name stands for its shards (archives/record_files.py)
    cfg["train_tfrecord_paths"] = all_files(cfg["train_tfrecord_paths"])
    cfg["test_tfrecord_paths"] = all_files(cfg["test_tfrecord_paths"])
    absent = [p for p in [cfg["feature_model_path"], *cfg["train_tfrecord_paths"],
                          *cfg["test_tfrecord_paths"]] if not Path(p).is_file()]
    if absent:
        raise FileNotFoundError(f"{path}: model or record file(s) missing: {absent}")
    from archives.pipeline import make_dataset

    def make(paths):
        # the run's band set and parse options (archives/registry.py), not just its name
        return make_dataset(paths, run.archive, training=False, batch_size=args.batch_size)

    model = run.model  # its entry in models/registry.py
    binary = model.binary_codes  # sigmoid hash outputs: also store packed codes
    if args.metric is None and model.retrieval_metric is not None:
        # the published systems' distances (MiLaN: hamming, off-the-shelf features: cosine)
        args = argparse.Namespace(**{**vars(args), "metric": model.retrieval_metric})
    out_dir = Path(cfg["dumps"]["features"]) / cfg["run_name"]
    from atomic_files import remove_stale_temps
    for stale in remove_stale_temps(out_dir):
        print(f"removed {stale}, left by an interrupted earlier run", file=sys.stderr)
    files = {}
    for side, key in (("query", "train_tfrecord_paths"), ("archive", "test_tfrecord_paths")):
        files[side] = out_dir / f"{side}.h5"
        try:
            reused = ensure_features(files[side], cfg["feature_model_path"], cfg[key], make,
                                     progress=not args.quiet, binary=binary)
        except Exception as err:  # a damaged record file: name it (else the error stands)
            import tensorflow as tf
            if not isinstance(err, (tf.errors.OpError, ValueError)) or \
                    isinstance(err, FeatureFileError):
                raise
            from run_guard import records_error
            named = records_error(cfg[key], cfg["dataset"], err, "feature extraction stopped")
            if named is err:
                raise
            raise named from None
        print(f"{cfg['run_name']}: {side} features {'reused' if reused else 'written'}: "
              f"{files[side]}", file=sys.stderr)
    res = score(files["query"], files["archive"], args, cfg["dataset"],
                (cfg["train_tfrecord_paths"], cfg["test_tfrecord_paths"]),
                args.plot_dir or out_dir / "plots", run_name=cfg["run_name"])
    res["run_name"] = cfg["run_name"]
    res["config"] = str(cfg_path)
    write_json_atomic(out_dir / "retrieval.json", res)
    _to_tensorboard(Path(cfg["dumps"]["summaries"]) / cfg["run_name"], res["metrics"],
                    run.nb_epoch)
    return cfg["run_name"], res


def _to_tensorboard(summaries: Path, metrics: dict, step: int) -> None:
    """The metrics as ``retrieval/<name>`` scalars beside the run's training summaries (when
    training wrote some), at the run's last epoch; a failure only warns."""
    if not summaries.is_dir():
        return
    import tb_logging
    try:
        tb_logging.write_retrieval_metrics(summaries, metrics, step)
    except Exception as err:  # the results are written already; TensorBoard is a view
        print(f"warning: {summaries}: retrieval metrics not added to TensorBoard ({err})",
              file=sys.stderr)
        return
    print(f"retrieval metrics added to TensorBoard: {summaries}", file=sys.stderr)


def format_table(results: dict[str, dict]) -> str:
    """Metric rows x run columns."""
    names = list(results)
    keys = []
    for res in results.values():
        keys += [k for k in res["metrics"] if k not in keys]
    width = max(len(n) for n in names)
    lines = [f"{'metric':<16}" + "".join(f"  {n:>{width}}" for n in names)]
    for k in keys:
        cells = "".join(f"  {results[n]['metrics'].get(k, float('nan')):>{width}.4f}" for n in names)
        lines.append(f"{k:<16}{cells}")
    return "\n".join(lines)


def check_args(args) -> None:
    """ValueError naming the option or file for values that would fail only after the work."""
    for opt in ("query_block", "archive_block", "batch_size", "plot_topk"):
        if getattr(args, opt) < 1:
            raise ValueError(f"--{opt.replace('_', '-')}: must be >= 1, got {getattr(args, opt)}")
    if not args.max_memory_mb >= 0:
        raise ValueError(f"--max-memory-mb: must be >= 0, got {args.max_memory_mb}")
    if args.json:
        target = Path(args.json)
        if target.is_dir():
            raise ValueError(f"{target}: --json names a folder; give a file path")
        for parent in target.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise ValueError(f"{target}: --json cannot be written: {parent} is a file")
                break


def main(argv=None) -> int:
    args = parse_args(argv)
    cli_common.quiet_tensorflow(args.verbose)
    import warnings
    warnings.formatwarning = lambda msg, *_, **__: f"warning: {msg}\n"
    results: dict[str, dict] = {}
    try:
        check_args(args)
        if args.configs:
            for path in args.configs:
                name, res = run_config(path, args)
                results[name] = res
        else:
            plot_dir = args.plot_dir or (Path(args.json).parent / "plots" if args.json else "plots")
            results["result"] = score(args.query_features, args.archive_features, args,
                                      args.dataset, (args.query_records, args.archive_records),
                                      plot_dir)
    except (FeatureFileError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    for name, res in results.items():
        print(f"{name}: {res['num_queries']} queries x {res['num_archive']} archive, "
              f"{res['metric']}, K={res['max_topk']}, {res['ranking_seconds']} s")
        for key in [k for k in res if k.startswith("approx_recall@")]:
            print(f"  approximate search: {key[7:]} = {res[key]:.4f} against exact search on "
                  f"{res['approx_recall_queries']} sampled queries")
    print(format_table(results))
    for name, res in results.items():
        if res.get("plots"):
            files = ", ".join(Path(p).name for p in res["plots"])
            print(f"{name}: {len(res['plots'])} retrieval picture(s) in "
                  f"{Path(res['plots'][0]).parent}/ ({files})")
    if args.json:
        write_json_atomic(args.json, results["result"] if len(results) == 1 and not args.configs
                          else results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
