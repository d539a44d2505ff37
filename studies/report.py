"""Collect finished cells into ``study.csv``, a summary over seeds and PNG plots.

``study.csv``: one row per finished cell; first the cell (``model``, ``noise_prcnt``, ``seed``),
then the chance level (share of truly corrupted training samples), selection precision and
recall (empty where the model selects nothing), times, and every retrieval metric.
``summary.csv`` / ``summary.md``: per (model, noise level) the number of seeds, mean and sample
standard deviation of the headline metric, mAP@20, selection precision/recall and chance. With
one seed the spread is undefined: ``n/a`` in summary.md and the printed table, an empty
``_sd`` cell in summary.csv, no error bar in the plots. Plots: ``<headline>_vs_noise.png``
(mean +- sd per model) and ``selection_vs_noise.png`` (precision and recall per model, with the
chance line).
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from atomic_files import atomic_path
from studies.spec import Study

FIRST = ("model", "noise_prcnt", "seed", "chance_level", "sel_precision", "sel_recall",
         "train_time_s", "retrieval_time_s", "cell_time_s", "run_name")


def load_rows(study: Study) -> list[dict]:
    """Results of the finished cells, in cell order."""
    rows = []
    for cell in study.cells:
        path = study.cell_result_path(cell)
        if path.is_file():
            rows.append(json.loads(path.read_text()))
    return rows


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if _missing(r.get(c)) else r.get(c) for c in columns])
    return buf.getvalue()


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def summarise(rows: list[dict], metrics: list[str], study: Study) -> list[dict]:
    """Per (model, noise): n seeds, mean and sample sd of each of ``metrics``."""
    out = []
    for model in study.models:
        for noise in study.noise_levels:
            group = [r for r in rows if r["model"] == model and r["noise_prcnt"] == noise]
            if not group:
                continue
            s = {"model": model, "noise_prcnt": noise, "n_seeds": len(group)}
            for m in metrics:
                vals = np.array([r[m] for r in group if not _missing(r.get(m))], float)
                s[f"{m}_mean"] = float(vals.mean()) if vals.size else math.nan
                # the sample sd of one value is undefined (not 0): NaN, shown as n/a
                s[f"{m}_sd"] = float(vals.std(ddof=1)) if vals.size > 1 else math.nan
            out.append(s)
    return out


def markdown(summary: list[dict], metrics: list[str]) -> str:
    """Summary as a Markdown table: mean ± sd per metric (``± n/a`` for one seed)."""
    head = ["model", "noise %", "seeds"] + metrics
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        cells = [s["model"], str(s["noise_prcnt"]), str(s["n_seeds"])]
        for m in metrics:
            mean, sd = s[f"{m}_mean"], s[f"{m}_sd"]
            spread = "n/a" if _missing(sd) else f"{sd:.3f}"
            cells.append("-" if _missing(mean) else f"{mean:.3f} ± {spread}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: list[dict], headline: str, out_dir: Path, study: Study) -> list[Path]:
    """The two PNGs (written atomically); returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    if f"{headline}_mean" not in summary[0]:  # archive too small for the headline metric
        headline = None
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for i, model in enumerate(study.models):
        rows = [s for s in summary if s["model"] == model]
        if rows and headline:
            x = np.array([s["noise_prcnt"] for s in rows], float) + (i - len(study.models) / 2) * 0.4
            ax.errorbar(x, [s[f"{headline}_mean"] for s in rows],
                        yerr=[_bar(s[f"{headline}_sd"]) for s in rows], marker="o", capsize=3,
                        label=model)
    ax.set_xlabel("label noise (% of (image, label) pairs)")
    ax.set_ylabel(f"{headline} (mean ± sd over seeds)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    ax.grid(alpha=0.3)
    if headline:
        paths.append(out_dir / f"{headline.replace('@', '_at_')}_vs_noise.png")
        _save(fig, paths[-1])
    else:
        plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    chance = {}
    for s in summary:
        if not _missing(s["chance_level_mean"]):
            chance[s["noise_prcnt"]] = s["chance_level_mean"]
    for ax, key, title in ((axes[0], "sel_precision", "selection precision"),
                           (axes[1], "sel_recall", "selection recall")):
        for model in study.models:
            rows = [s for s in summary if s["model"] == model and not _missing(s[f"{key}_mean"])]
            if rows:
                ax.errorbar([s["noise_prcnt"] for s in rows], [s[f"{key}_mean"] for s in rows],
                            yerr=[_bar(s[f"{key}_sd"]) for s in rows], marker="o", capsize=3,
                            label=model)
        if key == "sel_precision" and chance:
            xs = sorted(chance)
            ax.plot(xs, [chance[x] for x in xs], "k--", label="chance (share corrupted)")
        ax.set_title(title)
        ax.set_xlabel("label noise (%)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    paths.append(out_dir / "selection_vs_noise.png")
    _save(fig, paths[-1])
    return paths


def _bar(sd: float) -> float:
    """Error bar half-length: none where the spread is undefined (one seed)."""
    return 0.0 if _missing(sd) else sd


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def collect(study: Study, headline: str | None = None) -> dict:
    """Write study.csv, summary.csv, summary.md and the plots; returns what was written."""
    from archives import registry

    rows = load_rows(study)
    out = study.out
    if not rows:
        return {"rows": 0, "cells": len(study.cells)}
    metric_cols = []
    for r in rows:
        metric_cols += [k for k in r if k not in FIRST and k not in metric_cols]
    _write_text(out / "study.csv", _csv(rows, list(FIRST) + metric_cols))
    info = registry.ARCHIVES.get(study.base.get("dataset"))
    headline = headline or (info.headline_metric if info else "NDCG@20")
    keys = [headline, "mAP@20", "sel_precision", "sel_recall", "chance_level"]
    keys = [k for k in keys if any(k in r for r in rows)]
    summary = summarise(rows, keys, study)
    cols = ["model", "noise_prcnt", "n_seeds"] + [f"{k}_{s}" for k in keys for s in ("mean", "sd")]
    _write_text(out / "summary.csv", _csv(summary, cols))
    table = markdown(summary, keys)
    _write_text(out / "summary.md", table)
    plots = plot(summary, headline, out, study) if summary else []
    return {"rows": len(rows), "cells": len(study.cells), "table": table,
            "files": [str(out / "study.csv"), str(out / "summary.csv"), str(out / "summary.md"),
                      *map(str, plots)]}
