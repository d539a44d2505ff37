"""Benchmark: compiled GRID step vs. compiled baseline step (same backbone) and vs. the same
GRID step run eagerly with three apply_gradients calls, as the published code did.

    .venv/bin/python benchmarks/bench_step.py [--model GRID-BCE] [--backbone small_cnn]
        [--batch 16] [--dataset DLRSD|BEN|BENv2 [--bands s2|s1|s1s2] | --inputs all |
         --size 64 --channels 3] [--steps 5] [--repeat 3] [--eager-steps 2] [--no-eager]
        [--xla] [--mixed-precision mixed_bfloat16|mixed_float16] [--profile]

Defaults (small_cnn, 64x64x3) take ~20 s on 2 shared cores; ``--inputs all --backbone
densenet121 --batch 8 --no-eager`` times the archives' real inputs (DLRSD 224x224x3, BEN
120x120x10, BENv2 s1s2 120x120x12) in a few minutes. Results: docs/benchmarks.md.

Prints milliseconds per step (best of --repeat timings of --steps steps) and the ratios
(target: GRID / baseline <= 1.3). ``--xla`` adds the same GRID and baseline steps compiled with
XLA (config ``jit_compile``), ``--mixed-precision`` the steps under that Keras policy (config
``mixed_precision``; loss scaling for float16), each with its ratio to the plain float32 step;
``--profile`` times the step's parts one by one (backbone forward, forward + backward, heads and
VAE branch from a fixed feature map, noisy selection, apply_gradients).
"""
import argparse
import copy
import os
import sys
import time
import types

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from models import build_model, registry  # noqa: E402
from models.precision import POLICIES, loss_scaled, policy_scope  # noqa: E402


INPUTS = {  # --inputs all: the archives' real model inputs
    "DLRSD": ("DLRSD", None), "BEN": ("BEN", None), "BENv2 s1s2": ("BENv2", "s1s2")}


def input_spec(dataset=None, bands=None, size=64, channels=3, classes=17):
    """(input shape, nb_class, description): an archive's model input (``dataset``, optional
    ``bands``) or a square ``size`` x ``size`` x ``channels`` input with ``classes`` classes."""
    if dataset is None:
        return (size, size, channels), classes, f"{size}x{size}x{channels}"
    from archives import registry as archives

    info = archives.get(dataset)
    info = info.with_bands(bands or info.band_set)
    h, w, c = info.model_input_shape
    name = dataset + (f" {info.band_set}" if info.band_set != "default" else "")
    return (h, w, c), info.nb_class, f"{name} {h}x{w}x{c}"


def make_cfg(model, backbone, shape, nb_class, jit=False, precision="off"):
    return types.SimpleNamespace(jit_compile=jit, mixed_precision=precision,
        model_name=model, dataset="DLRSD", nb_class=nb_class,
        out_size=nb_class * (nb_class + 1) // 2, input_shape=tuple(shape), backbone=backbone,
        weights=None, embed_dim=128, noisy_sel_prcnt=10, kl_weight=1.0, seed=0,
        is_grid=model.startswith("GRID"))


def make_batch(B, shape, nb_class, seed=0):
    h, w, c = shape
    rng = np.random.default_rng(seed)
    label = (rng.random((B, nb_class)) < 0.3).astype(np.float32)
    seg = rng.integers(-1, nb_class, (B, h, w)).astype(np.int32)
    return {"image": tf.constant(rng.normal(size=(B, h, w, c)).astype(np.float32)),
            "label": tf.constant(label), "noisy_label": tf.constant(label[::-1].copy()),
            "seg_map": tf.constant(seg), "noisy_seg_map": tf.constant(seg)}


def eager_published_step(model, optimizer, cfg):
    """The published loop's shape: eager, one tape, three apply_gradients per batch."""
    g = model.groups
    kl_weight = float(cfg.kl_weight)

    def step(batch):
        seed = model.noise_seed(optimizer.iterations)
        with tf.GradientTape(persistent=True) as tape:
            res = model.per_sample_losses(batch, training=True, seed=seed)
            n = tf.cast(tf.shape(res["dis"])[0], tf.float32)
            dis = tf.reduce_mean(res["dis"])
            gen = tf.reduce_mean(res["gen"] + res["recon"] + kl_weight * res["kl"])
            hyb = tf.reduce_sum(res["gen"] * res["noisy"] + res["dis"] * (1 - res["noisy"])) / n
        for loss, vs in ((dis, g["discriminative"]), (gen, g["generative"]),
                         (hyb, g["backbone"])):
            optimizer.apply_gradients(zip(tape.gradient(loss, vs), vs))
        return dis
    return step


def timed(step, batch, steps):
    """Seconds per step over ``steps`` steps (waits for the last result)."""
    t = time.perf_counter()
    for _ in range(steps):
        out = step(batch)
    float(out["loss"] if isinstance(out, dict) else out)
    return (time.perf_counter() - t) / steps


