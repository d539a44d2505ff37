"""What a model needs to know, and no more: :class:`ModelConfig`, built from a run Config.

Models read their variant, class count, input shape, backbone, hyper-parameters and their
training data (files, archive description, batch size, epochs, work folder) from here, so they
can be built (in tests, benchmarks, other tools) without a whole run configuration.
``ModelConfig.from_config`` accepts a ``config.Config`` or any object with the same attribute
names (a ``types.SimpleNamespace`` in tests). ``task`` and ``is_grid`` come from the model
registry (models/registry.py), ``out_size`` from the class count.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from archives.registry import relation_size
from models import registry


def _data(default):
    return dataclasses.field(default=default, compare=False)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    model_name: str                    # a name of models/registry.py
    nb_class: int
    input_shape: tuple[int, int, int]  # (H, W, C) of the model's input images
    backbone: str = "densenet121"
    weights: str | None = None         # backbone weight file, None: random initialisation
    embed_dim: int = 128               # GRID latent size E
    seed: int = 0                      # stateless seed of the reparameterisation noise
    noisy_sel_prcnt: int = 10          # share of the batch flagged noisy (GRID; JoCoR's tau)
    kl_weight: float = 1.0
    kl_reduction: str = "latent"       # KL over a latent map (losses/vae.py)
    hash_bits: int = 32                # MiLaN code length
    train_backbone: bool = False       # MiLaN: fine-tune the backbone too
    triplet_labels: str = "label"      # MiLaN: relevance of triplets ("label" or "scene")
    feature_layer: str = "pooling"     # retrieval feature: pooled backbone or class scores
    jit_compile: bool = False          # XLA steps (static-shape relation targets for RRL)
    # the training data (models.base.Model.batches) and the run's own folder (caches); not
    # part of the model's identity (two configs equal in the fields above build equal models)
    batch_size: int = _data(128)
    nb_epoch: int = _data(1)
    noisy_train_paths: tuple[str, ...] = _data(())
    archive: Any = _data(None)         # archives.registry.ArchiveInfo of the run
    dataset: str = _data("")
    bands: str | None = _data(None)    # the config's band-set key (None: archive default)
    weights_dir: Any = _data(None)     # the run's weights folder (MiLaN's feature cache)

    @property
    def info(self) -> registry.ModelInfo:
        return registry.get(self.model_name)

    @property
    def out_size(self) -> int:
        """Size of the RRL target: the upper triangle of a C x C matrix, diagonal included."""
        return relation_size(self.nb_class)

    @property
    def task(self) -> str:
        """"BCE", "PCE" or "RRL" for the GRID variants and baselines (models/registry.py)."""
        return self.info.task

    @property
    def is_grid(self) -> bool:
        return self.info.is_grid

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_config(cls, cfg) -> "ModelConfig":
        """The model's part of ``cfg`` (a ModelConfig is returned as is)."""
        if isinstance(cfg, cls):
            return cfg
        values = {}
        for f in dataclasses.fields(cls):
            if hasattr(cfg, f.name):
                values[f.name] = getattr(cfg, f.name)
            elif f.default is dataclasses.MISSING:
                raise ValueError(f"model config: {f.name!r} is missing from {type(cfg).__name__}")
        values["input_shape"] = tuple(int(v) for v in values["input_shape"])
        values["nb_class"] = int(values["nb_class"])
        values["seed"] = int(values.get("seed") or 0)
        values["noisy_train_paths"] = tuple(values.get("noisy_train_paths") or ())
        return cls(**values)
