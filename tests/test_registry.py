"""The archive registry: one description per archive, read by config, pipeline, evaluation,
plots, retrieval and models; a fourth archive is one registry entry (plus its module)."""
import json
import subprocess
import sys
import types

import numpy as np
import pytest

from archives import registry
from config import Config, ConfigError

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]

TOY = registry.ArchiveInfo(
    name="TOY", module="toy_archive_for_tests", class_names=("a", "b", "c", "d"),
    image_shape=(6, 6, 2), model_input_shape=(4, 4, 2), train_crop=4,
    channel_names=("x", "y"), model_mean=(1.0, 2.0), model_std=(2.0, 4.0),
    noise_levels=(25, 50), has_pixel_maps=False, shuffle_buffer=3, default_topk=7,
    headline_metric="NDCG@7", rgb_channels=(1, 1, 0), rgb_max=10.0,
    band_sets=(registry.BandSet("x", ("x",), (3.0,), (0.5,), (("bands", "x"),)),))


@pytest.fixture
def toy(monkeypatch):
    """TOY registered, with a module whose parse_records yields 5 tiny examples."""
    import tensorflow as tf

    def parse_records(paths, compact_dtypes=False, bands="xy"):
        img = np.arange(5 * 6 * 6 * 2, dtype=np.uint8).reshape(5, 6, 6, 2)
        img = img[..., :1] if bands == "x" else img
        lab = np.eye(5, 4, dtype=np.float32)
        return tf.data.Dataset.from_tensor_slices(
            {"image": img, "label": lab, "noisy_label": lab,
             "patch_name": [f"t{i}".encode() for i in range(5)]})

    module = types.ModuleType(TOY.module)
    module.parse_records = parse_records
    monkeypatch.setitem(sys.modules, TOY.module, module)
    monkeypatch.setitem(registry.ARCHIVES, "TOY", TOY)
    return module


def _toy_cfg(**kw):
    return Config.from_dict({"model_name": "GRID-BCE", "dataset": "TOY",
                             "train_tfrecord_paths": ["t/train.tfrecord"], **kw})


def test_published_facts_of_the_two_archives():
    dl, ben = registry.get("DLRSD"), registry.get("BEN")
    assert (dl.nb_class, dl.model_input_shape, dl.train_crop, dl.shuffle_buffer) == \
        (17, (224, 224, 3), 224, 1680)
    assert (ben.nb_class, ben.model_input_shape, ben.train_crop, ben.shuffle_buffer) == \
        (19, (120, 120, 10), None, 10000)
    assert dl.noise_levels == tuple(range(10, 100, 10)) and ben.noise_levels == (10, 20, 30, 40,
                                                                                  50, 60)
    assert (dl.default_topk, dl.headline_metric, ben.default_topk, ben.headline_metric) == \
        (420, "NDCG@20", 1000, "NDCG@30")
    assert dl.has_pixel_maps and not ben.has_pixel_maps
    assert len(dl.scene_classes) == 21 and ben.scene_classes == ()
    assert ben.class_names[0] == "Urban fabric" and ben.channel_names[:3] == ("B04", "B03", "B02")
    assert dl.out_size == 17 * 18 // 2


def test_archive_modules_take_their_facts_from_the_registry():
    from archives import ben, dlrsd, get_archive

    assert dlrsd.CLASS_NAMES == list(registry.DLRSD.class_names) and dlrsd.NB_CLASS == 17
    assert ben.CLASS_NAMES == list(registry.BEN.class_names)
    assert ben.HIGH_RES_BANDS + ben.LOW_RES_BANDS == ben.MODEL_BANDS == registry.BEN.channel_names
    np.testing.assert_allclose(ben.MODEL_MEAN[:2], [590.23569706, 614.21682446], rtol=1e-6)
    assert get_archive("BEN") is ben and get_archive("DLRSD") is dlrsd
    with pytest.raises(ValueError, match="unknown dataset 'UCM'; expected one of DLRSD, BEN"):
        registry.get("UCM")


