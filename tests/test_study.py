"""study.py: validation, cells through training + retrieval, skipping, single cells, outputs."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest

import study as study_cli
from conftest import copy_records
from studies import report, runner
from studies.spec import StudyError, load_study

N_TRAIN, N_EVAL = 8, 10


@pytest.fixture(scope="module")
def base_config(tmp_path_factory) -> Path:
    """A train config over tiny records: train / train_noise_prcnt50 (8), val (4) and an archive
    of 10 (taken from the clean training split, so that metrics @10 exist)."""
    import prep_DLRSD_noisy
    from archives import sample

    base = tmp_path_factory.mktemp("study")
    raw, full, tiny = base / "raw", base / "full", base / "TFRecord"
    sample.write_sample_archive(raw, seed=0, per_class=10, scenes=["beach", "forest", "harbor"])
    prep_DLRSD_noisy.main(["-r_dlrsd", str(raw / "DLRSD"), "-r_ucm", str(raw / "UCMerced_LandUse"),
                           "-o", str(full), "--noise-levels", "50", "--quiet", "--layout", "files"])
    tiny.mkdir()
    for name, src, n in (("train", "train", N_TRAIN), ("train_noise_prcnt50", "train_noise_prcnt50",
                          N_TRAIN), ("val", "val", 4), ("test", "train", N_EVAL)):
        copy_records(full / "TFRecord" / f"{src}.tfrecord", tiny / f"{name}.tfrecord", n)
    cfg = dict(model_name="BCE", dataset="DLRSD", backbone="small_cnn", embed_dim=8,
               batch_size=4, nb_epoch=3, noisy_sel_prcnt=25,
               train_tfrecord_paths=str(tiny / "train.tfrecord"),
               val_tfrecord_paths=str(tiny / "val.tfrecord"),
               test_tfrecord_paths=str(tiny / "test.tfrecord"))
    path = base / "base.json"
    path.write_text(json.dumps(cfg))
    return path


def _study(tmp_path, base_config, **kw) -> Path:
    d = {"base_config": str(base_config), "models": ["BCE", "GRID-BCE"], "noise_levels": [50],
         "seeds": [0], "out": str(tmp_path / "out"), "nb_epoch": 1}
    d.update(kw)
    path = tmp_path / "study.json"
    path.write_text(json.dumps(d))
    return path


@pytest.mark.parametrize("change, message", [
    ({"models": []}, "models: expected a non-empty list"),
    ({"seeds": [0, 0]}, "seeds: duplicate"),
    ({"noise_levels": [15]}, "noise_prcnt: 15 is not offered"),
    ({"models": ["GRID"]}, "model_name: 'GRID' is not one of"),
    ({"nb_epok": 2}, "nb_epok: unknown key"),
    ({"seed": 1}, "seed: set per cell"),
    ({"learning_rate": -1}, "learning_rate: must be > 0"),
    ({"sample_archive": {"varient": "hard"}}, "sample_archive.varient: unknown key"),
])
def test_study_file_errors_name_the_key(tmp_path, base_config, change, message):
    path = _study(tmp_path, base_config, **change)
    with pytest.raises(StudyError, match=message):
        load_study(path)
    assert study_cli.main([str(path), "--list"]) == 2


def test_missing_required_key(tmp_path, base_config):
    path = _study(tmp_path, base_config)
    d = json.loads(path.read_text())
    del d["out"]
    path.write_text(json.dumps(d))
    with pytest.raises(StudyError, match="out: required key is missing"):
        load_study(path)


def test_cells_and_configs(tmp_path, base_config):
    s = load_study(_study(tmp_path, base_config, seeds=[0, 1], noise_levels=[0, 50]))
    names = [c.name for c in s.cells]
    assert names[:3] == ["BCE-noise0-seed0", "BCE-noise0-seed1", "BCE-noise50-seed0"]
    assert len(names) == 8 and len(set(names)) == 8
    cfgs = [s.cell_config(c) for c in s.cells]
    assert len({c.run_name for c in cfgs}) == 8  # seeds do not share a run folder
    assert all(c.nb_epoch == 1 and c.batch_size == 4 for c in cfgs)  # override + base
    assert cfgs[1].seed == 1 and cfgs[1].suffix == "seed1"
    assert runner.select(s, shard=(1, 3)) == [1, 4, 7] and runner.select(s, cell=5) == [5]
    with pytest.raises(IndexError, match="8 cells"):
        runner.select(s, cell=8)


def test_study_runs_cells_skips_finished_and_collects(tmp_path, base_config, capsys):
    path = _study(tmp_path, base_config, models=["BCE", "GRID-BCE", "ELR"])
    out = tmp_path / "out"
    assert study_cli.main([str(path), "--cell", "1"]) == 0  # one cell alone, as on a cluster
    assert [p.name for p in (out / "cells").iterdir()] == ["GRID-BCE-noise50-seed0.json"]
    assert not (out / "study.csv").exists()  # single cells never collect
    first = (out / "cells" / "GRID-BCE-noise50-seed0.json").stat().st_mtime_ns

    assert study_cli.main([str(path)]) == 0
    assert "GRID-BCE-noise50-seed0: finished earlier, skipped" in capsys.readouterr().out
    assert (out / "cells" / "GRID-BCE-noise50-seed0.json").stat().st_mtime_ns == first
    with open(out / "study.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["model"], r["noise_prcnt"], r["seed"]) for r in rows] == [
        ("BCE", "50", "0"), ("GRID-BCE", "50", "0"), ("ELR", "50", "0")]
    # chance level = share of training records whose noisy multi-hot differs from the clean one
    from archives import dlrsd
    recs = list(dlrsd.parse_records([str(Path(json.loads(base_config.read_text())[
        "train_tfrecord_paths"]).parent / "train_noise_prcnt50.tfrecord")]))
    share = np.mean([np.any(r["label"].numpy() != r["noisy_label"].numpy()) for r in recs])
    assert all(float(r["chance_level"]) == pytest.approx(share) for r in rows)
    # 8 records in batches of 4 at 25 %: floor(4 * 25 / 100) = 1 flagged per batch, 2 of 8
    assert all(float(r["selection_share"]) == pytest.approx(2 / 8) for r in rows)
    assert rows[0]["sel_precision"] == "" and rows[2]["sel_recall"] == ""
    assert 0.0 <= float(rows[1]["sel_precision"]) <= 1.0
    for r in rows:
        assert 0.0 <= float(r["mAP@10"]) <= 1.0 and float(r["train_time_s"]) > 0
    summary = (out / "summary.md").read_text()
    # one seed: the spread is undefined, shown as n/a (not a made-up 0)
    assert summary.count("\n") == 2 + 3 and "± n/a" in summary and "± 0.000" not in summary
    assert (out / "selection_vs_noise.png").stat().st_size > 1000
    assert (out / "study.json").is_file()


def test_interrupted_cell_resumes_from_checkpoint(tmp_path, base_config, capsys):
    path = _study(tmp_path, base_config, models=["BCE"], nb_epoch=2)
    s = load_study(path)
    cfg = s.cell_config(s.cells[0])
    import training
    training.train(cfg, max_epochs=1, show_progress=False, log=lambda m: None)  # "interrupted"
    assert study_cli.main([str(path), "--cell", "0"]) == 0
    assert "(resuming)" in capsys.readouterr().out
    row = json.loads(s.cell_result_path(s.cells[0]).read_text())
    assert row["model"] == "BCE" and json.loads(cfg.config_dump_path.read_text())["nb_epoch"] == 2


def test_cell_interrupted_before_its_first_checkpoint_starts_afresh(tmp_path, base_config):
    path = _study(tmp_path, base_config, models=["BCE"], nb_epoch=1)
    s = load_study(path)
    cfg = s.cell_config(s.cells[0])
    cfg.summaries_dir.mkdir(parents=True)  # what a kill before the first checkpoint leaves
    (cfg.summaries_dir / "events.out.tfevents.0").write_bytes(b"")
    assert study_cli.main([str(path), "--cell", "0"]) == 0
    assert json.loads(s.cell_result_path(s.cells[0]).read_text())["model"] == "BCE"


def test_summary_mean_and_sd(tmp_path, base_config):
    s = load_study(_study(tmp_path, base_config, models=["BCE"], seeds=[0, 1, 2]))
    rows = [{"model": "BCE", "noise_prcnt": 50, "seed": i, "x": v, "y": float("nan")}
            for i, v in enumerate([0.5, 0.7, 0.9])]
    (res,) = report.summarise(rows, ["x", "y"], s)
    assert res["n_seeds"] == 3 and res["x_mean"] == pytest.approx(0.7)
    assert res["x_sd"] == pytest.approx(0.2) and np.isnan(res["y_mean"])


def test_shipped_study_and_demo_configs_are_valid(monkeypatch):
    from config import Config
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    s = load_study("configs/study_sample_hard.json")
    assert len(s.cells) == len(s.models) * len(s.noise_levels) * len(s.seeds)
    assert s.sample_archive == {"variant": "hard", "per_class": 20, "seed": 0}
    cfg = s.cell_config(s.cells[0])
    assert cfg.train_tfrecord_paths == (str(s.out / "data" / "TFRecord" / "train.tfrecord"),)
    for name in ("demo_hard_grid_bce", "demo_hard_bce"):
        demo = Config.from_json(f"configs/{name}.json")
        assert demo.suffix == "hard" and "DLRSD-hard" in demo.train_tfrecord_paths[0]
        assert demo.nb_epoch == s.overrides["nb_epoch"] and demo.backbone == cfg.backbone


SEL40 = {"name": "GRID-BCE-sel40", "model_name": "GRID-BCE", "noisy_sel_prcnt": 40}


def test_named_model_variants(tmp_path, base_config):
    s = load_study(_study(tmp_path, base_config, models=["GRID-BCE", SEL40]))
    assert [c.name for c in s.cells] == ["GRID-BCE-noise50-seed0", "GRID-BCE-sel40-noise50-seed0"]
    plain, sel40 = (s.cell_config(c) for c in s.cells)
    assert (plain.noisy_sel_prcnt, sel40.noisy_sel_prcnt) == (25, 40)  # base, variant
    assert plain.suffix == "seed0" and sel40.suffix == "GRID-BCE-sel40-seed0"
    assert sel40.model_name == "GRID-BCE" and plain.run_name != sel40.run_name
    from studies.spec import to_dict
    assert to_dict(s)["models"] == ["GRID-BCE", SEL40]


@pytest.mark.parametrize("variant, message", [
    ({"model_name": "BCE"}, r"models\[1\].name: required"),
    ({"name": "a/b", "model_name": "BCE"}, r"models\[1\].name: 'a/b' names files"),
    ({"name": "X"}, r"models\[1\].model_name: required"),
    ({"name": "X", "model_name": "BCE", "seed": 1}, r"models\[1\].seed: set per cell"),
    ({"name": "X", "model_name": "BCE", "kl_reduktion": "latent"},
     r"models\[1\].kl_reduktion: unknown key"),
    ({"name": "BCE", "model_name": "GRID-BCE"}, "models: duplicate entries"),
    ({"name": "X", "model_name": "BCE", "kl_reduction": "rows"},
     "cell X-noise50-seed0: kl_reduction: 'rows' is not one of"),
    (3, r"models\[1\]: expected a model name or an object"),
])
def test_model_variant_errors_name_the_entry(tmp_path, base_config, variant, message):
    path = _study(tmp_path, base_config, models=["BCE", variant])
    with pytest.raises(StudyError, match=message):
        load_study(path)


def test_two_epoch_study_writes_its_curves(tmp_path, base_config):
    path = _study(tmp_path, base_config, models=["BCE", SEL40], nb_epoch=2)
    out = tmp_path / "out"
    assert study_cli.main([str(path)]) == 0
    with open(out / "curves.csv") as fh:
        curves = list(csv.DictReader(fh))
    assert [(r["cell"], r["epoch"]) for r in curves] == [
        ("BCE-noise50-seed0", "1"), ("BCE-noise50-seed0", "2"),
        ("GRID-BCE-sel40-noise50-seed0", "1"), ("GRID-BCE-sel40-noise50-seed0", "2")]
    for r in curves:
        assert r["retrieval_metric"] == "NDCG@8"  # training archive of 8 (< 20): NDCG@8
        assert 0.0 <= float(r["val_retrieval"]) <= 1.0
        assert 0.0 <= float(r["corrupted_fitted"]) <= 1.0
        assert 0.0 <= float(r["clean_fitted"]) <= 1.0
        assert float(r["loss"]) > 0
    assert curves[0]["sel_precision"] == "" and 0.0 <= float(curves[2]["sel_precision"]) <= 1.0
    # the history matches the run's dumped config
    s = load_study(path)
    dump = json.loads(s.cell_config(s.cells[1]).config_dump_path.read_text())
    assert [float(r["val_retrieval"]) for r in curves[2:]] == pytest.approx(
        [h["val_retrieval"] for h in dump["history"]])
    assert (out / "curves_noise50.png").stat().st_size > 1000
    with open(out / "study.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert "history" not in rows[0] and rows[1]["model"] == "GRID-BCE-sel40"
    for r in rows:  # the best validation epoch's test figures beside the exported (last) ones
        assert r["selected_epoch"] == "2" and r["best_val_epoch"] in ("1", "2")
        if r["best_val_epoch"] == "2":
            assert r["best_val_mAP@10"] == r["mAP@10"]
        else:
            assert 0.0 <= float(r["best_val_mAP@10"]) <= 1.0


def test_curves_are_averaged_over_seeds_per_epoch():
    rows = [{"model": "BCE", "noise_prcnt": 50, "seed": s,
             "history": [{"epoch": 1, "val_retrieval": v1, "corrupted_fitted": 0.1},
                         {"epoch": 2, "val_retrieval": v2}]}
            for s, v1, v2 in ((0, 0.2, 0.4), (1, 0.4, float("nan")))]
    curves = report.curve_rows(rows)
    assert [(c["cell"], c["epoch"]) for c in curves] == [
        ("BCE-noise50-seed0", 1), ("BCE-noise50-seed0", 2), ("BCE-noise50-seed1", 1),
        ("BCE-noise50-seed1", 2)]
    assert curves[1]["corrupted_fitted"] is None
    means = report.mean_curves(curves, "val_retrieval")
    assert means[("BCE", 50)] == ([1, 2], [pytest.approx(0.3), 0.4])  # NaN left out
    assert report.mean_curves(curves, "corrupted_fitted")[("BCE", 50)] == ([1], [0.1])


def test_a_variant_may_run_at_some_noise_levels_only(tmp_path, base_config):
    jocor = {"name": "JoCoR", "model_name": "JoCoR", "noise_levels": [50]}
    s = load_study(_study(tmp_path, base_config, noise_levels=[0, 50],
                          models=["BCE", jocor, {**SEL40, "noise_levels": [50]}]))
    assert [c.name for c in s.cells] == ["BCE-noise0-seed0", "BCE-noise50-seed0",
                                         "JoCoR-noise50-seed0", "GRID-BCE-sel40-noise50-seed0"]
    assert s.cell_config(s.cells[2]).suffix == "seed0"  # the plain model: run name unchanged
    from studies.spec import to_dict
    assert to_dict(s)["models"][1] == jocor
    bad = _study(tmp_path, base_config, noise_levels=[0, 50],
                 models=["BCE", {**SEL40, "noise_levels": [30]}])
    with pytest.raises(StudyError, match=r"models\[1\].noise_levels: 30 is not one of the "
                                         r"study's noise_levels \[0, 50\]"):
        load_study(bad)


def test_selected_per_epoch_counts_the_floor_of_each_batch():
    assert runner.selected_per_epoch(294, 32, 10) == 27  # 9 batches x 3, then 6 x 10 % -> 0
    assert runner.selected_per_epoch(10, 4, 25) == 2
    assert runner.selected_per_epoch(40, 20, 10) == 4


def test_set_overrides_every_cell_after_the_file(tmp_path, base_config, capsys):
    path = _study(tmp_path, base_config, nb_epoch=1, learning_rate=0.01)
    s = load_study(path, {"nb_epoch": 2, "embed_dim": 16})
    cfgs = [s.cell_config(c) for c in s.cells]
    assert all(c.nb_epoch == 2 and c.embed_dim == 16 and c.learning_rate == 0.01 for c in cfgs)
    assert study_cli.main([str(path), "--list", "--set", "nb_epoch=2"]) == 0
    with pytest.raises(StudyError, match="--set seed: set per cell"):
        load_study(path, {"seed": 3})
    assert study_cli.main([str(path), "--list", "--set", "nb_epok=2", "--set", "embed_dim=0",
                           "--set", "oops"]) == 2
    err = capsys.readouterr().err
    assert "error: --set oops: expected KEY=VALUE" in err
    assert study_cli.main([str(path), "--list", "--set", "nb_epok=2", "--set",
                           "embed_dim=0"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "error: --set nb_epok: unknown key; did you mean 'nb_epoch'?" in err[0]
    assert any(line.startswith("error: --set embed_dim: must be >= 1") for line in err)


# ---------------------------------------------------------------- claims and spreads
def _plant_claim(path, pid):
    import locks

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": locks.hostname(), "start": None,
                                "since": "2026-01-02 03:04:05", "purpose": "study cell",
                                "token": "planted"}))


def test_claimed_cell_is_skipped_a_stale_claim_is_taken_over_and_both_are_listed(
        tmp_path, base_config, capsys):
    import os

    import locks

    path = _study(tmp_path, base_config, models=["BCE"], seeds=[0, 1])
    s = load_study(path)
    live, stale = (s.out / "claims" / f"{c.name}.lock" for c in s.cells)
    _plant_claim(live, os.getpid())  # another process is training cell 0
    _plant_claim(stale, 999999999)  # cell 1's claimer was killed
    holder = f"pid {os.getpid()} on host {locks.hostname()} since 2026-01-02 03:04:05 (study cell)"
    assert study_cli.main([str(path), "--list"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"   0  BCE-noise50-seed0                running: {holder}",
        f"   1  BCE-noise50-seed1                pending (stale claim of pid 999999999 on host "
        f"{locks.hostname()} since 2026-01-02 03:04:05 (study cell))"]
    assert study_cli.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert f"[0] BCE-noise50-seed0: claimed by {holder}, skipped" in out
    assert "taking over the stale lock of pid 999999999" in out
    assert "1 cell(s) being trained by other processes were skipped (0)" in out
    assert not s.cell_result_path(s.cells[0]).exists() and s.cell_result_path(s.cells[1]).is_file()
    assert not s.cell_config(s.cells[0]).weights_dir.exists()  # never touched
    from test_train import summary_steps
    assert summary_steps(s.cell_config(s.cells[1]).summaries_dir, "train/loss") == [1, 2]  # once
    assert live.exists() and not stale.exists()  # the other's claim stays; ours is released
    assert [runner.claim_path(s, c) for c in s.cells] == [live, stale]
    assert study_cli.main([str(path), "--list"]) == 0
    assert capsys.readouterr().out.splitlines()[1].endswith(" finished")


def test_cell_results_are_strict_json_and_read_back_as_nan(tmp_path, base_config):
    import math

    from atomic_files import write_json_atomic

    s = load_study(_study(tmp_path, base_config, models=["BCE"], noise_levels=[0, 50]))
    row = {"model": "BCE", "noise_prcnt": 0, "seed": 0, "chance_level": 0.0,
           "sel_precision": math.nan, "sel_recall": math.inf, "mAP@10": 0.5,
           "selected_epoch": None, "run_name": "r",
           "history": [{"epoch": 1, "retrieval_metric": "NDCG@8", "val_retrieval": 0.4,
                        "corrupted_fitted": math.nan}]}
    path = s.cell_result_path(s.cells[0])
    path.parent.mkdir(parents=True)
    write_json_atomic(path, row)

    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")
    raw = json.loads(path.read_text(), parse_constant=refuse)
    assert raw["sel_precision"] is None and raw["history"][0]["corrupted_fitted"] is None
    (got,) = report.load_rows(s)
    assert math.isnan(got["sel_precision"]) and math.isnan(got["sel_recall"])
    assert got["selected_epoch"] is None and got["mAP@10"] == 0.5 and got["run_name"] == "r"
    assert math.isnan(got["history"][0]["corrupted_fitted"])
    assert got["history"][0]["val_retrieval"] == 0.4
    # a finished cell read by the runner: the same row (NaN compared as the token json writes)
    assert json.dumps(runner._finished(s, 0, s.cells[0], lambda m: None)) == json.dumps(got)
    report.collect(s)
    with open(s.out / "study.csv") as fh:
        (csv_row,) = list(csv.DictReader(fh))
    assert csv_row["sel_precision"] == "" and csv_row["mAP@10"] == "0.5"


@pytest.mark.parametrize("blocker, named, step", [
    ("data/TFRecord", "data/TFRecord", "preparing the study's records"),
    ("data/raw/DLRSD", "data/raw/DLRSD/Images/", "writing the study's sample archive"),
])
def test_a_failed_sample_data_step_is_a_named_error(tmp_path, base_config, capsys, blocker,
                                                      named, step):
    """A file where the study's data folder should be: ``error: <file>: <step> ...``, exit 2
    (no traceback), and the finished cell's result and study.json are left as they were."""
    path = _study(tmp_path, base_config, models=["BCE", "GRID-BCE"],
                  sample_archive={"variant": "default", "per_class": 5, "seed": 0})
    s = load_study(path)
    done = s.cell_result_path(s.cells[0])
    done.parent.mkdir(parents=True)
    done.write_text('{"model": "BCE", "noise_prcnt": 50, "seed": 0}')
    (s.out / blocker).parent.mkdir(parents=True, exist_ok=True)
    (s.out / blocker).write_text("not a folder")
    assert study_cli.main([str(path)]) == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if step in x]
    assert line.startswith(f"error: {s.out / named}") and "failed" in line
    assert "Traceback" not in err
    assert done.read_text() == '{"model": "BCE", "noise_prcnt": 50, "seed": 0}'
    assert (s.out / "study.json").is_file() and (s.out / blocker).read_text() == "not a folder"
    assert not s.cell_result_path(s.cells[1]).exists()


