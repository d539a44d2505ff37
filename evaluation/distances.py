"""Pairwise distances between blocks of feature vectors: chi-square (exact), euclidean, cosine.

All functions take ``q`` (nq, D) and ``a`` (na, D) float arrays and return (nq, na) float32.
Chi-square d(u, v) = 0.5 * sum_k (u_k - v_k)^2 / (u_k + v_k + 1e-10), applied as written to
whatever values come (GRID features are post-ReLU, so nonnegative; with negative entries the
formula is no longer a metric, and a denominator of exactly 0 gives inf). NaN results rank last.

Chi-square backends (``GRID_CHI2_BACKEND`` = auto | c | xla | numpy):
- ``c``: a small C kernel (``_chi2_kernel.c``) compiled on first use with the system C compiler
  into ``$GRID_CACHE`` (default ``~/.cache/grid-retrieval``; must be private to the user, and
  the library is loaded only if its sha256 matches the one recorded at build time), called
  through ctypes with the work split over all cores. It walks the archive in tiles that stay
  in cache, several query rows per pass, and runs at 0.9-1.0 of the divider's limit (the same
  arithmetic on rows held in L1), about 5e9 pair-dims/s per core here: docs/benchmarks.md.
  Every pair is summed in one fixed order, so equal rows give bit-equal distances.
- ``xla``: a ``tf.function(jit_compile=True)`` broadcast + reduce (about 0.15-0.5e9).
- ``numpy``: plain broadcasting, the reference (about 0.1-0.2e9).
``auto`` takes ``c`` when a compiler works, else ``xla``.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from atomic_files import atomic_path

METRICS = ("chi2", "euclidean", "cosine")
EPS = 1e-10
_SRC = Path(__file__).with_name("_chi2_kernel.c")
# no -ffast-math / -fassociative-math and no contraction: the kernel's fixed summation order
# is what keeps ties (equal rows -> bit-equal distances) whichever code path a pair takes
_CFLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off",
           "-shared", "-fPIC")
SPLIT_MIN_ROWS = 16  # archive rows per thread below which the query rows are split instead
_LIB = None          # loaded ctypes library, False when compilation failed
_XLA_FN = None
_POOL = None


def chi2_reference(q: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Chi-square by plain numpy broadcasting, float64 accumulation: the direct formula."""
    q = np.asarray(q, np.float64)[:, None, :]
    a = np.asarray(a, np.float64)[None, :, :]
    return (0.5 * ((q - a) ** 2 / (q + a + EPS)).sum(-1)).astype(np.float32)


