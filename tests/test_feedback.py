"""Run feedback (docs/training.md, "Run output"): the per-epoch line, its ETA, the progress bar's
total on the first epoch, and the record counts behind that total."""
import json
import re
import shutil

import pytest
from tqdm import tqdm

import epoch_report
from archives.record_files import count_records, expected_records
from conftest import N_TRAIN, run_config

GRID_TERMS = (("dis_loss", "dis"), ("gen_loss", "gen"), ("recon_loss", "recon"),
              ("kl_loss", "KL"), ("hybrid_loss", "hybrid"))
TIME = re.compile(r"\((?P<total>[\d.]+ (?:s|min|h))(?:, ETA (?P<eta>[\d.]+ (?:s|min|h)))?\)$")


# ---------------------------------------------------------------- formatting, by hand
def test_numbers_and_durations():
    assert [epoch_report.number(v) for v in (0.39191, 102.345, 0.031234, 12345.6, 0.5,
                                             float("nan"))] \
        == ["0.392", "102", "0.0312", "12346", "0.5", "nan"]
    assert [epoch_report.duration(s) for s in (3.21, 42.4, 150.0, 720.0, 5 * 3600.0)] \
        == ["3.2 s", "42 s", "2.5 min", "12 min", "5.0 h"]


def test_eta_is_the_remaining_epochs_at_the_mean_epoch_time():
    assert epoch_report.eta_s(300.0, 3, 10) == pytest.approx(700.0)  # 100 s an epoch, 7 left
    assert epoch_report.eta_s(300.0, 10, 10) is None and epoch_report.eta_s(0.0, 0, 10) is None


def test_selection_is_shown_only_where_it_can_be_measured():
    means = {"sel_precision": 0.75, "sel_recall": 0.5}
    assert epoch_report.selection_text(means, {"_tp": 3, "_nsel": 4, "_ncorr": 6}, True) \
        == "sel P 0.75 R 0.50"
    # no corrupted sample (0 % noise): neither is defined, whatever mean_metrics filled in
    assert epoch_report.selection_text(means, {"_tp": 0, "_nsel": 4, "_ncorr": 0}, True) == ""
    assert epoch_report.selection_text(means, {"_tp": 0, "_nsel": 0, "_ncorr": 6}, True) \
        == "sel P n/a R 0.50"
    # counts unknown (an epoch reported after a resume): the run's noise level decides
    assert epoch_report.selection_text(means, None, True) == "sel P 0.75 R 0.50"
    assert epoch_report.selection_text(means, None, False) == ""
    assert epoch_report.selection_text({"loss": 1.0}, None, True) == ""  # a baseline


def test_epoch_line_of_grid_and_of_a_baseline():
    grid = {"dis_loss": 0.39191, "gen_loss": 0.40123, "recon_loss": 0.031234, "kl_loss": 102.3,
            "hybrid_loss": 0.3954, "generative_total": 102.7, "loss": 103.5,
            "sel_precision": 0.8125, "sel_recall": 0.6}
    probed = {"retrieval_metric": "NDCG@20", "val_retrieval": 0.394,
              "corrupted_fitted": 0.509, "clean_fitted": 0.899}
    line = epoch_report.epoch_line(
        44, 60, grid, {"dis_loss": 0.4128, "loss": 104.0}, probed, terms=GRID_TERMS,
        val_terms=(("dis_loss", "dis"),), counts={"_tp": 13, "_nsel": 16, "_ncorr": 22},
        noisy=True, elapsed_s=44 * 60.0)
    assert line == ("epoch 44/60: dis 0.392 gen 0.401 recon 0.0312 KL 102 hybrid 0.395, "
                    "sel P 0.81 R 0.60, val dis 0.413, val NDCG@20 0.394, "
                    "fitted corrupted 0.51 clean 0.90 (44 min, ETA 16 min)")
    assert len(line) <= 175  # every figure a line can have
    bce = {"dis_loss": 0.5, "gen_loss": 0.0, "kl_loss": 0.0, "loss": 0.5}
    line = epoch_report.epoch_line(2, 2, bce, {"loss": 0.61}, {}, terms=(("loss", "loss"),),
                                   val_terms=(("loss", "loss"),), counts={}, noisy=True,
                                   elapsed_s=3.0)
    assert line == "epoch 2/2: loss 0.5, val loss 0.61 (3.0 s)"  # the last epoch: no ETA


