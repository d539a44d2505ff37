"""retrieval.py never ends in a traceback or a silent result: the issue-8 cases."""
import json

import h5py
import numpy as np
import pytest

import retrieval
from evaluation.features import write_features
from test_retrieval import _dlrsd_records, _feature_model, _h5


def one_error_line(capsys, start):
    err = [line for line in capsys.readouterr().err.splitlines()
           if not line.startswith(("warning", "r: "))]  # r: progress lines of run "r"
    assert len(err) == 1 and err[0].startswith(f"error: {start}"), err
    return err[0]


def test_bad_options_are_named_before_any_work(tmp_path, capsys):
    q, a = _h5(tmp_path / "q.h5", 5), _h5(tmp_path / "a.h5", 9)
    base = ["--query-features", q, "--archive-features", a, "--quiet"]
    assert retrieval.main(base + ["--query-block", "0"]) == 2
    assert "must be >= 1, got 0" in one_error_line(capsys, "--query-block")
    assert retrieval.main(base + ["--json", str(tmp_path)]) == 2
    assert "names a folder" in one_error_line(capsys, str(tmp_path))
    under = tmp_path / "q.h5" / "out.json"
    assert retrieval.main(base + ["--json", str(under)]) == 2
    assert "is a file" in one_error_line(capsys, str(under))


def test_chi2_refuses_negative_features(tmp_path, capsys):
    q = _h5(tmp_path / "q.h5", 5)
    rng = np.random.default_rng(0)
    feat = rng.random((9, 16), dtype=np.float32)
    feat[4, 2] = -0.5
    write_features(tmp_path / "a.h5", feat, np.ones((9, 17), np.float32),
                   [f"a{i}" for i in range(9)])
    a = str(tmp_path / "a.h5")
    assert retrieval.main(["--query-features", q, "--archive-features", a, "--quiet"]) == 2
    line = one_error_line(capsys, a)
    assert "negative values (first at row 4)" in line and "--metric euclidean" in line
    assert retrieval.main(["--query-features", q, "--archive-features", a, "--quiet",
                           "--metric", "euclidean"]) == 0


def test_small_archive_reports_metrics_at_k_and_warns_about_empty_labels(tmp_path, capsys):
    q, a = _h5(tmp_path / "q.h5", 4, seed=1), str(tmp_path / "a.h5")
    labels = np.zeros((5, 17), np.float32)
    labels[:3, 0] = 1  # 2 of the 5 archive items carry no label at all
    write_features(a, np.random.default_rng(2).random((5, 16), dtype=np.float32), labels,
                   [f"a{i}" for i in range(5)])
    out = tmp_path / "r.json"
    with pytest.warns(UserWarning, match=f"{a}: 2 of 5 label sets are all zero"):
        assert retrieval.main(["--query-features", q, "--archive-features", a, "--quiet",
                               "--json", str(out)]) == 0
    captured = capsys.readouterr()
    res = json.loads(out.read_text())
    assert res["max_topk"] == 5 and res["archive_without_labels"] == 2
    assert {"NDCG@5", "mAP@5", "P@5", "R@5"} <= set(res["metrics"])
    assert "P@5" in captured.out  # the table is not empty
    # P@5 by hand: every query sees all 5 items; an item is relevant when it shares a label
    with h5py.File(q, "r") as f:
        ql = f["label"][()]
    expect = np.mean([(ql[i] @ labels.T > 0).sum() / 5 for i in range(4)])
    assert res["metrics"]["P@5"] == pytest.approx(expect)


def test_h5_without_patch_name_is_accepted_with_a_warning(tmp_path, capsys):
    q = _h5(tmp_path / "q.h5", 4)
    a = tmp_path / "a.h5"
    with h5py.File(a, "w") as f:
        f["feature"] = np.random.default_rng(0).random((6, 16), dtype=np.float32)
        f["label"] = np.ones((6, 17), np.float32)
    with pytest.warns(UserWarning, match=f"{a}: no patch_name dataset"):
        assert retrieval.main(["--query-features", q, "--archive-features", str(a),
                               "--quiet"]) == 0


