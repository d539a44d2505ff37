"""VAE terms of the generative branch (each returns float32 (B,); inputs in a mixed-precision
compute dtype are cast to float32 first)."""
import tensorflow as tf

# How the KL is reduced over a latent map (B, h, w, E) to one value per sample:
#   "latent":    sum over the E latent dims, mean over the h x w positions (this project's);
#   "published": sum over the h rows of the map, mean over its w columns and the E latent dims
#                (the published pixel variant); it equals "latent" x h / E.
# For a pooled latent (B, E) both are the sum over the latent dims (docs/differences.md).
KL_REDUCTIONS = ("latent", "published")


def kl_per_sample(mu, std, reduction: str = "latent"):
    """KL to N(0, 1) -> (B,). mu, std (B, E) or (B, h, w, E).

    Per element: t = -0.5 * (1 + log(std^2 + 1e-7) - mu^2 - std^2). ``reduction`` "latent":
    sum of t over latent dims, then mean over spatial positions; "published" (pixel variant):
    sum of t over the map's rows (axis 1), then mean over the remaining axes. Identical for
    (B, E).
    """
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"kl_reduction: {reduction!r} is not one of {', '.join(KL_REDUCTIONS)}")
    mu, std = tf.cast(mu, tf.float32), tf.cast(std, tf.float32)
    var = tf.square(std)
    t = -0.5 * (1.0 + tf.math.log(var + 1e-7) - tf.square(mu) - var)
    if t.shape.rank == 2 or reduction == "latent":
        kl = tf.reduce_sum(t, axis=-1)
    else:
        kl = tf.reduce_sum(t, axis=1)
    if kl.shape.rank > 1:
        kl = tf.reduce_mean(kl, axis=list(range(1, kl.shape.rank)))
    return kl


def recon_per_sample(decoded, feature):
    """Latent reconstruction: MSE between decoder output and stop_gradient(feature) -> (B,)."""
    decoded, feature = tf.cast(decoded, tf.float32), tf.cast(feature, tf.float32)
    err = tf.square(decoded - tf.stop_gradient(feature))
    return tf.reduce_mean(err, axis=list(range(1, err.shape.rank)))
