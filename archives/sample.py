"""Small synthetic archives in the exact real layouts, deterministic by seed.

``python -m archives.sample --dataset DLRSD --out DIR --per-class N --seed S`` writes
``DIR/UCMerced_LandUse/Images/<scene>/<scene>NN.tif``, ``DIR/DLRSD/Images/<scene>/<scene>NN.png``
and ``DIR/DLRSD/multi-labels.xlsx``. Each image is made of labelled regions (a background class
plus blobs and rectangles of the scene's typical classes); every class has its own colour and
texture, plus pixel noise, so the labels can be learned. Another ``--dataset`` dispatches to the
writer its description names (archives/registry.py ``sample_module``, e.g. archives.sample_ben).
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import cli_common

if __name__ == "__main__":  # quiet TensorFlow before archives.dlrsd imports it
    cli_common.quiet_tensorflow("--verbose" in sys.argv[1:])
from archives import dlrsd, registry  # noqa: E402

C = {n: i for i, n in enumerate(dlrsd.CLASS_NAMES)}
# scene -> (background classes, classes always drawn, classes drawn with probability 1/2)
SCENES = {
    "agricultural": (["field"], [], ["trees", "bare soil", "grass"]),
    "airplane": (["pavement"], ["airplane"], ["cars", "grass", "bare soil", "buildings"]),
    "baseballdiamond": (["grass"], ["bare soil"], ["pavement", "trees", "buildings"]),
    "beach": (["sand"], ["sea"], ["trees", "grass"]),
    "buildings": (["pavement"], ["buildings"], ["cars", "trees", "grass"]),
    "chaparral": (["chaparral"], [], ["bare soil", "trees"]),
    "denseresidential": (["pavement"], ["buildings"], ["trees", "cars", "grass"]),
    "forest": (["trees"], [], ["grass", "bare soil"]),
    "freeway": (["bare soil", "grass"], ["pavement"], ["cars", "trees"]),
    "golfcourse": (["grass"], ["trees"], ["sand", "water", "pavement"]),
    "harbor": (["sea"], ["ship", "dock"], ["pavement", "buildings"]),
    "intersection": (["pavement"], ["cars"], ["buildings", "trees", "grass"]),
    "mediumresidential": (["grass"], ["buildings"], ["pavement", "trees", "cars"]),
    "mobilehomepark": (["pavement"], ["mobile home"], ["trees", "grass", "cars"]),
    "overpass": (["bare soil"], ["pavement"], ["cars", "grass", "trees"]),
    "parkinglot": (["pavement"], ["cars"], ["trees", "buildings", "grass"]),
    "river": (["trees", "grass"], ["water"], ["bare soil", "sand"]),
    "runway": (["grass"], ["pavement"], ["bare soil", "field"]),
    "sparseresidential": (["grass"], ["buildings"], ["trees", "pavement", "bare soil"]),
    "storagetanks": (["bare soil"], ["tanks"], ["pavement", "grass"]),
    "tenniscourt": (["pavement"], ["court"], ["trees", "grass", "buildings"]),
}
assert sorted(SCENES) == dlrsd.SCENE_CLASSES
# land-cover class -> (mean RGB colour of its surface, texture kind, texture scale)
SURFACE = {
    "airplane": ((205, 205, 210), "flat", 0), "bare soil": ((150, 120, 85), "speckle", 4),
    "buildings": ((175, 160, 150), "grid", 12), "cars": ((60, 70, 170), "speckle", 2),
    "chaparral": ((105, 110, 70), "blotch", 6), "court": ((70, 130, 80), "stripes", 16),
    "dock": ((185, 170, 140), "stripes", 6), "field": ((160, 175, 90), "stripes", 10),
    "grass": ((80, 140, 60), "speckle", 1), "mobile home": ((220, 215, 200), "grid", 6),
    "pavement": ((120, 120, 125), "flat", 0), "sand": ((220, 200, 160), "blotch", 12),
    "sea": ((30, 70, 120), "waves", 20), "ship": ((235, 235, 235), "flat", 0),
    "tanks": ((230, 230, 220), "rings", 5), "trees": ((35, 80, 35), "blotch", 3),
    "water": ((45, 85, 95), "waves", 9),
}
SIZE = dlrsd.IMAGE_SIZE


def _textures(rng: np.random.Generator) -> np.ndarray:
    """(17, SIZE, SIZE) float32 texture offsets, one per class."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    out = np.zeros((dlrsd.NB_CLASS, SIZE, SIZE), np.float32)
    for name, (_, kind, s) in SURFACE.items():
        if kind == "speckle":
            t = rng.normal(0, 1, (SIZE // s + 1, SIZE // s + 1)).repeat(s, 0).repeat(s, 1)[:SIZE, :SIZE]
        elif kind == "blotch":
            t = np.sin(x / s + 2 * np.sin(y / (2 * s))) * np.cos(y / s + np.sin(x / (3 * s)))
        elif kind == "stripes":
            t = np.sign(np.sin((x + 0.3 * y) * np.pi / s))
        elif kind == "grid":
            t = ((x % s < 2) | (y % s < 2)).astype(np.float32) * 2 - 1
        elif kind == "waves":
            t = np.sin((y + 3 * np.sin(x / 13)) * 2 * np.pi / s)
        elif kind == "rings":
            t = np.sin(np.hypot(x % (4 * s) - 2 * s, y % (4 * s) - 2 * s) * np.pi / s)
        else:
            t = np.zeros((SIZE, SIZE))
        out[C[name]] = t
    return out


def _draw_map(scene: str, rng: np.random.Generator) -> np.ndarray:
    """Class-id map (SIZE, SIZE) int8 for one image of ``scene``."""
    bg, always, maybe = SCENES[scene]
    seg = np.full((SIZE, SIZE), C[bg[int(rng.integers(len(bg)))]], np.int8)
    classes = list(always) + [c for c in maybe if rng.random() < 0.5]
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    for name in classes:
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.integers(0, SIZE, 2)
            h, w = rng.integers(16, 80, 2)
            if rng.random() < 0.5:
                seg[max(cy - h // 2, 0):cy + h // 2, max(cx - w // 2, 0):cx + w // 2] = C[name]
            else:
                seg[((y - cy) / (h / 2)) ** 2 + ((x - cx) / (w / 2)) ** 2 < 1] = C[name]
    return seg


def _render(seg: np.ndarray, tex: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    colours = np.array([SURFACE[n][0] for n in dlrsd.CLASS_NAMES], np.float32)
    flat = seg.ravel().astype(np.intp)
    pattern = tex.reshape(dlrsd.NB_CLASS, -1)[flat, np.arange(flat.size)].reshape(SIZE, SIZE, 1)
    img = colours[seg] + 18.0 * pattern
    img += 8.0 * rng.standard_normal((SIZE, SIZE, 3), dtype=np.float32)
    img *= np.float32(rng.uniform(0.85, 1.15))  # scene-wide illumination
    return np.clip(img, 0, 255).astype(np.uint8)


VARIANTS = ("default", "hard")


def write_sample_archive(root, *, seed: int = 0, per_class: int = 10, scenes=None,
                         variant: str = "default") -> dict:
    """Write a DLRSD-style sample archive under ``root``; returns its folders and label file.

    ``scenes``: subset of the 21 scene folders (default all). Every tenth image of every third
    scene is stored at a size other than 256x256 to exercise resizing. ``variant``: "default"
    (distinct colours and textures) or "hard" (``archives.sample_hard``: shared colours and
    textures, varying illumination, irregular regions).
    """
    import openpyxl

    if variant not in VARIANTS:
        raise ValueError(f"variant: {variant!r} is not one of {', '.join(VARIANTS)}")
    root = Path(root)
    ucm, dl = root / "UCMerced_LandUse" / "Images", root / "DLRSD" / "Images"
    scenes = sorted(scenes) if scenes is not None else dlrsd.SCENE_CLASSES
    unknown = set(scenes) - set(SCENES)
    if unknown:
        raise ValueError(f"unknown scene folders {sorted(unknown)}")
    tex = _textures(np.random.default_rng([seed, 0]))
    if variant == "hard":
        from archives import sample_hard
        tex = sample_hard.mix_textures(tex)
        colours = sample_hard.class_colours(SURFACE)
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Sheet1"
    ws.append(["IMAGE\\LABEL"] + dlrsd.CLASS_NAMES)
    for k, scene in enumerate(scenes):
        (ucm / scene).mkdir(parents=True, exist_ok=True)
        (dl / scene).mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, 1, dlrsd.SCENE_CLASSES.index(scene)])
        for i in range(per_class):
            stem = f"{scene}{i:02d}"
            if variant == "hard":
                seg = sample_hard.draw_map(SCENES[scene], C, SIZE, rng)
                img = Image.fromarray(sample_hard.render(seg, tex, colours, rng))
            else:
                seg = _draw_map(scene, rng)
                img = Image.fromarray(_render(seg, tex, rng))
            if k % 3 == 0 and i % 10 == 3:
                img = img.resize((SIZE - 9, SIZE + 3), Image.BICUBIC)
            img.save(ucm / scene / f"{stem}.tif")
            Image.fromarray(dlrsd.encode_palette(seg)).save(dl / scene / f"{stem}.png")
            ws.append([stem] + [int(v) for v in dlrsd.classes_present(seg)])
    labels = root / "DLRSD" / "multi-labels.xlsx"
    wb.save(labels)
    return {"ucm": root / "UCMerced_LandUse", "dlrsd": root / "DLRSD", "multi_labels": labels}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=[a.name for a in registry.ARCHIVES.values()
                                         if a.sample_module], default="DLRSD")
    p.add_argument("--out", required=True, help="folder to write the archive into")
    p.add_argument("--per-class", type=int, default=10, help="DLRSD images per scene folder")
    p.add_argument("--patches", type=int, default=None, help="BEN patches (default: its own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", choices=VARIANTS, default="default",
                   help="DLRSD: 'hard' shares colours/textures between classes "
                        "(docs/data.md)")
    cli_common.add_verbose_arg(p)
    a = p.parse_args(argv)
    cli_common.quiet_tensorflow(a.verbose)
    # the archive's own writer (named in its description), given the options it takes
    writer = importlib.import_module(registry.get(a.dataset).sample_module).write_sample_archive
    options = {"per_class": a.per_class, "n_patches": a.patches, "variant": a.variant}
    taken = inspect.signature(writer).parameters
    out = writer(a.out, seed=a.seed,
                 **{k: v for k, v in options.items() if v is not None and k in taken})
    print(f"{a.dataset} sample archive written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
