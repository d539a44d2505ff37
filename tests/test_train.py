"""train.py / training.py end to end on a tiny DLRSD-style sample with the small_cnn backbone.

The sample archive is written once per session (tests/conftest.py: ``records``) and cut down
to a few records so that every run is a handful of steps.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import training
import train as train_cli
from config import Config
from conftest import default_sigint, run_config

ROOT = Path(__file__).resolve().parents[1]
BATCH = 4  # 2 steps per epoch on conftest's 8 training records
STEP_TAGS = {"train/dis_loss", "train/gen_loss", "train/recon_loss", "train/kl_loss",
             "train/hybrid_loss", "train/loss"}
SEL_TAGS = {"train/sel_precision", "train/sel_recall"}
VAL_TAGS = {"val/dis_loss", "val/loss", "epoch_train/loss"}


def make_cfg(records: Path, out: Path, **kw) -> Config:
    return run_config(records, out, **{"batch_size": BATCH, **kw})


def summary_tags(logdir: Path) -> set[str]:
    tags = set()
    for path in logdir.rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(v.tag for v in event.summary.value)
    return tags


def summary_steps(logdir: Path, tag: str) -> list[int]:
    """Sorted global steps at which ``tag`` was written."""
    return sorted(event.step for path in logdir.rglob("events.out.tfevents.*")
                  for event in tf.compat.v1.train.summary_iterator(str(path))
                  for v in event.summary.value if v.tag == tag)


def all_weights(result) -> list[np.ndarray]:
    model_vars = [v for m in result.model.keras_models.values() for v in m.weights]
    return [np.asarray(v) for v in model_vars + list(result.optimizer.variables)]


def check_outputs(cfg: Config, grid: bool) -> None:
    tags = summary_tags(cfg.summaries_dir)
    assert STEP_TAGS | VAL_TAGS <= tags
    assert (SEL_TAGS <= tags) == grid
    assert cfg.feature_model_path.is_file()
    dumped = json.loads(cfg.config_dump_path.read_text())
    assert dumped["run_name"] == cfg.run_name and dumped["nb_class"] == 17
    assert dumped["feature_model_path"] == str(cfg.feature_model_path)
    assert dumped["training_time_s"] > 0
    assert dumped["noisy_train_paths"] == [str(Path(cfg.train_tfrecord_paths[0]).parent
                                               / "train_noise_prcnt50.tfrecord")]
    assert "loss" in dumped["final_metrics"] and "val_loss" in dumped["final_metrics"]
    assert Config.from_json(cfg.config_dump_path) == cfg


@pytest.fixture(scope="module")
def straight(records, tmp_path_factory):
    """GRID-BCE, two epochs without interruption: the reference for the resume test."""
    cfg = make_cfg(records, tmp_path_factory.mktemp("straight"), nb_epoch=2)
    return cfg, training.train(cfg, show_progress=False)


@pytest.mark.slow
def test_grid_bce_outputs_and_fresh_process_load(straight, tmp_path):
    cfg, result = straight
    assert result.completed and result.epochs_done == 2
    check_outputs(cfg, grid=True)
    assert set(result.train_metrics) >= {"dis_loss", "sel_precision", "sel_recall"}
    assert summary_steps(cfg.summaries_dir, "train/loss") == [1, 2, 3, 4]  # optimizer steps
    assert summary_steps(cfg.summaries_dir, "val/loss") == [2, 4]
    x = np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    expected = result.model.feature_model(x, training=False).numpy()
    code = ("import sys, numpy as np, keras; "
            "m = keras.models.load_model(sys.argv[1]); "
            "np.save(sys.argv[3], m.predict(np.load(sys.argv[2]), verbose=0))")
    subprocess.run([sys.executable, "-c", code, str(cfg.feature_model_path), str(tmp_path / "x.npy"),
                    str(tmp_path / "y.npy")], check=True, cwd=tmp_path,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-5, atol=1e-5)


def test_resume_and_interrupt_reach_the_uninterrupted_weights(straight, records, tmp_path,
                                                                monkeypatch):
    ref_cfg, ref = straight
    cfg = make_cfg(records, tmp_path, nb_epoch=2)
    # 1) one epoch only, then stop: checkpoint at the epoch boundary, no final outputs yet
    first = training.train(cfg, max_epochs=1, show_progress=False)
    assert not first.completed and first.epochs_done == 1
    assert not cfg.feature_model_path.exists() and not cfg.config_dump_path.exists()
    # 2) resume; Ctrl-C arrives right after the 1st step of epoch 2: a mid-epoch checkpoint
    real, calls = training._to_numbers, []

    def interrupting(*args):
        out = real(*args)
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(training, "_to_numbers", interrupting)
    with pytest.raises(KeyboardInterrupt):
        training.train(cfg, resume=True, show_progress=False)
    monkeypatch.setattr(training, "_to_numbers", real)
    ckpt = tf.train.load_checkpoint(str(cfg.checkpoint_dir))
    assert ckpt.get_tensor("epoch/.ATTRIBUTES/VARIABLE_VALUE") == 1
    assert ckpt.get_tensor("step_in_epoch/.ATTRIBUTES/VARIABLE_VALUE") == 1
    # 3) resume again and finish: identical to the uninterrupted run
    final = training.train(cfg, resume=True, show_progress=False)
    assert final.completed and int(final.optimizer.iterations) == int(ref.optimizer.iterations) == 4
    # what README promises: the same steps on the same batches from the same state, so the
    # weights agree up to the floating-point non-determinism of multi-threaded kernels (the
    # same between two uninterrupted runs; bit-equal where the kernels are deterministic)
    for a, b in zip(all_weights(final), all_weights(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    assert final.training_time_s > first.training_time_s
    # 1, 2 from the first call; step 3 ran (and was checkpointed) but Ctrl-C came before it
    # was logged; the resumed call skips its batch and logs step 4
    assert summary_steps(cfg.summaries_dir, "train/loss") == [1, 2, 4]


def test_resumed_epoch_reads_exactly_the_remaining_batches(records):
    """The data half of the resume promise is bit-exact: epoch e skipped by k steps yields
    exactly the batches k, k+1, ... of the uninterrupted epoch e (stateless shuffle/augment)."""
    from archives.pipeline import make_dataset

    def batches(skip):
        ds = make_dataset([str(records / "train_noise_prcnt50.tfrecord")], "DLRSD",
                          training=True, batch_size=3, seed=3, epoch=1)
        return [b["image"].numpy() for b in ds.skip(skip)]

    full, resumed = batches(0), batches(1)
    assert len(full) == 3 and len(resumed) == 2
    for a, b in zip(full[1:], resumed, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("model_name", ["GRID-PCE", "GRID-RRL", "BCE"])
def test_other_variants_train_end_to_end(model_name, records, tmp_path):
    cfg = make_cfg(records, tmp_path, model_name=model_name)
    result = training.train(cfg, show_progress=False)
    assert result.completed and result.epochs_done == 1
    check_outputs(cfg, grid=model_name.startswith("GRID"))


def test_xla_steps_train_end_to_end(records, tmp_path):
    """jit_compile: the pipeline's batches (patch names dropped) through XLA train/eval steps."""
    cfg = make_cfg(records, tmp_path, model_name="GRID-RRL", jit_compile=True)
    result = training.train(cfg, show_progress=False)
    assert result.completed and all(np.isfinite(v) for v in result.val_metrics.values())
    check_outputs(cfg, grid=True)
    assert json.loads(cfg.config_dump_path.read_text())["jit_compile"] is True


