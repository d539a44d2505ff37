"""BigEarthNet archive: nomenclature, noise, schema, real patches end to end, bad input."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import tensorflow as tf
from bigearthnet_common import base as bcb
from bigearthnet_common.example_data import get_s2_example_folder_path

import prep_BEN_noisy
from archives import ben, sample_ben
from archives.noise import pick_count

CSVS = ("train", "val", "test")


def _prep(root, out, csvs=True, **kw):
    kw.setdefault("noise_levels", [50])
    kw.setdefault("workers", 1)
    kw.setdefault("progress", False)
    kw.setdefault("layout", "files")  # the sharded layout: tests/test_shards.py
    paths = {s: str(Path(root) / f"{s}.csv") for s in CSVS} if csvs else None
    return ben.prepare(root, out, paths, **kw)


def _records(path):
    return list(ben.parse_records([path]).as_numpy_iterator())


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def sample_root(ben_sample):
    return ben_sample  # built once per session (conftest)


@pytest.fixture
def raw(sample_root, tmp_path):
    """A private copy of the sample archive that a test may damage."""
    return Path(shutil.copytree(sample_root, tmp_path / "raw"))


def _first(root, split="train"):
    return (Path(root) / f"{split}.csv").read_text().split()[0]


# ------------------------------------------------------------------ nomenclature

def test_43_to_19_known_cases():
    assert ben.CLASS_NAMES[0] == "Urban fabric" and ben.CLASS_NAMES[-1] == "Marine waters"
    assert ben.NB_CLASS == 19 and len(ben.OLD_CLASS_NAMES) == 43
    assert ben.labels_43_to_19(["Continuous urban fabric", "Discontinuous urban fabric"]) == \
        ["Urban fabric"]
    assert ben.labels_43_to_19(["Airports", "Burnt areas"]) == []
    assert ben.labels_43_to_19(["Sea and ocean", "Water bodies", "Coastal lagoons"]) == \
        ["Inland waters", "Marine waters"]
    assert ben.labels_43_to_19(["Moors and heathland", "Sclerophyllous vegetation", "Vineyards"]) \
        == ["Permanent crops", "Moors, heathland and sclerophyllous vegetation"]
    hot = ben.multi_hot(["Urban fabric", "Marine waters"])
    assert hot.dtype == np.float32 and hot.tolist() == [1.0] + [0.0] * 17 + [1.0]
    for old in ben.OLD_CLASS_NAMES:  # every name agrees with bigearthnet-common's helpers
        new = bcb.old2new_labels([old]) if ben.labels_43_to_19([old]) else []
        ref = bcb.ben_19_labels_to_multi_hot(new, lex_sorted=False)
        np.testing.assert_array_equal(ben.multi_hot(ben.labels_43_to_19([old])), ref)
    with pytest.raises(ben.InvalidPatch, match="x.json.*'Glacier'"):
        ben.labels_43_to_19(["Pastures", "Glacier"], "x.json")


def test_contract_constants():
    assert ben.NAME == "BEN" and ben.SHUFFLE_BUFFER == 10000 and ben.TRAIN_CROP is None
    assert ben.NOISE_LEVELS == (10, 20, 30, 40, 50, 60) and not ben.HAS_PIXEL_MAPS
    assert ben.IMAGE_SHAPE == ben.MODEL_INPUT_SHAPE == (120, 120, 10)
    assert ben.MODEL_MEAN.shape == ben.MODEL_STD.shape == (10,)
    assert ben.MODEL_BANDS == ("B04", "B03", "B02", "B08", "B05", "B06", "B07", "B8A", "B11",
                               "B12")
    assert ben.MODEL_MEAN[0] == np.float32(590.23569706)  # B04 first
    assert ben.MODEL_STD[-1] == np.float32(818.86747235)  # B12 last
    assert len(ben.BAND_NAMES) == 12 and sorted(set(ben.BAND_SIZES.values())) == [20, 60, 120]


# ------------------------------------------------------------------ noise

def _random_labels(n=400, seed=0):
    rng = np.random.default_rng(seed)
    out = np.zeros((n, ben.NB_CLASS), np.float32)
    for row in out:
        row[rng.choice(ben.NB_CLASS, size=rng.integers(1, 6), replace=False)] = 1
    return out


def test_noise_count_is_the_published_rounded_down_count():
    clean = _random_labels()
    pairs = int(clean.sum())
    for level in (10, 15, 30, 50, 60):
        noisy = ben.inject_noise(clean, level, np.random.default_rng(level))
        changed = int(((clean > 0) & (noisy == 0)).sum())
        assert changed == pick_count(pairs, level) == (pairs * level) // 100
    small = np.zeros((30, ben.NB_CLASS), np.float32)
    small[:, 0] = 1  # 30 pairs, 15 % = 4.5 -> int() gives 4 as published (half up gave 5)
    noisy = ben.inject_noise(small, 15, np.random.default_rng(0))
    assert int((noisy[:, 0] == 0).sum()) == 4


def test_noise_invariants_and_determinism():
    clean = _random_labels()
    noisy = ben.inject_noise(clean, 60, np.random.default_rng(7))
    again = ben.inject_noise(clean, 60, np.random.default_rng(7))
    np.testing.assert_array_equal(noisy, again)
    assert set(np.unique(noisy)) <= {0.0, 1.0}
    removed = (clean > 0) & (noisy == 0)
    added = (clean == 0) & (noisy > 0)
    # kept labels stay, each removed pair brings at most one new class (none when its draw lands
    # on a class the patch keeps or already gained: a collision), and no patch ends up empty
    assert np.all(noisy[(clean > 0) & ~removed] == 1)
    assert np.all(added.sum(1) <= removed.sum(1))
    assert np.all(noisy.sum(1) >= 1)
    np.testing.assert_array_equal(noisy.sum(1), clean.sum(1) - removed.sum(1) + added.sum(1))
    shrunk = noisy.sum(1) < clean.sum(1)
    assert shrunk.any() and shrunk.mean() < 0.5  # collisions happen, but rarely
    assert not np.any(noisy.sum(1) > clean.sum(1))


# ------------------------------------------------------------------ schema

def _fake_bands(rng, schema):
    out = {}
    for b in ben.BAND_NAMES:
        arr = rng.integers(0, 12000, size=(ben.BAND_SIZES[b],) * 2).astype(np.uint16)
        out[b] = arr.astype("<u2").tobytes() if schema == "compact" else arr.astype(np.float32)
    return out


@pytest.mark.parametrize("schema", ben.SCHEMAS)
def test_schema_round_trip(tmp_path, schema):
    clean, noisy = ben.multi_hot(["Pastures"]), ben.multi_hot(["Mixed forest"])
    bands = _fake_bands(np.random.default_rng(5), schema)
    path = tmp_path / f"{schema}.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as w:
        w.write(ben.encode_example("p1", bands, ["Pastures"], clean, noisy, schema))
    assert ben.schema_of(path) == schema
    (rec,) = _records(path)
    assert rec["image"].shape == (120, 120, 10) and rec["image"].dtype == np.float32
    np.testing.assert_array_equal(rec["label"], clean)
    np.testing.assert_array_equal(rec["noisy_label"], noisy)
    assert rec["patch_name"] == b"p1"
    raw = {b: np.frombuffer(bands[b], "<u2").reshape(ben.BAND_SIZES[b], -1)
           if schema == "compact" else bands[b] for b in ben.BAND_NAMES}
    for k, b in enumerate(ben.HIGH_RES_BANDS):
        np.testing.assert_array_equal(rec["image"][..., k], raw[b])
    low = np.stack([raw[b] for b in ben.LOW_RES_BANDS], -1).astype(np.float32)
    want = tf.image.resize(low[None], (120, 120), method="bicubic")[0].numpy()
    np.testing.assert_allclose(rec["image"][..., 4:], want, rtol=1e-5, atol=1e-2)
    # a bicubic 2x upsampling keeps each 60 px value near its 2x2 block
    assert np.abs(rec["image"][::2, ::2, 4:].mean() - low.mean()) < 50
    (small,) = ben.parse_records([path], compact_dtypes=True).as_numpy_iterator()
    assert small["image"].dtype == np.uint16
    np.testing.assert_array_equal(small["image"],
                                  np.clip(np.round(rec["image"]), 0, 65535).astype(np.uint16))


def _encoding_digests() -> list[str]:
    return [hashlib.sha256(ben.encode_example(
        "p1", _fake_bands(np.random.default_rng(2), schema), ["Pastures"],
        ben.multi_hot(["Pastures"]), ben.multi_hot(["Mixed forest"]), schema)).hexdigest()
        for schema in ben.SCHEMAS]


@pytest.mark.slow
def test_encoding_gives_the_same_bytes_in_another_process():
    """Map-entry order must not depend on the process (protobuf's map order otherwise does)."""
    import os
    import subprocess
    import sys

    script = "from tests.test_ben import _encoding_digests\nprint(*_encoding_digests())\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd=str(Path(__file__).resolve().parents[1]),
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.stdout.split()[-2:] == _encoding_digests()


def test_compact_is_at_least_1_9x_smaller(tmp_path):
    sizes = {}
    for schema in ben.SCHEMAS:
        path = tmp_path / f"{schema}.tfrecord"
        with tf.io.TFRecordWriter(str(path)) as w:
            for i in range(3):
                w.write(ben.encode_example(f"p{i}", _fake_bands(np.random.default_rng(i), schema),
                                           ["Pastures"], ben.multi_hot(["Pastures"]),
                                           ben.multi_hot(["Pastures"]), schema))
        sizes[schema] = path.stat().st_size / 3
    assert sizes["published"] / sizes["compact"] >= 1.9


def test_compact_rejects_values_outside_uint16():
    with pytest.raises(ben.InvalidPatch, match="a.tif.*non-integral"):
        ben.to_uint16(np.array([[1.5]], np.float32), "a.tif")
    with pytest.raises(ben.InvalidPatch, match="b.tif.*do not fit uint16"):
        ben.to_uint16(np.array([[-3, 70000]], np.int32), "b.tif")
    assert ben.to_uint16(np.array([[3.0, 65535.0]]), "c.tif").dtype == np.uint16


def test_parse_records_bad_files(tmp_path):
    with pytest.raises(ValueError, match="nope.tfrecord"):
        ben.parse_records([tmp_path / "nope.tfrecord"])
    other = tmp_path / "other.tfrecord"
    with tf.io.TFRecordWriter(str(other)) as w:
        ex = tf.train.Example(features=tf.train.Features(feature={
            "img": tf.train.Feature(float_list=tf.train.FloatList(value=[1.0]))}))
        w.write(ex.SerializeToString())
    with pytest.raises(ValueError, match=r"other.tfrecord.*\['img'\]"):
        ben.parse_records([other])


# ------------------------------------------------------------------ real patches end to end

def test_official_splits_on_the_six_real_patches(tmp_path):
    root = get_s2_example_folder_path()
    splits, absent = ben.official_splits(root)
    assert len(splits["train"]) == 4 and splits["val"] == [] and \
        splits["test"] == ["S2A_MSIL2A_20170613T101031_87_48"]
    assert "S2B_MSIL2A_20180204T94161_57_38" not in sum(splits.values(), [])  # snow
    assert absent["train"] > 200000 and absent["train"] + 4 == len(
        bcb.get_s2_patches_from_original_train_split())
    with pytest.raises(ValueError, match="val split is empty"):
        ben.prepare(root, tmp_path / "out", None,
                    workers=1, progress=False)


def test_six_real_patches_end_to_end(tmp_path):
    root = get_s2_example_folder_path()
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert len(names) == 6
    csv = tmp_path / "csv"
    csv.mkdir()
    parts = {"train": names[:4], "val": names[4:5], "test": names[5:]}
    for s, ns in parts.items():
        (csv / f"{s}.csv").write_text("\n".join(ns) + "\n")
    reps = {}
    for schema in ben.SCHEMAS:
        reps[schema] = ben.prepare(root, tmp_path / schema, {s: csv / f"{s}.csv" for s in CSVS},
                                   noise_levels=[50], schema=schema, workers=1, progress=False,
                                   layout="files")
    assert reps["compact"].records == {"train": 4, "val": 1, "test": 1, "50": 4}
    out = {s: tmp_path / s / "TFRecord" for s in ben.SCHEMAS}
    assert json.loads((out["compact"] / ben.REPORT_NAME).read_text())["records"]["50"] == 4
    ratio = (out["published"] / "train.tfrecord").stat().st_size / \
        (out["compact"] / "train.tfrecord").stat().st_size
    assert ratio >= 1.9
    for split in ("train", "val", "test", "train_noise_prcnt50"):
        recs = _records(out["compact"] / f"{split}.tfrecord")
        pubs = _records(out["published"] / f"{split}.tfrecord")
        assert [r["patch_name"].decode() for r in recs] == parts.get(split, parts["train"])
        for rec, pub in zip(recs, pubs):
            name = rec["patch_name"].decode()
            meta = json.loads((root / name / f"{name}_labels_metadata.json").read_text())
            ref = bcb.ben_19_labels_to_multi_hot(bcb.old2new_labels(meta["labels"]),
                                                 lex_sorted=False)
            np.testing.assert_array_equal(rec["label"], ref)
            if split != "train_noise_prcnt50":
                np.testing.assert_array_equal(rec["noisy_label"], ref)
            for k in rec:
                np.testing.assert_array_equal(rec[k], pub[k])
            with rasterio.open(root / name / f"{name}_B08.tif") as src:
                np.testing.assert_array_equal(rec["image"][..., 3], src.read(1))
    noisy = _records(out["compact"] / "train_noise_prcnt50.tfrecord")
    clean = np.stack([r["label"] for r in noisy])
    assert int((clean > 0).sum() - ((clean > 0) & (np.stack([r["noisy_label"] for r in noisy]) > 0))
               .sum()) == pick_count(int(clean.sum()), 50)


# ------------------------------------------------------------------ sample archive

def test_sample_archive_layout_and_determinism(tmp_path, sample_root):
    again = sample_ben.write_sample_archive(tmp_path / "again", seed=3, n_patches=12)
    name = _first(sample_root)
    for f in (f"{name}/{name}_B09.tif", f"{name}/{name}_labels_metadata.json", "test.csv"):
        assert _digest(sample_root / f) == _digest(again / f)
    meta = json.loads(ben.metadata_path(sample_root, name).read_text())
    assert set(meta) == {"labels", "coordinates", "projection", "tile_source", "acquisition_date"}
    assert ben.labels_43_to_19(meta["labels"])
    for band in ben.BAND_NAMES:
        with rasterio.open(ben.band_path(sample_root, name, band)) as src:
            size = ben.BAND_SIZES[band]
            assert (src.width, src.height, src.dtypes[0]) == (size, size, "uint16")
            assert src.crs.to_epsg() == 32632 and src.transform.a == 1200 / size
    listed = sum(((sample_root / f"{s}.csv").read_text().split() for s in CSVS), [])
    assert len(listed) == len(set(listed)) == 12


def test_sample_content_follows_labels(sample_root):
    signature, _ = sample_ben.class_signatures()
    checked = 0
    for name in sum(((sample_root / f"{s}.csv").read_text().split() for s in CSVS), []):
        new = ben.labels_43_to_19(json.loads(ben.metadata_path(sample_root, name).read_text())
                                  ["labels"])
        if len(new) != 1:
            continue
        c = ben.CLASS_NAMES.index(new[0])
        for b, band in enumerate(ben.BAND_NAMES):
            mean = float(ben.read_band(sample_root, name, band).mean())
            assert abs(mean - signature[c, b]) < 0.15 * signature[c, b]
        checked += 1
    assert checked >= 1


def test_sample_archive_through_prep_cli(raw, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["-r", str(raw), "-o", str(out), "--noise-levels", "20", "60", "--workers", "1",
            "--layout", "files"]
    argv += sum(([f"-{s}", str(raw / f"{s}.csv")] for s in CSVS), [])
    assert prep_BEN_noisy.main(argv) == 0
    assert "noise 60%" in capsys.readouterr().out
    files = sorted(p.name for p in (out / "TFRecord").iterdir())
    assert files == ["prep_report.json", "records_meta.json", "test.tfrecord", "train.tfrecord",
                     "train_noise_prcnt20.tfrecord", "train_noise_prcnt60.tfrecord", "val.tfrecord"]
    report = json.loads((out / "TFRecord" / "prep_report.json").read_text())
    n_train = len((raw / "train.csv").read_text().split())
    assert report["records"]["train"] == report["records"]["60"] == n_train
    for split in ("train", "val", "test"):  # only the noisy files differ from the clean label
        assert all((r["label"] == r["noisy_label"]).all()
                   for r in _records(out / "TFRecord" / f"{split}.tfrecord"))
    noisy = _records(out / "TFRecord" / "train_noise_prcnt60.tfrecord")
    assert any((r["label"] != r["noisy_label"]).any() for r in noisy)
    e = report["noise"]["60"]
    assert e["pairs_changed"] == pick_count(e["pairs_total"], 60)


def test_workers_give_identical_files(raw, tmp_path):
    _prep(raw, tmp_path / "one", workers=1)
    _prep(raw, tmp_path / "two", workers=2)
    for f in ("train", "val", "test", "train_noise_prcnt50"):
        assert _digest(tmp_path / "one/TFRecord" / f"{f}.tfrecord") == \
            _digest(tmp_path / "two/TFRecord" / f"{f}.tfrecord")


# ------------------------------------------------------------------ bad input

def _garbage(root, name):
    ben.band_path(root, name, "B03").write_bytes(b"not a tiff")
    return ben.band_path(root, name, "B03"), "cannot be read"


def _wrong_size(root, name):
    path = ben.band_path(root, name, "B02")
    with rasterio.open(path, "w", driver="GTiff", width=100, height=100, count=1,
                       dtype="uint16") as dst:
        dst.write(np.zeros((100, 100), np.uint16), 1)
    return path, "is 100x100, expected 120x120"


def _missing_band(root, name):
    ben.band_path(root, name, "B8A").unlink()
    return ben.band_path(root, name, "B8A"), "B8A is missing"


def _missing_json(root, name):
    ben.metadata_path(root, name).unlink()
    return ben.metadata_path(root, name), "metadata JSON is missing"


def _bad_label(root, name):
    path = ben.metadata_path(root, name)
    meta = json.loads(path.read_text())
    meta["labels"].append("Glaciers")
    path.write_text(json.dumps(meta))
    return path, "'Glaciers' is not in the 43-class"


def _empty_labels(root, name):
    path = ben.metadata_path(root, name)
    meta = json.loads(path.read_text())
    meta["labels"] = []
    path.write_text(json.dumps(meta))
    return path, "lists no label"


def _missing_patch(root, name):
    shutil.rmtree(root / name)
    return root / "train.csv", f"patch {name} is not under"


@pytest.mark.parametrize("damage", [_garbage, _wrong_size, _missing_band, _missing_json,
                                    _bad_label, _empty_labels, _missing_patch])
def test_bad_input_stops_or_is_skipped(raw, tmp_path, damage):
    name = _first(raw)
    path, what = damage(raw, name)
    with pytest.raises(ValueError) as err:
        _prep(raw, tmp_path / "out")
    assert str(path) in str(err.value) and what in str(err.value)
    assert not list((tmp_path / "out" / "TFRecord").glob("*.tfrecord*"))
    with pytest.warns(UserWarning, match="skipped"):
        report = _prep(raw, tmp_path / "skip", skip_invalid=True)
    assert [s["item"] for s in report.skipped] == [str(raw / name)]
    assert what in report.skipped[0]["reason"]
    n_train = len((raw / "train.csv").read_text().split())
    assert report.records["train"] == report.records["50"] == n_train - 1
    names = [r["patch_name"].decode() for r in _records(tmp_path / "skip/TFRecord/train.tfrecord")]
    assert name not in names and len(names) == n_train - 1


def test_empty_split_and_unwritable_output(raw, tmp_path):
    (raw / "val.csv").write_text("\n")
    with pytest.raises(ValueError, match=r"val.csv: val split is empty"):
        _prep(raw, tmp_path / "out")
    (raw / "val.csv").write_text(_first(raw, "test") + "\n")
    with pytest.raises(ValueError, match=r"test.csv: patch .* also listed in .*val.csv"):
        _prep(raw, tmp_path / "out")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match=r"a_file/out/TFRecord: output folder cannot be written"):
        _prep(raw, blocker / "out")


@pytest.mark.parametrize("during", ["train", "val"])
def test_interrupted_write_leaves_earlier_files_intact(raw, tmp_path, monkeypatch, during):
    out = tmp_path / "out"
    _prep(raw, out)
    before = {p.name: _digest(p) for p in (out / "TFRecord").glob("*.tfrecord")}
    # the third train patch, or the first val patch once every train file is complete
    stop_at = 3 if during == "train" else len((raw / "train.csv").read_text().split()) + 1
    calls = {"n": 0}
    real = ben.encode_examples

    def interrupt(*a, **k):
        calls["n"] += 1
        if calls["n"] == stop_at:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ben, "encode_examples", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _prep(raw, out, noise_levels=[50, 60])
    assert calls["n"] == stop_at
    files = sorted(p.name for p in (out / "TFRecord").iterdir())
    assert not [f for f in files if ".tmp" in f]
    assert "train_noise_prcnt60.tfrecord" not in files
    assert {p.name: _digest(p) for p in (out / "TFRecord").glob("*.tfrecord")} == before


def test_published_file_without_noisy_key_reads_clean_as_noisy(tmp_path):
    raw = ben.encode_example("p", _fake_bands(np.random.default_rng(0), "published"),
                             ["Pastures"], ben.multi_hot(["Pastures"]),
                             ben.multi_hot(["Mixed forest"]), "published")
    ex = tf.train.Example.FromString(raw)
    del ex.features.feature[ben.NOISY_LABEL_KEY]
    path = tmp_path / "val.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as w:
        w.write(ex.SerializeToString())
    (rec,) = _records(path)
    np.testing.assert_array_equal(rec["noisy_label"], ben.multi_hot(["Pastures"]))
