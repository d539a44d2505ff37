"""Shared TFRecord helpers: fast float features and the atomic writer."""
import numpy as np
import pytest
import tensorflow as tf

from archives.common import atomic_tfrecord_writer, bytes_feature, example_keys, float_feature


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
    with pytest.raises(ValueError, match="empty.tfrecord"):
        example_keys(path)
