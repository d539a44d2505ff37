"""Training never loses work: refusal over an existing run, inputs checked before anything is
removed, checkpoint before validation, damaged records and checkpoints, full disk, Ctrl-C during
validation, leftovers of killed processes. Tiny runs on the session's sample records."""
import json
import os
import shutil
import warnings

import numpy as np
import pytest
import tensorflow as tf

import run_guard
import train as train_cli
import training
from run_guard import RunError
from conftest import temp_name
from test_train import make_cfg, summary_steps


def listing(*folders):
    return sorted(str(p) for f in folders for p in f.rglob("*"))


def truncate(src, dst, keep=0.6):
    data = src.read_bytes()
    dst.write_bytes(data[:int(len(data) * keep)])
    return dst


def write_cfg(cfg, path):
    path.write_text(json.dumps(cfg.to_dict()))
    return str(path)


def test_rerun_is_refused_and_inputs_are_checked_before_anything_is_removed(records, tmp_path,
                                                                             capsys):
    cfg = make_cfg(records, tmp_path, model_name="BCE")
    training.train(cfg, show_progress=False)
    before = listing(cfg.weights_dir, cfg.summaries_dir)
    assert cfg.feature_model_path.is_file() and any("ckpt-" in p for p in before)
    path = write_cfg(cfg, tmp_path / "c.json")
    assert train_cli.main([path, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and "already exists" in err
    assert "--resume" in err and "--overwrite" in err
    # --overwrite with a missing validation file: refused before anything is removed
    bad = cfg.replace(val_tfrecord_paths=[str(tmp_path / "nope.tfrecord")])
    with pytest.raises(RunError, match="nope.tfrecord: TFRecord file not found"):
        training.train(bad, overwrite=True, show_progress=False)
    assert listing(cfg.weights_dir, cfg.summaries_dir) == before
    # --overwrite with good inputs starts over
    again = training.train(cfg, overwrite=True, show_progress=False)
    assert again.completed and summary_steps(cfg.summaries_dir, "train/loss") == [1, 2]


def test_records_of_the_other_archive_and_a_folder_are_named(records, tmp_path, capsys):
    from archives import ben

    bands = {b: np.zeros(ben.BAND_SIZES[b] ** 2, "<u2").tobytes() for b in ben.BAND_NAMES}
    hot = ben.multi_hot(["Urban fabric"])
    other = tmp_path / "ben.tfrecord"
    with tf.io.TFRecordWriter(str(other)) as w:
        w.write(ben.encode_example("p", bands, ["Urban fabric"], hot, hot, "compact"))
    cfg = make_cfg(records, tmp_path, model_name="BCE", val_tfrecord_paths=[str(other)])
    assert train_cli.main([write_cfg(cfg, tmp_path / "c.json"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {other}: holds BEN records, but the config's dataset is DLRSD "
                   "(val_tfrecord_paths)"]
    cfg = make_cfg(records, tmp_path, model_name="BCE", val_tfrecord_paths=[str(tmp_path)])
    with pytest.raises(RunError, match=f"^{tmp_path}: is a folder"):
        training.train(cfg, show_progress=False)
    assert not cfg.weights_dir.exists()


def test_truncated_validation_file_checkpoints_first_then_resume_validates(records, tmp_path):
    val = truncate(records / "val.tfrecord", tmp_path / "val.tfrecord")
    # the first record still reads: the damage shows only when validation reaches it
    cfg = make_cfg(records, tmp_path, model_name="BCE", nb_epoch=2, val_tfrecord_paths=[str(val)])
    with pytest.raises(RunError, match=f"^{val}: truncated or corrupt TFRecord .*epoch 1 is "
                                       "checkpointed"):
        training.train(cfg, show_progress=False)
    reader = tf.train.load_checkpoint(str(cfg.checkpoint_dir))
    assert reader.get_tensor("epoch/.ATTRIBUTES/VARIABLE_VALUE") == 1
    shutil.copy(records / "val.tfrecord", val)  # the user repairs the file
    logs = []
    result = training.train(cfg, resume=True, show_progress=False, log=logs.append)
    assert result.completed
    epoch1 = [m for m in logs if m.startswith("epoch 1/2: loss ")]
    assert len(epoch1) == 1 and "nan" not in epoch1[0] and "val loss" in epoch1[0]
    assert summary_steps(cfg.summaries_dir, "val/loss") == [2, 4]
    assert summary_steps(cfg.summaries_dir, "epoch_train/loss") == [2, 4]


def test_truncated_training_file_is_named_and_the_state_is_saved(records, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train", "val", "test"):
        shutil.copy(records / f"{name}.tfrecord", data)
    truncate(records / "train_noise_prcnt50.tfrecord", data / "train_noise_prcnt50.tfrecord", 0.7)
    cfg = make_cfg(data, tmp_path, model_name="BCE", nb_epoch=2)
    bad = data / "train_noise_prcnt50.tfrecord"
    with pytest.raises(RunError, match=f"^{bad}: truncated or corrupt TFRecord"):
        training.train(cfg, show_progress=False)
    assert tf.train.latest_checkpoint(str(cfg.checkpoint_dir)) is not None


def test_corrupt_latest_checkpoint_falls_back_to_the_newest_readable(records, tmp_path):
    cfg = make_cfg(records, tmp_path, model_name="BCE", nb_epoch=3)
    training.train(cfg, max_epochs=2, show_progress=False)
    state = tf.train.get_checkpoint_state(str(cfg.checkpoint_dir))
    paths = list(state.all_model_checkpoint_paths)
    latest = paths[-1]
    for part in tf.io.gfile.glob(latest + ".data-*"):
        truncate(type(cfg.checkpoint_dir)(part), type(cfg.checkpoint_dir)(part), 0.3)
    logs = []
    result = training.train(cfg, resume=True, show_progress=False, log=logs.append)
    assert any(f"checkpoint {latest} cannot be read" in m for m in logs)
    used = [m for m in logs if "the newest readable checkpoint" in m]
    assert len(used) == 1 and paths[-2] in used[0]
    assert result.completed and result.epochs_done == 3
    # every checkpoint damaged: a named error, nothing started afresh
    for p in tf.io.gfile.glob(str(cfg.checkpoint_dir / "ckpt-*.index")):
        truncate(type(cfg.checkpoint_dir)(p), type(cfg.checkpoint_dir)(p), 0.1)
    with pytest.raises(RunError, match="no checkpoint can be read"):
        training.train(cfg, resume=True, show_progress=False)


def test_ctrl_c_during_validation_then_resume_reports_the_epoch(records, tmp_path, monkeypatch):
    cfg = make_cfg(records, tmp_path, model_name="BCE", nb_epoch=2)
    real, calls = training.evaluate, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(training, "evaluate", interrupted)
    logs = []
    with pytest.raises(KeyboardInterrupt):
        training.train(cfg, show_progress=False, log=logs.append)
    assert any("already holds the current state" in m for m in logs)
    logs.clear()
    result = training.train(cfg, resume=True, show_progress=False, log=logs.append)
    epoch_lines = [m for m in logs if m.startswith("epoch ") and "loss" in m]
    assert [m.split(":")[0] for m in epoch_lines] == ["epoch 1/2", "epoch 2/2"]
    assert all("nan" not in m and "val loss" in m for m in epoch_lines)
    assert summary_steps(cfg.summaries_dir, "val/loss") == [2, 4]
    assert summary_steps(cfg.summaries_dir, "epoch_train/loss") == [2, 4]
    assert result.completed and "val_loss" in json.loads(cfg.config_dump_path.read_text())[
        "final_metrics"]


def test_full_disk_on_checkpoint_write_is_a_named_error_without_litter(records, tmp_path,
                                                                         monkeypatch, capsys):
    cfg = make_cfg(records, tmp_path, model_name="BCE")

    def full(self, *args, **kw):
        (cfg.checkpoint_dir / "ckpt-1_temp").mkdir(parents=True)
        (cfg.checkpoint_dir / "ckpt-1_temp" / "part").write_bytes(b"half")
        raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")

    monkeypatch.setattr(tf.train.CheckpointManager, "save", full)
    assert train_cli.main([write_cfg(cfg, tmp_path / "c.json"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {cfg.checkpoint_dir}: checkpoint could not be written (No space "
                   "left on device); the previous checkpoint (none) is kept"]
    assert not list(cfg.checkpoint_dir.glob("*_temp"))


def test_leftovers_of_killed_processes_are_removed(records, tmp_path):
    cfg = make_cfg(records, tmp_path, model_name="BCE")
    cfg.checkpoint_dir.mkdir(parents=True)
    (cfg.checkpoint_dir / "ckpt-7_temp").mkdir()
    dead = cfg.weights_dir / temp_name("feature_model", ".keras", 999999999)
    dead.write_bytes(b"half")
    live = cfg.weights_dir / temp_name("feature_model", ".keras", 1)  # pid 1 is alive: kept
    live.write_bytes(b"mine")
    logs = []
    training.train(cfg, resume=True, show_progress=False, log=logs.append)
    assert not dead.exists() and live.exists()
    assert not (cfg.checkpoint_dir / "ckpt-7_temp").exists()
    assert any("ckpt-7_temp" in m for m in logs) and any(str(dead) in m for m in logs)


def test_output_folder_under_a_file_is_named_before_training(records, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    cfg = make_cfg(records, tmp_path, model_name="BCE")
    cfg = cfg.replace(dumps={**cfg.dumps, "summaries": str(blocker / "summaries")})
    with pytest.raises(RunError, match=f"cannot be created, {blocker} is a file "
                                       r"\(dumps.summaries\)"):
        training.train(cfg, show_progress=False)
    assert not cfg.weights_dir.exists()


# ---------------------------------------------------------------- --overwrite keeps the old run
def snapshot(cfg):
    """Every file (bytes) and link (target) of a run's outputs, by path; plus whatever a
    set-aside or an overwrite lock left beside them."""
    out = {}
    for top in (cfg.weights_dir, cfg.summaries_dir, cfg.config_dump_path, cfg.features_dir):
        for p in [top, *(top.rglob("*") if top.is_dir() and not top.is_symlink() else [])]:
            if p.is_symlink():
                out[str(p)] = ("link", os.readlink(p))
            elif p.is_file():
                out[str(p)] = p.read_bytes()
        for p in top.parent.iterdir():
            if ".overwritten-" in p.name or p.name.endswith(".overwrite.lock"):
                out[str(p)] = "leftover"
    return out


def finished_run(records, tmp_path, **kw):
    cfg = make_cfg(records, tmp_path, model_name="BCE", **kw)
    training.train(cfg, show_progress=False)
    cfg.features_dir.mkdir(parents=True)
    (cfg.features_dir / "retrieval.json").write_text('{"old": true}')  # retrieval's outputs
    return cfg


def test_overwrite_with_a_damaged_training_file_keeps_the_old_run(records, tmp_path, capsys):
    """Case (b) of the report: the old run had 5 checkpoint files, 3 after --overwrite died."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train", "val", "test", "train_noise_prcnt50"):
        shutil.copy(records / f"{name}.tfrecord", data)
    cfg = finished_run(data, tmp_path)
    before = snapshot(cfg)
    assert len([p for p in before if "/checkpoints/" in p]) >= 3
    # about half its bytes, cut inside a record (8 records of one size: exactly half is whole
    # records); its first record still reads, so the input check passes
    bad = truncate(records / "train_noise_prcnt50.tfrecord", data / "train_noise_prcnt50.tfrecord",
                   0.55)
    assert train_cli.main([write_cfg(cfg, tmp_path / "c.json"), "--overwrite",
                           "--no-progress"]) == 2
    assert snapshot(cfg) == before  # bytes for bytes, nothing left beside
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [f"error: {bad}: truncated or corrupt TFRecord "
                                        f"{err.split('TFRecord ', 1)[1].strip()}"]
    assert f"--overwrite: moved {cfg.checkpoint_dir} aside" in out
    assert f"the earlier run {cfg.run_name} is restored" in out


def test_overwrite_refuses_a_linked_summaries_folder_before_touching_anything(records, tmp_path,
                                                                              capsys):
    """Case (a) of the report: it deleted the checkpoints, then died in rmtree on the link."""
    cfg = finished_run(records, tmp_path)
    real = tmp_path / "elsewhere"
    shutil.move(cfg.summaries_dir, real)
    cfg.summaries_dir.symlink_to(real)
    before = snapshot(cfg)
    assert train_cli.main([write_cfg(cfg, tmp_path / "c.json"), "--overwrite",
                           "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {cfg.summaries_dir}: is a symbolic link (to {real}); --overwrite does "
                   "not replace linked run outputs: remove the link (its target is kept) or "
                   "point dumps.summaries at the real folder. Nothing was changed"]
    assert snapshot(cfg) == before and any(real.iterdir())


def test_overwrite_interrupted_before_its_first_checkpoint_restores_the_old_run(
        records, tmp_path, monkeypatch):
    cfg = finished_run(records, tmp_path, nb_epoch=2)
    before = snapshot(cfg)
    real, calls = training._to_numbers, []

    def interrupt_at(n):
        def step(*args):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
            return real(*args)
        return step

    monkeypatch.setattr(training, "_to_numbers", interrupt_at(1))  # Ctrl-C at the first step
    logs = []
    with pytest.raises(KeyboardInterrupt):
        training.train(cfg, overwrite=True, show_progress=False, log=logs.append)
    assert snapshot(cfg) == before
    assert any("stopped before its first epoch checkpoint" in m for m in logs)
    # interrupted after the first epoch's checkpoint: the new run stays, the old one is gone
    calls.clear()
    monkeypatch.setattr(training, "_to_numbers", interrupt_at(3))  # 2 steps per epoch
    logs.clear()
    with pytest.raises(KeyboardInterrupt):
        training.train(cfg, overwrite=True, show_progress=False, log=logs.append)
    assert any(m.startswith(f"--overwrite: deleted the earlier run {cfg.run_name}") for m in logs)
    assert summary_steps(cfg.summaries_dir, "train/loss") == [1, 2]  # the new run's only
    reader = tf.train.load_checkpoint(str(cfg.checkpoint_dir))
    assert reader.get_tensor("epoch/.ATTRIBUTES/VARIABLE_VALUE") == 1
    assert not cfg.features_dir.exists() and not cfg.config_dump_path.exists()
    assert not [p for p in snapshot(cfg).values() if p == "leftover"]
    assert training.train(cfg, resume=True, show_progress=False).completed


def test_overwrite_killed_midway_is_undone_by_the_next_call_and_a_live_one_is_refused(
        records, tmp_path):
    cfg = finished_run(records, tmp_path)
    before = {k: v for k, v in snapshot(cfg).items() if "/checkpoints/" in k}
    logs = []
    run_guard.set_aside(cfg, logs.append)  # what a process did before kill -9 ...
    cfg.checkpoint_dir.mkdir(parents=True)
    (cfg.checkpoint_dir / "checkpoint").write_text("partial")  # ... with the new run begun
    lock = run_guard.overwrite_lock_path(cfg)
    info = json.loads(lock.read_text())
    # still running (this very process): another --overwrite of the run is refused
    with pytest.raises(RunError, match=f"run {cfg.run_name}: in use by pid {os.getpid()} on host"):
        training.train(cfg, overwrite=True, show_progress=False)
    lock.write_text(json.dumps({**info, "pid": 999999999}))  # the process is gone
    training.train(cfg, resume=True, show_progress=False, log=logs.append)
    assert any("stopped before its first epoch checkpoint: the earlier run is restored" in m
               for m in logs)
    after = snapshot(cfg)
    assert {k: v for k, v in after.items() if "/checkpoints/" in k} == before
    assert "leftover" not in after.values()


def test_weights_file_that_is_not_keras_weights_is_a_named_error(records, tmp_path, capsys):
    import keras

    junk = tmp_path / "w.weights.h5"
    junk.write_text("not weights")
    d = make_cfg(records, tmp_path, model_name="BCE").to_dict()
    path = tmp_path / "c.json"
    path.write_text(json.dumps({**d, "weights": str(junk)}))
    assert train_cli.main([str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {path}: weights: '{junk}' is not a Keras weights file (no HDF5 "
                   "signature); expected an HDF5 .weights.h5 / .h5 file (Model.save_weights, the "
                   "Keras-applications notop files) or a .keras file"]
    assert not (tmp_path / "model_weights").exists()
    # weights of another network: found when loaded, named; an --overwrite keeps the old run
    cfg = finished_run(records, tmp_path)
    before = snapshot(cfg)
    other = tmp_path / "other.weights.h5"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]).save_weights(str(other))
    path.write_text(json.dumps({**cfg.to_dict(), "weights": str(other)}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert train_cli.main([str(path), "--overwrite", "--no-progress"]) == 2
    assert not [w for w in caught if "Skipping" in str(w.message)]  # the one line says it all
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {other}: cannot be loaded as the weights of backbone "
                           "small_cnn (") and line.endswith("(config key weights)")
    assert snapshot(cfg) == before
