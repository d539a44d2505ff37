"""Hamming search on packed codes, approximate chi-square, scene relevance, per-item label metrics."""
import json

import numpy as np
import pytest

import retrieval
from archives.dlrsd import SCENE_CLASSES
from evaluation import approx
from evaluation.distances import chi2_reference
from evaluation.evaluate import evaluate
from evaluation.features import FeatureFileError, FeatureSet, read_features, write_features
from evaluation.hamming import (hamming_numpy, hamming_reference, hamming_topk, pack_codes,
                                select_topk_int, unpack_codes)
from evaluation.label_metrics import per_item_metrics
from evaluation.metrics import shared_counts
from evaluation.scene import scene_labels, scene_of


def _stable_topk(d, k):
    o = np.argsort(d, 1, kind="stable")[:, :k]
    return o, np.take_along_axis(d, o, 1)


# ---- codes and Hamming ---------------------------------------------------------------------
def test_pack_codes_is_numpy_packbits_order():
    out = np.array([[0.9, 0.1, 0.6, 0.5, 0.51, 0, 0, 0, 1.0]])  # bit = output > 0.5
    code = pack_codes(out)
    assert code.dtype == np.uint8 and code.shape == (1, 2)
    assert code[0, 0] == 0b10101000 and code[0, 1] == 0b10000000
    assert (unpack_codes(code, 9) == [[1, 0, 1, 0, 1, 0, 0, 0, 1]]).all()


def test_hamming_distances_hand_computed():
    q = np.array([[0b11110000], [0b00000000]], np.uint8)
    a = np.array([[0b11110000], [0b11111111], [0b10000001]], np.uint8)
    assert hamming_reference(q, a).tolist() == [[0, 4, 4], [4, 8, 2]]
    assert hamming_numpy(q, a).tolist() == [[0, 4, 4], [4, 8, 2]]


def test_hamming_ranking_ties_in_archive_order():
    # archive items 0..5 at distances 1, 0, 1, 0, 2, 1 from the query
    q = np.array([[0b00000000]], np.uint8)
    a = np.array([[1], [0], [2], [0], [3], [4]], np.uint8)
    for backend in ("numpy", "faiss"):
        idx, dist = hamming_topk(q, a, 4, backend=backend)
        assert idx.tolist() == [[1, 3, 0, 2]] and dist.tolist() == [[0, 0, 1, 1]]


@pytest.mark.parametrize("nbytes, na, k", [(1, 3000, 100), (4, 4000, 20), (3, 500, 500),
                                           (40, 1500, 33)])
def test_hamming_topk_equals_stable_argsort_with_many_ties(nbytes, na, k):
    rng = np.random.default_rng(nbytes)
    a = rng.integers(0, 256, (na, nbytes), dtype=np.uint8)
    a[::3] = a[0]  # a third of the archive shares one code
    q = rng.integers(0, 256, (45, nbytes), dtype=np.uint8)
    q[0] = a[0]
    o, d = _stable_topk(hamming_reference(q, a), k)
    for backend in ("numpy", "faiss"):
        idx, dist = hamming_topk(q, a, k, backend=backend, query_block=16, archive_block=701)
        assert (idx == o).all() and (dist == d).all(), backend


def test_select_topk_int_small_case():
    d = np.array([[3, 1, 1, 0, 1], [2, 2, 2, 2, 2]])
    idx, dist = select_topk_int(d, 3)
    assert idx.tolist() == [[3, 1, 2], [0, 1, 2]] and dist.tolist() == [[0, 1, 1], [2, 2, 2]]


def test_hamming_backend_env_is_checked(monkeypatch):
    monkeypatch.setenv("GRID_HAMMING_BACKEND", "gpu")
    with pytest.raises(ValueError, match="GRID_HAMMING_BACKEND"):
        hamming_topk(np.zeros((1, 1), np.uint8), np.zeros((2, 1), np.uint8), 1)


