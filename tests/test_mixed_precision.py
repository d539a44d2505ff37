"""Mixed precision ("mixed_precision": mixed_bfloat16 / mixed_float16) on CPU: the config key,
the policy's scope, first-step losses and selection against float32 on a fixed batch, loss
scaling for float16, and short runs of every model_name without NaN and with float32 exports.

Tolerances (relative, first-step losses against float32): bfloat16 keeps 8 significand bits
(a rounding error up to 0.4 % per operation), float16 11 bits (0.05 %); the losses are means
over many terms, so 1 % for bfloat16 and 0.2 % for float16 hold with a wide margin (measured:
at most 0.05 % and 0.01 %).
"""
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

import training
from config import ConfigError
from conftest import run_config
from models import build_model
from models.registry import names as model_names
from models.precision import float32_output, loss_scaled, policy_scope

RTOL = {"mixed_bfloat16": 1e-2, "mixed_float16": 2e-3}
LOW = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}
LOSSES = ("dis_loss", "gen_loss", "recon_loss", "kl_loss", "hybrid_loss", "loss")
B, SIZE, C = 8, 32, 5


def _model_cfg(name, policy="off"):
    return types.SimpleNamespace(
        model_name=name, nb_class=C, out_size=C * (C + 1) // 2, input_shape=(SIZE, SIZE, 3),
        backbone="small_cnn", weights=None, embed_dim=8, noisy_sel_prcnt=25, kl_weight=1.0,
        seed=0, jit_compile=False, mixed_precision=policy)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    label = (rng.random((B, C)) < 0.4).astype(np.float32)
    seg = rng.integers(-1, C, (B, SIZE, SIZE)).astype(np.int32)
    return {"image": tf.constant(rng.normal(size=(B, SIZE, SIZE, 3)).astype(np.float32)),
            "label": tf.constant(label), "noisy_label": tf.constant(label[::-1].copy()),
            "seg_map": tf.constant(seg), "noisy_seg_map": tf.constant(seg[::-1].copy())}


def _first_step(name, policy, batch, optimizer=None):
    """(model, optimizer, per-sample losses before the step, the step's metrics); same initial
    weights for every policy (same seed; variables are float32 in all)."""
    cfg = _model_cfg(name, policy)
    with policy_scope(policy):
        keras.utils.set_random_seed(0)
        model = build_model(cfg)
        opt = loss_scaled(optimizer or keras.optimizers.Adam(1e-3), cfg)
        step = model.make_train_step(opt)
        res = model.per_sample_losses(batch, training=True, seed=model.noise_seed(0))
        out = {k: float(v) for k, v in step(batch).items()}
    return model, opt, res, out


_FLOAT32 = {}


def _float32_reference(name, batch):
    if name not in _FLOAT32:
        _FLOAT32[name] = _first_step(name, "off", batch)
    return _FLOAT32[name]


# ---- config and policy scope ------------------------------------------------------------
def test_config_key(records, tmp_path):
    plain = run_config(records, tmp_path)
    assert plain.mixed_precision == "off"
    assert run_config(records, tmp_path, mixed_precision="off").run_name == plain.run_name
    bf16 = run_config(records, tmp_path, mixed_precision="mixed_bfloat16")
    assert bf16.run_name == plain.run_name + "-mixed_bfloat16"
    with pytest.raises(ConfigError, match=r"mixed_precision: 'float16' is not one of off, "
                                          r"mixed_float16, mixed_bfloat16"):
        run_config(records, tmp_path, mixed_precision="float16")
    with pytest.raises(ConfigError, match="mixed_precision: expected a string"):
        run_config(records, tmp_path, mixed_precision=True)


def test_policy_scope_restores_the_policy_also_on_error():
    assert keras.mixed_precision.global_policy().name == "float32"
    with pytest.raises(RuntimeError):
        with policy_scope("mixed_float16"):
            assert keras.mixed_precision.global_policy().name == "mixed_float16"
            raise RuntimeError("boom")
    assert keras.mixed_precision.global_policy().name == "float32"
    with policy_scope("off"):
        assert keras.mixed_precision.global_policy().name == "float32"


# ---- first step on a fixed batch ------------------------------------------------------------
@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
@pytest.mark.parametrize("name", ["GRID-BCE", "GRID-PCE", "GRID-RRL"])
def test_first_step_matches_float32(name, policy, batch):
    _, _, res32, out32 = _float32_reference(name, batch)
    model, opt, res, out = _first_step(name, policy, batch)
    # the policy was in effect: low-precision compute, float32 variables and losses
    feat = model.forward(batch["image"])["feature"]
    assert feat.dtype == LOW[policy]
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    assert all(res[k].dtype == tf.float32 for k in ("dis", "gen", "recon", "kl", "noisy"))
    assert isinstance(opt, keras.optimizers.LossScaleOptimizer) == (policy == "mixed_float16")
    for key in LOSSES:
        assert out[key] == pytest.approx(out32[key], rel=RTOL[policy]), key
    # same selected samples; the float32 scores leave a clear gap at the cut, so this is not luck
    assert np.array_equal(res["noisy"].numpy(), res32["noisy"].numpy())
    assert res32["noisy"].numpy().sum() == 2 and out["_nsel"] == out32["_nsel"] == 2
    for key in ("_tp", "sel_precision", "sel_recall"):
        assert out[key] == out32[key]


