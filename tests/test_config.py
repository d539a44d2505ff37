"""Config: published keys and defaults, validation messages, derived values, dump round trip."""
import json
from pathlib import Path

import h5py
import pytest

from atomic_files import atomic_path, write_json_atomic
from config import Config, ConfigError, OUTPUT_KEYS

ROOT = Path(__file__).resolve().parents[1]


def base(**kw):
    d = {"model_name": "GRID-BCE", "dataset": "DLRSD",
         "train_tfrecord_paths": "data/TFRecord/train.tfrecord"}
    d.update(kw)
    return d


def error(**kw) -> str:
    with pytest.raises(ConfigError) as info:
        Config.from_dict(base(**kw))
    return str(info.value)


def test_published_defaults():
    cfg = Config.from_dict(base())
    assert (cfg.embed_dim, cfg.noise_prcnt, cfg.noisy_sel_prcnt, cfg.batch_size, cfg.nb_epoch,
            cfg.optimizer, cfg.learning_rate, cfg.gpu, cfg.suffix) == \
        (128, 0, 10, 128, 100, "Adam", 1e-3, 0, "")
    assert (cfg.backbone, cfg.weights, cfg.seed, cfg.kl_weight, cfg.strategy) == \
        ("densenet121", None, 0, 1.0, "default")
    assert cfg.dumps == {"model_weights": "dumps/weights", "summaries": "dumps/summaries",
                         "configs": "dumps/configs", "features": "dumps/features"}
    assert cfg.train_tfrecord_paths == ("data/TFRecord/train.tfrecord",)
    assert cfg.val_tfrecord_paths == () and cfg.is_grid


def test_derived_values_dlrsd_and_ben():
    d = Config.from_dict(base(model_name="GRID-RRL"))
    assert (d.nb_class, d.out_size, d.input_shape) == (17, 153, (224, 224, 3))
    b = Config.from_dict(base(dataset="BEN"))
    assert (b.nb_class, b.out_size, b.input_shape) == (19, 190, (120, 120, 10))
    assert not Config.from_dict(base(model_name="PCE")).is_grid


def test_run_name_exact():
    cfg = Config.from_dict(base(dataset="BEN", noise_prcnt=50, noisy_sel_prcnt=20, batch_size=64,
                                nb_epoch=7, embed_dim=32))
    assert cfg.run_name == "BEN-GRID-BCE-embed32-noise_prcnt50-bs64-epoch7-noisy_sel_prcnt20"
    cfg = cfg.replace(suffix="try2")
    assert cfg.run_name == "BEN-GRID-BCE-embed32-noise_prcnt50-bs64-epoch7-noisy_sel_prcnt20-try2"
    assert cfg.feature_model_path == Path("dumps/weights") / cfg.run_name / "feature_model.keras"
    assert cfg.summaries_dir == Path("dumps/summaries") / cfg.run_name
    assert cfg.config_dump_path == Path("dumps/configs") / f"{cfg.run_name}.json"
    assert cfg.features_dir == Path("dumps/features") / cfg.run_name


def test_noisy_path_substitution():
    clean = Config.from_dict(base(train_tfrecord_paths=["a/train.tfrecord"]))
    assert clean.noisy_train_paths == ("a/train.tfrecord",)
    noisy = clean.replace(noise_prcnt=30)
    assert noisy.noisy_train_paths == ("a/train_noise_prcnt30.tfrecord",)
    assert noisy.train_tfrecord_paths == ("a/train.tfrecord",)  # query set stays clean


@pytest.mark.parametrize("typo,suggestion", [
    ("modle_name", "model_name"), ("learning_rte", "learning_rate"), ("nb_epochs", "nb_epoch"),
    ("noisy_sel_prct", "noisy_sel_prcnt"), ("backbon", "backbone"), ("kl_wieght", "kl_weight"),
])
def test_unknown_key_names_key_and_suggestion(typo, suggestion):
    msg = error(**{typo: 1})
    assert msg.startswith(f"{typo}: unknown key") and f"did you mean {suggestion!r}" in msg


def test_unknown_dumps_key_and_value_typos():
    assert "dumps.summary" in error(dumps={"summary": "x"}) and "'summaries'" in \
        error(dumps={"summary": "x"})
    assert "did you mean 'GRID-BCE'" in error(model_name="GRID-BC")
    assert "did you mean 'resnet50'" in error(backbone="resnet5")
    assert "did you mean 'mirrored'" in error(strategy="mirored")


@pytest.mark.parametrize("key,value", [
    ("batch_size", "32"), ("batch_size", 3.0), ("nb_epoch", True), ("embed_dim", None),
    ("learning_rate", "1e-3"), ("suffix", 3), ("train_tfrecord_paths", 5),
    ("val_tfrecord_paths", [1, 2]), ("dumps", "dumps"), ("seed", 1.5), ("weights", 3),
])
def test_wrong_types_name_the_key(key, value):
    assert error(**{key: value}).startswith(key)


