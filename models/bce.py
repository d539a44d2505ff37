"""Multi-label head (GRID-BCE / BCE): feature (B, F) -> logits (B, nb_class)."""
import keras
from keras import layers

from losses.task import sigmoid_ce_per_sample

POOLED = True  # the head reads the global-average-pooled feature


def build_head(in_shape, cfg, name):
    """in_shape: (F,) or (E,). Returns keras.Model (B, F) -> (B, nb_class) logits."""
    inp = keras.Input(shape=tuple(in_shape), name=f"{name}_in")
    out = layers.Dense(cfg.nb_class, name=f"{name}_logits")(inp)
    return keras.Model(inp, out, name=name)


def targets(batch, cfg):
    """Noisy multi-hot labels (B, nb_class) float32."""
    return batch["noisy_label"]


def loss_per_sample(target, output):
    """Sigmoid cross-entropy, mean over classes -> (B,)."""
    return sigmoid_ce_per_sample(target, output)
