"""What the training loop prints per epoch (docs/training.md, "Run output").

One line per epoch: the model's own loss terms (``Model.epoch_terms``: GRID's dis / gen / recon
/ KL / hybrid, a baseline's loss), the selection precision and recall where they can be measured
(some training sample corrupted), the validation losses (``Model.val_terms``), retrieval and
memorisation when the epoch was probed, the run's training time so far and its ETA (remaining
epochs times the mean epoch time so far). ``bar_text`` gives the same terms, as running means,
for the progress bar.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

Terms = Sequence[tuple[str, str]]  # (metric key, label)


def number(value: float) -> str:
    """Three significant digits (enough to follow a loss from epoch to epoch; TensorBoard keeps
    every digit), without an exponent from 1e-4 up: 0.392, 0.0312, 102, 1234."""
    if not math.isfinite(value):
        return str(value)  # nan, inf
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def duration(seconds: float) -> str:
    """3.2 s / 45 s / 2.5 min / 12 min / 3.4 h."""
    if seconds < 9.95:
        return f"{seconds:.1f} s"
    if seconds < 99.5:
        return f"{seconds:.0f} s"
    if seconds < 9.95 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 99.5 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def eta_s(elapsed_s: float, done: int, total: int) -> float | None:
    """Seconds left for ``total - done`` epochs at the mean epoch time so far; None when the run
    is done (or nothing is done yet)."""
    if done <= 0 or done >= total:
        return None
    return elapsed_s / done * (total - done)


def terms_text(values: Mapping[str, float], terms: Terms) -> str:
    """``"dis 0.3919 gen 0.4012 ..."``: the terms present in ``values``, in ``terms`` order."""
    return " ".join(f"{label} {number(values[key])}" for key, label in terms if key in values)


def selection_text(means: Mapping[str, float], counts: Mapping[str, float] | None,
                   noisy: bool) -> str:
    """``"sel P 0.81 R 0.60"``, or "" where the selection cannot be measured: a model without
    one, or no corrupted sample (``counts``: the epoch's summed ``_nsel`` / ``_ncorr``; without
    them, ``noisy``: the run has label noise). Precision is "n/a" when nothing was selected."""
    if "sel_precision" not in means:
        return ""
    if counts is not None and "_ncorr" in counts:
        if not counts["_ncorr"]:
            return ""
        precision = f"{means['sel_precision']:.2f}" if counts.get("_nsel") else "n/a"
    elif noisy:
        precision = f"{means['sel_precision']:.2f}"
    else:
        return ""
    return f"sel P {precision} R {means['sel_recall']:.2f}"


def probe_text(probed: Mapping) -> str:
    """``"val NDCG@20 0.394, fitted corrupted 0.51 clean 0.90"`` (the finite ones)."""
    parts = []
    if "retrieval_metric" in probed:
        parts.append(f"val {probed['retrieval_metric']} {probed['val_retrieval']:.3f}")
    fitted = [f"{k.split('_')[0]} {probed[k]:.2f}" for k in ("corrupted_fitted", "clean_fitted")
              if math.isfinite(probed.get(k, math.nan))]
    if fitted:
        parts.append("fitted " + " ".join(fitted))
    return ", ".join(parts)


def epoch_line(epoch: int, nb_epoch: int, means: Mapping[str, float],
               val: Mapping[str, float], probed: Mapping, *, terms: Terms, val_terms: Terms,
               counts: Mapping[str, float] | None, noisy: bool, elapsed_s: float,
               total_epochs: int | None = None) -> str:
    """The line of epoch ``epoch`` (1-based) of ``nb_epoch``; ``total_epochs``: the run's
    epochs for the ETA (default ``nb_epoch``)."""
    groups = [terms_text(means, terms), selection_text(means, counts, noisy)]
    if val:
        shown = terms_text(val, val_terms)
        groups.append(f"val {shown}" if shown else "")
    groups.append(probe_text(probed) if probed else "")
    left = eta_s(elapsed_s, epoch, nb_epoch if total_epochs is None else total_epochs)
    time_text = duration(elapsed_s) + (f", ETA {duration(left)}" if left is not None else "")
    return f"epoch {epoch}/{nb_epoch}: " + ", ".join(g for g in groups if g) + f" ({time_text})"


def bar_text(sums: Mapping[str, float], steps: int, terms: Terms) -> str:
    """The running means of ``terms`` for the progress bar's postfix."""
    if not steps:
        return ""
    return terms_text({k: sums[k] / steps for k, _ in terms if k in sums}, terms)
