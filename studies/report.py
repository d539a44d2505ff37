"""Collect finished cells into ``study.csv``, a summary over seeds and PNG plots.

``study.csv``: one row per finished cell; first the cell (``model``, ``noise_prcnt``, ``seed``),
then the chance level (share of truly corrupted training samples), the selection share (share
of an epoch's samples a selection of ``noisy_sel_prcnt`` % flags), selection precision and
recall (empty where the model selects nothing), times, and every retrieval metric.
``summary.csv`` / ``summary.md``: per (model, noise level) the number of seeds, mean and sample
standard deviation of the headline metric, mAP@20, selection precision/recall, chance and
selection share. With one seed the spread is undefined: ``n/a`` in summary.md and the printed
table, an empty ``_sd`` cell in summary.csv, no error bar in the plots.

Plots, each captioned with the archive (synthetic sample or records folder), epochs and seeds
(``study_caption``, ``caption_figure``: reuse them for other study figures):
``<headline>_vs_noise.png``: mean ± sd per model, on the full scale from 0 and zoomed (the zoomed
range, at least ``MIN_ZOOM_SPAN`` high, is stated in its title);
``selection_vs_noise.png``: precision per model with the chance line, recall per model with the
recall bound min(1, flagged share / corrupted share) (``recall_bound``); noise levels without a
corrupted training sample (0 %) are not drawn, since recall is 0/0 there and precision is 0 for
any selection.
``curves.csv``: one row per (cell, epoch) from the runs' per-epoch history (validation
retrieval, memorisation, selection precision/recall, losses); ``curves_noise<N>.png``: per noise
level, the validation metric and memorisation against the epoch, one line per model (mean over
seeds).
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from atomic_files import atomic_path
from config import Config
from studies.spec import Study

MIN_ZOOM_SPAN = 0.05  # a zoomed metric axis spans at least this much
CURVE_MIN_SPAN = 0.1  # the per-epoch validation axis of the curves plots, likewise
FIRST = ("model", "noise_prcnt", "seed", "chance_level", "selection_share", "sel_precision",
         "sel_recall", "train_time_s", "retrieval_time_s", "cell_time_s", "run_name")


def load_rows(study: Study) -> list[dict]:
    """Results of the finished cells, in cell order."""
    return [study.cell_result(cell) for cell in study.cells
            if study.cell_result_path(cell).is_file()]


CURVE_COLUMNS = ("cell", "model", "noise_prcnt", "seed", "epoch", "retrieval_metric",
                 "val_retrieval", "corrupted_fitted", "clean_fitted", "corrupted_fitted_prior",
                 "clean_fitted_prior", "sel_precision", "sel_recall", "loss", "dis_loss",
                 "val_loss")


def curve_rows(rows: list[dict]) -> list[dict]:
    """One dict per (cell, epoch) from the ``history`` of each finished cell."""
    out = []
    for r in rows:
        cell = f"{r['model']}-noise{r['noise_prcnt']}-seed{r['seed']}"
        for h in r.get("history") or []:
            out.append({"cell": cell, "model": r["model"], "noise_prcnt": r["noise_prcnt"],
                        "seed": r["seed"], **{k: h.get(k) for k in CURVE_COLUMNS[4:]}})
    return out


def mean_curves(curves: list[dict], key: str) -> dict[tuple[str, int], tuple[list, list]]:
    """Per (model, noise): epochs and the mean of ``key`` over seeds at each epoch (epochs
    where no seed has a value are left out)."""
    out = {}
    for model, noise in dict.fromkeys((c["model"], c["noise_prcnt"]) for c in curves):
        by_epoch: dict[int, list[float]] = {}
        for c in curves:
            if (c["model"], c["noise_prcnt"]) == (model, noise) and not _missing(c.get(key)):
                by_epoch.setdefault(int(c["epoch"]), []).append(float(c[key]))
        epochs = sorted(by_epoch)
        if epochs:
            out[(model, noise)] = (epochs, [float(np.mean(by_epoch[e])) for e in epochs])
    return out


FITTED_UNITS = {"BCE": "pairs", "PCE": "pixels", "RRL": "relation entries"}  # by head


def fitted_unit(study: Study) -> str:
    """What the memorisation shares count for the study's models: (image, label) "pairs" of a
    multi-label head, "pixels" of a pixel head, "relation entries" of a relation head; several
    joined by " / "."""
    from models import registry as models

    units = []
    for m in study.models:
        try:
            task = models.get(study.variants.get(m, {}).get("model_name", m)).task
        except ValueError:
            continue
        if task in FITTED_UNITS and FITTED_UNITS[task] not in units:
            units.append(FITTED_UNITS[task])
    return " / ".join(units) or "pairs"


def plot_curves(curves: list[dict], out_dir: Path, study: Study) -> list[Path]:
    """``curves_noise<N>.png`` per noise level: validation retrieval (left; dotted: the same
    model at noise 0, where the study has it) and memorisation
    (right: corrupted pairs fitted, solid; clean pairs fitted, dashed; dotted: the corrupted
    pairs a prior-only predictor fits, the level of no memorisation) against the epoch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = next((c["retrieval_metric"] for c in curves if c.get("retrieval_metric")), "")
    val = mean_curves(curves, "val_retrieval")
    corrupted = mean_curves(curves, "corrupted_fitted")
    clean = mean_curves(curves, "clean_fitted")
    prior = mean_curves(curves, "corrupted_fitted_prior")
    paths, unit = [], fitted_unit(study)
    for noise in study.noise_levels:
        if not any(k[1] == noise for k in (*val, *corrupted, *clean)):
            continue
        fig, (ax_v, ax_m) = plt.subplots(1, 2, figsize=(11, 4.6), constrained_layout=True)
        shown = []  # validation values drawn, for the axis range
        for i, model in enumerate(study.models):
            color = f"C{i % 10}"
            if (model, noise) in val:
                ax_v.plot(*val[(model, noise)], color=color, label=model)
                shown += val[(model, noise)][1]
            if noise and (model, 0) in val:  # what the same model reaches without noise
                ax_v.plot(*val[(model, 0)], color=color, ls=":", label=f"{model} at 0 %")
                shown += val[(model, 0)][1]
            if (model, noise) in corrupted:
                ax_m.plot(*corrupted[(model, noise)], color=color, label=f"{model} corrupted")
            if (model, noise) in clean:
                ax_m.plot(*clean[(model, noise)], color=color, ls="--",
                          label=f"{model} clean")
        levels = [v for (_, n), (_, vs) in prior.items() if n == noise for v in vs]
        if levels:  # the same data in every cell: one line
            ax_m.axhline(float(np.mean(levels)), color="0.4", ls=":", lw=1.2,
                         label="corrupted, prior-only predictor")
        if shown:  # at least CURVE_MIN_SPAN high: epoch-to-epoch wobble must not fill it
            ax_v.set_ylim(*zoomed_ylim(shown, shown, CURVE_MIN_SPAN))
        ax_v.set_ylabel(f"validation {metric} (mean over seeds)")
        ax_m.set_ylabel(f"share of training {unit} fitted")
        ax_m.set_ylim(-0.02, 1.02)
        caption_figure(fig, f"Per epoch at {noise} % noise (lines: mean over seeds)", study)
        for ax, title in ((ax_v, "validation queries against the training archive "
                                 f"(axis spans >= {CURVE_MIN_SPAN:.2f})"),
                          (ax_m, f"training {unit} fitted: corrupted (solid), clean (dashed)")):
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        paths.append(out_dir / f"curves_noise{noise}.png")
        _save(fig, paths[-1])
    return paths


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