def test_validation_pools_selection_counts_over_batches(records, tmp_path):
    """Validation (4 records, batch 3: batches of 3 and 1): losses are sample-weighted means,
    selection precision/recall come from the summed counts, not from per-batch ratios."""
    cfg = make_cfg(records, tmp_path, batch_size=3)

    def fake_step(batch):
        n = int(batch["label"].shape[0])
        sel = 1 if n == 3 else 0  # the short batch selects nothing
        return {"loss": float(n), "_tp": sel, "_nsel": sel, "_ncorr": 2,
                "sel_precision": float(sel), "sel_recall": sel / 2}

    out = training.evaluate(fake_step, cfg, cfg.val_tfrecord_paths)
    assert out == {"loss": (3 * 3 + 1 * 1) / 4, "sel_precision": 1.0, "sel_recall": 0.25}


def test_no_validation_files_trains_and_skips_validation(records, tmp_path):
    """val_tfrecord_paths is optional (default empty): no crash after the epoch, no val scalars."""
    cfg = make_cfg(records, tmp_path, model_name="BCE", val_tfrecord_paths=[])
    assert cfg.val_tfrecord_paths == ()
    result = training.train(cfg, show_progress=False)
    assert result.completed and result.val_metrics == {}
    assert cfg.feature_model_path.is_file()
    dumped = json.loads(cfg.config_dump_path.read_text())
    assert "loss" in dumped["final_metrics"]
    assert not any(k.startswith("val_") for k in dumped["final_metrics"])
    assert not any(t.startswith("val/") for t in summary_tags(cfg.summaries_dir))


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_nan_loss_stops_and_keeps_last_good_checkpoint(bad, records, tmp_path, monkeypatch):
    """The noisy labels of epoch 2 carry NaN / Inf: they enter the loss after the network (the
    sigmoid cross-entropy reads them directly), so no fused kernel can turn them finite (NaN
    images were zeroed by oneDNN's fused ReLU on some CPUs)."""
    from archives import pipeline

    real = pipeline.make_dataset

    def poisoned(*args, **kw):
        ds = real(*args, **kw)
        if kw.get("training") and kw.get("epoch") == 1:
            ds = ds.map(lambda b: {**b, "noisy_label": b["noisy_label"] * np.float32(bad)})
        return ds

    monkeypatch.setattr(pipeline, "make_dataset", poisoned)
    cfg = make_cfg(records, tmp_path, model_name="BCE", nb_epoch=2)
    with pytest.raises(training.TrainingDiverged, match=r"non-finite dis_loss = -?(nan|inf) at "
                                                        r"epoch 2, step 1 .*ckpt-1"):
        training.train(cfg, show_progress=False)
    manager_state = tf.train.get_checkpoint_state(str(cfg.checkpoint_dir))
    assert manager_state.model_checkpoint_path.endswith("ckpt-1")
    reader = tf.train.load_checkpoint(manager_state.model_checkpoint_path)
    assert reader.get_tensor("epoch/.ATTRIBUTES/VARIABLE_VALUE") == 1
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if np.issubdtype(np.asarray(value).dtype, np.floating):
            assert np.all(np.isfinite(value)), name
    assert not cfg.feature_model_path.exists()


