"""Label noise as overlays: one small file per noise level instead of a full copy of the pixels.

``train_noise_prcnt<N>.overlay.npz`` (numpy ``savez_compressed``) holds, for the N train
records in their global-index order (the order of the split's shards, records_meta.json):

* ``names`` (N,) bytes: the records' patch names (the key; checked against the records);
* ``noisy_label`` (N, C) uint8: the noisy multi-hot that becomes ``noisy_label``;
* ``map_noisy_label`` (N, C) uint8 (BigEarthNet v2 only): the map rule's multi-hot;
* ``map_lut`` (N, C) int8 (archives with pixel maps): per record, the class each class id of the
  clean map becomes (the identity where the noise left it). The noise rule changes every pixel
  of a picked class to one other class, with masks from the clean map, so the noisy map is
  exactly ``lut[clean]`` (-1 stays -1): 19 bytes a record instead of a 14-64 KB map;
* ``digest``: sha256 of the names joined by newlines, as records_meta.json states it for the
  split; ``level``, ``seed``, ``archive``.

The input pipeline loads an overlay into memory once (v2 train: about 50 MB) and gathers a
record's row by its global index (``apply``), after the serialized records were shuffled and
parsed. A missing or mismatched overlay is an :class:`OverlayError` naming the file.
"""
from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atomic_files import atomic_path

FORMAT = 1


class OverlayError(ValueError):
    """An overlay that is missing, unreadable or made for other records; names the file."""


def names_digest(names) -> str:
    """sha256 hex of patch names (str or bytes) joined by newlines: the identity of a record
    order, stored in records_meta.json and in each overlay."""
    h = hashlib.sha256()
    for i, n in enumerate(names):
        h.update((b"\n" if i else b"") + (n if isinstance(n, bytes) else str(n).encode()))
    return h.hexdigest()


def lut_from_maps(clean: np.ndarray, noisy: np.ndarray | None, nb_class: int) -> np.ndarray:
    """int8 (C,) class remap taking ``clean`` to ``noisy`` (identity where unchanged); ValueError
    when no remap does (a pixel of one class would go to two)."""
    lut = np.arange(nb_class, dtype=np.int8)
    if noisy is None:
        return lut
    clean, noisy = np.asarray(clean).ravel(), np.asarray(noisy).ravel()
    changed = clean != noisy
    if np.any(clean[changed] < 0):
        raise ValueError("the noisy map changes unlabelled (-1) pixels")
    lut[clean[changed]] = noisy[changed]
    if not np.array_equal(remap(clean, lut), noisy):
        raise ValueError("the noisy map is not a class remap of the clean one")
    return lut


def lut_from_picks(picks: np.ndarray, nb_class: int) -> np.ndarray:
    """int8 (C,) remap of (class, new class) picks (archives.benv2_noise: one pick per class)."""
    lut = np.arange(nb_class, dtype=np.int8)
    if len(picks):
        lut[np.asarray(picks)[:, 0]] = np.asarray(picks)[:, 1]
    return lut


