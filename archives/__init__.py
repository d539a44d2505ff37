"""Benchmark archives: raw-layout readers, class nomenclatures, TFRecord schemas, noise injection.

Each archive's facts are in its light description (archives/registry.py); ``get_archive`` gives
the module that parses its records.
"""


def get_archive(name: str):
    """The archive module for ``name`` (a registered dataset), imported on first use."""
    from archives import registry
    return registry.get(name).load()
