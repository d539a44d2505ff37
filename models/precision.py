"""Mixed precision (config key ``mixed_precision``: "off", "mixed_float16", "mixed_bfloat16").

Layers built while a mixed policy is set compute in the low dtype and keep float32 variables;
every loss casts the model outputs to float32 (losses/), so the losses, the noisy selection and
the KL are float32; float16 adds dynamic loss scaling (``keras.optimizers.LossScaleOptimizer``:
each loss is multiplied by ``optimizer.scale_loss`` inside the tape, and the one
``apply_gradients`` divides all gradients by the same scale, or skips a step whose gradients
overflowed and halves the scale). Exported models give float32 outputs. See docs/training.md.
"""
from __future__ import annotations

import contextlib
import functools

import keras

from models.registry import MIXED_PRECISION as POLICIES  # "off" and the Keras policy names


def policy_name(cfg) -> str:
    """The config's policy ("off" when the key is absent: plain configs, tests)."""
    return getattr(cfg, "mixed_precision", None) or "off"


@contextlib.contextmanager
def policy_scope(name: str):
    """Set Keras' global dtype policy to ``name`` (nothing for "off") while the block runs,
    and restore the one before afterwards, also on errors (tests share one process)."""
    if name not in POLICIES:
        raise ValueError(f"mixed_precision: {name!r} is not one of {', '.join(POLICIES)}")
    if name == "off":
        yield
        return
    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


def with_config_policy(fn):
    """Decorator: run ``fn(cfg, ...)`` under ``cfg``'s mixed-precision policy."""
    @functools.wraps(fn)
    def wrapper(cfg, *args, **kwargs):
        with policy_scope(policy_name(cfg)):
            return fn(cfg, *args, **kwargs)
    return wrapper


def loss_scaled(optimizer, cfg):
    """``optimizer`` wrapped in a LossScaleOptimizer for float16 (its range needs it);
    unchanged otherwise (bfloat16 has float32's exponent range)."""
    if policy_name(cfg) == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def float32_output(model: keras.Model) -> keras.Model:
    """``model`` with its output cast to float32 (the exported feature/retrieval model), or the
    model itself when its output is float32 already."""
    if str(model.output.dtype) == "float32":
        return model
    out = keras.layers.Identity(dtype="float32", name="float32_output")(model.output)
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs  # same call structure
    return keras.Model(inputs, out, name=model.name)
