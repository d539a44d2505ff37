"""What a model needs to know, and no more: :class:`ModelConfig`, built from a run Config.

Models read their variant, class count, input shape, output size, backbone and a few
hyper-parameters from here, so they can be built (in tests, benchmarks, other tools) without a
whole run configuration. ``ModelConfig.from_config`` accepts a ``config.Config`` or any object
with the same attribute names (a ``types.SimpleNamespace`` in tests).
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    model_name: str                    # GRID-BCE, ..., BCE, PCE, RRL, MiLaN
    nb_class: int
    input_shape: tuple[int, int, int]  # (H, W, C) of the model's input images
    backbone: str = "densenet121"
    weights: str | None = None         # backbone weight file, None: random initialisation
    embed_dim: int = 128               # GRID latent size E
    seed: int = 0                      # stateless seed of the reparameterisation noise
    noisy_sel_prcnt: int = 10          # share of the batch flagged noisy (GRID)
    kl_weight: float = 1.0
    kl_reduction: str = "latent"       # KL over a latent map (losses/vae.py)
    hash_bits: int = 32                # MiLaN code length
    train_backbone: bool = False       # MiLaN: fine-tune the backbone too
    jit_compile: bool = False          # XLA steps (static-shape relation targets for RRL)

    @property
    def out_size(self) -> int:
        """Size of the RRL target: the upper triangle of a C x C matrix, diagonal included."""
        return self.nb_class * (self.nb_class + 1) // 2

    @property
    def task(self) -> str:
        """"BCE", "PCE" or "RRL" for the GRID variants and baselines."""
        return str(self.model_name).split("-")[-1]

    @property
    def is_grid(self) -> bool:
        return str(self.model_name).upper().startswith("GRID-")

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
        return cls(**values)
