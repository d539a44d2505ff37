"""tb_logging: the config as TensorBoard hyper-parameters, retrieval metrics as scalars; both
read back from the event files."""
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

import tb_logging
from config import Config


def _cfg(tmp_path, **kw):
    d = dict(model_name="GRID-BCE", dataset="DLRSD", train_tfrecord_paths=["a.tfrecord",
                                                                            "b.tfrecord"],
             nb_epoch=4, learning_rate=0.01, suffix="x",
             dumps={k: str(tmp_path / k) for k in ("model_weights", "summaries", "configs",
                                                   "features")})
    d.update(kw)
    return Config.from_dict(d)


def _accumulator(folder):
    ea = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    ea.Reload()
    return ea


def _plugin_data(ea, tag):
    meta = ea.SummaryMetadata(tag)
    assert meta.plugin_data.plugin_name == "hparams"
    return plugin_data_pb2.HParamsPluginData.FromString(meta.plugin_data.content)


def test_hparams_hold_every_config_key(tmp_path):
    cfg = _cfg(tmp_path)
    folder = tb_logging.write_hparams(cfg)
    assert folder == cfg.summaries_dir
    ea = _accumulator(folder)
    tags = ea.Tags()["tensors"]
    assert "_hparams_/experiment" in tags and "_hparams_/session_start_info" in tags
    start = _plugin_data(ea, "_hparams_/session_start_info").session_start_info
    hp = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
          for k, v in start.hparams.items()}
    assert hp["learning_rate"] == pytest.approx(0.01) and hp["nb_epoch"] == 4
    assert hp["train_tfrecord_paths"] == "a.tfrecord, b.tfrecord"
    assert hp["weights"] == "none" and hp["jit_compile"] is False
    assert hp["run_name"] == cfg.run_name and "dumps" not in hp
    assert set(hp) == set(Config.keys()) - {"dumps"} | {"run_name"}
    assert start.group_name == cfg.run_name
    experiment = _plugin_data(ea, "_hparams_/experiment").experiment
    columns = [m.name.tag for m in experiment.metric_infos]
    assert "retrieval/NDCG@20" in columns and "epoch_train/sel_recall" in columns


def test_retrieval_metrics_as_scalars(tmp_path):
    tags = tb_logging.write_retrieval_metrics(tmp_path, {"NDCG@20": 0.5, "mAP@20": 0.75,
                                                         "bad": float("nan")}, step=4)
    assert tags == ["retrieval/NDCG@20", "retrieval/mAP@20"]  # NaN is left out
    ea = _accumulator(tmp_path)
    import tensorflow as tf
    (ev,) = ea.Tensors("retrieval/mAP@20")
    assert ev.step == 4 and float(tf.make_ndarray(ev.tensor_proto)) == pytest.approx(0.75)
    assert "retrieval/bad" not in ea.Tags()["tensors"]


def test_a_trained_run_writes_its_hparams_once(records, tmp_path):
    import training
    from conftest import run_config

    cfg = run_config(records, tmp_path, model_name="BCE", nb_epoch=2, learning_rate=0.002)
    training.train(cfg, max_epochs=1, show_progress=False, log=lambda m: None)
    training.train(cfg, resume=True, show_progress=False, log=lambda m: None)
    ea = _accumulator(cfg.summaries_dir)
    assert len(ea.Tensors("_hparams_/session_start_info")) == 1  # not again on --resume
    start = _plugin_data(ea, "_hparams_/session_start_info").session_start_info
    assert start.group_name == cfg.run_name
    assert start.hparams["learning_rate"].number_value == pytest.approx(0.002)
    assert start.hparams["model_name"].string_value == "BCE"
    assert "epoch_train/loss" in ea.Tags()["tensors"]  # beside the training scalars
