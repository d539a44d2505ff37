"""evaluation/: distances, blocked top-K, metrics (hand-computed), feature files and extraction."""
import os
import time

import h5py
import numpy as np
import pytest

from evaluation import distances
from evaluation.distances import chi2, cosine, euclidean, pairwise
from evaluation.evaluate import evaluate, resolve_topk
from evaluation.features import (FeatureFileError, FeatureSet, check_pair, ensure_features,
                                 extract_features, read_features, stored_fingerprint,
                                 write_features)
from evaluation.metrics import (archive_gains, dcg, ndcg_published, ndcg_published_loop,
                                per_query_metrics, shared_counts)
from evaluation.ranking import select_topk, topk

BACKENDS = ["numpy", "xla"] + (["c"] if distances._load_c() else [])


# ---------------------------------------------------------------- distances
def chi2_direct(u, v):
    """Per-pair Python loop over the formula 0.5 * sum (u-v)^2 / (u+v+1e-10)."""
    return 0.5 * sum((float(x) - float(y)) ** 2 / (float(x) + float(y) + 1e-10) for x, y in zip(u, v))


@pytest.mark.parametrize("backend", BACKENDS)
def test_chi2_hand_values(backend):
    q = np.array([[1, 0], [2, 3], [0, 0]], np.float32)
    a = np.array([[0, 1], [2, 1], [0, 0]], np.float32)
    d = chi2(q, a, backend)
    # [1,0]-[0,1]: 0.5*(1/1 + 1/1) = 1; [2,3]-[2,1]: 0.5*(0 + 4/4) = 0.5; [0,0]-[0,0]: 0
    assert d[0, 0] == pytest.approx(1.0)
    assert d[1, 1] == pytest.approx(0.5)
    assert d[2, 2] == 0.0
    # [1,0]-[0,0]: 0.5*(1/1) = 0.5; [2,3]-[0,0]: 0.5*(4/2 + 9/3) = 2.5
    assert d[0, 2] == pytest.approx(0.5) and d[1, 2] == pytest.approx(2.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_chi2_matches_direct_formula(backend):
    rng = np.random.default_rng(0)
    q = rng.random((7, 37), dtype=np.float32)
    a = rng.random((11, 37), dtype=np.float32)
    a[3, :5] = 0.0
    q[2, :5] = 0.0  # 0/(0+1e-10) terms
    want = np.array([[chi2_direct(u, v) for v in a] for u in q])
    np.testing.assert_allclose(chi2(q, a, backend), want, rtol=1e-5, atol=1e-6)


def test_euclidean_cosine():
    q = np.array([[3, 4], [0, 0]], np.float32)
    a = np.array([[0, 0], [3, 4], [6, 8]], np.float32)
    np.testing.assert_allclose(euclidean(q, a), [[5, 0, 5], [0, 5, 10]], atol=1e-5)
    np.testing.assert_allclose(cosine(q, a), [[1, 0, 0], [1, 1, 1]], atol=1e-6)
    with pytest.raises(ValueError, match="unknown metric"):
        pairwise(q, a, "l7")


# ---------------------------------------------------------------- ranking
@pytest.mark.parametrize("metric", ["chi2", "euclidean", "cosine"])
@pytest.mark.parametrize("k", [1, 5, 23, 61])
def test_blocked_topk_equals_full_stable_argsort(metric, k):
    rng = np.random.default_rng(1)
    q = rng.integers(0, 3, (19, 6)).astype(np.float32)  # small integers: many exact ties
    a = rng.integers(0, 3, (61, 6)).astype(np.float32)
    if metric == "cosine":  # 0/1 rows with 1 or 4 ones: norms 1 or 2, so every cosine is exact
        # (matmul rounding may otherwise differ with the block shape, by one ulp)
        q, a = (np.stack([rng.permutation([1.0] * n + [0.0] * (6 - n))
                          for n in rng.choice([1, 4], size)]).astype(np.float32)
                for size in (19, 61))
    a[40:50] = a[3]  # duplicated archive rows: equal distances at different indices
    full = pairwise(q, a, metric)
    want = np.argsort(full, axis=1, kind="stable")[:, :k]
    assert (full[:, :, None] == full[:, None, :]).sum() > full.size  # ties exist
    for qb, ab in [(4, 7), (19, 61), (5, 10), (1, 1), (100, 1000)]:
        idx, dist = topk(q, a, k, metric, query_block=qb, archive_block=ab)
        np.testing.assert_array_equal(idx, want)
        np.testing.assert_array_equal(dist, np.take_along_axis(full, want, 1))


def test_select_topk_tie_at_boundary():
    d = np.array([[1.0, 0.0, 1.0, 1.0, 2.0]], np.float32)
    i = np.array([[9, 8, 7, 3, 1]])
    idx, dist = select_topk(d, i, 3)
    # distance 0 (index 8), then the ties at 1.0 by index: 3, 7
    assert idx.tolist() == [[8, 3, 7]] and dist.tolist() == [[0.0, 1.0, 1.0]]


def test_topk_from_hdf5(tmp_path):
    rng = np.random.default_rng(2)
    a = rng.random((50, 8), dtype=np.float32)
    q = rng.random((9, 8), dtype=np.float32)
    p = tmp_path / "a.h5"
    with h5py.File(p, "w") as f:
        f["a"] = a
    with h5py.File(p, "r") as f:
        idx, _ = topk(q, f["a"], 10, archive_block=16, query_block=4)
    np.testing.assert_array_equal(idx, topk(q, a, 10)[0])


def test_nan_distance_ranks_last(monkeypatch):
    monkeypatch.setattr(distances, "chi2", lambda q, a: np.array([[np.nan, 2.0, 1.0]], np.float32))
    d = pairwise(np.zeros((1, 2)), np.zeros((3, 2)))
    assert d.tolist() == [[np.inf, 2.0, 1.0]]
    idx, _ = topk(np.zeros((1, 2)), np.zeros((3, 2)), 3)
    assert idx.tolist() == [[2, 1, 0]]


# ---------------------------------------------------------------- metrics
# One query with labels {0, 1}; archive of 5 items; shared-label counts s:
#   a0 {0,1}: 2   a1 {2}: 0   a2 {0,2}: 1   a3 {1}: 1   a4 {2}: 0      -> N_rel = 3
# Ranking [1, 2, 0, 4, 3] gives s = [0, 1, 2, 0, 1], rel = [0, 1, 1, 0, 1].
# Gains 2^s - 1 = [0, 1, 3, 0, 1]; discounts 1/log2(1+r) = 1, .6309298, .5, .4306766, .3868528.
Q = np.array([[1, 1, 0]], np.float32)
A = np.array([[1, 1, 0], [0, 0, 1], [1, 0, 1], [0, 1, 0], [0, 0, 1]], np.float32)
RANK = np.array([[1, 2, 0, 4, 3]])
S = np.array([[0, 1, 2, 0, 1]])


def test_shared_counts_and_archive_gains():
    np.testing.assert_array_equal(shared_counts(Q, A, RANK), S)
    n_rel, ideal = archive_gains(Q, A, 5, chunk=2)
    assert n_rel.tolist() == [3] and ideal.tolist() == [[2, 1, 1, 0, 0]]


def test_metrics_hand_computed_k3_of_3():
    # K = 3 retrieved: s = [0, 1, 2].  DCG@3 = 0 + .6309298 + 3 * .5 = 2.1309298
    s = S[:, :3]
    assert dcg(s, 3)[0] == pytest.approx(2.1309298, abs=1e-6)
    n_rel, ideal = archive_gains(Q, A, 3)
    m = per_query_metrics(s, n_rel, ideal, ks=(3,), ndcg_ks=(3,))
    # published ideal: same 3 items sorted [2, 1, 0] -> 3 + .6309298 = 3.6309298
    assert m["NDCG@3"][0] == pytest.approx(2.1309298 / 3.6309298, abs=1e-6)  # 0.586876
    # global ideal: archive's best [2, 1, 1] -> 3 + .6309298 + .5 = 4.1309298
    assert m["NDCG_global@3"][0] == pytest.approx(2.1309298 / 4.1309298, abs=1e-6)  # 0.515848
    assert m["P@3"][0] == pytest.approx(2 / 3)
    assert m["R@3"][0] == pytest.approx(2 / 3)  # 2 of N_rel = 3
    assert m["mAP@3"][0] == pytest.approx((1 / 2 + 2 / 3) / 2)  # (P@2 + P@3) / Rel@3 = 7/12
    assert m["ACG@3"][0] == pytest.approx(1.0)  # (0 + 1 + 2) / 3
    assert m["WAP@3"][0] == pytest.approx((0.5 + 1.0) / 2)  # (ACG@2 + ACG@3) / Rel@3


def test_metrics_hand_computed_k5():
    n_rel, ideal = archive_gains(Q, A, 5)
    m = per_query_metrics(S, n_rel, ideal, ks=(5,), ndcg_ks=(5,))
    dcg5 = 0.6309298 + 1.5 + 0.3868528  # 2.5177826
    idcg5 = 3 + 0.6309298 + 0.5  # [2, 1, 1, 0, 0]: 4.1309298
    assert m["NDCG@5"][0] == pytest.approx(dcg5 / idcg5, abs=1e-6)
    assert m["NDCG_global@5"][0] == pytest.approx(dcg5 / idcg5, abs=1e-6)  # K = M: same ideal
    assert m["P@5"][0] == pytest.approx(0.6)
    assert m["R@5"][0] == pytest.approx(1.0)
    assert m["mAP@5"][0] == pytest.approx((1 / 2 + 2 / 3 + 3 / 5) / 3)  # 0.588889
    assert m["ACG@5"][0] == pytest.approx(0.8)
    assert m["WAP@5"][0] == pytest.approx((0.5 + 1.0 + 0.8) / 3)  # ACG@2, @3, @5 -> 0.766667
    assert ndcg_published_loop(S[0], 5) == pytest.approx(m["NDCG@5"][0])


def test_zero_over_zero_is_zero_and_kept_in_mean():
    # query 0 shares no label with the 3 retrieved items although the archive holds relevant
    # ones (published IDCG = 0); query 1 has no relevant item at all (N_rel = 0).
    s = np.array([[0, 0, 0], [0, 0, 0], [1, 0, 0]])
    n_rel = np.array([2, 0, 1])
    ideal = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 0]])
    m = per_query_metrics(s, n_rel, ideal, ks=(3,), ndcg_ks=(3,))
    for name in ("NDCG@3", "NDCG_global@3", "mAP@3", "R@3", "WAP@3", "P@3", "ACG@3"):
        assert np.isfinite(m[name]).all()
        assert m[name][0] == 0.0 and m[name][1] == 0.0
    assert m["NDCG@3"][2] == 1.0 and m["R@3"][2] == 1.0
    assert m["NDCG@3"].mean() == pytest.approx(1 / 3)  # the two zeros stay in the mean
    assert ndcg_published_loop([0, 0, 0], 3) == 0.0


