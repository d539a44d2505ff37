"""Benchmark: compiled GRID step vs. compiled baseline step (same backbone) and vs. the same
GRID step run eagerly with three apply_gradients calls, as the published code did.

    .venv/bin/python benchmarks/bench_step.py [--model GRID-BCE] [--backbone small_cnn]
        [--batch 16] [--size 64] [--steps 5] [--repeat 3] [--eager-steps 2] [--no-eager] [--xla]

Defaults (small_cnn) take ~20 s on 2 shared cores; ``--backbone densenet121 --batch 8
--size 64 --steps 2 --repeat 2`` takes ~2.5 min there (mostly tracing and the eager steps).

Prints milliseconds per step (best of --repeat timings of --steps steps) and the ratios
(target: GRID / baseline <= 1.3). ``--xla`` adds the same GRID and baseline steps compiled with
XLA (config ``jit_compile``) and their ratios to the plain compiled steps.
"""
import argparse
import os
import sys
import time
import types

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from models import build_model, registry  # noqa: E402


def make_cfg(model, backbone, size, nb_class, jit=False):
    return types.SimpleNamespace(jit_compile=jit,
        model_name=model, dataset="DLRSD", nb_class=nb_class,
        out_size=nb_class * (nb_class + 1) // 2, input_shape=(size, size, 3), backbone=backbone,
        weights=None, embed_dim=128, noisy_sel_prcnt=10, kl_weight=1.0, seed=0,
        is_grid=model.startswith("GRID"))


def make_batch(B, size, nb_class, seed=0):
    rng = np.random.default_rng(seed)
    label = (rng.random((B, nb_class)) < 0.3).astype(np.float32)
    seg = rng.integers(-1, nb_class, (B, size, size)).astype(np.int32)
    return {"image": tf.constant(rng.normal(size=(B, size, size, 3)).astype(np.float32)),
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="GRID-BCE",
                    choices=[n for n, m in registry.MODELS.items() if m.is_grid])
    ap.add_argument("--backbone", default="small_cnn")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--classes", type=int, default=17)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--eager-steps", type=int, default=2)
    ap.add_argument("--no-eager", action="store_true", help="skip the eager comparison")
    ap.add_argument("--xla", action="store_true", help="also time XLA-compiled steps")
    a = ap.parse_args()
    batch = make_batch(a.batch, a.size, a.classes)
    compiled, eager = {}, {}
    variants = [(n, False) for n in (a.model[5:], a.model)]
    variants += [(n, True) for n in (a.model[5:], a.model)] if a.xla else []
    for name, jit in variants:
        cfg = make_cfg(name, a.backbone, a.size, a.classes, jit)
        keras.utils.set_random_seed(0)
        model = build_model(cfg)
        compiled[name + " XLA" * jit] = model.make_train_step(keras.optimizers.Adam(1e-3))
        if jit:
            continue
        if name == a.model and not a.no_eager:
            opt = keras.optimizers.Adam(1e-3)
            opt.build(model.trainable_variables)
            eager["eager"] = eager_published_step(model, opt, cfg)
    times = compare(compiled, batch, a.steps, a.repeat)
    if eager:  # slow: one round of --eager-steps steps
        times.update(compare(eager, batch, a.eager_steps, 1))
    print(f"{a.model} vs {a.model[5:]}, backbone {a.backbone}, batch {a.batch}, "
          f"input {a.size}x{a.size}, {os.cpu_count()} CPUs, "
          f"device {tf.config.list_logical_devices()[-1].device_type}")
    print(f"compiled GRID step     : {times[a.model]:9.1f} ms")
    print(f"compiled baseline step : {times[a.model[5:]]:9.1f} ms   "
          f"GRID / baseline = {times[a.model] / times[a.model[5:]]:.2f} (target <= 1.3)")
    for name in (a.model, a.model[5:]) if a.xla else ():
        print(f"XLA {name:>8} step      : {times[name + ' XLA']:9.1f} ms   "
              f"plain / XLA = {times[name] / times[name + ' XLA']:.2f}")
    if "eager" in times:
        print(f"eager GRID step, 3x apply_gradients: {times['eager']:9.1f} ms   "
              f"eager / compiled = {times['eager'] / times[a.model]:.2f}")


if __name__ == "__main__":
    main()
