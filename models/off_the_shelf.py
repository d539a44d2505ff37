"""Off-the-shelf deep features: a pretrained backbone with global average pooling, no training.

model_name "OffTheShelf": the backbone (``backbone``, e.g. inception_v3, resnet50, vgg16) with
the local weights file of ``weights`` (ImageNet weights as Keras "notop" files, or any file
``Model.save_weights`` wrote) is saved as ``feature_model.keras``; ``retrieval.py`` then ranks
the pooled features (cosine on L2-normalised features by default, as published). A model with
zero epochs: the training loop only sets up, checks and exports. The fine-tuned variant is the
BCE baseline started from the same ``weights`` (``feature_layer`` picks pooled feature or
class scores; models/grid.py).
"""
from __future__ import annotations

import keras

from models.backbones import build_backbone
from models.base import Model


class OffTheShelfModel(Model):
    def __init__(self, cfg):
        super().__init__(cfg)
        cfg = self.cfg
        self.backbone = build_backbone(cfg.backbone, tuple(cfg.input_shape), cfg.weights)
        image = keras.Input(shape=tuple(cfg.input_shape), name="image")
        self.feature_model = keras.Model(image, keras.layers.GlobalAveragePooling2D(
            name="feature")(self.backbone(image, training=False)), name="feature_model")
        self.keras_models = {"backbone": self.backbone}

    @property
    def epochs(self) -> int:
        return 0

    def prepare(self, log, progress=False):
        if self.cfg.weights is None:
            log("note: OffTheShelf without weights extracts features of a randomly "
                "initialised backbone")

    def checkpointed(self) -> dict:
        return {}  # rebuilt from its weights file (or seed)
