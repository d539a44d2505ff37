"""The ``hard`` variant of the DLRSD-style sample archive: classes that are harder to tell apart.

Chosen so that a clean model does not saturate retrieval and label noise can cost it
(docs/data.md, "The hard DLRSD-style sample (`--variant hard`)"); the scene compositions and the
file layout are those of ``archives.sample``. Differences from the default variant:

- colours: each class colour is pulled 60 % towards the mean colour of its group (vegetation,
  built-up, water, soil, vehicles), so classes of a group share most of their colour;
- textures: each class texture is half its own and half that of the next class of its group,
  at two thirds of the default amplitude;
- per image and class, a random colour offset (sd 18 per channel);
- illumination: a gain in [0.5, 1.5], a per-channel cast in [0.8, 1.2] and a linear shading
  gradient of up to +-30 % across the image, on top of pixel noise of sd 12;
- regions: irregular blobs (a radius that varies with the angle, rotated) and thin strips,
  10 to 110 pixels across, instead of axis-aligned rectangles and ellipses.
"""
from __future__ import annotations

import numpy as np

from archives import dlrsd

GROUPS = (
    ("grass", "trees", "field", "chaparral", "court"),
    ("buildings", "pavement", "mobile home", "dock", "airplane", "tanks", "ship"),
    ("sea", "water"),
    ("bare soil", "sand"),
    ("cars",),
)
COLOUR_SHARE = 0.6      # share of a class colour taken from its group's mean colour
TEXTURE_AMPLITUDE = 12.0
CLASS_JITTER_SD = 18.0
PIXEL_NOISE_SD = 12.0
assert sorted(n for g in GROUPS for n in g) == sorted(dlrsd.CLASS_NAMES)


def class_colours(surface: dict) -> np.ndarray:
    """(17, 3) float32 colours in class-id order, each pulled towards its group mean."""
    own = np.array([surface[n][0] for n in dlrsd.CLASS_NAMES], np.float32)
    out = own.copy()
    for group in GROUPS:
        ids = [dlrsd.CLASS_NAMES.index(n) for n in group]
        out[ids] = (1 - COLOUR_SHARE) * own[ids] + COLOUR_SHARE * own[ids].mean(axis=0)
    return out


def mix_textures(tex: np.ndarray) -> np.ndarray:
    """Each class texture: half its own, half that of the next class in its group."""
    out = tex.copy()
    for group in GROUPS:
        ids = [dlrsd.CLASS_NAMES.index(n) for n in group]
        for i, j in zip(ids, ids[1:] + ids[:1]):
            out[i] = 0.5 * tex[i] + 0.5 * tex[j]
    return out


def _blob(y, x, cy, cx, r, rng) -> np.ndarray:
    """Boolean mask of an irregular, rotated blob of mean radius ``r`` around (cy, cx)."""
    angle = np.arctan2(y - cy, x - cx)
    k1, k2 = rng.integers(2, 6, 2)
    p1, p2, rot = rng.uniform(0, 2 * np.pi, 3)
    radius = r * (1 + 0.35 * np.sin(k1 * angle + p1) + 0.2 * np.sin(k2 * angle + p2))
    stretch = rng.uniform(0.5, 1.0)
    dy, dx = y - cy, x - cx
    u = dx * np.cos(rot) + dy * np.sin(rot)
    v = (-dx * np.sin(rot) + dy * np.cos(rot)) / stretch
    return np.hypot(u, v) < radius


def _strip(y, x, cy, cx, rng) -> np.ndarray:
    """Boolean mask of a straight strip (a road, a canal) through (cy, cx)."""
    a = rng.uniform(0, np.pi)
    width = rng.uniform(4, 14)
    return np.abs((x - cx) * np.sin(a) - (y - cy) * np.cos(a)) < width / 2


def draw_map(scene_spec, classes_idx: dict, size: int, rng: np.random.Generator) -> np.ndarray:
    """Class-id map (size, size) int8 for one image; ``scene_spec`` = (bg, always, maybe)."""
    bg, always, maybe = scene_spec
    seg = np.full((size, size), classes_idx[bg[int(rng.integers(len(bg)))]], np.int8)
    classes = list(always) + [c for c in maybe if rng.random() < 0.5]
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    for name in classes:
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.integers(0, size, 2)
            if rng.random() < 0.2:
                mask = _strip(y, x, cy, cx, rng)
            else:
                mask = _blob(y, x, cy, cx, rng.uniform(5, 55), rng)
            seg[mask] = classes_idx[name]
    return seg


def render(seg: np.ndarray, tex: np.ndarray, colours: np.ndarray,
           rng: np.random.Generator) -> np.ndarray:
    """uint8 RGB image (size, size, 3) of a class map under random illumination."""
    size = seg.shape[0]
    jitter = rng.normal(0, CLASS_JITTER_SD, colours.shape).astype(np.float32)
    flat = seg.ravel().astype(np.intp)
    pattern = tex.reshape(tex.shape[0], -1)[flat, np.arange(flat.size)].reshape(size, size, 1)
    img = (colours + jitter)[seg] + TEXTURE_AMPLITUDE * pattern
    img += PIXEL_NOISE_SD * rng.standard_normal((size, size, 3), dtype=np.float32)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    a = rng.uniform(0, 2 * np.pi)
    shading = 1 + rng.uniform(-0.3, 0.3) * (x * np.cos(a) + y * np.sin(a)) * 2
    gain = rng.uniform(0.5, 1.5) * rng.uniform(0.8, 1.2, 3).astype(np.float32)
    img = img * shading[..., None] * gain
    return np.clip(img, 0, 255).astype(np.uint8)