def chi2_numpy(q: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Chi-square by float32 numpy broadcasting (the "straightforward numpy" baseline)."""
    u = q[:, None, :]
    v = a[None, :, :]
    return 0.5 * ((u - v) ** 2 / (u + v + np.float32(EPS))).sum(-1, dtype=np.float32)


def _cache_dir() -> Path:
    return Path(os.environ.get("GRID_CACHE", Path.home() / ".cache" / "grid-retrieval"))


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _private_cache() -> Path:
    """The cache folder, created private (0700); OSError unless it is owned by this user and
    writable by nobody else (another user could otherwise swap in a library of their own)."""
    folder = _cache_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = folder.stat()
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise OSError(f"{folder}: cache folder belongs to another user")
    if st.st_mode & 0o022:
        raise OSError(f"{folder}: cache folder is writable by other users "
                      f"(mode {st.st_mode & 0o777:o}); make it private: chmod 700")
    return folder


def _build_c(lib_path: Path) -> None:
    """Compile the kernel to ``lib_path`` and record its sha256 beside it (``.sha256``)."""
    cc = os.environ.get("CC", "cc")
    with atomic_path(lib_path) as tmp:  # no half-written library on failure
        cmd = [cc, *_CFLAGS, str(_SRC), "-o", str(tmp)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
        digest = _file_sha256(tmp)
    with atomic_path(lib_path.with_name(lib_path.name + ".sha256")) as tmp:
        tmp.write_text(digest + "\n")


def _verified(lib_path: Path) -> bool:
    """Whether ``lib_path`` is the library this project built (its recorded sha256 matches)."""
    record = lib_path.with_name(lib_path.name + ".sha256")
    try:
        return record.read_text().strip() == _file_sha256(lib_path)
    except OSError:
        return False


def _load_c():
    """Compile (once per source/host) and load the C kernel; False when that is impossible.

    Only a library this project built is loaded: the cache folder must be private to the user,
    and the library's sha256 must match the one recorded when it was built (else it is rebuilt)."""
    global _LIB
    if _LIB is not None:
        return _LIB
    src = _SRC.read_bytes()
    key = hashlib.sha256(src + " ".join(_CFLAGS).encode() + platform.node().encode()
                         + platform.machine().encode()).hexdigest()[:16]
    try:
        lib_path = _private_cache() / f"chi2_{key}.so"
        if not _verified(lib_path):
            _build_c(lib_path)
            if not _verified(lib_path):
                raise OSError(f"{lib_path}: library changed while it was being built")
        lib = ctypes.CDLL(str(lib_path))
        p, n = ctypes.POINTER(ctypes.c_float), ctypes.c_long
        for name, args in (("chi2_tiled", [p, p, p, n, n, n, n]),
                           ("chi2_rows", [p, p, p, n, n, n]),
                           ("chi2_l1_loop", [p, p, p, n, n])):
            getattr(lib, name).argtypes = args
            getattr(lib, name).restype = None
        _LIB = lib
    except (OSError, subprocess.SubprocessError) as err:
        warnings.warn(f"chi-square C kernel unavailable ({err}); using the XLA backend")
        _LIB = False
    return _LIB


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(os.cpu_count())
    return _POOL


def parallel(fn, parts) -> None:
    """``fn(part)`` for every part, on the shared thread pool (ctypes calls release the GIL)."""
    parts = list(parts)
    if len(parts) == 1:
        fn(parts[0])
    else:
        list(_pool().map(fn, parts))


def _chi2_c(q: np.ndarray, a: np.ndarray) -> np.ndarray:
    lib = _load_c()
    q = np.ascontiguousarray(q, np.float32)
    a = np.ascontiguousarray(a, np.float32)
    nq, na, d = q.shape[0], a.shape[0], q.shape[1]
    out = np.empty((nq, na), np.float32)
    p = ctypes.POINTER(ctypes.c_float)
    threads = os.cpu_count() or 1
    # each thread takes a slice of the archive (its tiles stay in its own core's cache), or of
    # the queries when the archive block is small; the result does not depend on the split
    by_archive = na >= SPLIT_MIN_ROWS * threads or na >= nq
    n = na if by_archive else nq
    cuts = np.linspace(0, n, min(threads, max(n, 1)) + 1).astype(int)

    def run(lo_hi):
        lo, hi = (int(x) for x in lo_hi)
        if hi <= lo:
            return
        if by_archive:
            lib.chi2_tiled(q.ctypes.data_as(p), a[lo:hi].ctypes.data_as(p),
                           out[:, lo:].ctypes.data_as(p), nq, hi - lo, d, na)
        else:
            lib.chi2_tiled(q[lo:hi].ctypes.data_as(p), a.ctypes.data_as(p),
                           out[lo:hi].ctypes.data_as(p), hi - lo, na, d, na)

    parallel(run, zip(cuts[:-1], cuts[1:]))
    return out


def _chi2_xla(q: np.ndarray, a: np.ndarray) -> np.ndarray:
    global _XLA_FN
    if _XLA_FN is None:
        import tensorflow as tf

        @tf.function(jit_compile=True, reduce_retracing=True)
        def fn(u, v):
            u = u[:, None, :]
            v = v[None, :, :]
            return 0.5 * tf.reduce_sum(tf.square(u - v) / (u + v + EPS), axis=-1)
        _XLA_FN = fn
    q = np.asarray(q, np.float32)
    a = np.asarray(a, np.float32)
    out = np.empty((q.shape[0], a.shape[0]), np.float32)
    for i in range(0, q.shape[0], 32):  # (32, 1024, D) blocks: XLA fuses them, memory stays small
        for j in range(0, a.shape[0], 1024):
            out[i:i + 32, j:j + 1024] = _XLA_FN(q[i:i + 32], a[j:j + 1024]).numpy()
    return out


def chi2_backend() -> str:
    """The chi-square backend in use: "c", "xla" or "numpy"."""
    choice = os.environ.get("GRID_CHI2_BACKEND", "auto")
    if choice not in ("auto", "c", "xla", "numpy"):
        raise ValueError(f"GRID_CHI2_BACKEND={choice!r}: expected auto, c, xla or numpy")
    if choice in ("auto", "c"):
        if _load_c():
            return "c"
        if choice == "c":
            raise RuntimeError("GRID_CHI2_BACKEND=c but the C kernel could not be built")
        return "xla"
    return choice


def chi2(q: np.ndarray, a: np.ndarray, backend: str | None = None) -> np.ndarray:
    """Exact chi-square distances (nq, na) float32 with the chosen (or configured) backend."""
    backend = backend or chi2_backend()
    if backend == "c" and _load_c():
        return _chi2_c(q, a)
    if backend == "numpy":
        return chi2_numpy(np.asarray(q, np.float32), np.asarray(a, np.float32))
    return _chi2_xla(q, a)


def euclidean(q: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Euclidean distances through the matmul form sqrt(|q|^2 + |a|^2 - 2 q.a), clipped at 0."""
    q = np.asarray(q, np.float32)
    a = np.asarray(a, np.float32)
    sq = (q * q).sum(1)[:, None] + (a * a).sum(1)[None, :] - 2.0 * (q @ a.T)
    return np.sqrt(np.maximum(sq, 0.0, out=sq), out=sq)


def cosine(q: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Cosine distance 1 - cos(q, a); a zero vector has distance 1 to everything."""
    q = np.asarray(q, np.float32)
    a = np.asarray(a, np.float32)
    qn = np.linalg.norm(q, axis=1, keepdims=True)
    an = np.linalg.norm(a, axis=1, keepdims=True)
    qn[qn == 0] = 1.0
    an[an == 0] = 1.0
    return 1.0 - (q / qn) @ (a / an).T


def pairwise(q: np.ndarray, a: np.ndarray, metric: str = "chi2") -> np.ndarray:
    """Distances (nq, na) float32 for ``metric`` in METRICS; NaN becomes +inf (ranks last)."""
    if metric == "chi2":
        d = chi2(q, a)
    elif metric == "euclidean":
        d = euclidean(q, a)
    elif metric == "cosine":
        d = cosine(q, a)
    else:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
    d = np.asarray(d, np.float32)
    nan = np.isnan(d)
    if nan.any():
        d[nan] = np.inf
    return d
