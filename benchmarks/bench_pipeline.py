"""Input pipeline at BigEarthNet scale: can it feed a GPU? (docs/full-scale.md)

python benchmarks/bench_pipeline.py [--records 12000] [--batch 128] [--repeats 3]
                                    [--archives BEN BENv2-s2 BENv2-s1s2 DLRSD] [--keep DIR]

For each archive, a sample archive goes through prep (shards layout); its records are
replicated (renamed) to --records (DLRSD: its published train size, 1470) and written as
shards of ~200 MB in the seeded random order prep uses, with a noise overlay, so a whole shuffle
window and more are read. Each record gets a synthetic "acquisition": the sorted names are cut
into 124 runs (the real v1 train list has 124 acquisitions; DLRSD: its 21 scene classes), as
the published name order groups patches by acquisition date and tile.

Each stage runs in a fresh process over two epochs (batch --batch; a new dataset per epoch, as
the training loop builds one), --repeats times (stages in turn; the rates of the run with the
least CPU time, the worst first batch, gap and memory), and reports records per CPU-second of
the second epoch (user + system of that process, from building the epoch's dataset to its last
batch: the steady figure on a shared machine; "cold": the first epoch's, with the process's
one-time set-up), records per wall second, peak resident memory, time to the first batch (of
the cold epoch: a run's start; "epoch": of the second), and the longest gap between two
batches (wall seconds, and the CPU-seconds the process spent in them: on a loaded machine at
low priority the wall figures mostly measure waits for a core):

* read: the shards read 8 at a time, interleaved (no parse);
* read+parse: the same records parsed, in parallel;
* train: ``make_dataset(training=True, compact=True)`` with the overlay (shuffle, parse, join,
  augmentation draws, batch), what the training loop reads: the crop, flips, normalisation and
  brightness run in the compiled step (``finish_batch``);
* train+finish: the same with ``finish_batch`` in the pipeline (``compact=False``, the
  normalised batches ``make_dataset`` yields by default), for comparison.

Then, in this process: the shuffle stage (the only sequential stage after the reads) on
serialized records held in memory, in records per CPU-second; and the batch mix: distinct
acquisitions per batch of the train stage's first epoch against a global shuffle's (and
against the former order: name-ordered records in windows of 10,000). The goals are printed
as ratios measured in this run; "cores per GPU" is 2,000 images/s divided by the train rate.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

GPU_RATE = 2000.0  # images/s DenseNet121 trains at on one datacenter GPU
ACQUISITIONS = 124
GOALS = {"train/read+parse per CPU-s": 0.9, "peak RSS s1s2 GB": 3.0, "first batch s": 10.0,
         "longest gap s": 2.0, "sequential stage rec/s": 5000.0, "mix vs global": 0.8}
STAGES = ("read", "read+parse", "train", "train+finish")
ARCHIVES = {"BEN": ("BEN", None), "BENv2-s2": ("BENv2", "s2"), "BENv2-s1s2": ("BENv2", "s1s2"),
            "DLRSD": ("DLRSD", None)}


# ---------------------------------------------------------------- records

def _prep_sample(name: str, tmp: Path) -> Path:
    """A sample archive of ``name`` through prep (shards layout); returns its TFRecord folder."""
    import contextlib
    import io

    import prep_BEN_noisy
    import prep_DLRSD_noisy
    from archives import sample, sample_ben, sample_benv2

    raw, out = tmp / f"{name}-raw", tmp / f"{name}-prep"
    with contextlib.redirect_stdout(io.StringIO()):
        if name == "DLRSD":
            sample.write_sample_archive(raw, seed=0, per_class=10)
            rc = prep_DLRSD_noisy.main(["-r_dlrsd", str(raw / "DLRSD"), "-r_ucm",
                                        str(raw / "UCMerced_LandUse"), "-o", str(out),
                                        "--noise-levels", "50", "--quiet", "--workers", "1"])
        elif name == "BEN":
            sample_ben.write_sample_archive(raw, seed=0, n_patches=200)
            rc = prep_BEN_noisy.main(["-r", str(raw), "-o", str(out), "--noise-levels", "50",
                                      "--quiet", "--workers", "1"] +
                                     sum(([f"-{s}", str(raw / f"{s}.csv")]
                                          for s in ("train", "val", "test")), []))
        else:
            sample_benv2.write_sample_archive(raw, seed=0, n_patches=200)
            rc = prep_BEN_noisy.main(["-r", str(raw), "-o", str(out), "--noise-levels", "50",
                                      "--quiet", "--workers", "1"])
    if rc:
        raise SystemExit(f"prep of the {name} sample failed")
    return out / "TFRecord"


def replicate(dataset: str, src: Path, dst: Path, n: int, seed: int = 0) -> dict:
    """``n`` renamed copies of the sample's records as shards in prep's random order, with
    records_meta.json and a noise overlay; returns {patch name: acquisition id}."""
    import tensorflow as tf

    from archives import overlay, registry, shards
    from archives.record_files import overlay_name, resolve

    files = [f for s in ("train", "val", "test") for f in resolve([str(src / f"{s}.tfrecord")]).files]
    base = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(files)]
    label_key = "BEN-19_multi_hot" if dataset == "BEN" else "label"
    names = sorted(f"{base[i % len(base)].features.feature['patch_name'].bytes_list.value[0].decode()}"
                   f"_r{i // len(base):05d}" for i in range(n))
    by_base = {ex.features.feature["patch_name"].bytes_list.value[0].decode(): ex for ex in base}
    groups = 21 if dataset == "DLRSD" else ACQUISITIONS
    acq = {name: (re.match(r"[a-z]+", name).group() if dataset == "DLRSD" else i * groups // n)
           for i, name in enumerate(names)}
    order = shards.record_order(n, seed, "train")
    size = np.mean([len(ex.SerializeToString()) for ex in base[:20]])
    bounds = shards.shard_bounds(n, shards.records_per_shard("200MB", int(size)))
    shard_files = shards.shard_names("train", len(bounds))
    dst.mkdir(parents=True, exist_ok=True)
    ordered = [names[i] for i in order]
    labels = []
    for (a, b), fname in zip(bounds, shard_files):
        with tf.io.TFRecordWriter(str(dst / fname)) as w:
            for name in ordered[a:b]:
                ex = tf.train.Example()
                ex.CopyFrom(by_base[name.rsplit("_r", 1)[0]])
                ex.features.feature["patch_name"].bytes_list.value[0] = name.encode()
                labels.append(list(ex.features.feature[label_key].float_list.value))
                w.write(ex.SerializeToString())
    info = registry.get(dataset)
    meta = {"format": 1, "archive": info.name, "classes": list(info.class_names),
            "layout": "shards", "overlays": {"50": overlay_name(50)},
            "splits": {"train": {"shards": shard_files, "records": [b - a for a, b in bounds],
                                 "digest": overlay.names_digest(ordered)}}}
    (dst / "records_meta.json").write_text(json.dumps(meta))
    lab = np.asarray(labels, np.uint8)
    arrays = {"noisy_label": lab[:, ::-1]}  # a different label, joined by index
    if dataset == "BENv2":
        arrays["map_noisy_label"] = lab
    lut = np.tile(np.arange(info.nb_class, dtype=np.int8)[::-1], (n, 1)) \
        if info.has_pixel_maps else None
    overlay.write_overlay(dst / overlay_name(50), names=ordered, labels=arrays, map_lut=lut,
                          level=50, seed=seed, archive=info.name)
    return acq


# ---------------------------------------------------------------- one stage (own process)

def _info(dataset: str, bands: str | None):
    from archives import registry
    info = registry.get(dataset)
    return info.with_bands(bands) if bands else info


def _stage_dataset(stage: str, folder: Path, info, batch: int, epoch: int):
    import tensorflow as tf

    from archives.common import file_forms, file_offsets, indexed_records, parse_by_form
    from archives.pipeline import make_dataset
    from archives.record_files import counts_of, overlay_name, resolve

    paths = [str(folder / "train.tfrecord")]
    if stage.startswith("train"):
        return make_dataset(paths + [str(folder / overlay_name(50))], info, training=True,
                            batch_size=batch, seed=1, epoch=epoch, compact=stage == "train")
    res = resolve(paths)
    reader = info.load().record_parser(compact_dtypes=True, **dict(info.parse_kwargs))
    forms, ids = file_forms(res.files, reader)
    ds = indexed_records(res.files, file_offsets(counts_of(res)), ids, cycle=8)
    if stage == "read+parse":
        parse = parse_by_form(forms, reader)
        ds = ds.map(tf.autograph.experimental.do_not_convert(lambda i, f, raw: parse(f, raw)),
                    num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda i, f, raw: {"patch_name": tf.strings.length(raw)})
    return ds.batch(batch).prefetch(tf.data.AUTOTUNE)


def _one_pass(stage: str, folder: Path, info, batch: int, epoch: int) -> dict:
    """One epoch of ``stage``, from building its dataset to the last batch."""
    start_cpu, start = time.process_time(), time.perf_counter()
    ds = _stage_dataset(stage, folder, info, batch, epoch)
    n, first, gap, last, names = 0, None, 0.0, None, []
    first_cpu, gap_cpu, last_cpu = None, 0.0, None
    for b in ds:
        now, now_cpu = time.perf_counter(), time.process_time()
        if first is None:
            first, first_cpu = now - start, now_cpu - start_cpu
        if last is not None:
            gap, gap_cpu = max(gap, now - last), max(gap_cpu, now_cpu - last_cpu)
        last, last_cpu = now, now_cpu
        n += int(b["patch_name"].shape[0])
        if stage == "train":
            names.append([x.decode() for x in b["patch_name"].numpy()])
    return {"records": n, "wall_s": time.perf_counter() - start,
            "cpu_s": time.process_time() - start_cpu, "first_batch_s": first,
            "first_batch_cpu_s": first_cpu, "longest_gap_s": gap, "longest_gap_cpu_s": gap_cpu,
            "batches": names}


def run_stage(stage: str, folder: Path, dataset: str, bands: str | None, batch: int) -> dict:
    """Two epochs of ``stage`` in this process, as a training run has them: the first from a
    cold start (its time to the first batch is the run's), the second as every later epoch
    (the rates; a new dataset per epoch, as the training loop builds one)."""
    import archives.pipeline  # noqa: F401  (imports are not the pipeline's time)
    import archives.record_files  # noqa: F401

    info = _info(dataset, bands)
    info.load()
    cold = _one_pass(stage, folder, info, batch, epoch=0)
    warm = _one_pass(stage, folder, info, batch, epoch=1)
    return {"stage": stage, "records": warm["records"], "wall_s": warm["wall_s"],
            "cpu_s": warm["cpu_s"], "per_cpu_s": warm["records"] / warm["cpu_s"],
            "per_wall_s": warm["records"] / warm["wall_s"],
            "cold_per_cpu_s": cold["records"] / cold["cpu_s"],
            "first_batch_s": cold["first_batch_s"], "first_batch_cpu_s": cold["first_batch_cpu_s"],
            "epoch_first_batch_s": warm["first_batch_s"],
            "longest_gap_s": max(cold["longest_gap_s"], warm["longest_gap_s"]),
            "longest_gap_cpu_s": max(cold["longest_gap_cpu_s"], warm["longest_gap_cpu_s"]),
            "peak_rss_gb": peak_rss_gb(), "batches": cold["batches"]}


def peak_rss_gb() -> float:
    """This process's peak resident memory since its exec: VmHWM (getrusage's ru_maxrss keeps
    the high-water mark of the parent process across fork + exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def shuffle_stage_rate(folder: Path, n: int = 20000) -> tuple[float, float]:
    """The shuffle stage (the one sequential stage after the parallel reads), on serialized
    records held in memory, with the training pipeline's buffer for these shards: (records per
    CPU-second through source and shuffle together, a lower bound for the stage alone;
    records per CPU-second the shuffle adds to the bare source, inf when within the noise)."""
    import tensorflow as tf

    from archives.pipeline import MIN_WINDOW, SHUFFLE_BYTES, epoch_seeds, seeded_shuffle
    from archives.record_files import resolve

    raws = [r.numpy() for r in tf.data.TFRecordDataset(list(resolve(
        [str(folder / "train.tfrecord")]).files)).take(500)]
    window = max(MIN_WINDOW, int(SHUFFLE_BYTES // np.mean([len(r) for r in raws])))

    def source():
        return tf.data.Dataset.from_tensor_slices(raws).repeat().take(n).enumerate().map(
            lambda i, r: (i, tf.constant(0, tf.int64), r))

    def cpu(ds) -> float:
        start = time.process_time()
        ds.reduce(tf.constant(0, tf.int64), lambda c, _: c + 1)
        return time.process_time() - start

    base = min(cpu(source()) for _ in range(2))
    with_shuffle = min(cpu(seeded_shuffle(source(), window, epoch_seeds(0, 0))) for _ in range(2))
    added = with_shuffle - base
    return n / with_shuffle, (n / added if added > 0.02 * base else float("inf"))


def combine(runs: list[dict]) -> dict:
    """One stage's repeats: rates from the run with the least CPU time (the least disturbed
    by other jobs), the worst first batch, gap and peak memory of all."""
    best = dict(min(runs, key=lambda r: r["cpu_s"]))
    for key in ("first_batch_s", "longest_gap_s", "first_batch_cpu_s", "longest_gap_cpu_s",
                "epoch_first_batch_s", "peak_rss_gb"):
        best[key] = max(r[key] for r in runs)
    return best


def mix(batches: list, acq: dict) -> float:
    return float(np.mean([len({acq[n] for n in b}) for b in batches if len(b) == len(batches[0])]))


def reference_mixes(acq: dict, batch: int, seed: int = 0) -> tuple[float, float]:
    """(global shuffle, former order: name order in windows of 10,000) distinct per batch."""
    names = sorted(acq)
    rng = np.random.default_rng(seed)
    glob = [names[i] for i in rng.permutation(len(names))]
    former = []
    for a in range(0, len(names), 10000):
        w = names[a:a + 10000]
        former += [w[i] for i in rng.permutation(len(w))]
    def cut(order):
        return [order[i:i + batch] for i in range(0, len(order) - batch + 1, batch)]

    return mix(cut(glob), acq), mix(cut(former), acq)


# ---------------------------------------------------------------- driver

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=12000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--archives", nargs="+", default=list(ARCHIVES), choices=list(ARCHIVES))
    p.add_argument("--repeats", type=int, default=3,
                   help="runs of each stage (in turn); rates of the least disturbed run")
    p.add_argument("--keep", default=None, help="build the records here and keep them")
    p.add_argument("--stage", help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.stage:  # a child process: one stage
        dataset, bands = ARCHIVES[a.archives[0]]
        print(json.dumps(run_stage(a.stage, Path(a.dir), dataset, bands, a.batch)))
        return 0
    tmp = Path(a.keep or tempfile.mkdtemp(prefix="bench_pipeline_"))
    rows = {}
    built: dict[str, tuple[Path, dict]] = {}
    for name in a.archives:
        dataset, bands = ARCHIVES[name]
        src_key = dataset
        if src_key not in built:
            src = _prep_sample(dataset, tmp)
            n = 1470 if dataset == "DLRSD" else a.records
            acq = replicate(dataset, src, tmp / f"{dataset}-shards", n)
            built[src_key] = (tmp / f"{dataset}-shards", acq)
        folder, acq = built[src_key]
        load_before = os.getloadavg()[0]
        runs = {stage: [] for stage in STAGES}
        for _ in range(a.repeats):  # stages in turn, so that each repeat sees a similar load
            for stage in STAGES:
                proc = subprocess.run([sys.executable, __file__, "--stage", stage, "--dir",
                                       str(folder), "--archives", name, "--batch", str(a.batch)],
                                      capture_output=True, text=True, cwd=ROOT,
                                      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
                if proc.returncode:
                    raise SystemExit(proc.stderr[-3000:])
                runs[stage].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        out = {stage: combine(rs) for stage, rs in runs.items()}
        out["same_batches"] = all(r["batches"] == runs["train"][0]["batches"]
                                  for r in runs["train"])
        glob, former = reference_mixes(acq, a.batch)
        out["mix"] = {"train": mix(out["train"]["batches"], acq), "global": glob, "former": former}
        out["shuffle_rec_s"], out["shuffle_added_rec_s"] = shuffle_stage_rate(folder)
        out["load"] = [load_before, os.getloadavg()[0]]
        rows[name] = out
        _print_one(name, out, a.batch)
    _print_goals(rows)
    return 0


def _print_one(name: str, out: dict, batch: int) -> None:
    print(f"\n{name}: {out['train']['records']} records, batch {batch}")
    print(f"  {'stage':<12} {'rec/CPU-s':>10} {'(cold)':>7} {'rec/s':>8} {'peak RSS':>9} "
          f"{'1st batch':>10} {'(epoch)':>8} {'max gap':>8} {'(CPU-s:':>8} {'1st':>5} {'gap)':>5}")
    for stage in STAGES:
        r = out[stage]
        print(f"  {stage:<12} {r['per_cpu_s']:>10.0f} {r['cold_per_cpu_s']:>7.0f} "
              f"{r['per_wall_s']:>8.0f} {r['peak_rss_gb']:>7.2f}GB {r['first_batch_s']:>9.2f}s "
              f"{r['epoch_first_batch_s']:>7.2f}s {r['longest_gap_s']:>7.2f}s "
              f"{'':>8} {r['first_batch_cpu_s']:>5.2f} {r['longest_gap_cpu_s']:>5.2f}")
    m = out["mix"]
    added = out["shuffle_added_rec_s"]
    print(f"  shuffle stage: at least {out['shuffle_rec_s']:.0f} records/CPU-s (with its "
          f"in-memory source); the shuffle alone "
          f"{'within the noise of the source' if added == float('inf') else f'{added:.0f}'}")
    print(f"  load average: {out['load'][0]:.1f} before, {out['load'][1]:.1f} after; train "
          f"batches the same in every repeat: {'yes' if out['same_batches'] else 'NO'}")
    print(f"  distinct acquisitions per batch: train {m['train']:.1f}, global shuffle "
          f"{m['global']:.1f}, former order {m['former']:.1f}")
    print(f"  cores per GPU at {GPU_RATE:.0f} images/s: "
          f"{GPU_RATE / out['train']['per_cpu_s']:.1f}")


def _print_goals(rows: dict) -> None:
    print("\ngoals (ratio to the goal's bound; <= 1 is met for the upper bounds, >= 1 for the "
          "lower ones):")
    for name, out in rows.items():
        tr, rp = out["train"], out["read+parse"]
        parts = [f"train/read+parse per CPU-s {tr['per_cpu_s'] / rp['per_cpu_s']:.2f} "
                 f"(>= {GOALS['train/read+parse per CPU-s']}; with finish_batch in the pipeline "
                 f"{out['train+finish']['per_cpu_s'] / rp['per_cpu_s']:.2f})",
                 f"first batch {tr['first_batch_s'] / GOALS['first batch s']:.2f}x of 10 s "
                 f"({tr['first_batch_cpu_s']:.1f} CPU-s to it)",
                 f"longest gap {tr['longest_gap_s'] / GOALS['longest gap s']:.2f}x of 2 s "
                 f"({tr['longest_gap_cpu_s']:.2f} CPU-s in it)",
                 f"shuffle stage {out['shuffle_rec_s'] / GOALS['sequential stage rec/s']:.1f}x "
                 "of 5,000/s",
                 f"mix {out['mix']['train'] / out['mix']['global']:.2f} of a global shuffle "
                 f"(>= {GOALS['mix vs global']})"]
        if name.endswith("s1s2"):
            parts.append(f"peak RSS {tr['peak_rss_gb'] / GOALS['peak RSS s1s2 GB']:.2f}x of 3 GB")
        print(f"  {name}: " + "; ".join(parts))


if __name__ == "__main__":
    sys.exit(main())
