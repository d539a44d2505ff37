"""BigEarthNet v2.0 (reBEN): layout recognition, parquet metadata, CORINE code table, patch
readers, the sample archive, pixel-map noise, bad input."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio

from archives import ben, benv2_noise, sample_benv2
from archives import benv2_layout as v2
from archives.ben import InvalidPatch

N_PATCHES, N_EXCLUDED = 16, 3
SPEC_COLUMNS = ["patch_id", "labels", "split", "country", "s1_name", "s2v1_name",
                "contains_seasonal_snow", "contains_cloud_or_shadow"]


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory):
    return sample_benv2.write_sample_archive(tmp_path_factory.mktemp("benv2") / "raw", seed=5,
                                             n_patches=N_PATCHES, n_excluded=N_EXCLUDED)


@pytest.fixture(scope="module")
def meta(sample_root):
    return v2.read_metadata(v2.Layout.at(sample_root))


@pytest.fixture
def raw(sample_root, tmp_path):
    """A private copy of the sample archive that a test may damage."""
    return Path(shutil.copytree(sample_root, tmp_path / "raw"))


def _rows(root):
    return pq.read_table(Path(root) / v2.METADATA).to_pylist()


def _write_rows(root, rows, name=v2.METADATA, drop=()):
    table = pa.Table.from_pylist(rows)
    if drop:
        table = table.drop_columns(list(drop))
    pq.write_table(table, Path(root) / name)


def _write_tif(path, data):
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0],
                       count=1, dtype=data.dtype.name, crs="EPSG:32633",
                       transform=rasterio.Affine(10, 0, 300000, 0, -10, 5500000)) as dst:
        dst.write(data, 1)


# ------------------------------------------------------------------ CORINE code table

# the release's CORINE table, written out again here rather than imported
SPEC_TABLE = {0: [111, 112], 1: [121], 2: [211, 212, 213], 3: [221, 222, 223, 241], 4: [231],
              5: [242], 6: [243], 7: [244], 8: [311], 9: [312], 10: [313], 11: [321, 333],
              12: [322, 323], 13: [324], 14: [331], 15: [411, 412], 16: [421, 422],
              17: [511, 512], 18: [521, 522, 523]}
SPEC_UNLABELLED = [122, 123, 124, 131, 132, 133, 141, 142, 332, 334, 335, 423, 999]


def test_code_table_every_spec_code():
    for cls, codes in SPEC_TABLE.items():
        for code in codes:
            assert v2.codes_to_classes(np.array([code], np.uint16))[0] == cls, code
            assert v2.CORINE_TO_CLASS[code] == cls
    assert sum(len(c) for c in SPEC_TABLE.values()) == len(v2.CORINE_TO_CLASS) == 32
    assert (v2.codes_to_classes(np.array(SPEC_UNLABELLED, np.uint16)) == -1).all()
    # the 44 CORINE level-3 codes are exactly the mapped ones plus the unlabelled ones
    assert len(set(v2.CORINE_TO_CLASS) | set(SPEC_UNLABELLED)) == 45
    # class names line up with the nomenclature order of archives.ben
    assert ben.CLASS_NAMES[v2.CORINE_TO_CLASS[231]] == "Pastures"
    assert ben.CLASS_NAMES[v2.CORINE_TO_CLASS[333]] == "Natural grassland and sparsely vegetated areas"
    assert ben.CLASS_NAMES[v2.CORINE_TO_CLASS[523]] == "Marine waters"


def test_code_table_is_vectorised_and_total():
    every = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    ids = v2.codes_to_classes(every)
    assert ids.shape == (256, 256) and ids.dtype == np.int8
    assert int((ids >= 0).sum()) == 32  # every other uint16 value is unlabelled
    expect = np.array([[0, 999], [313, 65535]], np.uint16)
    np.testing.assert_array_equal(v2.codes_to_classes(expect), [[-1, -1], [10, -1]])
    wide = np.array([-5, 111, 70000, 523], np.int64)  # other integer dtypes too
    np.testing.assert_array_equal(v2.codes_to_classes(wide), [-1, 0, -1, 18])


def test_band_stats_constants():
    assert set(v2.BAND_STATS["mean"]) == set(ben.BAND_NAMES) | {"VV", "VH"}
    assert set(v2.BAND_STATS["std"]) == set(v2.BAND_STATS["mean"])
    assert v2.BAND_STATS["mean"]["B04"] == 588.41 and v2.BAND_STATS["std"]["B12"] == 814.09
    assert v2.BAND_STATS["mean"]["VV"] == -12.64 and v2.BAND_STATS["std"]["VH"] == 5.59
    assert v2.S1_BANDS == ("VV", "VH")


# ------------------------------------------------------------------ layout and metadata

def test_detect_layout(sample_root, raw, tmp_path):
    assert v2.detect_layout(sample_root) == "v2"
    v1 = tmp_path / "v1"
    (v1 / "S2A_MSIL2A_20170613T101031_0_48").mkdir(parents=True)
    assert v2.detect_layout(v1) == "v1"
    with pytest.raises(ValueError, match="does not exist"):
        v2.detect_layout(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=f"give its parent {raw}"):
        v2.detect_layout(raw / v2.S2_DIR)
    (raw / v2.METADATA).unlink()
    with pytest.raises(ValueError, match=f"{raw}: .*metadata.parquet is missing"):
        v2.detect_layout(raw)


def test_names_to_folders():
    lay = v2.Layout.at("/r")
    patch = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_75_43"
    s1 = "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_70_48"
    tile = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP"
    assert lay.s2_dir(patch) == Path("/r/BigEarthNet-S2") / tile / patch
    assert lay.s1_path(s1, "VH") == Path("/r/BigEarthNet-S1/S1A_IW_GRDH_1SDV_20170613T165043") / \
        s1 / f"{s1}_VH.tif"
    assert lay.map_path(patch) == Path("/r/Reference_Maps") / tile / patch / \
        f"{patch}_reference_map.tif"
    with pytest.raises(InvalidPatch, match="not a v2 S2 patch name"):
        v2.tile_of("nounderscore")


def test_metadata_splits_labels_and_exclusions(sample_root, meta):
    lay = v2.Layout.at(sample_root)
    excluded = pq.read_table(lay.excluded_metadata).column("patch_id").to_pylist()
    assert len(meta) == N_PATCHES and len(excluded) == N_EXCLUDED
    assert meta.patches == sorted(meta.patches) and not set(excluded) & set(meta.patches)
    assert meta.excluded == frozenset(excluded)
    splits = meta.splits()
    assert set(splits) == {"train", "val", "test"} and all(splits.values())
    assert sorted(sum(splits.values(), [])) == meta.patches
    rows = {r["patch_id"]: r for r in _rows(sample_root)}
    for i, p in enumerate(meta.patches):
        assert meta.split[i] == {"validation": "val"}.get(rows[p]["split"], rows[p]["split"])
        # class-id order (not the parquet's alphabetical order) and the same set of names
        assert meta.label_names[i] == [c for c in ben.CLASS_NAMES if c in rows[p]["labels"]]
        np.testing.assert_array_equal(meta.labels[i], ben.multi_hot(rows[p]["labels"]))
        assert meta.s1_names[i] == rows[p]["s1_name"] and meta.s2v1_names[i] == rows[p]["s2v1_name"]
    assert meta.labels.dtype == np.float32 and meta.labels.shape == (N_PATCHES, 19)


def test_metadata_rows_flagged_in_main_parquet_are_left_out(raw):
    rows = _rows(raw)
    rows[0]["contains_seasonal_snow"] = True
    rows[1]["contains_cloud_or_shadow"] = True
    _write_rows(raw, rows)
    got = v2.read_metadata(v2.Layout.at(raw))
    assert len(got) == N_PATCHES - 2 and got.left_out == 2
    assert rows[0]["patch_id"] not in got.patches and rows[1]["patch_id"] not in got.patches


def test_label_order_is_the_nomenclature(raw):
    rows = _rows(raw)
    rows[0]["labels"] = ["Marine waters", "Arable land", "Urban fabric"]  # alphabetical != id order
    _write_rows(raw, rows)
    got = v2.read_metadata(v2.Layout.at(raw))
    i = got.patches.index(rows[0]["patch_id"])
    assert got.label_names[i] == ["Urban fabric", "Arable land", "Marine waters"]
    assert np.flatnonzero(got.labels[i]).tolist() == [0, 2, 18]


@pytest.mark.parametrize("column", ["patch_id", "labels", "split", "s1_name"])
def test_parquet_without_expected_column(raw, column):
    _write_rows(raw, _rows(raw), drop=[column])
    with pytest.raises(v2.InvalidMetadata, match=f"metadata.parquet: column.s. {column} missing"):
        v2.read_metadata(v2.Layout.at(raw))


def test_parquet_unreadable_or_wrongly_typed(raw):
    lay = v2.Layout.at(raw)
    rows = _rows(raw)
    for r in rows:
        r["labels"] = ";".join(r["labels"])
    _write_rows(raw, rows)
    with pytest.raises(v2.InvalidMetadata, match="column labels has type string, expected a list"):
        v2.read_metadata(lay)
    lay.metadata.write_bytes(b"not a parquet file")
    with pytest.raises(v2.InvalidMetadata, match="metadata.parquet: metadata parquet cannot be read"):
        v2.read_metadata(lay)
    lay.metadata.unlink()
    with pytest.raises(v2.InvalidMetadata, match="does not exist"):
        v2.read_metadata(lay)


@pytest.mark.parametrize("field,value,message", [
    ("labels", ["Pastures", "Glaciers"], "label 'Glaciers' is not in the 19-class"),
    ("labels", None, "labels is null"),
    ("split", "val", "split 'val' is not one of train, validation, test"),
    ("s1_name", None, "s1_name is null"),
])
def test_bad_row_is_named_or_skipped(raw, field, value, message):
    rows = _rows(raw)
    rows[2][field] = value
    _write_rows(raw, rows)
    lay = v2.Layout.at(raw)
    with pytest.raises(InvalidPatch, match=f"metadata.parquet: row 2 .patch {rows[2]['patch_id']}.: "
                                           f"{message}"):
        v2.read_metadata(lay)
    skipped = []
    with pytest.warns(UserWarning, match="skipped"):
        got = v2.read_metadata(lay, skip_invalid=True, skipped=skipped)
    assert len(got) == N_PATCHES - 1 and rows[2]["patch_id"] not in got.patches
    assert len(skipped) == 1 and message.split(" ")[0] in skipped[0]["reason"]


def test_repeated_patch_is_an_error(raw):
    rows = _rows(raw)
    _write_rows(raw, rows + [rows[4]])
    with pytest.raises(v2.InvalidMetadata, match=f"patch {rows[4]['patch_id']} is listed twice"):
        v2.read_metadata(v2.Layout.at(raw))


def _csvs(tmp_path, lists):
    out = {}
    for split, names in lists.items():
        out[split] = tmp_path / f"{split}.csv"
        out[split].write_text("".join(n + "\n" for n in names))
    return out


def test_csv_splits_override_with_v2_and_v1_names(meta, tmp_path):
    v1 = [(p, n) for p, n in zip(meta.patches, meta.s2v1_names) if n]
    plain = [p for p, n in zip(meta.patches, meta.s2v1_names) if not n]
    assert len(v1) >= 2 and len(plain) >= 2
    lists = {"train": [v1[0][1], plain[0]], "val": [plain[1]], "test": [v1[1][1]]}
    got, via_v1 = v2.csv_splits(meta, _csvs(tmp_path, lists))
    assert got == {"train": [v1[0][0], plain[0]], "val": [plain[1]], "test": [v1[1][0]]}
    assert via_v1 == 2
    lists["train"].append(plain[0])  # a repeat is an error, as for v1 split files
    with pytest.raises(ValueError, match=rf"train.csv: patch {plain[0]} is listed twice "
                                         r"\(lines 2 and 3\)"):
        v2.csv_splits(meta, _csvs(tmp_path, lists))


def test_csv_splits_bad_names(meta, tmp_path):
    excluded = sorted(meta.excluded)[0]
    p = meta.patches
    csvs = _csvs(tmp_path, {"train": [p[0], "S2A_MSIL2A_20990101T000000_9_9"], "val": [p[1]],
                            "test": [p[2], excluded]})
    with pytest.raises(InvalidPatch, match=r"train.csv: patch S2A_MSIL2A_20990101T000000_9_9 is "
                                           r"in metadata.parquet neither as patch_id nor"):
        v2.csv_splits(meta, csvs)
    skipped = []
    with pytest.warns(UserWarning, match="skipped"):
        got, _ = v2.csv_splits(meta, csvs, skip_invalid=True, skipped=skipped)
    assert got == {"train": [p[0]], "val": [p[1]], "test": [p[2]]}
    assert len(skipped) == 2 and "snow/cloud/shadow" in skipped[1]["reason"]
    with pytest.raises(ValueError, match=r"patch .* is also listed in .*train.csv"):
        v2.csv_splits(meta, _csvs(tmp_path, {"train": [p[0]], "val": [p[1]], "test": [p[0]]}))
    with pytest.raises(ValueError, match="missing: test"):
        v2.csv_splits(meta, {"train": csvs["train"], "val": csvs["val"], "test": None})


# ------------------------------------------------------------------ readers

def test_read_patch_shapes_dtypes_and_values(sample_root, meta):
    lay = v2.Layout.at(sample_root)
    patch, s1_name = meta.patches[0], meta.s1_names[0]
    got = v2.read_patch(lay, patch, s1_name)
    assert set(got) == {"s2", "s1", "map"}
    assert list(got["s2"]) == list(ben.BAND_NAMES)
    for band, arr in got["s2"].items():
        assert arr.dtype == np.uint16 and arr.shape == (ben.BAND_SIZES[band],) * 2
    assert got["s1"].dtype == np.float32 and got["s1"].shape == (120, 120, 2)
    with rasterio.open(lay.s1_path(s1_name, "VH")) as src:
        np.testing.assert_array_equal(got["s1"][..., 1], src.read(1))
    assert -45 < got["s1"].mean() < 5
    with rasterio.open(lay.map_path(patch)) as src:
        codes = src.read(1)
    assert got["map"].dtype == np.int8 and got["map"].shape == (120, 120)
    np.testing.assert_array_equal(got["map"], v2.codes_to_classes(codes))
    assert v2.read_patch(lay, patch, parts=("map",)).keys() == {"map"}
    with pytest.raises(ValueError, match="unknown patch part"):
        v2.read_patch(lay, patch, s1_name, parts=("s3",))
    # the record form is exactly the v1 reader's on the patch's tile folder
    rec = v2.read_s2_record_bands(lay, patch, "compact")
    assert rec == ben.read_patch_bands(lay.s2_dir(patch).parent, patch, "compact")
    assert rec["B02"] == got["s2"]["B02"].astype("<u2").tobytes()


def test_worker_and_iter_patches_agree(sample_root, meta):
    lay = v2.Layout.at(sample_root)
    patch, data, err = v2.read_patch_worker((str(sample_root), meta.patches[1], meta.s1_names[1],
                                             ("s1", "map")))
    assert err is None and patch == meta.patches[1]
    (name, again), = list(v2.iter_patches(lay, meta, [meta.patches[1]], parts=("s1", "map")))
    np.testing.assert_array_equal(data["s1"], again["s1"])
    np.testing.assert_array_equal(data["map"], again["map"])


# ------------------------------------------------------------------ sample archive

def test_sample_layout_and_parquet_columns(sample_root, meta):
    lay = v2.Layout.at(sample_root)
    tiles = sorted(p.name for p in lay.s2.iterdir())
    assert tiles == sorted(t[0] for t in sample_benv2.TILES)
    assert sorted(p.name for p in lay.s1.iterdir()) == sorted(t[1] for t in sample_benv2.TILES)
    for name in (v2.METADATA, v2.EXCLUDED_METADATA):
        table = pq.read_table(lay.root / name)
        assert table.column_names == SPEC_COLUMNS
    rows = _rows(sample_root)
    assert all(r["labels"] == sorted(r["labels"]) and r["labels"] for r in rows)
    assert not any(r["contains_seasonal_snow"] or r["contains_cloud_or_shadow"] for r in rows)
    v1 = [r["s2v1_name"] for r in rows]
    assert None in v1 and any(v1)
    flagged = pq.read_table(lay.excluded_metadata).to_pylist()
    assert all(r["contains_seasonal_snow"] != r["contains_cloud_or_shadow"] for r in flagged)
    for r in flagged + rows:  # every listed patch is on disk, with its S1 pair and map
        assert lay.s2_dir(r["patch_id"]).is_dir() and lay.map_path(r["patch_id"]).is_file()
        assert lay.s1_path(r["s1_name"], "VV").is_file()
    codes = set()
    for p in meta.patches:
        with rasterio.open(lay.map_path(p)) as src:
            codes |= set(np.unique(src.read(1)).tolist())
    assert 999 in codes and codes & set(sample_benv2.UNMAPPED_CODES)


def test_sample_labels_are_the_classes_of_the_maps(sample_root, meta):
    lay = v2.Layout.at(sample_root)
    for i, patch in enumerate(meta.patches):
        seg = v2.read_reference_map(lay, patch)
        np.testing.assert_array_equal(np.isin(np.arange(19), seg), meta.labels[i] == 1)


def test_sample_pixels_follow_their_maps(sample_root, meta):
    """Each class region has its own S2 signature and S1 backscatter (what a model learns)."""
    lay = v2.Layout.at(sample_root)
    s2_sig, _ = sample_benv2.class_signatures()
    s1_sig = sample_benv2.s1_signatures()
    checked = 0
    for patch, s1_name in zip(meta.patches, meta.s1_names):
        got = v2.read_patch(lay, patch, s1_name)
        b02 = got["s2"]["B02"].astype(float)  # a 10 m band: same grid as the map
        for c in np.unique(got["map"]):
            mask = got["map"] == c
            if c < 0 or mask.sum() < 200:
                continue
            assert b02[mask].mean() == pytest.approx(s2_sig[c, ben.BAND_NAMES.index("B02")],
                                                     rel=0.12)
            np.testing.assert_allclose(got["s1"][mask].mean(0), s1_sig[c], atol=1.0)
            checked += 1
    assert checked >= N_PATCHES


def test_sample_maps_are_learnable_from_pixels(sample_root, meta):
    """A linear pixel classifier fit on the train patches' four 10 m S2 bands recovers the maps
    of the other patches (S1's per-class means are checked in test_sample_pixels_follow_their_maps)."""
    from sklearn.linear_model import LogisticRegression

    lay = v2.Layout.at(sample_root)
    data = {True: ([], []), False: ([], [])}
    for patch, split in zip(meta.patches, meta.split):
        s2 = v2.read_s2_bands(lay, patch)
        seg = v2.read_reference_map(lay, patch)[::5, ::5]
        feats = np.stack([s2[b][::5, ::5] for b in ("B02", "B03", "B04", "B08")], axis=-1)
        data[split == "train"][0].append(feats[seg >= 0].astype(np.float64))
        data[split == "train"][1].append(seg[seg >= 0])
    (xt, yt), (xs, ys) = [(np.concatenate(a), np.concatenate(b)) for a, b in data.values()]
    seen = np.isin(ys, yt)  # a class absent from the few train patches cannot be learned
    xs, ys = xs[seen], ys[seen]
    mu, sd = xt.mean(0), xt.std(0)
    clf = LogisticRegression(max_iter=3000).fit((xt - mu) / sd, yt)
    assert len(set(ys)) >= 5 and clf.score((xs - mu) / sd, ys) > 0.9


def test_sample_class_signatures_are_far_apart_against_the_noise():
    s2_sig, _ = sample_benv2.class_signatures()
    std = np.array([ben.BAND_STATS["std"][b] for b in ben.BAND_NAMES])
    z = s2_sig / std  # in units of the real per-band spread
    gaps = np.linalg.norm(z[:, None] - z[None], axis=-1)[np.triu_indices(19, 1)]
    # 5 % multiplicative pixel noise is < 0.1 std per band: classes lie many times that apart
    assert gaps.min() > 1.0
    s1 = sample_benv2.s1_signatures()
    assert s1.shape == (19, 2) and (s1[:, 0] > s1[:, 1]).all()  # VH below VV
    assert -35 < s1.min() and s1.max() < 10


def test_sample_is_deterministic_by_seed(tmp_path):
    a = sample_benv2.write_sample_archive(tmp_path / "a", seed=1, n_patches=3, n_excluded=1)
    b = sample_benv2.write_sample_archive(tmp_path / "b", seed=1, n_patches=3, n_excluded=1)
    c = sample_benv2.write_sample_archive(tmp_path / "c", seed=2, n_patches=3, n_excluded=1)
    assert _rows(a) == _rows(b) and _rows(a) != _rows(c)
    files = sorted(p.relative_to(a) for p in a.rglob("*.tif"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.tif")) and len(files) == 4 * 15
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    with pytest.raises(ValueError, match="at least 3"):
        sample_benv2.write_sample_archive(tmp_path / "d", n_patches=2)


# ------------------------------------------------------------------ bad patches

def _expect(raw, damage, match, parts=v2.PARTS):
    lay = v2.Layout.at(raw)
    meta = v2.read_metadata(lay)
    patch = meta.patches[3]
    damage(lay, patch, meta.s1_names[3])
    with pytest.raises(InvalidPatch, match=match):
        v2.read_patch(lay, patch, meta.s1_names[3], parts)
    skipped = []
    with pytest.warns(UserWarning, match="skipped"):
        got = [p for p, _ in v2.iter_patches(lay, meta, parts=parts, skip_invalid=True,
                                             skipped=skipped)]
    assert got == meta.patches[:3] + meta.patches[4:]
    assert len(skipped) == 1 and patch in skipped[0]["item"]
    assert pytest.raises(InvalidPatch, lambda: list(v2.iter_patches(lay, meta, parts=parts)))


@pytest.mark.parametrize("part,damage,match", [
    ("s2", lambda lay, p, s: shutil.rmtree(lay.s2_dir(p)), r"S2 folder of patch {p} \(listed"),
    ("s1", lambda lay, p, s: shutil.rmtree(lay.s1_dir(s)), r"S1 folder of {s} \(s1_name of patch {p}"),
    ("map", lambda lay, p, s: lay.map_path(p).unlink(), r"reference map of patch {p} is missing"),
])
def test_check_present(raw, part, damage, match):
    lay = v2.Layout.at(raw)
    meta = v2.read_metadata(lay)
    assert v2.check_present(lay, meta).patches == meta.patches
    damage(lay, meta.patches[5], meta.s1_names[5])
    with pytest.raises(InvalidPatch, match=match.format(p=meta.patches[5], s=meta.s1_names[5])):
        v2.check_present(lay, meta)
    skipped = []
    with pytest.warns(UserWarning, match="skipped"):
        got = v2.check_present(lay, meta, skip_invalid=True, skipped=skipped)
    assert got.patches == meta.patches[:5] + meta.patches[6:] and len(skipped) == 1
    np.testing.assert_array_equal(got.labels, np.delete(meta.labels, 5, axis=0))
    assert got.s1_names == meta.s1_names[:5] + meta.s1_names[6:]
    if part != "s2":  # a part that is not asked for is not looked for
        others = tuple(x for x in v2.PARTS if x != part)
        assert v2.check_present(lay, meta, parts=others).patches == meta.patches


def test_patch_without_folder(raw):
    _expect(raw, lambda lay, p, s: shutil.rmtree(lay.s2_dir(p)),
            r"BigEarthNet-S2/.*: S2 folder of patch .* \(listed in metadata.parquet\) is missing")


def test_missing_band(raw):
    _expect(raw, lambda lay, p, s: (lay.s2_dir(p) / f"{p}_B8A.tif").unlink(),
            r"_B8A.tif: band file B8A is missing")


def test_band_of_wrong_size(raw):
    _expect(raw, lambda lay, p, s: _write_tif(lay.s2_dir(p) / f"{p}_B03.tif",
                                              np.zeros((60, 60), np.uint16)),
            r"_B03.tif: band B03 is 60x60, expected 120x120", parts=("s2",))


def test_missing_s1_file(raw):
    _expect(raw, lambda lay, p, s: lay.s1_path(s, "VH").unlink(), r"_VH.tif: S1 VH file is missing",
            parts=("s1",))


def test_s1_name_pointing_nowhere(raw):
    _expect(raw, lambda lay, p, s: shutil.rmtree(lay.s1_dir(s)),
            r"BigEarthNet-S1/.*: S1 folder of .* \(s1_name of patch .*\) is missing", parts=("s1",))


def test_s1_of_wrong_dtype(raw):
    _expect(raw, lambda lay, p, s: _write_tif(lay.s1_path(s, "VV"), np.zeros((120, 120), np.int16)),
            r"_VV.tif: S1 VV has dtype int16, expected float32", parts=("s1",))


def test_missing_map(raw):
    _expect(raw, lambda lay, p, s: lay.map_path(p).unlink(), r"_reference_map.tif: reference map "
            r"is missing", parts=("map",))


def test_map_of_wrong_size(raw):
    _expect(raw, lambda lay, p, s: _write_tif(lay.map_path(p), np.full((60, 60), 211, np.uint16)),
            r"_reference_map.tif: reference map is 60x60, expected 120x120", parts=("map",))


def test_map_of_wrong_dtype(raw):
    _expect(raw, lambda lay, p, s: _write_tif(lay.map_path(p), np.full((120, 120), 21, np.uint8)),
            r"_reference_map.tif: reference map has dtype uint8, expected uint16", parts=("map",))


# ------------------------------------------------------------------ pixel-map noise

def test_map_noise_uses_the_shared_published_count():
    # 30 pairs at 15 %: 4.5 rounds down to 4 (archives.noise.pick_count, shared with BEN/DLRSD)
    clean = np.zeros((30, 19), np.float32)
    clean[np.arange(30), np.arange(30) % 19] = 1
    assert len(benv2_noise.plan_map_noise(clean, 15, np.random.default_rng(0))) == 4
    assert len(benv2_noise.plan_map_noise(clean[:29], 10, np.random.default_rng(0))) == 2
    with pytest.raises(ValueError, match="0..100"):
        benv2_noise.plan_map_noise(clean, 101, np.random.default_rng(0))


def test_plan_picks_distinct_pairs_and_other_classes():
    rng = np.random.default_rng(0)
    clean = (rng.random((300, 19)) < 0.15).astype(np.float32)
    pairs = int(clean.sum())
    for level in (10, 30, 60):
        plan = benv2_noise.plan_map_noise(clean, level, np.random.default_rng(level))
        assert len(plan) == pairs * level // 100
        assert len({(i, c) for i, c, _ in plan}) == len(plan)  # without replacement
        assert (clean[plan[:, 0], plan[:, 1]] == 1).all() and (plan[:, 2] != plan[:, 1]).all()
        assert plan[:, 2].min() >= 0 and plan[:, 2].max() <= 18
        assert (np.diff(plan[:, 0]) >= 0).all()
        np.testing.assert_array_equal(plan, benv2_noise.plan_map_noise(
            clean, level, np.random.default_rng(level)))
    plan = benv2_noise.plan_map_noise(clean, 60, np.random.default_rng(1))
    assert len(np.unique(plan[:, 2])) == 19  # every class gets drawn somewhere
    per = benv2_noise.picks_per_patch(plan, len(clean))
    assert len(per) == 300 and sum(len(p) for p in per) == len(plan)
    assert all((plan[plan[:, 0] == i][:, 1:] == per[i]).all() for i in (0, 7, 299))


def test_apply_picks_by_hand():
    seg = np.array([[0, 0, 5, -1],
                    [0, 5, 5, -1],
                    [7, 7, 5, 18]], np.int8)
    noisy, n = benv2_noise.apply_picks(seg, np.array([[0, 5], [5, 7]]))
    # 0 -> 5 and 5 -> 7 both read the clean map: no chaining 0 -> 5 -> 7
    np.testing.assert_array_equal(noisy, [[5, 5, 7, -1], [5, 7, 7, -1], [7, 7, 7, 18]])
    assert n == 2 and noisy.dtype == np.int8 and seg[0, 0] == 0  # the clean map is not touched
    assert benv2_noise.apply_picks(seg, np.array([[3, 4]])) == (None, 0)  # class 3 absent
    np.testing.assert_array_equal(np.flatnonzero(benv2_noise.noisy_multi_hot(np.zeros(19), noisy)),
                                  [5, 7, 18])
    clean = benv2_noise.classes_present(seg)
    assert np.flatnonzero(clean).tolist() == [0, 5, 7, 18]
    assert benv2_noise.noisy_multi_hot(clean, None) is not None
    np.testing.assert_array_equal(benv2_noise.noisy_multi_hot(clean, None), clean)


def test_map_noise_counts_and_invariants_on_the_sample(sample_root, meta):
    lay = v2.Layout.at(sample_root)
    train = [i for i, s in enumerate(meta.split) if s == "train"]
    maps = [v2.read_reference_map(lay, meta.patches[i]) for i in train]
    clean = meta.labels[train]
    pairs = int(clean.sum())
    for level in (10, 30, 60):
        noisy_maps, noisy, st = benv2_noise.inject_map_noise(maps, clean, level,
                                                             np.random.default_rng([42, level]))
        # sample labels are the classes of the maps: every picked pair changes a region
        assert st["pairs_total"] == pairs and st["images_total"] == len(train)
        assert st["pairs_picked"] == st["pairs_changed"] == pairs * level // 100
        for seg, nmap, c, n in zip(maps, noisy_maps, clean, noisy):
            if nmap is None:
                np.testing.assert_array_equal(n, c)
                continue
            assert ((seg < 0) == (nmap < 0)).all()  # unlabelled pixels stay unlabelled
            np.testing.assert_array_equal(n, benv2_noise.classes_present(nmap))
            for cls in np.unique(seg[seg >= 0]):  # a region changes as a whole, to one class
                assert len(np.unique(nmap[seg == cls])) == 1
        assert st["images_changed"] == int((noisy != clean).any(axis=1).sum()) > 0
        assert sum(m is not None for m in noisy_maps) >= st["images_changed"]
    with pytest.raises(ValueError, match="maps but"):
        benv2_noise.inject_map_noise(maps[:-1], clean, 10, np.random.default_rng(0))


def test_map_noise_skips_pairs_absent_from_the_map():
    seg = np.zeros((4, 4), np.int8)  # only class 0 in the map
    clean = np.zeros((1, 19), np.float32)
    clean[0, [0, 4]] = 1  # label 4 has no region
    _, noisy, st = benv2_noise.inject_map_noise([seg], clean, 100, np.random.default_rng(3))
    assert st["pairs_picked"] == 2 and st["pairs_changed"] == 1
    assert noisy[0].sum() == 1 and noisy[0, 0] == 0  # class 0's region became one other class


@pytest.mark.parametrize("column, value, problem", [
    ("patch_id", "../{p}", "holds a path separator"),
    ("patch_id", "..{p}", "holds '..'"),
    ("patch_id", "sub\\{p}", "holds a path separator"),
    ("s1_name", "../../BigEarthNet-S1/x/{s}", "holds a path separator"),
])
def test_names_that_would_leave_the_root_are_refused_or_skipped(raw, column, value, problem):
    rows = _rows(raw)
    bad = value.format(p=rows[2]["patch_id"], s=rows[2]["s1_name"])
    rows[2][column] = bad
    _write_rows(raw, rows)
    lay = v2.Layout.at(raw)
    with pytest.raises(InvalidPatch) as info:
        v2.read_metadata(lay)
    assert str(info.value) == (f"{lay.metadata}: row 2 (patch {rows[2]['patch_id']}): {column} "
                               f"{bad!r} is not a folder name ({problem}); names must not leave "
                               "the root")
    skipped = []
    with pytest.warns(UserWarning, match="skipped"):
        got = v2.read_metadata(lay, skip_invalid=True, skipped=skipped)
    assert len(got) == N_PATCHES - 1 and bad not in got.patches + got.s1_names
    assert len(skipped) == 1 and problem in skipped[0]["reason"]
