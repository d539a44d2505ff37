"""Deep-feature retrieval (SPEC section 9): off-the-shelf features and the fine-tuned variant.

- model_name "OffTheShelf": no training. The backbone (``backbone``, e.g. inception_v3,
  resnet50, vgg16) with the local weights file of ``weights`` (ImageNet weights as Keras
  "notop" files, or any file ``Model.save_weights`` wrote) and global average pooling is saved
  as ``feature_model.keras``, with the dumped config; ``retrieval.py`` then ranks the pooled
  features (cosine on L2-normalised features by default, as published).
- Fine-tuned: the BCE baseline (model_name "BCE") started from the same ``weights``; with
  ``feature_layer`` "pooling" the retrieval feature is the pooled backbone output, with
  "output" it is the sigmoid class scores of the multi-label head.
"""
from __future__ import annotations

import time

import keras

from config import Config


def retrieval_model(model, cfg: Config) -> keras.Model:
    """The model train.py saves as feature_model.keras for a GRID/baseline run: pooled feature,
    or for ``feature_layer`` "output" image -> sigmoid(discriminative head) (B, nb_class)."""
    from models.precision import float32_output  # features are float32 under mixed precision

    if getattr(cfg, "feature_layer", "pooling") != "output":
        return float32_output(model.feature_model)
    image = keras.Input(shape=tuple(cfg.input_shape), name="image")
    logits = model.dis_head(model.feature_model(image))
    return float32_output(keras.Model(
        image, keras.layers.Activation("sigmoid", name="scores")(logits),
        name="output_feature_model"))


def export_off_the_shelf(cfg: Config, log=print):
    """Save the pretrained backbone + pooling as the run's feature model; no training."""
    from models.backbones import build_backbone
    from models.precision import float32_output
    from training import RunResult, save_feature_model
    from atomic_files import write_json_atomic

    t0 = time.perf_counter()
    if cfg.weights is None:
        log("note: OffTheShelf without weights extracts features of a randomly initialised "
            "backbone")
    backbone = build_backbone(cfg.backbone, tuple(cfg.input_shape), cfg.weights)
    image = keras.Input(shape=tuple(cfg.input_shape), name="image")
    model = float32_output(keras.Model(image, keras.layers.GlobalAveragePooling2D(name="feature")(
        backbone(image, training=False)), name="feature_model"))
    save_feature_model(model, cfg.feature_model_path)
    seconds = round(time.perf_counter() - t0, 3)
    write_json_atomic(cfg.config_dump_path, cfg.dump_dict(training_time_s=0.0, final_metrics={}))
    log(f"OffTheShelf: saved {cfg.feature_model_path} ({cfg.backbone}, weights "
        f"{cfg.weights or 'none'}) in {seconds} s; no training")
    return RunResult(cfg, cfg.nb_epoch, True, 0.0, {}, {}, cfg.feature_model_path,
                     cfg.config_dump_path, model, None)