@pytest.mark.parametrize("name", ["GRID-BCE", "GRID-PCE", "GRID-RRL"])
def test_float32_scores_leave_a_gap_at_the_selection_cut(name, batch):
    from losses.selection import minmax_norm

    _, _, res32, _ = _float32_reference(name, batch)
    score = np.sort((minmax_norm(res32["dis"]) - minmax_norm(res32["gen"])).numpy())[::-1]
    assert score[1] - score[2] > 0.02  # 2 of 8 selected; low precision moves scores ~0.005


def test_float16_loss_scaling_unscales_every_group(batch):
    """SGD (not scale-invariant like Adam): the first applied float16 step moves each variable
    group (backbone, discriminative, generative; three losses, one apply_gradients) by the
    float32 step.
    A step whose scaled gradients overflow is skipped and the scale halved, so step until one
    is applied."""
    keras.utils.set_random_seed(0)
    with policy_scope("off"):
        ref = build_model(_model_cfg("GRID-BCE"))
    cfg = _model_cfg("GRID-BCE", "mixed_float16")
    with policy_scope("mixed_float16"):
        keras.utils.set_random_seed(0)
        model = build_model(cfg)
        opt = loss_scaled(keras.optimizers.SGD(0.1), cfg)
        step = model.make_train_step(opt)
        before = {k: [v.numpy() for v in vs] for k, vs in model.groups.items()}
        for _ in range(20):
            step(batch)
            if int(opt.iterations) == 1:
                break
    assert int(opt.iterations) == 1 and float(opt.dynamic_scale.numpy()) > 1.0
    ref_opt = keras.optimizers.SGD(0.1)
    ref.make_train_step(ref_opt)(batch)
    for group, vs in model.groups.items():
        d16 = np.concatenate([(v.numpy() - b).ravel() for v, b in zip(vs, before[group])])
        d32 = np.concatenate([(v.numpy() - b).ravel()
                              for v, b in zip(ref.groups[group], before[group])])
        n32 = np.linalg.norm(d32)
        assert n32 > 0, group
        # an unscaled group would be 2**15 times too large; float16 rounding in the backward
        # pass through BatchNorm moves backbone gradients by ~3 % (measured), heads by ~0.05 %
        assert np.linalg.norm(d16) == pytest.approx(n32, rel=1e-2), group
        assert np.linalg.norm(d16 - d32) <= 0.1 * n32, group


def test_float32_output_casts_only_low_precision_models():
    with policy_scope("mixed_bfloat16"):
        inp = keras.Input((4,))
        low = keras.Model(inp, keras.layers.Dense(3)(inp))
    assert str(low.output.dtype) == "bfloat16"
    cast = float32_output(low)
    assert cast(np.ones((2, 4), np.float32)).dtype == tf.float32
    inp = keras.Input((4,))
    plain = keras.Model(inp, keras.layers.Dense(3)(inp))
    assert float32_output(plain) is plain


# ---- short runs of every model_name -----------------------------------------------------------
# float16 convolutions are emulated on CPU (a 224 x 224 GRID-BCE epoch: ~85 s against ~8 s in
# bfloat16), so the trained float16 steps are covered on 32 x 32 above; here only the runs
# whose float16 part is cheap
RUNS = [(name, "mixed_bfloat16") for name in model_names()] + [
    (name, "mixed_float16") for name in ("MiLaN", "OffTheShelf")]


@pytest.mark.parametrize("name,policy", RUNS)
def test_short_run_trains_without_nan_and_exports_float32(name, policy, records, tmp_path):
    extra = {"batch_size": 4}
    if name == "MiLaN":  # joint training under bfloat16, the frozen backbone's path under float16
        extra = {"batch_size": 6, "hash_bits": 16, "train_backbone": policy == "mixed_bfloat16"}
    cfg = run_config(records, tmp_path, model_name=name, mixed_precision=policy, **extra)
    result = training.train(cfg, show_progress=False)
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after the run
    assert result.completed
    values = {**result.train_metrics, **result.val_metrics}
    if name != "OffTheShelf":
        assert values and all(np.isfinite(v) for v in values.values()), values
        assert np.isfinite(values["loss"])
    exported = keras.saving.load_model(cfg.feature_model_path, compile=False)
    out = exported(np.zeros((2, *cfg.input_shape), np.float32))
    assert out.dtype == tf.float32 and np.all(np.isfinite(out.numpy()))
    assert LOW[policy] in _compute_dtypes(exported)  # the export computes as it trained


def _compute_dtypes(model) -> set:
    out = set()
    for layer in model.layers:
        out |= _compute_dtypes(layer) if hasattr(layer, "layers") else {layer.compute_dtype}
    return out
