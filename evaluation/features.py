"""Feature files (HDF5) and feature extraction.

File layout: datasets ``feature`` (N, F) float32, ``label`` (N, C) float32, ``patch_name`` (N,)
bytes; optionally ``code`` (N, K/8) uint8, binary hash codes packed in ``numpy.packbits``
order (see evaluation/hamming.py); attribute ``fingerprint`` (JSON) identifying the model file
and the record files the features came from, so a file is reused only while both are unchanged.
A file of hash codes alone (``code``, ``label``, ``patch_name``, no ``feature``: codes written by
another tool) is valid input for Hamming ranking. Files are written under a temporary name and
renamed into place.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import h5py
import numpy as np

from atomic_files import atomic_path

FINITE_CHUNK = 65536


class FeatureFileError(ValueError):
    """A feature file that cannot be used; the message names the file and the problem."""


@dataclass
class FeatureSet:
    """Features of one side (query or archive). ``feature`` is an array or an open h5py dataset,
    or None for a file of hash codes alone."""
    path: str
    feature: object
    label: np.ndarray
    patch_name: np.ndarray
    handle: h5py.File | None = None
    code: np.ndarray | None = None  # packed hash codes (N, K/8) uint8, when the file has them

    def __len__(self) -> int:
        return self.label.shape[0]

    @property
    def dim(self) -> int | None:
        """Feature width; None for a file of codes alone."""
        return None if self.feature is None else self.feature.shape[1]

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(model_path, record_paths: Sequence) -> dict:
    """Identity of a model file (size, mtime, sha256) and record files (size, mtime)."""
    mp = Path(model_path)
    st = mp.stat()
    recs = []
    for p in record_paths:
        rs = Path(p).stat()
        recs.append({"path": str(Path(p).resolve()), "size": rs.st_size, "mtime_ns": rs.st_mtime_ns})
    return {"model": {"path": str(mp.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                      "sha256": _sha256(mp)},
            "records": recs}


def write_features(path, feature, label, patch_name, fp: dict | None = None,
                   code=None) -> None:
    """Write a feature file atomically (temporary name, then rename); ``code``: packed codes."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("feature", data=np.asarray(feature, np.float32))
        if code is not None:
            f.create_dataset("code", data=np.asarray(code, np.uint8))
        f.create_dataset("label", data=np.asarray(label, np.float32))
        names = [n if isinstance(n, bytes) else str(n).encode() for n in patch_name]
        f.create_dataset("patch_name", data=np.array(names, dtype=object),
                         dtype=h5py.string_dtype("utf-8"))
        if fp is not None:
            f.attrs["fingerprint"] = json.dumps(fp, sort_keys=True)


def stored_fingerprint(path) -> dict | None:
    """The fingerprint attribute of a feature file, or None when absent or unreadable."""
    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("fingerprint")
            return json.loads(raw) if raw is not None else None
    except (OSError, ValueError):
        return None


def check_finite(path: str, feature) -> None:
    """Raise FeatureFileError if any feature value is NaN or Inf (read in chunks)."""
    for lo in range(0, feature.shape[0], FINITE_CHUNK):
        block = np.asarray(feature[lo:lo + FINITE_CHUNK])
        if not np.isfinite(block).all():
            row = lo + int(np.flatnonzero(~np.isfinite(block).all(1))[0])
            raise FeatureFileError(f"{path}: feature holds NaN or Inf values (first at row {row})")


def check_nonnegative(path: str, feature) -> None:
    """FeatureFileError if any feature value is negative (chi-square needs u + v >= 0)."""
    for lo in range(0, feature.shape[0], FINITE_CHUNK):
        block = np.asarray(feature[lo:lo + FINITE_CHUNK])
        if (block < 0).any():
            row = lo + int(np.flatnonzero((block < 0).any(1))[0])
            raise FeatureFileError(f"{path}: feature holds negative values (first at row {row}); "
                                   "chi-square is defined for non-negative features: use "
                                   "--metric euclidean or --metric cosine")


def read_features(path, in_memory: bool = True, check: bool = True) -> FeatureSet:
    """Open and validate a feature file. With ``in_memory=False`` ``feature`` stays on disk."""
    path = str(path)
    if not Path(path).is_file():
        raise FeatureFileError(f"{path}: feature file not found")
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise FeatureFileError(f"{path}: not a readable HDF5 file ({err})") from None
    try:
        missing = [k for k in ("label",) if k not in handle]
        if "feature" not in handle and "code" not in handle:
            missing.insert(0, "feature")
        if missing:
            raise FeatureFileError(f"{path}: missing HDF5 dataset(s) {missing}; found "
                                   f"{sorted(handle.keys())} (a file of hash codes holds 'code' "
                                   "instead of 'feature')")
        label = handle["label"]
        feat = handle["feature"] if "feature" in handle else None
        if label.ndim != 2 or (feat is not None and feat.ndim != 2):
            raise FeatureFileError(f"{path}: feature and label must be 2-D, got shapes "
                                   f"{None if feat is None else feat.shape} and {label.shape}")
        rows = label.shape[0]
        if feat is not None and feat.shape[0] != rows:
            raise FeatureFileError(f"{path}: {feat.shape[0]} features but {rows} labels")
        if "patch_name" in handle:
            names = handle["patch_name"][()]
            if len(names) != rows:
                raise FeatureFileError(f"{path}: {rows} rows but {len(names)} patch names")
        else:  # optional: features made elsewhere may have no names
            warnings.warn(f"{path}: no patch_name dataset; rows are named by their index",
                          stacklevel=2)
            names = np.array([str(i).encode() for i in range(rows)], dtype=object)
        label = label[()].astype(np.float32)
        code = _read_code(path, handle, rows)
        if feat is None:
            handle.close()
            return FeatureSet(path, None, label, names, code=code)
        if in_memory:  # read once; the finite check then runs on the array
            feat = feat[()].astype(np.float32)
        if check:
            check_finite(path, feat)
        if in_memory:
            handle.close()
            return FeatureSet(path, feat, label, names, code=code)
        return FeatureSet(path, feat, label, names, handle, code=code)
    except Exception:
        handle.close()
        raise


