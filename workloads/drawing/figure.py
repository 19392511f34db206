"""What every `harness show` drawer uses: the figure grid, the colours (ground truth green,
predictions red) and readers of images and JSON that name the file they fail on."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import DatasetError

GT, PRED = "#1db954", "#e8364f"


def grid(samples: int, panels: int, panel_in: tuple[float, float] = (4.0, 3.0),
         per_row: int | None = None) -> tuple[Any, list[list[Any]]]:
    """A figure with `panels` axes per sample, samples laid `per_row` to a row."""
    import matplotlib.pyplot as plt

    per_row = per_row or max(1, min(samples, 4 // panels))
    rows = math.ceil(samples / per_row)
    cols = per_row * panels
    fig, axes = plt.subplots(rows, cols, figsize=(panel_in[0] * cols, panel_in[1] * rows),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    out = []
    for i in range(samples):
        r, c = divmod(i, per_row)
        out.append([axes[r][c * panels + k] for k in range(panels)])
    return fig, out


def load_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the image ({exc})") from None


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not readable JSON ({exc})") from None


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not readable JSON lines ({exc})") from None