def test_bar_text_is_the_running_mean_of_the_terms():
    sums = {"dis_loss": 1.0, "kl_loss": 300.0, "loss": 302.0, "_tp": 3.0}
    assert epoch_report.bar_text(sums, 2, GRID_TERMS) == "dis 0.5 KL 150"
    assert epoch_report.bar_text(sums, 0, GRID_TERMS) == ""


# ---------------------------------------------------------------- record counts
def test_expected_records_walks_the_headers_of_a_plain_file(records, tmp_path):
    assert expected_records([str(records / "train_noise_prcnt50.tfrecord")]) == N_TRAIN
    assert expected_records([str(records / "train.tfrecord"), str(records / "val.tfrecord")]) \
        == count_records(str(records / "train.tfrecord")) + count_records(
            str(records / "val.tfrecord"))
    cut = tmp_path / "train.tfrecord"
    data = (records / "train.tfrecord").read_bytes()
    cut.write_bytes(data[:len(data) - 7])  # the last record's end is missing
    assert expected_records([str(cut)]) is None
    assert expected_records([str(tmp_path / "missing.tfrecord")]) is None


def test_expected_records_reads_the_counts_of_the_metadata(dlrsd_prepped, tmp_path):
    meta = json.loads((dlrsd_prepped / "records_meta.json").read_text())
    assert meta["layout"] == "files"
    path = dlrsd_prepped / "train_noise_prcnt50.tfrecord"
    assert expected_records([str(path)]) == meta["records"]["50"] == count_records(str(path))
    # the metadata is what is read (no walk): a folder whose metadata says 99 gets 99
    shutil.copy(path, tmp_path / "train_noise_prcnt50.tfrecord")
    (tmp_path / "records_meta.json").write_text(json.dumps({**meta, "records": {"50": 99}}))
    assert expected_records([str(tmp_path / "train_noise_prcnt50.tfrecord")]) == 99


# ---------------------------------------------------------------- real runs
def _train(records, tmp_path, monkeypatch, model_name):
    import training

    bars = []

    class RecordingBar(tqdm):
        def __init__(self, *args, **kwargs):
            bars.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(training, "tqdm", RecordingBar)
    cfg = run_config(records, tmp_path, model_name=model_name, nb_epoch=2)
    lines = []
    result = training.train(cfg, show_progress=True, log=lines.append)
    assert result.completed
    return [m for m in lines if m.startswith("epoch ")], bars, result


@pytest.mark.parametrize("model_name", ["GRID-BCE", "BCE"])
def test_epoch_lines_bar_total_and_eta(records, tmp_path, monkeypatch, capsys, model_name):
    import training

    epochs, bars, result = _train(records, tmp_path, monkeypatch, model_name)
    bar_output = capsys.readouterr().err
    print("\n".join(epochs))  # shown with pytest -s
    assert [m.split(":")[0] for m in epochs] == ["epoch 1/2", "epoch 2/2"]
    # the first epoch's bar knows its total (8 records, batch 4) before the epoch runs
    assert [(b["desc"], b["total"]) for b in bars] == [("epoch 1/2", 2), ("epoch 2/2", 2)]
    first, last = (TIME.search(m) for m in epochs)
    # after epoch 1 of 2 the ETA is the mean epoch time: the total so far
    assert first["eta"] == first["total"] and last["eta"] is None
    for line in epochs:
        assert len(line) <= 170 and ", val NDCG@8 " in line and "fitted corrupted" in line
    if model_name == "BCE":
        assert all(m.startswith(f"epoch {i}/2: loss ") and ", val loss " in m
                   for i, m in enumerate(epochs, 1))
        for word in ("KL", "gen", "recon", "hybrid", "sel P", "dis"):
            assert word not in " ".join(epochs) and word not in bar_output
        summary = "\n".join(training.summary_lines(result))
        assert "last epoch (train): dis_loss" in summary and "kl_loss" not in summary
    else:
        for line in epochs:
            assert re.match(r"epoch \d/2: dis [\d.]+ gen [\d.]+ recon [\d.e-]+ KL [\d.]+ "
                            r"hybrid [\d.]+, sel P [\d.na/]+ R [\d.]+, val dis [\d.]+, ", line)
        # the progress bar shows the same terms (running means)
        assert "dis " in bar_output and " KL " in bar_output and " hybrid " in bar_output
        summary = training.summary_lines(result)
        assert "kl_loss" in "\n".join(summary)
        val_line = next(m for m in summary if "last epoch (val)" in m)
        train_line = next(m for m in summary if "last epoch (train)" in m)
        assert "sel_precision" in train_line and "sel_precision" not in val_line
