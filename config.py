"""Typed, validated run configuration (the published JSON keys plus this project's new ones).

``Config.from_json(path)`` / ``Config.from_dict(d)`` build a frozen :class:`Config` once; any
unknown key, wrong type, bad value or impossible combination raises :class:`ConfigError`
naming the key (and, for a typo, the closest valid key). Derived values (``nb_class``,
``out_size``, ``input_shape``, ``run_name``, ``noisy_train_paths``, output paths) are properties.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

GRID_MODELS = ("GRID-BCE", "GRID-PCE", "GRID-RRL")
BASELINE_MODELS = ("BCE", "PCE", "RRL")
MODEL_NAMES = GRID_MODELS + BASELINE_MODELS
ROBUST_MODELS = ("SAT", "ELR", "JoCoR")  # label-noise-robust comparisons (models/robust.py)
MODEL_NAMES = MODEL_NAMES + ROBUST_MODELS
DATASETS = ("DLRSD", "BEN")
BACKBONES = ("densenet121", "resnet50", "resnet101", "resnet152", "vgg16", "vgg19",
             "mobilenet_v2", "small_cnn")
OPTIMIZERS = ("Adam", "SGD")
STRATEGIES = ("default", "mirrored", "multi_worker")
DUMP_KEYS = ("model_weights", "summaries", "configs", "features")
DEFAULT_DUMPS = {"model_weights": "dumps/weights", "summaries": "dumps/summaries",
                 "configs": "dumps/configs", "features": "dumps/features"}
# Keys train.py adds to the dumped config; accepted (and ignored) when a dump is loaded back.
OUTPUT_KEYS = ("run_name", "nb_class", "feature_model_path", "training_time_s",
               "noisy_train_paths", "final_metrics")
FEATURE_MODEL_FILE = "feature_model.keras"

# Used only when the archive modules cannot be imported; they are the source of truth.
_FALLBACK = {
    "DLRSD": {"NB_CLASS": 17, "MODEL_INPUT_SHAPE": (224, 224, 3),
              "NOISE_LEVELS": tuple(range(10, 100, 10))},
    "BEN": {"NB_CLASS": 19, "MODEL_INPUT_SHAPE": (120, 120, 10),
            "NOISE_LEVELS": tuple(range(10, 70, 10))},
}
_ARCHIVE_MODULES = {"DLRSD": "archives.dlrsd", "BEN": "archives.ben"}


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key."""


def archive_constant(dataset: str, name: str):
    """``name`` (NB_CLASS, MODEL_INPUT_SHAPE, NOISE_LEVELS) from the archive module, else fallback."""
    try:
        module = importlib.import_module(_ARCHIVE_MODULES[dataset])
        value = getattr(module, name)
    except (ImportError, AttributeError):
        value = _FALLBACK[dataset][name]
    if name in ("MODEL_INPUT_SHAPE", "NOISE_LEVELS"):
        return tuple(int(v) for v in value)
    return int(value)


def _suggest(key: str, valid) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def _check_int(key: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: expected an integer, got {_type_name(value)} {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key}: must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{key}: must be <= {maximum}, got {value}")
    return value


def _check_float(key: str, value, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {_type_name(value)} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{key}: must be finite, got {value}")
    if positive and value <= 0:
        raise ConfigError(f"{key}: must be > 0, got {value}")
    if not positive and value < 0:
        raise ConfigError(f"{key}: must be >= 0, got {value}")
    return value


def _check_str(key: str, value) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {_type_name(value)} {value!r}")
    return value


def _check_choice(key: str, value, choices) -> str:
    value = _check_str(key, value)
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}"
                          f"{_suggest(value, choices)}")
    return value


def _check_paths(key: str, value) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) and p for p in value):
        raise ConfigError(f"{key}: expected a path or a list of paths, got {value!r}")
    return tuple(value)


