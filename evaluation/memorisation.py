"""How much of the label noise a model has memorised: counts on the training split.

A *unit* is what the discriminative head predicts one value for:

- multi-label heads (BCE, GRID-BCE, SAT, ELR, JoCoR's first network): one (image, label) pair,
  predicted positive when its logit is > 0 (sigmoid > 0.5). A pair is *corrupted* when its noisy
  value differs from its clean value (a label added or removed by the noise), *clean* otherwise.
- pixel heads (PCE, GRID-PCE): one labelled pixel of the map (clean class >= 0; unlabelled
  pixels are never counted), predicted as the arg-max class. Corrupted: noisy class != clean class.
- relation heads (RRL, GRID-RRL): one entry of the relation vector, corrupted when its noisy
  target differs from its clean one by more than ``RELATION_TOL``. A regression output never
  equals a target exactly, so a corrupted entry counts as fitted when the prediction is nearer
  the noisy target than the clean one; for clean entries there is no second value to compare
  with, so ``clean_fitted`` is not measured (NaN).
- MiLaN and OffTheShelf have no discriminative head: nothing is measured.

``corrupted_fitted`` = corrupted units predicted as their noisy value / corrupted units (the
memorisation of the noise; NaN when nothing is corrupted, e.g. at noise 0);
``clean_fitted`` = clean units predicted as their (clean = noisy) value / clean units (how well
the model fits the labels that are right). Both are pooled over the whole measured set, not
averaged per image.

The *prior-only* reference (``PriorTally``) is what a model that learned nothing from the images
would score: one that predicts, for every unit, the majority noisy value over the measured set
(multi-label: per class, present if more than half the noisy labels have it, usually absent;
pixels: the most frequent noisy class). A model whose ``corrupted_fitted`` stays at this level
has not memorised the noise; memorisation is the rise above it.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

RELATION_TOL = 1e-6
TASKS = ("BCE", "PCE", "RRL")


@dataclasses.dataclass
class FitCounts:
    """Units seen and units fitted, corrupted and clean; add them over batches."""

    corrupted: int = 0
    corrupted_fitted: int = 0
    clean: int = 0
    clean_fitted: int = 0
    clean_measured: bool = True  # False for relation heads (see the module docstring)

    def __add__(self, other: "FitCounts") -> "FitCounts":
        return FitCounts(self.corrupted + other.corrupted,
                         self.corrupted_fitted + other.corrupted_fitted,
                         self.clean + other.clean, self.clean_fitted + other.clean_fitted,
                         self.clean_measured and other.clean_measured)

    def shares(self) -> dict[str, float]:
        """{"corrupted_fitted", "clean_fitted"}: the two shares (NaN where undefined)."""
        return {"corrupted_fitted": _share(self.corrupted_fitted, self.corrupted),
                "clean_fitted": (_share(self.clean_fitted, self.clean) if self.clean_measured
                                 else math.nan)}


def _share(num: int, den: int) -> float:
    return num / den if den else math.nan


def _counts(corrupted: np.ndarray, fitted_noisy: np.ndarray, fitted_clean: np.ndarray,
            valid: np.ndarray | None = None) -> FitCounts:
    clean = ~corrupted
    if valid is not None:
        corrupted, clean = corrupted & valid, clean & valid
    return FitCounts(int(corrupted.sum()), int((corrupted & fitted_noisy).sum()),
                     int(clean.sum()), int((clean & fitted_clean).sum()))


@dataclasses.dataclass
class PriorTally:
    """Per-class counts over a measured set, enough to score the prior-only predictor.

    Multi-label (``task`` "BCE"), per class c: noisy positives and pairs (for the majority),
    corrupted pairs whose noisy value is 1 / 0, clean pairs whose value is 1 / 0.
    Pixels ("PCE"), per class k: labelled pixels whose noisy class is k, corrupted pixels whose
    noisy class is k, clean pixels of class k. Relation heads: not scored (NaN).
    """

    task: str
    nb_class: int
    arrays: dict = dataclasses.field(default_factory=dict)

    def add(self, batch: dict) -> None:
        """Count one evaluation batch (``archives.pipeline`` dict of numpy arrays)."""
        if self.task == "BCE":
            clean = np.asarray(batch["label"]) > 0.5
            noisy = np.asarray(batch["noisy_label"]) > 0.5
            corrupted = clean != noisy
            parts = {"noisy_pos": noisy.sum(0), "pairs": np.full(clean.shape[1], len(clean)),
                     "cor_pos": (corrupted & noisy).sum(0), "cor_neg": (corrupted & ~noisy).sum(0),
                     "clean_pos": (~corrupted & clean).sum(0),
                     "clean_neg": (~corrupted & ~clean).sum(0)}
        elif self.task == "PCE":
            clean, noisy = np.asarray(batch["seg_map"]), np.asarray(batch["noisy_seg_map"])
            valid = clean >= 0
            corrupted = valid & (clean != noisy)
            def hist(mask):
                return np.bincount(noisy[mask].ravel().astype(np.int64),
                                   minlength=self.nb_class)[:self.nb_class]
            parts = {"noisy": hist(valid), "cor": hist(corrupted),
                     "clean": hist(valid & ~corrupted)}
        else:
            return
        for key, value in parts.items():
            self.arrays[key] = self.arrays.get(key, 0) + np.asarray(value, np.int64)

    def shares(self) -> dict[str, float]:
        """{"corrupted_fitted_prior", "clean_fitted_prior"} (NaN where undefined)."""
        a = self.arrays
        if not a:
            return {"corrupted_fitted_prior": math.nan, "clean_fitted_prior": math.nan}
        if self.task == "BCE":
            present = 2 * a["noisy_pos"] > a["pairs"]  # the majority noisy value of each class
            cor = np.where(present, a["cor_pos"], a["cor_neg"]).sum()
            clean = np.where(present, a["clean_pos"], a["clean_neg"]).sum()
            n_cor = int((a["cor_pos"] + a["cor_neg"]).sum())
            n_clean = int((a["clean_pos"] + a["clean_neg"]).sum())
            return {"corrupted_fitted_prior": _share(int(cor), n_cor),
                    "clean_fitted_prior": _share(int(clean), n_clean)}
        top = int(np.argmax(a["noisy"]))  # the most frequent noisy class
        return {"corrupted_fitted_prior": _share(int(a["cor"][top]), int(a["cor"].sum())),
                "clean_fitted_prior": _share(int(a["clean"][top]), int(a["clean"].sum()))}


def multilabel_counts(logits, label, noisy_label) -> FitCounts:
    """(N, C) logits of the multi-label head, clean and noisy multi-hot labels (N, C)."""
    pred = np.asarray(logits) > 0
    clean_pos, noisy_pos = np.asarray(label) > 0.5, np.asarray(noisy_label) > 0.5
    return _counts(clean_pos != noisy_pos, pred == noisy_pos, pred == clean_pos)


def pixel_counts(logits, seg_map, noisy_seg_map) -> FitCounts:
    """(N, H, W, C) logits of the pixel head, clean and noisy maps (N, H, W), -1 unlabelled."""
    pred = np.argmax(np.asarray(logits), axis=-1)
    clean, noisy = np.asarray(seg_map), np.asarray(noisy_seg_map)
    return _counts(clean != noisy, pred == noisy, pred == clean, valid=clean >= 0)


def relation_counts(pred, clean_target, noisy_target) -> FitCounts:
    """(N, K) relation outputs and the relation targets of the clean and noisy maps (N, K)."""
    pred, clean, noisy = (np.asarray(a, np.float64) for a in (pred, clean_target, noisy_target))
    corrupted = np.abs(noisy - clean) > RELATION_TOL
    nearer_noisy = np.abs(pred - noisy) < np.abs(pred - clean)
    counts = _counts(corrupted, nearer_noisy, np.zeros_like(corrupted))
    return dataclasses.replace(counts, clean_fitted=0, clean_measured=False)


def batch_counts(task: str, dis_output, batch: dict, nb_class: int) -> FitCounts:
    """The counts of one evaluation batch (``archives.pipeline`` dict) for ``task``."""
    if task == "BCE":
        return multilabel_counts(dis_output, batch["label"], batch["noisy_label"])
    if task == "PCE":
        return pixel_counts(dis_output, batch["seg_map"], batch["noisy_seg_map"])
    if task == "RRL":
        from losses.relations import relation_targets_tf
        return relation_counts(dis_output, relation_targets_tf(batch["seg_map"], nb_class),
                               relation_targets_tf(batch["noisy_seg_map"], nb_class))
    raise ValueError(f"memorisation: unknown task {task!r}; expected one of {', '.join(TASKS)}")
