"""SAT, ELR, JoCoR: per-sample losses on hand-computed tensors, the compiled steps, the loop."""
import math

import numpy as np
import pytest
import tensorflow as tf

from config import Config
from losses import robust as R

LN4 = math.log(4.0)  # sigmoid(ln 4) = 0.8


def _t(x):
    return tf.constant(x, tf.float32)


def test_moving_targets():
    out = R.moving_targets(_t([[0.0, 1.0]]), _t([[1.0, 0.5]]), 0.9)
    np.testing.assert_allclose(out.numpy(), [[0.1, 0.95]], atol=1e-6)


def test_sat_loss_hand_computed():
    loss, w = R.sat_loss_per_sample(_t([[1.0, 0.0], [0.5, 0.8]]), _t([[0.0, 0.0], [0.0, LN4]]))
    # row 2: w = (0.5, 0.8); BCE(0.5, p=0.5) = ln 2, BCE(0.8, p=0.8) = 0.500402
    np.testing.assert_allclose(loss.numpy(), [math.log(2), (0.5 * math.log(2) + 0.8 * 0.500402) / 2],
                               atol=1e-5)
    np.testing.assert_allclose(w.numpy(), [1.0, 0.65], atol=1e-6)


def test_sat_targets_carry_no_gradient():
    logits = tf.Variable([[0.3, -0.2]])
    with tf.GradientTape() as tape:
        targets = R.moving_targets(_t([[1.0, 0.0]]), tf.sigmoid(logits), 0.9)
        loss, _ = R.sat_loss_per_sample(targets, logits)
    grad = tape.gradient(loss, logits).numpy()
    p = 1 / (1 + np.exp(-np.array([0.3, -0.2])))
    t = 0.9 * np.array([1.0, 0.0]) + 0.1 * p
    w = np.maximum(t, 1 - t)
    np.testing.assert_allclose(grad[0], w * (p - t) / 2, atol=1e-6)


def test_elr_loss_hand_computed():
    out = R.elr_loss_per_sample(_t([[1.0, 0.0], [1.0, 0.0]]), _t([[1.0, 0.0], [0.8, 0.2]]),
                                _t([[0.0, 0.0], [LN4, -LN4]]), lam=3.0)
    # row 1: ln 2 + 3 ln(1 - 0.5); row 2: -ln 0.8 + 3 ln(1 - 0.68)
    np.testing.assert_allclose(out.numpy(), [math.log(2) + 3 * math.log(0.5),
                                             -math.log(0.8) + 3 * math.log(0.32)], atol=1e-5)


def test_elr_regulariser_pulls_towards_target():
    logits = tf.Variable([[0.0]])
    with tf.GradientTape() as tape:
        reg = R.elr_loss_per_sample(_t([[0.0]]), _t([[0.9]]), logits, lam=1.0) \
            - R.elr_loss_per_sample(_t([[0.0]]), _t([[0.9]]), logits, lam=0.0)
    # d/dz log(1 - (p t + (1-p)(1-t))) at p = 0.5, t = 0.9: -(2t - 1) p (1 - p) / 0.5 = -0.4
    np.testing.assert_allclose(tape.gradient(reg, logits).numpy(), [[-0.4]], atol=1e-5)


def test_bernoulli_kl_and_jocor_hand_computed():
    np.testing.assert_allclose(R.bernoulli_kl(_t([[LN4]]), _t([[0.0]])).numpy(), [0.192745],
                               atol=1e-5)
    np.testing.assert_allclose(R.bernoulli_kl(_t([[0.0]]), _t([[LN4]])).numpy(), [0.223144],
                               atol=1e-5)
    np.testing.assert_allclose(R.bernoulli_kl(_t([[1.5, -2.0]]), _t([[1.5, -2.0]])).numpy(), [0.0],
                               atol=1e-6)
    out = R.jocor_loss_per_sample(_t([[1.0]]), _t([[LN4]]), _t([[0.0]]), lam=0.9)
    expected = 0.1 * (-math.log(0.8) + math.log(2)) + 0.9 * (0.192745 + 0.223144)
    np.testing.assert_allclose(out.numpy(), [expected], atol=1e-5)