def _check_dumps(value) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"dumps: expected an object with keys {', '.join(DUMP_KEYS)}, "
                          f"got {_type_name(value)}")
    for sub in value:
        if sub not in DUMP_KEYS:
            raise ConfigError(f"dumps.{sub}: unknown key{_suggest(sub, DUMP_KEYS)} "
                              f"(valid: {', '.join(DUMP_KEYS)})")
    out = dict(DEFAULT_DUMPS)
    for sub, path in value.items():
        if not isinstance(path, str) or not path:
            raise ConfigError(f"dumps.{sub}: expected a non-empty path string, got {path!r}")
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
    strategy: str = "default"

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
        valid = cls.keys()
        for key in data:
            if key in OUTPUT_KEYS:
                continue  # written by train.py into the dumped config; derived again here
            if key not in valid:
                raise ConfigError(f"{key}: unknown key{_suggest(key, valid + OUTPUT_KEYS)} "
                                  f"(valid keys: {', '.join(valid)})")
        for key in ("model_name", "dataset", "train_tfrecord_paths"):
            if key not in data:
                raise ConfigError(f"{key}: required key is missing")
        defaults = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING
                             else f.default)
                    for f in dataclasses.fields(cls)
                    if not (f.default is dataclasses.MISSING
                            and f.default_factory is dataclasses.MISSING)}
        merged = {**defaults, **{k: v for k, v in data.items() if k in valid}}
        return cls(**_validate(merged))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "Config":
        """Read and validate a JSON config file (also accepts a config dumped by train.py)."""
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON ({err})") from None
        return cls.from_dict(data)

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
                  final_metrics: Mapping[str, float] | None = None) -> dict[str, Any]:
        """The dumped config retrieval.py reads: every key plus OUTPUT_KEYS.

        ``final_metrics``: last-epoch means of the training metrics (``dis_loss``, ...,
        ``sel_precision``, ``sel_recall``) and validation losses prefixed ``val_``.
        """
        out = self.to_dict()
        out.update(run_name=self.run_name, nb_class=self.nb_class,
                   feature_model_path=str(self.feature_model_path),
                   training_time_s=training_time_s,
                   noisy_train_paths=list(self.noisy_train_paths),
                   final_metrics=dict(final_metrics or {}))
        return out

    # ---- derived values ---------------------------------------------------------------------
    @property
    def is_grid(self) -> bool:
        return self.model_name in GRID_MODELS

    @property
    def task(self) -> str:
        """"BCE", "PCE" or "RRL": the task loss/head of the variant."""
        return self.model_name.split("-")[-1]

    @property
    def nb_class(self) -> int:
        return archive_constant(self.dataset, "NB_CLASS")

    @property
    def out_size(self) -> int:
        """Size of the RRL target: the upper triangle of a C x C matrix, diagonal included."""
        c = self.nb_class
        return c * (c + 1) // 2

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return archive_constant(self.dataset, "MODEL_INPUT_SHAPE")

    @property
    def noisy_train_paths(self) -> tuple[str, ...]:
        """Training files actually read: basename -> train_noise_prcnt<N>.tfrecord when N > 0."""
        if self.noise_prcnt == 0:
            return self.train_tfrecord_paths
        name = f"train_noise_prcnt{self.noise_prcnt}.tfrecord"
        out: list[str] = []
        for path in self.train_tfrecord_paths:
            noisy = os.path.join(os.path.dirname(path), name)
            if noisy not in out:
                out.append(noisy)
        return tuple(out)

    @property
    def run_name(self) -> str:
        name = (f"{self.dataset}-{self.model_name}-embed{self.embed_dim}"
                f"-noise_prcnt{self.noise_prcnt}-bs{self.batch_size}-epoch{self.nb_epoch}"
                f"-noisy_sel_prcnt{self.noisy_sel_prcnt}")
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


def _validate(d: dict[str, Any]) -> dict[str, Any]:
    """Type- and range-check every key, then the combinations. Returns normalised values."""
    out = dict(d)
    out["model_name"] = _check_choice("model_name", d["model_name"], MODEL_NAMES)
    out["dataset"] = _check_choice("dataset", d["dataset"], DATASETS)
    out["backbone"] = _check_choice("backbone", d["backbone"], BACKBONES)
    out["optimizer"] = _check_choice("optimizer", d["optimizer"], OPTIMIZERS)
    out["strategy"] = _check_choice("strategy", d["strategy"], STRATEGIES)
    for key in ("train_tfrecord_paths", "val_tfrecord_paths", "test_tfrecord_paths"):
        out[key] = _check_paths(key, d[key])
    if not out["train_tfrecord_paths"]:
        raise ConfigError("train_tfrecord_paths: at least one training file is needed")
    out["embed_dim"] = _check_int("embed_dim", d["embed_dim"], minimum=1)
    out["noise_prcnt"] = _check_int("noise_prcnt", d["noise_prcnt"], minimum=0, maximum=100)
    out["noisy_sel_prcnt"] = _check_int("noisy_sel_prcnt", d["noisy_sel_prcnt"], 0, 100)
    out["batch_size"] = _check_int("batch_size", d["batch_size"], minimum=1)
    out["nb_epoch"] = _check_int("nb_epoch", d["nb_epoch"], minimum=1)
    out["gpu"] = _check_int("gpu", d["gpu"], minimum=-1)
    out["seed"] = _check_int("seed", d["seed"], minimum=0, maximum=2**31 - 1)
    out["learning_rate"] = _check_float("learning_rate", d["learning_rate"], positive=True)
    out["kl_weight"] = _check_float("kl_weight", d["kl_weight"])
    out["dumps"] = _check_dumps(d["dumps"])
    suffix = _check_str("suffix", d["suffix"])
    if any(c in suffix for c in "/\\") or suffix in (".", ".."):
        raise ConfigError(f"suffix: must not contain path separators, got {suffix!r}")
    out["suffix"] = suffix
    weights = d["weights"]
    if weights is not None:
        weights = _check_str("weights", weights)
        if not os.path.isfile(weights):
            raise ConfigError(f"weights: file {weights!r} does not exist (nothing is downloaded; "
                              "use null for random initialisation)")
    out["weights"] = weights

    dataset, model = out["dataset"], out["model_name"]
    if dataset == "BEN" and model.split("-")[-1] in ("PCE", "RRL"):
        raise ConfigError(f"model_name: {model!r} needs pixel maps, which BEN does not have; "
                          "use GRID-BCE or BCE with dataset BEN")
    levels = archive_constant(dataset, "NOISE_LEVELS")
    if out["noise_prcnt"] != 0 and out["noise_prcnt"] not in levels:
        raise ConfigError(f"noise_prcnt: {out['noise_prcnt']} is not offered for {dataset} "
                          f"(0 or one of {', '.join(map(str, levels))})")
    return out