def test_feature_files_carry_codes(tmp_path):
    feat = np.array([[0.9, 0.2, 0.7], [0.1, 0.6, 0.4]], np.float32)
    write_features(tmp_path / "f.h5", feat, np.eye(2), ["a1", "b2"], code=pack_codes(feat))
    fs = read_features(tmp_path / "f.h5")
    assert fs.code.dtype == np.uint8 and fs.code.tolist() == [[0b10100000], [0b01000000]]
    write_features(tmp_path / "g.h5", feat, np.eye(2), ["a1", "b2"])
    assert read_features(tmp_path / "g.h5").code is None
    import h5py
    with h5py.File(tmp_path / "g.h5", "a") as f:
        f["code"] = np.zeros((3, 1), np.uint8)
    with pytest.raises(FeatureFileError, match="g.h5: code must be uint8"):
        read_features(tmp_path / "g.h5")


# ---- approximate chi-square ------------------------------------------------------------------
def test_feature_map_with_norm_correction_tracks_chi2():
    rng = np.random.default_rng(0)
    x = rng.random((40, 16)).astype(np.float32) * (rng.random((40, 16)) < 0.6)
    s = approx._sampler(16, 2)
    ip = approx.embed(x[:5], s, "query") @ approx.embed(x, s, "archive").T
    target = 0.5 * x[:5].sum(1, keepdims=True) - chi2_reference(x[:5], x)
    # the identity behind the norm correction: 0.5|u| - chi2(u, v) = k(u, v) - 0.5|v|
    kern = (2 * x[:5, None] * x[None] / (x[:5, None] + x[None] + 1e-10)).sum(-1)
    assert np.allclose(target, kern - 0.5 * x.sum(1)[None], atol=1e-5)
    # two sample steps approximate it closely enough to rank candidates
    assert np.corrcoef(ip.ravel(), target.ravel())[0, 1] > 0.99
    with pytest.raises(ValueError, match="nonnegative"):
        approx.embed(-x, s, "query")


def test_approx_search_recall_on_a_small_archive():
    rng = np.random.default_rng(1)
    a = rng.gamma(0.5, 1.0, (3000, 32)).astype(np.float32)
    q = rng.gamma(0.5, 1.0, (60, 32)).astype(np.float32)
    exact, _ = _stable_topk(chi2_reference(q, a), 50)
    index = approx.ApproxChi2Index(a, threads=1)
    idx, dist = index.search(q, 50, candidates=500)
    assert approx.recall_at_k(idx, exact) >= 0.98
    # distances are exact chi-square values of the returned items, ascending
    ref = np.take_along_axis(chi2_reference(q, a), idx, 1)
    assert np.allclose(dist, ref, rtol=1e-4, atol=1e-5) and (np.diff(dist, axis=1) >= 0).all()
    # with every item a candidate the result is the exact one
    full, _ = index.search(q, 50, candidates=3000)
    assert approx.recall_at_k(full, exact) == 1.0
    assert approx.recall_at_k(np.array([[1, 2]]), np.array([[2, 3]])) == 0.5


# ---- scene relevance -------------------------------------------------------------------------
def test_scene_of_patch_names():
    assert scene_of(b"denseresidential07") == "denseresidential"
    assert scene_of("airplane99") == "airplane"
    lab = scene_labels(["tenniscourt00", "agricultural12"])
    assert lab.shape == (2, 21) and lab[0, SCENE_CLASSES.index("tenniscourt")] == 1
    with pytest.raises(ValueError, match="S2A_MSIL2A"):
        scene_of("S2A_MSIL2A_20170613_1_1")


def _fs(feature, names, code=None):
    return FeatureSet("mem.h5", np.asarray(feature, np.float32), np.zeros((len(names), 17)),
                      np.array(names, dtype=object), code=code)


def _milan_map_loop(x, scenes, k):
    """Plain-loop reference: each item queries the others (stable order), AP over top k with
    denominator = relevant items within the top k."""
    aps = []
    for i in range(len(x)):
        d = np.abs(x - x[i])
        order = [j for j in np.argsort(d, kind="stable") if j != i][:k]
        rel = [scenes[j] == scenes[i] for j in order]
        hits, total = 0, 0.0
        for r, ok in enumerate(rel, 1):
            if ok:
                hits += 1
                total += hits / r
        aps.append(total / hits if hits else 0.0)
    return aps