def _config(tmp_path, model, train, test):
    cfg = {"run_name": "r", "model_name": "BCE", "dataset": "DLRSD",
           "feature_model_path": str(model),
           "train_tfrecord_paths": [str(train)], "test_tfrecord_paths": [str(test)],
           "dumps": {"features": str(tmp_path / "features")}}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def test_truncated_model_and_records_are_named(tmp_path, capsys):
    train = _dlrsd_records(tmp_path / "train.tfrecord", 6, 1)
    test = _dlrsd_records(tmp_path / "test.tfrecord", 8, 2)
    model = tmp_path / "feature_model.keras"
    _feature_model(model)
    data = model.read_bytes()
    bad_model = tmp_path / "bad.keras"
    bad_model.write_bytes(data[:len(data) // 2])
    assert retrieval.main([_config(tmp_path, bad_model, train, test), "--quiet"]) == 2
    assert "cannot be loaded as a Keras model" in one_error_line(capsys, str(bad_model))
    raw = (tmp_path / "test.tfrecord").read_bytes()
    cut = tmp_path / "cut.tfrecord"
    cut.write_bytes(raw[:int(len(raw) * 0.7)])
    assert retrieval.main([_config(tmp_path, model, train, cut), "--quiet"]) == 2
    assert "truncated or corrupt TFRecord" in one_error_line(capsys, str(cut))


def _codes_only(path, code, label, names):
    """An HDF5 file of hash codes as another tool writes it: code, label, patch_name only."""
    with h5py.File(path, "w") as f:
        f.create_dataset("code", data=np.asarray(code, np.uint8))
        f.create_dataset("label", data=np.asarray(label, np.float32))
        f.create_dataset("patch_name", data=np.array([n.encode() for n in names], dtype=object),
                         dtype=h5py.string_dtype("utf-8"))
    return str(path)


def test_hamming_ranks_files_of_codes_alone_and_names_both_files_on_a_width_mismatch(
        tmp_path, capsys):
    from evaluation.hamming import pack_codes

    rng = np.random.default_rng(3)
    out = {s: (rng.random((n, 16)) > 0.5).astype(np.float32) for s, n in (("q", 6), ("a", 11))}
    lab = {s: (rng.random((len(out[s]), 17)) > 0.7).astype(np.float32) for s in out}
    names = {s: [f"{s}{i}" for i in range(len(out[s]))] for s in out}
    full, bare = {}, {}
    for s in out:  # the same codes with and without the float features beside them
        full[s] = str(tmp_path / f"{s}_full.h5")
        write_features(full[s], out[s], lab[s], names[s], code=pack_codes(out[s]))
        bare[s] = _codes_only(tmp_path / f"{s}_codes.h5", pack_codes(out[s]), lab[s], names[s])
    res = {}
    for kind, files in (("full", full), ("bare", bare)):
        path = tmp_path / f"{kind}.json"
        assert retrieval.main(["--query-features", files["q"], "--archive-features", files["a"],
                               "--metric", "hamming", "--quiet", "--json", str(path)]) == 0
        res[kind] = json.loads(path.read_text())
    capsys.readouterr()
    assert res["bare"]["metrics"] == res["full"]["metrics"] and res["bare"]["num_archive"] == 11
    # a float metric on codes alone: named, with the way out
    assert retrieval.main(["--query-features", bare["q"], "--archive-features", bare["a"],
                           "--quiet"]) == 2
    line = one_error_line(capsys, bare["q"])
    assert "holds hash codes only" in line and "--metric hamming" in line
    # codes of another width: both files named
    wide = _codes_only(tmp_path / "wide.h5", np.zeros((11, 4), np.uint8), lab["a"], names["a"])
    assert retrieval.main(["--query-features", bare["q"], "--archive-features", wide,
                           "--metric", "hamming", "--quiet"]) == 2
    line = one_error_line(capsys, "code widths differ")
    assert line == (f"error: code widths differ: {bare['q']} has 16 bits, {wide} has 32 bits")
