"""Backbones: name -> Keras model from a normalised image (B, H, W, Cin) to a feature map
(B, h, w, F). No pretrained weights are ever downloaded; a local weights file may be loaded."""
import os
import warnings

import keras
from keras import layers

from models.registry import BACKBONES  # the names a config may give; every one is built here
from config_error import ConfigError
from models.weights_file import weights_file_problem

_APPS = {
    "densenet121": "DenseNet121", "resnet50": "ResNet50", "resnet101": "ResNet101",
    "resnet152": "ResNet152", "vgg16": "VGG16", "vgg19": "VGG19", "mobilenet_v2": "MobileNetV2",
    "inception_v3": "InceptionV3",
}


def small_cnn(input_shape, name="small_cnn"):
    """Small fast net for tests and demos: three stride-2 conv blocks (32, 64, 128 channels,
    3x3, BatchNorm, ReLU) and a 3x3 conv with 128 channels; output (H/8, W/8, 128)."""
    inp = keras.Input(shape=tuple(input_shape), name="image")
    x = inp
    for i, ch in enumerate((32, 64, 128)):
        x = layers.Conv2D(ch, 3, strides=2, padding="same", use_bias=False, name=f"conv{i + 1}")(x)
        x = layers.BatchNormalization(name=f"bn{i + 1}")(x)
        x = layers.ReLU(name=f"relu{i + 1}")(x)
    x = layers.Conv2D(128, 3, padding="same", activation="relu", name="conv4")(x)
    return keras.Model(inp, x, name=name)


def resolve(name):
    """Constructor for a backbone name: callable(input_shape) -> keras.Model; ValueError if
    the name is unknown."""
    key = str(name).lower()
    if key == "small_cnn":
        return small_cnn
    if key in _APPS:
        ctor = getattr(keras.applications, _APPS[key])
        return lambda input_shape: ctor(include_top=False, weights=None,
                                        input_shape=tuple(input_shape), name=key)
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


def build_backbone(name, input_shape, weights=None):
    """Backbone without top.

    name: one of BACKBONES; input_shape: (H, W, Cin); weights: None or a path to a local weights
    file (Keras ``.weights.h5``/``.h5`` as written by ``Model.save_weights`` or the
    Keras-applications "notop" files), loaded with ``Model.load_weights``.
    Returns a keras.Model: (B, H, W, Cin) float32 -> (B, h, w, F) float32.
    """
    model = resolve(name)(tuple(input_shape))
    if weights:
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"backbone weights file not found: {weights}")
        problem = weights_file_problem(weights)
        try:
            with warnings.catch_warnings(record=True) as said:  # shown only if it loads
                warnings.simplefilter("always")
                if problem:
                    raise ValueError(problem)
                model.load_weights(weights)
        except Exception as err:  # wrong format or another architecture: many error types
            detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ConfigError(f"{weights}: cannot be loaded as the weights of backbone {name} "
                              f"({detail}) (config key weights)") from None
        for w in said:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return model
