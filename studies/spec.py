"""The study file (STUDY.json): which (model, noise level, seed) cells to run, on which archive.

Keys: ``base_config`` (a train config path), ``models``, ``noise_levels``, ``seeds`` (non-empty
lists), ``out`` (a folder). A ``models`` entry is a model name ("BCE") or a named variant
``{"name": "GRID-BCE-sel40", "model_name": "GRID-BCE", "noisy_sel_prcnt": 40}``: a cell name
and the train config keys it sets over the base config and the study's overrides, and optionally
``noise_levels`` (a subset of the study's: that model runs at those levels only); optional ``sample_archive`` ({"variant", "per_class", "seed"}: write
the DLRSD-style sample archive and its TFRecords under ``out/data`` and train on them),
``retrieval`` ({"metric", "max_topk"}), and any train config key (e.g. ``nb_epoch``), which
overrides the base config in every cell. ``load_study(path, overrides)`` adds command-line
overrides (``study.py --set key=value``) on top of the file's, for every cell. Errors name the
file (or ``--set``) and the key.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from config import Config, ConfigError, label_problems, with_overrides

STUDY_KEYS = ("base_config", "models", "noise_levels", "seeds", "out", "sample_archive",
              "retrieval")
CELL_KEYS = ("model_name", "noise_prcnt", "seed", "dumps")  # set per cell, not overridable
SAMPLE_KEYS = {"variant": "hard", "per_class": 20, "seed": 0}
RETRIEVAL_KEYS = {"metric": "chi2", "max_topk": None}


class StudyError(ValueError):
    """A problem with the study file; the message names the file and the key."""


@dataclasses.dataclass(frozen=True)
class Cell:
    index: int
    model: str
    noise_prcnt: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.model}-noise{self.noise_prcnt}-seed{self.seed}"


@dataclasses.dataclass(frozen=True)
class Study:
    path: str
    base: dict
    models: tuple[str, ...]
    noise_levels: tuple[int, ...]
    seeds: tuple[int, ...]
    out: Path
    overrides: dict
    sample_archive: dict | None
    retrieval: dict
    cli_overrides: dict = dataclasses.field(default_factory=dict)  # --set, in overrides too
    variants: dict = dataclasses.field(default_factory=dict)  # name -> its config keys
    model_noise: dict = dataclasses.field(default_factory=dict)  # name -> its noise levels

    @property
    def cells(self) -> list[Cell]:
        """Every (model, noise, seed) cell; the index is stable for a given study file."""
        out = []
        for m in self.models:
            for n in self.model_noise.get(m, self.noise_levels):
                for s in self.seeds:
                    out.append(Cell(len(out), m, n, s))
        return out

    @property
    def data_dir(self) -> Path:
        return self.out / "data"

    def cell_result_path(self, cell: Cell) -> Path:
        return self.out / "cells" / f"{cell.name}.json"

    def cell_result(self, cell: Cell) -> dict:
        """A finished cell's result row as written (studies/runner.py), its undefined numbers
        (null in the file) back as NaN, in the row and in its per-epoch ``history``."""
        import run_history
        from json_numbers import nan_for_null

        row = json.loads(self.cell_result_path(cell).read_text(encoding="utf-8"))
        row = nan_for_null(row, keep=("selected_epoch", "history"))
        row["history"] = run_history.read_history(row.get("history"))
        return row

    def cell_config(self, cell: Cell) -> Config:
        """The validated train config of one cell (own dumps folders under ``out/runs``)."""
        d, _ = with_overrides(self.base, self.overrides)
        variant = self.variants.get(cell.model, {})
        d.update({"model_name": cell.model, **variant})  # a variant's keys win over overrides
        if self.sample_archive is not None:
            rec = self.data_dir / "TFRecord"
            d.update(train_tfrecord_paths=str(rec / "train.tfrecord"),
                     val_tfrecord_paths=str(rec / "val.tfrecord"),
                     test_tfrecord_paths=str(rec / "test.tfrecord"))
        # a variant's run folder carries its name: two variants of one model never share it
        tag = cell.model if cell.model != variant.get("model_name", cell.model) or \
            len(variant) > 1 else ""
        suffix = "-".join(p for p in (d.get("suffix", ""), tag, f"seed{cell.seed}") if p)
        runs = self.out / "runs"
        d.update(noise_prcnt=cell.noise_prcnt, seed=cell.seed,
                 suffix=suffix, dumps={k: str(runs / k) for k in
                                       ("model_weights", "summaries", "configs", "features")})
        try:
            return Config.from_dict(d)
        except ConfigError as err:
            where = f"{self.path}: cell {cell.name}"
            raise StudyError("\n".join(label_problems(err.problems, self.cli_overrides, where))) \
                from None


def _list(path, data, key, kind):
    value = data.get(key)
    if not isinstance(value, list) or not value:
        raise StudyError(f"{path}: {key}: expected a non-empty list, got {value!r}")
    for v in value:
        if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise StudyError(f"{path}: {key}: expected integers, got {v!r}")
        if kind is str and not isinstance(v, str):
            raise StudyError(f"{path}: {key}: expected strings, got {v!r}")
    if len(set(value)) != len(value):
        raise StudyError(f"{path}: {key}: duplicate entries in {value!r}")
    return tuple(value)


def _models(path, data, levels) -> tuple[tuple[str, ...], dict, dict]:
    """(cell names, {variant name: its train config keys}, {variant name: its noise levels})
    of the ``models`` list; ``levels``: the study's noise levels."""
    value = data.get("models")
    if not isinstance(value, list) or not value:
        raise StudyError(f"{path}: models: expected a non-empty list, got {value!r}")
    names, variants, noise = [], {}, {}
    train_keys = set(Config.keys())
    for i, m in enumerate(value):
        where = f"{path}: models[{i}]"
        if isinstance(m, str):
            names.append(m)
            continue
        if not isinstance(m, dict):
            raise StudyError(f"{where}: expected a model name or an object with name and "
                             f"model_name, got {m!r}")
        name = m.get("name")
        if not isinstance(name, str) or not name:
            raise StudyError(f"{where}.name: required, a non-empty string (the cell name)")
        if any(c in name for c in "/\\ ") or name in (".", ".."):
            raise StudyError(f"{where}.name: {name!r} names files: no path separators or spaces")
        if not isinstance(m.get("model_name"), str):
            raise StudyError(f"{where}.model_name: required, the model this variant trains")
        if "noise_levels" in m:
            own = _list(path, {f"models[{i}].noise_levels": m["noise_levels"]},
                        f"models[{i}].noise_levels", int)
            extra = [n for n in own if n not in levels]
            if extra:
                raise StudyError(f"{where}.noise_levels: {extra[0]} is not one of the study's "
                                 f"noise_levels {list(levels)}")
            noise[name] = tuple(n for n in levels if n in own)
        for key in m:
            if key in ("name", "noise_levels"):
                continue
            if key in CELL_KEYS and key != "model_name":
                raise StudyError(f"{where}.{key}: set per cell by the study (noise_levels, "
                                 "seeds, out); remove it")
            if key not in train_keys:
                raise StudyError(f"{where}.{key}: unknown key (a variant sets name, "
                                 "model_name and train config keys)")
        names.append(name)
        variants[name] = {k: v for k, v in m.items() if k not in ("name", "noise_levels")}
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise StudyError(f"{path}: models: duplicate entries ({dup!r} twice)")
    return tuple(names), variants, noise


