"""Bezier lanes: the basis at evenly spaced parameters and the end-fixed least-squares fit.
OpenLane-V2's centerlines are targets of this form (the reader fits them, the baseline's
decoder samples them)."""
from __future__ import annotations

import numpy as np


def bernstein_matrix(num_points: int, num_control: int) -> np.ndarray:
    """(num_points, num_control): Bezier basis at t = i / (num_points - 1)."""
    from math import comb

    t = np.arange(num_points) / (num_points - 1)
    j = np.arange(num_control)
    binom = np.array([comb(num_control - 1, k) for k in j], dtype=np.float64)
    return binom * (1 - t[:, None]) ** (num_control - 1 - j) * t[:, None] ** j


def fit_bezier_endpoints_fixed(points: np.ndarray, num_control: int) -> np.ndarray:
    """Control points (K, 3): first/last = the polyline's ends, the middle by least squares."""
    a = bernstein_matrix(len(points), num_control)
    inner = points[1:-1] - np.outer(a[1:-1, 0], points[0]) - np.outer(a[1:-1, -1], points[-1])
    middle = np.linalg.lstsq(a[1:-1, 1:-1], inner, rcond=None)[0]
    return np.concatenate([points[:1], middle, points[-1:]], 0)
