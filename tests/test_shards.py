"""Sharded records in a seeded random order, noise overlays, and the pipeline reading them."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from archives import benv2, dlrsd, overlay, shards
from archives.pipeline import make_dataset
from archives.record_files import overlay_name, resolve
from archives.report import PrepError

SEED, LEVELS = 5, [30, 50]


def _prep(raw, out, **kw):
    kw = {"noise_levels": LEVELS, "seed": SEED, "progress": False, **kw}
    return dlrsd.prepare(raw / "UCMerced_LandUse", raw / "DLRSD", out, **kw)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    from archives import sample

    raw = tmp_path_factory.mktemp("shards_raw")
    sample.write_sample_archive(raw, seed=0, per_class=10, scenes=["beach", "forest", "harbor"])
    return raw


@pytest.fixture(scope="module")
def sharded(raw, tmp_path_factory):
    """DLRSD sample (21 train, 3 val, 6 test) as shards of 6 records and two overlays."""
    out = tmp_path_factory.mktemp("sharded")
    return out / "TFRecord", _prep(raw, out, shard_size="6")


@pytest.fixture(scope="module")
def files(raw, tmp_path_factory):
    """The same prep (same seed) as one file per split with full noise copies."""
    out = tmp_path_factory.mktemp("files")
    _prep(raw, out, layout="files")
    return out / "TFRecord"


def _parsed(paths, **kw):
    return {e["patch_name"].numpy().decode(): {k: v.numpy() for k, v in e.items()}
            for e in dlrsd.parse_records(paths, **kw)}


def _names(ds):
    return [n.decode() for b in ds for n in b["patch_name"].numpy()]


def test_shard_counts_names_and_seeded_order(sharded, files):
    out, report = sharded
    meta = json.loads((out / "records_meta.json").read_text())
    assert meta["layout"] == "shards"
    train = meta["splits"]["train"]
    # 21 records in ceil(21 / 6) = 4 even shards: cuts at round(k * 21 / 4) = 0, 5, 10, 16, 21
    assert train["shards"] == [f"train-0000{k}-of-00004.tfrecord" for k in range(4)]
    assert train["records"] == [5, 5, 6, 5]
    assert meta["splits"]["val"] == {"shards": ["val.tfrecord"], "records": [3],
                                     "digest": meta["splits"]["val"]["digest"]}
    assert meta["overlays"] == {"30": overlay_name(30), "50": overlay_name(50)}
    assert report.records == {"train": 21, "val": 3, "test": 6, "30": 21, "50": 21}
    by_name = sorted(_parsed([files / "train.tfrecord"]))  # the files layout: name order
    got = [n for f in train["shards"]
           for n in (e["patch_name"].numpy().decode() for e in dlrsd.parse_records([out / f]))]
    assert got == [by_name[i] for i in shards.record_order(21, SEED, "train")] != by_name
    assert train["digest"] == overlay.names_digest(got)
    # "train.tfrecord" names the split: its shards, in shard order, with their counts
    res = resolve([str(out / "train.tfrecord")])
    assert [Path(f).name for f in res.files] == train["shards"] and res.shards
    assert res.counts == (5, 5, 6, 5) and resolve([str(out / "train-*.tfrecord")]).files == res.files


def test_plan_helpers():
    assert shards.shard_bounds(10, 4) == [(0, 3), (3, 7), (7, 10)]
    assert shards.shard_bounds(3, 100) == [(0, 3)]
    assert shards.shard_names("val", 1) == ["val.tfrecord"]
    assert shards.records_per_shard("1000", 500) == 1000
    assert shards.records_per_shard("1MB", 1000) == 1048
    assert shards.parse_select("3/16") == (3, 16)
    for bad in ("16/16", "a/b", "-1/4"):
        with pytest.raises(PrepError, match="--shard"):
            shards.parse_select(bad)
    with pytest.raises(PrepError, match="--shard-size"):
        shards.parse_shard_size("0")
    order = shards.record_order(50, 1, "train")
    assert sorted(order) == list(range(50)) and list(order) == list(shards.record_order(50, 1, "train"))
    assert list(order) != list(shards.record_order(50, 2, "train"))


def test_overlays_reproduce_the_full_noise_files(sharded, files):
    out, _ = sharded
    for level in LEVELS:
        joined = _parsed([out / "train.tfrecord", out / overlay_name(level)])
        full = _parsed([files / f"train_noise_prcnt{level}.tfrecord"])
        assert joined.keys() == full.keys() and len(joined) == 21
        changed = 0
        for name, e in full.items():
            for key in ("image", "seg_map", "noisy_seg_map", "label", "noisy_label"):
                np.testing.assert_array_equal(joined[name][key], e[key], err_msg=f"{name} {key}")
            changed += not np.array_equal(e["seg_map"], e["noisy_seg_map"])
        assert changed > 5  # the comparison covers changed maps, not only clean ones
    # the pixels are stored once: an overlay is a small fraction of the train shards
    shard_bytes = sum(p.stat().st_size for p in out.glob("train-*.tfrecord"))
    assert (out / overlay_name(50)).stat().st_size < shard_bytes / 100


def test_both_layouts_save_the_same_report_fields(sharded, files):
    """The noise counts, palette misses and tallies of the report are the same for the two
    layouts (one helper fills them), and the saved report is the one returned."""
    out, returned = sharded
    rep = {k: json.loads((d / "prep_report.json").read_text()) for k, d in
           (("shards", out), ("files", files))}
    assert rep["shards"]["noise"] == json.loads(json.dumps(returned.noise))
    assert set(rep["shards"]["noise"]) == {str(n) for n in LEVELS}
    for key in ("noise", "palette_misses", "skipped"):
        assert rep["files"][key] == rep["shards"][key], key
    for key in ("resized_files", "label_map_disagreements", "multi_label_source"):
        assert rep["files"]["extra"][key] == rep["shards"]["extra"][key], key
    assert rep["files"]["noise"]["50"]["images_total"] == 21
    assert 0 < rep["files"]["noise"]["30"]["images_changed"] <= 21
    assert rep["shards"]["time_s"] > 0 and rep["files"]["time_s"] > 0
    assert rep["shards"]["records"] == rep["files"]["records"]
    for d in (out, files):
        assert json.loads((d / "records_meta.json").read_text())


def test_lut_helpers_and_remap():
    clean = np.array([[-1, 0, 1], [2, 1, 0]], np.int8)
    noisy = np.array([[-1, 3, 1], [2, 1, 3]], np.int8)
    lut = overlay.lut_from_maps(clean, noisy, 5)
    assert lut.tolist() == [3, 1, 2, 3, 4]
    np.testing.assert_array_equal(overlay.remap(clean, lut), noisy)
    with pytest.raises(ValueError, match="not a class remap"):
        overlay.lut_from_maps(clean, np.array([[-1, 3, 1], [2, 1, 4]], np.int8), 5)
    assert overlay.lut_from_picks(np.array([[1, 4]]), 5).tolist() == [0, 4, 2, 3, 4]


def test_benv2_overlays_reproduce_both_rules(tmp_path):
    import prep_BEN_noisy
    from archives import sample_benv2

    raw = sample_benv2.write_sample_archive(tmp_path / "raw", seed=3, n_patches=30, n_excluded=2)
    sizes = {}
    for layout, levels in (("files", ["20", "60"]), ("shards", ["20", "60"]),
                           ("one", ["60"]), ("six", ["10", "20", "30", "40", "50", "60"])):
        argv = ["-r", str(raw), "-o", str(tmp_path / layout), "--workers", "1", "--quiet",
                "--noise-levels", *levels, "--shard-size", "7"]
        argv += ["--layout", "files"] if layout == "files" else []
        assert prep_BEN_noisy.main(argv) == 0
        sizes[layout] = sum(p.stat().st_size for p in (tmp_path / layout / "TFRecord").iterdir())
    full, sh = tmp_path / "files/TFRecord", tmp_path / "shards/TFRecord"
    assert len(list(sh.glob("train-*.tfrecord"))) > 1
    for rule in ("pairs", "map"):
        for level in (20, 60):
            kw = dict(bands="s1", noise_rule=rule)
            a = {e["patch_name"].numpy(): e for e in benv2.parse_records(
                [sh / "train.tfrecord", sh / overlay_name(level)], **kw)}
            b = {e["patch_name"].numpy(): e for e in benv2.parse_records(
                [full / f"train_noise_prcnt{level}.tfrecord"], **kw)}
            assert a.keys() == b.keys()
            for name in b:
                for key in ("noisy_label", "noisy_seg_map", "seg_map", "label"):
                    np.testing.assert_array_equal(a[name][key].numpy(), b[name][key].numpy())
    rep = {k: json.loads((tmp_path / k / "TFRecord/prep_report.json").read_text())
           for k in ("files", "shards")}
    assert rep["files"]["noise"] == rep["shards"]["noise"]
    assert rep["files"]["extra"]["map_noise"] == rep["shards"]["extra"]["map_noise"]
    # six noise levels cost at most 1.2x the output of one (a full copy each: about 3x)
    assert sizes["six"] <= 1.2 * sizes["one"] and sizes["files"] > 1.5 * sizes["one"]


def test_every_record_once_per_epoch_and_orders_differ(sharded):
    out, _ = sharded
    paths = [str(out / "train.tfrecord"), str(out / overlay_name(30))]

    def run(epoch, **kw):
        return make_dataset(paths, "DLRSD", training=True, batch_size=4, seed=1, epoch=epoch,
                            **kw)

    orders = [_names(run(e)) for e in range(3)]
    assert all(sorted(o) == sorted(orders[0]) and len(set(o)) == 21 for o in orders)
    assert len({tuple(o) for o in orders}) == 3
    assert _names(run(1)) == orders[1]  # a stateless function of (seed, epoch)
    # a small window: every record still once; shard order permuted per epoch
    small = [_names(run(e, shuffle_buffer=2, cycle=1)) for e in range(4)]
    assert all(sorted(o) == sorted(orders[0]) for o in small)
    firsts = {frozenset(o[:2]) for o in small}
    assert len(firsts) > 1
    indices = [int(i) for b in run(0) for i in b["sample_index"].numpy()]
    assert sorted(indices) == list(range(21))


def test_resume_across_shards_and_overlays(sharded):
    out, _ = sharded
    paths = [str(out / "train.tfrecord"), str(out / overlay_name(50))]

    def batches(**kw):
        ds = make_dataset(paths, "DLRSD", training=True, batch_size=4, seed=3, epoch=2,
                          shuffle_buffer=8, **kw)
        return [{k: v.numpy() for k, v in b.items()} for b in ds]

    full = batches()
    assert len(full) == 6
    for skipped in (batches(skip_batches=2), [
            {k: v.numpy() for k, v in b.items()}
            for b in make_dataset(paths, "DLRSD", training=True, batch_size=4, seed=3, epoch=2,
                                  shuffle_buffer=8).skip(2)]):
        assert len(skipped) == 4
        for a, b in zip(full[2:], skipped, strict=True):
            for k in a:
                np.testing.assert_array_equal(a[k], b[k])


def test_noisy_train_paths_use_the_overlay(sharded, files):
    from config import Config

    out, _ = sharded
    base = dict(model_name="GRID-BCE", dataset="DLRSD", noise_prcnt=50)
    cfg = Config.from_dict({**base, "train_tfrecord_paths": str(out / "train.tfrecord")})
    assert cfg.noisy_train_paths == (str(out / "train.tfrecord"), str(out / overlay_name(50)))
    cfg = Config.from_dict({**base, "train_tfrecord_paths": str(files / "train.tfrecord")})
    assert cfg.noisy_train_paths == (str(files / "train_noise_prcnt50.tfrecord"),)


def _train_cfg(records: Path, out: Path, **kw):
    from conftest import run_config

    return run_config(records, out, batch_size=4, **kw)


def test_training_on_shards_with_overlay_resumes_exactly(sharded, tmp_path, monkeypatch):
    import training
    from models.robust import count_records

    out, _ = sharded
    assert count_records(_train_cfg(out, tmp_path).noisy_train_paths) == 21
    ref_cfg = _train_cfg(out, tmp_path / "ref", nb_epoch=2)
    ref = training.train(ref_cfg, show_progress=False)
    cfg = _train_cfg(out, tmp_path / "resumed", nb_epoch=2)
    real, calls = training._to_numbers, []

    def interrupting(*args):
        result = real(*args)
        calls.append(1)
        if len(calls) == 8:  # mid epoch 2 (6 steps per epoch)
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(training, "_to_numbers", interrupting)
    with pytest.raises(KeyboardInterrupt):
        training.train(cfg, show_progress=False)
    monkeypatch.setattr(training, "_to_numbers", real)
    final = training.train(cfg, resume=True, show_progress=False)
    assert final.completed and int(final.optimizer.iterations) == int(ref.optimizer.iterations)
    for a, b in zip(_weights(final), _weights(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def _weights(result):
    return [np.asarray(v) for m in result.model.keras_models.values() for v in m.weights]


def _train_main(cfg, tmp_path, capsys):
    import train

    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg.to_dict()))
    rc = train.main([str(path), "--no-progress"])
    return rc, capsys.readouterr().err


def test_missing_or_mismatched_overlay_is_a_named_error(sharded, raw, tmp_path, capsys):
    out, _ = sharded
    records = tmp_path / "rec"
    shutil.copytree(out, records)
    (records / overlay_name(50)).unlink()
    rc, err = _train_main(_train_cfg(records, tmp_path / "a"), tmp_path, capsys)
    assert rc == 2 and f"error: {records / overlay_name(50)}: noise overlay not found" in err
    other = tmp_path / "other"
    _prep(raw, other, seed=SEED + 1, noise_levels=[50], shard_size="6")
    shutil.copy(other / "TFRecord" / overlay_name(50), records / overlay_name(50))
    rc, err = _train_main(_train_cfg(records, tmp_path / "b"), tmp_path, capsys)
    assert rc == 2 and f"error: {records / overlay_name(50)}: made for other records" in err
    # an overlay of another size: the count is named
    ov = overlay.load_overlay(other / "TFRecord" / overlay_name(50))
    overlay.write_overlay(records / overlay_name(50), names=ov.names[:20],
                          labels={"noisy_label": ov.arrays["noisy_label"][:20]},
                          map_lut=ov.arrays["map_lut"][:20], level=50, seed=0, archive="DLRSD")
    with pytest.raises(ValueError, match="made for 20 records, but .* hold 21"):
        make_dataset([str(records / "train.tfrecord"), str(records / overlay_name(50))], "DLRSD",
                     training=True, batch_size=4)


def test_array_tasks_write_the_same_records(raw, sharded, tmp_path):
    out, _ = sharded
    task = tmp_path / "tasks"
    first = _prep(raw, task, shard_size="6", shard="1/2")
    assert first.extra["finished"] is False and not (task / "TFRecord/records_meta.json").exists()
    _prep(raw, task, shard_size="6", shard="0/2")
    for p in sorted(out.iterdir()):
        if p.suffix in (".tfrecord", ".npz"):
            assert (task / "TFRecord" / p.name).read_bytes() == p.read_bytes(), p.name
    a = json.loads((task / "TFRecord/records_meta.json").read_text())
    b = json.loads((out / "records_meta.json").read_text())
    assert a["splits"] == b["splits"] and a["overlays"] == b["overlays"]


def test_a_failed_shard_publishes_nothing(tmp_path):
    def encode(item):
        if item == "bad":
            raise PrepError(f"{item}: cannot be read")
        return item, item.encode(), None

    tasks = shards.plan_tasks(tmp_path, {"train": ["a", "b", "c", "bad"]}, seed=0, per_shard=1,
                              encode=encode, skip_invalid=False)["train"]
    with pytest.raises(PrepError, match="bad: cannot be read"):
        shards.write_shards(tasks, None, progress=False)
    assert list(tmp_path.iterdir()) == []
    tasks = shards.plan_tasks(tmp_path, {"train": ["a", "bad"]}, seed=0, per_shard=1,
                              encode=encode, skip_invalid=True)["train"]
    results = shards.write_shards(tasks, None, progress=False)
    assert sorted(p.name.split(".tmp-")[0] for p in tmp_path.iterdir()) == \
        ["train-00000-of-00002", "train-00001-of-00002"]  # temporaries until published
    shards.publish(results)
    assert sorted(n for r in results for n in r.names) == ["a"]
    assert [r.skipped for r in results if r.skipped] == [[("bad", "bad: cannot be read")]]
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        ["train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]


def test_a_published_schema_cannot_be_sharded(raw, tmp_path):
    with pytest.raises(PrepError, match="--layout shards: the published schema"):
        _prep(raw, tmp_path, schema="published", layout="shards")
    with pytest.raises(PrepError, match="--shard 0/2: only the shards layout"):
        _prep(raw, tmp_path, layout="files", shard="0/2")


def test_records_read_in_file_order_with_globs(sharded):
    out, _ = sharded
    ds = make_dataset([str(out / "train-*.tfrecord")], "DLRSD", training=False, batch_size=5)
    names = _names(ds)
    assert names == list(_parsed([out / "train.tfrecord"]))
    idx = [int(i) for b in ds for i in b["sample_index"].numpy()]
    assert idx == list(range(21))
    with pytest.raises(ValueError, match="no record file matches"):
        make_dataset([str(out / "nope-*.tfrecord")], "DLRSD", training=False, batch_size=5)


@pytest.fixture(autouse=True)
def _small_graphs():
    yield
    tf.keras.backend.clear_session()
