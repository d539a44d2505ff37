"""Figures: retrieval pictures (rank, distance, shared labels, relevance frame, run name, wrapped
labels) and study plots (caption, honest y-axes, undefined values not drawn, recall bound)."""
import math

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from evaluation import plots  # noqa: E402
from studies import report  # noqa: E402
from studies.spec import Study  # noqa: E402

NAMES = ["Land principally occupied by agriculture, with significant areas of natural "
         "vegetation", "Beaches, dunes, sands", "Urban fabric"]


def test_panel_texts_hand_computed():
    q = np.array([1, 1, 0])
    panels = plots.panel_texts(q, [np.array([1, 0, 0]), np.array([0, 0, 1])], NAMES,
                               distances=np.array([0.25, 1.5]), metric="chi2")
    assert panels[0]["head"] == "query" and panels[0]["relevant"] is None
    assert panels[1]["head"] == "#1, chi2 0.25\nshares 1 of 2 labels: relevant"
    assert panels[2]["head"] == "#2, chi2 1.5\nshares 0 of 2 labels: irrelevant"
    assert [p["relevant"] for p in panels[1:]] == [True, False]
    # every label name whole (wrapped, never cut with "..."), names separated by ';'
    query_caption = panels[0]["caption"]
    assert "..." not in query_caption and "\n" in query_caption
    assert " ".join(query_caption.split()) == "; ".join(NAMES[:2])
    scene = plots.panel_texts(np.array([0, 1]), [np.array([0, 1])], ["a", "b"], relevance="scene")
    assert scene[1]["head"] == "#1\nsame scene: relevant"


def test_query_figure_frames_legend_and_title():
    img = np.zeros((8, 8, 3))
    fig = plots.query_figure(img, np.array([1, 0, 0]), [img, img],
                             [np.array([1, 0, 1]), np.array([0, 1, 0])], NAMES,
                             title="RUN-NAME\nquery 0 (x): top 2 by chi2 distance",
                             distances=[0.1, 0.2], metric="chi2")
    try:
        assert fig._suptitle.get_text().startswith("RUN-NAME")
        axes = [ax for ax in fig.axes if ax.images]
        assert len(axes) == 3
        # relevance by colour and line style (not colour alone), and by the word in the title
        rel, irr = axes[1].spines["top"], axes[2].spines["top"]
        assert rel.get_edgecolor() != irr.get_edgecolor()
        assert rel.get_linestyle() != irr.get_linestyle()
        assert axes[1].get_title().endswith(": relevant")
        assert axes[2].get_title().endswith(": irrelevant")
        legend = [t.get_text() for t in fig.legends[0].get_texts()]
        assert legend[0].startswith("relevant") and legend[1].startswith("irrelevant")
        assert "Beaches, dunes, sands" in axes[2].get_xlabel()
    finally:
        plt.close(fig)


def _study(**kw) -> Study:
    d = dict(path="s.json", base={"dataset": "DLRSD", "nb_epoch": 100, "noisy_sel_prcnt": 10},
             models=("BCE", "GRID-BCE"), noise_levels=(0, 30), seeds=(0, 1), out=None,
             overrides={"nb_epoch": 15}, sample_archive={"variant": "hard", "per_class": 20,
                                                         "seed": 0},
             retrieval={"metric": "chi2", "max_topk": None})
    d.update(kw)
    return Study(**d)


def _summary():
    rows = []
    for model, sel in (("BCE", False), ("GRID-BCE", True)):
        for noise, chance in ((0, 0.0), (30, 0.5)):
            r = {"model": model, "noise_prcnt": noise, "n_seeds": 2,
                 "NDCG@20_mean": 0.500 + (0.005 if model == "BCE" else 0), "NDCG@20_sd": 0.002,
                 "chance_level_mean": chance, "chance_level_sd": 0.0,
                 "selection_share_mean": 0.09, "selection_share_sd": 0.0}
            for k, v in (("sel_precision", 0.0 if noise == 0 else 0.9),
                         ("sel_recall", 0.0 if noise == 0 else 0.17)):
                r[f"{k}_mean"] = v if sel else math.nan
                r[f"{k}_sd"] = 0.0 if sel else math.nan
            rows.append(r)
    return rows


