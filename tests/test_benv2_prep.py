"""BigEarthNet v2.0 prep through prep_BEN_noisy.py: the v2 schema, band sets, both noise rules,
S1 storage forms, CSV splits, bad input (named or skipped)."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio

import prep_BEN_noisy
from archives import ben, benv2, benv2_noise, sample_benv2
from archives import benv2_layout as v2
from archives.ben import InvalidPatch
from archives.noise import pick_count

N_PATCHES, N_EXCLUDED = 16, 3
LEVELS = (20, 60)
SEED = 42


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory):
    return sample_benv2.write_sample_archive(tmp_path_factory.mktemp("benv2p") / "raw", seed=5,
                                             n_patches=N_PATCHES, n_excluded=N_EXCLUDED)


@pytest.fixture(scope="module")
def meta(sample_root):
    return v2.read_metadata(v2.Layout.at(sample_root))


@pytest.fixture(scope="module")
def prepped(sample_root, tmp_path_factory):
    """(TFRecord folder, printed summary) of one prep of the sample through main."""
    out = tmp_path_factory.mktemp("benv2p_out")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = prep_BEN_noisy.main(["-r", str(sample_root), "-o", str(out), "--workers", "1",
                                  "--noise-levels", *map(str, LEVELS), "--layout", "files"])
    assert rc == 0
    return out / "TFRecord", buf.getvalue()


@pytest.fixture
def raw(sample_root, tmp_path):
    """A private copy of the sample archive that a test may damage."""
    return Path(shutil.copytree(sample_root, tmp_path / "raw"))


def _records(path, **kw):
    return [{k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in ex.items()}
            for ex in benv2.parse_records([path], **kw)]


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _run(argv, capsys):
    argv = [str(a) for a in argv]
    if "--layout" not in argv:
        argv += ["--layout", "files"]  # the sharded layout: tests/test_shards.py
    rc = prep_BEN_noisy.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


# ------------------------------------------------------------------ prep through main

def test_prep_files_counts_and_summary(prepped, meta):
    tf_dir, printed = prepped
    assert sorted(p.name for p in tf_dir.iterdir()) == [
        "prep_report.json", "records_meta.json", "test.tfrecord", "train.tfrecord",
        "train_noise_prcnt20.tfrecord",
        "train_noise_prcnt60.tfrecord", "val.tfrecord"]
    report = json.loads((tf_dir / "prep_report.json").read_text())
    splits = meta.splits()
    assert report["dataset"] == "BENv2" and report["extra"]["layout"] == "v2"
    assert {s: report["records"][s] for s in ben.SPLITS} == {s: len(splits[s]) for s in ben.SPLITS}
    assert report["records"]["20"] == report["records"]["60"] == len(splits["train"])
    assert report["extra"]["snow_cloud_shadow_listed"] == N_EXCLUDED
    assert report["extra"]["s1_storage"] == "int16" and report["skipped"] == []
    assert report["extra"]["patches_with_s2v1_name"] == sum(x is not None for x in meta.s2v1_names)
    for level in LEVELS:
        e, m = report["noise"][str(level)], report["extra"]["map_noise"][str(level)]
        assert e["pairs_changed"] == pick_count(e["pairs_total"], level)
        assert m["pairs_picked"] == pick_count(m["pairs_total"], level) >= m["pairs_changed"]
        assert f"noise {level}%" in printed and f"map noise {level}%" in printed
    assert f"left out: {N_EXCLUDED} snow/cloud/shadow patches" in printed


@pytest.mark.parametrize("bands", benv2.BAND_SETS)
def test_records_hold_the_raw_patches_in_each_band_set(prepped, sample_root, meta, bands):
    lay = v2.Layout.at(sample_root)
    recs = _records(prepped[0] / "val.tfrecord", bands=bands)
    assert [r["patch_name"].decode() for r in recs] == meta.splits()["val"]  # parquet order
    s1_of = dict(zip(meta.patches, meta.s1_names))
    labels = dict(zip(meta.patches, meta.labels))
    for r in recs:
        name = r["patch_name"].decode()
        img = r["image"]
        assert img.shape == benv2.image_shape(bands) and img.dtype == np.float32
        assert len(benv2.model_stats(bands)[0]) == img.shape[-1]
        if "s2" in bands:  # the 10 m bands exactly, in MODEL_BANDS order
            s2 = v2.read_s2_bands(lay, name)
            for k, band in enumerate(ben.HIGH_RES_BANDS):
                np.testing.assert_array_equal(img[..., k], s2[band].astype(np.float32))
        if "s1" in bands:
            s1 = v2.read_s1(lay, s1_of[name])
            assert np.abs(img[..., -2:] - s1).max() <= 1 / 512 + 1e-6
        np.testing.assert_array_equal(r["seg_map"], v2.read_reference_map(lay, name))
        assert r["seg_map"].dtype == np.int32 and r["seg_map"].shape == (120, 120)
        np.testing.assert_array_equal(r["label"], labels[name])


def test_s1s2_is_s2_then_s1(prepped):
    path = prepped[0] / "test.tfrecord"
    both, s2, s1 = (_records(path, bands=b) for b in ("s1s2", "s2", "s1"))
    for a, b, c in zip(both, s2, s1):
        np.testing.assert_array_equal(a["image"], np.concatenate([b["image"], c["image"]], -1))


def test_compact_dtypes(prepped):
    path = prepped[0] / "test.tfrecord"
    (r2, *_), (r1, *_) = (_records(path, bands=b, compact_dtypes=True) for b in ("s2", "s1"))
    assert r2["image"].dtype == np.uint16 and r2["seg_map"].dtype == np.int8
    assert r1["image"].dtype == np.float32 and r1["noisy_seg_map"].dtype == np.int8


def test_clean_files_carry_the_clean_label_under_every_noisy_key(prepped):
    for split in ben.SPLITS:
        for rule in benv2.NOISE_RULES:
            for r in _records(prepped[0] / f"{split}.tfrecord", bands="s1", noise_rule=rule):
                np.testing.assert_array_equal(r["noisy_label"], r["label"])
                np.testing.assert_array_equal(r["noisy_seg_map"], r["seg_map"])


def test_pair_rule_is_the_bigearthnet_rule_over_the_train_split(prepped, meta):
    clean = meta.labels[meta.split == "train"]
    for level in LEVELS:
        recs = _records(prepped[0] / f"train_noise_prcnt{level}.tfrecord", bands="s1")
        expect = ben.inject_noise(clean, level, np.random.default_rng([SEED, level]))
        np.testing.assert_array_equal(np.stack([r["noisy_label"] for r in recs]), expect)
        np.testing.assert_array_equal(np.stack([r["label"] for r in recs]), clean)


def test_map_rule_on_the_reference_maps(prepped, meta):
    report = json.loads((prepped[0] / "prep_report.json").read_text())
    clean = meta.labels[meta.split == "train"]
    for level in LEVELS:
        recs = _records(prepped[0] / f"train_noise_prcnt{level}.tfrecord", bands="s1",
                        noise_rule="map")
        maps = [r["seg_map"] for r in recs]
        noisy_maps, labels, stats = benv2_noise.inject_map_noise(
            maps, clean, level, np.random.default_rng([SEED, level, 2]))
        changed_regions = 0
        for r, nmap, lab in zip(recs, noisy_maps, labels):
            np.testing.assert_array_equal(r["noisy_seg_map"], r["seg_map"] if nmap is None else nmap)
            np.testing.assert_array_equal(r["noisy_label"], lab)
            seg, noisy = r["seg_map"], r["noisy_seg_map"]
            assert (noisy[seg < 0] == -1).all()  # unlabelled pixels never change
            for c in np.unique(seg[seg >= 0]):  # a region is relabelled whole, or not at all
                new = np.unique(noisy[seg == c])
                assert len(new) == 1
                changed_regions += int(new[0] != c)
            if nmap is not None:
                np.testing.assert_array_equal(r["noisy_label"], benv2_noise.classes_present(noisy))
        m = report["extra"]["map_noise"][str(level)]
        assert m["pairs_changed"] == stats["pairs_changed"] == changed_regions > 0
        assert m["images_changed"] == stats["images_changed"]


def test_workers_give_identical_files(prepped, sample_root, tmp_path, capsys):
    rc, _, _ = _run(["-r", sample_root, "-o", tmp_path, "--workers", "2", "--noise-levels",
                     *LEVELS], capsys)
    assert rc == 0
    for f in ("train", "val", "test", "train_noise_prcnt60"):
        assert _digest(tmp_path / "TFRecord" / f"{f}.tfrecord") == \
            _digest(prepped[0] / f"{f}.tfrecord")


# ------------------------------------------------------------------ S1 storage

def test_s1_storage_forms_by_hand():
    rng = np.random.default_rng(0)
    s1 = rng.uniform(-50, 20, (120, 120, 2)).astype(np.float32)
    s1[0, 0] = [-127.99, 127.99]
    bounds = {"float32": 0.0, "float16": 2.0 ** -6, "int16": 1 / 512}
    for storage, bound in bounds.items():
        feats = benv2.encode_s1(s1, storage, "x")
        assert sorted(feats) == [f"VH_{storage}", f"VV_{storage}"]
        assert sum(map(len, feats.values())) == 120 * 120 * 2 * (4 if storage == "float32" else 2)
        err = np.abs(benv2.decode_s1(feats, storage) - s1)
        assert err.max() <= bound + 1e-6 and (storage == "float32" or err.max() > bound / 4)
    assert benv2.decode_s1(benv2.encode_s1(np.full((120, 120, 2), -12.5, np.float32), "int16"),
                           "int16")[0, 0, 0] == -12.5  # -3200 / 256
    for bad, what in ((-130.0, "outside the int16 storage range"), (np.nan, "non-finite")):
        s1[5, 5, 1] = bad
        with pytest.raises(InvalidPatch, match=f"S1_DIR: .*{what}"):
            benv2.encode_s1(s1, "int16", "S1_DIR")
        benv2.encode_s1(s1, "float32", "S1_DIR")  # float forms keep any value


def test_float32_s1_storage_through_main(sample_root, meta, tmp_path, capsys):
    rc, out, _ = _run(["-r", sample_root, "-o", tmp_path, "--workers", "1", "--noise-levels", 10,
                       "--s1-storage", "float32"], capsys)
    assert rc == 0 and "S1 stored as float32" in out
    path = tmp_path / "TFRecord" / "val.tfrecord"
    assert benv2.s1_storage_of(path) == "float32"
    lay, s1_of = v2.Layout.at(sample_root), dict(zip(meta.patches, meta.s1_names))
    for r in _records(path, bands="s1"):
        np.testing.assert_array_equal(r["image"], v2.read_s1(lay, s1_of[r["patch_name"].decode()]))


def test_s1_value_outside_int16_range_is_named_or_skipped(raw, meta, tmp_path, capsys):
    lay = v2.Layout.at(raw)
    name = meta.splits()["test"][0]
    path = lay.s1_path(meta.s1_names[meta.patches.index(name)], "VV")
    with rasterio.open(path, "r+") as dst:
        data = dst.read(1)
        data[3, 3] = -200.0
        dst.write(data, 1)
    rc, _, err = _run(["-r", raw, "-o", tmp_path / "a", "--workers", "1", "--noise-levels", 10],
                      capsys)
    assert rc == 2 and "outside the int16 storage range" in err and str(path.parent) in err
    rc, _, _ = _run(["-r", raw, "-o", tmp_path / "b", "--workers", "1", "--noise-levels", 10,
                     "--s1-storage", "float16"], capsys)
    assert rc == 0


# ------------------------------------------------------------------ splits from CSVs

def test_csv_splits_with_v1_and_v2_names_through_main(sample_root, meta, tmp_path, capsys):
    splits = meta.splits()
    v1_of = dict(zip(meta.patches, meta.s2v1_names))
    want = {"train": splits["train"][:5], "val": splits["val"][:2] + splits["train"][5:7],
            "test": splits["test"][:2]}
    via_v1 = 0
    for s, names in want.items():
        listed = []
        for p in names:
            use_v1 = v1_of[p] is not None and via_v1 < 3
            listed.append(v1_of[p] if use_v1 else p)
            via_v1 += use_v1
        (tmp_path / f"{s}.csv").write_text("\n".join(listed) + "\n")
    assert via_v1 == 3
    rc, out, _ = _run(["-r", sample_root, "-o", tmp_path / "o", "--workers", "1", "--noise-levels",
                       10, *sum(([f"-{s}", tmp_path / f"{s}.csv"] for s in ben.SPLITS), [])],
                      capsys)
    assert rc == 0 and "CSV names found through s2v1_name: 3" in out
    for s in ben.SPLITS:
        recs = _records(tmp_path / "o/TFRecord" / f"{s}.tfrecord", bands="s1")
        assert [r["patch_name"].decode() for r in recs] == want[s]


# ------------------------------------------------------------------ bad input, end to end

def _first_train(meta):
    return meta.splits()["train"][0]


def _no_folder(lay, meta, name):
    shutil.rmtree(lay.s2_dir(name))
    return lay.s2_dir(name), "S2 folder of patch", True


def _missing_band(lay, meta, name):
    path = ben.band_path(lay.s2_dir(name).parent, name, "B11")
    path.unlink()
    return path, "band file B11 is missing", True


def _missing_s1(lay, meta, name):
    path = lay.s1_path(meta.s1_names[meta.patches.index(name)], "VH")
    path.unlink()
    return path, "S1 VH file is missing", True


def _garbage_s1(lay, meta, name):
    path = lay.s1_path(meta.s1_names[meta.patches.index(name)], "VV")
    path.write_bytes(b"not a tiff")
    return path, "S1 VV file cannot be read", True


def _s1_nowhere(lay, meta, name):
    s1 = meta.s1_names[meta.patches.index(name)]
    shutil.rmtree(lay.s1_dir(s1))
    return lay.s1_dir(s1), f"S1 folder of {s1} (s1_name of patch {name}) is missing", True


def _missing_map(lay, meta, name):
    lay.map_path(name).unlink()
    return lay.map_path(name), "reference map of patch", True


def _write_map(path, data):
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0],
                       count=1, dtype=data.dtype.name, crs="EPSG:32633",
                       transform=rasterio.Affine(10, 0, 300000, 0, -10, 5500000)) as dst:
        dst.write(data, 1)


def _map_wrong_size(lay, meta, name):
    _write_map(lay.map_path(name), np.full((60, 60), 211, np.uint16))
    return lay.map_path(name), "reference map is 60x60, expected 120x120", True


def _map_wrong_dtype(lay, meta, name):
    _write_map(lay.map_path(name), np.full((120, 120), 211, np.int32))
    return lay.map_path(name), "has dtype int32, expected uint16", True


def _bad_label(lay, meta, name):
    table = pq.read_table(lay.metadata).to_pylist()
    for row in table:
        if row["patch_id"] == name:
            row["labels"] = row["labels"] + ["Glaciers"]
    pq.write_table(pa.Table.from_pylist(table), lay.metadata)
    return lay.metadata, "'Glaciers' is not in the 19-class", True


def _no_column(lay, meta, name):
    pq.write_table(pq.read_table(lay.metadata).drop_columns(["s1_name"]), lay.metadata)
    return lay.metadata, "column(s) s1_name missing", False


@pytest.mark.parametrize("damage", [_no_folder, _missing_band, _missing_s1, _garbage_s1,
                                    _s1_nowhere, _missing_map, _map_wrong_size, _map_wrong_dtype, _bad_label,
                                    _no_column])
def test_bad_input_is_named_or_skipped(raw, meta, tmp_path, capsys, damage):
    lay, name = v2.Layout.at(raw), _first_train(meta)
    path, what, skippable = damage(lay, meta, name)
    base = ["-r", raw, "--workers", "1", "--noise-levels", 30]
    rc, _, err = _run(base + ["-o", tmp_path / "a"], capsys)
    assert rc == 2 and str(path) in err and what in err, err
    assert not list((tmp_path / "a").rglob("*.tfrecord*"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc, out, err = _run(base + ["-o", tmp_path / "b", "--skip-invalid"], capsys)
    if not skippable:
        assert rc == 2 and what in err
        return
    assert rc == 0 and "skipped: 1" in out and any("skipped" in str(w.message) for w in caught)
    report = json.loads((tmp_path / "b/TFRecord/prep_report.json").read_text())
    assert len(report["skipped"]) == 1 and what in report["skipped"][0]["reason"]
    n_train = len(meta.splits()["train"])
    assert report["records"]["train"] == report["records"]["30"] == n_train - 1
    names = [r["patch_name"].decode()
             for r in _records(tmp_path / "b/TFRecord/train.tfrecord", bands="s1")]
    assert name not in names and len(names) == n_train - 1


def test_empty_split_and_flag_misuse(raw, meta, tmp_path, capsys, ben_sample):
    rows = pq.read_table(v2.Layout.at(raw).metadata).to_pylist()
    pq.write_table(pa.Table.from_pylist([r for r in rows if r["split"] != "validation"]),
                   v2.Layout.at(raw).metadata)
    rc, _, err = _run(["-r", raw, "-o", tmp_path / "a", "--workers", "1"], capsys)
    assert rc == 2 and "metadata.parquet (split column, snow and cloud/shadow left out): val " \
                       "split is empty" in err
    rc, _, err = _run(["-r", raw, "-o", tmp_path / "b", "--schema", "published"], capsys)
    assert rc == 2 and "compact form only" in err
    rc, _, err = _run(["-r", ben_sample, "-o", tmp_path / "c", "--s1-storage", "int16"], capsys)
    assert rc == 2 and "--s1-storage applies to BigEarthNet v2.0 roots only" in err


def test_interrupt_publishes_nothing(sample_root, tmp_path, capsys, monkeypatch):
    calls = {"n": 0}
    real = benv2.encode_examples

    def interrupt(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(benv2, "encode_examples", interrupt)
    rc, _, err = _run(["-r", sample_root, "-o", tmp_path, "--workers", "1", "--noise-levels", 10],
                      capsys)
    assert rc == 130 and "interrupted" in err and calls["n"] == 3
    assert list((tmp_path / "TFRecord").iterdir()) == []


def test_patch_id_leaving_the_root_is_named_or_skipped_through_main(raw, meta, tmp_path, capsys):
    """A ``../`` patch_id: named before anything is read, or skipped, counted, never stored."""
    lay = v2.Layout.at(raw)
    name = _first_train(meta)
    rows = pq.read_table(lay.metadata).to_pylist()
    for row in rows:
        if row["patch_id"] == name:
            row["patch_id"] = f"../{name}"
    pq.write_table(pa.Table.from_pylist(rows), lay.metadata)
    rc, _, err = _run(["-r", raw, "-o", tmp_path / "a", "--workers", "1"], capsys)
    assert rc == 2 and f"patch_id '../{name}' is not a folder name (holds a path separator)" \
        in err, err
    assert not list((tmp_path / "a").rglob("*.tfrecord"))
    rc, out, _ = _run(["-r", raw, "-o", tmp_path / "b", "--workers", "1", "--skip-invalid"],
                      capsys)
    assert rc == 0 and "skipped: 1" in out
    names = [r["patch_name"].decode() for split in ("train", "val", "test")
             for r in _records(tmp_path / f"b/TFRecord/{split}.tfrecord", bands="s1")]
    assert len(names) == len(meta) - 1 and not any(".." in n for n in names)