def test_vectorised_ndcg_matches_loop():
    rng = np.random.default_rng(3)
    s = rng.integers(0, 4, (40, 50))
    s[5] = 0
    got = ndcg_published(s, 20)
    want = [ndcg_published_loop(row, 20) for row in s]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_metrics_only_for_k_within_K():
    m = per_query_metrics(np.ones((2, 25), int), np.array([30, 30]), np.ones((2, 20), int))
    assert "P@20" in m and "NDCG@20" in m and "P@30" not in m and "NDCG@30" not in m


# ---------------------------------------------------------------- evaluate
def _fs(n, dim=4, c=3, seed=0, path="mem"):
    rng = np.random.default_rng(seed)
    return FeatureSet(path, rng.random((n, dim), dtype=np.float32),
                      (rng.random((n, c)) < 0.5).astype(np.float32),
                      np.array([b"x"] * n, dtype=object))


def test_evaluate_blocks_agree_and_topk_rules():
    q, a = _fs(23, seed=1), _fs(40, seed=2, path="arch.h5")
    r1 = evaluate(q, a, max_topk=30, query_block=5, archive_block=7)
    r2 = evaluate(q, a, max_topk=30, query_block=100, archive_block=100)
    assert r1["metrics"] == pytest.approx(r2["metrics"])
    assert set(r1["metrics"]) >= {"NDCG@20", "NDCG@30", "mAP@10", "WAP@30", "NDCG_global@30"}
    assert "P@50" not in r1["metrics"]
    assert resolve_topk(None, a, "DLRSD") == 40 and resolve_topk(None, _fs(500), "DLRSD") == 420
    assert resolve_topk(None, _fs(2000), "BEN") == 1000 and resolve_topk(None, _fs(9), None) == 9
    with pytest.raises(FeatureFileError, match="arch.h5.*larger than the archive"):
        evaluate(q, a, max_topk=41)


