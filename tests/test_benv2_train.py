"""BigEarthNet v2.0 in training and retrieval: band sets through the pipeline (shapes, v2
statistics), the noise rule per model, GRID-PCE / GRID-RRL / GRID-BCE end to end on v2 records,
config errors. One v2 sample + prep per module, small sizes."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

import prep_BEN_noisy
import retrieval
import training
from archives import benv2, sample_benv2
from archives.pipeline import make_dataset
from config import Config, ConfigError
from conftest import run_config

N_PATCHES = 150  # 30 test patches: NDCG@30, BigEarthNet's headline, needs K >= 30
NOISE = 50
# the release's train-split statistics, written out again rather than imported:
# (mean, std) of a few channels
SPEC_STATS = {"B04": (588.41, 684.57), "B12": (997.72, 814.09), "VV": (-12.64, 5.13),
              "VH": (-19.35, 5.59)}
CHANNELS = {"s2": ("B04", "B03", "B02", "B08", "B05", "B06", "B07", "B8A", "B11", "B12"),
            "s1": ("VV", "VH")}
CHANNELS["s1s2"] = CHANNELS["s2"] + CHANNELS["s1"]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """The TFRecord folder of one prep of a v2 sample archive."""
    raw = sample_benv2.write_sample_archive(tmp_path_factory.mktemp("benv2t") / "raw", seed=3,
                                            n_patches=N_PATCHES, n_excluded=2)
    out = tmp_path_factory.mktemp("benv2t_out")
    with contextlib.redirect_stdout(io.StringIO()):
        rc = prep_BEN_noisy.main(["-r", str(raw), "-o", str(out), "--workers", "1",
                                  "--noise-levels", str(NOISE), "--quiet", "--layout", "files"])
    assert rc == 0
    return out / "TFRecord"


def make_cfg(records: Path, out: Path, **kw) -> Config:
    return run_config(records, out, **{"dataset": "BENv2", "batch_size": 16,
                                       "noise_prcnt": NOISE, **kw})


def _first(ds, key):
    return np.concatenate([b[key].numpy() for b in ds])


def test_prep_writes_records_meta(records):
    meta = json.loads((records / "records_meta.json").read_text())
    assert meta["archive"] == "BENv2" and meta["nb_class"] == 19
    assert meta["band_set"] == "s1s2" and meta["bands"] == list(CHANNELS["s1s2"])
    assert meta["has_pixel_maps"] is True
    assert meta["statistics"]["mean"][-2:] == [-12.64, -19.35]
    assert meta["records"]["train"] == meta["records"][str(NOISE)] > 0


@pytest.mark.parametrize("bands", ["s2", "s1", "s1s2"])
def test_band_set_through_the_pipeline(bands, records, tmp_path):
    cfg = make_cfg(records, tmp_path, bands=bands)
    c = len(CHANNELS[bands])
    assert cfg.input_shape == (120, 120, c) and cfg.archive.channel_names == CHANNELS[bands]
    path = str(records / "test.tfrecord")
    batch = next(iter(make_dataset([path], cfg.archive, training=False, batch_size=5)))
    assert batch["image"].shape == (5, 120, 120, c)
    assert batch["seg_map"].shape == (5, 120, 120)
    raw = np.stack([ex["image"].numpy() for ex in
                    benv2.parse_records([path], bands=bands).take(5)]).astype(np.float64)
    got = batch["image"].numpy().astype(np.float64)
    for name, (mean, std) in SPEC_STATS.items():
        if name in CHANNELS[bands]:
            k = CHANNELS[bands].index(name)
            # s2 alone passes through uint16 (bicubic values rounded): half a unit at most
            tol = 0.5 / std + 1e-5 if bands == "s2" else 1e-4
            np.testing.assert_allclose(got[..., k], (raw[..., k] - mean) / std, atol=tol)
    if "s1" in bands:  # dB, so normalised values near 0, not reflectance-sized
        assert abs(got[..., -1].mean()) < 3


@pytest.mark.parametrize("model_name,rule_key", [("GRID-BCE", "noisy_label"),
                                                 ("BCE", "noisy_label"),
                                                 ("GRID-PCE", "map_noisy_label"),
                                                 ("RRL", "map_noisy_label")])
def test_noise_rule_follows_the_model(model_name, rule_key, records, tmp_path):
    cfg = make_cfg(records, tmp_path, model_name=model_name)
    path = cfg.noisy_train_paths[0]
    assert path.endswith(f"train_noise_prcnt{NOISE}.tfrecord")
    ds = make_dataset([path], cfg.archive, training=False, batch_size=64)
    got = _first(ds, "noisy_label")
    pairs = np.stack([ex["noisy_label"].numpy() for ex in
                      benv2.parse_records([path], noise_rule="pairs")])
    maps = np.stack([ex["noisy_label"].numpy() for ex in
                     benv2.parse_records([path], noise_rule="map")])
    assert (pairs != maps).any()  # the two rules differ on this file, so the check can fail
    np.testing.assert_array_equal(got, pairs if rule_key == "noisy_label" else maps)


def _train_and_retrieve(cfg: Config):
    result = training.train(cfg, show_progress=False)
    assert result.completed and result.epochs_done == cfg.nb_epoch
    dumped = json.loads(cfg.config_dump_path.read_text())
    assert dumped["nb_class"] == 19 and dumped["run_name"] == cfg.run_name
    assert retrieval.main([str(cfg.config_dump_path), "--quiet", "--batch-size", "16"]) == 0
    res = json.loads((cfg.features_dir / "retrieval.json").read_text())
    assert list(res["headline"]) == ["NDCG@30"] and 0 <= res["headline"]["NDCG@30"] <= 1
    assert res["max_topk"] == 30  # K = 1000 clipped to the 30 test patches
    import h5py
    with h5py.File(cfg.features_dir / "query.h5", "r") as f:
        assert f["label"].shape[1] == 19
    return result


@pytest.mark.slow
@pytest.mark.parametrize("model_name,epochs", [("GRID-PCE", 2), ("GRID-RRL", 2), ("PCE", 1),
                                               ("RRL", 1)])
def test_pixel_map_variants_end_to_end(model_name, epochs, records, tmp_path):
    cfg = make_cfg(records, tmp_path, model_name=model_name, nb_epoch=epochs)
    assert cfg.archive.has_pixel_maps and dict(cfg.archive.parse_kwargs)["noise_rule"] == "map"
    result = _train_and_retrieve(cfg)
    assert result.model.feature_model.input_shape == (None, 120, 120, 10)
    heads = result.model.keras_models
    assert ("generative_head" in heads) == model_name.startswith("GRID-")
    if model_name.endswith("PCE"):  # heads sized from the real feature map up to 120 x 120
        assert heads["discriminative_head"].output_shape == (None, 120, 120, 19)
        if "generative_head" in heads:
            assert heads["generative_head"].output_shape == (None, 120, 120, 19)
    else:  # RRL: the upper triangle of the 19 x 19 region-relation matrix
        assert heads["discriminative_head"].output_shape[-1] == 19 * 20 // 2


@pytest.mark.slow
@pytest.mark.parametrize("bands,channels", [("s1", 2), ("s1s2", 12)])
def test_grid_bce_on_other_band_sets(bands, channels, records, tmp_path):
    cfg = make_cfg(records, tmp_path, bands=bands)
    assert cfg.run_name.endswith(f"-bands_{bands}")
    result = _train_and_retrieve(cfg)
    assert result.model.feature_model.input_shape == (None, 120, 120, channels)


def test_config_bands_rules(records, tmp_path):
    cfg = make_cfg(records, tmp_path)
    assert cfg.bands is None and cfg.archive.band_set == "s2"
    # the default band set, given or not, leaves the run name as it was
    named = make_cfg(records, tmp_path, bands="s2")
    assert named.run_name == cfg.run_name == (
        "BENv2-GRID-BCE-embed8-noise_prcnt50-bs16-epoch1-noisy_sel_prcnt25")
    assert Config.from_json(_dump(named, tmp_path)).bands == "s2"
    v1 = make_cfg(records, tmp_path, dataset="BEN")
    assert v1.run_name == "BEN-GRID-BCE-embed8-noise_prcnt50-bs16-epoch1-noisy_sel_prcnt25"
    assert v1.archive.parse_kwargs == () and v1.input_shape == (120, 120, 10)


def _dump(cfg, tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg.to_dict()))
    return path


@pytest.mark.parametrize("changes,message", [
    ({"bands": "rgb"}, "bands: 'rgb' is not a band set of BENv2 (offered: s2, s1, s1s2)"),
    ({"bands": 12}, "bands: expected a string, got int 12"),
    ({"dataset": "BEN", "bands": "s1"}, "bands: 's1' is not a band set of BEN"),
    ({"dataset": "BEN", "model_name": "GRID-PCE"}, "model_name: 'GRID-PCE' needs pixel maps"),
])
def test_config_errors(changes, message, records, tmp_path):
    with pytest.raises(ConfigError) as err:
        make_cfg(records, tmp_path, **changes)
    assert any(p.startswith(message) for p in err.value.problems), err.value.problems


@pytest.mark.parametrize("name,model,bands,sel", [
    ("benv2_grid_bce_s2", "GRID-BCE", "s2", 20), ("benv2_grid_bce_s1", "GRID-BCE", "s1", 20),
    ("benv2_grid_bce_s1s2", "GRID-BCE", "s1s2", 20), ("benv2_bce_s2", "BCE", "s2", 20),
    ("benv2_grid_pce", "GRID-PCE", "s2", 10), ("benv2_pce", "PCE", "s2", 10),
    ("benv2_grid_rrl", "GRID-RRL", "s2", 10), ("benv2_rrl", "RRL", "s2", 10)])
def test_shipped_configs(name, model, bands, sel):
    cfg = Config.from_json(Path(__file__).resolve().parents[1] / "configs" / f"{name}.json")
    assert (cfg.dataset, cfg.model_name, cfg.bands, cfg.noisy_sel_prcnt) == \
        ("BENv2", model, bands, sel)
    assert (cfg.backbone, cfg.batch_size, cfg.nb_epoch, cfg.noise_prcnt) == \
        ("densenet121", 128, 100, 50)
    assert cfg.train_tfrecord_paths == ("dumps/data/BENv2/TFRecord/train.tfrecord",)


def test_pce_head_sized_from_densenet_feature_map():
    """The published backbone on v2's 120 px input: 3x3 features -> strides 5, 4, 2 -> 120."""
    from models import pce
    from models.backbones import build_backbone
    from models.config import ModelConfig

    cfg = Config.from_json(Path(__file__).resolve().parents[1] / "configs" / "benv2_grid_pce.json")
    mc = ModelConfig.from_config(cfg)
    backbone = build_backbone("densenet121", mc.input_shape)
    feat = tuple(backbone.output_shape[1:])
    assert feat[:2] == (3, 3)
    assert pce.upsampling_plan(feat[:2], (120, 120)) == ((5, 4, 2), False)
    assert pce.build_head(feat, mc, "head").output_shape == (None, 120, 120, 19)


def test_v1_and_v2_records_are_not_mixed_up(records, tmp_path):
    """A BEN config on v2 records, or a BENv2 config on v1 records, stops before training,
    naming the file and the archive it holds."""
    import run_guard
    from archives import sample_ben

    v1 = sample_ben.write_sample_archive(tmp_path / "v1raw", seed=1, n_patches=9)
    with contextlib.redirect_stdout(io.StringIO()):
        assert prep_BEN_noisy.main([
            "-r", str(v1), "-o", str(tmp_path / "v1"), "--noise-levels", str(NOISE), "--quiet",
            "--workers", "1", "-train", str(v1 / "train.csv"), "-val", str(v1 / "val.csv"),
            "-test", str(v1 / "test.csv"), "--layout", "files"]) == 0
    v1_records = tmp_path / "v1" / "TFRecord"
    for dataset, folder, holds in (("BEN", records, "BENv2"), ("BENv2", v1_records, "BEN")):
        cfg = make_cfg(folder, tmp_path, dataset=dataset)
        with pytest.raises(run_guard.RunError, match=f"train_noise_prcnt{NOISE}.tfrecord: holds "
                                                     f"{holds} records, but the config's "
                                                     f"dataset is {dataset}"):
            run_guard.check_inputs(cfg)