def study_caption(study: Study) -> str:
    """One line naming what a study figure shows: archive (and whether it is the synthetic
    sample archive), epochs, seeds and the noise rule. Shared by every study plot."""
    base = {**study.base, **study.overrides}
    dataset = base.get("dataset", "?")
    if study.sample_archive is not None:
        opts = study.sample_archive
        data = (f"{dataset}: synthetic sample archive ({opts['variant']} variant, "
                f"{opts['per_class']} images per class, seed {opts['seed']}), not {dataset} itself")
    else:
        paths = base.get("train_tfrecord_paths") or "?"
        first = paths if isinstance(paths, str) else paths[0]
        data = f"{dataset}: records {Path(first).parent}"
    epochs = base.get("nb_epoch", Config.nb_epoch)
    seeds = ", ".join(map(str, study.seeds))
    return (f"{data}; {epochs} epochs; seeds {seeds} (bars: ±1 sample sd); "
            "noise = share of (image, label) pairs changed")


def caption_figure(fig, title: str, study: Study) -> None:
    """Title and caption above a study figure (the suptitle; the caption wrapped to the
    figure's width, about 13 characters an inch at 9 pt)."""
    import textwrap
    caption = textwrap.fill(study_caption(study), int(fig.get_figwidth() * 13))
    fig.suptitle(f"{title}\n{caption}", fontsize=9)


