"""Robustness studies: (model x noise level x seed) cells through train + retrieval (study.py)."""