def test_caption_names_archive_epochs_seeds_and_synthetic():
    text = report.study_caption(_study())
    assert "DLRSD: synthetic sample archive (hard variant, 20 images per class" in text
    assert "15 epochs" in text and "seeds 0, 1" in text  # the study's override, not the base
    real = report.study_caption(_study(sample_archive=None, base={
        "dataset": "BEN", "train_tfrecord_paths": ["d/BEN/TFRecord/train.tfrecord"]},
        overrides={}))
    assert "synthetic" not in real and "BEN: records d/BEN/TFRecord" in real
    assert "100 epochs" in real  # Config's default nb_epoch


def test_headline_figure_full_scale_and_honest_zoom():
    fig = report.headline_figure(_summary(), "NDCG@20", _study())
    try:
        full, zoom = fig.axes[:2]
        assert full.get_ylim()[0] == 0.0 and full.get_ylim()[1] >= 1.0
        lo, hi = zoom.get_ylim()
        # a 0.005 difference (sd 0.002) must not fill the zoomed axis
        assert hi - lo >= report.MIN_ZOOM_SPAN - 1e-12
        assert f"{lo:.3f}" in zoom.get_title() and f"{hi:.3f}" in zoom.get_title()
        sup = fig._suptitle.get_text()
        assert "NDCG@20" in sup and "synthetic" in sup and "15 epochs" in sup
    finally:
        plt.close(fig)


def test_zoomed_ylim_keeps_wide_ranges():
    assert report.zoomed_ylim([0.2], [0.8]) == pytest.approx((0.14, 0.86))
    lo, hi = report.zoomed_ylim([0.500], [0.505])
    assert hi - lo == pytest.approx(0.05) and lo < 0.5 and hi > 0.505


def test_selection_figure_leaves_out_undefined_values_and_draws_the_bound():
    fig = report.selection_figure(_summary(), _study())
    try:
        prec, rec = fig.axes[:2]
        for ax in (prec, rec):
            drawn = {c.get_label(): c.lines[0] for c in ax.containers}  # errorbar: data line
            assert set(drawn) == {"GRID-BCE"}  # BCE selects nothing
            # 0 % noise: nothing corrupted, so not drawn (not as 0)
            assert list(drawn["GRID-BCE"].get_xdata()) == [30]
        bound = [ln for ln in rec.lines if ln.get_label().startswith("bound")]
        assert len(bound) == 1
        # min(1, 0.09 / 0.5) = 0.18 at 30 % noise
        assert list(bound[0].get_xdata()) == [30]
        assert bound[0].get_ydata()[0] == pytest.approx(0.18)
        assert "not drawn at 0 %" in fig._suptitle.get_text()
    finally:
        plt.close(fig)


def test_recall_bound():
    assert report.recall_bound(0.5, 0.09) == pytest.approx(0.18)
    assert report.recall_bound(0.05, 0.10) == 1.0  # more flagged than corrupted
    assert math.isnan(report.recall_bound(0.0, 0.10))


def test_selection_bound_falls_back_to_the_nominal_share():
    rows = _summary()
    for r in rows:
        r.pop("selection_share_mean")
    fig = report.selection_figure(rows, _study())
    try:
        (bound,) = [ln for ln in fig.axes[1].lines if ln.get_label().startswith("bound")]
        assert "10 % flagged" in bound.get_label()
        assert bound.get_ydata()[0] == pytest.approx(0.2)  # 0.10 / 0.5
    finally:
        plt.close(fig)


def test_plot_writes_both_files(tmp_path):
    paths = report.plot(_summary(), "NDCG@20", tmp_path, _study())
    assert [p.name for p in paths] == ["NDCG_at_20_vs_noise.png", "selection_vs_noise.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_curves_name_what_the_memorisation_shares_count():
    """Pixel heads count pixels, multi-label heads (image, label) pairs, relation heads their
    entries; a variant counts as the model it trains."""
    assert report.fitted_unit(_study(models=("BCE", "GRID-BCE"))) == "pairs"
    assert report.fitted_unit(_study(models=("PCE", "GRID-PCE-klpub"),
                                     variants={"GRID-PCE-klpub": {"model_name": "GRID-PCE"}})) \
        == "pixels"
    assert report.fitted_unit(_study(models=("BCE", "PCE"))) == "pairs / pixels"
    assert report.fitted_unit(_study(models=("RRL", "GRID-RRL"))) == "relation entries"