def zoomed_ylim(lows, highs, min_span: float = MIN_ZOOM_SPAN) -> tuple[float, float]:
    """A y range holding every [low, high] (mean ± sd) with a margin, at least ``min_span``
    high so that differences far below the seed spread do not fill the axis."""
    lo, hi = float(np.nanmin(lows)), float(np.nanmax(highs))
    span = max((hi - lo) * 1.2, min_span)
    mid = (lo + hi) / 2
    return mid - span / 2, mid + span / 2


def _defined(s: dict, key: str) -> bool:
    """Whether the summary row's ``key`` is a value to draw: present, and for the selection
    figures only where some training sample is corrupted (at 0 % noise selection recall is
    0/0 and precision is 0 for any selection: neither measures the selector)."""
    if _missing(s.get(f"{key}_mean")):
        return False
    if key in ("sel_precision", "sel_recall"):
        chance = s.get("chance_level_mean")
        return not _missing(chance) and chance > 0
    return True


def headline_figure(summary: list[dict], headline: str, study: Study):
    """Headline metric against noise, mean ± sd per model: on the full scale (from 0) and
    zoomed (the range stated in the panel's title). Returns the figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3), layout="constrained")
    lows, highs = [], []
    for i, model in enumerate(study.models):
        rows = [s for s in summary if s["model"] == model and _defined(s, headline)]
        if not rows:
            continue
        x = np.array([s["noise_prcnt"] for s in rows], float) + (i - len(study.models) / 2) * 0.4
        mean = np.array([s[f"{headline}_mean"] for s in rows])
        sd = np.array([_bar(s[f"{headline}_sd"]) for s in rows])
        lows += list(mean - sd)
        highs += list(mean + sd)
        for ax in axes:
            ax.errorbar(x, mean, yerr=sd, marker="o", capsize=3, label=model)
    for ax in axes:
        ax.set_xlabel("label noise (% of (image, label) pairs)")
        ax.set_ylabel(f"{headline} (mean ± sd over seeds)")
        ax.grid(alpha=0.3)
    top = max(1.0, float(np.nanmax(highs)) * 1.05) if highs else 1.0
    axes[0].set_ylim(0, top)
    axes[0].set_title("full scale (y from 0)", fontsize=9)
    if highs:
        lo, hi = zoomed_ylim(lows, highs)
        axes[1].set_ylim(lo, hi)
        axes[1].set_title(f"zoomed: y from {lo:.3f} to {hi:.3f} (span {hi - lo:.3f}); "
                          f"largest sd {max(h - l for l, h in zip(lows, highs)) / 2:.3f}",
                          fontsize=9)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8, loc="lower left")
    caption_figure(fig, f"{headline} against label noise", study)
    return fig


def recall_bound(chance: float, share: float) -> float:
    """The largest selection recall possible when a share ``share`` of the training records is
    flagged and a share ``chance`` is corrupted: at most every flagged record is a corrupted
    one, so recall <= (share N) / (chance N) = share / chance, and recall <= 1."""
    return min(1.0, share / chance) if chance > 0 else math.nan


def selection_figure(summary: list[dict], study: Study):
    """Selection precision (with the chance line) and recall (with its bound) against noise;
    values at noise levels without corrupted samples are not drawn. Returns the figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3), layout="constrained")
    chance, share = {}, {}
    for s in summary:
        if not _missing(s.get("chance_level_mean")) and s["chance_level_mean"] > 0:
            chance[s["noise_prcnt"]] = s["chance_level_mean"]
            if not _missing(s.get("selection_share_mean")):
                share[s["noise_prcnt"]] = s["selection_share_mean"]
    nominal = {**study.base, **study.overrides}.get("noisy_sel_prcnt", Config.noisy_sel_prcnt)
    for ax, key, title in ((axes[0], "sel_precision", "selection precision"),
                           (axes[1], "sel_recall", "selection recall")):
        for model in study.models:
            rows = [s for s in summary if s["model"] == model and _defined(s, key)]
            if rows:
                ax.errorbar([s["noise_prcnt"] for s in rows], [s[f"{key}_mean"] for s in rows],
                            yerr=[_bar(s[f"{key}_sd"]) for s in rows], marker="o", capsize=3,
                            label=model)
        xs = sorted(chance)
        if key == "sel_precision" and xs:
            ax.plot(xs, [chance[x] for x in xs], "k--",
                    label="chance: share of training images corrupted")
        if key == "sel_recall" and xs:
            exact = all(x in share for x in xs)
            sel = {x: share[x] if exact else nominal / 100 for x in xs}
            what = "flagged share" if exact else f"{nominal} % flagged"
            ax.plot(xs, [recall_bound(chance[x], sel[x]) for x in xs], "k:", marker="_", ms=16,
                    label=f"bound: min(1, {what} / corrupted share)")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("label noise (% of (image, label) pairs)")
        ax.set_ylim(0, 1.05)
        ax.set_xlim(left=min(study.noise_levels) - 3, right=max(study.noise_levels) + 3)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    undefined = sorted({s["noise_prcnt"] for s in summary} - set(chance))
    sub = "noisy-sample selection of the models that select (last epoch)"
    if undefined:
        sub += f"; not drawn at {', '.join(map(str, undefined))} % (no corrupted sample)"
    caption_figure(fig, sub, study)
    return fig


