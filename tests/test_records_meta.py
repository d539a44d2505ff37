"""records_meta.json: prep writes it beside the records; training refuses a config that
disagrees with it (naming both files) and accepts records without it."""
import json
import shutil

import pytest

from archives import registry
from archives.records_meta import META_NAME, RecordsMetaError, check_against, read_meta
from config import Config
from run_guard import RunError, check_inputs


def test_prep_writes_the_metadata_beside_the_records(dlrsd_prepped):
    meta = json.loads((dlrsd_prepped / META_NAME).read_text())
    report = json.loads((dlrsd_prepped / "prep_report.json").read_text())
    assert meta["archive"] == "DLRSD" and meta["classes"] == list(registry.DLRSD.class_names)
    assert meta["nb_class"] == 17 and meta["bands"] == ["R", "G", "B"]
    assert meta["band_set"] == "default" and meta["schema"] == "compact"
    assert meta["noise_levels"] == [50] and meta["seed"] == report["seed"] == 42
    assert meta["records"] == report["records"] and meta["records"]["train"] > 0
    assert meta["statistics"]["mean"] == pytest.approx([76.54768, 76.80208, 73.49884])
    assert meta["has_pixel_maps"] is True and meta["image_shape"] == [256, 256, 3]
    assert not list(dlrsd_prepped.glob(f"{META_NAME}*.tmp*"))  # no temporary left


def _setup(records, tmp_path, meta=None):
    folder = tmp_path / "TFRecord"
    shutil.copytree(records, folder)
    if meta is not None:
        (folder / META_NAME).write_text(meta if isinstance(meta, str) else json.dumps(meta))
    cfg_path = tmp_path / "run.json"
    cfg_path.write_text(json.dumps({
        "model_name": "BCE", "dataset": "DLRSD", "noise_prcnt": 50, "backbone": "small_cnn",
        "train_tfrecord_paths": [str(folder / "train.tfrecord")],
        "val_tfrecord_paths": [str(folder / "val.tfrecord")],
        "test_tfrecord_paths": [str(folder / "test.tfrecord")]}))
    return Config.from_json(cfg_path), folder / META_NAME, cfg_path


def test_records_of_another_archive_are_refused_naming_both_files(records, tmp_path):
    ben = {"archive": "BEN", "classes": list(registry.BEN.class_names)}
    cfg, meta, cfg_path = _setup(records, tmp_path, ben)
    with pytest.raises(RunError) as err:
        check_inputs(cfg)
    text = str(err.value)
    assert text.startswith(f"{meta}: ") and str(cfg_path) in text
    assert "prepared for archive BEN" in text and "says dataset DLRSD" in text


def test_other_classes_are_refused_naming_both_files(records, tmp_path):
    classes = list(registry.DLRSD.class_names)
    classes[3] = "vehicles"
    cfg, meta, cfg_path = _setup(records, tmp_path, {"archive": "DLRSD", "classes": classes})
    with pytest.raises(RunError) as err:
        check_inputs(cfg)
    text = str(err.value)
    assert text.startswith(f"{meta}: ") and str(cfg_path) in text
    assert "3: 'vehicles' vs 'cars'" in text


def test_matching_or_missing_metadata_is_accepted(records, tmp_path):
    cfg, meta, _ = _setup(records, tmp_path)  # records of an earlier prep: no metadata
    check_inputs(cfg)
    meta.write_text(json.dumps({"archive": "DLRSD", "classes": list(registry.DLRSD.class_names)}))
    check_inputs(cfg)


def test_unreadable_metadata_is_named(records, tmp_path):
    cfg, meta, _ = _setup(records, tmp_path, "{not json")
    with pytest.raises(RunError, match=f"{meta}: unreadable records metadata"):
        check_inputs(cfg)
    meta.write_text("[1, 2]")
    with pytest.raises(RecordsMetaError, match="must be an object with 'archive' and 'classes'"):
        read_meta(meta.parent)


def test_check_against_without_a_config_file(tmp_path):
    (tmp_path / META_NAME).write_text(json.dumps({"archive": "BEN", "classes": []}))
    with pytest.raises(RecordsMetaError, match="but the config says dataset DLRSD"):
        check_against([str(tmp_path / "train.tfrecord")], "DLRSD", [], "the config")
    assert read_meta(tmp_path / "absent") is None