def test_forget_rate_and_small_loss_mask():
    assert [float(R.forget_rate(e, 0.3, 2)) for e in (0, 1, 2, 5)] == pytest.approx(
        [0.0, 0.15, 0.3, 0.3])
    np.testing.assert_array_equal(R.small_loss_mask(_t([3, 1, 2, 1]), 0.5).numpy(), [0, 1, 0, 1])
    np.testing.assert_array_equal(R.small_loss_mask(_t([3, 1, 2, 1]), 0.3).numpy(), [0, 1, 1, 1])
    np.testing.assert_array_equal(R.small_loss_mask(_t([1, 1, 1]), 0.5).numpy(), [1, 1, 0])
    np.testing.assert_array_equal(R.small_loss_mask(_t([2, 1]), 1.0).numpy(), [0, 1])  # keep >= 1


# ---- models -------------------------------------------------------------------------------
def _cfg(model_name, tmp_path, **kw):
    d = dict(model_name=model_name, dataset="DLRSD", backbone="small_cnn", batch_size=4,
             nb_epoch=10, noisy_sel_prcnt=50, train_tfrecord_paths=str(tmp_path / "train.tfrecord"),
             dumps={k: str(tmp_path / k) for k in ("model_weights", "summaries", "configs",
                                                   "features")})
    d.update(kw)
    return Config.from_dict(d)


def _batch(index, seed=0):
    rng = np.random.default_rng(seed)
    n = len(index)
    label = (rng.random((n, 17)) < 0.3).astype(np.float32)
    noisy = label.copy()
    noisy[0] = 1 - noisy[0]  # sample 0 corrupted
    return {"image": tf.constant(rng.normal(size=(n, 224, 224, 3)), tf.float32),
            "label": tf.constant(label), "noisy_label": tf.constant(noisy),
            "sample_index": tf.constant(index, tf.int64)}


def test_config_accepts_robust_models(tmp_path):
    from models import build_model
    for name in ("SAT", "ELR", "JoCoR"):
        assert _cfg(name, tmp_path).model_name == name
    cfg = _cfg("ELR", tmp_path)
    with pytest.raises(ValueError, match="strategy"):
        build_model(_cfg("SAT", tmp_path, strategy="mirrored"), n_train=4)
    assert cfg.is_grid is False


def test_elr_step_writes_memory_rows_of_the_batch(tmp_path):
    import keras
    from models import build_model

    keras.utils.set_random_seed(0)
    model = build_model(_cfg("ELR", tmp_path), n_train=10)
    assert model.steps_per_epoch == 3 and model.memory.shape == (10, 17)
    batch = _batch([7, 2, 5])
    probs = tf.sigmoid(model.net.forward(batch["image"], training=True)["dis"]).numpy()
    opt = keras.optimizers.Adam(1e-3)
    out = model.make_train_step(opt)(batch)
    mem = model.memory.numpy()
    np.testing.assert_allclose(mem[[7, 2, 5]], (1 - R.ELR_BETA) * probs, atol=1e-5)
    assert np.all(mem[[0, 1, 3, 4, 6, 8, 9]] == 0)
    assert int(opt.iterations) == 1 and set(out) >= {"loss", "dis_loss"}
    assert np.isfinite(float(out["loss"]))