def compare(steps_by_name, batch, steps, repeat):
    """Best ms per step of each step function; rounds alternate between them so that load
    from other processes hits all alike."""
    for step in steps_by_name.values():
        timed(step, batch, 1)  # trace and warm up
    best = {k: float("inf") for k in steps_by_name}
    for _ in range(repeat):
        for k, step in steps_by_name.items():
            best[k] = min(best[k], timed(step, batch, steps))
    return {k: v * 1e3 for k, v in best.items()}


def _without_backbone(model):
    """The model with an identity backbone: its step parts from a fixed feature map on."""
    m = copy.copy(model)
    m.backbone = lambda x, training=False: x
    return m


def profile_parts(models, batch, steps, repeat, full):
    """ms per call of each part of the step, compiled separately: backbone forward, backbone
    forward + backward, heads (+ the VAE branch for GRID) forward + backward from a fixed
    feature map, the noisy selection, apply_gradients (Adam over all trainable variables).
    ``models``: {"GRID": model, "baseline": model}; ``full``: their whole-step ms."""
    from losses.selection import select_noisy, selection_counts
    from models.grid import _objectives

    images = batch["image"]
    grid = models["GRID"]
    fmap = tf.stop_gradient(grid.backbone(images, training=False))
    parts = {}

    def fwd_bwd():
        with tf.GradientTape() as tape:
            out = grid.backbone(images, training=True)
            s = tf.reduce_sum(tf.cast(out, tf.float32))
        return tape.gradient(s, grid.groups["backbone"])

    def heads(model):
        bare = _without_backbone(model)
        b = dict(batch, image=fmap)
        variables = model.groups["discriminative"] + model.groups["generative"]

        def fn():
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(b["image"])
                res = bare.per_sample_losses(b, training=True, seed=model.noise_seed(0))
                obj = _objectives(bare, res, tf.constant(float(images.shape[0])), 1.0)
            g = [tape.gradient(obj["dis_loss"], model.groups["discriminative"])]
            if model.is_grid:
                g.append(tape.gradient(obj["generative_total"], model.groups["generative"]))
                g.append(tape.gradient(obj["hybrid_loss"], b["image"]))
            else:
                g.append(tape.gradient(obj["dis_loss"], b["image"]))
            return g, variables
        return fn

    res = grid.per_sample_losses(batch, training=False, seed=grid.noise_seed(0))

    def selection():
        noisy = select_noisy(res["dis"], res["gen"], grid.cfg.noisy_sel_prcnt)
        return selection_counts(noisy, batch["label"], batch["noisy_label"])

    def apply(model):
        opt = keras.optimizers.Adam(1e-3)
        opt.build(model.trainable_variables)
        grads = [tf.zeros_like(v) for v in model.trainable_variables]
        return lambda: opt.apply_gradients(zip(grads, model.trainable_variables))

    fns = {"backbone forward": lambda: grid.backbone(images, training=True),
           "backbone forward + backward": fwd_bwd,
           "heads + VAE branch, fwd + bwd (GRID)": heads(grid),
           "head, fwd + bwd (baseline)": heads(models["baseline"]),
           "noisy selection + counts (GRID)": selection,
           "apply_gradients, all variables (GRID)": apply(grid),
           "apply_gradients, all variables (baseline)": apply(models["baseline"])}
    compiled = {k: tf.function(f) for k, f in fns.items()}
    wrapped = {k: (lambda f: (lambda _batch: {"loss": tf.constant(0.0), "_": f()}))(f)
               for k, f in compiled.items()}
    parts = compare(wrapped, batch, steps, repeat)
    print("step parts, ms per call (each compiled on its own):")
    for k, v in parts.items():
        print(f"  {k:<44} {v:9.1f}")
    print(f"  {'whole GRID step':<44} {full['GRID']:9.1f}")
    print(f"  {'whole baseline step':<44} {full['baseline']:9.1f}")
    extra = full["GRID"] - full["baseline"]
    heads_extra = (parts["heads + VAE branch, fwd + bwd (GRID)"]
                   - parts["head, fwd + bwd (baseline)"])
    print(f"  GRID - baseline: {extra:.1f} ms, of which heads + VAE branch {heads_extra:.1f}, "
          f"selection {parts['noisy selection + counts (GRID)']:.1f}, apply_gradients "
          f"{parts['apply_gradients, all variables (GRID)'] - parts['apply_gradients, all variables (baseline)']:.1f}")


