"""What `harness show` hands a drawer (ShowContext) and what a drawer may use to read the
files a record names (restricted_pickle_load). A leaf module: drawers import it, and
harness/show.py imports the drawers only by name, so there is no import cycle."""
from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any, Callable

from harness.errors import DatasetError
from harness.records import Record

__all__ = ["Drawer", "ShowContext", "restricted_pickle_load"]


@dataclasses.dataclass(frozen=True)
class ShowContext:
    """What a drawer gets: the run, its predictions file and the options."""

    run_dir: Path
    record: Record
    info: dict[str, Any]  # the record's predictions section
    path: Path            # the predictions file, absolute
    n: int
    score_thr: float

    @property
    def data_root(self) -> Path | None:
        """The dataset root the run read (its data source, "synthetic:" stripped)."""
        source = self.record.data_source
        if not isinstance(source, str) or not source:
            return None
        return Path(source.split(":", 1)[1] if source.startswith("synthetic:") else source)

    def resolve(self, value: str) -> Path:
        """A path from the record: absolute as written, or relative to the run folder."""
        p = Path(value)
        return p if p.is_absolute() else self.run_dir / p


# A drawer: the figure (matplotlib) for ctx's samples and how many samples it drew.
Drawer = Callable[[ShowContext], tuple[Any, int]]


def restricted_pickle_load(path: Path) -> Any:
    """A pickle of plain containers and numpy arrays only: a submission or ground-truth file
    received from someone else must not run code when it is read."""
    allowed = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("collections", "OrderedDict"),
               ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex")}

    class _Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) in allowed:
                return super().find_class(module, name)
            raise DatasetError(f"{path}: the pickle needs {module}.{name}, which is neither a "
                               "plain container nor a numpy array; not loaded")

    try:
        with open(path, "rb") as f:
            return _Restricted(f).load()
    except (OSError, pickle.UnpicklingError, EOFError) as exc:
        raise DatasetError(f"{path}: cannot read the pickle ({exc})") from None
