"""Tests of models/: shapes, parameter groups, the compiled GRID step against hand-computed
Adam updates, baselines, feature_model save/load, backbones, tf.distribute on 2 CPU devices."""
import os
import subprocess
import sys
import textwrap
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from losses import relation_targets
from models import build_model
from models.backbones import BACKBONES, build_backbone
from models.backbones import resolve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C = 5


def make_cfg(model_name="GRID-BCE", **kw):
    d = dict(model_name=model_name, dataset="DLRSD", nb_class=C, out_size=C * (C + 1) // 2,
             input_shape=(32, 32, 3), backbone="small_cnn", weights=None, embed_dim=8,
             noisy_sel_prcnt=25, kl_weight=1.0, seed=3, is_grid=model_name.startswith("GRID"))
    d.update(kw)
    return types.SimpleNamespace(**d)


def make_batch(B=8, hw=32, seed=0):
    rng = np.random.default_rng(seed)
    label = (rng.random((B, C)) < 0.5).astype(np.float32)
    noisy = label.copy()
    noisy[: B // 2, 0] = 1 - noisy[: B // 2, 0]  # the first half is corrupted
    seg = rng.integers(-1, C, (B, hw, hw)).astype(np.int32)
    return {"image": tf.constant(rng.normal(size=(B, hw, hw, 3)).astype(np.float32)),
            "label": tf.constant(label), "noisy_label": tf.constant(noisy),
            "seg_map": tf.constant(seg), "noisy_seg_map": tf.constant(seg[:, ::-1].copy()),
            "patch_name": tf.constant([f"p{i}" for i in range(B)])}


def adam_first_update(g, lr=1e-3, b1=0.9, b2=0.999, eps=1e-7):
    """Keras Adam's first update (step 1, no amsgrad) for gradient g."""
    m, v = (1 - b1) * g, (1 - b2) * g * g
    alpha = lr * np.sqrt(1 - b2) / (1 - b1)
    return -alpha * m / (np.sqrt(v) + eps)


def ids(vs):
    return {id(v) for v in vs}


# ---------------------------------------------------------------- structure
@pytest.mark.parametrize("name,out_shape", [("GRID-BCE", (C,)), ("GRID-RRL", (15,)),
                                            ("GRID-PCE", (32, 32, C)), ("BCE", (C,))])
def test_shapes_and_groups(name, out_shape):
    cfg = make_cfg(name)
    m = build_model(cfg)
    out = m.forward(make_batch(2)["image"], training=False, seed=tf.constant([1, 2], tf.int64))
    assert tuple(out["dis"].shape) == (2,) + out_shape
    assert tuple(m.feature_model(make_batch(2)["image"]).shape) == (2, 128)
    g = m.groups
    assert ids(g["backbone"]) == ids(m.backbone.trainable_variables)
    assert not ids(g["backbone"]) & ids(g["discriminative"])
    if cfg.is_grid:
        assert tuple(out["gen"].shape) == (2,) + out_shape
        assert tuple(out["decoded"].shape) == tuple(out["feature"].shape)
        assert out["z"].shape[-1] == 8
        assert ids(g["generative"]) == ids(m.latent.trainable_variables
                                           + m.decoder.trainable_variables
                                           + m.gen_head.trainable_variables)
        assert not ids(g["generative"]) & (ids(g["backbone"]) | ids(g["discriminative"]))
    else:
        assert g["generative"] == [] and set(m.keras_models) == {"backbone", "discriminative_head"}
    assert len(m.trainable_variables) == sum(len(v) for v in g.values())
    # feature_model shares the backbone's weights
    assert ids(m.feature_model.trainable_variables) == ids(g["backbone"])


def test_eps_is_stateless_per_sample_and_per_step():
    m = build_model(make_cfg())
    x = make_batch(4)["image"]
    a = m.forward(x, training=False, seed=m.noise_seed(5))
    b = m.forward(x, training=False, seed=m.noise_seed(5))
    c = m.forward(x, training=False, seed=m.noise_seed(6))
    np.testing.assert_array_equal(a["z"].numpy(), b["z"].numpy())
    assert not np.allclose(a["z"].numpy(), c["z"].numpy())
    eps = ((a["z"] - a["mu"]) / a["std"]).numpy()
    assert not np.allclose(eps[0], eps[1])  # one draw per sample, not one per batch
    np.testing.assert_array_equal(m.forward(x)["z"].numpy(), m.forward(x)["mu"].numpy())


# ---------------------------------------------------------------- the GRID step
def _expected_grid_grads(m, batch, cfg):
    """The three group gradients computed by hand from the per-sample losses."""
    with tf.GradientTape(persistent=True) as tape:
        res = m.per_sample_losses(batch, training=True, seed=m.noise_seed(0))
        B = float(batch["image"].shape[0])
        noisy = res["noisy"]
        dis_mean = tf.reduce_mean(res["dis"])
        gen_total = (tf.reduce_mean(res["gen"]) + tf.reduce_mean(res["recon"])
                     + cfg.kl_weight * tf.reduce_mean(res["kl"]))
        hybrid = (tf.reduce_sum(tf.boolean_mask(res["gen"], noisy > 0))
                  + tf.reduce_sum(tf.boolean_mask(res["dis"], noisy == 0))) / B
    g = m.groups
    grads = {"discriminative": tape.gradient(dis_mean, g["discriminative"]),
             "generative": tape.gradient(gen_total, g["generative"]),
             "backbone": tape.gradient(hybrid, g["backbone"])}
    leak = {"dis->backbone": tape.gradient(dis_mean, g["backbone"]),
            "hybrid->dis": tape.gradient(hybrid, g["discriminative"]),
            "hybrid->gen": tape.gradient(hybrid, g["generative"])}
    return grads, leak, res, {"dis_loss": dis_mean, "hybrid_loss": hybrid}


@pytest.mark.parametrize("name", ["GRID-BCE", "GRID-RRL", "GRID-PCE"])
def test_grid_step_updates_each_group_from_its_own_loss(name):
    cfg = make_cfg(name)
    m = build_model(cfg)
    batch = make_batch(8)
    before = [v.numpy().copy() for v in m.trainable_variables]
    grads, leak, res, ref = _expected_grid_grads(m, batch, cfg)
    # the test is meaningful: the other losses do reach these variables
    for k, gs in leak.items():
        assert any(gg is not None and np.abs(gg.numpy()).max() > 0 for gg in gs), k
    opt = keras.optimizers.Adam(1e-3)
    step = m.make_train_step(opt)
    out = step(batch)
    assert int(opt.iterations) == 1
    np.testing.assert_allclose(float(out["dis_loss"]), float(ref["dis_loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(out["hybrid_loss"]), float(ref["hybrid_loss"]), rtol=1e-5)
    # selection: n = floor(8 * 25 / 100) = 2 samples
    assert float(tf.reduce_sum(res["noisy"])) == 2
    expected_grads = {}
    for group, vs in m.groups.items():
        for v, gg in zip(vs, grads[group]):
            expected_grads[id(v)] = gg.numpy()
    for v, old in zip(m.trainable_variables, before):
        want = old + adam_first_update(expected_grads[id(v)])
        np.testing.assert_allclose(v.numpy(), want, rtol=1e-4, atol=2e-6, err_msg=v.path)
    step(batch)
    assert int(opt.iterations) == 2
    assert set(out) == {"dis_loss", "gen_loss", "recon_loss", "kl_loss", "hybrid_loss", "loss",
                        "sel_precision", "sel_recall", "_tp", "_nsel", "_ncorr"}


def test_selection_metrics_of_the_step():
    cfg = make_cfg(noisy_sel_prcnt=50)
    m = build_model(cfg)
    batch = make_batch(8)
    res = m.per_sample_losses(batch, training=True, seed=m.noise_seed(0))
    sel = res["noisy"].numpy()
    corrupted = np.array([1, 1, 1, 1, 0, 0, 0, 0], np.float32)
    out = m.make_train_step(keras.optimizers.Adam())(batch)
    np.testing.assert_allclose(float(out["sel_precision"]), (sel * corrupted).sum() / 4, atol=1e-6)
    np.testing.assert_allclose(float(out["sel_recall"]), (sel * corrupted).sum() / 4, atol=1e-6)
    clean = dict(batch, noisy_label=batch["label"])  # nothing corrupted: recall 0, not NaN
    out = m.make_eval_step()(clean)
    assert float(out["sel_recall"]) == 0.0 and float(out["sel_precision"]) == 0.0
    cfg0 = make_cfg(noisy_sel_prcnt=0)  # nothing selected: precision 0, not NaN
    out = build_model(cfg0).make_eval_step()(batch)
    assert float(out["sel_precision"]) == 0.0 and np.isfinite(float(out["loss"]))


@pytest.mark.parametrize("name", ["BCE", "RRL"])
def test_baseline_step_is_plain_adam_on_mean_task_loss(name):
    cfg = make_cfg(name)
    m = build_model(cfg)
    batch = make_batch(8)
    before = [v.numpy().copy() for v in m.trainable_variables]
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(m.per_sample_losses(batch, training=True)["dis"])
    grads = tape.gradient(loss, m.trainable_variables)
    opt = keras.optimizers.Adam(1e-3)
    out = m.make_train_step(opt)(batch)
    assert int(opt.iterations) == 1 and "sel_precision" not in out
    np.testing.assert_allclose(float(out["loss"]), float(loss), rtol=1e-5)
    for v, old, gg in zip(m.trainable_variables, before, grads):
        np.testing.assert_allclose(v.numpy(), old + adam_first_update(gg.numpy()),
                                   rtol=1e-4, atol=2e-6)


def test_rrl_targets_in_graph_match_numpy_on_the_noisy_map():
    cfg = make_cfg("RRL")
    m = build_model(cfg)
    batch = make_batch(3)
    t = m.variant.targets(batch, m.cfg).numpy()
    np.testing.assert_allclose(t, relation_targets(batch["noisy_seg_map"].numpy(), C), atol=1e-5)


def test_eval_step_is_deterministic_and_leaves_weights():
    cfg = make_cfg("GRID-PCE")
    m = build_model(cfg)
    before = [v.numpy().copy() for v in m.trainable_variables]
    ev = m.make_eval_step()
    a, b = ev(make_batch(4)), ev(make_batch(4))
    assert all(float(a[k]) == float(b[k]) for k in a)
    for v, old in zip(m.trainable_variables, before):
        np.testing.assert_array_equal(v.numpy(), old)


@pytest.mark.parametrize("name", ["GRID-BCE", "GRID-PCE"])
def test_batchnorm_modes_and_one_backbone_pass_per_step(name):
    """Train step: BatchNorm in training mode (moving statistics move) and the backbone run
    once (its 4 convolutions appear once in the traced graph); eval step and feature_model:
    inference mode (moving statistics unchanged; feature_model equals the pooled forward)."""
    cfg = make_cfg(name)
    m = build_model(cfg)
    bns = [ly for ly in m.backbone.layers if isinstance(ly, keras.layers.BatchNormalization)]
    assert bns
    batch = make_batch(8)
    step = m.make_train_step(keras.optimizers.Adam())
    before = [bn.moving_mean.numpy().copy() for bn in bns]
    step(batch)
    assert all(not np.allclose(b, bn.moving_mean.numpy()) for b, bn in zip(before, bns))
    after = [bn.moving_mean.numpy().copy() for bn in bns]
    m.make_eval_step()(batch)
    feat = m.feature_model(batch["image"]).numpy()
    for a, bn in zip(after, bns):
        np.testing.assert_array_equal(a, bn.moving_mean.numpy())
    pooled = tf.reduce_mean(m.forward(batch["image"])["feature"], axis=[1, 2]) \
        if name == "GRID-PCE" else m.forward(batch["image"])["feature"]
    np.testing.assert_allclose(feat, pooled.numpy(), rtol=1e-5, atol=1e-6)
    graph = step.get_concrete_function(batch).graph
    backbone_convs = [op.name for op in graph.get_operations()
                      if op.type == "Conv2D" and op.name.startswith("small_cnn")]
    assert len(backbone_convs) == 4  # small_cnn: conv1..conv4, forward pass computed once


def test_unknown_model_name():
    with pytest.raises(ValueError, match="model_name"):
        build_model(make_cfg("GRID-XYZ"))


@pytest.mark.slow
# ---------------------------------------------------------------- feature model and backbones
def test_feature_model_saves_and_loads_in_a_fresh_process(tmp_path):
    m = build_model(make_cfg("GRID-RRL"))
    m.make_train_step(keras.optimizers.Adam())(make_batch(4))  # move BN statistics
    x = make_batch(3, seed=7)["image"].numpy()
    path, xin, ref = tmp_path / "feature_model.keras", tmp_path / "x.npy", tmp_path / "ref.npy"
    m.feature_model.save(path)
    np.save(xin, x)
    np.save(ref, m.feature_model.predict(x, verbose=0))
    code = textwrap.dedent(f"""
        import numpy as np, keras
        fm = keras.models.load_model({str(path)!r})
        np.testing.assert_allclose(fm.predict(np.load({str(xin)!r}), verbose=0),
                                   np.load({str(ref)!r}), rtol=1e-5, atol=1e-6)
        print("OK", fm.output.shape)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=str(tmp_path),
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=120)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


def test_every_backbone_name_builds():
    assert set(BACKBONES) == {"densenet121", "resnet50", "resnet101", "resnet152", "vgg16",
                              "vgg19", "mobilenet_v2", "small_cnn", "inception_v3"}
    channels = {"densenet121": 1024, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048,
                "vgg16": 512, "vgg19": 512, "mobilenet_v2": 1280, "small_cnn": 128}
    for name in BACKBONES:  # every name resolves; the deep ones are slow to build on CPU
        assert callable(resolve(name))
    for name in ("small_cnn", "vgg16", "mobilenet_v2", "resnet50"):
        bb = build_backbone(name, (32, 32, 3))
        assert bb.output.shape[-1] == channels[name] and len(bb.output.shape) == 4, name
    dn = build_backbone("densenet121", (120, 120, 10))  # BEN input
    assert tuple(dn.output.shape[1:]) == (3, 3, 1024)


def test_densenet_pce_head_matches_dlrsd_map_size():
    from models.pce import build_head, upsampling_plan
    assert upsampling_plan((7, 7), (224, 224)) == ((4, 4, 2), False)
    assert upsampling_plan((3, 3), (120, 120)) == ((5, 4, 2), False)
    assert upsampling_plan((7, 7), (120, 120)) == ((3, 3, 2), True)  # 126 px, resized to 120
    head = build_head((7, 7, 16), make_cfg(nb_class=17), "h", map_hw=(224, 224))
    assert tuple(head.output.shape[1:]) == (224, 224, 17)
    head = build_head((3, 3, 16), make_cfg(), "h", map_hw=(100, 100))  # needs the final resize
    assert tuple(head.output.shape[1:]) == (100, 100, C)


def test_local_weights_file_loads_and_bad_names_fail(tmp_path):
    a = build_backbone("small_cnn", (32, 32, 3))
    path = str(tmp_path / "bb.weights.h5")
    a.save_weights(path)
    b = build_backbone("small_cnn", (32, 32, 3), weights=path)
    for va, vb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())
    m = build_model(make_cfg(weights=path))
    np.testing.assert_array_equal(m.backbone.weights[0].numpy(), a.weights[0].numpy())
    with pytest.raises(ValueError, match="unknown backbone 'resnet18'"):
        build_backbone("resnet18", (32, 32, 3))
    with pytest.raises(FileNotFoundError, match="not found"):
        build_backbone("small_cnn", (32, 32, 3), weights=str(tmp_path / "missing.h5"))


# ---------------------------------------------------------------- tf.distribute, 2 CPU devices
_DISTRIBUTED = """
import sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np, keras
from test_models import make_cfg, make_batch, adam_first_update
from models import build_model
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
cfg = make_cfg("GRID-BCE", noisy_sel_prcnt=50)
with strategy.scope():
    m = build_model(cfg)
    opt = keras.optimizers.Adam(1e-3)
batch = make_batch(8)
before = [v.numpy().copy() for v in m.trainable_variables]
# expected: per replica half batch, seed folded with the replica id, losses / global batch 8,
# gradients summed over replicas
tot = {}
exp_metrics = {"dis_loss": 0.0, "hybrid_loss": 0.0}
for r in range(2):
    half = {k: v[4 * r:4 * r + 4] for k, v in batch.items()}
    with tf.GradientTape(persistent=True) as tape:
        res = m.per_sample_losses(half, training=True, seed=m.noise_seed(0, r))
        dis = tf.reduce_sum(res["dis"]) / 8
        gen = tf.reduce_sum(res["gen"] + res["recon"] + res["kl"]) / 8
        hyb = tf.reduce_sum(res["gen"] * res["noisy"] + res["dis"] * (1 - res["noisy"])) / 8
    exp_metrics["dis_loss"] += float(dis); exp_metrics["hybrid_loss"] += float(hyb)
    for grp, loss in (("discriminative", dis), ("generative", gen), ("backbone", hyb)):
        for v, g in zip(m.groups[grp], tape.gradient(loss, m.groups[grp])):
            tot[id(v)] = tot.get(id(v), 0) + g.numpy()
dist = strategy.experimental_distribute_values_from_function(
    lambda ctx: {k: v[4 * ctx.replica_id_in_sync_group: 4 * ctx.replica_id_in_sync_group + 4]
                 for k, v in batch.items()})
step = m.make_train_step(opt, strategy=strategy)
out = step(dist)
it = int(opt.iterations.numpy()); assert it == 1, it
for k in exp_metrics:
    np.testing.assert_allclose(float(out[k]), exp_metrics[k], rtol=1e-5)
for v, old in zip(m.trainable_variables, before):
    vals = [x.numpy() for x in strategy.experimental_local_results(v.value)]
    np.testing.assert_allclose(vals[0], vals[1])
    np.testing.assert_allclose(vals[0], old + adam_first_update(tot[id(v)]), rtol=1e-4, atol=2e-6)
ev = m.make_eval_step(strategy=strategy)(dist)
ds = tf.data.Dataset.from_tensor_slices(batch).batch(8)  # the way train.py feeds batches
for b in strategy.experimental_distribute_dataset(ds):
    out2 = step(b)
assert int(opt.iterations.numpy()) == 2 and np.isfinite(float(out2["loss"]))
print("OK", {k: float(v) for k, v in out.items()}, {k: float(v) for k, v in ev.items()})
"""


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus():
    """Own process: logical devices must be configured before TensorFlow initialises.
    Each replica selects within its half batch with its own eps (seed folded with the replica
    id); losses are divided by the global batch; gradients are summed over replicas; one Adam
    update; metrics are reduced over replicas."""
    r = subprocess.run([sys.executable, "-c", _DISTRIBUTED, ROOT], capture_output=True, text=True,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=180)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


def test_checkpoint_resume_reaches_the_same_weights(tmp_path):
    """Optimizer state, BN statistics and the step counter (hence eps) restore exactly with
    tf.train.Checkpoint over ``keras_models``; build the step (which builds the optimizer)
    before restoring."""
    cfg = make_cfg("GRID-BCE")
    b1, b2 = make_batch(8, seed=1), make_batch(8, seed=2)
    m, opt = build_model(cfg), keras.optimizers.Adam(1e-3)
    step = m.make_train_step(opt)
    step(b1)
    path = tf.train.Checkpoint(optimizer=opt, **m.keras_models).write(str(tmp_path / "ckpt"))
    step(b2)
    m2, opt2 = build_model(cfg), keras.optimizers.Adam(1e-3)
    step2 = m2.make_train_step(opt2)
    tf.train.Checkpoint(optimizer=opt2, **m2.keras_models).read(path).assert_consumed()
    assert int(opt2.iterations) == 1
    step2(b2)
    for a, b in zip(m.backbone.weights + m.trainable_variables,
                    m2.backbone.weights + m2.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("name", ["GRID-BCE", "GRID-PCE", "GRID-RRL", "BCE", "PCE", "RRL"])
def test_xla_steps_equal_the_plain_steps(name):
    """jit_compile: the same losses, selection and weights as the plain compiled steps (eps is
    drawn outside XLA, RRL targets by the static-shape form), up to float round-off."""
    runs = []
    for jit in (False, True):
        cfg = make_cfg(name, jit_compile=jit)
        keras.utils.set_random_seed(0)
        m = build_model(cfg)
        opt = keras.optimizers.Adam(1e-3)
        step, ev = m.make_train_step(opt), m.make_eval_step()
        outs = [step(make_batch(8, seed=i)) for i in range(3)] + [ev(make_batch(8, seed=9))]
        runs.append(([{k: float(v) for k, v in o.items()} for o in outs],
                     [v.numpy() for v in m.trainable_variables]))
    (plain, w_plain), (xla, w_xla) = runs
    for a, b in zip(plain, xla, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-6, err_msg=k)
    if name.startswith("GRID"):
        assert any(o["sel_recall"] > 0 for o in plain[:3])  # a selection found noisy samples
    for a, b in zip(w_plain, w_xla, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_mean_metrics_pools_selection_counts():
    """Three steps: 3 of 3 selected are corrupted (28 corrupted), 3 of 3 (27), nothing selected
    in a short last batch (5 corrupted). Pooled precision 6/6 = 1 (the mean of the per-step
    ratios would be 2/3), recall 6/60; losses are plain means."""
    from models.base import mean_metrics

    steps = [dict(loss=1.0, _tp=3, _nsel=3, _ncorr=28, sel_precision=1.0, sel_recall=3 / 28),
             dict(loss=2.0, _tp=3, _nsel=3, _ncorr=27, sel_precision=1.0, sel_recall=3 / 27),
             dict(loss=3.0, _tp=0, _nsel=0, _ncorr=5, sel_precision=0.0, sel_recall=0.0)]
    sums = {k: sum(s[k] for s in steps) for k in steps[0]}
    out = mean_metrics(sums, len(steps))
    assert out == {"loss": 2.0, "sel_precision": 1.0, "sel_recall": 0.1}
    assert mean_metrics({"loss": 4.0}, 2) == {"loss": 2.0}  # baselines: no selection
    assert mean_metrics({"_tp": 0, "_nsel": 0, "_ncorr": 0}, 1) == {"sel_precision": 0.0,
                                                                    "sel_recall": 0.0}


def test_steps_of_models_built_one_after_another_do_not_count_as_retracing():
    """A study trains cell after cell in one process: each new model's steps trace for their
    own batch shapes (a full and a short last batch) and TF must not count them together as
    retracing of one function (its warning on a study's later cells)."""
    import logging

    warnings = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    tf.get_logger().addHandler(handler)
    try:
        for _ in range(3):  # three "cells"
            m = build_model(make_cfg("BCE"))
            step, ev = m.make_train_step(keras.optimizers.Adam()), m.make_eval_step()
            for n in (4, 4, 2, 4, 2):  # full and short batches, each shape traced once
                step(make_batch(n))
                ev(make_batch(n))
            assert step.experimental_get_tracing_count() == ev.experimental_get_tracing_count() == 2
    finally:
        tf.get_logger().removeHandler(handler)
    assert not [w for w in warnings if "retracing" in w]
