"""The training order and draws of archives/pipeline.py on a small hand-made shard set: the
seeded shuffle buffer over shards, the window shuffle of files listed one by one, and the
vectorised SplitMix64 augmentation draws."""
import json

import numpy as np
import pytest
import tensorflow as tf

from archives import dlrsd
from archives.pipeline import (batch_draws, epoch_seeds, make_dataset, seeded_shuffle,
                               splitmix64, uniform_draws, window_shuffle)

SHARDS, PER_SHARD = 3, 7
N = SHARDS * PER_SHARD


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    """21 DLRSD compact records as 3 shards of 7 (records_meta.json lists them); record k is
    named rec<k> and its pixels hold k, so a batch shows which records it holds."""
    d = tmp_path_factory.mktemp("order")
    names = [f"train-{s:05d}-of-{SHARDS:05d}.tfrecord" for s in range(SHARDS)]
    for s, fname in enumerate(names):
        with tf.io.TFRecordWriter(str(d / fname)) as w:
            for k in range(s * PER_SHARD, (s + 1) * PER_SHARD):
                image = np.full((256, 256, 3), k, np.uint8)
                seg = np.full((256, 256), k % 17, np.int8)
                label = np.zeros(17, np.float32)
                label[k % 17] = 1
                w.write(dlrsd.encode_example(image, seg, seg, label, label, f"rec{k:02d}",
                                             "compact"))
    meta = {"format": 1, "archive": "DLRSD", "classes": list(dlrsd.CLASS_NAMES),
            "layout": "shards",
            "splits": {"train": {"shards": names, "records": [PER_SHARD] * SHARDS}}}
    (d / "records_meta.json").write_text(json.dumps(meta))
    return [str(d / "train.tfrecord")]


def _batches(paths, **kw):
    kw = {"training": True, "batch_size": 4, "seed": 3, "epoch": 0, "compact": True,
          "shuffle_buffer": 5, "cycle": 2, **kw}
    return [{k: v.numpy() for k, v in b.items()} for b in make_dataset(paths, "DLRSD", **kw)]


def _names(batches):
    return [n.decode() for b in batches for n in b["patch_name"]]


def test_sharded_epochs_once_each_fixed_by_seed_and_epoch(shard_set):
    orders = [_names(_batches(shard_set, epoch=e)) for e in range(4)]
    for order in orders:  # every record exactly once per epoch
        assert sorted(order) == [f"rec{k:02d}" for k in range(N)]
    assert len({tuple(o) for o in orders}) == 4  # epochs differ
    assert _names(_batches(shard_set, seed=4)) != orders[0]
    # two fresh datasets of the same (seed, epoch): the same batches, draws included
    a, b = _batches(shard_set, epoch=2), _batches(shard_set, epoch=2)
    assert len(a) == len(b) == 6
    for x, y in zip(a, b, strict=True):
        assert sorted(x) == sorted(y)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    # the pixels are the record's: the shuffle moved whole records, the index rides along
    for batch in a:
        ks = [int(n.decode()[3:]) for n in batch["patch_name"]]
        assert list(batch["sample_index"]) == ks
        assert [int(img[0, 0, 0]) for img in batch["image"]] == ks


def test_sharded_skip_batches_is_the_tail_of_the_epoch(shard_set):
    full = _batches(shard_set, epoch=1)
    for k in (1, 4):
        tail = _batches(shard_set, epoch=1, skip_batches=k)
        assert len(tail) == len(full) - k
        for x, y in zip(full[k:], tail, strict=True):
            for key in x:
                np.testing.assert_array_equal(x[key], y[key])


def test_order_does_not_depend_on_the_global_seed(shard_set):
    """tf.data's own shuffle(seed=...) mixes in tf.random.set_seed; the pipeline must not."""
    orders = []
    for global_seed in (1, 987):
        tf.random.set_seed(global_seed)
        orders.append(_names(_batches(shard_set, epoch=1)))
    assert orders[0] == orders[1]


def test_seeded_shuffle_is_a_permutation_fixed_by_its_seeds():
    ds = tf.data.Dataset.range(50).map(lambda i: (i, tf.strings.as_string(i)))

    def order(seeds, buffer=8):
        return [int(i) for i, _ in seeded_shuffle(ds, buffer, seeds)]

    a = order(epoch_seeds(1, 0))
    assert sorted(a) == list(range(50)) and a != list(range(50))
    assert order(epoch_seeds(1, 0)) == a and order(epoch_seeds(1, 1)) != a
    # a buffer of 8: no element leaves before the 7 ahead of it came in
    assert all(pos >= i - 7 for pos, i in enumerate(a))
    assert len({epoch_seeds(s, e) for s in range(3) for e in range(3)}) == 9
    assert all(0 not in epoch_seeds(s, e) for s in range(3) for e in range(3))


