"""Shared archive helpers: fast float features, atomic writers, the record reader, skipping."""
import numpy as np
import pytest
import tensorflow as tf

from atomic_files import atomic_path
from archives.common import (atomic_tfrecord_writer, bytes_feature, example_keys,
                             float_feature, ordered_map, records_dataset, skip_or_raise,
                             write_split_files)


@pytest.mark.parametrize("n", [0, 1, 17, 127, 128, 16384, 196608])
def test_float_feature_equals_plain_protobuf(n):
    a = np.random.default_rng(n).normal(size=n).astype(np.float32)
    plain = tf.train.Feature(float_list=tf.train.FloatList(value=a.tolist()))
    fast = float_feature(a)
    assert fast == plain
    assert np.array_equal(np.array(fast.float_list.value, np.float32), a)


def test_float_feature_flattens_and_casts():
    fast = float_feature(np.arange(6, dtype=np.int64).reshape(2, 3))
    assert list(fast.float_list.value) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_atomic_writer_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "x.tfrecord"
    with atomic_tfrecord_writer(path) as w:
        w.write(tf.train.Example(features=tf.train.Features(
            feature={"a": bytes_feature("old")})).SerializeToString())
    before = path.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with atomic_tfrecord_writer(path) as w:
            w.write(b"partial")
            raise KeyboardInterrupt
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.tfrecord"]
    assert example_keys(path) == {"a"}


def test_example_keys_names_empty_file(tmp_path):
    path = tmp_path / "empty.tfrecord"
    with atomic_tfrecord_writer(path):
        pass
    with pytest.raises(ValueError, match="empty.tfrecord: TFRecord file holds no record"):
        example_keys(path)
    with pytest.raises(ValueError, match="gone.tfrecord: TFRecord file does not exist"):
        example_keys(tmp_path / "gone.tfrecord")


def test_atomic_path_replaces_only_on_success(tmp_path):
    path = tmp_path / "r.json"
    with atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp != path
        tmp.write_text("one")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("two")
            raise RuntimeError
    assert path.read_text() == "one" and [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_records_dataset_keeps_file_order_one_parser_per_file(tmp_path):
    paths = []
    for name, values in (("b", [b"b0", b"b1"]), ("a", [b"a0"])):
        paths.append(tmp_path / f"{name}.tfrecord")
        with atomic_tfrecord_writer(paths[-1]) as w:
            for v in values:
                w.write(v)
    asked = []

    def parser_for(path):
        asked.append(path)
        tag = tf.constant(path[-10:-9])  # the file's one-letter name
        return lambda raw: tf.strings.join([tag, raw], ":")

    got = [x.decode() for x in records_dataset(paths, parser_for).as_numpy_iterator()]
    assert got == ["b:b0", "b:b1", "a:a0"] and asked == [str(p) for p in paths]
    assert [x.decode() for x in records_dataset(paths[1], parser_for).as_numpy_iterator()] == ["a:a0"]
    with pytest.raises(ValueError, match="no TFRecord paths given"):
        records_dataset([], parser_for)


def test_skip_or_raise(tmp_path):
    skipped = []
    err = ValueError("x.tif: broken")
    with pytest.raises(ValueError) as raised:
        skip_or_raise(err, False, skipped, tmp_path / "x", "broken")
    assert raised.value is err and skipped == []
    with pytest.warns(UserWarning, match="skipped: x.tif: broken"):
        skip_or_raise(err, True, skipped, tmp_path / "x", "broken")
    assert skipped == [{"item": str(tmp_path / "x"), "reason": "broken"}]


def test_ordered_map_keeps_input_order_across_windows():
    assert list(ordered_map(None, lambda x: x * x, list(range(10)), 3)) == [x * x for x in range(10)]


def _names(path):
    return [tf.train.Example.FromString(r.numpy()).features.feature["name"].bytes_list.value[0]
            .decode() for r in tf.data.TFRecordDataset(str(path))]


def _split_items(splits):
    def encode(split, row, result):
        name, data, err = result
        if err:
            return None  # skipped
        raw = tf.train.Example(features=tf.train.Features(feature={
            "name": bytes_feature(f"{name}@{data}")})).SerializeToString()
        return [raw] * (3 if split == "train" else 1)  # train: clean + two noise levels
    return dict(items=lambda split: splits[split], encode=encode,
                worker=lambda item: (item, item.upper(), "bad" if item.startswith("x") else None),
                pool=None, window=2, progress=False, source=lambda split: f"list:{split}")


def test_write_split_files_writes_noisy_files_beside_train_and_skips(tmp_path):
    splits = {"train": ["a", "xb", "c"], "val": ["d"], "test": ["e", "f"]}
    records, rows = write_split_files(tmp_path, ("train", "val", "test"), (10, 50),
                                      **_split_items(splits))
    assert records == {"train": 2, "10": 2, "50": 2, "val": 1, "test": 2}
    assert rows == [0, 2]  # the skipped item's row is not among the written train rows
    for name in ("train", "train_noise_prcnt10", "train_noise_prcnt50"):
        assert _names(tmp_path / f"{name}.tfrecord") == ["a@A", "c@C"]
    assert _names(tmp_path / "test.tfrecord") == ["e@E", "f@F"]


def test_write_split_files_publishes_nothing_when_a_split_ends_empty(tmp_path):
    splits = {"train": ["a"], "val": ["xd"], "test": ["e"]}
    with pytest.raises(ValueError, match="list:val: val split is empty after skipping"):
        write_split_files(tmp_path, ("train", "val", "test"), (10, 50),
                          **_split_items(splits))
    assert list(tmp_path.iterdir()) == []


def test_example_keys_reads_first_record_directly_and_leaves_damage_to_tensorflow(tmp_path):
    """The first record is read without a tf.data reader; a truncated or garbled file still
    fails as TensorFlow's reader fails (a data-loss error), never with a wrong key set."""
    ex = tf.train.Example(features=tf.train.Features(feature={
        "k1": bytes_feature("x" * 1000), "k2": bytes_feature("y")})).SerializeToString()
    path = tmp_path / "two.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as w:
        w.write(ex)
        w.write(b"second")
    assert example_keys(path) == {"k1", "k2"}
    whole = path.read_bytes()
    cut = tmp_path / "cut.tfrecord"
    cut.write_bytes(whole[:500])  # the first record's data ends early
    with pytest.raises(tf.errors.DataLossError):
        example_keys(cut)
    garbled = tmp_path / "garbled.tfrecord"
    garbled.write_bytes(whole[:12] + b"\xff" * (len(whole) - 12))  # header intact, data not
    with pytest.raises(tf.errors.DataLossError):
        example_keys(garbled)