def test_sat_memory_starts_at_labels_at_start_epoch(tmp_path):
    import keras
    from models import build_model

    keras.utils.set_random_seed(0)
    model = build_model(_cfg("SAT", tmp_path, nb_epoch=10), n_train=4)  # E_s = 3, 1 step/epoch
    assert model.schedule["sat_start_epoch"] == 3 and model.steps_per_epoch == 1
    step = model.make_train_step(keras.optimizers.Adam(1e-3))
    batch = _batch([0, 1, 2, 3])
    for _ in range(3):  # epochs 0-2: plain BCE, memory untouched
        out = step(batch)
        np.testing.assert_allclose(float(out["loss"]), float(out["dis_loss"]), rtol=1e-6)
    assert np.all(model.memory.numpy() == 0)
    probs = tf.sigmoid(model.net.forward(batch["image"], training=True)["dis"]).numpy()
    step(batch)  # epoch 3 = E_s: t = 0.9 * noisy label + 0.1 * p
    np.testing.assert_allclose(model.memory.numpy(),
                               0.9 * batch["noisy_label"].numpy() + 0.1 * probs, atol=1e-5)


def test_jocor_two_networks_and_selection_metrics(tmp_path):
    import keras
    from models import build_model

    keras.utils.set_random_seed(0)
    model = build_model(_cfg("JoCoR", tmp_path, nb_epoch=20), n_train=4)
    assert model.schedule == {"sat_start_epoch": 6, "jocor_ramp_epochs": 1, "jocor_tau": 0.5}
    assert {"peer_backbone", "peer_discriminative_head"} <= set(model.keras_models)
    assert not hasattr(model, "memory")
    step = model.make_train_step(keras.optimizers.Adam(1e-3))
    first = step(_batch([0, 1, 2, 3]))  # epoch 0: forget rate 0, nothing discarded
    assert float(first["sel_precision"]) == 0.0 and float(first["sel_recall"]) == 0.0
    second = step(_batch([0, 1, 2, 3]))  # epoch 1: 2 of 4 discarded
    p, r = float(second["sel_precision"]), float(second["sel_recall"])
    assert p in (0.0, 0.5) and r == (1.0 if p == 0.5 else 0.0)


# ---- the training loop ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Tiny TFRecords: train / train_noise_prcnt50 (6 records, 2 steps of 4 per epoch)."""
    import prep_DLRSD_noisy
    from archives import sample

    base = tmp_path_factory.mktemp("robust")
    raw, full, tiny = base / "raw", base / "full", base / "TFRecord"
    sample.write_sample_archive(raw, seed=0, per_class=5, scenes=["beach", "forest"])
    prep_DLRSD_noisy.main(["-r_dlrsd", str(raw / "DLRSD"), "-r_ucm", str(raw / "UCMerced_LandUse"),
                           "-o", str(full), "--noise-levels", "50", "--quiet", "--layout", "files"])
    tiny.mkdir()
    for name in ("train", "train_noise_prcnt50"):
        with tf.io.TFRecordWriter(str(tiny / f"{name}.tfrecord")) as w:
            for raw_rec in tf.data.TFRecordDataset(str(full / "TFRecord" / f"{name}.tfrecord")).take(8):
                w.write(raw_rec.numpy())
    return tiny


@pytest.mark.parametrize("method", ["SAT", "ELR"])
def test_memory_is_checkpointed_and_resume_is_exact(tmp_path, records, method):
    import training

    def cfg(out):
        return _cfg(method, out, nb_epoch=4, noise_prcnt=50, seed=2,
                    train_tfrecord_paths=str(records / "train.tfrecord"))

    quiet = dict(show_progress=False, log=lambda m: None)
    full = training.train(cfg(tmp_path / "a"), **quiet)
    training.train(cfg(tmp_path / "b"), max_epochs=3, **quiet)
    resumed = training.train(cfg(tmp_path / "b"), resume=True, **quiet)
    assert full.model.n_train == 6 and full.model.steps_per_epoch == 2  # 3 per scene
    mem = full.model.memory.numpy()
    assert np.all(mem.sum(axis=1) > 0)  # SAT: E_s = 1 of 4 epochs; ELR from the first step
    np.testing.assert_allclose(resumed.model.memory.numpy(), mem, atol=1e-5)
    for a, b in zip(full.model.trainable_variables, resumed.model.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    assert full.feature_model_path.is_file()