def _sub(path, data, key, defaults):
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise StudyError(f"{path}: {key}: expected an object, got {value!r}")
    unknown = set(value) - set(defaults)
    if unknown:
        raise StudyError(f"{path}: {key}.{sorted(unknown)[0]}: unknown key "
                         f"(valid: {', '.join(defaults)})")
    return {**defaults, **value}


def load_study(path, overrides: dict | None = None) -> Study:
    """Read and validate a study file; every cell's train config is validated too.
    ``overrides`` ({key: value}, from ``--set``) apply to every cell after the file's own."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StudyError(f"{path}: study file not found") from None
    except json.JSONDecodeError as err:
        raise StudyError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise StudyError(f"{path}: expected a JSON object")
    for key in ("base_config", "models", "noise_levels", "seeds", "out"):
        if key not in data:
            raise StudyError(f"{path}: {key}: required key is missing")
    train_keys = set(Config.keys())
    unknown = [k for k in data if k not in STUDY_KEYS and k not in train_keys]
    if unknown:
        raise StudyError(f"{path}: {unknown[0]}: unknown key (study keys: {', '.join(STUDY_KEYS)};"
                         " or any train config key)")
    fixed = [k for k in data if k in CELL_KEYS]
    if fixed:
        raise StudyError(f"{path}: {fixed[0]}: set per cell by the study (models, noise_levels, "
                         "seeds, out); remove it")
    base_path = data["base_config"]
    if not isinstance(base_path, str):
        raise StudyError(f"{path}: base_config: expected a path, got {base_path!r}")
    try:
        base = json.loads(Path(base_path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise StudyError(f"{path}: base_config: cannot read {base_path} ({err})") from None
    if not isinstance(out := data["out"], str) or not out:
        raise StudyError(f"{path}: out: expected a folder path, got {out!r}")
    sample = _sub(path, data, "sample_archive", SAMPLE_KEYS)
    if sample is not None and base.get("dataset", "DLRSD") != "DLRSD":
        raise StudyError(f"{path}: sample_archive: only for dataset DLRSD")
    overrides = dict(overrides or {})
    fixed = [k for k in overrides if k.partition(".")[0] in CELL_KEYS]
    if fixed:
        raise StudyError(f"--set {fixed[0]}: set per cell by the study (models, noise_levels, "
                         "seeds, out); it cannot be overridden")
    _, problems = with_overrides(base, overrides)
    if problems:
        raise StudyError("\n".join(problems))
    levels = _list(path, data, "noise_levels", int)
    models, variants, model_noise = _models(path, data, levels)
    study = Study(path=str(path), base=base, models=models, variants=variants,
                  model_noise=model_noise, noise_levels=levels,
                  seeds=_list(path, data, "seeds", int), out=Path(out),
                  overrides={**{k: v for k, v in data.items() if k in train_keys}, **overrides},
                  cli_overrides=overrides,
                  sample_archive=sample,
                  retrieval=_sub(path, data, "retrieval", RETRIEVAL_KEYS) or dict(RETRIEVAL_KEYS))
    for cell in study.cells:
        study.cell_config(cell)
    return study


def to_dict(study: Study) -> dict[str, Any]:
    """The study as JSON-ready values (written beside the results)."""
    models = []
    for m in study.models:
        if m not in study.variants:
            models.append(m)
            continue
        entry = {"name": m, **study.variants[m]}
        if m in study.model_noise:
            entry["noise_levels"] = list(study.model_noise[m])
        models.append(entry)
    return {"study_file": study.path, "base_config": study.base, "models": models,
            "noise_levels": list(study.noise_levels), "seeds": list(study.seeds),
            "out": str(study.out), "overrides": study.overrides,
            "sample_archive": study.sample_archive, "retrieval": study.retrieval}
