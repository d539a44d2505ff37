"""Input pipeline: aligned crops and flips, normalisation, brightness, (seed, epoch) determinism."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import archives
from archives import dlrsd
from archives.pipeline import finish_batch, make_dataset

N = 12
B_LEVEL = 100.0  # constant blue channel: reveals the brightness delta


def _coord_example(k: int, schema: str) -> bytes:
    """Image whose red = row, green = column; maps code row % 17 and column % 17."""
    rows, cols = np.mgrid[0:256, 0:256]
    image = np.stack([rows, cols, np.full_like(rows, int(B_LEVEL))], -1).astype(np.uint8)
    seg, noisy = (rows % 17).astype(np.int8), (cols % 17).astype(np.int8)
    seg[0, 0] = -1  # one unlabelled pixel at the top-left corner
    label = np.zeros(17, np.float32)
    label[k % 17] = 1
    return dlrsd.encode_example(image, seg, noisy, label, label, f"img{k:02d}", schema)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipe")
    paths = []
    for schema, ks in (("compact", range(0, 8)), ("published", range(8, N))):
        p = d / f"{schema}.tfrecord"
        with tf.io.TFRecordWriter(str(p)) as w:
            for k in ks:
                w.write(_coord_example(k, schema))
        paths.append(str(p))
    return paths


def _elements(ds):
    out = []
    for b in ds:
        b = {k: v.numpy() for k, v in b.items()}
        out += [{k: v[i] for k, v in b.items()} for i in range(len(b["patch_name"]))]
    return out


def _decode(e):
    """(rows, cols, brightness delta) recovered from a normalised, brightened coordinate image."""
    m, s = dlrsd.MODEL_MEAN, dlrsd.MODEL_STD
    img = e["image"]
    delta = img[..., 2] - (B_LEVEL - m[2]) / s[2]
    rows = (img[..., 0] - delta) * s[0] + m[0]
    cols = (img[..., 1] - delta) * s[1] + m[1]
    return np.rint(rows).astype(int), np.rint(cols).astype(int), delta


def _check_aligned(e):
    rows, cols, delta = _decode(e)
    assert np.allclose(delta, delta.flat[0], atol=1e-4) and abs(delta.flat[0]) <= 0.2 + 1e-6
    # rows vary along axis 0 only, as a run of 224 consecutive values (forward or reversed)
    assert np.all(rows == rows[:, :1]) and np.all(cols == cols[:1, :])
    r, c = rows[:, 0], cols[0, :]
    assert set(np.abs(np.diff(r))) == {1} and len(set(np.diff(r))) == 1
    assert set(np.abs(np.diff(c))) == {1} and len(set(np.diff(c))) == 1
    assert 0 <= r.min() and r.max() <= 255 and r.max() - r.min() == 223
    expect_seg = rows % 17
    expect_seg[(rows == 0) & (cols == 0)] = -1
    np.testing.assert_array_equal(e["seg_map"], expect_seg)
    np.testing.assert_array_equal(e["noisy_seg_map"], cols % 17)
    return r.min(), c.min(), r[0] > r[-1], c[0] > c[-1]


def test_training_crops_and_flips_maps_like_image(records):
    windows = set()
    for epoch in range(3):
        els = _elements(make_dataset(records, "DLRSD", training=True, batch_size=5, seed=1, epoch=epoch))
        assert len(els) == N
        assert els[0]["image"].shape == (224, 224, 3) and els[0]["seg_map"].dtype == np.int32
        windows |= {_check_aligned(e) for e in els}
    offsets = {w[:2] for w in windows}
    assert len(offsets) > 20  # random windows, not one fixed crop
    assert {w[2] for w in windows} == {True, False} and {w[3] for w in windows} == {True, False}


def test_same_seed_epoch_same_batches_other_epoch_differs(records):
    def run(seed, epoch):
        return _elements(make_dataset(records, "DLRSD", training=True, batch_size=4, seed=seed, epoch=epoch))

    a, b = run(3, 2), run(3, 2)
    assert len(a) == len(b) == N
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    for other in (run(3, 3), run(4, 2)):
        assert len(other) == N
        assert ([e["patch_name"] for e in other] != [e["patch_name"] for e in a]
                or any(not np.array_equal(x["image"], y["image"]) for x, y in zip(a, other)))
    assert sorted(e["patch_name"] for e in a) == [f"img{k:02d}".encode() for k in range(N)]


def test_augmentation_depends_on_element_not_position(records):
    """A different shuffle buffer reorders elements, but each keeps its own crop/flip/brightness."""
    full = {e["patch_name"]: e for e in _elements(
        make_dataset(records, "DLRSD", training=True, batch_size=4, seed=7, epoch=1))}
    small = _elements(make_dataset(records, "DLRSD", training=True, batch_size=4, seed=7, epoch=1,
                                   shuffle_buffer=2))
    assert len(small) == len(full) == N
    for e in small:
        np.testing.assert_array_equal(e["image"], full[e["patch_name"]]["image"])


def test_evaluation_centre_crop_in_file_order(records):
    els = _elements(make_dataset(records, "DLRSD", training=False, batch_size=5))
    assert [e["patch_name"] for e in els] == [f"img{k:02d}".encode() for k in range(N)]
    for e in els:
        rows, cols, delta = _decode(e)
        assert np.allclose(delta, 0, atol=1e-4)
        np.testing.assert_array_equal(rows[:, 0], np.arange(16, 240))
        np.testing.assert_array_equal(cols[0, :], np.arange(16, 240))
        np.testing.assert_array_equal(e["seg_map"], rows % 17)
        np.testing.assert_allclose(e["image"][0, 0, 0], (16 - dlrsd.MODEL_MEAN[0]) / dlrsd.MODEL_STD[0],
                                   rtol=1e-6)
        assert e["label"].shape == (17,) and e["label"].sum() == 1


def test_compact_batches_finished_equal_the_normalised_ones(records):
    """compact=True hands over parsed dtypes at full size with the draws; finish_batch (what the
    training loop runs in the compiled step) gives exactly the default batches."""
    for training in (True, False):
        kw = dict(training=training, batch_size=5, seed=2, epoch=1)
        compact = list(make_dataset(records, "DLRSD", compact=True, **kw))
        normal = list(make_dataset(records, "DLRSD", **kw))
        assert len(compact) == len(normal) == 3
        for c, n in zip(compact, normal):
            assert c["image"].dtype == tf.uint8 and c["image"].shape[1:] == (256, 256, 3)
            assert c["seg_map"].dtype == tf.int8
            done = finish_batch(c, "DLRSD", training)
            assert sorted(done) == sorted(n)
            for k in n:
                np.testing.assert_array_equal(done[k].numpy(), n[k].numpy())
    # the draws ride along with a training batch only
    assert "_delta" in compact_keys(records, True) and "_delta" not in compact_keys(records, False)


def compact_keys(records, training):
    return set(make_dataset(records, "DLRSD", training=training, batch_size=4,
                            compact=True).element_spec)


def test_training_loop_step_sees_finished_batches(records):
    from training import with_batch_transform

    seen = []

    def step(batch):
        seen.append(batch)
        return {"loss": tf.reduce_mean(batch["image"])}

    ds = make_dataset(records, "DLRSD", training=True, batch_size=6, seed=5, compact=True)
    run = with_batch_transform(step, lambda b: finish_batch(b, "DLRSD", True))
    normal = list(make_dataset(records, "DLRSD", training=True, batch_size=6, seed=5))
    for b, n in zip(ds, normal):
        np.testing.assert_allclose(run(b)["loss"].numpy(), np.mean(n["image"].numpy()), rtol=1e-5)
    assert seen[0]["image"].dtype == tf.float32 and seen[0]["image"].shape[1:] == (224, 224, 3)
    assert with_batch_transform(step, None) is step


def test_drop_remainder_and_batch_shapes(records):
    ds = make_dataset(records, "DLRSD", training=True, batch_size=5, drop_remainder=True)
    shapes = [b["image"].shape for b in ds]
    assert shapes == [(5, 224, 224, 3)] * 2
    spec = ds.element_spec
    assert spec["noisy_seg_map"].shape.as_list() == [5, 224, 224]
    assert spec["noisy_label"].shape.as_list() == [5, 17]


def test_get_archive():
    assert archives.get_archive("DLRSD") is dlrsd
    with pytest.raises(ValueError, match="unknown dataset 'UCM'"):
        archives.get_archive("UCM")


@pytest.mark.slow
def test_shuffle_is_a_permutation_independent_of_global_seed(records):
    def order(seed, epoch, **kw):
        return [e["patch_name"].decode() for e in _elements(
            make_dataset(records, "DLRSD", training=True, batch_size=6, seed=seed, epoch=epoch, **kw))]

    a = order(5, 0)
    assert sorted(a) == [f"img{k:02d}" for k in range(N)] and a != sorted(a)
    assert order(5, 1) != a
    windows = order(5, 0, shuffle_buffer=4)
    assert [sorted(windows[i:i + 4]) for i in (0, 4, 8)] == [
        [f"img{k:02d}" for k in range(i, i + 4)] for i in (0, 4, 8)]
    script = ("import json, sys, tensorflow as tf; tf.random.set_seed(1234)\n"
              "from archives.pipeline import make_dataset\n"
              "ds = make_dataset(json.loads(sys.argv[1]), 'DLRSD', training=True, batch_size=6, seed=5)\n"
              "print(json.dumps([n.decode() for b in ds for n in b['patch_name'].numpy()]))\n")
    out = subprocess.run([sys.executable, "-c", script, json.dumps(records)], capture_output=True,
                         text=True, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                         cwd=str(Path(__file__).resolve().parents[1]))
    assert json.loads(out.stdout.strip().splitlines()[-1]) == a
