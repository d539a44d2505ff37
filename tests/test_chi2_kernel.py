"""The tiled chi-square C kernel: same values as the direct formula, same ranks and ties as the
row-streaming kernel it replaced, and results independent of tiles, row groups and threads."""
import ctypes

import numpy as np
import pytest

from evaluation import distances
from evaluation.distances import chi2, chi2_reference
from evaluation.ranking import topk

pytestmark = pytest.mark.skipif(not distances._load_c(), reason="no working C compiler")
P = ctypes.POINTER(ctypes.c_float)


def _rows_kernel(q, a):
    """The kernel before tiling (``chi2_rows``, kept in the library as the reference)."""
    q = np.ascontiguousarray(q, np.float32)
    a = np.ascontiguousarray(a, np.float32)
    out = np.empty((len(q), len(a)), np.float32)
    distances._load_c().chi2_rows(q.ctypes.data_as(P), a.ctypes.data_as(P),
                                  out.ctypes.data_as(P), len(q), len(a), q.shape[1])
    return out


def _stable_ranks(d):
    return np.argsort(d, axis=1, kind="stable")


def test_hand_values_and_zeros():
    q = np.array([[1, 0, 0], [2, 3, 0], [0, 0, 0], [0, 0, 0], [4, 0, 1]], np.float32)
    a = np.array([[0, 1, 0], [2, 1, 0], [0, 0, 0]], np.float32)
    d = chi2(q, a, "c")
    # 0.5*(1/1 + 1/1) = 1; 0.5*(0 + 4/4) = 0.5; zero rows: every term 0/(0 + 1e-10) = 0
    assert d[0, 0] == pytest.approx(1.0) and d[1, 1] == pytest.approx(0.5)
    assert d[2, 2] == 0.0 and d[3, 2] == 0.0
    # [4,0,1]-[0,0,0]: 0.5*(16/4 + 1/1) = 2.5; [4,0,1]-[2,1,0]: 0.5*(4/6 + 1/1 + 1/1)
    assert d[4, 2] == pytest.approx(2.5) and d[4, 1] == pytest.approx(0.5 * (4 / 6 + 2))


@pytest.mark.parametrize("dim", [1, 15, 16, 37, 1024, 4101])
def test_matches_float64_reference(dim):
    rng = np.random.default_rng(dim)
    q = np.maximum(rng.standard_normal((9, dim), dtype=np.float32), 0)
    a = np.maximum(rng.standard_normal((23, dim), dtype=np.float32), 0)
    a[5] = 0.0
    q[3, : dim // 2] = 0.0
    np.testing.assert_allclose(chi2(q, a, "c"), chi2_reference(q, a), rtol=2e-6, atol=1e-6)


def test_equal_rows_tie_bit_exactly_wherever_they_sit():
    """Copies of one archive row in different tiles, and one query row both inside a 4-row
    group and among the leftover rows, all get bit-equal distances, so ties stay ties and
    break by archive index. d = 4101 (not a multiple of 16): 15 archive rows per tile."""
    rng = np.random.default_rng(1)
    d = 4101
    a = rng.random((40, d), dtype=np.float32)
    for j in (7, 14, 15, 31, 39):  # tile boundaries at 15 and 30
        a[j] = a[3]
    q = rng.random((6, d), dtype=np.float32)
    q[5] = q[1]  # row 1 sits in the first 4-row group, row 5 among the 2 leftover rows
    dist = chi2(q, a, "c")
    for i in range(6):
        assert len(set(dist[i, [3, 7, 14, 15, 31, 39]].tolist())) == 1
    assert np.array_equal(dist[1], dist[5])
    idx, _ = topk(q, a, 40, "chi2", query_block=4, archive_block=16)
    tied = [3, 7, 14, 15, 31, 39]
    for row in idx:  # the tied copies appear in index order, next to each other
        pos = [int(np.flatnonzero(row == j)[0]) for j in tied]
        assert pos == list(range(pos[0], pos[0] + 6))


def test_independent_of_block_split_and_threads(monkeypatch):
    rng = np.random.default_rng(2)
    q = rng.random((13, 300), dtype=np.float32)
    a = rng.random((70, 300), dtype=np.float32)
    full = chi2(q, a, "c")
    one_by_one = np.array([[chi2(q[i:i + 1], a[j:j + 1], "c")[0, 0] for j in range(70)]
                           for i in range(13)])
    assert np.array_equal(full, one_by_one)
    monkeypatch.setattr(distances.os, "cpu_count", lambda: 1)
    assert np.array_equal(chi2(q, a, "c"), full)
    monkeypatch.setattr(distances.os, "cpu_count", lambda: 5)  # query split (na < 16 x 5)
    assert np.array_equal(chi2(q, a[:20], "c"), full[:, :20])


def test_same_ranks_as_the_row_streaming_kernel():
    """Random post-ReLU features with exact duplicates and zero rows: the top 50 of every
    query, ties included, equal those of the kernel it replaced and of the float64 formula."""
    rng = np.random.default_rng(3)
    q = np.maximum(rng.standard_normal((37, 256), dtype=np.float32), 0)
    a = np.maximum(rng.standard_normal((500, 256), dtype=np.float32), 0)
    a[100:110] = a[7]
    a[200] = a[201] = 0.0
    q[4] = a[7]  # distance 0 to eleven items
    new = _stable_ranks(chi2(q, a, "c"))[:, :50]
    assert np.array_equal(new, _stable_ranks(_rows_kernel(q, a))[:, :50])
    assert np.array_equal(new, _stable_ranks(chi2_reference(q, a))[:, :50])
    assert new[4, :11].tolist() == [7] + list(range(100, 110))


def test_l1_loop_computes_the_same_distances():
    rng = np.random.default_rng(4)
    q = rng.random((4, 100), dtype=np.float32)
    a = rng.random((1, 100), dtype=np.float32)
    out = np.zeros(4, np.float32)
    distances._load_c().chi2_l1_loop(q.ctypes.data_as(P), a.ctypes.data_as(P),
                                     out.ctypes.data_as(P), 100, 3)
    assert np.array_equal(out, chi2(q, a, "c")[:, 0])
