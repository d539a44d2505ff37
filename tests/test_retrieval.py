"""retrieval.py end to end: feature-file mode, run-config mode (real pipeline), plots, bad input."""
import json

import numpy as np
import pytest

import retrieval
from evaluation.features import write_features


def _h5(path, n, dim=16, c=17, seed=0):
    rng = np.random.default_rng(seed)
    write_features(path, rng.random((n, dim), dtype=np.float32),
                   (rng.random((n, c)) < 0.3).astype(np.float32), [f"p{i}" for i in range(n)])
    return str(path)


def test_feature_mode_end_to_end(tmp_path, capsys):
    q, a = _h5(tmp_path / "q.h5", 40, seed=1), _h5(tmp_path / "a.h5", 120, seed=2)
    out = tmp_path / "res" / "out.json"
    assert retrieval.main(["--query-features", q, "--archive-features", a, "--json", str(out),
                           "--quiet", "--query-block", "7", "--archive-block", "50"]) == 0
    res = json.loads(out.read_text())
    assert res["max_topk"] == 120 and res["num_queries"] == 40 and res["metric"] == "chi2"
    m = res["metrics"]
    for k in (10, 20, 30, 50, 100):
        for name in ("mAP", "P", "R", "ACG", "WAP", "NDCG_global"):
            assert 0.0 <= m[f"{name}@{k}"] <= (17 if name in ("ACG", "WAP") else 1.0)
    assert "NDCG@20" in m and "NDCG@30" in m
    table = capsys.readouterr().out
    assert "NDCG@20" in table and "WAP@100" in table
    # other metrics and a K below 100 (then no @100 entries)
    out2 = tmp_path / "o2.json"
    assert retrieval.main(["--query-features", q, "--archive-features", a, "--metric", "cosine",
                           "--max-topk", "60", "--json", str(out2), "--quiet"]) == 0
    m2 = json.loads(out2.read_text())["metrics"]
    assert "P@50" in m2 and "P@100" not in m2


def test_streamed_features_give_the_same_results(tmp_path):
    q, a = _h5(tmp_path / "q.h5", 30, seed=3), _h5(tmp_path / "a.h5", 70, seed=4)
    outs = []
    for extra in ([], ["--max-memory-mb", "0"]):  # 0: both files stay on disk, read in blocks
        out = tmp_path / f"o{len(extra)}.json"
        assert retrieval.main(["--query-features", q, "--archive-features", a, "--json",
                               str(out), "--quiet", "--archive-block", "16", *extra]) == 0
        outs.append(json.loads(out.read_text())["metrics"])
    assert outs[0] == outs[1]


@pytest.mark.parametrize("case, message", [
    ("width", "feature widths differ"),
    ("count", "b.h5: 5 features but 4 labels"),
    ("nan", "b.h5: feature holds NaN or Inf"),
    ("empty", "b.h5: empty archive"),
    ("topk", "b.h5: --max-topk 50 is larger than the archive"),
    ("missing", "b.h5: missing HDF5 dataset"),
    ("absent", "b.h5: feature file not found"),
])
def test_feature_mode_bad_input(tmp_path, capsys, case, message):
    import h5py
    q = _h5(tmp_path / "q.h5", 6)
    b = str(tmp_path / "b.h5")
    rng = np.random.default_rng(0)
    if case == "width":
        _h5(b, 8, dim=9)
    elif case == "count":
        with h5py.File(b, "w") as f:
            f["feature"] = rng.random((5, 16), dtype=np.float32)
            f["label"] = np.zeros((4, 17), np.float32)
    elif case == "nan":
        feat = rng.random((8, 16), dtype=np.float32)
        feat[3, 3] = np.inf
        write_features(b, feat, np.zeros((8, 17)), ["x"] * 8)
    elif case == "empty":
        write_features(b, np.zeros((0, 16)), np.zeros((0, 17)), [])
    elif case == "topk":
        _h5(b, 8)
    elif case == "missing":
        with h5py.File(b, "w") as f:
            f["label"] = np.zeros((4, 17), np.float32)
    args = ["--query-features", q, "--archive-features", b, "--quiet"]
    if case == "topk":
        args += ["--max-topk", "50"]
    assert retrieval.main(args) == 2
    assert message in capsys.readouterr().err


def _dlrsd_records(path, n, seed):
    from archives.common import atomic_tfrecord_writer
    from archives.dlrsd import encode_example
    rng = np.random.default_rng(seed)
    with atomic_tfrecord_writer(path) as w:
        for i in range(n):
            img = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
            seg = rng.integers(-1, 17, (256, 256), dtype=np.int8)
            lab = (rng.random(17) < 0.3).astype(np.float32)
            w.write(encode_example(img, seg, seg, lab, lab, f"img{seed}_{i}"))
    return str(path)


def _feature_model(path):
    import keras
    keras.utils.set_random_seed(0)
    inp = keras.Input((224, 224, 3))
    x = keras.layers.Conv2D(4, 3, strides=8, activation="relu")(inp)
    keras.Model(inp, keras.layers.GlobalAveragePooling2D()(x)).save(path)
    return str(path)