def test_registry_and_config_import_no_tensorflow():
    code = ("import sys, config, archives.registry, evaluation.evaluate; "
            "print('tensorflow' in sys.modules, 'rasterio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]


def test_a_fourth_archive_is_one_registry_entry_for_config(toy):
    cfg = _toy_cfg()
    assert (cfg.nb_class, cfg.out_size, cfg.input_shape) == (4, 10, (4, 4, 2))
    assert cfg.archive is TOY
    with pytest.raises(ConfigError) as err:
        _toy_cfg(model_name="GRID-PCE", noise_prcnt=30, triplet_labels="scene")
    text = str(err.value)
    assert "needs pixel maps, which TOY does not have" in text
    assert "noise_prcnt: 30 is not offered for TOY (0 or one of 25, 50)" in text
    assert "triplet_labels: 'scene'" in text and "dataset TOY has none" in text
    assert _toy_cfg(noise_prcnt=50).noisy_train_paths == ("t/train_noise_prcnt50.tfrecord",)
    from archives import get_archive
    assert get_archive("TOY") is toy


def test_a_fourth_archive_is_read_by_evaluation_plots_and_retrieval(toy, tmp_path):
    import retrieval
    from evaluation.evaluate import evaluate
    from evaluation.features import read_features, write_features
    from evaluation.plots import to_rgb

    rng = np.random.default_rng(0)
    for name, n in (("q", 4), ("a", 20)):
        labels = (rng.random((n, 4)) < 0.5).astype(np.float32)
        labels[np.arange(n), np.arange(n) % 4] = 1.0  # no empty label set
        write_features(tmp_path / f"{name}.h5", rng.random((n, 3), dtype=np.float32), labels,
                       [str(i) for i in range(n)])
    q, a = read_features(str(tmp_path / "q.h5")), read_features(str(tmp_path / "a.h5"))
    res = evaluate(q, a, dataset="TOY")
    assert res["max_topk"] == 7 and set(res["headline"]) == {"NDCG@7"}
    assert evaluate(q, a, dataset=None)["max_topk"] == 20  # unknown: 1000, clipped
    img = np.arange(8, dtype=np.float32).reshape(2, 2, 2)  # channels (x, y)
    np.testing.assert_allclose(to_rgb(img, "TOY"), np.stack([img[..., 1], img[..., 1],
                                                             img[..., 0]], -1) / 10.0)
    args = retrieval.parse_args(["--query-features", "q", "--archive-features", "a",
                                 "--dataset", "TOY"])
    assert args.dataset == "TOY"


def test_a_fourth_archive_is_read_by_the_pipeline(toy):
    from archives.pipeline import make_dataset

    batch = next(iter(make_dataset(["unused"], "TOY", training=False, batch_size=5)))
    assert batch["image"].shape == (5, 4, 4, 2) and "seg_map" not in batch  # no pixel maps
    raw = np.arange(5 * 6 * 6 * 2, dtype=np.uint8).reshape(5, 6, 6, 2)[:, 1:5, 1:5]
    expect = (raw.astype(np.float32) - [1.0, 2.0]) / [2.0, 4.0]  # centre crop, normalised
    np.testing.assert_allclose(batch["image"].numpy(), expect, rtol=1e-6)
    train = next(iter(make_dataset(["unused"], "TOY", training=True, batch_size=5)))
    assert train["image"].shape == (5, 4, 4, 2)  # random 4x4 crop


def test_model_config_from_a_run_config(toy):
    from models.config import ModelConfig

    mc = ModelConfig.from_config(_toy_cfg(embed_dim=6, seed=9, backbone="small_cnn"))
    assert (mc.model_name, mc.nb_class, mc.input_shape, mc.out_size) == ("GRID-BCE", 4,
                                                                         (4, 4, 2), 10)
    assert (mc.embed_dim, mc.seed, mc.backbone, mc.weights, mc.is_grid, mc.task) == \
        (6, 9, "small_cnn", None, True, "BCE")
    assert ModelConfig.from_config(mc) is mc
    with pytest.raises(ValueError, match="model config: 'nb_class' is missing from "
                                         "SimpleNamespace"):
        ModelConfig.from_config(types.SimpleNamespace(model_name="BCE", input_shape=(4, 4, 3)))


def test_build_model_takes_a_run_config_or_a_model_config():
    import models
    from models.config import ModelConfig

    cfg = Config.from_dict({"model_name": "GRID-RRL", "dataset": "DLRSD", "embed_dim": 4,
                            "train_tfrecord_paths": ["x.tfrecord"], "backbone": "small_cnn"})
    mc = ModelConfig(model_name="GRID-RRL", nb_class=17, input_shape=(224, 224, 3),
                     backbone="small_cnn", embed_dim=4)
    a, b = models.build_model(cfg), models.build_model(mc)
    assert a.cfg == mc and isinstance(a.cfg, ModelConfig)
    shapes = [[tuple(v.shape) for v in m.trainable_variables] for m in (a, b)]
    assert shapes[0] == shapes[1]
    assert a.gen_head.output.shape[-1] == 17 * 18 // 2  # RRL output size from nb_class


def test_retrieval_refuses_a_dump_that_config_rejects(tmp_path, capsys):
    import retrieval

    path = tmp_path / "run.json"
    path.write_text(json.dumps({"run_name": "r", "model_name": "BCE", "dataset": "UCM",
                                "feature_model_path": "m.keras", "train_tfrecord_paths": ["t"],
                                "test_tfrecord_paths": ["t"],
                                "dumps": {"features": str(tmp_path)}}))
    assert retrieval.main([str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: dataset: 'UCM' is not one of DLRSD, BEN" in err


def test_a_band_set_is_a_description_the_pipeline_and_config_tools_accept(toy):
    from archives.pipeline import make_dataset

    x = TOY.with_bands("x")
    assert (x.band_set, x.channel_names, x.image_shape, x.model_input_shape) == \
        ("x", ("x",), (6, 6, 1), (4, 4, 1))
    assert x.class_names == TOY.class_names and TOY.with_bands("default") is TOY
    assert registry.get(x) is x
    with pytest.raises(ValueError, match="bands: 's1' is not a band set of TOY "
                                         r"\(offered: default, x\)"):
        TOY.with_bands("s1")
    batch = next(iter(make_dataset(["unused"], x, training=False, batch_size=5)))
    raw = np.arange(5 * 6 * 6 * 2, dtype=np.uint8).reshape(5, 6, 6, 2)[:, 1:5, 1:5, :1]
    np.testing.assert_allclose(batch["image"].numpy(), (raw - 3.0) / 0.5)  # parse_records(bands)


def test_demo_commands_come_from_the_descriptions(tmp_path, monkeypatch):
    import demo

    ran = []
    monkeypatch.setattr(demo, "ROOT", tmp_path)  # nothing exists there: every stage runs
    monkeypatch.setattr(demo, "run", ran.append)
    demo.prepare("DLRSD")
    demo.prepare("BEN")
    raw, out = "dumps/demo/raw/{}", "dumps/demo/data/{}"
    assert ran == [
        ["-m", "archives.sample", "--dataset", "DLRSD", "--out", raw.format("DLRSD-hard"),
         "--seed", "0", "--variant", "hard", "--per-class", "20"],
        ["prep_DLRSD_noisy.py", "-r_dlrsd", raw.format("DLRSD-hard") + "/DLRSD", "-r_ucm",
         raw.format("DLRSD-hard") + "/UCMerced_LandUse", "-o", out.format("DLRSD-hard"),
         "--noise-levels", "50"],
        ["-m", "archives.sample", "--dataset", "BEN", "--out", raw.format("BEN"), "--seed", "0",
         "--patches", "200"],
        ["prep_BEN_noisy.py", "-r", raw.format("BEN"), "-o", out.format("BEN"), "-train",
         raw.format("BEN") + "/train.csv", "-val", raw.format("BEN") + "/val.csv", "-test",
         raw.format("BEN") + "/test.csv", "--noise-levels", "50"]]
    ran.clear()
    demo.prepare("BENv2")  # a v2 root carries its splits (metadata.parquet): no CSVs
    assert ran == [
        ["-m", "archives.sample", "--dataset", "BENv2", "--out", raw.format("BENv2"), "--seed",
         "0", "--patches", "200"],
        ["prep_BEN_noisy.py", "-r", raw.format("BENv2"), "-o", out.format("BENv2"),
         "--noise-levels", "50"]]
    assert demo.CONFIGS == {
        "DLRSD": ["configs/demo_hard_grid_bce.json", "configs/demo_hard_bce.json"],
        "BEN": ["configs/demo_ben_grid_bce.json", "configs/demo_ben_bce.json"],
        "BENv2": ["configs/demo_benv2_grid_pce.json", "configs/demo_benv2_pce.json"]}