def test_cli_reports_config_errors(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model_name": "GRID-BCE", "dataset": "DLRSD",
                               "train_tfrecord_paths": "x", "learning_rte": 0.1}))
    assert train_cli.main([str(bad)]) == 2
    assert "did you mean 'learning_rate'" in capsys.readouterr().err
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({"model_name": "BCE", "dataset": "DLRSD", "noise_prcnt": 50,
                                   "train_tfrecord_paths": str(tmp_path / "train.tfrecord")}))
    assert train_cli.main([str(missing)]) == 2
    assert "train_noise_prcnt50.tfrecord" in capsys.readouterr().err


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(records, tmp_path):
    """The CLI under MirroredStrategy in a fresh process whose CPU is split in two devices."""
    cfg = make_cfg(records, tmp_path, strategy="mirrored")
    path = tmp_path / "mirrored.json"
    path.write_text(json.dumps(cfg.to_dict()))
    code = ("import sys, tensorflow as tf; "
            "cpu = tf.config.list_physical_devices('CPU')[0]; "
            "tf.config.set_logical_device_configuration(cpu, "
            "[tf.config.LogicalDeviceConfiguration()] * 2); "
            "import train; sys.exit(train.main([sys.argv[1], '--no-progress']))")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, text=True,
                          capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "strategy mirrored: 2 replica(s)" in proc.stdout
    check_outputs(cfg, grid=True)


@pytest.mark.slow
def test_real_ctrl_c_saves_a_checkpoint(records, tmp_path):
    """SIGINT to a running `train.py`: exit code 130 and a checkpoint to resume from."""
    import signal

    cfg = make_cfg(records, tmp_path, model_name="BCE", nb_epoch=50)
    path = tmp_path / "long.json"
    path.write_text(json.dumps(cfg.to_dict()))
    proc = subprocess.Popen([sys.executable, "train.py", str(path), "--no-progress"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                            preexec_fn=default_sigint)
    out = []
    for line in proc.stdout:
        out.append(line)
        if line.startswith("epoch 1/50"):
            proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, "".join(out)
    text = "".join(out)
    assert "interrupted: saved" in text and "--resume" in text
    assert tf.train.latest_checkpoint(str(cfg.checkpoint_dir)) is not None
    assert not cfg.feature_model_path.exists()
