"""Typed, validated run configuration (the published JSON keys plus this project's new ones).

``Config.from_json(path)`` / ``Config.from_dict(d)`` build a frozen :class:`Config` once; any
unknown key, wrong type, bad value or impossible combination raises :class:`ConfigError`
naming the key (and, for a typo, the closest valid key). Every mistake of a config is reported
at once: while ``from_dict`` validates, the ``_check_*`` helpers and ``_fail`` record a problem
and go on (a new key needs one ``out[key] = _check_...(key, d[key], ...)`` line in ``_validate``). Derived values (``nb_class``,
``out_size``, ``input_shape``, ``run_name``, ``noisy_train_paths``, output paths) are properties.
"""
from __future__ import annotations

import contextvars
import dataclasses
import difflib
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from archives import registry
from models import registry as models
from config_error import ConfigError  # noqa: F401  (re-exported: callers import it from here)
from models.registry import BACKBONES, MIXED_PRECISION, STRATEGIES
from models.weights_file import weights_file_problem

TRIPLET_LABELS = ("label", "scene")
FEATURE_LAYERS = ("pooling", "output")
DATASETS = registry.names()  # at import; validation reads the registry itself
OPTIMIZERS = ("Adam", "SGD")
KL_REDUCTIONS = ("latent", "published")  # as losses/vae.py (tests check they agree)
SELECT = ("last", "best_val")  # which epoch's feature model is exported
DUMP_KEYS = ("model_weights", "summaries", "configs", "features")
DEFAULT_DUMPS = {"model_weights": "dumps/weights", "summaries": "dumps/summaries",
                 "configs": "dumps/configs", "features": "dumps/features"}
# Keys train.py adds to the dumped config; accepted (and ignored) when a dump is loaded back.
OUTPUT_KEYS = ("run_name", "nb_class", "feature_model_path", "training_time_s",
               "noisy_train_paths", "final_metrics", "history", "selected_epoch")
FEATURE_MODEL_FILE = "feature_model.keras"


# the problems of the config being validated (None: raise at the first one)
_PROBLEMS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("_PROBLEMS",
                                                                             default=None)


def _fail(message: str, value=None):
    """Record ``message`` ("<key>: <what>") and return ``value``, or raise it when no config is
    being collected. Only the first problem of a key is kept."""
    problems = _PROBLEMS.get()
    if problems is None:
        raise ConfigError(message)
    key = message.split(":", 1)[0]
    if key not in _failed_keys(problems):
        problems.append(message)
    return value


def _failed_keys(problems) -> set[str]:
    return {m.split(":", 1)[0] for m in problems}


def _bad(*keys: str) -> bool:
    """Whether any of ``keys`` already has a recorded problem (skip checks that build on it)."""
    return bool(_failed_keys(_PROBLEMS.get() or []) & set(keys))


def _suggest(key: str, valid) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def _check_int(key: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        return _fail(f"{key}: expected an integer, got {_type_name(value)} {value!r}", value)
    if minimum is not None and value < minimum:
        return _fail(f"{key}: must be >= {minimum}, got {value}", value)
    if maximum is not None and value > maximum:
        return _fail(f"{key}: must be <= {maximum}, got {value}", value)
    return value


def _check_float(key: str, value, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _fail(f"{key}: expected a number, got {_type_name(value)} {value!r}", value)
    value = float(value)
    if not math.isfinite(value):
        return _fail(f"{key}: must be finite, got {value}", value)
    if positive and value <= 0:
        return _fail(f"{key}: must be > 0, got {value}", value)
    if not positive and value < 0:
        return _fail(f"{key}: must be >= 0, got {value}", value)
    return value


def _check_str(key: str, value) -> str:
    if not isinstance(value, str):
        return _fail(f"{key}: expected a string, got {_type_name(value)} {value!r}", value)
    return value


def _check_bool(key: str, value) -> bool:
    if not isinstance(value, bool):
        return _fail(f"{key}: expected true or false, got {_type_name(value)} {value!r}", value)
    return value


def _check_choice(key: str, value, choices) -> str:
    value = _check_str(key, value)
    if isinstance(value, str) and value not in choices:
        return _fail(f"{key}: {value!r} is not one of {', '.join(choices)}"
                     f"{_suggest(value, choices)}", value)
    return value


def _check_paths(key: str, value) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) and p for p in value):
        return _fail(f"{key}: expected a path or a list of paths, got {value!r}", ())
    return tuple(value)