def test_window_shuffle_permutes_each_window_of_consecutive_elements():
    ds = tf.data.Dataset.range(10).map(lambda i: (i, tf.constant(0, tf.int64)))

    def order(seed, epoch):
        return [int(i) for i, _ in window_shuffle(ds, 4, seed, epoch)]

    a = order(2, 0)
    assert [sorted(a[i:i + 4]) for i in (0, 4, 8)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert order(2, 0) == a
    assert len({tuple(order(2, e)) for e in range(6)}) > 1


def test_files_listed_one_by_one_use_windows(shard_set, tmp_path):
    """Without records_meta.json (files named one by one, e.g. published files in name order)
    the records are shuffled in windows of shuffle_buffer, each a full permutation."""
    from pathlib import Path

    folder = Path(shard_set[0]).parent
    files = sorted(str(p) for p in folder.glob("train-*.tfrecord"))
    order = _names(_batches(files, shuffle_buffer=7, epoch=0))
    assert [sorted(order[i:i + 7]) for i in (0, 7, 14)] == [
        [f"rec{k:02d}" for k in range(s, s + 7)] for s in (0, 7, 14)]
    assert order != sorted(order)


def test_splitmix64_matches_the_reference_generator():
    """SplitMix64 seeded with 0: its first outputs are 0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4
    (the published test vector), i.e. the output function at 1 and 2 times the golden step."""
    golden = 0x9E3779B97F4A7C15
    states = tf.constant([golden, (2 * golden) % 2**64], tf.uint64)
    assert [int(x) for x in splitmix64(states).numpy()] == [0xE220A8397B1DCDAF,
                                                            0x6E789E6AA1B965F4]


def test_draws_depend_on_the_record_index_alone():
    u = uniform_draws(3, 1, tf.constant([7, 2, 40], tf.int64), 5).numpy()
    v = uniform_draws(3, 1, tf.constant([2, 5, 7, 9], tf.int64), 5).numpy()
    np.testing.assert_array_equal(u[0], v[2])
    np.testing.assert_array_equal(u[1], v[0])
    assert not np.array_equal(u[0], uniform_draws(3, 2, tf.constant([7], tf.int64), 5)[0])
    assert not np.array_equal(u[0], uniform_draws(4, 1, tf.constant([7], tf.int64), 5)[0])
    many = uniform_draws(0, 0, tf.range(20000, dtype=tf.int64), 5).numpy()
    assert many.min() >= 0 and many.max() < 1
    assert np.all(np.abs(many.mean(0) - 0.5) < 0.01)
    assert abs(np.corrcoef(many[:, 0], many[:, 1])[0, 1]) < 0.03
    d = batch_draws(0, 0, tf.range(3000, dtype=tf.int64), 256, 256, 224)
    assert set(d["_oy"].numpy()) == set(range(33)) == set(d["_ox"].numpy())
    assert 0.45 < d["_flip_lr"].numpy().mean() < 0.55
    delta = d["_delta"].numpy()
    assert delta.min() >= -0.2 and delta.max() < 0.2 and delta.min() < -0.19 < 0.19 < delta.max()
    assert set(batch_draws(0, 0, tf.range(5, dtype=tf.int64), 120, 120, None)["_oy"].numpy()) == {0}


def test_epochs_reuse_file_forms_and_overlay_until_a_file_changes(tmp_path, monkeypatch):
    """make_dataset runs once per epoch: the files' forms and the checked overlay are kept for
    unchanged files, and read again when a file is replaced."""
    from archives import common, overlay
    from archives.record_files import overlay_name

    d = tmp_path / "rec"
    d.mkdir()
    names = []
    with tf.io.TFRecordWriter(str(d / "train.tfrecord")) as w:
        for k in range(6):
            seg = np.full((256, 256), k, np.int8)
            label = np.eye(17, dtype=np.float32)[k]
            names.append(f"r{k}")
            w.write(dlrsd.encode_example(np.full((256, 256, 3), k, np.uint8), seg, seg, label,
                                         label, names[-1], "compact"))
    lut = np.tile(np.arange(17, dtype=np.int8), (6, 1))
    lut[:, 0] = 5  # class 0 becomes class 5 in the noisy map

    def write_overlay(noisy):
        overlay.write_overlay(d / overlay_name(50), names=names, labels={"noisy_label": noisy},
                              map_lut=lut, level=50, seed=0, archive="DLRSD")

    write_overlay(np.eye(17, dtype=np.uint8)[[1, 1, 1, 1, 1, 1]])
    paths = [str(d / "train.tfrecord"), str(d / overlay_name(50))]
    reads = {"forms": 0, "overlays": 0}
    form_of, load = dlrsd.record_form, overlay.load_overlay

    def counting_form(path):
        reads["forms"] += 1
        return form_of(path)

    def counting_load(path):
        reads["overlays"] += 1
        return load(path)

    monkeypatch.setattr(dlrsd, "record_form", counting_form)
    monkeypatch.setattr(overlay, "load_overlay", counting_load)
    monkeypatch.setattr(common, "_FORM_CACHE", {})
    monkeypatch.setattr(common, "_OVERLAY_CACHE", {})

    def noisy_labels(epoch):
        b = _batches(paths, epoch=epoch, batch_size=6, cycle=None, shuffle_buffer=6)
        order = np.argsort([n.decode() for n in b[0]["patch_name"]])
        return b[0]["noisy_label"][order].argmax(1)

    assert list(noisy_labels(0)) == [1] * 6
    assert list(noisy_labels(1)) == [1] * 6
    assert reads == {"forms": 1, "overlays": 1}
    write_overlay(np.eye(17, dtype=np.uint8)[[2, 3, 4, 5, 6, 7]])  # replaced (a new file)
    assert list(noisy_labels(2)) == [2, 3, 4, 5, 6, 7]
    assert reads == {"forms": 1, "overlays": 2}
