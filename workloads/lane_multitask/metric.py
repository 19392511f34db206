"""TuSimple lane accuracy as the official evaluate/lane.py (TuSimple/tusimple-benchmark @ d1f5ef1)
computes it, GANet's F1, and drivable-area IoU figures as the seed prints them.

Per image (LaneEval.bench): a GT lane's threshold is 20 px / cos(angle of the least-squares
line x = k y + c through its labelled points); a prediction's accuracy against it is the
fraction of ALL h_samples where |pred - gt| < threshold, with negatives on either side
replaced by -100 (rows absent in both count as hits). Each GT lane takes its best prediction;
< 0.85 is a miss (FN), else matched. FP = #pred - #matched (a prediction may match several GT
lanes, so FP can go negative: kept, as the original). With more than 4 GT lanes one miss is
forgiven and the lowest line accuracy dropped. The image scores sum(acc) / max(min(4, #gt), 1),
FP / #pred (0 without predictions), FN / max(min(#gt, 4), 1); run_time > 200 ms or more than
#gt + 2 predictions scores (0, 0, 1); a lane whose length differs from h_samples is an error.
Split figures are sums over the predictions divided by the number of GT frames.
F1 (GANet's tools/ganet/tusimple/evaluate/lane.py): P = 1 - FP, R = 1 - FN, 2PR / (P + R).
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

PIXEL_THRESH = 20.0
PT_THRESH = 0.85
MAX_RUN_TIME_MS = 200.0
IOU_SPLIT = 0.4


class LaneFormatError(ValueError):
    """A predicted lane does not have one value per h_sample (the official 'Format of lanes error')."""


def lane_angle(xs: np.ndarray, ys: np.ndarray) -> float:
    keep = xs >= 0
    xs, ys = xs[keep], ys[keep]
    if len(xs) <= 1:
        return 0.0
    yc = ys - ys.mean()
    denom = float((yc * yc).sum())
    # sklearn LinearRegression's slope; all-equal rows give a 0 slope there too
    slope = float((yc * (xs - xs.mean())).sum()) / denom if denom > 0 else 0.0
    return float(np.arctan(slope))


def line_accuracy(pred: np.ndarray, gt: np.ndarray, thresh: float) -> float:
    pred = np.where(pred >= 0, pred, -100.0)
    gt = np.where(gt >= 0, gt, -100.0)
    return float(np.sum(np.abs(pred - gt) < thresh)) / len(gt)


def bench(pred: Sequence[Sequence[float]], gt: Sequence[Sequence[float]],
          h_samples: Sequence[float], run_time: float) -> tuple[float, float, float]:
    """One image: (accuracy, FP rate, FN rate)."""
    if any(len(p) != len(h_samples) for p in pred):
        raise LaneFormatError(f"a predicted lane does not have {len(h_samples)} values")
    if run_time > MAX_RUN_TIME_MS or len(gt) + 2 < len(pred):
        return 0.0, 0.0, 1.0
    ys = np.asarray(h_samples, dtype=np.float64)
    preds = [np.asarray(p, dtype=np.float64) for p in pred]
    line_accs, matched, fn = [], 0, 0
    for g in gt:
        g = np.asarray(g, dtype=np.float64)
        thresh = PIXEL_THRESH / np.cos(lane_angle(g, ys))
        best = max((line_accuracy(p, g, thresh) for p in preds), default=0.0)
        if best < PT_THRESH:
            fn += 1
        else:
            matched += 1
        line_accs.append(best)
    fp = len(pred) - matched
    if len(gt) > 4 and fn > 0:
        fn -= 1
    total = sum(line_accs)
    if len(gt) > 4:
        total -= min(line_accs)
    denom = max(min(4.0, len(gt)), 1.0)
    return total / denom, (fp / len(pred) if pred else 0.0), fn / denom


def tusimple_scores(predictions: Iterable[dict[str, Any]], ground_truth: Sequence[dict[str, Any]]
                    ) -> dict[str, float]:
    """Accuracy, FP, FN (official) and F1 (GANet) of submission-format predictions
    ({raw_file, lanes, run_time}) against GT frames ({raw_file, lanes, h_samples})."""
    gts = {g["raw_file"]: g for g in ground_truth}
    acc = fp = fn = 0.0
    for p in predictions:
        g = gts.get(p["raw_file"])
        if g is None:
            raise KeyError(f"prediction for {p['raw_file']}, which is not a ground-truth frame")
        a, f, n = bench(p["lanes"], g["lanes"], g["h_samples"], p["run_time"])
        acc, fp, fn = acc + a, fp + f, fn + n
    num = len(gts)
    precision, recall = 1 - fp / num, 1 - fn / num
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"Accuracy": acc / num, "FP": fp / num, "FN": fn / num, "F1": f1}


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Drivable IoU of one image; 1.0 when both masks are empty (nothing to find, none found)."""
    p, g = pred.astype(bool), gt.astype(bool)
    union = int(np.logical_or(p, g).sum())
    return float(np.logical_and(p, g).sum()) / union if union else 1.0


class DrivableIoU:
    """Per-image IoU (mean, median, counts below / at-or-above 0.4 as the seed prints them) and
    the split's two-class mIoU from the summed confusion matrix (YOLOP's SegmentationMetric)."""

    def __init__(self) -> None:
        self.ious: list[float] = []
        self.confusion = np.zeros((2, 2), dtype=np.int64)  # [gt, pred]

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        p, g = pred.astype(bool).ravel(), gt.astype(bool).ravel()
        self.ious.append(mask_iou(p, g))
        self.confusion += np.bincount(g * 2 + p, minlength=4).reshape(2, 2)

    def result(self) -> dict[str, float]:
        ious = np.asarray(self.ious, dtype=np.float64)
        c = self.confusion
        per_class = [c[k, k] / max(c[k, :].sum() + c[:, k].sum() - c[k, k], 1) for k in (0, 1)]
        return {
            "drivable_IoU_mean": float(ious.mean()) if len(ious) else 0.0,
            "drivable_IoU_median": float(np.median(ious)) if len(ious) else 0.0,
            "drivable_mIoU": float(np.mean(per_class)),
            "drivable_IoU_lt_0.4": float((ious < IOU_SPLIT).sum()),
            "drivable_IoU_ge_0.4": float((ious >= IOU_SPLIT).sum()),
        }
