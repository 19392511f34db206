"""Checks every reader makes on what it read: no non-finite annotation numbers, no empty split.

A NaN in a box would otherwise pass every reader and surface much later as "diverged at step
1"; the DatasetError here names the file, the record and the field instead.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from harness.errors import DatasetError


def finite(value: Any) -> bool | None:
    """Whether a number, or a (nested, regular) sequence / array of numbers, is all finite;
    None when it is not numbers (or ragged): a missing or mistyped field is another check's."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return bool(np.isfinite(array).all())


def _get(record: Mapping[str, Any], dotted: str) -> Any:
    value: Any = record
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def check_finite(records: Iterable[tuple[str, Mapping[str, Any]]], fields: Sequence[str],
                 source: str) -> None:
    """DatasetError `SOURCE: RECORD field 'F' has a non-finite value (V)` for the first
    dotted field `F` of any (name, record) holding NaN or Inf. A field ending in `[]` is a
    list of sub-records: `ann_infos[].size` checks each one's size."""
    for name, record in records:
        for dotted in fields:
            head, _, tail = dotted.partition("[].")
            subs = _get(record, head) if tail else None
            if tail and isinstance(subs, list):
                values = [sub.get(tail) if isinstance(sub, Mapping) else None for sub in subs]
                if all(v is not None for v in values) and finite(values) is True:
                    continue  # the common case in one call: thousands of records per split
            items = [(head, _get(record, head))] if not tail else [
                (f"{head}[{i}].{tail}", _get(sub, tail)) if isinstance(sub, Mapping) else
                (f"{head}[{i}]", None)
                for i, sub in enumerate(subs or ())]
            for where, value in items:
                if value is not None and finite(value) is False:
                    shown = np.asarray(value, dtype=np.float64).round(4).tolist()
                    raise DatasetError(f"{source}: {name} field '{where}' has a non-finite "
                                       f"value ({shown})")


def check_not_empty(items: Sequence[Any] | Mapping[Any, Any], source: str, what: str) -> None:
    """DatasetError naming the split's file when it holds no samples."""
    if len(items) == 0:
        raise DatasetError(f"{source}: no {what} (an empty split)")