@pytest.mark.parametrize("key,value", [
    ("noisy_sel_prcnt", 101), ("noisy_sel_prcnt", -1), ("noise_prcnt", 55), ("batch_size", 0),
    ("learning_rate", 0), ("kl_weight", -1.0), ("nb_epoch", 0), ("suffix", "a/b"),
    ("optimizer", "Adagrad"), ("dataset", "UCM"), ("learning_rate", float("nan")),
])
def test_bad_values_name_the_key(key, value):
    assert error(**{key: value}).startswith(key)


def test_impossible_combinations():
    for model in ("GRID-PCE", "GRID-RRL", "PCE", "RRL"):
        assert error(dataset="BEN", model_name=model).startswith("model_name")
    assert "not offered for BEN" in error(dataset="BEN", noise_prcnt=70)
    Config.from_dict(base(dataset="BEN", noise_prcnt=60))
    Config.from_dict(base(noise_prcnt=90))


def test_missing_required_and_weights_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="^dataset: required"):
        Config.from_dict({"model_name": "BCE", "train_tfrecord_paths": "x"})
    assert "does not exist" in error(weights=str(tmp_path / "none.weights.h5"))
    w = tmp_path / "w.weights.h5"
    h5py.File(w, "w").close()  # an HDF5 file: its layers are matched when it is loaded
    assert Config.from_dict(base(weights=str(w))).weights == str(w)
    junk = tmp_path / "junk.weights.h5"
    junk.write_bytes(b"x" * 600)  # exists, but is no HDF5 file
    assert error(weights=str(junk)) == (
        f"weights: '{junk}' is not a Keras weights file (no HDF5 signature); expected an HDF5 "
        ".weights.h5 / .h5 file (Model.save_weights, the Keras-applications notop files) or a "
        ".keras file")
    (tmp_path / "w.ckpt").write_bytes(b"x")
    assert "its name ends in none of .weights.h5" in error(weights=str(tmp_path / "w.ckpt"))


def test_from_json_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        Config.from_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Config.from_json(bad)


def test_dumped_config_loads_back(tmp_path):
    cfg = Config.from_dict(base(noise_prcnt=50, val_tfrecord_paths=["v.tfrecord"], seed=3))
    dumped = cfg.dump_dict(training_time_s=12.5, final_metrics={"loss": 0.5})
    assert set(OUTPUT_KEYS) <= set(dumped) and set(Config.keys()) <= set(dumped)
    assert dumped["noisy_train_paths"] == ["data/TFRecord/train_noise_prcnt50.tfrecord"]
    assert dumped["nb_class"] == 17 and dumped["run_name"] == cfg.run_name
    path = tmp_path / "c.json"
    path.write_text(json.dumps(dumped))
    assert Config.from_json(path) == cfg


def test_shipped_configs_are_valid():
    expect = {"grid_bce": ("GRID-BCE", "BEN", 50, 20), "grid_pce": ("GRID-PCE", "DLRSD", 50, 10),
              "grid_rrl": ("GRID-RRL", "DLRSD", 50, 10)}
    for name, (model, dataset, noise, sel) in expect.items():
        cfg = Config.from_json(ROOT / "configs" / f"{name}.json")
        assert (cfg.model_name, cfg.dataset, cfg.noise_prcnt, cfg.noisy_sel_prcnt) == \
            (model, dataset, noise, sel)
        assert cfg.train_tfrecord_paths == (f"dumps/data/{dataset}/TFRecord/train.tfrecord",)
    for name in ("demo_grid_bce", "demo_bce"):
        cfg = Config.from_json(ROOT / "configs" / f"{name}.json")
        assert cfg.backbone == "small_cnn" and cfg.dataset == "DLRSD" and cfg.noise_prcnt == 50


def test_atomic_writes_replace_whole_or_keep_the_old_file(tmp_path):
    path = tmp_path / "sub" / "out.json"
    write_json_atomic(path, {"a": [1, 2]})  # creates the folder
    assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ]\n}\n'
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(path) as tmp:
            assert tmp.parent == path.parent and tmp.suffix == ".json" and tmp != path
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert json.loads(path.read_text()) == {"a": [1, 2]}  # old content kept
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.json"]  # no temporary left


