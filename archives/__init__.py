"""Benchmark archives: raw-layout readers, class nomenclatures, TFRecord schemas, noise injection."""
