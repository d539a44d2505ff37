"""Region-relation head (GRID-RRL / RRL): feature (B, F) -> relations (B, C(C+1)/2)."""
import keras
from keras import layers

from losses.relations import relation_targets_tf
from losses.task import mse_per_sample

POOLED = True


def build_head(in_shape, cfg, name):
    """in_shape: (F,) or (E,). Returns keras.Model (B, F) -> (B, cfg.out_size = C(C+1)/2), ReLU
    output."""
    inp = keras.Input(shape=tuple(in_shape), name=f"{name}_in")
    out = layers.Dense(cfg.out_size, activation="relu", name=f"{name}_relations")(inp)
    return keras.Model(inp, out, name=name)


def targets(batch, cfg):
    """Relation targets from the (cropped) noisy pixel map, computed in-graph: (B, out_size).
    XLA steps use the static-shape form (the row-run form has data-dependent shapes)."""
    return relation_targets_tf(batch["noisy_seg_map"], cfg.nb_class,
                               static=bool(cfg.jit_compile))


def loss_per_sample(target, output):
    """Mean squared error over the relation vector -> (B,)."""
    return mse_per_sample(target, output)
