"""MiLaN and deep features (docs/hashing.md): losses by hand, triplet sampling invariants, the
hashing network, config keys, end-to-end training + retrieval on tiny DLRSD-style and BEN
records, off-the-shelf export and the fine-tuned variant from a weights file the test writes."""
import json

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

import retrieval
import training
from archives.dlrsd import SCENE_CLASSES
from config import Config, ConfigError
from losses.hashing import in_batch_triplets, is_single_label, milan_losses, sample_triplets
from models.milan import build_hash_net

SCENES = SCENE_CLASSES[:4]


# ---- losses ---------------------------------------------------------------------------------
def _loss(a, p, n, **kw):
    out = milan_losses(*(tf.constant(x, tf.float32) for x in (a, p, n)), **kw)
    return {k: float(v) for k, v in out.items()}


def test_milan_losses_hand_computed():
    # unit-norm outputs: |a - p|^2 = 0, |a - n|^2 = 0.2^2 + 0.2^2 = 0.08
    out = _loss([[0.6, 0.8]], [[0.6, 0.8]], [[0.8, 0.6]])
    assert out["triplet_loss"] == pytest.approx(0.2 - 0.08)
    # push: every output has sum_k (b - 0.5)^2 = 0.01 + 0.09 = 0.1; beta / K = 0.001 / 2
    assert out["push_loss"] == pytest.approx(0.0005 * 0.1)
    # balance: every mean_k b = 0.7 -> (0.2)^2, gamma 1
    assert out["balance_loss"] == pytest.approx(0.04)
    assert out["loss"] == pytest.approx(0.12 - 0.00005 + 0.04)
    # normalisation first: a = (1, 0), n = (0, 1) after it -> 0 - 2 + 0.2 < 0 -> hinge 0
    out = _loss([[0.5, 0.0]], [[0.25, 0.0]], [[0.0, 0.5]])
    assert out["triplet_loss"] == 0.0
    # margin, beta, gamma are parameters; two triplets average
    out = _loss([[0.6, 0.8], [0.6, 0.8]], [[0.8, 0.6], [0.6, 0.8]], [[0.6, 0.8], [0.8, 0.6]],
                margin=0.5, beta=0.0, gamma=0.0)
    assert out["triplet_loss"] == pytest.approx(((0.08 + 0.5) + (0.5 - 0.08)) / 2)
    assert out["loss"] == pytest.approx(out["triplet_loss"])


def test_milan_losses_weighting():
    a = tf.constant([[0.6, 0.8], [0.6, 0.8]])
    p = tf.constant([[0.8, 0.6], [0.6, 0.8]])
    n = tf.constant([[0.6, 0.8], [0.8, 0.6]])
    out = milan_losses(a, p, n, weight=tf.constant([0.0, 1.0]))
    assert float(out["triplet_loss"]) == pytest.approx(0.2 - 0.08)
    out = milan_losses(a, p, n, weight=tf.constant([0.0, 0.0]))
    assert float(out["triplet_loss"]) == 0.0


def test_push_term_rewards_binary_outputs():
    soft = _loss([[0.5, 0.5]], [[0.5, 0.5]], [[0.5, 0.5]])
    hard = _loss([[1.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]])
    assert soft["push_loss"] == 0.0 and hard["push_loss"] == pytest.approx(0.001 / 2 * 0.5)
    assert hard["balance_loss"] == 0.0


# ---- triplet sampling -------------------------------------------------------------------------
def test_published_two_class_sampling():
    cls = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3])       # class 3 has one item: never a positive class
    labels = np.eye(4)[cls]
    assert is_single_label(labels) and not is_single_label(labels + np.eye(4)[(cls + 1) % 4])
    rng = np.random.default_rng(0)
    pos_classes, neg_classes = set(), set()
    for _ in range(60):
        a, p, n = sample_triplets(labels, 30, rng)
        assert a.shape == p.shape == n.shape == (30,)
        ca, cp, cn = cls[a], cls[p], cls[n]
        assert len(set(ca)) == 1 and set(cp) == set(ca)     # anchors and positives: one class
        assert len(set(cn)) == 1 and cn[0] != ca[0]          # negatives: one other class
        pos_classes.add(ca[0])
        neg_classes.add(cn[0])
    assert pos_classes == {0, 1, 2} and neg_classes == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="second class"):
        sample_triplets(np.eye(2)[[0, 0, 0]], 3, rng)


