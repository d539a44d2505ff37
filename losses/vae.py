"""VAE terms of the generative branch (each returns float32 (B,); inputs in a mixed-precision
compute dtype are cast to float32 first)."""
import tensorflow as tf


def kl_per_sample(mu, std):
    """KL to N(0, 1). mu, std (B, E) or (B, h, w, E).

    -0.5 * sum over latent dims of (1 + log(std^2 + 1e-7) - mu^2 - std^2), then the mean over
    spatial positions (pixel variant) -> (B,).
    """
    mu, std = tf.cast(mu, tf.float32), tf.cast(std, tf.float32)
    var = tf.square(std)
    kl = -0.5 * tf.reduce_sum(1.0 + tf.math.log(var + 1e-7) - tf.square(mu) - var, axis=-1)
    if kl.shape.rank > 1:
        kl = tf.reduce_mean(kl, axis=list(range(1, kl.shape.rank)))
    return kl


def recon_per_sample(decoded, feature):
    """Latent reconstruction: MSE between decoder output and stop_gradient(feature) -> (B,)."""
    decoded, feature = tf.cast(decoded, tf.float32), tf.cast(feature, tf.float32)
    err = tf.square(decoded - tf.stop_gradient(feature))
    return tf.reduce_mean(err, axis=list(range(1, err.shape.rank)))
