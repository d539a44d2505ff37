"""Benchmark archives: raw-layout readers, class nomenclatures, TFRecord schemas, noise injection."""
import importlib

_MODULES = {"DLRSD": "archives.dlrsd", "BEN": "archives.ben"}


def get_archive(name: str):
    """The archive module for ``name`` ("DLRSD" or "BEN"), imported on first use."""
    if name not in _MODULES:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(_MODULES)}")
    return importlib.import_module(_MODULES[name])