def test_check_pair_errors():
    with pytest.raises(FeatureFileError, match="widths differ: q.h5 has 4, a.h5 has 5"):
        check_pair(_fs(3, path="q.h5"), _fs(3, dim=5, path="a.h5"))
    with pytest.raises(FeatureFileError, match="a.h5: empty archive"):
        check_pair(_fs(3, path="q.h5"), _fs(0, path="a.h5"))
    with pytest.raises(FeatureFileError, match="label widths differ"):
        check_pair(_fs(3, path="q.h5"), _fs(3, c=4, path="a.h5"))


# ---------------------------------------------------------------- feature files
def test_feature_file_roundtrip_and_errors(tmp_path):
    p = tmp_path / "f.h5"
    feat = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_features(p, feat, np.eye(3), [b"a", "b", "c"], {"k": 1})
    fs = read_features(p)
    np.testing.assert_array_equal(fs.feature, feat)
    assert fs.patch_name.tolist() == [b"a", b"b", b"c"] and stored_fingerprint(p) == {"k": 1}
    assert not list(tmp_path.glob("*.tmp-*"))
    streamed = read_features(p, in_memory=False)
    assert isinstance(streamed.feature, h5py.Dataset)
    streamed.close()

    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f["feature"] = feat
    with pytest.raises(FeatureFileError, match=r"bad.h5: missing HDF5 dataset\(s\) \['label'\]"):
        read_features(bad)
    with h5py.File(bad, "w") as f:
        f["feature"] = feat
        f["label"] = np.zeros((2, 3), np.float32)
    with pytest.raises(FeatureFileError, match="bad.h5: 3 features but 2 labels"):
        read_features(bad)
    feat[1, 2] = np.nan
    write_features(bad, feat, np.eye(3), ["a", "b", "c"])
    for in_memory in (True, False):  # checked on the loaded array / block by block on disk
        with pytest.raises(FeatureFileError,
                           match="bad.h5: feature holds NaN or Inf values .*row 1"):
            read_features(bad, in_memory=in_memory)
    with pytest.raises(FeatureFileError, match="nope.h5: feature file not found"):
        read_features(tmp_path / "nope.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(FeatureFileError, match="junk.h5: not a readable HDF5"):
        read_features(tmp_path / "junk.h5")


def _tiny_model(path, seed):
    import keras
    keras.utils.set_random_seed(seed)
    inp = keras.Input((4, 4, 3))
    out = keras.layers.Dense(5, activation="relu")(keras.layers.GlobalAveragePooling2D()(inp))
    keras.Model(inp, out).save(path)


def _dataset(paths):
    import tensorflow as tf
    rng = np.random.default_rng(0)
    data = {"image": rng.random((10, 4, 4, 3), dtype=np.float32),
            "label": (rng.random((10, 3)) < 0.5).astype(np.float32),
            "patch_name": np.array([f"p{i}".encode() for i in range(10)])}
    return tf.data.Dataset.from_tensor_slices(data).batch(4)


def test_extract_and_reuse_with_fingerprint(tmp_path):
    import keras
    model_path = tmp_path / "m.keras"
    _tiny_model(model_path, 0)
    rec = tmp_path / "r.tfrecord"
    rec.write_bytes(b"records")
    out = tmp_path / "feat" / "query.h5"
    calls = []

    def make(paths):
        calls.append(paths)
        return _dataset(paths)

    assert ensure_features(out, model_path, [rec], make) is False
    fs = read_features(out)
    model = keras.models.load_model(model_path)
    want, labels, names = extract_features(model, _dataset(None))
    np.testing.assert_allclose(fs.feature, want, rtol=1e-6)
    assert fs.feature.shape == (10, 5) and names.tolist()[:2] == [b"p0", b"p1"]
    assert ensure_features(out, model_path, [rec], make) is True and len(calls) == 1

    rec.write_bytes(b"records changed")  # record file changed -> rewritten
    assert ensure_features(out, model_path, [rec], make) is False
    time.sleep(0.01)
    _tiny_model(model_path, 1)  # new model -> rewritten, with the new model's features
    assert ensure_features(out, model_path, [rec], make) is False
    assert not np.allclose(read_features(out).feature, want)
    assert ensure_features(out, model_path, [rec], make) is True
    with pytest.raises(FileNotFoundError, match="gone.tfrecord"):
        ensure_features(out, model_path, [tmp_path / "gone.tfrecord"], make)
    os.remove(model_path)
    with pytest.raises(FileNotFoundError, match="m.keras"):
        ensure_features(out, model_path, [rec], make)


def test_chi2_library_is_loaded_only_when_built_here_and_private(tmp_path, monkeypatch):
    import shutil
    import stat
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler")
    cache = tmp_path / "cache"
    monkeypatch.setenv("GRID_CACHE", str(cache))
    monkeypatch.setattr(distances, "_LIB", None)
    assert distances._load_c()
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    (lib,) = cache.glob("chi2_*.so")
    recorded = (cache / (lib.name + ".sha256")).read_text().strip()
    assert recorded == distances._file_sha256(lib)
    # a library swapped in under the expected name is not loaded: it is rebuilt first
    lib.unlink()  # a new file (rewriting the loaded one in place would break this process)
    lib.write_bytes(b"not the library this project built")
    monkeypatch.setattr(distances, "_LIB", None)
    assert distances._load_c() and distances._file_sha256(lib) == recorded
    # a cache folder others may write to is refused (XLA fallback, with a warning)
    cache.chmod(0o777)
    monkeypatch.setattr(distances, "_LIB", None)
    with pytest.warns(UserWarning, match="writable by other users"):
        assert distances._load_c() is False
    monkeypatch.setattr(distances, "_LIB", None)