def test_config_mode_adds_metrics_to_the_runs_tensorboard_summaries(tmp_path, capsys):
    """retrieval/<metric> scalars go where training wrote its summaries, at the last epoch;
    without a summaries folder (no training there) nothing is created."""
    pytest.importorskip("archives.pipeline")
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train = _dlrsd_records(tmp_path / "train.tfrecord", 6, 1)
    test = _dlrsd_records(tmp_path / "test.tfrecord", 12, 2)
    summaries = tmp_path / "summaries"
    cfg = {"run_name": "tiny-run", "model_name": "BCE", "dataset": "DLRSD", "nb_class": 17,
           "nb_epoch": 3, "feature_model_path": _feature_model(tmp_path / "fm.keras"),
           "train_tfrecord_paths": [train], "test_tfrecord_paths": [test],
           "dumps": {"features": str(tmp_path / "features"), "summaries": str(summaries)}}
    cfg_path = tmp_path / "tiny-run.json"
    cfg_path.write_text(json.dumps(cfg))
    assert retrieval.main([str(cfg_path), "--quiet", "--batch-size", "4"]) == 0
    assert not summaries.exists()  # no training summaries: none created
    (summaries / "tiny-run").mkdir(parents=True)
    assert retrieval.main([str(cfg_path), "--quiet", "--batch-size", "4"]) == 0
    err = capsys.readouterr().err
    assert f"retrieval metrics added to TensorBoard: {summaries / 'tiny-run'}" in err
    res = json.loads((tmp_path / "features" / "tiny-run" / "retrieval.json").read_text())
    ea = EventAccumulator(str(summaries / "tiny-run"), size_guidance={"tensors": 0})
    ea.Reload()
    (ev,) = ea.Tensors("retrieval/mAP@10")
    assert ev.step == 3
    assert float(tf.make_ndarray(ev.tensor_proto)) == pytest.approx(res["metrics"]["mAP@10"])


def test_config_mode_extract_reuse_plot(tmp_path, capsys):
    pytest.importorskip("archives.pipeline")
    train = _dlrsd_records(tmp_path / "train.tfrecord", 6, 1)
    test = _dlrsd_records(tmp_path / "test.tfrecord", 12, 2)
    cfg = {"run_name": "tiny-run", "model_name": "BCE", "dataset": "DLRSD", "nb_class": 17,
           "feature_model_path": _feature_model(tmp_path / "feature_model.keras"),
           "train_tfrecord_paths": [train], "test_tfrecord_paths": [test],
           "dumps": {"features": str(tmp_path / "features")}}
    cfg_path = tmp_path / "tiny-run.json"
    cfg_path.write_text(json.dumps(cfg))
    assert retrieval.main([str(cfg_path), "--quiet", "--plot", "2", "--plot-topk", "3",
                           "--batch-size", "4"]) == 0
    out_dir = tmp_path / "features" / "tiny-run"
    res = json.loads((out_dir / "retrieval.json").read_text())
    assert res["run_name"] == "tiny-run" and res["max_topk"] == 12 and res["num_queries"] == 6
    assert len(res["plots"]) == 2 and all((out_dir / "plots" / f"query_0000{i}.png").is_file()
                                          for i in range(2))
    import h5py
    with h5py.File(out_dir / "query.h5", "r") as f:
        assert f["feature"].shape == (6, 4) and f["label"].shape == (6, 17)
        assert f["patch_name"][0] == b"img1_0"
    captured = capsys.readouterr()
    assert "written" in captured.err
    # where the pictures went, on stdout
    assert (f"tiny-run: 2 retrieval picture(s) in {out_dir / 'plots'}/ "
            "(query_00000.png, query_00001.png)") in captured.out
    assert retrieval.main([str(cfg_path), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "query features reused" in err and "archive features reused" in err
    again = json.loads((out_dir / "retrieval.json").read_text())
    assert again["metrics"] == res["metrics"]

    cfg["test_tfrecord_paths"] = [str(tmp_path / "gone.tfrecord")]
    cfg_path.write_text(json.dumps(cfg))
    assert retrieval.main([str(cfg_path), "--quiet"]) == 2
    assert "gone.tfrecord" in capsys.readouterr().err


def test_config_mode_bad_config(tmp_path, capsys):
    cfg_path = tmp_path / "c.json"
    cfg_path.write_text(json.dumps({"run_name": "x", "model_name": "BCE", "dataset": "DLRSD",
                                    "feature_model_path": str(tmp_path / "nomodel.keras"),
                                    "train_tfrecord_paths": [str(tmp_path / "no.tfrecord")],
                                    "test_tfrecord_paths": [],
                                    "dumps": {"features": str(tmp_path)}}))
    assert retrieval.main([str(cfg_path)]) == 2
    assert "c.json: model or record file(s) missing" in capsys.readouterr().err
    cfg_path.write_text(json.dumps({"run_name": "x"}))
    assert retrieval.main([str(cfg_path)]) == 2
    assert "c.json: config lacks key(s)" in capsys.readouterr().err
    assert retrieval.main([str(tmp_path / "none.json")]) == 2
    assert "none.json: config file not found" in capsys.readouterr().err
    cfg_path.write_text("{broken")
    assert retrieval.main([str(cfg_path)]) == 2
    assert "c.json: not valid JSON" in capsys.readouterr().err
    cfg_path.write_text("[1, 2]")
    assert retrieval.main([str(cfg_path)]) == 2
    assert "c.json: expected a JSON object" in capsys.readouterr().err


def test_plot_needs_records(tmp_path, capsys):
    q, a = _h5(tmp_path / "q.h5", 5), _h5(tmp_path / "a.h5", 9)
    assert retrieval.main(["--query-features", q, "--archive-features", a, "--plot", "2",
                           "--quiet"]) == 0
    assert "--plot skipped" in capsys.readouterr().err


def test_usage_errors(capsys):
    with pytest.raises(SystemExit) as info:
        retrieval.main(["--query-features", "q.h5"])
    assert info.value.code == 2 and "go together" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        retrieval.main([])
    assert info.value.code == 2 and "either run configs" in capsys.readouterr().err
