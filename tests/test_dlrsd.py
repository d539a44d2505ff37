"""DLRSD archive: split rule, palette, noise, schema, prep end to end and bad input."""
import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from archives import dlrsd, noise, sample

SCENES = ["airplane", "beach", "harbor"]


def _read_all(path):
    return [{k: v.numpy() for k, v in ex.items()} for ex in dlrsd.parse_records([path])]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    sample.write_sample_archive(root, seed=3, per_class=10, scenes=SCENES)
    return root


@pytest.fixture(scope="module")
def prepped(archive, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    report = dlrsd.prepare(archive / "UCMerced_LandUse", archive / "DLRSD", out,
                           noise_levels=[30, 70], seed=5, progress=False, layout="files")
    return out / "TFRecord", report


@pytest.fixture
def copy(archive, tmp_path):
    dst = tmp_path / "raw"
    shutil.copytree(archive, dst)
    return dst


def _prep(root, out, **kw):
    kw.setdefault("noise_levels", [50])
    kw.setdefault("progress", False)
    kw.setdefault("layout", "files")  # the sharded layout: tests/test_shards.py
    return dlrsd.prepare(root / "UCMerced_LandUse", root / "DLRSD", out, **kw)


# ----------------------------------------------------------------------------- pure functions
def test_split_rule_counts_and_positions():
    splits = [dlrsd.split_of(i) for i in range(100)]
    assert (splits.count("train"), splits.count("val"), splits.count("test")) == (70, 10, 20)
    assert splits[:10] == ["train", "test", "train", "train", "val",
                           "train", "test", "train", "train", "train"]
    assert splits[10:20] == splits[:10]


def test_palette_decoding_hand_made_pixels():
    rgb = np.array([[[166, 202, 240], [128, 128, 0], [0, 255, 255]],
                    [[255, 233, 233], [1, 2, 3], [255, 0, 192]]], np.uint8)
    ids, misses = dlrsd.decode_palette(rgb)
    assert ids.dtype == np.int8
    np.testing.assert_array_equal(ids, [[0, 1, 16], [6, -1, 13]])
    assert misses == 1
    all_ids = np.arange(-1, 17, dtype=np.int8).reshape(2, 9)
    back, m = dlrsd.decode_palette(dlrsd.encode_palette(all_ids))
    assert m == 1 and np.array_equal(back, all_ids)  # black (-1) is no palette colour


def test_classes_present_ignores_unlabelled():
    m = np.array([[-1, 3], [3, 16]])
    expect = np.zeros(17, np.float32)
    expect[[3, 16]] = 1
    np.testing.assert_array_equal(dlrsd.classes_present(m), expect)


def test_sample_pairs_count_unique_and_seeded():
    # the published count int(pairs * N * 0.01), rounded down: 21 pairs at 50 % -> 10, not 11
    for n, p, k in [(480, 10, 48), (21, 50, 10), (7, 90, 6), (0, 30, 0), (10, 100, 10),
                    (19, 10, 1), (9, 10, 0), (15, 30, 4)]:
        idx = noise.sample_pairs(n, p, np.random.default_rng(1))
        assert len(idx) == noise.pick_count(n, p) == k
        assert len(set(idx.tolist())) == len(idx) and np.all(np.diff(idx) > 0)
        assert np.all((idx >= 0) & (idx < max(n, 1)))
    a = noise.sample_pairs(100, 40, np.random.default_rng(7))
    assert np.array_equal(a, noise.sample_pairs(100, 40, np.random.default_rng(7)))
    assert not np.array_equal(a, noise.sample_pairs(100, 40, np.random.default_rng(8)))


def test_inject_map_noise_invariants():
    rng = np.random.default_rng(0)
    maps = [rng.integers(0, 17, (16, 16)).astype(np.int8) for _ in range(40)]
    maps[0][:] = 2  # one single-class image
    maps[1][maps[1] == 5] = 4
    labels = np.array([dlrsd.classes_present(m) for m in maps])
    labels[1, 5] = 1  # a label naming a class absent from the map: picking it changes nothing
    noisy, st = noise.inject_map_noise(maps, labels, 40, np.random.default_rng(3), 17)
    assert st["pairs_total"] == int(labels.sum())
    assert st["pairs_picked"] == noise.pick_count(st["pairs_total"], 40)
    assert 0 < st["pairs_changed"] <= st["pairs_picked"]
    changed_pairs = 0
    for clean, nm in zip(maps, noisy):
        if nm is None:
            continue
        diff = clean != nm
        assert diff.any()
        for c in np.unique(clean[diff]):
            # every pixel of a picked class moved, all to one single other class
            assert np.all(diff[clean == c])
            new = np.unique(nm[clean == c])
            assert len(new) == 1 and new[0] != c and 0 <= new[0] < 17
            changed_pairs += 1
    assert changed_pairs == st["pairs_changed"]
    again, _ = noise.inject_map_noise(maps, labels, 40, np.random.default_rng(3), 17)
    assert all((a is None and b is None) or np.array_equal(a, b) for a, b in zip(noisy, again))


@pytest.mark.parametrize("prcnt", [10, 50, 90])
def test_noise_rate_matches_level(prcnt):
    rng = np.random.default_rng(prcnt)
    maps = [rng.integers(0, 17, (8, 8)).astype(np.int8) for _ in range(30)]
    labels = np.array([dlrsd.classes_present(m) for m in maps])
    _, st = noise.inject_map_noise(maps, labels, prcnt, rng, 17)
    # every labelled class is in its map here, so every picked pair changes
    assert st["pairs_changed"] == st["pairs_picked"] == noise.pick_count(st["pairs_total"], prcnt)


def test_noise_levels_checked(tmp_path):
    assert noise.check_levels([30, 10, 30]) == [10, 30]
    for bad in (0, 100):
        with pytest.raises(ValueError, match=f"noise level {bad} is outside 1..99"):
            noise.check_levels([10, bad])
    with pytest.raises(ValueError, match="noise level 100"):
        dlrsd.prepare(tmp_path / "ucm", tmp_path / "dlrsd", tmp_path / "out", noise_levels=[100],
                      progress=False)
    assert not (tmp_path / "out").exists()  # refused before anything is written


# ----------------------------------------------------------------------------- schema
def _example(rng, name="x01"):
    image = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    seg = rng.integers(-1, 17, (256, 256)).astype(np.int8)
    noisy = rng.integers(-1, 17, (256, 256)).astype(np.int8)
    return image, seg, noisy, dlrsd.classes_present(seg), dlrsd.classes_present(noisy), name


@pytest.mark.parametrize("schema", ["compact", "published"])
def test_schema_round_trip(tmp_path, schema):
    import tensorflow as tf
    rng = np.random.default_rng(0)
    exs = [_example(rng, f"img{i}") for i in range(2)]
    path = tmp_path / f"{schema}.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as w:
        for e in exs:
            w.write(dlrsd.encode_example(*e, schema=schema))
    assert dlrsd.record_form(path) == schema
    got = _read_all(path)
    assert len(got) == 2
    for (image, seg, noisy, label, nlabel, name), g in zip(exs, got):
        assert g["image"].dtype == np.float32 and g["image"].shape == (256, 256, 3)
        assert g["seg_map"].dtype == np.int32 and g["noisy_seg_map"].shape == (256, 256)
        np.testing.assert_array_equal(g["image"], image.astype(np.float32))
        np.testing.assert_array_equal(g["seg_map"], seg)
        np.testing.assert_array_equal(g["noisy_seg_map"], noisy)
        np.testing.assert_array_equal(g["label"], label)
        np.testing.assert_array_equal(g["noisy_label"], nlabel)
        assert g["patch_name"] == name.encode()


@pytest.mark.slow
def test_encoding_gives_the_same_bytes_in_another_process():
    """Map-entry order must not depend on the process (protobuf's map order otherwise does)."""
    import subprocess
    import sys
    script = ("import hashlib, numpy as np\n"
              "from archives import dlrsd\n"
              "from tests.test_dlrsd import _example\n"
              "for schema in ('compact', 'published'):\n"
              "    e = _example(np.random.default_rng(4))\n"
              "    print(hashlib.sha256(dlrsd.encode_example(*e, schema=schema)).hexdigest())\n")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd=str(root), env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    here = [hashlib.sha256(dlrsd.encode_example(*_example(np.random.default_rng(4)), schema=s))
            .hexdigest() for s in ("compact", "published")]
    assert out.stdout.split()[-2:] == here


def test_compact_is_at_least_3x_smaller():
    rng = np.random.default_rng(1)
    e = _example(rng)
    ratio = len(dlrsd.encode_example(*e, schema="published")) / len(dlrsd.encode_example(*e))
    assert ratio >= 3.0


def test_parse_records_rejects_missing_file_and_foreign_keys(tmp_path):
    import tensorflow as tf
    with pytest.raises(ValueError, match="nope.tfrecord"):
        dlrsd.parse_records([tmp_path / "nope.tfrecord"])
    odd = tmp_path / "odd.tfrecord"
    ex = tf.train.Example(features=tf.train.Features(feature={"foo": tf.train.Feature()}))
    with tf.io.TFRecordWriter(str(odd)) as w:
        w.write(ex.SerializeToString())
    with pytest.raises(ValueError, match=r"odd\.tfrecord.*foo"):
        dlrsd.parse_records([odd])


# ----------------------------------------------------------------------------- prep end to end
def test_prep_counts_splits_and_report(prepped):
    out, report = prepped
    names = sorted(p.name for p in out.iterdir())
    assert names == ["prep_report.json", "records_meta.json", "test.tfrecord", "train.tfrecord",
                     "train_noise_prcnt30.tfrecord", "train_noise_prcnt70.tfrecord", "val.tfrecord"]
    per = {s: _read_all(out / f"{s}.tfrecord") for s in dlrsd.SPLITS}
    assert {s: len(v) for s, v in per.items()} == {"train": 21, "val": 3, "test": 6}
    for scene in SCENES:
        idx = {s: sorted(int(e["patch_name"].decode()[len(scene):]) for e in per[s]
                         if e["patch_name"].decode().startswith(scene)) for s in per}
        assert idx == {"train": [0, 2, 3, 5, 7, 8, 9], "val": [4], "test": [1, 6]}
    saved = json.loads((out / "prep_report.json").read_text())
    assert saved["records"] == {"train": 21, "val": 3, "test": 6, "30": 21, "70": 21}
    assert saved["noise"]["30"]["pairs_total"] == report.noise[30]["pairs_total"] > 0
    assert saved["skipped"] == [] and saved["palette_misses"]["pixels"] == 0
    assert saved["extra"]["multi_label_source"].endswith("multi-labels.xlsx")
    assert saved["extra"]["resized_files"] == 1  # airplane03 is stored at 247x259
    assert saved["time_s"] > 0


def test_prep_only_train_is_noisy_and_label_stays_clean(prepped):
    out, report = prepped
    for s in dlrsd.SPLITS:
        for e in _read_all(out / f"{s}.tfrecord"):
            assert np.array_equal(e["seg_map"], e["noisy_seg_map"])
            assert np.array_equal(e["label"], e["noisy_label"])
    clean = {e["patch_name"]: e for e in _read_all(out / "train.tfrecord")}
    for level in (30, 70):
        recs = _read_all(out / f"train_noise_prcnt{level}.tfrecord")
        assert [e["patch_name"] for e in recs] == list(clean)
        changed_maps = changed_labels = 0
        for e in recs:
            c = clean[e["patch_name"]]
            np.testing.assert_array_equal(e["image"], c["image"])
            np.testing.assert_array_equal(e["seg_map"], c["seg_map"])
            np.testing.assert_array_equal(e["label"], c["label"])
            if np.array_equal(e["noisy_seg_map"], c["seg_map"]):
                np.testing.assert_array_equal(e["noisy_label"], c["label"])
            else:
                changed_maps += 1
                np.testing.assert_array_equal(e["noisy_label"], dlrsd.classes_present(e["noisy_seg_map"]))
            changed_labels += not np.array_equal(e["noisy_label"], e["label"])
        st = report.noise[level]
        assert changed_labels == st["images_changed"] and changed_maps >= changed_labels
        assert st["pairs_picked"] == sum(
            noise.pick_count(t, level) for t in _pairs_per_scene(clean.values()))
        # sample labels equal the classes in each map, so every picked pair changes
        assert st["pairs_changed"] == st["pairs_picked"]
        assert abs(st["share_pairs_changed"] - level / 100) < 0.03


def _pairs_per_scene(records):
    tot = {}
    for e in records:
        scene = e["patch_name"].decode().rstrip("0123456789")
        tot[scene] = tot.get(scene, 0) + int(e["label"].sum())
    return tot.values()


def test_prep_does_not_depend_on_listing_order(archive, prepped, tmp_path, monkeypatch):
    out, _ = prepped
    real = Path.iterdir

    def shuffled(self):
        entries = list(real(self))
        random.Random(len(entries)).shuffle(entries)
        return iter(reversed(entries))

    monkeypatch.setattr(Path, "iterdir", shuffled)
    dlrsd.prepare(archive / "UCMerced_LandUse", archive / "DLRSD", tmp_path, noise_levels=[30, 70],
                  seed=5, progress=False, layout="files")
    for f in out.glob("*.tfrecord"):
        assert (tmp_path / "TFRecord" / f.name).read_bytes() == f.read_bytes(), f.name


def test_seed_changes_noise_only(copy, prepped, tmp_path):
    out, _ = prepped
    _prep(copy, tmp_path, noise_levels=[30], seed=6)
    assert (tmp_path / "TFRecord/train.tfrecord").read_bytes() == (out / "train.tfrecord").read_bytes()
    assert ((tmp_path / "TFRecord/train_noise_prcnt30.tfrecord").read_bytes()
            != (out / "train_noise_prcnt30.tfrecord").read_bytes())


def test_published_schema_prep_reads_back_equal(copy, prepped, tmp_path):
    out, _ = prepped
    _prep(copy, tmp_path, noise_levels=[30], seed=5, schema="published")
    pub = tmp_path / "TFRecord" / "val.tfrecord"
    assert dlrsd.record_form(pub) == "published"
    assert pub.stat().st_size > 3 * (out / "val.tfrecord").stat().st_size
    pub_recs, compact_recs = _read_all(pub), _read_all(out / "val.tfrecord")
    assert len(pub_recs) == len(compact_recs) == 3
    for a, b in zip(pub_recs, compact_recs):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_multilabel_sources(copy, tmp_path):
    labels_xlsx = dlrsd.read_multilabels(copy / "DLRSD" / "multi-labels.xlsx")
    assert len(labels_xlsx) == 30
    txt = copy / "LandUse_Multilabeled.txt"
    rows = ["IMAGE\\LABEL\t" + "\t".join(dlrsd.CLASS_NAMES)]
    rows += [s + "\t" + "\t".join(str(int(v)) for v in l) for s, l in sorted(labels_xlsx.items())]
    txt.write_text("\n".join(rows) + "\n")
    labels_txt = dlrsd.read_multilabels(txt)
    assert labels_txt.keys() == labels_xlsx.keys()
    assert all(np.array_equal(labels_txt[k], labels_xlsx[k]) for k in labels_txt)
    r = _prep(copy, tmp_path / "a", multi_labels=txt)
    assert r.extra["multi_label_source"] == str(txt)
    (copy / "DLRSD" / "multi-labels.xlsx").unlink()
    r = _prep(copy, tmp_path / "b")
    assert r.extra["multi_label_source"] == "pixel maps"
    a, b = tmp_path / "a/TFRecord/train.tfrecord", tmp_path / "b/TFRecord/train.tfrecord"
    assert a.read_bytes() == b.read_bytes()


# ----------------------------------------------------------------------------- bad input
def test_unmatched_folder(copy, tmp_path):
    (copy / "UCMerced_LandUse/Images/forest").mkdir()
    with pytest.raises(dlrsd.InvalidInput, match=r"Images/forest.*no DLRSD counterpart"):
        _prep(copy, tmp_path)
    with pytest.warns(UserWarning, match="forest"):
        r = _prep(copy, tmp_path, skip_invalid=True)
    assert len(r.skipped) == 1 and r.skipped[0]["item"].endswith("forest")


def test_unmatched_stem(copy, tmp_path):
    (copy / "DLRSD/Images/beach/beach05.png").unlink()
    with pytest.raises(dlrsd.InvalidInput, match=r"beach05\.tif.*no DLRSD map"):
        _prep(copy, tmp_path)
    with pytest.warns(UserWarning):
        r = _prep(copy, tmp_path, skip_invalid=True)
    assert r.records["train"] == 20 and "beach05.tif" in r.skipped[0]["item"]


def test_unreadable_image(copy, tmp_path):
    bad = copy / "UCMerced_LandUse/Images/harbor/harbor02.tif"
    bad.write_bytes(b"not a tiff at all")
    with pytest.raises(dlrsd.InvalidInput, match=r"harbor02\.tif: cannot read image"):
        _prep(copy, tmp_path)
    assert not list((tmp_path / "TFRecord").glob("*"))  # nothing half-written
    with pytest.warns(UserWarning):
        r = _prep(copy, tmp_path, skip_invalid=True)
    assert r.records["train"] == 20 and r.records["50"] == 20
    assert len(r.skipped) == 1 and r.skipped[0]["item"] == str(bad)
    assert r.skipped[0]["reason"].startswith("cannot read image (")


def test_colours_outside_palette_become_unlabelled(copy, tmp_path):
    path = copy / "DLRSD/Images/airplane/airplane04.png"  # a val image
    rgb = np.asarray(Image.open(path).convert("RGB")).copy()
    rgb[:2, :3] = (7, 7, 7)
    Image.fromarray(rgb).save(path)
    r = _prep(copy, tmp_path)
    assert r.palette_misses["pixels"] == 6 and r.palette_misses["per_map"] == {str(path): 6}
    (val,) = [e for e in _read_all(tmp_path / "TFRecord/val.tfrecord")
              if e["patch_name"] == b"airplane04"]
    assert np.all(val["seg_map"][:2, :3] == -1) and np.all(val["seg_map"][2:] >= 0)


def _write_xlsx(path, rows):
    import openpyxl
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Sheet1"
    for r in rows:
        ws.append(r)
    wb.save(path)


def test_multilabel_file_missing_image(copy, tmp_path):
    labels = dlrsd.read_multilabels(copy / "DLRSD/multi-labels.xlsx")
    del labels["beach07"]
    xlsx = copy / "DLRSD/multi-labels.xlsx"
    _write_xlsx(xlsx, [["IMAGE\\LABEL"] + dlrsd.CLASS_NAMES]
                + [[k] + [int(x) for x in v] for k, v in labels.items()])
    with pytest.raises(dlrsd.InvalidInput, match=r"multi-labels\.xlsx.*no row for image 'beach07'"):
        _prep(copy, tmp_path)
    with pytest.warns(UserWarning):
        r = _prep(copy, tmp_path, skip_invalid=True)
    assert r.records["train"] == 20


@pytest.mark.parametrize("rows, message", [
    ([["IMAGE", *dlrsd.CLASS_NAMES]], "header must be"),
    ([["IMAGE\\LABEL", *dlrsd.CLASS_NAMES[:5]]], "must name 17 classes"),
    ([["IMAGE\\LABEL", *dlrsd.CLASS_NAMES], ["beach00", *[0] * 16, 2]], r"row 2 \(beach00\).*'water'.*2"),
    ([["IMAGE\\LABEL", *dlrsd.CLASS_NAMES], ["beach00", 1, 0]], r"row 2.*expected 17 label columns"),
])
def test_malformed_multilabel_file(tmp_path, rows, message):
    xlsx = tmp_path / "multi-labels.xlsx"
    _write_xlsx(xlsx, rows)
    with pytest.raises(ValueError, match=message):
        dlrsd.read_multilabels(xlsx)


def test_empty_split(tmp_path):
    sample.write_sample_archive(tmp_path / "raw", seed=1, per_class=3, scenes=["beach"])
    with pytest.raises(ValueError, match="split 'val' would be empty"):
        _prep(tmp_path / "raw", tmp_path / "out")


def test_output_folder_not_writable(copy, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match=r"a_file/sub/TFRecord: output folder cannot be written"):
        _prep(copy, blocker / "sub")


def test_interrupted_write_leaves_nothing(copy, tmp_path, monkeypatch):
    real, calls = dlrsd.encode_example, []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) > 12:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(dlrsd, "encode_example", failing)
    with pytest.raises(KeyboardInterrupt):
        _prep(copy, tmp_path)
    assert list((tmp_path / "TFRecord").iterdir()) == []