def plot(summary: list[dict], headline: str, out_dir: Path, study: Study) -> list[Path]:
    """The two PNGs (written atomically); returns their paths."""
    paths = []
    if summary and f"{headline}_mean" in summary[0]:  # else: archive too small for it
        paths.append(out_dir / f"{headline.replace('@', '_at_')}_vs_noise.png")
        _save(headline_figure(summary, headline, study), paths[-1])
    paths.append(out_dir / "selection_vs_noise.png")
    _save(selection_figure(summary, study), paths[-1])
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
    for r in rows:  # scalars only: the per-epoch history goes to curves.csv
        metric_cols += [k for k, v in r.items() if k not in FIRST and k not in metric_cols
                        and not isinstance(v, (list, dict))]
    _write_text(out / "study.csv", _csv(rows, list(FIRST) + metric_cols))
    info = registry.ARCHIVES.get(study.base.get("dataset"))
    headline = headline or (info.headline_metric if info else "NDCG@20")
    keys = [headline, "mAP@20", "sel_precision", "sel_recall", "chance_level", "selection_share"]
    keys = [k for k in keys if any(k in r for r in rows)]
    summary = summarise(rows, keys, study)
    cols = ["model", "noise_prcnt", "n_seeds"] + [f"{k}_{s}" for k in keys for s in ("mean", "sd")]
    _write_text(out / "summary.csv", _csv(summary, cols))
    table = markdown(summary, keys)
    _write_text(out / "summary.md", table)
    plots = plot(summary, headline, out, study) if summary else []
    files = [out / "study.csv", out / "summary.csv", out / "summary.md", *plots]
    curves = curve_rows(rows)
    if curves:
        _write_text(out / "curves.csv", _csv(curves, list(CURVE_COLUMNS)))
        files += [out / "curves.csv", *plot_curves(curves, out, study)]
    return {"rows": len(rows), "cells": len(study.cells), "table": table,
            "files": [str(f) for f in files]}
