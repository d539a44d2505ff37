"""Strict JSON for numbers that may be undefined.

JSON has no token for NaN or infinity: Python's ``json`` writes ``NaN``/``Infinity``, which jq,
JavaScript and most other readers reject. The project's JSON outputs write them as ``null``
(``to_json``, used by ``atomic_files.write_json_atomic``), and its readers turn ``null`` back
into NaN where they expect a number (``nan_for_null``). Files written before this (with NaN
tokens) still read: Python's ``json.loads`` accepts them.
"""
from __future__ import annotations

import json
import math
from typing import Any, Iterable, Mapping


def finite_or_null(data: Any) -> Any:
    """``data`` with every NaN or infinite float (also inside dicts, lists and tuples) as None."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, Mapping):
        return {k: finite_or_null(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_or_null(v) for v in data]
    return data


def to_json(data: Any, **kwargs) -> str:
    """``json.dumps`` of ``data`` with non-finite floats as null; strict JSON (a value it
    cannot write raises instead of producing a NaN token)."""
    return json.dumps(finite_or_null(data), allow_nan=False, **kwargs)


def nan_for_null(entry: Mapping, keep: Iterable[str] = ()) -> dict:
    """A copy of the flat mapping ``entry`` whose None values are NaN (the keys in ``keep``,
    whose None means "absent" rather than an undefined number, stay None)."""
    keep = set(keep)
    return {k: math.nan if v is None and k not in keep else v for k, v in entry.items()}
