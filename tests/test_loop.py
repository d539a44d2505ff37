"""The one training loop (training.py) for every model of models/registry.py: the epoch's loss
after a mid-epoch Ctrl-C and --resume, MiLaN and off-the-shelf runs under the same guarantees,
a new model from one file plus one registry entry, and --resume's message only when asked."""
import json

import numpy as np
import pytest
import tensorflow as tf

import train as train_cli
import training
from conftest import N_TRAIN
from models import registry
from run_guard import RunError
from test_train import make_cfg, summary_steps

QUIET = dict(show_progress=False, log=lambda m: None)


def interrupt_after_steps(monkeypatch, n):
    """Ctrl-C inside the (n+1)-th step's metric read: that step has updated the weights, but
    its values are not yet logged."""
    real, calls = training._to_numbers, []

    def interrupting(*args):
        calls.append(1)
        if len(calls) == n + 1:
            raise KeyboardInterrupt
        return real(*args)
    monkeypatch.setattr(training, "_to_numbers", interrupting)
    return lambda: monkeypatch.setattr(training, "_to_numbers", real)


def checkpoint_counters(cfg):
    ckpt = tf.train.load_checkpoint(str(cfg.checkpoint_dir))
    return tuple(int(ckpt.get_tensor(f"{k}/.ATTRIBUTES/VARIABLE_VALUE"))
                 for k in ("epoch", "step_in_epoch"))


def epoch_loss_scalar(cfg):
    values = [tf.make_ndarray(v.tensor).item() if v.HasField("tensor") else v.simple_value
              for path in cfg.summaries_dir.rglob("events.out.tfevents.*")
              for event in tf.compat.v1.train.summary_iterator(str(path))
              for v in event.summary.value if v.tag == "epoch_train/loss"]
    assert len(values) == 1
    return values[0]