def _check_dumps(value) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return _fail(f"dumps: expected an object with keys {', '.join(DUMP_KEYS)}, "
                     f"got {_type_name(value)}", dict(DEFAULT_DUMPS))
    out = dict(DEFAULT_DUMPS)
    for sub, path in value.items():
        if sub not in DUMP_KEYS:
            _fail(f"dumps.{sub}: unknown key{_suggest(sub, DUMP_KEYS)} "
                  f"(valid: {', '.join(DUMP_KEYS)})")
        elif not isinstance(path, str) or not path:
            _fail(f"dumps.{sub}: expected a non-empty path string, got {path!r}")
        else:
            out[sub] = path
    return out


@dataclasses.dataclass(frozen=True)
class Config:
    """One training/retrieval run. Build with ``from_json`` / ``from_dict`` (validated)."""

    model_name: str
    dataset: str
    train_tfrecord_paths: tuple[str, ...]
    val_tfrecord_paths: tuple[str, ...] = ()
    test_tfrecord_paths: tuple[str, ...] = ()
    embed_dim: int = 128
    noise_prcnt: int = 0
    noisy_sel_prcnt: int = 10
    batch_size: int = 128
    nb_epoch: int = 100
    optimizer: str = "Adam"
    learning_rate: float = 1e-3
    dumps: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(DEFAULT_DUMPS))
    gpu: int = 0
    suffix: str = ""
    backbone: str = "densenet121"
    weights: str | None = None
    seed: int = 0
    kl_weight: float = 1.0
    kl_reduction: str = "latent"  # KL over a latent map: "latent" (ours) or "published"
    strategy: str = "default"
    jit_compile: bool = False  # XLA-compile the training and evaluation steps (GRID/baselines)
    # compute in float16/bfloat16, variables and losses in float32 (docs/training.md)
    mixed_precision: str = "off"
    # MiLaN and deep features (docs/hashing.md)
    hash_bits: int = 32
    train_backbone: bool = False
    triplet_labels: str = "label"
    feature_layer: str = "pooling"
    # per-epoch validation retrieval and memorisation (docs/studies.md): every N epochs (0: off;
    # the last epoch is always measured), on at most N validation queries / training records
    val_retrieval_every: int = 1
    val_retrieval_queries: int = 1000
    val_retrieval_archive: int = 10000
    select: str = "last"  # exported feature model: "last" epoch or "best_val" retrieval epoch
    # input band set of an archive that offers several (BENv2: "s2", "s1", "s1s2"); None: default
    bands: str | None = None

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The JSON keys a config may hold (besides the ignored OUTPUT_KEYS)."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Config":
        """Validate a plain dict (e.g. parsed JSON) and build the Config."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"config: expected a JSON object, got {_type_name(data)}")
        problems: list[str] = []
        token = _PROBLEMS.set(problems)
        try:
            return cls._from_dict(data)
        finally:
            _PROBLEMS.reset(token)
            if problems:  # raised here, after the reset, so a caller sees every problem
                raise ConfigError(problems)

    @classmethod
    def _from_dict(cls, data: Mapping[str, Any]) -> "Config | None":
        valid = cls.keys()
        for key in data:
            if key in OUTPUT_KEYS:
                continue  # written by train.py into the dumped config; derived again here
            if key not in valid:
                _fail(f"{key}: unknown key{_suggest(key, valid + OUTPUT_KEYS)} "
                      f"(valid keys: {', '.join(valid)})")
        required = ("model_name", "dataset", "train_tfrecord_paths")
        for key in required:
            if key not in data:
                _fail(f"{key}: required key is missing")
        defaults = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING
                             else f.default)
                    for f in dataclasses.fields(cls)
                    if not (f.default is dataclasses.MISSING
                            and f.default_factory is dataclasses.MISSING)}
        merged = {**defaults, **{k: v for k, v in data.items() if k in valid}}
        merged.update({k: _MISSING for k in required if k not in data})
        out = _validate(merged)
        return None if _PROBLEMS.get() else cls(**out)

    @classmethod
    def from_json(cls, path: str | os.PathLike,
                  overrides: Mapping[str, Any] | None = None) -> "Config":
        """Read and validate a JSON config file (also accepts a config dumped by train.py).

        ``overrides`` ({key: value}, e.g. from ``--set``) replace the file's keys before
        validation (see ``with_overrides``); their problems are reported as ``--set <key>: ...``
        together with the file's own."""
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except IsADirectoryError:
            raise ConfigError(f"{path}: is a folder, expected a JSON config file") from None
        except UnicodeDecodeError as err:
            raise ConfigError(f"{path}: not UTF-8 text (byte offset {err.start})") from None
        except OSError as err:
            raise ConfigError(f"{path}: config file cannot be read ({err.strerror or err})") \
                from None
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON ({err})") from None
        set_problems: list[str] = []
        if overrides and isinstance(data, Mapping):
            data, set_problems = with_overrides(data, overrides)
        try:
            cfg = cls.from_dict(data)
        except ConfigError as err:  # every problem, each naming the file (or --set) and its key
            raise ConfigError(set_problems + label_problems(err.problems, overrides, path)) \
                from None
        if set_problems:
            raise ConfigError(set_problems)
        object.__setattr__(cfg, "_source", str(path))  # not a key: error messages name the file
        return cfg

    @property
    def source(self) -> str | None:
        """The JSON file this config was read from (None when built otherwise)."""
        return getattr(self, "_source", None)

    def replace(self, **changes) -> "Config":
        """A validated copy with some keys changed."""
        return type(self).from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """Every config key as JSON-ready values (lists for paths)."""
        out = {}
        for key in self.keys():
            value = getattr(self, key)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[key] = value
        return out

    def dump_dict(self, training_time_s: float | None = None,
                  final_metrics: Mapping[str, float] | None = None,
                  history: list | None = None, selected_epoch: int | None = None
                  ) -> dict[str, Any]:
        """The dumped config retrieval.py reads: every key plus OUTPUT_KEYS.

        ``final_metrics``: last-epoch means of the training metrics (``dis_loss``, ...,
        ``sel_precision``, ``sel_recall``) and validation losses prefixed ``val_``.
        ``history``: one dict per epoch (training means, validation retrieval, memorisation);
        ``selected_epoch``: the epoch whose feature model was exported (``select``).
        """
        out = self.to_dict()
        out.update(run_name=self.run_name, nb_class=self.nb_class,
                   feature_model_path=str(self.feature_model_path),
                   training_time_s=training_time_s,
                   noisy_train_paths=list(self.noisy_train_paths),
                   final_metrics=dict(final_metrics or {}),
                   history=list(history or []), selected_epoch=selected_epoch)
        return out

    # ---- derived values ---------------------------------------------------------------------
    @property
    def model(self) -> models.ModelInfo:
        """The model's entry in models/registry.py."""
        return models.get(self.model_name)

    @property
    def is_grid(self) -> bool:
        return self.model.is_grid

    @property
    def task(self) -> str:
        """"BCE", "PCE" or "RRL": the task loss/head of the variant (models/registry.py)."""
        return self.model.task

    @property
    def uses_pixel_maps(self) -> bool:
        """Whether the model trains on pixel maps (PCE, RRL), so reads the map noise rule."""
        return self.model.pixel_maps

    @property
    def archive(self) -> registry.ArchiveInfo:
        """The light description of ``dataset`` (archives/registry.py) for this run: its band
        set (``bands``) and, for a model that uses pixel maps, the archive's map parse options."""
        info = registry.get(self.dataset)
        return info.with_bands(self.bands or info.band_set).for_pixel_maps(self.uses_pixel_maps)

    @property
    def nb_class(self) -> int:
        return self.archive.nb_class

    @property
    def out_size(self) -> int:
        """Size of the RRL target: the upper triangle of a C x C matrix, diagonal included."""
        return self.archive.out_size

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.archive.model_input_shape

    @property
    def noisy_train_paths(self) -> tuple[str, ...]:
        """Training files actually read when N = noise_prcnt > 0: beside records of a sharded
        prep (records_meta.json says so), the train paths plus the level's noise overlay
        ``train_noise_prcnt<N>.overlay.npz``; otherwise train_noise_prcnt<N>.tfrecord in
        place of each train file (docs/full-scale.md)."""
        from archives.record_files import overlay_name
        from archives.records_meta import overlay_layout

        if self.noise_prcnt == 0:
            return self.train_tfrecord_paths
        name = f"train_noise_prcnt{self.noise_prcnt}.tfrecord"
        out: list[str] = []
        overlays: list[str] = []
        for path in self.train_tfrecord_paths:
            folder = os.path.dirname(path)
            if overlay_layout(folder or "."):
                noisy, overlay = path, os.path.join(folder, overlay_name(self.noise_prcnt))
                if overlay not in overlays:
                    overlays.append(overlay)
            else:
                noisy = os.path.join(folder, name)
            if noisy not in out:
                out.append(noisy)
        return tuple(out + overlays)

    @property
    def run_name(self) -> str:
        name = (f"{self.dataset}-{self.model_name}-embed{self.embed_dim}"
                f"-noise_prcnt{self.noise_prcnt}-bs{self.batch_size}-epoch{self.nb_epoch}"
                f"-noisy_sel_prcnt{self.noisy_sel_prcnt}")
        for key, fmt in self.model.run_name_extras:  # e.g. MiLaN's code length
            name += "-" + fmt.format(getattr(self, key))
        if self.bands is not None and self.bands != registry.get(self.dataset).band_set:
            name += f"-bands_{self.bands}"  # only off the default: existing names stay
        if self.mixed_precision != "off":  # likewise: float32 runs keep their names
            name += f"-{self.mixed_precision}"
        return f"{name}-{self.suffix}" if self.suffix else name

    @property
    def weights_dir(self) -> Path:
        return Path(self.dumps["model_weights"]) / self.run_name

    @property
    def checkpoint_dir(self) -> Path:
        return self.weights_dir / "checkpoints"

    @property
    def feature_model_path(self) -> Path:
        return self.weights_dir / FEATURE_MODEL_FILE

    @property
    def summaries_dir(self) -> Path:
        return Path(self.dumps["summaries"]) / self.run_name

    @property
    def config_dump_path(self) -> Path:
        return Path(self.dumps["configs"]) / f"{self.run_name}.json"

    @property
    def features_dir(self) -> Path:
        return Path(self.dumps["features"]) / self.run_name


