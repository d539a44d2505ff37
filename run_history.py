"""Per-epoch history of a run and the choice of the exported epoch (``select``).

The history is a list of one flat dict per epoch (``epoch``, training means, ``val_`` losses,
``val_retrieval`` and its ``retrieval_metric``, ``corrupted_fitted``, ``clean_fitted``). It is
kept, with the best validation-retrieval epoch so far, as JSON in a string variable saved with
every checkpoint, so a resumed run continues both. The best epoch's feature model is written
(atomically) to ``best_feature_model.keras`` in the run's weights folder whenever the validation
retrieval improves; with ``select: "best_val"`` it becomes ``feature_model.keras`` at the end.
Test data is never read: the choice uses validation queries against the training archive.
An undefined value (``corrupted_fitted`` when nothing is corrupted: NaN) is stored as null
(strict JSON, json_numbers.py) and read back as NaN (``read_history``).
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Mapping

from atomic_files import atomic_path
from json_numbers import nan_for_null, to_json

BEST_FILE = "best_feature_model.keras"


def empty_state() -> dict:
    return {"history": [], "best_epoch": None, "best_value": None}


def read_history(entries) -> list[dict]:
    """The history as read from JSON: each entry's null values (undefined numbers) as NaN."""
    return [nan_for_null(h) for h in entries or []]


def load_state(text: str) -> dict:
    """The state from its JSON (the checkpointed string); empty for ""."""
    if not text:
        return empty_state()
    state = {**empty_state(), **json.loads(text)}
    return {**state, "history": read_history(state["history"])}


def dump_state(state: Mapping) -> str:
    """The state as strict JSON (NaN as null)."""
    return to_json(state)


def is_better(value: float, best: float | None) -> bool:
    """A finite ``value`` above ``best`` (ties keep the earlier epoch)."""
    return value is not None and math.isfinite(value) and (best is None or value > best)


def record(state: dict, entry: Mapping) -> tuple[dict, bool]:
    """A new state with ``entry`` (an epoch's dict) recorded; it replaces an earlier entry of
    the same epoch (an epoch validated again after a resume). The best epoch is the one with
    the highest finite ``val_retrieval`` (the earliest on ties). Returns (state, whether
    ``entry``'s epoch is now the best, i.e. its weights are the best feature model)."""
    epoch = int(entry["epoch"])
    history = [h for h in state["history"] if int(h["epoch"]) != epoch] + [dict(entry)]
    history.sort(key=lambda h: int(h["epoch"]))
    best_epoch, best_value = None, None
    for h in history:
        if is_better(h.get("val_retrieval"), best_value):
            best_epoch, best_value = int(h["epoch"]), float(h["val_retrieval"])
    new = {**state, "history": history, "best_epoch": best_epoch, "best_value": best_value}
    return new, best_epoch == epoch


def selected_epoch(state: Mapping, select: str, last_epoch: int) -> int:
    """The epoch whose feature model is exported: ``last_epoch`` for "last", the best
    validation epoch for "best_val" (ValueError when no epoch was validated)."""
    if select == "last":
        return last_epoch
    if state["best_epoch"] is None:
        raise ValueError("select 'best_val': no epoch has a finite validation retrieval value")
    return int(state["best_epoch"])


def copy_atomic(src: Path, dst: Path) -> None:
    """Copy a file under a temporary name, then rename it into place."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