def test_one_seed_spread_is_na_in_every_output(tmp_path, base_config):
    import math

    s = load_study(_study(tmp_path, base_config, models=["BCE"], noise_levels=[0, 50],
                          seeds=[0, 1]))
    rows = [{"model": "BCE", "noise_prcnt": n, "seed": seed, "chance_level": 0.0,
             "sel_precision": math.nan, "sel_recall": math.nan, "mAP@20": v, "NDCG@20": v}
            for n, seed, v in ((0, 0, 0.5), (0, 1, 0.7), (50, 0, 0.4))]
    for cell, row in zip(s.cells, rows):
        s.cell_result_path(cell).parent.mkdir(parents=True, exist_ok=True)
        s.cell_result_path(cell).write_text(json.dumps(row))
    res = report.collect(s)
    summary = report.summarise(rows, ["NDCG@20"], s)
    assert summary[0]["NDCG@20_sd"] == pytest.approx(math.sqrt(0.02))  # sd of 0.5 and 0.7
    assert math.isnan(summary[1]["NDCG@20_sd"])
    assert "| BCE | 0 | 2 | 0.600 ± 0.141 | 0.600 ± 0.141 |" in res["table"]
    assert "| BCE | 50 | 1 | 0.400 ± n/a | 0.400 ± n/a |" in res["table"]
    (one_seed,) = [x for x in (s.out / "summary.md").read_text().splitlines() if "| 50 | 1 |" in x]
    assert one_seed == "| BCE | 50 | 1 | 0.400 ± n/a | 0.400 ± n/a | - | - | 0.000 ± n/a |"
    with open(s.out / "summary.csv") as fh:
        by_noise = {r["noise_prcnt"]: r for r in csv.DictReader(fh)}
    assert by_noise["50"]["NDCG@20_sd"] == "" and by_noise["50"]["NDCG@20_mean"] == "0.4"
    assert float(by_noise["0"]["NDCG@20_sd"]) == pytest.approx(math.sqrt(0.02))


@pytest.mark.parametrize("path", sorted(
    str(p.relative_to(Path(__file__).resolve().parents[1]))
    for pattern in ("studies/*.json", "configs/study_*.json")
    for p in Path(__file__).resolve().parents[1].glob(pattern)))
def test_shipped_study_files_load_and_name_registered_models(path, monkeypatch):
    """Every study file in the repository loads, and each of its cells trains a registered model
    on the archive of its base config."""
    from models import registry as models

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    s = load_study(path)
    assert s.models and s.noise_levels and s.seeds
    for m in s.models:
        info = models.get(s.variants.get(m, {}).get("model_name", m))
        assert info.name
        if info.pixel_maps:
            assert s.base["dataset"] in ("DLRSD", "BENv2"), (path, m)
    for cell in s.cells:  # every cell's train config passes Config's checks
        assert s.cell_config(cell).model_name == s.variants.get(cell.model, {}).get(
            "model_name", cell.model)
