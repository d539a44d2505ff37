"""Per-sample losses of established label-noise-robust methods, adapted to multi-label learning.

Multi-label adaptation (as in Burgert, Ravanbakhsh, Demir, IEEE TGRS 2022): every class is an
independent binary problem with a sigmoid output p_c, so the softmax distributions of the
original methods become per-class Bernoulli pairs (p_c, 1 - p_c) and every sum over classes
becomes a mean over the C binary problems. Shapes: labels / targets / logits (B, C) -> (B,).
Logits in a mixed-precision compute dtype are cast to float32 first: every loss is float32.
"""
import tensorflow as tf

from losses.task import sigmoid_ce_per_sample

# Published hyperparameters of the original methods (CIFAR schedules of 200 epochs).
SAT_MOMENTUM = 0.9        # SAT (Huang, Zhang, Zhang, NeurIPS 2020): alpha
SAT_START_FRACTION = 0.3  # SAT: E_s = 60 of 200 epochs
ELR_BETA = 0.7            # ELR (Liu et al., NeurIPS 2020): target momentum beta (CIFAR-10)
ELR_LAMBDA = 3.0          # ELR: regularisation weight lambda (CIFAR-10)
ELR_CLIP = 1e-4           # ELR: probabilities clipped to [1e-4, 1 - 1e-4]
JOCOR_LAMBDA = 0.9        # JoCoR (Wei et al., CVPR 2020): co-regularisation weight lambda
JOCOR_RAMP_FRACTION = 0.05  # JoCoR: forget rate reaches tau after T_k = 10 of 200 epochs
_EPS = 1e-7


def moving_targets(memory_rows, probs, momentum):
    """Temporal ensemble t <- momentum * t + (1 - momentum) * p (no gradient to p)."""
    probs = tf.stop_gradient(tf.cast(probs, tf.float32))
    return momentum * tf.cast(memory_rows, tf.float32) + (1.0 - momentum) * probs


def sat_loss_per_sample(targets, logits):
    """Self-adaptive training: weighted soft-target cross-entropy -> (loss (B,), weight (B,)).

    Per class, the soft target t_c replaces the label and the weight is the target's confidence
    max(t_c, 1 - t_c) (SAT's max_j t_ij for a Bernoulli pair); loss_i = mean_c w_c * BCE(t_c,
    p_c), weight_i = mean_c w_c. The batch loss is sum(loss) / sum(weight), as SAT normalises
    by the summed sample weights.
    """
    logits = tf.cast(logits, tf.float32)
    targets = tf.stop_gradient(tf.cast(targets, tf.float32))
    w = tf.maximum(targets, 1.0 - targets)
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
    return tf.reduce_mean(w * ce, axis=-1), tf.reduce_mean(w, axis=-1)


def elr_loss_per_sample(noisy_labels, targets, logits, lam=ELR_LAMBDA):
    """Early-learning regularisation: BCE(noisy label) + lam * mean_c log(1 - <p_c, t_c>).

    <p_c, t_c> = p_c t_c + (1 - p_c)(1 - t_c) is the inner product of the Bernoulli pairs of
    prediction and target (ELR's <p, t> over softmax classes); p is clipped to
    [ELR_CLIP, 1 - ELR_CLIP]. The regulariser decreases as p moves towards the early-learning
    target t, which carries no gradient.
    """
    logits = tf.cast(logits, tf.float32)
    targets = tf.stop_gradient(tf.cast(targets, tf.float32))
    p = tf.clip_by_value(tf.sigmoid(logits), ELR_CLIP, 1.0 - ELR_CLIP)
    inner = p * targets + (1.0 - p) * (1.0 - targets)
    reg = tf.reduce_mean(tf.math.log(tf.maximum(1.0 - inner, _EPS)), axis=-1)
    return sigmoid_ce_per_sample(noisy_labels, logits) + lam * reg


def bernoulli_kl(logits_p, logits_q):
    """KL(p || q) of per-class Bernoulli distributions, mean over classes -> (B,)."""
    logits_p, logits_q = tf.cast(logits_p, tf.float32), tf.cast(logits_q, tf.float32)
    p = tf.sigmoid(logits_p)
    log_p, log_1p = tf.math.log_sigmoid(logits_p), tf.math.log_sigmoid(-logits_p)
    log_q, log_1q = tf.math.log_sigmoid(logits_q), tf.math.log_sigmoid(-logits_q)
    return tf.reduce_mean(p * (log_p - log_q) + (1.0 - p) * (log_1p - log_1q), axis=-1)


def jocor_loss_per_sample(noisy_labels, logits1, logits2, lam=JOCOR_LAMBDA):
    """JoCoR joint loss: (1 - lam) * (BCE_1 + BCE_2) + lam * (KL(p1||p2) + KL(p2||p1))."""
    sup = sigmoid_ce_per_sample(noisy_labels, logits1) + sigmoid_ce_per_sample(noisy_labels, logits2)
    co = bernoulli_kl(logits1, logits2) + bernoulli_kl(logits2, logits1)
    return (1.0 - lam) * sup + lam * co


def forget_rate(epoch, tau, ramp_epochs):
    """JoCoR / Co-teaching schedule: tau * min(epoch / ramp_epochs, 1) (epoch 0-based)."""
    epoch = tf.cast(epoch, tf.float32)
    return float(tau) * tf.minimum(epoch / float(max(ramp_epochs, 1)), 1.0)


def small_loss_mask(loss, rate):
    """1 for the ceil((1 - rate) * B) samples with the smallest loss (ties: lower index first),
    0 for the rest (the ones "forgotten"); no gradient. loss (B,) -> float32 (B,)."""
    loss = tf.stop_gradient(tf.cast(loss, tf.float32))
    B = tf.shape(loss)[0]
    keep = tf.cast(tf.math.ceil((1.0 - rate) * tf.cast(B, tf.float32)), tf.int32)
    keep = tf.clip_by_value(keep, 1, B)
    _, idx = tf.math.top_k(-loss, k=keep)
    return tf.scatter_nd(idx[:, None], tf.ones_like(idx, tf.float32), [B])