def _read_code(path: str, handle, rows: int):
    """The ``code`` dataset as uint8 (rows, B), None when absent; FeatureFileError when bad."""
    if "code" not in handle:
        return None
    code = handle["code"]
    if code.ndim != 2 or code.dtype != np.uint8 or code.shape[0] != rows:
        raise FeatureFileError(f"{path}: code must be uint8 ({rows}, bytes) packed bits, got "
                               f"{code.dtype} {code.shape}")
    return code[()]


def check_pair(query: FeatureSet, archive: FeatureSet, metric: str | None = None) -> None:
    """Raise FeatureFileError when a query and an archive file cannot be ranked together (with
    ``metric``: also when a file lacks what it ranks, ``code`` for hamming, else ``feature``)."""
    if len(archive) == 0:
        raise FeatureFileError(f"{archive.path}: empty archive (0 features)")
    if len(query) == 0:
        raise FeatureFileError(f"{query.path}: no query features (0 rows)")
    if metric == "hamming":
        for fs in (query, archive):
            if fs.code is None:
                raise FeatureFileError(f"{fs.path}: --metric hamming needs the dataset 'code' "
                                       "(packed hash codes; written for MiLaN runs)")
        if query.code.shape[1] != archive.code.shape[1]:
            raise FeatureFileError(f"code widths differ: {query.path} has "
                                   f"{query.code.shape[1] * 8} bits, {archive.path} has "
                                   f"{archive.code.shape[1] * 8} bits")
    elif metric is not None:
        for fs in (query, archive):
            if fs.feature is None:
                raise FeatureFileError(f"{fs.path}: holds hash codes only (no 'feature' "
                                       f"dataset); --metric {metric} ranks features: use "
                                       "--metric hamming")
    if query.dim is not None and archive.dim is not None and query.dim != archive.dim:
        raise FeatureFileError(f"feature widths differ: {query.path} has {query.dim}, "
                               f"{archive.path} has {archive.dim}")
    if query.label.shape[1] != archive.label.shape[1]:
        raise FeatureFileError(f"label widths differ: {query.path} has {query.label.shape[1]}, "
                               f"{archive.path} has {archive.label.shape[1]}")


def extract_features(model, dataset, label_key: str = "label", progress: bool = False):
    """Run ``model`` over a batched tf.data dataset of dicts (``image``, ``label_key``,
    ``patch_name``) -> (feature (N, F) float32, label (N, C) float32, patch_name (N,) bytes)."""
    feats, labels, names = [], [], []
    it = dataset
    if progress:
        from tqdm import tqdm
        it = tqdm(dataset, desc="features", unit="batch", leave=False)
    for batch in it:
        out = model(batch["image"], training=False)
        out = out.numpy() if hasattr(out, "numpy") else np.asarray(out)
        feats.append(out.astype(np.float32).reshape(out.shape[0], -1))
        labels.append(np.asarray(batch[label_key], np.float32))
        names.extend(batch["patch_name"].numpy().tolist())
    if not feats:
        raise ValueError("feature extraction got an empty dataset")
    return np.concatenate(feats), np.concatenate(labels), np.array(names, dtype=object)


def ensure_features(out_path, model_path, record_paths: Sequence, make_dataset: Callable,
                    load_model: Callable | None = None, progress: bool = False,
                    binary: bool = False) -> bool:
    """Make ``out_path`` hold valid features of ``record_paths`` under ``model_path``.

    Reuses an existing file whose fingerprint matches and which reads back cleanly (returns
    True); otherwise extracts with ``load_model(model_path)`` over ``make_dataset(record_paths)``
    and writes the file atomically (returns False). ``binary``: the model outputs sigmoid
    hash outputs; also store their packed codes (dataset ``code``).
    """
    missing = [str(p) for p in [model_path, *record_paths] if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"missing file(s): {missing}")
    fp = fingerprint(model_path, record_paths)
    if Path(out_path).is_file() and stored_fingerprint(out_path) == fp:
        try:
            fs = read_features(out_path, in_memory=False, check=False)
            fs.close()
            if fs.code is not None or not binary:
                return True
        except FeatureFileError:
            pass
    if load_model is None:
        import keras
        load_model = keras.models.load_model
    try:
        model = load_model(str(model_path))
    except Exception as err:  # a truncated .keras file fails in many ways ("File not found", ...)
        text = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise FeatureFileError(f"{model_path}: cannot be loaded as a Keras model ({text})") \
            from None
    feat, label, names = extract_features(model, make_dataset(list(map(str, record_paths))),
                                          progress=progress)
    code = None
    if binary:
        from evaluation.hamming import pack_codes
        code = pack_codes(feat)
    write_features(out_path, feat, label, names, fp, code=code)
    return False