def test_scene_relevance_self_excluded_and_milan_ap():
    from evaluation.scene import with_scene_labels
    names = ["forest00", "beach01", "forest02", "forest03"]
    names += [f"beach{i:02d}" for i in range(4, 11)]
    x = np.arange(11, dtype=np.float32)
    fs = with_scene_labels(_fs(x[:, None], names))
    res = evaluate(fs, fs, "euclidean", max_topk=10, exclude_self=True)
    assert res["max_topk"] == 10 and res["num_queries"] == 11
    aps = _milan_map_loop(x, [n.rstrip("0123456789") for n in names], 10)
    # query 0 ranks 1, 2, 3, ...: relevant at ranks 2 and 3 -> (1/2 + 2/3) / 2
    assert aps[0] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # query 3 ranks 2, 4 (tie at 1: archive order), 1, 5, 0: relevant at 1 and 5
    assert aps[3] == pytest.approx((1 + 2 / 5) / 2)
    assert res["metrics"]["mAP@10"] == pytest.approx(np.mean(aps))
    # recall counts relevant items without the query itself; every item finds all of them
    assert res["metrics"]["R@10"] == pytest.approx(1.0)
    assert res["queries_without_relevant"] == 0


def test_retrieval_cli_scene_hamming_and_approx(tmp_path):
    rng = np.random.default_rng(0)
    n = 63
    feat = rng.random((n, 16)).astype(np.float32)
    names = [f"{SCENE_CLASSES[i % 21]}{i:02d}" for i in range(n)]
    labels = (rng.random((n, 17)) < 0.3).astype(np.float32)
    write_features(tmp_path / "a.h5", feat, labels, names, code=pack_codes(feat))
    write_features(tmp_path / "q.h5", feat[:20], labels[:20], names[:20],
                   code=pack_codes(feat[:20]))
    base = ["--query-features", str(tmp_path / "q.h5"), "--archive-features",
            str(tmp_path / "a.h5"), "--quiet", "--json", str(tmp_path / "o.json")]
    assert retrieval.main(base + ["--metric", "hamming", "--relevance", "scene"]) == 0
    res = json.loads((tmp_path / "o.json").read_text())
    assert res["num_queries"] == n and res["max_topk"] == n - 1 and res["exclude_self"]
    assert "mAP@20" in res["headline"] and res["hamming_backend"] in ("faiss", "numpy")
    assert retrieval.main(base + ["--index", "approx"]) == 0
    res = json.loads((tmp_path / "o.json").read_text())
    assert res["index"] == "approx" and res["approx_recall@63"] == pytest.approx(1.0)
    assert res["approx_recall_queries"] == 20
    assert retrieval.main(base + ["--index", "approx", "--metric", "hamming"]) == 2
    write_features(tmp_path / "a.h5", feat, labels, names)  # no codes
    assert retrieval.main(base + ["--metric", "hamming"]) == 2


# ---- per-item multi-label metrics (docs/hashing.md) ----------------------------------------
def test_per_item_metrics_hand_computed():
    q = np.array([[1, 1, 0, 0]], np.float32)            # y_q = {0, 1}
    a = np.array([[1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]], np.float32)
    idx = np.array([[0, 1, 2, 3]])
    s = shared_counts(q, a, idx)
    m = per_item_metrics(q, a, idx, s, (2, 4))
    # item 0: inter 1, union 3, |y_r| 2, xor 2; item 1: 2, 2, 2, 0; item 2: 0, 3, 1, 3;
    # item 3 (no labels): 0, 2, 0 -> precision 0 by the 0/0 rule, xor 2
    assert m["ACC@2"][0] == pytest.approx((1 / 3 + 1) / 2)
    assert m["PREC@2"][0] == pytest.approx((1 / 2 + 1) / 2)
    assert m["REC@2"][0] == pytest.approx((1 / 2 + 1) / 2)
    assert m["HL@2"][0] == pytest.approx((2 / 4 + 0) / 2)
    assert m["ACC@4"][0] == pytest.approx((1 / 3 + 1 + 0 + 0) / 4)
    assert m["PREC@4"][0] == pytest.approx((1 / 2 + 1 + 0 + 0) / 4)
    assert m["REC@4"][0] == pytest.approx((1 / 2 + 1) / 4)
    assert m["HL@4"][0] == pytest.approx((2 + 0 + 3 + 2) / 16)
