"""Run study cells through the project's own training (``training.train``) and retrieval
(``retrieval.run_config``) code paths.

A cell is finished when ``out/cells/<model>-noise<N>-seed<S>.json`` exists (written atomically
after retrieval); finished cells are skipped. An interrupted cell resumes from its last training
checkpoint. Cells are independent, so a scheduler can run them anywhere that sees ``out``:
``run_cell(study, index)`` is the unit of work (``--cell I`` / ``--shard K/N`` on the command line).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from atomic_files import write_json_atomic
from studies.spec import Cell, Study


def _log(msg: str) -> None:
    print(msg, flush=True)


def prepare_data(study: Study, log=_log) -> None:
    """Write the sample archive and its TFRecords (every study noise level) unless present."""
    if study.sample_archive is None:
        return
    import prep_DLRSD_noisy
    from archives import sample

    from archives.record_files import prepared

    levels = sorted({n for n in study.noise_levels if n > 0})
    if prepared(study.data_dir / "TFRecord", levels):
        return
    raw = study.data_dir / "raw"
    opts = study.sample_archive
    log(f"writing the {opts['variant']} sample archive ({opts['per_class']} per class, seed "
        f"{opts['seed']}) and its TFRecords under {study.data_dir}")
    sample.write_sample_archive(raw, seed=opts["seed"], per_class=opts["per_class"],
                                variant=opts["variant"])
    args = ["-r_dlrsd", str(raw / "DLRSD"), "-r_ucm", str(raw / "UCMerced_LandUse"),
            "-o", str(study.data_dir), "--quiet"]
    if levels:
        args += ["--noise-levels", *map(str, levels)]
    if prep_DLRSD_noisy.main(args) != 0:
        raise RuntimeError(f"prep_DLRSD_noisy failed for {study.data_dir}")


def training_counts(cfg) -> tuple[int, int]:
    """(records, corrupted records) of the training files read by ``cfg``: a record is
    corrupted when its noisy multi-hot differs from the clean one."""
    from archives import get_archive

    arch = get_archive(cfg.dataset)
    ds = arch.parse_records(list(cfg.noisy_train_paths)).map(
        lambda ex: {"label": ex["label"], "noisy_label": ex["noisy_label"]})
    total = corrupted = 0
    for batch in ds.batch(1024):
        diff = np.any(batch["label"].numpy() != batch["noisy_label"].numpy(), axis=1)
        total += diff.size
        corrupted += int(diff.sum())
    return total, corrupted


def selected_per_epoch(n_records: int, batch_size: int, noisy_sel_prcnt: int) -> int:
    """Samples GRID flags as noisy in one epoch: floor(B * S / 100) of each batch
    (losses/selection.py), the last, smaller batch included."""
    full, rest = divmod(n_records, batch_size)
    per_batch = lambda b: (b * noisy_sel_prcnt) // 100  # noqa: E731  (integer floor)
    return full * per_batch(batch_size) + per_batch(rest)


def selection_share(cfg, n_records: int) -> float:
    """The share of an epoch's training records a selection of ``noisy_sel_prcnt`` % flags;
    the selection recall bound is min(1, selection_share / corrupted share) (studies/report.py)."""
    if not n_records:
        return math.nan
    return selected_per_epoch(n_records, cfg.batch_size, cfg.noisy_sel_prcnt) / n_records


def _retrieval_args(study: Study, dump_path: Path):
    import retrieval

    argv = [str(dump_path), "--quiet", "--metric", study.retrieval["metric"]]
    if study.retrieval["max_topk"] is not None:
        argv += ["--max-topk", str(study.retrieval["max_topk"])]
    return retrieval.parse_args(argv)


def run_cell(study: Study, index: int, *, show_progress: bool = False, log=_log) -> dict:
    """Train and evaluate one cell (or return its saved result); returns its result row."""
    import json

    cells = study.cells
    if not 0 <= index < len(cells):
        raise IndexError(f"cell index {index} out of range: the study has {len(cells)} cells "
                         f"(0..{len(cells) - 1})")
    cell = cells[index]
    result_path = study.cell_result_path(cell)
    if result_path.is_file():
        log(f"[{index}] {cell.name}: finished earlier, skipped")
        return json.loads(result_path.read_text())
    prepare_data(study, log)
    cfg = study.cell_config(cell)
    import keras

    import retrieval
    import training

    start = time.perf_counter()
    resume = cfg.checkpoint_dir.is_dir() and any(cfg.checkpoint_dir.iterdir())
    log(f"[{index}] {cell.name}: training {cfg.run_name}" + (" (resuming)" if resume else ""))
    # resume=True also starts afresh when nothing was checkpointed yet; a plain start would be
    # refused over the summaries an interruption before the first checkpoint leaves behind
    result = training.train(cfg, resume=True, show_progress=show_progress, log=log,
                            say_if_nothing_to_resume=False)
    keras.backend.clear_session()
    if not result.completed:
        raise RuntimeError(f"{cell.name}: training stopped before nb_epoch")
    t_train = time.perf_counter() - start
    _, res = retrieval.run_config(str(cfg.config_dump_path), _retrieval_args(study, cfg.config_dump_path))
    final = json.loads(cfg.config_dump_path.read_text()).get("final_metrics") or {}
    n_records, n_corrupted = training_counts(cfg)
    row = {"model": cell.model, "noise_prcnt": cell.noise_prcnt, "seed": cell.seed,
           "chance_level": n_corrupted / n_records if n_records else math.nan,
           "selection_share": selection_share(cfg, n_records),
           "sel_precision": final.get("sel_precision", math.nan),
           "sel_recall": final.get("sel_recall", math.nan),
           "train_time_s": round(float(result.training_time_s), 2),
           "cell_time_s": round(time.perf_counter() - start, 2),
           "retrieval_time_s": round(time.perf_counter() - start - t_train, 2),
           "run_name": cfg.run_name, **res["metrics"]}
    write_json_atomic(result_path, row)
    log(f"[{index}] {cell.name}: done in {row['cell_time_s']:.0f} s")
    return row


def select(study: Study, cell: int | None = None, shard: tuple[int, int] | None = None) -> list[int]:
    """Indices to run: one cell, every N-th cell from K (a shard), or all of them."""
    n = len(study.cells)
    if cell is not None:
        if not 0 <= cell < n:
            raise IndexError(f"--cell {cell}: the study has {n} cells (0..{n - 1})")
        return [cell]
    if shard is not None:
        k, count = shard
        return list(range(k, n, count))
    return list(range(n))


def status(study: Study) -> list[tuple[Cell, bool]]:
    return [(c, study.cell_result_path(c).is_file()) for c in study.cells]
