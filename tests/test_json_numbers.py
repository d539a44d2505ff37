"""Strict JSON outputs: NaN/inf written as null, read back as NaN where a number is expected."""
import json
import math

import pytest

import run_history
from atomic_files import write_json_atomic
from json_numbers import finite_or_null, nan_for_null, to_json


def strict_loads(text: str):
    """``json.loads`` that refuses NaN/Infinity tokens, as jq and JavaScript do."""
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def test_strict_loads_refuses_python_nan_tokens():
    with pytest.raises(ValueError, match="NaN"):
        strict_loads(json.dumps({"a": math.nan}))


def test_non_finite_floats_become_null_at_any_depth():
    data = {"a": math.nan, "b": [1.5, math.inf, (-math.inf, 2)], "c": {"d": math.nan, "e": None},
            "f": "NaN", "g": 3, 4: True}
    assert finite_or_null(data) == {"a": None, "b": [1.5, None, [None, 2]],
                                    "c": {"d": None, "e": None}, "f": "NaN", "g": 3, 4: True}
    assert strict_loads(to_json(data)) == {"a": None, "b": [1.5, None, [None, 2]],
                                           "c": {"d": None, "e": None}, "f": "NaN", "g": 3,
                                           "4": True}
    with pytest.raises(TypeError):  # what json cannot write still raises
        to_json({"x": object()})


def test_nan_for_null_keeps_numbers_strings_and_the_named_keys():
    got = nan_for_null({"a": None, "b": 0.25, "c": "NDCG@8", "epoch": None}, keep=("epoch",))
    assert math.isnan(got["a"]) and got["b"] == 0.25 and got["c"] == "NDCG@8"
    assert got["epoch"] is None


def test_write_json_atomic_writes_strict_json(tmp_path):
    path = tmp_path / "out.json"
    write_json_atomic(path, {"metrics": {"mAP@20": math.nan, "NDCG@20": 0.5}, "x": [math.inf]})
    assert strict_loads(path.read_text()) == {"metrics": {"mAP@20": None, "NDCG@20": 0.5},
                                              "x": [None]}
    assert path.read_text().endswith("}\n")


def test_checkpointed_history_is_strict_and_round_trips():
    s = run_history.empty_state()
    s, _ = run_history.record(s, {"epoch": 1, "val_retrieval": 0.4, "corrupted_fitted": math.nan,
                                  "retrieval_metric": "NDCG@8"})
    text = run_history.dump_state(s)
    raw = strict_loads(text)
    assert raw["history"][0]["corrupted_fitted"] is None
    back = run_history.load_state(text)
    (h,) = back["history"]
    assert math.isnan(h["corrupted_fitted"]) and h["val_retrieval"] == 0.4
    assert h["retrieval_metric"] == "NDCG@8" and back["best_epoch"] == 1
    assert run_history.dump_state(back) == text
    # a state checkpointed before (NaN tokens) still loads
    old = json.dumps({"history": [{"epoch": 1, "corrupted_fitted": math.nan}],
                      "best_epoch": None, "best_value": None})
    assert math.isnan(run_history.load_state(old)["history"][0]["corrupted_fitted"])
    assert run_history.load_state(old)["best_epoch"] is None


def test_read_dump_restores_final_metrics_and_history_only(tmp_path):
    from config import read_dump
    from training import _previous_final_metrics

    dump = {"run_name": "r", "weights": None, "selected_epoch": None,
            "final_metrics": {"sel_recall": math.nan, "loss": 0.5},
            "history": [{"epoch": 1, "corrupted_fitted": math.nan, "clean_fitted": 0.75}]}
    path = tmp_path / "r.json"
    write_json_atomic(path, dump)
    strict_loads(path.read_text())
    back = read_dump(path)
    assert back["weights"] is None and back["selected_epoch"] is None  # config nulls stay
    assert math.isnan(back["final_metrics"]["sel_recall"]) and back["final_metrics"]["loss"] == 0.5
    assert math.isnan(back["history"][0]["corrupted_fitted"])
    assert back["history"][0]["clean_fitted"] == 0.75
    resumed = _previous_final_metrics(path)  # what a resumed, complete run writes again
    assert math.isnan(resumed["sel_recall"]) and resumed["loss"] == 0.5
    write_json_atomic(tmp_path / "again.json", back)
    assert (tmp_path / "again.json").read_text() == path.read_text()


@pytest.mark.parametrize("text, message", [("[1]", "expected a JSON object"),
                                           ("{", "not valid JSON")])
def test_read_dump_names_the_file(tmp_path, text, message):
    from config import read_dump

    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"{path}: {message}"):
        read_dump(path)