def test_cli_runs_and_reports(copy, tmp_path, capsys):
    import prep_DLRSD_noisy
    rc = prep_DLRSD_noisy.main(["-r_dlrsd", str(copy / "DLRSD"), "-r_ucm", str(copy / "UCMerced_LandUse"),
                                "-o", str(tmp_path), "--noise-levels", "20", "--quiet",
                                "--layout", "files"])
    assert rc == 0
    assert "noise 20%" in capsys.readouterr().out
    assert (tmp_path / "TFRecord/train_noise_prcnt20.tfrecord").is_file()
    rc = prep_DLRSD_noisy.main(["-r_dlrsd", str(tmp_path / "none"), "-r_ucm", str(copy), "-o", str(tmp_path)])
    assert rc == 2 and "none: folder does not exist" in capsys.readouterr().err


def test_sample_archive_layout_and_determinism(tmp_path):
    scenes = ["tenniscourt", "agricultural"]
    a = sample.write_sample_archive(tmp_path / "a", seed=9, per_class=4, scenes=scenes)
    sample.write_sample_archive(tmp_path / "b", seed=9, per_class=4, scenes=scenes)
    tifs = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.tif"))
    assert [str(t) for t in tifs][:2] == ["UCMerced_LandUse/Images/agricultural/agricultural00.tif",
                                          "UCMerced_LandUse/Images/agricultural/agricultural01.tif"]
    assert len(tifs) == 8 and len(list((tmp_path / "a").rglob("*.png"))) == 8
    for t in tifs:
        assert (tmp_path / "a" / t).read_bytes() == (tmp_path / "b" / t).read_bytes()
    labels = dlrsd.read_multilabels(a["multi_labels"])
    for stem, lab in labels.items():
        seg, misses, _ = dlrsd.read_map(a["dlrsd"] / "Images" / stem.rstrip("0123456789") / f"{stem}.png")
        assert misses == 0 and np.array_equal(dlrsd.classes_present(seg), lab)
    assert all(labels[f"tenniscourt0{i}"][dlrsd.CLASS_NAMES.index("court")] for i in range(4))
