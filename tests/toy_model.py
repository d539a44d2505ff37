"""A toy model for tests/test_loop.py: the one file a new model needs (plus its registry entry).

Pooled image -> Dense(nb_class) logits, sigmoid cross-entropy on the noisy labels; the default
batches (the archive pipeline), a step counter as extra checkpointed state, no validation.
"""
import keras
import tensorflow as tf

from losses.task import sigmoid_ce_per_sample
from models.base import Model, compile_step


class ToyModel(Model):
    def __init__(self, cfg):
        super().__init__(cfg)
        image = keras.Input(shape=tuple(self.cfg.input_shape), name="image")
        feature = keras.layers.GlobalAveragePooling2D(name="feature")(image)
        self.feature_model = keras.Model(image, feature, name="feature_model")
        self.head = keras.Sequential([keras.layers.Dense(self.cfg.nb_class)], name="head")
        self.head.build((None, int(self.cfg.input_shape[-1])))
        self.keras_models = {"head": self.head}
        self.trainable_variables = list(self.head.trainable_variables)
        self.seen = tf.Variable(0, dtype=tf.int64, trainable=False, name="seen")

    def extra_state(self):
        return {"seen": self.seen}

    def make_train_step(self, optimizer, strategy=None):
        optimizer.build(self.trainable_variables)

        def step(batch):
            with tf.GradientTape() as tape:
                logits = self.head(self.feature_model(batch["image"]))
                loss = tf.reduce_mean(sigmoid_ce_per_sample(batch["noisy_label"], logits))
            grads = tape.gradient(loss, self.trainable_variables)
            optimizer.apply_gradients(zip(grads, self.trainable_variables))
            self.seen.assign_add(tf.cast(tf.shape(batch["image"])[0], tf.int64))
            return {"loss": loss}
        return compile_step(step)
