"""Series of frames: aligned and summed into one frame for the analysis.

Beam-sensitive monolayers are often imaged as a series of short exposures (a Velox DCFI
or Nion sequence, a multi-page TIFF) that the microscopist aligns and sums. Each frame is
registered on the previous one by phase correlation (sub-pixel, :data:`UPSAMPLE`): a
crystal's frames correlate at every lattice vector, so consecutive frames, which drift by
far less than a lattice constant, pin the shift; the shifts add up along the series, and
each frame is registered once more on the average of all so aligned. The frames are
shifted (bilinear) onto the first and averaged over the region every frame covers. Scan
distortion that differs between frames is not undone (rigid shifts only).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["align_and_sum", "common_region", "series_note"]

#: sub-pixel precision of the registration (1 / UPSAMPLE px)
UPSAMPLE = 10
#: a frame drifting more than this share of the frame's smaller side from the previous one
#: is not aligned (the series is refused: frames that far apart hold different areas)
MAX_STEP_SHARE = 0.25


def align_and_sum(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Align a series ``(frames, rows, cols)`` and average it.

    Returns ``(image, shifts)``: the mean of the aligned frames over the region all of them
    cover, float32 ``(rows', cols')`` (at most the frame's size), and each frame's shift
    ``(frames, 2)`` (dy, dx) px onto the first frame.

    Raises
    ------
    ValueError
        For fewer than one frame, frames with non-finite pixels or a step between frames
        over :data:`MAX_STEP_SHARE` of the frame.
    """
    from skimage.registration import phase_cross_correlation

    s = np.asarray(stack, dtype=np.float32)
    if s.ndim != 3 or len(s) < 1:
        raise ValueError(f"a series must be (frames, rows, cols), got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("the series has NaN or infinite pixels")
    n, h, w = s.shape
    shifts = np.zeros((n, 2))
    for k in range(1, n):
        step, _, _ = phase_cross_correlation(s[k - 1], s[k], upsample_factor=UPSAMPLE, normalization=None)
        if np.max(np.abs(step)) > MAX_STEP_SHARE * min(h, w):
            raise ValueError(f"frame {k} moved {np.hypot(*step):.0f} px from frame {k - 1}: not one area; "
                             "align the series first")
        shifts[k] = shifts[k - 1] + step
    if n > 2:
        # the steps' errors add up along the series: each frame registered once more on the
        # average of all, which the first pass aligned to within a pixel or so
        moved = [ndi.shift(s[k], shifts[k], order=1, mode="nearest") for k in range(n)]
        mean = np.mean(moved, axis=0)
        for k in range(n):
            fix, _, _ = phase_cross_correlation(mean, moved[k], upsample_factor=UPSAMPLE, normalization=None)
            if np.max(np.abs(fix)) <= 2.0:  # a refinement, never a jump to another lattice vector
                shifts[k] += fix
        shifts -= shifts[0]
    y0, y1, x0, x1 = common_region(shifts, (h, w))
    if y1 - y0 < 16 or x1 - x0 < 16:
        raise ValueError("the frames of the series share no common region")
    total = np.zeros((h, w), np.float64)
    for k in range(n):
        total += ndi.shift(s[k], shifts[k], order=1, mode="nearest") if k else s[k]
    return (total[y0:y1, x0:x1] / n).astype(np.float32), shifts


def common_region(shifts: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)`` px of the first frame: the region every frame of ``shape``
    covers once shifted by its ``shifts`` (dy, dx) px (one shifted by +d covers d .. n + d);
    :func:`align_and_sum`'s average is this region."""
    sh = np.asarray(shifts, float).reshape(-1, 2)
    h, w = shape
    y0, x0 = (int(np.ceil(max(0.0, sh[:, i].max()))) for i in (0, 1))
    y1 = h + int(np.floor(min(0.0, sh[:, 0].min())))
    x1 = w + int(np.floor(min(0.0, sh[:, 1].min())))
    return y0, y1, x0, x1


def series_note(shifts: np.ndarray, image: np.ndarray) -> str:
    """What :func:`align_and_sum` did, for a warning: its ``shifts`` (frames, 2) px and the
    averaged ``image``."""
    return (f"a series of {len(shifts)} frames, aligned (largest drift {np.abs(shifts).max():.1f} px) and averaged "
            f"over the region all cover ({image.shape[1]} x {image.shape[0]} px)")
