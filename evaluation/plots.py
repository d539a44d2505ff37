"""Pictures of retrieval results: a query and its top-k images, captioned with labels.

Each retrieved image carries its rank, distance, the number of labels it shares with the query
and a relevant/irrelevant frame (solid blue / dashed orange, named under the rank and in the
legend); label names are wrapped, never cut; the title names the run and the query.

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
    return "; ".join(names) if names else "(no label)"  # CORINE names hold commas


# Okabe-Ito colours (distinguishable with colour-blindness); relevance is also told by the
# frame's line style and the word under the rank, never by colour alone
RELEVANT = {"color": "#0072B2", "linestyle": "-"}
IRRELEVANT = {"color": "#D55E00", "linestyle": (0, (3, 1.5))}  # dashed
QUERY = {"color": "black", "linestyle": "-"}
WRAP = 30  # characters per caption line (a 2.6-inch panel at 7 pt)
RELEVANCE_TEXT = {"multilabel": ("relevant: shares at least one label with the query",
                                 "irrelevant: shares no label"),
                  "scene": ("relevant: same scene class as the query", "irrelevant: another scene")}


def _frame(ax, style) -> None:
    """Ticks off, the four spines drawn thick in ``style`` (colour and line style)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_edgecolor(style["color"])
        spine.set_linestyle(style["linestyle"])
        spine.set_linewidth(4)


def _wrap(text: str) -> str:
    return textwrap.fill(text, WRAP, break_on_hyphens=False)


def panel_texts(query_labels, labels, class_names, distances=None, metric: str | None = None,
                relevance: str = "multilabel") -> list[dict]:
    """Per panel (query first): ``head`` (above the image), ``caption`` (wrapped label names,
    never cut), ``relevant`` (None for the query). Relevant = shares >= 1 label with the query
    (for scene relevance the labels are one-hot scene classes, so: same scene)."""
    q = np.asarray(query_labels) > 0.5
    out = [{"head": "query", "caption": _wrap(label_text(query_labels, class_names)),
            "relevant": None}]
    for r, lab in enumerate(labels, 1):
        shared = int((q & (np.asarray(lab) > 0.5)).sum())
        relevant = shared > 0
        dist = "" if distances is None else f", {metric or 'distance'} {distances[r - 1]:.4g}"
        if relevance == "scene":
            count = "same scene" if relevant else "other scene"
        else:
            count = f"shares {shared} of {int(q.sum())} labels"
        word = "relevant" if relevant else "irrelevant"
        out.append({"head": f"#{r}{dist}\n{count}: {word}",
                    "caption": _wrap(label_text(lab, class_names)),
                    "relevant": relevant})
    return out


def plot_query(out_path, query_image, query_labels, images, labels, class_names,
               title: str = "", distances=None, metric: str | None = None,
               relevance: str = "multilabel") -> None:
    """One PNG (written atomically) of ``query_figure``."""
    import matplotlib.pyplot as plt

    from atomic_files import atomic_path
    fig = query_figure(query_image, query_labels, images, labels, class_names, title,
                       distances, metric, relevance)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def query_figure(query_image, query_labels, images, labels, class_names, title: str = "",
                 distances=None, metric: str | None = None, relevance: str = "multilabel"):
    """The query then its retrieved images in rank order. Each retrieved image shows its rank,
    distance, shared-label count and relevance (framed: solid blue = relevant, dashed orange =
    irrelevant, and the word), with its label names wrapped below. Returns the figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    panels = panel_texts(query_labels, labels, class_names, distances, metric, relevance)
    n = len(panels)
    cols = min(n, 6)
    rows = -(-n // cols)
    row_lines = [max(p["caption"].count("\n") + p["head"].count("\n") + 2
                     for p in panels[r * cols:(r + 1) * cols]) for r in range(rows)]
    row_h = [2.5 + 0.15 * lines for lines in row_lines]  # image + its text lines (7 pt)
    height = sum(row_h) + 0.5 + 0.17 * (title.count("\n") + 1)  # legend, title
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, height), squeeze=False,
                             layout="constrained", gridspec_kw={"height_ratios": row_h})
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, p in zip(axes.ravel(), [query_image, *images], panels):
        ax.axis("on")
        ax.imshow(img)
        style = QUERY if p["relevant"] is None else RELEVANT if p["relevant"] else IRRELEVANT
        _frame(ax, style)
        ax.set_title(p["head"], fontsize=7, fontweight="bold" if p["relevant"] is None else None)
        ax.set_xlabel(p["caption"], fontsize=7)
    legend = list(RELEVANCE_TEXT[relevance])
    handles = [Patch(facecolor="none", edgecolor=st["color"], linestyle=st["linestyle"],
                     linewidth=2.5, label=text)
               for st, text in ((RELEVANT, legend[0]), (IRRELEVANT, legend[1]))]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_results(out_dir, dataset: str, query_records, archive_records, topk_index: np.ndarray,
                 query_labels, archive_labels, query_names=None, per_query: int = 10, *,
                 distances=None, metric: str | None = None, run_name: str = "",
                 class_names: Sequence[str] | None = None,
                 relevance: str = "multilabel") -> list[Path]:
    """One PNG per row of ``topk_index`` (query i = record i); returns the written paths.

    ``distances``: the (n, K) distances of ``topk_index``; ``run_name`` heads each title;
    ``class_names``: the names of the label columns (default: the archive's classes; scene
    relevance passes the scene classes)."""
    from archives import registry
    if class_names is None:
        class_names = registry.get(dataset).class_names
    top = np.asarray(topk_index)[:, :per_query]
    dist = None if distances is None else np.asarray(distances)[:, :per_query]
    q_imgs = load_images(query_records, dataset, range(top.shape[0]))
    a_imgs = load_images(archive_records, dataset, np.unique(top))
    paths = []
    for i, row in enumerate(top):
        name = i if query_names is None else query_names[i]
        name = name.decode() if isinstance(name, bytes) else str(name)
        path = Path(out_dir) / f"query_{i:05d}.png"
        head = f"{run_name}\n" if run_name else ""
        title = (f"{head}query {i} ({name}): top {len(row)}"
                 + (f" by {metric} distance" if metric else ""))
        plot_query(path, q_imgs[i], query_labels[i], [a_imgs[j] for j in row],
                   [archive_labels[j] for j in row], class_names, title=title,
                   distances=None if dist is None else dist[i], metric=metric,
                   relevance=relevance)
        paths.append(path)
    return paths