def run_input(a, shape, nb_class, desc):
    """Time the steps at one input; returns {label: ms}."""
    batch = make_batch(a.batch, shape, nb_class)
    grid_name, base_name = a.model, a.model[5:]
    compiled, eager, models = {}, {}, {}
    variants = [(n, False, "off") for n in (base_name, grid_name)]
    variants += [(n, True, "off") for n in (base_name, grid_name)] if a.xla else []
    if a.mixed_precision != "off":
        variants += [(n, False, a.mixed_precision) for n in (base_name, grid_name)]
    for name, jit, precision in variants:
        cfg = make_cfg(name, a.backbone, shape, nb_class, jit, precision)
        label = name + " XLA" * jit + (f" {precision}" if precision != "off" else "")
        with policy_scope(precision):
            keras.utils.set_random_seed(0)
            model = build_model(cfg)
            compiled[label] = model.make_train_step(loss_scaled(keras.optimizers.Adam(1e-3), cfg))
            timed(compiled[label], batch, 1)  # trace under the policy
        if not jit and precision == "off":
            models["GRID" if name == grid_name else "baseline"] = model
        if name == grid_name and not jit and precision == "off" and a.eager:
            opt = keras.optimizers.Adam(1e-3)
            opt.build(model.trainable_variables)
            eager["eager"] = eager_published_step(model, opt, cfg)
    times = compare(compiled, batch, a.steps, a.repeat)
    if eager:  # slow: one round of --eager-steps steps
        times.update(compare(eager, batch, a.eager_steps, 1))
    g, b = times[grid_name], times[base_name]
    print(f"{grid_name} vs {base_name}, backbone {a.backbone}, batch {a.batch}, input {desc}, "
          f"{os.cpu_count()} CPUs, device {tf.config.list_logical_devices()[-1].device_type}")
    print(f"compiled GRID step     : {g:9.1f} ms")
    print(f"compiled baseline step : {b:9.1f} ms   GRID / baseline = {g / b:.2f} (target <= 1.3)")
    for name in (grid_name, base_name) if a.xla else ():
        print(f"XLA {name:>8} step      : {times[name + ' XLA']:9.1f} ms   "
              f"plain / XLA = {times[name] / times[name + ' XLA']:.2f}")
    if a.mixed_precision != "off":
        p = a.mixed_precision
        gm, bm = times[f"{grid_name} {p}"], times[f"{base_name} {p}"]
        print(f"{p} GRID step     : {gm:9.1f} ms   float32 / {p} = {g / gm:.2f}")
        print(f"{p} baseline step : {bm:9.1f} ms   float32 / {p} = {b / bm:.2f}   "
              f"GRID / baseline = {gm / bm:.2f}")
    if "eager" in times:
        print(f"eager GRID step, 3x apply_gradients: {times['eager']:9.1f} ms   "
              f"eager / compiled = {times['eager'] / g:.2f}")
    if a.profile:
        profile_parts(models, batch, a.steps, a.repeat, {"GRID": g, "baseline": b})
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="GRID-BCE",
                    choices=[n for n, m in registry.MODELS.items() if m.is_grid])
    ap.add_argument("--backbone", default="small_cnn")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--dataset", choices=["DLRSD", "BEN", "BENv2"],
                    help="time at this archive's model input (default: --size/--channels)")
    ap.add_argument("--bands", help="band set of --dataset (BENv2: s2, s1, s1s2)")
    ap.add_argument("--inputs", choices=["all"],
                    help="time at DLRSD 224x224x3, BEN 120x120x10 and BENv2 s1s2 120x120x12 "
                         "in turn, then print one table")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--classes", type=int, default=17)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--eager-steps", type=int, default=2)
    ap.add_argument("--no-eager", dest="eager", action="store_false",
                    help="skip the eager comparison")
    ap.add_argument("--xla", action="store_true", help="also time XLA-compiled steps")
    ap.add_argument("--mixed-precision", choices=list(POLICIES), default="off",
                    help="also time the steps under this Keras mixed-precision policy")
    ap.add_argument("--profile", action="store_true",
                    help="also time the step's parts (backbone, heads + VAE branch, "
                         "selection, apply_gradients)")
    a = ap.parse_args()
    if a.bands and not a.dataset:
        ap.error("--bands needs --dataset")
    if a.inputs:
        specs = [input_spec(ds, bands) for ds, bands in INPUTS.values()]
    else:
        specs = [input_spec(a.dataset, a.bands, a.size, a.channels, a.classes)]
    rows = []
    for shape, nb_class, desc in specs:
        times = run_input(a, shape, nb_class, desc)
        rows.append((desc, times))
        print(flush=True)
    if len(rows) > 1:
        g, b = a.model, a.model[5:]
        print(f"| input | {g} ms | {b} ms | GRID / baseline |")
        print("|---|---|---|---|")
        for desc, t in rows:
            print(f"| {desc} | {t[g]:.0f} | {t[b]:.0f} | {t[g] / t[b]:.2f} |")


if __name__ == "__main__":
    main()
