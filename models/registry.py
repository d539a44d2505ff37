"""One light description per ``model_name``: what config, training, retrieval, studies and the
demo need to know about a model, without importing it (no TensorFlow here; the model's module is
imported on first use, as ``archives/registry.py`` does for archives).

Adding a model = its module (a :class:`models.base.Model` subclass) plus one :class:`ModelInfo`
entry (``register`` it, or add it to ``MODELS`` below); see docs/contributing.md.
Rules elsewhere read fields of the entry (``is_grid``, ``pixel_maps``, ``strategies``, ...),
never the model's name.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Mapping

# backbone names a config may give (models/backbones.py builds every one)
BACKBONES = ("densenet121", "resnet50", "resnet101", "resnet152", "vgg16", "vgg19",
             "mobilenet_v2", "small_cnn", "inception_v3")
STRATEGIES = ("default", "mirrored", "multi_worker")
MIXED_PRECISION = ("off", "mixed_float16", "mixed_bfloat16")  # "off" or a Keras dtype policy

# A check of the model's own config rules: (validated config values, archive description or
# None) -> "<key>: <problem>" or None. Runs after every key was type-checked.
Check = Callable[[Mapping[str, object], object], "str | None"]


@dataclass(frozen=True)
class ModelInfo:
    """What the rest of the project knows about one model_name."""

    name: str                       # the config's "model_name" value
    model_class: str                # "module:Class", a models.base.Model subclass
    family: str                     # "grid", "robust", "hashing", "features" (docs, tables)
    task: str                       # loss/head: "BCE", "PCE", "RRL"; "hash"; "none"
    is_grid: bool = False           # GRID's VAE branch and noisy-sample selection
    pixel_maps: bool = False        # trains on pixel maps (needs an archive that has them)
    strategies: tuple[str, ...] = ("default",)  # tf.distribute strategies it runs under
    jit: bool = False               # XLA-compiled steps offered (``jit_compile``)
    mixed_precision: bool = False   # float16 compute offered
    retrieval_metric: str | None = None  # retrieval.py's default distance (None: its own)
    binary_codes: bool = False      # retrieval also stores packed codes of its sigmoid outputs
    # run-name parts after the common ones: (config key, format), e.g. ("hash_bits", "bits{}")
    run_name_extras: tuple[tuple[str, str], ...] = ()
    feature_layers: tuple[str, ...] = ("pooling",)  # ``feature_layer`` values it offers
    keys: tuple[str, ...] = ()      # config keys only this model reads (documentation)
    checks: tuple[Check, ...] = ()  # its own config rules

    def load(self):
        """The model class (its module is imported on first use; it imports TensorFlow)."""
        module, cls = self.model_class.split(":")
        return getattr(importlib.import_module(module), cls)

    def problems(self, values: Mapping[str, object], archive) -> list[str]:
        """The messages of this model's own config rules that ``values`` break."""
        return [msg for check in self.checks if (msg := check(values, archive))]


def _triplet_batches(values, archive) -> str | None:
    if isinstance(values["batch_size"], int) and values["batch_size"] % 3:
        return ("batch_size: MiLaN batches hold triplets (anchor, positive, negative); "
                f"use a multiple of 3, got {values['batch_size']}")
    return None


def _grid(name: str, task: str, is_grid: bool) -> ModelInfo:
    return ModelInfo(name, "models.grid:GridModel", "grid", task, is_grid=is_grid,
                     pixel_maps=task in ("PCE", "RRL"), strategies=STRATEGIES, jit=True,
                     feature_layers=("pooling", "output") if task == "BCE" else ("pooling",))


def _robust(name: str) -> ModelInfo:
    return ModelInfo(name, f"models.robust:{name}Model", "robust", "BCE")


MODELS: dict[str, ModelInfo] = {m.name: m for m in (
    _grid("GRID-BCE", "BCE", True), _grid("GRID-PCE", "PCE", True),
    _grid("GRID-RRL", "RRL", True),
    _grid("BCE", "BCE", False), _grid("PCE", "PCE", False), _grid("RRL", "RRL", False),
    _robust("SAT"), _robust("ELR"), _robust("JoCoR"),
    ModelInfo("MiLaN", "models.milan:MilanModel", "hashing", "hash", retrieval_metric="hamming",
              binary_codes=True, run_name_extras=(("hash_bits", "bits{}"),),
              keys=("hash_bits", "train_backbone", "triplet_labels"),
              checks=(_triplet_batches,)),
    ModelInfo("OffTheShelf", "models.off_the_shelf:OffTheShelfModel", "features", "none",
              retrieval_metric="cosine"),
)}


def names() -> tuple[str, ...]:
    return tuple(MODELS)


def get(name: str) -> ModelInfo:
    """The entry of ``name``; ValueError naming the valid ones when there is none."""
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model_name {name!r}; expected one of "
                         f"{', '.join(MODELS)}") from None


def register(info: ModelInfo, replace: bool = False) -> ModelInfo:
    """Add a model (a plugin, a test's toy model); ValueError if the name is taken."""
    if info.name in MODELS and not replace:
        raise ValueError(f"model_name {info.name!r} is already registered")
    MODELS[info.name] = info
    return info


def unregister(name: str) -> None:
    MODELS.pop(name, None)

