"""``records_meta.json``: what prep wrote, beside the records, so training can check it.

Prep writes it atomically next to ``prep_report.json``: archive, classes (class-id order), the
image channels (band set), schema, noise levels and seed, normalisation statistics and the
record counts. Training (``run_guard.check_inputs``) reads it when present and refuses a config
whose dataset or classes disagree, naming both files. Records without it (earlier preps, records
written by the published scripts) are accepted as before.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from atomic_files import write_json_atomic

META_NAME = "records_meta.json"
FORMAT = 1


class RecordsMetaError(ValueError):
    """A metadata file that cannot be read, or that disagrees with the config."""


def meta_dict(info, report, band_set: str = "default", splits: dict | None = None,
              overlays: dict | None = None) -> dict:
    """The metadata of a prep run of archive ``info`` (registry.ArchiveInfo) from its report.

    A sharded prep adds ``layout: "shards"``, ``splits`` ({split: {"shards": [file, ...],
    "records": [count, ...], "digest": sha256 of the names in global-index order}}) and
    ``overlays`` ({level: file}); a prep of one file per split says ``layout: "files"``."""
    extra = {"layout": "shards", "splits": splits, "overlays": {str(k): v for k, v in
                                                                (overlays or {}).items()}} \
        if splits is not None else {"layout": "files"}
    return {"format": FORMAT, "archive": info.name, "classes": list(info.class_names),
            "nb_class": info.nb_class, "band_set": band_set, "bands": list(info.channel_names),
            "image_shape": list(info.image_shape), "has_pixel_maps": info.has_pixel_maps,
            "schema": report.schema, "seed": report.seed,
            "noise_levels": [int(n) for n in report.noise_levels],
            "statistics": {"mean": [float(v) for v in info.model_mean],
                           "std": [float(v) for v in info.model_std]},
            "records": dict(report.records), **extra}


def write_meta(folder: str | os.PathLike, info, report, band_set: str = "default",
               splits: dict | None = None, overlays: dict | None = None) -> Path:
    """Write ``<folder>/records_meta.json`` atomically; returns its path."""
    path = Path(folder) / META_NAME
    write_json_atomic(path, meta_dict(info, report, band_set, splits, overlays))
    return path


def overlay_layout(folder: str | os.PathLike) -> bool:
    """Whether the prep in ``folder`` wrote its noise levels as overlays (a sharded prep)."""
    try:
        meta = read_meta(folder)
    except RecordsMetaError:
        return False
    return bool(meta) and meta.get("layout") == "shards"


def read_meta(folder: str | os.PathLike) -> dict | None:
    """The metadata beside records in ``folder``, or None when there is none."""
    path = Path(folder) / META_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RecordsMetaError(f"{path}: unreadable records metadata ({err}); run the prep "
                               "script again or remove the file") from None
    if not isinstance(data, dict) or not isinstance(data.get("archive"), str) or \
            not isinstance(data.get("classes"), list):
        raise RecordsMetaError(f"{path}: records metadata must be an object with 'archive' "
                               "and 'classes'")
    return data


def check_against(record_paths: Iterable[str], dataset: str, class_names, config: str) -> None:
    """RecordsMetaError when the metadata beside any of ``record_paths`` names another archive
    or other classes than the config (``config``: how to name the config, e.g. its file)."""
    seen = set()
    for record in record_paths:
        folder = Path(record).parent
        if folder in seen:
            continue
        seen.add(folder)
        meta = read_meta(folder)
        if meta is None:
            continue
        path = folder / META_NAME
        if meta["archive"] != dataset:
            raise RecordsMetaError(
                f"{path}: the records in {folder} were prepared for archive {meta['archive']}, "
                f"but {config} says dataset {dataset}; use a config for {meta['archive']} or "
                f"records prepared for {dataset}")
        if list(meta["classes"]) != list(class_names):
            diff = [f"{i}: {a!r} vs {b!r}" for i, (a, b) in
                    enumerate(zip(meta["classes"], class_names)) if a != b][:3]
            raise RecordsMetaError(
                f"{path}: the records' {len(meta['classes'])} classes differ from the "
                f"{len(class_names)} classes of dataset {dataset} in {config}"
                f"{' (' + '; '.join(diff) + ')' if diff else ''}; prepare the records again")