def test_every_mistake_is_reported_at_once_each_with_its_key(tmp_path):
    path = tmp_path / "many.json"
    path.write_text(json.dumps(base(learning_rte=0.1, batch_size=0, dataset="DLRDS",
                                    noise_prcnt="50", dumps={"model_weight": "w"},
                                    suffix="a/b")))
    with pytest.raises(ConfigError) as info:
        Config.from_json(path)
    problems = info.value.problems
    keys = [p.split(": ")[1] for p in problems]
    assert sorted(keys) == ["batch_size", "dataset", "dumps.model_weight", "learning_rte",
                            "noise_prcnt", "suffix"], problems
    assert all(p.startswith(f"{path}: ") and "\n" not in p for p in problems)
    assert "did you mean 'learning_rate'" in problems[keys.index("learning_rte")]
    assert "did you mean 'DLRSD'" in problems[keys.index("dataset")]
    # a missing required key is reported once, beside the other mistakes
    with pytest.raises(ConfigError) as info:
        Config.from_dict({"model_name": "BCE", "train_tfrecord_paths": "x", "seed": -1})
    assert info.value.problems == ["dataset: required key is missing",
                                   "seed: must be >= 0, got -1"]


def test_config_path_that_is_a_folder_is_a_named_error(tmp_path):
    with pytest.raises(ConfigError, match=f"^{tmp_path}: is a folder"):
        Config.from_json(tmp_path)


def test_atomic_write_syncs_before_the_rename_and_names_the_file(tmp_path, monkeypatch):
    import os

    import atomic_files

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic_files.os, "fsync", lambda fd: (events.append("fsync"),
                                                             real_fsync(fd))[1])
    monkeypatch.setattr(atomic_files.os, "replace", lambda a, b: (events.append("replace"),
                                                                 real_replace(a, b))[1])
    write_json_atomic(tmp_path / "x.json", {"a": 1})
    assert events[:2] == ["fsync", "replace"]
    # a folder standing at the target: a named WriteError, which is also an OSError/ValueError
    (tmp_path / "d.json").mkdir()
    with pytest.raises(atomic_files.WriteError, match=r"d\.json: cannot be written"):
        write_json_atomic(tmp_path / "d.json", {})
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "x.json" / "under.json", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json", "x.json"]


def test_stale_temporaries_of_dead_processes_only_are_removed(tmp_path):
    from atomic_files import remove_stale_temps
    from conftest import temp_name

    dead = tmp_path / temp_name("a", ".tfrecord", 999999999)
    dead_dir = tmp_path / temp_name("m", ".keras", 999999998)
    live = tmp_path / temp_name("b", ".h5", 1)  # pid 1 always runs
    other = tmp_path / "c.tfrecord"
    # not ours to judge: another host's temporary, and a user's file of the old form
    elsewhere = tmp_path / temp_name("d", ".h5", 999999999, host="0badc0de")
    users = tmp_path / "notes.tmp-999999999.txt"
    for p in (dead, live, other, elsewhere, users):
        p.write_bytes(b"x")
    dead_dir.mkdir()
    assert sorted(remove_stale_temps(tmp_path)) == sorted([dead, dead_dir])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, "c.tfrecord", elsewhere.name, users.name])


def test_jit_compile_is_a_bool_for_grid_and_baselines_on_one_device():
    assert Config.from_dict(base(jit_compile=True)).jit_compile is True
    assert Config.from_dict(base(model_name="RRL", jit_compile=True)).jit_compile
    assert error(jit_compile="yes").startswith("jit_compile: expected true or false")
    assert "not 'SAT'" in error(model_name="SAT", jit_compile=True)
    assert error(jit_compile=True, strategy="mirrored").startswith(
        "jit_compile: XLA steps run on one device")


def test_kl_reduction_and_epoch_selection_keys():
    from losses.vae import KL_REDUCTIONS
    from config import KL_REDUCTIONS as CONFIG_KL_REDUCTIONS
    assert CONFIG_KL_REDUCTIONS == KL_REDUCTIONS
    cfg = Config.from_dict(base())
    assert (cfg.kl_reduction, cfg.select, cfg.val_retrieval_every, cfg.val_retrieval_queries,
            cfg.val_retrieval_archive) == ("latent", "last", 1, 1000, 10000)
    assert Config.from_dict(base(kl_reduction="published")).kl_reduction == "published"
    assert error(kl_reduction="rows").startswith(
        "kl_reduction: 'rows' is not one of latent, published")
    assert error(val_retrieval_every=-1).startswith("val_retrieval_every: must be >= 0")
    assert error(val_retrieval_queries=1.5).startswith("val_retrieval_queries: expected an int")
    assert error(select="best").startswith("select: 'best' is not one of last, best_val")
    assert error(select="best_val").startswith("select: 'best_val' needs validation records")
    assert "val_retrieval_every 0 turns off" in error(select="best_val", val_retrieval_every=0,
                                                      val_tfrecord_paths="v.tfrecord")
    ok = Config.from_dict(base(select="best_val", val_tfrecord_paths="v.tfrecord"))
    assert ok.select == "best_val"
    # the dump's per-epoch history and chosen epoch load back as output keys
    dump = {**ok.dump_dict(), "history": [{"epoch": 1}], "selected_epoch": 1}
    assert Config.from_dict(dump) == ok
