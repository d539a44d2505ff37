"""Losses of GRID: per-sample task losses, VAE terms, noisy-sample selection, relation targets."""
from losses.relations import relation_targets, relation_targets_tf
from losses.selection import minmax_norm, select_noisy, selection_counts
from losses.task import mse_per_sample, pixel_ce_per_sample, sigmoid_ce_per_sample
from losses.vae import kl_per_sample, recon_per_sample

__all__ = [
    "relation_targets", "relation_targets_tf", "minmax_norm", "select_noisy", "selection_counts",
    "mse_per_sample", "pixel_ce_per_sample", "sigmoid_ce_per_sample", "kl_per_sample",
    "recon_per_sample",
]
