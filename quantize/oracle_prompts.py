"""Prompts drawn from a ground-truth mask, identical to sonomask's `src/prompting/oracle.rs` (the tests
pin the agreement): the tight box, a loose box (grown by a fraction of its size), a seeded
jittered box (each side moved by up to a fraction of the box size: boxes as a person draws
them) and one interior click (the pixel farthest from the background in city-block distance,
the first in raster order)."""

from __future__ import annotations

import cv2
import numpy as np

MASK64 = (1 << 64) - 1


class SplitMix64:
    def __init__(self, seed: int, index: int):
        self.state = ((seed << 32) ^ index) & MASK64

    def next_u64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def next_f64(self) -> float:
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))


def tight_box(mask: np.ndarray):
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]


def adjust_box(box, w: int, h: int, loose: float = 0.0, jitter: float = 0.0, seed: int = 0, index: int = 0):
    """Grow each side by loose/2 of the box size, then move each by up to +-jitter of it
    (x0, y0, x1, y1 in that order from one SplitMix64 stream), clamp to the image. A box the
    jitter turns inside out is left as it was before the jitter."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    x0, x1 = x0 - loose * bw / 2, x1 + loose * bw / 2
    y0, y1 = y0 - loose * bh / 2, y1 + loose * bh / 2
    grown = [x0, y0, x1, y1]
    if jitter > 0:
        r = SplitMix64(seed, index)
        d = [(2 * r.next_f64() - 1) * jitter for _ in range(4)]
        x0, y0, x1, y1 = x0 + d[0] * bw, y0 + d[1] * bh, x1 + d[2] * bw, y1 + d[3] * bh
        if not (x0 < x1 and y0 < y1):
            x0, y0, x1, y1 = grown
    cx = lambda v: min(max(v, 0.0), float(w - 1))  # noqa: E731
    cy = lambda v: min(max(v, 0.0), float(h - 1))  # noqa: E731
    # f32, as sonomask holds prompt coordinates
    out = [float(np.float32(v)) for v in (cx(x0), cy(y0), cx(x1), cy(y1))]
    if not (out[0] < out[2] and out[1] < out[3]):
        return list(box)
    return out


def interior_point(mask: np.ndarray):
    """The mask pixel farthest from the background (exact L1 distance), first in raster order."""
    if not mask.any():
        return None
    if mask.all():
        b = tight_box(mask)
        return [float(int((b[0] + b[2]) / 2)), float(int((b[1] + b[3]) / 2))]
    d = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L1, 3)
    i = int(np.argmax(d))
    return [float(i % mask.shape[1]), float(i // mask.shape[1])]
