"""Retrieval evaluation: distances, blocked exact top-K ranking, metrics, feature files, plots."""