def test_multilabel_sampling_rule():
    rng = np.random.default_rng(1)
    labels = (rng.random((200, 6)) < 0.25).astype(np.float32)
    labels[:5] = 0  # items without labels can be negatives only
    a, p, n = sample_triplets(labels, 500, rng)
    lab = labels > 0.5
    assert (a != p).all() and (a >= 5).all() and (p >= 5).all()
    assert (lab[a] & lab[p]).any(1).all()          # positives share a label
    assert not (lab[a] & lab[n]).any(1).any()      # negatives share none
    with pytest.raises(ValueError, match="no triplet"):
        sample_triplets(np.ones((4, 3)), 2, rng)    # everything shares: no negative


def test_in_batch_triplets():
    labels = tf.constant([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 0], [1, 1, 1]], tf.float32)
    pos, neg, valid = in_batch_triplets(labels, tf.constant([3, 4], tf.int64))
    lab = labels.numpy() > 0.5
    pos, neg, valid = pos.numpy(), neg.numpy(), valid.numpy()
    # item 4 shares a label with everyone: no negative; the others have both
    assert valid.tolist() == [True, True, True, True, False]
    for i in np.flatnonzero(valid):
        assert pos[i] != i and (lab[i] & lab[pos[i]]).any()
        assert neg[i] != i and not (lab[i] & lab[neg[i]]).any()


def test_hash_net_layout():
    net = build_hash_net(40, 16)
    dense = [l for l in net.layers if isinstance(l, keras.layers.Dense)]
    assert [d.units for d in dense] == [1024, 512, 16]
    assert dense[-1].activation.__name__ == "sigmoid"
    acts = [l for l in net.layers if isinstance(l, keras.layers.LeakyReLU)]
    assert len(acts) == 2 and all(float(a.negative_slope) == pytest.approx(0.2) for a in acts)
    out = net(np.random.default_rng(0).normal(size=(3, 40)).astype(np.float32)).numpy()
    assert out.shape == (3, 16) and ((out > 0) & (out < 1)).all()


# ---- config ---------------------------------------------------------------------------------
def _base(tmp_path, **kw):
    rec = tmp_path / "train.tfrecord"
    rec.touch()
    d = dict(model_name="MiLaN", dataset="DLRSD", train_tfrecord_paths=str(rec), batch_size=9)
    d.update(kw)
    return d