def remap(seg_map: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``lut[seg_map]`` with -1 (unlabelled) kept: the noisy map in numpy."""
    seg_map = np.asarray(seg_map)
    return np.where(seg_map < 0, seg_map, np.asarray(lut)[np.maximum(seg_map, 0)]).astype(
        seg_map.dtype)


def write_overlay(path, *, names, labels: dict, map_lut=None, level: int, seed: int,
                  archive: str) -> Path:
    """Write an overlay atomically; ``labels``: {"noisy_label": (N, C), ...} 0/1 arrays."""
    names = np.asarray([n if isinstance(n, bytes) else str(n).encode() for n in names], "S")
    arrays = {k: np.asarray(v).astype(np.uint8) for k, v in labels.items()}
    for k, v in arrays.items():
        if v.shape[0] != len(names):
            raise ValueError(f"{path}: {k} has {v.shape[0]} rows for {len(names)} records")
    if map_lut is not None:
        arrays["map_lut"] = np.asarray(map_lut, np.int8)
    arrays.update(names=names, digest=np.array(names_digest(names)), level=np.array(int(level)),
                  seed=np.array(int(seed)), archive=np.array(archive), format=np.array(FORMAT))
    with atomic_path(path) as tmp:
        write_npz(tmp, arrays)
    return Path(path)


def write_npz(path, arrays: dict) -> None:
    """A compressed .npz that ``np.load`` reads, with fixed entry times: the same arrays give
    the same bytes (np.savez_compressed stamps the current time)."""
    import io

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


@dataclass(frozen=True)
class Overlay:
    path: str
    names: np.ndarray
    arrays: dict
    digest: str
    level: int
    archive: str

    def __len__(self) -> int:
        return len(self.names)


def load_overlay(path) -> Overlay:
    """Read an overlay; OverlayError naming ``path`` when it is missing or unreadable."""
    path = str(path)
    if not Path(path).is_file():
        raise OverlayError(f"{path}: noise overlay not found; prepare the noise level with the "
                           "prep script (--noise-levels)")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise OverlayError(f"{path}: unreadable noise overlay ({err}); prepare it again") from None
    missing = {"names", "digest", "noisy_label", "level"} - set(data)
    if missing or int(data.get("format", -1)) != FORMAT:
        raise OverlayError(f"{path}: not a noise overlay of format {FORMAT} (missing "
                           f"{sorted(missing) or 'format'}); prepare it again")
    arrays = {k: data[k] for k in ("noisy_label", "map_noisy_label", "map_lut") if k in data}
    return Overlay(path, data["names"], arrays, str(data["digest"]), int(data["level"]),
                   str(data.get("archive", "")))


def check_matches(overlay: Overlay, counts, digest: str | None, files) -> None:
    """OverlayError unless the overlay covers exactly the records of ``files`` (their total
    count, and the digest records_meta.json states for them when it does)."""
    total = int(sum(counts))
    where = files[0] if len(files) == 1 else f"{files[0]} .. ({len(files)} files)"
    if len(overlay) != total:
        raise OverlayError(f"{overlay.path}: made for {len(overlay)} records, but {where} hold "
                           f"{total}; use the overlay prepared with these records")
    if digest is not None and digest != overlay.digest:
        raise OverlayError(f"{overlay.path}: made for other records than {where} (another "
                           "prep run, seed or split); use the overlay prepared with them")


def tensors(overlay: Overlay, label_key: str = "noisy_label") -> dict:
    """The overlay as TF constants for ``apply``: ``label_key``'s labels and the map remap."""
    import tensorflow as tf

    if label_key not in overlay.arrays:
        raise OverlayError(f"{overlay.path}: holds no {label_key!r} labels (keys: "
                           f"{sorted(overlay.arrays)})")
    out = {"noisy_label": tf.constant(overlay.arrays[label_key], tf.float32)}
    if "map_lut" in overlay.arrays:
        out["map_lut"] = tf.constant(overlay.arrays["map_lut"].astype(np.int32))
    return out


def apply(ex: dict, index, table: dict) -> dict:
    """``ex`` (a parsed record) with the overlay's noisy label and, where maps exist, noisy map
    of record ``index`` (its global index)."""
    import tensorflow as tf

    ex = dict(ex)
    ex["noisy_label"] = tf.gather(table["noisy_label"], index)
    if "map_lut" in table and "seg_map" in ex:
        seg = ex["seg_map"]
        ids = tf.cast(seg, tf.int32)
        noisy = tf.gather(tf.gather(table["map_lut"], index), tf.maximum(ids, 0))
        ex["noisy_seg_map"] = tf.cast(tf.where(ids < 0, ids, noisy), seg.dtype)
    return ex


def overlay_digest_for(files) -> str | None:
    """The digest records_meta.json states for the split whose shards are ``files`` (None when
    the metadata does not list exactly these files)."""
    from archives.record_files import split_entry

    if not files:
        return None
    folder = Path(files[0]).parent
    names = [Path(f).name for f in files]
    if any(Path(f).parent != folder for f in files):
        return None
    for split in {n.split("-")[0].split(".")[0] for n in names}:
        entry = split_entry(folder, split)
        if entry and list(entry.get("shards", ())) == names:
            return entry.get("digest")
    return None

