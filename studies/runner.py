"""Run study cells through the project's own training (``training.train``) and retrieval
(``retrieval.run_config``) code paths.

A cell is finished when ``out/cells/<model>-noise<N>-seed<S>.json`` exists (written atomically
after retrieval); finished cells are skipped. An interrupted cell resumes from its last training
checkpoint. Cells are independent, so a scheduler can run them anywhere that sees ``out``:
``run_cell(study, index)`` is the unit of work (``--cell I`` / ``--shard K/N`` on the command line).

A cell being trained is claimed: ``out/claims/<cell>.lock`` (``locks.py``: pid, host, since when,
touched every minute while the cell runs). Another process skips a claimed cell and goes on to
the next; a claim whose process is gone (same host), or that nobody has touched for 15 minutes
(another host, e.g. a cluster node that died), is taken over. Preparing the sample archive's
data is likewise one process at a time (``out/data/.study-data.lock``; the others wait for it).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

import locks
from atomic_files import write_json_atomic
from studies.spec import Cell, Study

DATA_WAIT_S = 2.0  # poll interval while another process prepares the study's data


def _log(msg: str) -> None:
    print(msg, flush=True)


def prepare_data(study: Study, log=_log) -> None:
    """Write the sample archive and its TFRecords (every study noise level) unless present."""
    if study.sample_archive is None:
        return
    from archives.record_files import prepared

    levels = sorted({n for n in study.noise_levels if n > 0})
    if prepared(study.data_dir / "TFRecord", levels):
        return
    lock = _wait_for_lock(study.data_dir / ".study-data.lock", f"preparing {study.data_dir}", log)
    with lock:
        if not prepared(study.data_dir / "TFRecord", levels):  # another process may have done it
            _write_data(study, levels, log)


def _wait_for_lock(path: Path, purpose: str, log) -> locks.Lock:
    """Take the lock at ``path``, waiting (and saying so once) while a live process holds it."""
    said = False
    while True:
        try:
            return locks.acquire(path, purpose, log=lambda m: log(f"note: {m}"))
        except locks.LockHeld as err:
            if not said:
                log(f"waiting for {locks.describe(err.holder) if err.holder else 'another process'}"
                    f" ({path})")
                said = True
            time.sleep(DATA_WAIT_S)


class DataPrepError(ValueError):
    """The study's sample data could not be written; the message names the file and the step
    (study.py prints it as ``error: ...`` and exits 2)."""


def _write_data(study: Study, levels: list, log) -> None:
    import tensorflow as tf

    import prep_DLRSD_noisy
    from archives import sample

    raw = study.data_dir / "raw"
    opts = study.sample_archive
    log(f"writing the {opts['variant']} sample archive ({opts['per_class']} per class, seed "
        f"{opts['seed']}) and its TFRecords under {study.data_dir}")
    try:
        sample.write_sample_archive(raw, seed=opts["seed"], per_class=opts["per_class"],
                                    variant=opts["variant"])
    except (OSError, ValueError) as err:
        where = getattr(err, "filename", None) or raw
        raise DataPrepError(f"{where}: writing the study's sample archive failed "
                            f"({getattr(err, 'strerror', None) or err})") from None
    args = ["-r_dlrsd", str(raw / "DLRSD"), "-r_ucm", str(raw / "UCMerced_LandUse"),
            "-o", str(study.data_dir), "--quiet"]
    if levels:
        args += ["--noise-levels", *map(str, levels)]
    step = f"preparing the study's records from {raw} (prep_DLRSD_noisy.py)"
    try:
        rc = prep_DLRSD_noisy.main(args)  # bad input: it prints its own "error: <file>: ..."
    except (OSError, tf.errors.OpError) as err:
        where = getattr(err, "filename", None) or study.data_dir / "TFRecord"
        raise DataPrepError(f"{where}: {step} failed ({getattr(err, 'strerror', None) or err})") \
            from None
    if rc != 0:
        raise DataPrepError(f"{study.data_dir / 'TFRecord'}: {step} failed (exit {rc}; the "
                            "reason is on the line above); fix that and run again")


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


def claim_path(study: Study, cell: Cell) -> Path:
    """The lock file of a cell being trained (see the module docstring)."""
    return study.out / "claims" / f"{cell.name}.lock"


def run_cell(study: Study, index: int, *, show_progress: bool = False, log=_log) -> dict | None:
    """Train and evaluate one cell (or return its saved result); returns its result row, or
    None when another live process has claimed the cell (it is skipped)."""
    cells = study.cells
    if not 0 <= index < len(cells):
        raise IndexError(f"cell index {index} out of range: the study has {len(cells)} cells "
                         f"(0..{len(cells) - 1})")
    cell = cells[index]
    if study.cell_result_path(cell).is_file():
        return _finished(study, index, cell, log)
    try:
        claim = locks.acquire(claim_path(study, cell), f"study cell {cell.name}",
                              what=f"cell {cell.name}", log=lambda m: log(f"note: {m}"))
    except locks.LockHeld as err:
        who = locks.describe(err.holder) if err.holder else "another process"
        log(f"[{index}] {cell.name}: claimed by {who}, skipped")
        return None
    with claim:
        if study.cell_result_path(cell).is_file():  # finished by another process meanwhile
            return _finished(study, index, cell, log)
        return _train_and_evaluate(study, index, cell, show_progress, log)


def _finished(study: Study, index: int, cell: Cell, log) -> dict:
    log(f"[{index}] {cell.name}: finished earlier, skipped")
    return study.cell_result(cell)


def _train_and_evaluate(study: Study, index: int, cell: Cell, show_progress: bool, log) -> dict:
    """The work of a claimed cell: data (if the study makes it), training, retrieval, result."""
    from config import read_dump

    result_path = study.cell_result_path(cell)
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
    dump = read_dump(cfg.config_dump_path)
    final = dump.get("final_metrics") or {}
    n_records, n_corrupted = training_counts(cfg)
    row = {"model": cell.model, "noise_prcnt": cell.noise_prcnt, "seed": cell.seed,
           "chance_level": n_corrupted / n_records if n_records else math.nan,
           "selection_share": selection_share(cfg, n_records),
           "sel_precision": final.get("sel_precision", math.nan),
           "sel_recall": final.get("sel_recall", math.nan),
           "train_time_s": round(float(result.training_time_s), 2),
           "cell_time_s": round(time.perf_counter() - start, 2),
           "retrieval_time_s": round(time.perf_counter() - start - t_train, 2),
           "run_name": cfg.run_name, **res["metrics"],
           "selected_epoch": dump.get("selected_epoch"),
           **_best_val_metrics(study, cfg, dump), "history": dump.get("history") or []}
    write_json_atomic(result_path, row)
    log(f"[{index}] {cell.name}: done in {row['cell_time_s']:.0f} s")
    return row


# best_val_<metric> columns; an archive below these cut-offs gets NDCG@K and mAP@K instead
BEST_VAL_METRICS = ("NDCG@20", "NDCG@30", "mAP@20")


def _best_val_metrics(study: Study, cfg, dump: dict) -> dict:
    """Test retrieval of the best validation epoch's feature model beside the exported one:
    ``best_val_epoch`` and ``best_val_<metric>`` (BEST_VAL_METRICS). Empty when the run kept
    no such model; the exported figures when it is the exported epoch already."""
    import json

    import retrieval
    from json_numbers import nan_for_null
    from run_history import BEST_FILE

    history = dump.get("history") or []
    best = max((h for h in history if _finite(h.get("val_retrieval"))),
               key=lambda h: h["val_retrieval"], default=None)
    best_path = cfg.weights_dir / BEST_FILE
    if best is None or not best_path.is_file():
        return {}
    out = {"best_val_epoch": int(best["epoch"])}
    if int(best["epoch"]) == dump.get("selected_epoch"):  # exported already: same figures
        res = json.loads((cfg.features_dir / "retrieval.json").read_text())
        res["metrics"] = nan_for_null(res["metrics"])
    else:
        copy = {**dump, "run_name": f"{dump['run_name']}-best_val",
                "feature_model_path": str(best_path)}
        path = cfg.config_dump_path.with_name(f"{copy['run_name']}.json")
        write_json_atomic(path, copy)
        _, res = retrieval.run_config(str(path), _retrieval_args(study, path))
    metrics = res["metrics"]
    keys = [k for k in BEST_VAL_METRICS if k in metrics] or [
        k for k in (f"NDCG@{res['max_topk']}", f"mAP@{res['max_topk']}") if k in metrics]
    out.update({f"best_val_{k}": metrics[k] for k in keys})
    return out


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


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


def status(study: Study) -> list[tuple[Cell, str]]:
    """(cell, state) per cell: "finished", "pending", "running: <holder>" for a live claim, or
    "pending (stale claim of <holder>)" when the claiming process is gone."""
    out = []
    for c in study.cells:
        holder = locks.read(claim_path(study, c))
        if study.cell_result_path(c).is_file():
            state = "finished"
        elif holder is None:
            state = "pending"
        elif holder and locks.is_stale(holder, claim_path(study, c)):
            state = f"pending (stale claim of {locks.describe(holder)})"
        else:
            state = f"running: {locks.describe(holder) if holder else 'claim being written'}"
        out.append((c, state))
    return out