@pytest.mark.parametrize("kw, message", [
    ({"batch_size": 10}, "batch_size: MiLaN batches hold triplets"),
    ({"hash_bits": 12}, "hash_bits: codes are stored as packed bytes"),
    ({"train_backbone": 1}, "train_backbone: expected true or false"),
    ({"triplet_labels": "scenes"}, "did you mean 'scene'"),
    ({"dataset": "BEN", "triplet_labels": "scene"}, "triplet_labels: 'scene'"),
    ({"model_name": "PCE", "feature_layer": "output"}, "feature_layer: 'output'"),
    ({"backbone": "inception_v4"}, "inception_v3"),
    ({"strategy": "mirrored"}, "strategy: MiLaN runs on one device"),
])
def test_config_rejects(tmp_path, kw, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_dict(_base(tmp_path, **kw))


def test_config_run_name_and_defaults(tmp_path):
    cfg = Config.from_dict(_base(tmp_path))
    assert cfg.hash_bits == 32 and not cfg.train_backbone and cfg.triplet_labels == "label"
    assert cfg.run_name.endswith("-bits32")
    assert Config.from_dict(_base(tmp_path, model_name="BCE", batch_size=10)).feature_layer == \
        "pooling"


# ---- end to end -----------------------------------------------------------------------------
def _dlrsd_records(path, names, seed, noisy_flip=0.0):
    """DLRSD records whose colour and labels follow the scene (labels {s, s + 1})."""
    from archives.common import atomic_tfrecord_writer
    from archives.dlrsd import encode_example
    rng = np.random.default_rng(seed)
    with atomic_tfrecord_writer(path) as w:
        for name in names:
            s = SCENES.index(name.rstrip("0123456789"))
            img = np.clip(rng.normal(60 * s + 30, 20, (256, 256, 3)), 0, 255).astype(np.uint8)
            seg = np.full((256, 256), s, np.int8)
            lab = np.zeros(17, np.float32)
            lab[[s, s + 1]] = 1
            noisy = lab.copy()
            if rng.random() < noisy_flip:
                noisy = np.roll(noisy, 3)
            w.write(encode_example(img, seg, seg, lab, noisy, name))
    return str(path)


@pytest.fixture(scope="module")
def dlrsd(tmp_path_factory):
    base = tmp_path_factory.mktemp("milan")
    names = [f"{s}{i:02d}" for s in SCENES for i in range(6)]
    _dlrsd_records(base / "train.tfrecord", names[::2], 1)
    _dlrsd_records(base / "train_noise_prcnt50.tfrecord", names[::2], 1, noisy_flip=0.3)
    _dlrsd_records(base / "test.tfrecord", names[1::2], 2)
    # a weights file for the small backbone, written here (nothing is downloaded)
    from models.backbones import build_backbone
    keras.utils.set_random_seed(7)
    bb = build_backbone("small_cnn", (224, 224, 3))
    bb.save_weights(str(base / "small_cnn.weights.h5"))
    return base


def _cfg(base, out, **kw):
    d = dict(model_name="MiLaN", dataset="DLRSD", backbone="small_cnn", batch_size=6,
             nb_epoch=2, learning_rate=1e-3, noise_prcnt=50, hash_bits=16, seed=1,
             weights=str(base / "small_cnn.weights.h5"),
             train_tfrecord_paths=str(base / "train.tfrecord"),
             test_tfrecord_paths=str(base / "test.tfrecord"),
             dumps={k: str(out / k) for k in ("model_weights", "summaries", "configs", "features")})
    d.update(kw)
    return Config.from_dict(d)


def test_milan_frozen_trains_on_noisy_records_and_retrieves(dlrsd, tmp_path, capsys):
    cfg = _cfg(dlrsd, tmp_path, triplet_labels="scene")
    res = training.train(cfg, show_progress=False, log=lambda m: None)
    assert res.completed and res.epochs_done == 2
    assert set(res.train_metrics) >= {"triplet_loss", "push_loss", "balance_loss", "loss"}
    # frozen backbone: weights equal the file's, only the hash net moved
    from models.backbones import build_backbone
    ref = build_backbone("small_cnn", (224, 224, 3), cfg.weights)
    for v, w in zip(res.model.backbone.weights, ref.weights):
        assert np.array_equal(v.numpy(), w.numpy())
    with h5py.File(cfg.weights_dir / "train_features.h5", "r") as f:
        assert f["feature"].shape == (12, 128)
        noisy = f["noisy_label"][()]
    # noise_prcnt 50 read the noisy file (some labels rolled)
    assert not all(set(np.flatnonzero(r)) in ({s, s + 1} for s in range(4)) for r in noisy)
    # a second run reuses the cache and gives the same weights (seeded)
    logs = []
    res2 = training.train(cfg, overwrite=True, show_progress=False, log=logs.append)
    assert any("reusing cached" in m for m in logs)
    for v, w in zip(res.model.hash_net.weights, res2.model.hash_net.weights):
        assert np.allclose(v.numpy(), w.numpy())
    dump = json.loads(cfg.config_dump_path.read_text())
    assert dump["model_name"] == "MiLaN" and dump["hash_bits"] == 16
    # retrieval: Hamming by default, scene relevance, and the multi-label metrics
    assert retrieval.main([str(cfg.config_dump_path), "--quiet", "--relevance", "scene"]) == 0
    out = json.loads((cfg.features_dir / "retrieval.json").read_text())
    assert out["metric"] == "hamming" and out["relevance"] == "scene"
    assert out["num_queries"] == 12 and out["max_topk"] == 11
    assert 0.0 <= out["metrics"]["mAP@10"] <= 1.0 and out["queries_without_relevant"] == 0
    with h5py.File(cfg.features_dir / "archive.h5", "r") as f:
        assert f["code"].dtype == np.uint8 and f["code"].shape == (12, 2)
        assert np.array_equal(f["code"][()], np.packbits(f["feature"][()] > 0.5, axis=1))
    assert retrieval.main([str(cfg.config_dump_path), "--quiet", "--max-topk", "10"]) == 0
    out = json.loads((cfg.features_dir / "retrieval.json").read_text())
    assert out["relevance"] == "multilabel" and "ACC@10" in out["metrics"]


def test_milan_resume_reaches_the_uninterrupted_weights(dlrsd, tmp_path):
    full = training.train(_cfg(dlrsd, tmp_path / "a", nb_epoch=3), show_progress=False,
                          log=lambda m: None)
    cfg = _cfg(dlrsd, tmp_path / "b", nb_epoch=3)
    part = training.train(cfg, max_epochs=2, show_progress=False, log=lambda m: None)
    assert not part.completed and part.epochs_done == 2
    done = training.train(cfg, resume=True, show_progress=False, log=lambda m: None)
    assert done.completed and done.epochs_done == 3
    for v, w in zip(full.model.hash_net.weights, done.model.hash_net.weights):
        assert np.allclose(v.numpy(), w.numpy(), atol=1e-6), v.name


@pytest.mark.parametrize("joint", [False, True])
def test_milan_ctrl_c_mid_epoch_then_resume_is_exact(dlrsd, tmp_path, monkeypatch, joint):
    """The loop's guarantees hold for MiLaN (cached-feature triplets or joint image batches):
    Ctrl-C mid-epoch saves a checkpoint, and --resume skips exactly the steps done."""
    from test_loop import checkpoint_counters, interrupt_after_steps

    kw = dict(nb_epoch=2, train_backbone=joint)
    full = training.train(_cfg(dlrsd, tmp_path / "a", **kw), show_progress=False,
                          log=lambda m: None)
    cfg = _cfg(dlrsd, tmp_path / "b", **kw)
    logs = []
    restore = interrupt_after_steps(monkeypatch, 2)  # 12 records, batch 6: 2 steps per epoch
    with pytest.raises(KeyboardInterrupt):
        training.train(cfg, show_progress=False, log=logs.append)
    restore()
    assert any(m.startswith("interrupted: saved") for m in logs)
    assert checkpoint_counters(cfg) == (1, 1)
    done = training.train(cfg, resume=True, show_progress=False, log=lambda m: None)
    assert done.completed and int(done.optimizer.iterations) == 4
    for v, w in zip(full.model.hash_net.weights, done.model.hash_net.weights):
        np.testing.assert_allclose(v.numpy(), w.numpy(), atol=1e-5, err_msg=v.name)
    np.testing.assert_allclose(done.train_metrics["loss"], full.train_metrics["loss"],
                               rtol=1e-5)


def test_milan_damaged_training_file_is_named(dlrsd, tmp_path):
    from run_guard import RunError

    data = (dlrsd / "train_noise_prcnt50.tfrecord").read_bytes()
    bad = tmp_path / "rec"
    bad.mkdir()
    (bad / "train.tfrecord").write_bytes((dlrsd / "train.tfrecord").read_bytes())
    (bad / "train_noise_prcnt50.tfrecord").write_bytes(data[:int(len(data) * 0.6)])
    cfg = _cfg(dlrsd, tmp_path, train_backbone=True,
               train_tfrecord_paths=str(bad / "train.tfrecord"))
    with pytest.raises(RunError, match="train_noise_prcnt50.tfrecord"):
        training.train(cfg, show_progress=False, log=lambda m: None)


def test_milan_frozen_training_lowers_the_triplet_loss(dlrsd, tmp_path):
    short = training.train(_cfg(dlrsd, tmp_path, nb_epoch=1, triplet_labels="scene"),
                           show_progress=False, log=lambda m: None)
    long = training.train(_cfg(dlrsd, tmp_path, nb_epoch=40, triplet_labels="scene"),
                          show_progress=False, log=lambda m: None)
    assert long.train_metrics["triplet_loss"] < 0.5 * short.train_metrics["triplet_loss"]


def test_milan_joint_training_moves_the_backbone(dlrsd, tmp_path):
    cfg = _cfg(dlrsd, tmp_path, train_backbone=True, nb_epoch=1)
    res = training.train(cfg, show_progress=False, log=lambda m: None)
    assert res.completed and "valid_triplets" in res.train_metrics
    from models.backbones import build_backbone
    ref = build_backbone("small_cnn", (224, 224, 3), cfg.weights)
    moved = [not np.allclose(v.numpy(), w.numpy())
             for v, w in zip(res.model.backbone.trainable_weights, ref.trainable_weights)]
    assert any(moved)
    model = keras.models.load_model(str(cfg.feature_model_path))
    assert model.output_shape == (None, 16)


def test_milan_on_ben_records(tmp_path):
    from archives import ben, sample_ben
    raw = sample_ben.write_sample_archive(tmp_path / "raw", seed=3, n_patches=12)
    paths = {s: str(raw / f"{s}.csv") for s in ("train", "val", "test")}
    ben.prepare(raw, tmp_path / "out", paths, noise_levels=[50], workers=1, progress=False)
    rec = next((tmp_path / "out").rglob("train.tfrecord")).parent
    cfg = Config.from_dict(dict(
        model_name="MiLaN", dataset="BEN", backbone="small_cnn", batch_size=3, nb_epoch=1,
        noise_prcnt=50, hash_bits=8, train_tfrecord_paths=str(rec / "train.tfrecord"),
        test_tfrecord_paths=str(rec / "test.tfrecord"),
        dumps={k: str(tmp_path / k) for k in ("model_weights", "summaries", "configs",
                                              "features")}))
    res = training.train(cfg, show_progress=False, log=lambda m: None)
    assert res.completed and np.isfinite(res.train_metrics["loss"])
    assert retrieval.main([str(cfg.config_dump_path), "--quiet"]) == 0
    out = json.loads((cfg.features_dir / "retrieval.json").read_text())
    assert out["metric"] == "hamming" and out["num_queries"] == \
        sum(1 for _ in tf.data.TFRecordDataset(cfg.train_tfrecord_paths))


# ---- deep features: off the shelf and fine-tuned ---------------------------------------------
def test_off_the_shelf_features_come_from_the_weights_file(dlrsd, tmp_path):
    cfg = _cfg(dlrsd, tmp_path, model_name="OffTheShelf", batch_size=4, noise_prcnt=0)
    res = training.train(cfg, show_progress=False, log=lambda m: None)
    assert res.completed and res.training_time_s == 0.0
    model = keras.models.load_model(str(cfg.feature_model_path))
    from models.backbones import build_backbone
    ref = build_backbone("small_cnn", (224, 224, 3), cfg.weights)
    x = np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype(np.float32)
    expect = ref(x, training=False).numpy().mean((1, 2))
    assert np.allclose(model(x).numpy(), expect, atol=1e-5)
    assert retrieval.main([str(cfg.config_dump_path), "--quiet", "--max-topk", "10"]) == 0
    out = json.loads((cfg.features_dir / "retrieval.json").read_text())
    assert out["metric"] == "cosine"
    for name in ("ACC", "PREC", "REC", "HL"):
        assert 0.0 <= out["metrics"][f"{name}@10"] <= 1.0


def test_fine_tuned_bce_from_weights_with_output_features(dlrsd, tmp_path):
    cfg = _cfg(dlrsd, tmp_path, model_name="BCE", batch_size=4, nb_epoch=1,
               feature_layer="output")
    import models
    keras.utils.set_random_seed(0)
    built = models.build_model(cfg)  # starts from the file's weights
    from models.backbones import build_backbone
    ref = build_backbone("small_cnn", (224, 224, 3), cfg.weights)
    assert all(np.array_equal(v.numpy(), w.numpy())
               for v, w in zip(built.backbone.weights, ref.weights))
    res = training.train(cfg, show_progress=False, log=lambda m: None)
    model = keras.models.load_model(str(res.feature_model_path))
    out = model(np.zeros((2, 224, 224, 3), np.float32)).numpy()
    assert out.shape == (2, 17) and ((out > 0) & (out < 1)).all()


def test_inception_v3_backbone_and_its_weights_file(tmp_path):
    from models.backbones import build_backbone
    keras.utils.set_random_seed(0)
    net = build_backbone("inception_v3", (75, 75, 3))
    assert net.output_shape[-1] == 2048
    path = str(tmp_path / "inception.weights.h5")
    net.save_weights(path)
    keras.utils.set_random_seed(1)
    again = build_backbone("inception_v3", (75, 75, 3), path)
    assert all(np.array_equal(a.numpy(), b.numpy())
               for a, b in zip(net.weights[:5], again.weights[:5]))