_MISSING = object()  # a required key that is absent (already reported)


def restore_dump(data: dict) -> dict:
    """A dumped config as read from JSON, with its undefined numbers back: the null values of
    ``final_metrics`` and of each ``history`` entry as NaN (the dump writes NaN as null)."""
    import run_history
    from json_numbers import nan_for_null

    out = dict(data)
    if isinstance(out.get("final_metrics"), Mapping):
        out["final_metrics"] = nan_for_null(out["final_metrics"])
    if isinstance(out.get("history"), list):
        out["history"] = run_history.read_history(out["history"])
    return out


def read_dump(path: str | os.PathLike) -> dict:
    """The config train.py dumped at ``path`` (``restore_dump``). ValueError naming the file
    when it is not JSON or not an object; OSError when it cannot be read."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object (a dumped run config), "
                         f"got {type(data).__name__}")
    return restore_dump(data)


def with_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any]
                   ) -> tuple[dict[str, Any], list[str]]:
    """``data`` with ``overrides`` applied in order: ``key`` replaces the key's value, a dotted
    ``key.sub`` sets one entry of an object-valued key (``dumps.features``). Returns the merged
    dict and the problems (``--set <key>: ...``) that validation would not name: keys train.py
    derives (OUTPUT_KEYS), a dotted key under a key that is not an object."""
    out = dict(data)
    problems = []
    for key, value in overrides.items():
        head, dot, sub = key.partition(".")
        if head in OUTPUT_KEYS:
            problems.append(f"--set {key}: derived by train.py, not a config key")
        elif dot:
            base = out.get(head, DEFAULT_DUMPS if head == "dumps" else None)
            if head not in Config.keys():
                problems.append(f"--set {key}: unknown key{_suggest(head, Config.keys())}")
            elif not isinstance(base, Mapping):
                problems.append(f"--set {key}: {head} is not an object")
            else:
                out[head] = {**base, sub: value}
        else:
            out[key] = value
    return out, problems


def label_problems(problems, overrides: Mapping[str, Any] | None, source) -> list[str]:
    """Each validation problem prefixed by where its key came from: ``--set`` for a key that an
    override set (or one entry of), else ``source`` (the config file)."""
    over = set(overrides or ())
    out = []
    for p in problems:
        key = p.split(":", 1)[0]
        came_from_set = key in over or key.partition(".")[0] in over
        out.append(f"--set {p}" if came_from_set else f"{source}: {p}")
    return out


def _validate(d: dict[str, Any]) -> dict[str, Any]:
    """Type- and range-check every key, then the combinations (each only when the keys it
    builds on are valid). Returns normalised values; problems are recorded through ``_fail``."""
    d = {k: (None if v is _MISSING else v) for k, v in d.items()}
    out = dict(d)
    out["model_name"] = _check_choice("model_name", d["model_name"], models.names())
    out["dataset"] = _check_choice("dataset", d["dataset"], registry.names())
    out["backbone"] = _check_choice("backbone", d["backbone"], BACKBONES)
    out["optimizer"] = _check_choice("optimizer", d["optimizer"], OPTIMIZERS)
    out["strategy"] = _check_choice("strategy", d["strategy"], STRATEGIES)
    out["mixed_precision"] = _check_choice("mixed_precision", d["mixed_precision"],
                                           MIXED_PRECISION)
    for key in ("train_tfrecord_paths", "val_tfrecord_paths", "test_tfrecord_paths"):
        out[key] = _check_paths(key, d[key])
    if not out["train_tfrecord_paths"]:
        _fail("train_tfrecord_paths: at least one training file is needed")
    out["embed_dim"] = _check_int("embed_dim", d["embed_dim"], minimum=1)
    out["noise_prcnt"] = _check_int("noise_prcnt", d["noise_prcnt"], minimum=0, maximum=100)
    out["noisy_sel_prcnt"] = _check_int("noisy_sel_prcnt", d["noisy_sel_prcnt"], 0, 100)
    out["batch_size"] = _check_int("batch_size", d["batch_size"], minimum=1)
    out["nb_epoch"] = _check_int("nb_epoch", d["nb_epoch"], minimum=1)
    out["gpu"] = _check_int("gpu", d["gpu"], minimum=-1)
    out["seed"] = _check_int("seed", d["seed"], minimum=0, maximum=2**31 - 1)
    out["learning_rate"] = _check_float("learning_rate", d["learning_rate"], positive=True)
    out["kl_weight"] = _check_float("kl_weight", d["kl_weight"])
    out["kl_reduction"] = _check_choice("kl_reduction", d["kl_reduction"], KL_REDUCTIONS)
    _validate_curve_keys(d, out)
    out["dumps"] = _check_dumps(d["dumps"])
    suffix = _check_str("suffix", d["suffix"])
    if isinstance(suffix, str) and (any(c in suffix for c in "/\\") or suffix in (".", "..")):
        _fail(f"suffix: must not contain path separators, got {suffix!r}")
    out["suffix"] = suffix
    weights = d["weights"]
    if weights is not None:
        weights = _check_str("weights", weights)
        if isinstance(weights, str) and not os.path.isfile(weights):
            _fail(f"weights: file {weights!r} does not exist (nothing is downloaded; "
                  "use null for random initialisation)")
        elif isinstance(weights, str) and (problem := weights_file_problem(weights)):
            _fail(f"weights: {weights!r} is not a Keras weights file ({problem}); expected an "
                  "HDF5 .weights.h5 / .h5 file (Model.save_weights, the Keras-applications "
                  "notop files) or a .keras file")
    out["weights"] = weights

    _validate_milan_keys(d, out)
    dataset, model = out["dataset"], out["model_name"]
    info = None if _bad("dataset") else registry.get(dataset)
    out["jit_compile"] = _check_bool("jit_compile", d["jit_compile"])
    if not _bad("model_name"):
        _validate_model_rules(models.get(model), out, info)
    if info and not _bad("triplet_labels") and out["triplet_labels"] == "scene" and \
            not info.scene_classes:
        _fail("triplet_labels: 'scene' reads the scene class from patch names (UC Merced's "
              f"in DLRSD); dataset {dataset} has none (use 'label')")
    if d["bands"] is not None:
        out["bands"] = _check_str("bands", d["bands"])
        if info and isinstance(out["bands"], str):
            try:
                info.with_bands(out["bands"])
            except ValueError as err:
                _fail(str(err))
    if info and not _bad("noise_prcnt"):
        levels = info.noise_levels
        if out["noise_prcnt"] != 0 and out["noise_prcnt"] not in levels:
            _fail(f"noise_prcnt: {out['noise_prcnt']} is not offered for {dataset} "
                  f"(0 or one of {', '.join(map(str, levels))})")
    return out


def _validate_curve_keys(d: dict[str, Any], out: dict[str, Any]) -> None:
    """val_retrieval_every / _queries / _archive and select (per-epoch validation retrieval)."""
    for key in ("val_retrieval_every", "val_retrieval_queries", "val_retrieval_archive"):
        out[key] = _check_int(key, d[key], minimum=0)
    out["select"] = _check_choice("select", d["select"], SELECT)
    if out["select"] != "best_val" or _bad("select"):
        return
    if out["val_retrieval_every"] == 0:
        _fail("select: 'best_val' chooses the epoch by validation retrieval, which "
              "val_retrieval_every 0 turns off; use val_retrieval_every >= 1 or select 'last'")
    elif not out["val_tfrecord_paths"]:
        _fail("select: 'best_val' needs validation records (val_tfrecord_paths) to choose the "
              "epoch; add them or use select 'last'")
    elif d["model_name"] == "OffTheShelf":
        _fail("select: OffTheShelf trains nothing, so has no epochs to choose; use 'last'")


def _validate_model_rules(model: models.ModelInfo, out: dict[str, Any], info) -> None:
    """The rules of the model's registry entry: pixel maps, strategies, XLA steps, feature
    layers, and the model's own checks."""
    name = model.name
    if info and model.pixel_maps and not info.has_pixel_maps:
        usable = _names(lambda m: m.family == "grid" and not m.pixel_maps)
        _fail(f"model_name: {name!r} needs pixel maps, which {info.name} does not have; "
              f"use {usable} with dataset {info.name}")
    if not _bad("strategy") and out["strategy"] not in model.strategies:
        _fail(f"strategy: {name} runs on one device; use 'default', got {out['strategy']!r}")
    if out["jit_compile"] is True and not _bad("strategy"):
        if not model.jit:
            _fail(f"jit_compile: XLA steps are offered for {_names(lambda m: m.jit)}, "
                  f"not {name!r}; use false")
        elif out["strategy"] != "default":
            _fail(f"jit_compile: XLA steps run on one device; use strategy 'default', "
                  f"got {out['strategy']!r}")
    layer = out["feature_layer"]
    if not _bad("feature_layer") and layer not in model.feature_layers:
        _fail(f"feature_layer: {layer!r} needs model_name "
              f"{_names(lambda m: layer in m.feature_layers)}, got {name!r}")
    for problem in model.problems(out, info):
        _fail(problem)


def _names(rule) -> str:
    """The registered model names that satisfy ``rule(info)``, as "A, B or C"."""
    names = [m.name for m in models.MODELS.values() if rule(m)]
    return " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def _validate_milan_keys(d: dict[str, Any], out: dict[str, Any]) -> None:
    """hash_bits, train_backbone, triplet_labels, feature_layer (MiLaN / deep features)."""
    out["hash_bits"] = _check_int("hash_bits", d["hash_bits"], minimum=8, maximum=4096)
    if not _bad("hash_bits") and out["hash_bits"] % 8:
        _fail(f"hash_bits: codes are stored as packed bytes; use a multiple of 8, "
              f"got {out['hash_bits']}")
    out["train_backbone"] = _check_bool("train_backbone", d["train_backbone"])
    out["triplet_labels"] = _check_choice("triplet_labels", d["triplet_labels"], TRIPLET_LABELS)
    out["feature_layer"] = _check_choice("feature_layer", d["feature_layer"], FEATURE_LAYERS)
