"""Pictures of retrieval results: a query and its top-k images, captioned with labels.

Images come from the TFRecords through the archive module's ``parse_records``; the archive's
description (archives/registry.py) names the channels shown as RGB and the display range:
DLRSD as is (0-255 RGB), BEN as an RGB composite of B04/B03/B02, contrast-stretched between the
2nd and 98th percentile of each picture.
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np


def to_rgb(image: np.ndarray, dataset: str) -> np.ndarray:
    """A displayable (H, W, 3) float image in [0, 1] from a parsed ``image``."""
    from archives import registry
    info = registry.get(dataset)
    rgb = np.asarray(image, np.float32)[..., list(info.rgb_channels)]
    if info.rgb_max:
        return np.clip(rgb / info.rgb_max, 0.0, 1.0)
    lo, hi = np.percentile(rgb, 2), np.percentile(rgb, 98)
    return np.clip((rgb - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def load_images(record_paths: Sequence[str], dataset: str, indices) -> dict[int, np.ndarray]:
    """{record index: RGB image} for the wanted indices (records read in file order, once)."""
    from archives import registry
    info = registry.get(dataset)
    wanted = set(int(i) for i in indices)
    out: dict[int, np.ndarray] = {}
    if not wanted:
        return out
    last = max(wanted)
    count = 0
    for i, ex in enumerate(info.load().parse_records(list(record_paths),
                                                     **dict(info.parse_kwargs))):
        count = i + 1
        if i in wanted:
            out[i] = to_rgb(ex["image"].numpy(), dataset)
        if i >= last:
            break
    missing = wanted - set(out)
    if missing:
        raise ValueError(f"{list(record_paths)}: only {count} records, need index {max(missing)}")
    return out


def label_text(labels: np.ndarray, class_names: Sequence[str]) -> str:
    names = [class_names[c] for c in np.flatnonzero(np.asarray(labels) > 0.5)]
    return ", ".join(names) if names else "(no label)"


def plot_query(out_path, query_image, query_labels, images, labels, class_names,
               title: str = "") -> None:
    """One PNG: the query then its retrieved images, each captioned (labels, shared count)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q = np.asarray(query_labels) > 0.5
    n = len(images) + 1
    cols = min(n, 6)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 3.4 * rows), squeeze=False,
                             layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    panels = [(query_image, query_labels, "query")]
    for r, (img, lab) in enumerate(zip(images, labels), 1):
        shared = int((q & (np.asarray(lab) > 0.5)).sum())
        panels.append((img, lab, f"#{r}, shared {shared}"))
    for ax, (img, lab, head) in zip(axes.ravel(), panels):
        ax.imshow(img)
        lines = textwrap.wrap(label_text(lab, class_names), 28)
        if len(lines) > 3:  # keep captions from running into the row above
            lines = lines[:2] + [lines[2][:25] + "..."]
        text = "\n".join(lines)
        ax.set_title(f"{head}\n{text}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=80)
    plt.close(fig)


def plot_results(out_dir, dataset: str, query_records, archive_records, topk_index: np.ndarray,
                 query_labels, archive_labels, query_names=None, per_query: int = 10) -> list[Path]:
    """One PNG per row of ``topk_index`` (query i = record i); returns the written paths."""
    from archives import registry
    class_names = registry.get(dataset).class_names
    top = np.asarray(topk_index)[:, :per_query]
    q_imgs = load_images(query_records, dataset, range(top.shape[0]))
    a_imgs = load_images(archive_records, dataset, np.unique(top))
    paths = []
    for i, row in enumerate(top):
        name = i if query_names is None else query_names[i]
        name = name.decode() if isinstance(name, bytes) else str(name)
        path = Path(out_dir) / f"query_{i:05d}.png"
        plot_query(path, q_imgs[i], query_labels[i], [a_imgs[j] for j in row],
                   [archive_labels[j] for j in row], class_names, title=f"query {i}: {name}")
        paths.append(path)
    return paths
