"""Small 1-D shaping functions and the head-motion warp that the teacher face is built from."""

from __future__ import annotations

import cv2
import numpy as np


def smooth_fall(t: np.ndarray, length: float) -> np.ndarray:
    """1 at t <= 0, falling to 0 at t >= length with zero slope at both ends."""
    s = np.clip(t / length, 0.0, 1.0)
    return np.asarray(0.5 * (1.0 + np.cos(np.pi * s)), dtype=np.float32)


def window(u: np.ndarray, flat: float, fall: float) -> np.ndarray:
    """1 for |u| <= flat, smoothly 0 by |u| >= flat + fall."""
    return smooth_fall(np.abs(u) - flat, fall)


def curve(points: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """y of a polyline through ``points`` (x, y) at ``xs``, constant beyond its ends."""
    order = np.argsort(points[:, 0])
    return np.interp(xs, points[order, 0], points[order, 1]).astype(np.float32)


def similarity(head: tuple[float, float, float, float], centre: tuple[float, float]) -> np.ndarray:
    """2x3 matrix of head motion (dx, dy, rot_deg, scale) about ``centre``."""
    dx, dy, rot, scale = head
    m = cv2.getRotationMatrix2D(centre, float(rot), float(scale))
    m[0, 2] += dx
    m[1, 2] += dy
    return m