@pytest.mark.parametrize("model_name", ["GRID-BCE", "SAT"])
def test_interrupted_epoch_logs_the_loss_of_all_its_steps(model_name, records, tmp_path,
                                                          monkeypatch):
    """Ctrl-C after the first of two steps, then --resume: the epoch's mean loss (printed,
    logged, dumped) is the uninterrupted one, not the mean of the steps after resuming."""
    straight = training.train(make_cfg(records, tmp_path / "a", model_name=model_name), **QUIET)
    cfg = make_cfg(records, tmp_path / "b", model_name=model_name)
    restore = interrupt_after_steps(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        training.train(cfg, **QUIET)
    restore()
    assert checkpoint_counters(cfg) == (0, 2)  # steps 1 and 2 ran; 2 was not yet logged
    cfg2 = make_cfg(records, tmp_path / "c", model_name=model_name)
    restore = interrupt_after_steps(monkeypatch, 0)
    with pytest.raises(KeyboardInterrupt):
        training.train(cfg2, **QUIET)
    restore()
    assert checkpoint_counters(cfg2) == (0, 1)
    for c in (cfg, cfg2):
        resumed = training.train(c, resume=True, **QUIET)
        assert resumed.completed
        for key, value in straight.train_metrics.items():
            np.testing.assert_allclose(resumed.train_metrics[key], value, rtol=1e-5, err_msg=key)
        np.testing.assert_allclose(epoch_loss_scalar(c), straight.train_metrics["loss"],
                                   rtol=1e-5)
        dumped = json.loads(c.config_dump_path.read_text())["final_metrics"]
        np.testing.assert_allclose(dumped["loss"], straight.train_metrics["loss"], rtol=1e-5)


def test_off_the_shelf_goes_through_the_loop_with_zero_epochs(records, tmp_path):
    cfg = make_cfg(records, tmp_path, model_name="OffTheShelf", noise_prcnt=0)
    first = training.train(cfg, **QUIET)
    assert first.completed and (first.epochs_done, first.epochs_total) == (0, 0)
    assert first.training_time_s == 0.0 and cfg.feature_model_path.is_file()
    assert "0/0 epochs" in training.summary_lines(first)[0]
    with pytest.raises(RunError, match="already exists"):  # the existing-run rule
        training.train(cfg, **QUIET)
    stamp = cfg.feature_model_path.stat().st_mtime_ns
    again = training.train(cfg, resume=True, **QUIET)  # a finished run re-saves its outputs
    assert again.completed and cfg.feature_model_path.stat().st_mtime_ns >= stamp


def test_a_new_model_is_one_file_and_one_registry_entry(records, tmp_path, capsys):
    """tests/toy_model.py + ``registry.register``: config accepts the name, train.py trains it
    with checkpoints (its extra state included) and exports its retrieval model."""
    registry.register(registry.ModelInfo("Toy", "toy_model:ToyModel", "toy", "BCE"))
    try:
        cfg = make_cfg(records, tmp_path, model_name="Toy", nb_epoch=2)
        path = tmp_path / "toy.json"
        path.write_text(json.dumps(cfg.to_dict()))
        assert train_cli.main([str(path), "--no-progress", "--max-epochs", "1"]) == 0
        assert checkpoint_counters(cfg) == (1, 0)
        assert train_cli.main([str(path), "--no-progress", "--resume"]) == 0
        ckpt = tf.train.load_checkpoint(str(cfg.checkpoint_dir))
        assert ckpt.get_tensor("seen/.ATTRIBUTES/VARIABLE_VALUE") == 2 * N_TRAIN
        out = capsys.readouterr().out
        assert "epoch 2/2: loss" in out and "run DLRSD-Toy-embed8" in out
        assert cfg.feature_model_path.is_file() and cfg.config_dump_path.is_file()
        assert summary_steps(cfg.summaries_dir, "train/loss") == [1, 2, 3, 4]
    finally:
        registry.unregister("Toy")


def test_resume_message_only_when_the_user_asked(records, tmp_path, capsys):
    logs = []
    cfg = make_cfg(records, tmp_path / "a")
    training.train(cfg, resume=True, max_epochs=1, show_progress=False, log=logs.append)
    assert any("--resume: no checkpoint" in m for m in logs)
    logs.clear()
    cfg = make_cfg(records, tmp_path / "b")
    training.train(cfg, resume=True, say_if_nothing_to_resume=False, max_epochs=1,
                   show_progress=False, log=logs.append)
    assert not any("no checkpoint" in m for m in logs) and logs
    path = tmp_path / "c.json"
    path.write_text(json.dumps(make_cfg(records, tmp_path / "c").to_dict()))
    assert train_cli.main([str(path), "--no-progress", "--resume-if-any", "--max-epochs",
                           "1"]) == 0
    assert "no checkpoint" not in capsys.readouterr().out


def test_resume_skips_done_batches_as_records_and_reads_the_rest(records, tmp_path,
                                                                   monkeypatch):
    """A resumed epoch asks the pipeline for the batches after the done steps (skip_batches:
    skipped as serialized records, never parsed) and trains on exactly the uninterrupted
    epoch's remaining batches."""
    from archives import pipeline

    cfg = make_cfg(records, tmp_path, model_name="BCE", batch_size=3)  # batches of 3, 3, 2
    real, calls, seen = pipeline.make_dataset, [], []

    def note(names):
        seen.append([n.decode() for n in names.numpy()])
        return np.int64(0)

    def recording(*args, **kw):
        ds = real(*args, **kw)
        if not kw.get("training"):
            return ds
        calls.append(kw.get("skip_batches", 0))

        def tap(b):
            done = tf.py_function(note, [b["patch_name"]], tf.int64)
            with tf.control_dependencies([done]):
                return {**b, "sample_index": tf.identity(b["sample_index"])}
        return ds.map(tap)

    monkeypatch.setattr(pipeline, "make_dataset", recording)
    restore = interrupt_after_steps(monkeypatch, 0)
    with pytest.raises(KeyboardInterrupt):
        training.train(cfg, **QUIET)
    restore()
    assert checkpoint_counters(cfg) == (0, 1)
    calls.clear()
    seen.clear()
    assert training.train(cfg, resume=True, **QUIET).completed
    full = [[n.decode() for n in b["patch_name"].numpy()] for b in real(
        list(cfg.noisy_train_paths), cfg.archive, training=True, batch_size=3, seed=cfg.seed,
        epoch=0, compact=True)]
    assert len(full) == 3 and calls == [1]
    assert seen == full[1:]
