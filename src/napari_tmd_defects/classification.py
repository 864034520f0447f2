"""CNN-2: a ResNet-18 that classifies each unit cell into the six defect classes.

Pipeline (2DIP-Net, "Defect classification"; the paper's 2-channel input):

1. :func:`normalize_image` maps the whole image to a common intensity scale
   (local background at the hollow sites -> 0, brightest-column level -> 1), once per
   image, so that an empty ``V_X2+V_M`` cell stays dark and dose, contrast, offset,
   contamination and 8-bit exports do not matter.
2. :func:`extract_crops` cuts each cell box (px, ``x_min, y_min, x_max, y_max``) with
   sub-pixel accuracy (``torchvision.ops.roi_align``, area-averaged). 2 channels: the
   left half of the box (X column) and the right half (M column), each resized to
   ``S x S`` and stacked; 1 channel: the whole box resized to ``S x S``.
3. :func:`build_classifier` builds ``torchvision.models.resnet18`` with its first
   convolution taking 1 or 2 channels and 6 outputs (trained from scratch), or (``arch=
   "small"``) a six-layer CNN with ~14x fewer multiply-adds, trained by distillation from
   the ResNet-18 (``train_classifier(teacher=...)``).
4. :class:`CellClassifier` (from :func:`load_classifier`) runs batched inference and
   returns per-cell softmax probabilities; the caller flags low-confidence cells.

Training data are crops from simulated full images (neighbours, probe tails and noise
are realistic) with box jitter and intensity augmentation (:func:`simulate_crops`,
:func:`crops_from_dataset`), cached as ``.npz`` (:class:`CropSet`).
:func:`train_classifier` trains with class-balanced sampling, checkpoints and progress.

Corrections folder (``tmd-defects train-classifier --corrections DIR``)
----------------------------------------------------------------------
Hand-checked cells (e.g. from the napari correction tool) in one of two layouts; the
``label`` column holds a class name (``V_Te1``), generic key (``vx1``) or id (``1``):

* boxes on images (preferred; keeps per-image normalisation and allows box jitter)::

      DIR/index.csv      columns: image,x_min,y_min,x_max,y_max,label[,pixel_size]
      DIR/<image>        any image that io.read_image reads (path relative to DIR)

  Boxes are in px of that image (x = column, y = row, pixel centres at integers);
  ``pixel_size`` (Å/px) defaults to the file's metadata.
* single crops::

      DIR/index.csv      columns: crop,label
      DIR/crops/<crop>   2-D .npy array: the cell box cut from the image *after*
                         normalize_image, at native sampling, X column in the left half

Both are cropped with the same functions as at inference.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from scipy import ndimage as ndi

from .geometry import is_exact_counts
from .materials import N_CLASSES, get_material
from .parallel import thread_map
from .runtime import (
    CancelCallback,
    ProgressCallback,
    WeightsError,
    check_cancel,
    default_weights,
    load_weights,
    resolve_device,
    save_weights,
)

__all__ = [
    "ARCHS",
    "SHIPPED_CLASSIFIERS",
    "SMALL_LAYERS",
    "DEFAULT_CHANNELS",
    "DEFAULT_INPUT_SIZE",
    "CellClassifier",
    "CropSet",
    "accuracy_summary",
    "build_classifier",
    "classifier_macs",
    "confusion_matrix",
    "crops_from_corrections",
    "crops_from_dataset",
    "evaluate_dataset",
    "extract_crops",
    "fit_temperature",
    "jitter_boxes",
    "classifier_weights",
    "load_classifier",
    "normalize_image",
    "predict_crops",
    "save_confusion_png",
    "simulate_crops",
    "train_classifier",
]

#: Side of each input channel, px (chosen by benchmarks/classifier_ablations.py).
DEFAULT_INPUT_SIZE = 32
#: 2: X-column half and M-column half stacked (the paper's best input).
DEFAULT_CHANNELS = 2
#: Normalised intensities are clipped to this range (8-bit saturation, hot pixels).
_CLIP = (-3.0, 5.0)
#: :func:`normalize_image` works in bands of this many rows (the column filter stays in cache).
_NORM_BAND_ROWS = 256
#: ... and keeps the full-resolution background between its two passes up to this size
#: (bytes; larger frames recompute it band by band: one full-size array fewer).
_KEEP_BACKGROUND_BYTES = 64 * 2**20
_STEMS = ("standard", "small")
#: Shipped classifiers by name (:func:`load_classifier`, ``--classifier NAME``).
SHIPPED_CLASSIFIERS = {"resnet18": "classifier", "small": "classifier_small"}
#: Network families of :func:`build_classifier` (the card's ``model``).
ARCHS = ("resnet18", "small")
#: The "small" network: (output channels, kernel, stride) of its convolutions (each with
#: batch norm and ReLU), then global average pooling and a linear layer. On 32 px crops:
#: 16, 8, 8, 4, 4, 2 px feature maps, 2.5 M multiply-adds per cell (ResNet-18: 36 M).
#: Cards store them as ``small_layers`` (a card's own widths are used when loading).
SMALL_LAYERS = ((24, 5, 2), (32, 3, 2), (32, 3, 1), (64, 3, 2), (64, 3, 1), (128, 3, 2))


# --------------------------------------------------------------------------- intensity
def normalize_image(
    image: np.ndarray, pixel_size: float | None = None, material: str = "MoTe2"
) -> np.ndarray:
    """Per-image intensity normalisation used before cropping cells.

    The image is lightly smoothed (Gaussian, 0.25 Å, or 1 px without ``pixel_size``) to
    estimate the background and the scale, then returned unsmoothed as
    ``(image - background) / scale``:

    * background: with ``pixel_size``, the local level of the hollow sites (minimum over
      1.5 lattice constants, smoothed over one lattice constant), which also removes
      slowly varying contamination; without it, the 1st percentile;
    * scale: the 99th percentile of the smoothed, background-free image (the level of
      the brightest, chalcogen columns).

    Invariant to gain and offset (up to rounding); values are clipped to [-3, 5].
    Computed in bands of rows, bitwise as on the whole frame, with one full-size float32
    array at a time (the smoothed image, then the output; 8/16-bit counts are converted
    band by band). :class:`CellClassifier` reads the same values a band at a time
    (:class:`_Normalizer`).

    Parameters
    ----------
    image : (rows, cols) array
        Grey levels, any scale.
    pixel_size : float, optional
        Å/px; enables the local background.
    material : str
        Sets the lattice constant used for the background window.

    Returns
    -------
    (rows, cols) float32 array.
    """
    return _Normalizer(image, pixel_size, material).whole()


class _Normalizer:
    """:func:`normalize_image` of an image, row by row on request: the background and the
    scale are measured once (one full-size float32 array while doing so, freed after);
    ``fill(r0, r1, out)`` then writes rows ``r0:r1`` of the normalised image (bitwise as
    :func:`normalize_image`; the image itself is only read)."""

    def __init__(self, image: np.ndarray, pixel_size: float | None = None, material: str = "MoTe2"):
        arr = np.asarray(image)
        if arr.ndim != 2:
            raise ValueError(f"image must be 2-D, got shape {arr.shape}")
        if arr.size == 0:
            raise ValueError("image is empty")
        if pixel_size is not None and not (np.isfinite(pixel_size) and pixel_size > 0):
            raise ValueError(f"pixel_size must be a positive number of Å/px, got {pixel_size}")
        # 8/16-bit counts are exact in float32: read them band by band (no float32 copy)
        img = arr if is_exact_counts(arr) else np.asarray(arr, dtype=np.float32)
        lo, hi = float(img.min()), float(img.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            finite = np.isfinite(img)
            if not finite.any():
                raise ValueError("image has no finite pixel values")
            img = np.where(finite, img, np.median(img[finite])).astype(np.float32)
            del finite
            lo, hi = float(img.min()), float(img.max())
        h, w = img.shape
        self.image, self.shape = img, (h, w)
        #: fixed bands of rows (the background's bands are cached by these bounds)
        self.bands = [(r0, min(r0 + _NORM_BAND_ROWS, h)) for r0 in range(0, h, _NORM_BAND_ROWS)]
        sigma = 1.0 if pixel_size is None else max(0.7, 0.25 / float(pixel_size))
        radius = int(4.0 * sigma + 0.5)  # gaussian_filter's default reach (truncate = 4)
        # the smoothed image, a band of rows at a time (each with the filter's reach around
        # it: bitwise the whole-image filter); this one full-size array also takes the
        # background-free image for the scale
        smooth = np.empty((h, w), np.float32)

        def smooth_band(band: tuple[int, int]) -> None:
            """gaussian_filter's two passes over one band: down the columns, then along the rows."""
            r0, r1 = band
            a, b = max(0, r0 - radius), min(h, r1 + radius)
            # the column pass along the rows of the band's transpose (the same lines, read
            # contiguously: ~10 % faster)
            part = ndi.gaussian_filter1d(np.ascontiguousarray(img[a:b].T), sigma, axis=1, mode="nearest",
                                         output=np.float32)
            cols = np.ascontiguousarray(part[:, r0 - a:r1 - a].T)
            del part
            ndi.gaussian_filter1d(cols, sigma, axis=1, mode="nearest", output=smooth[r0:r1])

        thread_map(smooth_band, self.bands)  # the bands on the CPU threads (each writes its own rows)
        if pixel_size is None:
            background = np.float32(np.percentile(smooth, 1.0))
            self._rows = lambda r0, r1: background
        else:
            from .lattice.columns import background_rows

            self._rows = background_rows(smooth, get_material(material).a / float(pixel_size),
                                         keep=smooth.nbytes <= _KEEP_BACKGROUND_BYTES)
        top = _HighPercentile(smooth.size, 99.0) if smooth.size >= 2 else None

        def subtract(band: tuple[int, int]) -> None:
            smooth[band[0]:band[1]] -= self._rows(*band)  # the background-free smoothed image

        thread_map(subtract, self.bands)
        if top is not None:
            for r0, r1 in self.bands:
                top.add(smooth[r0:r1])
        scale = float(top.value() if top is not None else smooth.reshape(-1)[0])
        smooth = None  # freed
        #: None: a flat image (every value normalises to 0)
        self.scale = scale if np.isfinite(scale) and scale > 1e-6 * max(1.0, abs(lo), abs(hi)) else None

    def whole(self) -> np.ndarray:
        """The whole normalised image, ``(rows, cols)`` float32."""
        out = np.empty(self.shape, np.float32)
        for r0, r1 in self.bands:
            self.fill(r0, r1, out[r0:r1])
        return out

    def fill(self, r0: int, r1: int, out: np.ndarray) -> None:
        """Rows ``r0:r1`` of the normalised image into ``out`` (float32, ``(r1 - r0, cols)``)."""
        if self.scale is None:
            out[...] = 0.0
            return
        np.subtract(self.image[r0:r1], self._rows(r0, r1), out=out, dtype=np.float32)
        out /= np.float32(self.scale)
        np.clip(out, *_CLIP, out=out)


class _HighPercentile:
    """``np.percentile(values, q)`` (linear interpolation, bitwise) of ``n`` float values
    fed band by band (:meth:`add`), for a high ``q`` (>= 50): only the values from the
    percentile's floor rank up are kept (those above a running threshold), not all ``n``
    of them, and nothing is partitioned but those (~1 % of the pixels for the 99th)."""

    def __init__(self, n: int, q: float):
        if not (n >= 2 and 50.0 <= q <= 100.0):
            raise ValueError(f"needs n >= 2 and 50 <= q <= 100, got n={n}, q={q}")
        self.virtual = (n - 1) * (q / 100.0)  # numpy's virtual index (its floor, weight below)
        self.need = n - int(math.floor(self.virtual))  # values from the floor's rank up
        self.threshold = -np.inf
        self.kept: list[np.ndarray] = []
        self.n_kept = 0
        self.nan = False

    def add(self, band: np.ndarray) -> None:
        """Values (any shape; copied where kept)."""
        if band.size and np.isnan(band.max()):
            self.nan = True
        v = band[band >= self.threshold]
        self.kept.append(v)
        self.n_kept += v.size
        if self.n_kept > 2 * self.need + (1 << 16):  # keep the top `need`; the rest is below them
            v = np.concatenate(self.kept)
            k = v.size - self.need
            v = np.partition(v, k)[k:]
            self.threshold, self.kept, self.n_kept = v[0], [v], v.size

    def value(self) -> np.floating:
        v = np.concatenate(self.kept)
        if self.nan:  # as numpy
            return v.dtype.type(np.nan)
        if v.size < self.need:
            raise ValueError("fewer values were added than announced")
        j = v.size - self.need
        if self.need == 1:  # q = 100: the largest value (numpy: between it and itself)
            lo = hi = v.max()
        else:
            part = np.partition(v, (j, j + 1))
            lo, hi = part[j], part[j + 1]
        gamma = self.virtual - math.floor(self.virtual)
        diff = hi - lo  # as numpy's _lerp, in the values' precision
        return hi - diff * (1 - gamma) if gamma >= 0.5 else lo + diff * gamma


class _StreamedFrame:
    """The normalised image as a ``(1, 1, rows, cols)`` float32 tensor whose rows are
    written on request, band by band (:class:`_Normalizer`), and handed back to the system
    once no later crop reads them: the crops see the same tensor (shape, values) as of the
    whole normalised frame, but only the bands in use are resident. Where the system cannot
    take pages back (no ``madvise``) the bands stay written (a full-size array at the end)."""

    def __init__(self, norm: _Normalizer):
        import mmap

        import torch

        self.norm = norm
        h, w = norm.shape
        self._mm = None
        if hasattr(mmap.mmap, "madvise") and hasattr(mmap, "MADV_DONTNEED"):  # Linux, macOS
            # private and anonymous: pages take memory once written, and none once given back
            self._mm = mmap.mmap(-1, h * w * 4, flags=mmap.MAP_PRIVATE)
            self._page, self._dontneed = mmap.PAGESIZE, mmap.MADV_DONTNEED
            self.array = np.frombuffer(self._mm, np.float32).reshape(h, w)
        else:
            self.array = np.empty((h, w), np.float32)
        self.tensor = torch.from_numpy(self.array)[None, None]
        self._written = np.zeros(len(norm.bands), bool)

    def need(self, r0: int, r1: int) -> None:
        """Make rows ``r0:r1`` readable; rows before ``r0`` are read no more."""
        bands, w = self.norm.bands, self.array.shape[1]
        if self._mm is not None:
            page = self._page
            for k in np.flatnonzero(self._written[: max(0, r0) // _NORM_BAND_ROWS]):
                b0, b1 = bands[k]  # wholly before every later crop: its whole pages back
                start, stop = -(-b0 * w * 4 // page) * page, b1 * w * 4 // page * page
                if stop > start:
                    self._mm.madvise(self._dontneed, start, stop - start)
                self._written[k] = False
        k0 = max(0, r0) // _NORM_BAND_ROWS
        k1 = min(len(bands), -(-max(0, r1) // _NORM_BAND_ROWS))
        for k in range(k0, k1):
            if not self._written[k]:
                b0, b1 = bands[k]
                self.norm.fill(b0, b1, self.array[b0:b1])
                self._written[k] = True

    def close(self) -> None:
        self.tensor = self.array = None
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # still exported (a caller holds a view): freed with it
                pass
            self._mm = None


# --------------------------------------------------------------------------- crops
def _check_boxes(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        return b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be an (N, 4) array of x_min, y_min, x_max, y_max; got shape {b.shape}")
    if not np.all(np.isfinite(b)):
        raise ValueError("boxes contain NaN or infinite values")
    if np.any(b[:, 2] <= b[:, 0]) or np.any(b[:, 3] <= b[:, 1]):
        raise ValueError("every box needs x_max > x_min and y_max > y_min")
    return b


def _check_variant(size: int, channels: int) -> None:
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels}")
    if not (2 <= int(size) <= 512):
        raise ValueError(f"input size must be between 2 and 512 px, got {size}")


def _rois(boxes: np.ndarray, channels: int):
    """roi_align boxes (K, 5) for cell boxes in our frame (pixel centres at integers)."""
    import torch

    b = torch.as_tensor(boxes, dtype=torch.float32)
    # roi_align(aligned=True) puts pixel centres at i + 0.5: shift our boxes by +0.5
    b = b + 0.5
    if channels == 2:
        xm = 0.5 * (b[:, 0] + b[:, 2])
        left = torch.stack([b[:, 0], b[:, 1], xm, b[:, 3]], 1)
        right = torch.stack([xm, b[:, 1], b[:, 2], b[:, 3]], 1)
        b = torch.cat([left, right], 0)
    return torch.cat([torch.zeros(len(b), 1), b], 1)


def _crop_tensor(image_t, boxes: np.ndarray, size: int, channels: int):
    """Crops ``(N, channels, size, size)`` from a ``(1, 1, H, W)`` tensor."""
    from torchvision.ops import roi_align

    n = len(boxes)
    rois = _rois(boxes, channels).to(device=image_t.device, dtype=image_t.dtype)
    out = roi_align(image_t, rois, output_size=(size, size), spatial_scale=1.0,
                    sampling_ratio=-1, aligned=True)
    if channels == 2:
        out = out.view(2, n, size, size).transpose(0, 1)
    return out.contiguous()


def _frame_samples(frames, box, size: int, channels: int) -> tuple[int, int]:
    """Bilinear samples ``(kx, ky)`` per output pixel and side for cells given by affine
    frames, as roi_align's adaptive sampling ratio (from the largest cell)."""
    import torch

    fr = torch.as_tensor(np.asarray(frames, np.float64), dtype=torch.float64)
    x0, y0, x1, y1 = (float(v) for v in box)
    lin = fr[:, :, :2]
    half = x1 - x0 if channels == 1 else 0.5 * (x0 + x1) - x0  # width of each channel's part
    ext_x = float(torch.linalg.norm(lin[:, :, 0], dim=1).max()) * half
    ext_y = float(torch.linalg.norm(lin[:, :, 1], dim=1).max()) * (y1 - y0)
    return max(1, int(math.ceil(ext_x / size))), max(1, int(math.ceil(ext_y / size)))


def _frame_crop_tensor(image_t, frames: np.ndarray, box, size: int, channels: int,
                       samples: tuple[int, int] | None = None):
    """Crops ``(N, channels, size, size)`` of cells given by affine frames (see
    :func:`extract_frame_crops`) from a ``(1, 1, H, W)`` tensor; ``samples``: ``(kx, ky)``
    (default :func:`_frame_samples` of these frames)."""
    import torch
    import torch.nn.functional as F

    fr = torch.as_tensor(np.asarray(frames, np.float64), dtype=torch.float64)
    n = fr.shape[0]
    h, w = image_t.shape[-2:]
    x0, y0, x1, y1 = (float(v) for v in box)
    halves = [(x0, x1)] if channels == 1 else [(x0, 0.5 * (x0 + x1)), (0.5 * (x0 + x1), x1)]
    kx, ky = _frame_samples(fr, box, size, channels) if samples is None else samples
    tx = (torch.arange(size * kx, dtype=torch.float64) + 0.5) / (size * kx)
    ty = (torch.arange(size * ky, dtype=torch.float64) + 0.5) / (size * ky)
    # canonical sample coordinates (half, row, col): u along the box's x, v along its y
    u = torch.stack([lo + tx * (hi - lo) for lo, hi in halves]).numpy()[:, None, :]
    v = (y0 + ty * (y1 - y0)).numpy()[None, :, None]
    # grid_sample's grid of every cell and half at once, (x, y) in [-1, 1]: the image px
    # ``a u + b v + t`` of each sample as the sum of a per-column and a per-row term
    # (float64, one full-size pass each axis), then rounded to the image's dtype
    f = fr.numpy()
    grid = np.empty((n, len(halves), size * ky, size * kx, 2),
                    np.float64 if image_t.dtype == torch.float64 else np.float32)
    for k, side in enumerate((w, h)):  # k = 0: x (columns), 1: y (rows)
        a, b, t = (f[:, k, j].reshape(n, 1, 1, 1) for j in range(3))
        np.add((a * u) * (2.0 / side), ((b * v + t) + 0.5) * (2.0 / side) - 1.0, out=grid[..., k], casting="same_kind")
    grid = torch.from_numpy(grid).to(device=image_t.device, dtype=image_t.dtype)
    grid = grid.view(1, n * len(halves) * size * ky, size * kx, 2)
    smp = F.grid_sample(image_t[:1], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    smp = smp.view(n, len(halves), size * ky, size * kx)
    return (F.avg_pool2d(smp, (ky, kx)) if kx * ky > 1 else smp).contiguous()


def extract_frame_crops(
    image: np.ndarray, frames: np.ndarray, box=None, size: int = DEFAULT_INPUT_SIZE,
    channels: int = DEFAULT_CHANNELS,
) -> np.ndarray:
    """Cut cells given as affine frames out of an (already normalised) image.

    The frame of a cell maps canonical cell coordinates (lattice-constant units, X column
    at the origin, M column at ``(1/2, -1/(2 sqrt 3))``) to image px:
    ``p = frame[:, :2] @ u + frame[:, 2]``. The canonical ``box`` (default
    :data:`~.sites.CANONICAL_BOX`) is sampled in that frame, so a cell of any rotation,
    shear or stretch is seen as a canonical one; at rotation 0 without distortion this is
    :func:`extract_crops` of the cell's box.

    Returns
    -------
    (N, channels, S, S) float32 array (area-averaged bilinear samples; 0 outside the image).
    """
    import torch

    from .sites import CANONICAL_BOX

    _check_variant(size, channels)
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    fr = np.asarray(frames, dtype=np.float64).reshape(-1, 2, 3)
    if len(fr) == 0:
        return np.zeros((0, channels, size, size), np.float32)
    if not np.all(np.isfinite(fr)):
        raise ValueError("frames contain NaN or infinite values")
    box = CANONICAL_BOX if box is None else box
    samples = _frame_samples(fr, box, int(size), channels)
    t = torch.from_numpy(np.ascontiguousarray(img))[None, None]
    out = np.empty((len(fr), channels, int(size), int(size)), np.float32)
    step = max(1, 2**21 // (channels * int(size) ** 2 * samples[0] * samples[1]))  # ~2 M samples a chunk
    with torch.inference_mode():
        for i in range(0, len(fr), step):
            out[i:i + step] = _frame_crop_tensor(t, fr[i:i + step], box, int(size), channels, samples).numpy()
    return out


def extract_crops(
    image: np.ndarray, boxes: np.ndarray, size: int = DEFAULT_INPUT_SIZE, channels: int = DEFAULT_CHANNELS
) -> np.ndarray:
    """Cut cell boxes out of an (already normalised) image, with sub-pixel accuracy.

    Parameters
    ----------
    image : (rows, cols) array
        Usually the output of :func:`normalize_image`.
    boxes : (N, 4) array
        Cell boxes ``(x_min, y_min, x_max, y_max)`` in px (x = column, y = row, pixel
        centres at integer coordinates); canonical orientation (X column left).
    size : int
        Output side S, px.
    channels : 1 or 2
        2: left half (channel 0, X column) and right half (channel 1, M column) of
        each box, each resized to S x S; 1: the whole box resized to S x S.

    Returns
    -------
    (N, channels, S, S) float32 array. Each output pixel is the average of bilinear
    samples over its area (roi_align); outside the image counts as 0.
    """
    import torch

    _check_variant(size, channels)
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    b = _check_boxes(boxes)
    if len(b) == 0:
        return np.zeros((0, channels, size, size), np.float32)
    t = torch.from_numpy(np.ascontiguousarray(img))[None, None]
    with torch.inference_mode():
        return _crop_tensor(t, b, int(size), channels).numpy()


def jitter_boxes(boxes: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Move each box edge by a uniform random amount within ``±fraction`` of the box
    width (x edges) or height (y edges), px. ``fraction = 0.07`` mimics detector boxes."""
    b = _check_boxes(boxes).copy()
    if fraction <= 0 or len(b) == 0:
        return b
    w = (b[:, 2] - b[:, 0])[:, None]
    h = (b[:, 3] - b[:, 1])[:, None]
    d = rng.uniform(-fraction, fraction, size=b.shape)
    return b + d * np.concatenate([w, h, w, h], axis=1)


# --------------------------------------------------------------------------- model
def _small_cnn(in_channels: int, num_classes: int, spec=SMALL_LAYERS):
    """The ``arch="small"`` network (``spec``: :data:`SMALL_LAYERS`), an ``nn.Sequential``."""
    import torch.nn as nn

    layers: list = []
    c = in_channels
    for out, k, stride in spec:
        out, k, stride = int(out), int(k), int(stride)
        conv = nn.Conv2d(c, out, k, stride=stride, padding=k // 2, bias=False)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        layers += [conv, nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        c = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


def classifier_macs(model, in_channels: int = DEFAULT_CHANNELS, input_size: int = DEFAULT_INPUT_SIZE) -> int:
    """Multiply-adds of one forward pass on one ``in_channels x S x S`` crop (convolutions
    and linear layers)."""
    import torch
    import torch.nn as nn

    total = [0]

    def hook(m, inp, out):
        if isinstance(m, nn.Conv2d):
            total[0] += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total[0] += m.in_features * m.out_features

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was = model.training
    try:
        model.eval()
        with torch.inference_mode():
            model(torch.zeros(1, in_channels, input_size, input_size))
    finally:
        for h in hs:
            h.remove()
        model.train(was)
    return int(total[0])


def build_classifier(
    in_channels: int = DEFAULT_CHANNELS,
    input_size: int = DEFAULT_INPUT_SIZE,
    num_classes: int = N_CLASSES,
    stem: str = "standard",
    arch: str = "resnet18",
    small_layers=None,
):
    """A CNN-2 for ``in_channels`` x S x S crops (no pretrained weights).

    ``arch="resnet18"``: torchvision's ResNet-18. ``stem="standard"`` keeps ResNet's 7x7/2
    convolution and max-pool (the first convolution takes ``in_channels``); ``"small"``
    uses a 3x3/1 convolution without the max-pool (for small inputs; 16x the compute).
    ``arch="small"``: six convolutions with batch norm (``small_layers``, default
    :data:`SMALL_LAYERS`), ~14x fewer multiply-adds than the ResNet-18 on 32 px crops;
    ``stem`` is ignored.
    ``input_size`` is only validated (the networks pool globally).
    """
    import torch.nn as nn
    import torchvision

    _check_variant(input_size, in_channels)
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if stem not in _STEMS:
        raise ValueError(f"stem must be one of {_STEMS}, got {stem!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if arch == "small":
        return _small_cnn(in_channels, num_classes, SMALL_LAYERS if small_layers is None else small_layers)
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if stem == "standard":
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    else:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def _dense_conv_bn(conv, bn, in_shape: tuple[int, int, int]):
    """A convolution and its batch norm on a ``(C, H, W)`` input as one affine map of the
    flattened input: ``(weight (C'H'W', CHW), bias (C'H'W',), out_shape)``. The weight's
    entries are the kernel's taps that meet the input (the rest only ever met padding)."""
    import torch

    c, h, w = in_shape
    n = c * h * w
    with torch.no_grad():
        out = conv(torch.eye(n).reshape(n, c, h, w))  # column j: the response to input pixel j
        oc, oh, ow = out.shape[1:]
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        weight = out.reshape(n, -1).T * scale.repeat_interleave(oh * ow)[:, None]
        bias = shift.repeat_interleave(oh * ow)
    return weight.contiguous(), bias.contiguous(), (int(oc), int(oh), int(ow))


def _small_input_resnet(model, channels: int, size: int):
    """A torchvision ResNet (basic blocks, eval mode) for ``channels x size x size`` inputs
    with its last blocks as matrix products, or None when it has no such blocks.

    Where a block's input is at most 2 x 2 px (ResNet-18 on 32 px crops: the second block
    of ``layer3`` and ``layer4``), most taps of its 3 x 3 kernels only meet the zero
    padding; as dense maps of the flattened features (batch norms folded in) these blocks
    cost about a third of the multiply-adds. Same function up to float rounding.
    """
    import copy

    import torch
    import torch.nn as nn
    from torchvision.models.resnet import BasicBlock, ResNet

    if not isinstance(model, ResNet):
        return None

    def linear(weight, bias):
        lin = nn.Linear(weight.shape[1], weight.shape[0])
        lin.weight.data, lin.bias.data = weight, bias
        return lin

    class DenseBlock(nn.Module):
        def __init__(self, blk, in_shape):
            super().__init__()
            w1, b1, mid = _dense_conv_bn(blk.conv1, blk.bn1, in_shape)
            w2, b2, self.out_shape = _dense_conv_bn(blk.conv2, blk.bn2, mid)
            self.l1, self.l2 = linear(w1, b1), linear(w2, b2)
            self.down = nn.Identity()
            if blk.downsample is not None:
                self.down = linear(*_dense_conv_bn(blk.downsample[0], blk.downsample[1], in_shape)[:2])

        def forward(self, x):
            return torch.relu(self.l2(torch.relu(self.l1(x))) + self.down(x))

    class SmallInputResNet(nn.Module):
        def __init__(self, convs, dense, fc):
            super().__init__()
            self.convs, self.dense, self.fc = convs, dense, fc
            self.c, self.hw = dense[-1].out_shape[0], dense[-1].out_shape[1] * dense[-1].out_shape[2]

        def forward(self, x):
            x = self.dense(self.convs(x).flatten(1))
            return self.fc(x.reshape(x.shape[0], self.c, self.hw).mean(2))

    r = copy.deepcopy(model).eval().float().to(memory_format=torch.contiguous_format)
    convs: list = [r.conv1, r.bn1, r.relu, r.maxpool]
    dense: list = []
    with torch.no_grad():
        x = nn.Sequential(*convs)(torch.zeros(1, channels, size, size))
        for blk in (b for layer in (r.layer1, r.layer2, r.layer3, r.layer4) for b in layer):
            if not isinstance(blk, BasicBlock):
                return None
            shape = tuple(int(v) for v in x.shape[1:])
            if dense or shape[1] * shape[2] <= 4:
                dense.append(DenseBlock(blk, shape))
            else:
                convs.append(blk)
            x = blk(x)
    if not dense or not isinstance(r.avgpool, nn.AdaptiveAvgPool2d) or tuple(r.avgpool.output_size) != (1, 1):
        return None
    return SmallInputResNet(nn.Sequential(*convs), nn.Sequential(*dense), r.fc).eval()


def predict_crops(model, crops, batch_size: int = 512, device=None, half: bool = False,
                  cancel: CancelCallback | None = None) -> np.ndarray:
    """Softmax probabilities ``(N, classes)`` float32 of a model on crops ``(N, C, S, S)``."""
    import torch

    device = device or next(model.parameters()).device
    x = torch.as_tensor(np.asarray(crops)) if not isinstance(crops, torch.Tensor) else crops
    out = []
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            check_cancel(cancel)
            xb = x[i : i + batch_size].to(device=device, dtype=torch.float16 if half else torch.float32)
            xb = xb.contiguous(memory_format=torch.channels_last)
            out.append(torch.softmax(model(xb).float(), 1).cpu())
    if not out:
        n_out = model.fc.out_features if hasattr(model, "fc") else N_CLASSES
        return np.zeros((0, n_out), np.float32)
    return torch.cat(out).numpy().astype(np.float32)


class CellClassifier:
    """A trained CNN-2 ready for inference (see :func:`load_classifier`).

    Attributes
    ----------
    model : torch.nn.Module
        In eval mode, channels-last, on ``device`` (float16 on CUDA).
    card : dict
        How the model was built and trained, and what it scored.
    device : torch.device
    batch_size : int
        Cells per forward pass.
    """

    def __init__(self, model, card: dict[str, Any], device="cpu", batch_size: int = 512):
        import torch

        self.device = resolve_device(device) if isinstance(device, str) else device
        self.card = dict(card)
        self.input_size = int(card.get("input_size", DEFAULT_INPUT_SIZE))
        self.channels = int(card.get("in_channels", DEFAULT_CHANNELS))
        self.material = str(card.get("material", "MoTe2"))
        #: softmax temperature fitted on held-apart validation frames (card ``calibration``)
        self.temperature = float(card.get("calibration", {}).get("temperature", 1.0))
        self.half = self.device.type == "cuda"
        model = model.to(self.device).eval()
        if self.half:
            model = model.half()
        self.model = model.to(memory_format=torch.channels_last)
        self.batch_size = int(batch_size)
        self._fast = None

    def _inference_model(self):
        """The model compiled for CPU inference (:func:`~.runtime.optimize_for_cpu`; a ResNet
        with its last blocks as matrix products, :func:`_small_input_resnet`), or the eager
        one (other devices, or where compiling fails)."""
        from .runtime import optimize_for_cpu

        if self.device.type != "cpu" or self.half:
            return self.model
        if self._fast is None:
            channels, size = self.channels, self.input_size

            def small_input(model):
                return _small_input_resnet(model, channels, size)

            small_input.__qualname__ = f"_small_input_resnet_{channels}x{size}"
            self._fast = optimize_for_cpu(self.model, small_input)
        return self._fast

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.card.get("class_names", get_material(self.material).class_names))

    def predict(
        self,
        image: np.ndarray,
        boxes: np.ndarray,
        pixel_size: float,
        material: str = "MoTe2",
        progress: ProgressCallback | None = None,
        cancel: CancelCallback | None = None,
        frames: np.ndarray | None = None,
        box=None,
    ) -> np.ndarray:
        """Class probabilities of the cells in ``boxes`` (or given by ``frames``).

        Parameters
        ----------
        image : (rows, cols) array
            Raw image (grey levels, any scale); normalised here with
            :func:`normalize_image`.
        boxes : (N, 4) array
            Cell boxes in px (x = column, y = row), canonical orientation. Ignored when
            ``frames`` is given.
        pixel_size : float
            Å/px of ``image``.
        material : str
            Must be the material the model was trained for (``card["material"]``).
        progress, cancel : callables, optional
            ``progress(done, total)`` after each batch; ``cancel()`` -> True stops with
            :class:`~.runtime.Cancelled`.
        frames : (N, 2, 3) array, optional
            Affine frames of the cells (canonical cell -> image px; any orientation, see
            :func:`extract_frame_crops`), cropped with the canonical ``box``.
        box : (4,) optional
            Canonical crop box for ``frames`` (default :data:`~.sites.CANONICAL_BOX`).

        Returns
        -------
        (N, 6) float32 array of softmax probabilities (rows sum to 1), class order of
        :data:`~.materials.CLASS_KEYS`.
        """
        import torch

        if get_material(material).name != get_material(self.material).name:
            raise ValueError(
                f"this classifier was trained for {self.material}, not {material}; "
                "train one for that material with `tmd-defects train-classifier`"
            )
        if pixel_size is None or not (np.isfinite(pixel_size) and pixel_size > 0):
            raise ValueError(f"pixel_size must be a positive number of Å/px, got {pixel_size}")
        if frames is not None:
            from .sites import CANONICAL_BOX

            fr = np.asarray(frames, dtype=np.float64).reshape(-1, 2, 3)
            if not np.all(np.isfinite(fr)):
                raise ValueError("frames contain NaN or infinite values")
            crop_box = CANONICAL_BOX if box is None else tuple(box)

            def crop(img_t, lo, hi):
                return _frame_crop_tensor(img_t, fr[lo:hi], crop_box, self.input_size, self.channels)
            n = len(fr)
            # rows each cell's samples lie in: its canonical box's corners in image px
            x0, y0, x1, y1 = (float(v) for v in crop_box)
            corner_y = fr[:, 1, :2] @ np.array([[x0, x0, x1, x1], [y0, y1, y0, y1]]) + fr[:, 1, 2:]
            y_lo, y_hi = corner_y.min(1), corner_y.max(1)
        else:
            b = _check_boxes(boxes)

            def crop(img_t, lo, hi):
                return _crop_tensor(img_t, b[lo:hi], self.input_size, self.channels)
            n = len(b)
            y_lo, y_hi = b[:, 1], b[:, 3]
        n_out = int(self.card.get("num_classes", N_CLASSES))
        if n == 0:
            if progress:
                progress(0, 0)
            return np.zeros((0, n_out), np.float32)
        check_cancel(cancel)
        norm = _Normalizer(image, pixel_size, material)
        check_cancel(cancel)
        dtype = torch.float16 if self.half else torch.float32
        streamed = None
        if self.device.type == "cpu":
            # rows of the normalised frame written as the batches reach them and given back
            # behind them: the frame's shape and values, a few bands of it in memory
            streamed = _StreamedFrame(norm)
            img_t = streamed.tensor
            # rows read by bilinear samples in [y_lo, y_hi] (a row of margin for rounding);
            # keep_from[k]: the first row any batch from k on reads
            first = np.floor(y_lo).astype(np.int64) - 1
            last = np.floor(y_hi).astype(np.int64) + 3
            starts = np.arange(0, n, self.batch_size)
            keep_from = np.minimum.accumulate(np.minimum.reduceat(first, starts)[::-1])[::-1]
            batch_last = np.maximum.reduceat(last, starts)
        else:
            img_t = torch.from_numpy(norm.whole())[None, None].to(self.device)
        out = np.empty((n, n_out), np.float32)
        model = self._inference_model()
        fmt = torch.channels_last if model is self.model else torch.contiguous_format
        try:
            with torch.inference_mode():
                for k, i in enumerate(range(0, n, self.batch_size)):
                    check_cancel(cancel)
                    if streamed is not None:
                        streamed.need(int(keep_from[k]), int(batch_last[k]))
                    crops = crop(img_t, i, i + self.batch_size)
                    crops = crops.to(dtype).contiguous(memory_format=fmt)
                    logits = model(crops).float() / self.temperature
                    out[i : i + len(crops)] = torch.softmax(logits, 1).cpu().numpy()
                    if progress:
                        progress(min(i + self.batch_size, n), n)
        finally:
            img_t = crops = None
            if streamed is not None:
                streamed.close()
        return out

    def classify(self, image, boxes, pixel_size, material="MoTe2", **kw) -> tuple[np.ndarray, np.ndarray]:
        """``(class ids (N,), confidence (N,))`` from :meth:`predict`."""
        p = self.predict(image, boxes, pixel_size, material, **kw)
        return p.argmax(1).astype(np.int64), p.max(1) if len(p) else np.zeros(0, np.float32)


def _model_from_card(sd: dict, card: dict, path: Path):
    try:
        model = build_classifier(
            in_channels=int(card["in_channels"]),
            input_size=int(card["input_size"]),
            num_classes=int(card.get("num_classes", N_CLASSES)),
            stem=str(card.get("stem", "standard")),
            arch=str(card.get("model", "resnet18")),
            small_layers=card.get("small_layers"),
        )
        model.load_state_dict(sd)
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise WeightsError(f"weights file {path} does not hold a CNN-2 classifier ({exc})") from exc
    return model


def classifier_weights(path: str | Path | None = None) -> Path:
    """The weights file :func:`load_classifier` reads for ``path``: None the shipped
    default, a name of :data:`SHIPPED_CLASSIFIERS` (unless a file of that name exists)
    the shipped file, else the path itself."""
    if path is None:
        return default_weights("classifier")
    if str(path) in SHIPPED_CLASSIFIERS and not Path(path).exists():
        return default_weights(SHIPPED_CLASSIFIERS[str(path)])
    return Path(path)


def load_classifier(path: str | Path | None = None, device: str = "auto", batch_size: int = 512) -> CellClassifier:
    """Load a classifier written by ``tmd-defects train-classifier``.

    Parameters
    ----------
    path : str or Path, optional
        Weights file; None: the shipped default, the ResNet-18
        (``runtime.default_weights("classifier")``); ``"small"``: the shipped distilled
        small network (``classifier_small.pt``, ~10x faster per cell; its evaluation is in
        its card).
    device : "auto", "cpu" or "cuda"
        See :func:`~.runtime.resolve_device`.

    Raises
    ------
    WeightsError
        If the file is missing, corrupt or not a classifier (the message names it).
    """
    p = classifier_weights(path)
    sd, card = load_weights(p)
    model = _model_from_card(sd, card, p)
    return CellClassifier(model, card, resolve_device(device), batch_size=batch_size)


# --------------------------------------------------------------------------- crop sets
@dataclass
class CropSet:
    """Labelled crops for training or evaluation.

    ``x`` (N, C, S, S) float16 normalised crops; ``y`` (N,) int64 class ids;
    ``meta`` a JSON-able dict (how they were made).
    """

    x: np.ndarray
    y: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(len(self.y))

    @property
    def counts(self) -> np.ndarray:
        return np.bincount(self.y, minlength=N_CLASSES)

    def save(self, path: str | Path) -> Path:
        """Write an ``.npz`` file (atomic)."""
        from .io import atomic_write

        path = Path(path)
        with atomic_write(path) as fh:
            np.savez(fh, x=self.x, y=self.y, meta=np.array(json.dumps(self.meta)))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "CropSet":
        """Read a file written by :meth:`save`; ValueError naming the file otherwise."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no crop file at {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["x"], z["y"].astype(np.int64), json.loads(str(z["meta"])))
        except Exception as exc:
            raise ValueError(f"{path} is not a crop file written by CropSet.save ({exc})") from exc

    @classmethod
    def concat(cls, sets: Sequence["CropSet"]) -> "CropSet":
        sets = [s for s in sets if len(s)]
        if not sets:
            raise ValueError("no crops to combine")
        shapes = {s.x.shape[1:] for s in sets}
        if len(shapes) != 1:
            raise ValueError(f"crop sets have different crop shapes: {sorted(shapes)}")
        return cls(np.concatenate([s.x for s in sets]), np.concatenate([s.y for s in sets]),
                   {"parts": [s.meta for s in sets]})


def _augment_image(img: np.ndarray, pixel_size: float, rng: np.random.Generator) -> np.ndarray:
    """Random gain, offset, gamma and blur of a whole image (before normalisation)."""
    out = img.astype(np.float32)
    if rng.random() < 0.25:
        out = ndi.gaussian_filter(out, rng.uniform(0.05, 0.3) / pixel_size)
    if rng.random() < 0.3:
        lo, hi = np.percentile(out, [0.5, 99.5])
        t = np.clip((out - lo) / max(hi - lo, 1e-6), 0.0, None)
        out = lo + (hi - lo) * t ** rng.uniform(0.75, 1.33)
    return (out * math.exp(rng.uniform(math.log(0.3), math.log(3.0))) + rng.uniform(-80, 80)).astype(np.float32)


def _variants(variants: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    for s, c in variants:
        _check_variant(int(s), int(c))
        out.append((int(s), int(c)))
    if not out:
        raise ValueError("give at least one (input size, channels) variant")
    return out


def _cells_to_sets(store, norm, boxes, labels, variants, jitter, rng):
    jb = jitter_boxes(boxes, jitter, rng)
    for v in variants:
        store[v][0].append(extract_crops(norm, jb, v[0], v[1]).astype(np.float16))
    store["y"].append(labels.astype(np.int64))


def _finish_sets(store, variants, meta) -> dict[tuple[int, int], CropSet]:
    y = np.concatenate(store["y"]) if store["y"] else np.zeros(0, np.int64)
    out = {}
    for v in variants:
        x = np.concatenate(store[v][0]) if store[v][0] else np.zeros((0, v[1], v[0], v[0]), np.float16)
        out[v] = CropSet(x, y, dict(meta, input_size=v[0], in_channels=v[1]))
    return out


def simulate_crops(
    n_per_class: int,
    variants: Iterable[tuple[int, int]] = ((DEFAULT_INPUT_SIZE, DEFAULT_CHANNELS),),
    seed: int = 0,
    presets: Sequence[str] = ("paper", "realistic"),
    pixel_size: tuple[float, float] = (0.03, 0.18),
    defect_fraction: tuple[float, float] = (0.4, 0.6),
    field_a: tuple[float, float] = (35.0, 60.0),
    noise: tuple[tuple[float, float] | None, float] | None = None,
    augment: bool = True,
    jitter: float = 0.07,
    material: str = "MoTe2",
    max_images: int = 100000,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
    match_to: str | None = None,
) -> dict[tuple[int, int], CropSet]:
    """Balanced labelled crops from freshly simulated full images.

    Each image draws a preset from ``presets`` (``datasets.sample_conditions``), a
    log-uniform pixel size in ``pixel_size`` (Å/px), a field of view in ``field_a`` (Å)
    and a defect fraction; it is augmented (gain, offset, gamma, blur: ``augment``),
    normalised, and its ground-truth cells are cropped with edge jitter ``jitter``
    (fraction of the box size). Cells are kept until every class has ``n_per_class``.

    Parameters
    ----------
    variants : iterable of (input size S, channels)
        Crops of every variant are made from the same cells and jittered boxes.
    noise : ((lambda_low, lambda_high) or None, mu), optional
        Replace the preset's noise with Poisson lambda uniform in the range (None: no
        shot noise) and Gaussian std mu (grey levels); optics are the paper's.
    match_to : str, optional
        Show ``material`` images as this material, as :func:`~.pipeline.analyze` does
        for a classifier trained on another material (:func:`~.contrast.match_contrast`):
        crops of the contrast-matched image, for training such a classifier.

    Returns
    -------
    dict mapping each variant to a :class:`CropSet` (same labels, same order).
    """
    from .datasets import PRESETS, sample_conditions
    from .simulation import Noise, simulate

    variants = _variants(variants)
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    for p in presets:
        if p not in PRESETS:
            raise ValueError(f"unknown preset {p!r}; choose from {', '.join(PRESETS)}")
    mat = get_material(material)
    rng = np.random.default_rng(seed)
    need = np.full(N_CLASSES, int(n_per_class))
    store: dict[Any, Any] = {v: ([],) for v in variants}
    store["y"] = []
    n_img = 0
    total = int(need.sum())
    while need.sum() > 0 and n_img < max_images:
        check_cancel(cancel)
        preset = str(presets[rng.integers(len(presets))])
        ps = float(math.exp(rng.uniform(math.log(pixel_size[0]), math.log(pixel_size[1]))))
        side = int(np.clip(round(rng.uniform(*field_a) / ps), 96, 2048))
        shape = (side, side)
        kw = sample_conditions(preset, rng, shape, pixel_size=ps, defect_fraction=defect_fraction)
        if noise is not None:
            lam, mu = noise
            from .simulation import Optics

            kw["optics"] = Optics()
            kw["noise"] = Noise(poisson_lambda=None if lam is None else float(rng.uniform(*lam)),
                                gaussian_mu=float(mu))
            kw.pop("distortion", None)
        a_px = mat.a / ps
        origin = ((side - 1) / 2.0 + rng.uniform(0, a_px), (side - 1) / 2.0 + rng.uniform(0, a_px))
        sim = simulate(mat, shape, origin=origin, seed=int(rng.integers(2**31)), **kw)
        img = _augment_image(sim.image, ps, rng) if augment else sim.image
        if match_to is not None and get_material(match_to).name != mat.name:
            from .contrast import match_contrast, model_positions
            from .lattice import find_sites

            sites = find_sites(img, a_px, mat.name)
            matched = match_contrast(img, *model_positions(sites), sites.a_px, mat.name, match_to)
            if matched is None:  # no lattice found: count the image, take no crops
                n_img += 1
                continue
            ref = get_material(match_to)
            norm = normalize_image(matched.image, ps * ref.a / mat.a, ref.name)
        else:
            norm = normalize_image(img, ps, mat.name)
        labels = sim.truth.cell_label
        keep = []
        for c in range(N_CLASSES):
            idx = np.flatnonzero(labels == c)
            if need[c] > 0 and len(idx):
                take = rng.permutation(idx)[: need[c]]
                keep.append(take)
                need[c] -= len(take)
        n_img += 1
        if keep:
            sel = np.sort(np.concatenate(keep))
            _cells_to_sets(store, norm, sim.truth.cell_box[sel], labels[sel], variants, jitter, rng)
        if progress:
            progress(total - int(need.sum()), total)
    meta = dict(source="simulate_crops", n_per_class=int(n_per_class), seed=int(seed), presets=list(presets),
                pixel_size=list(pixel_size), defect_fraction=list(defect_fraction), noise=noise,
                augment=bool(augment), jitter=float(jitter), material=mat.name, n_images=n_img,
                matched_to=match_to)
    return _finish_sets(store, variants, meta)


def crops_from_dataset(
    data_dir: str | Path,
    variants: Iterable[tuple[int, int]] = ((DEFAULT_INPUT_SIZE, DEFAULT_CHANNELS),),
    jitter: float = 0.0,
    repeats: int = 1,
    augment: bool = False,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
) -> dict[tuple[int, int], CropSet]:
    """Crops of every ground-truth cell of a simulated dataset (``tmd-defects simulate``).

    ``repeats`` passes over the data, each with new box jitter (and image augmentation if
    ``augment``). Returns a dict variant -> :class:`CropSet`.
    """
    from .datasets import load_dataset

    variants = _variants(variants)
    items = load_dataset(data_dir)
    rng = np.random.default_rng(seed)
    store: dict[Any, Any] = {v: ([],) for v in variants}
    store["y"] = []
    total = len(items) * max(1, repeats)
    done = 0
    for _ in range(max(1, repeats)):
        for item in items:
            check_cancel(cancel)
            image, truth = item.load()
            img = _augment_image(image, truth.pixel_size, rng) if augment else image
            norm = normalize_image(img, truth.pixel_size, truth.material)
            if truth.n_cells:
                _cells_to_sets(store, norm, truth.cell_box, truth.cell_label, variants, jitter, rng)
            done += 1
            if progress:
                progress(done, total)
    meta = dict(source="crops_from_dataset", data=str(data_dir), jitter=float(jitter), repeats=int(repeats),
                augment=bool(augment), seed=int(seed))
    return _finish_sets(store, variants, meta)


def crops_from_corrections(
    corrections_dir: str | Path,
    variants: Iterable[tuple[int, int]] = ((DEFAULT_INPUT_SIZE, DEFAULT_CHANNELS),),
    material: str = "MoTe2",
    jitter: float = 0.0,
    repeats: int = 1,
    seed: int = 0,
) -> dict[tuple[int, int], CropSet]:
    """Crops from a corrections folder (layouts in the module docstring).

    Raises
    ------
    FileNotFoundError, ValueError
        Missing index or files, unknown columns or labels (messages name the file/row).
    """
    from .io import read_image
    from .materials import class_index

    variants = _variants(variants)
    root = Path(corrections_dir)
    index = root / "index.csv"
    if not index.exists():
        raise FileNotFoundError(f"no corrections index at {index} (see classification module docs)")
    with index.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{index} has no rows")
    cols = set(rows[0])
    rng = np.random.default_rng(seed)
    store: dict[Any, Any] = {v: ([],) for v in variants}
    store["y"] = []

    def label_of(r, k):
        try:
            return class_index(r["label"], material)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{index}, row {k + 2}: {exc}") from exc

    if {"image", "x_min", "y_min", "x_max", "y_max", "label"} <= cols:
        by_image: dict[str, list[int]] = {}
        for k, r in enumerate(rows):
            by_image.setdefault(r["image"], []).append(k)
        for name, ks in by_image.items():
            image, meta = read_image(root / name)
            ps = rows[ks[0]].get("pixel_size") or meta.get("pixel_size_A")
            if not ps:
                raise ValueError(f"{index}: no pixel_size for {name} (add a pixel_size column)")
            try:
                boxes = np.array([[float(rows[k][c]) for c in ("x_min", "y_min", "x_max", "y_max")] for k in ks])
            except ValueError as exc:
                raise ValueError(f"{index}: bad box coordinates for {name} ({exc})") from exc
            labels = np.array([label_of(rows[k], k) for k in ks], np.int64)
            norm = normalize_image(image, float(ps), material)
            for _ in range(max(1, repeats)):
                _cells_to_sets(store, norm, boxes, labels, variants, jitter, rng)
    elif {"crop", "label"} <= cols:
        for k, r in enumerate(rows):
            p = root / "crops" / r["crop"]
            if not p.exists():
                raise FileNotFoundError(f"{index}, row {k + 2}: no crop file {p}")
            arr = np.load(p, allow_pickle=False)
            if arr.ndim != 2 or min(arr.shape) < 2:
                raise ValueError(f"{p}: a crop must be a 2-D array, got shape {arr.shape}")
            h, w = arr.shape
            box = np.array([[-0.5, -0.5, w - 0.5, h - 0.5]])
            lab = np.array([label_of(r, k)], np.int64)
            for _ in range(max(1, repeats)):
                _cells_to_sets(store, arr.astype(np.float32), box, lab, variants, 0.0, rng)
    else:
        raise ValueError(
            f"{index}: expected columns image,x_min,y_min,x_max,y_max,label[,pixel_size] "
            f"or crop,label; got {', '.join(sorted(cols))}"
        )
    return _finish_sets(store, variants, dict(source="corrections", dir=str(root), repeats=int(repeats)))


# --------------------------------------------------------------------------- training
def _augment_batch(x, gen):
    """Per-crop gain/offset/noise jitter on a float batch (robustness to normalisation)."""
    import torch

    n = x.shape[0]
    gain = torch.empty(n, 1, 1, 1).uniform_(0.85, 1.15, generator=gen)
    off = torch.randn(n, 1, 1, 1, generator=gen) * 0.04
    sig = torch.empty(n, 1, 1, 1).uniform_(0.0, 0.05, generator=gen)
    return x * gain + off + torch.randn(x.shape, generator=gen) * sig


def train_classifier(
    train: CropSet,
    val: CropSet | None = None,
    *,
    stem: str = "standard",
    arch: str = "resnet18",
    teacher=None,
    distill_temperature: float = 4.0,
    distill_alpha: float = 0.7,
    steps: int = 2000,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 5e-4,
    seed: int = 0,
    init_state: dict | None = None,
    augment: bool = True,
    eval_every: int = 250,
    select_best: bool = False,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 250,
    resume: bool = False,
    time_limit_s: float | None = None,
    log: Callable[[str], None] | None = print,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
):
    """Train a CNN-2 on crops with class-balanced sampling (AdamW, one-cycle schedule).

    Parameters
    ----------
    train, val : CropSet
        Crops ``(N, C, S, S)``; C and S set the model's input.
    arch, stem : str
        Network (:func:`build_classifier`).
    teacher : torch.nn.Module, optional
        A trained classifier (crops -> logits, eval mode) to distil: its logits on the
        training crops (without the batch augmentation) are computed once, and the loss is
        ``alpha * T^2 * KL(teacher || student at temperature T) + (1 - alpha) *
        cross-entropy`` with ``T = distill_temperature``, ``alpha = distill_alpha``.
    steps : int
        Optimiser steps (one batch each).
    init_state : dict, optional
        State dict to start from (fine-tuning).
    eval_every : int
        Steps between validation passes (on at most 3000 val crops).
    select_best : bool
        Return the state with the best validation accuracy instead of the last one.
    checkpoint : path, optional
        Written every ``checkpoint_every`` steps (model, optimiser, step, history);
        with ``resume`` an existing checkpoint is continued (with a different ``steps``,
        on the one-cycle schedule of the new step count).
    time_limit_s : float, optional
        Stop early (keeping the best state) after this many seconds.

    Returns
    -------
    model : torch.nn.Module (eval mode, CPU, float32), history : dict
    """
    import torch
    import torch.nn.functional as F

    if len(train) == 0:
        raise ValueError("the training set is empty")
    if train.x.ndim != 4:
        raise ValueError(f"training crops must be (N, C, S, S), got {train.x.shape}")
    if steps < 1 or batch_size < 1:
        raise ValueError("steps and batch_size must be >= 1")
    if teacher is not None and not (distill_temperature > 0 and 0.0 <= distill_alpha <= 1.0):
        raise ValueError("distill_temperature must be > 0 and distill_alpha in [0, 1]")
    channels, size = int(train.x.shape[1]), int(train.x.shape[2])
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_classifier(channels, size, N_CLASSES, stem, arch)
    if init_state is not None:
        model.load_state_dict(init_state)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15,
                                                div_factor=10.0, final_div_factor=100.0)
    x_all = torch.from_numpy(np.ascontiguousarray(train.x))
    y_all = torch.from_numpy(train.y.astype(np.int64))
    t_all = None
    if teacher is not None:
        t0 = time.perf_counter()
        with torch.inference_mode():
            t_all = torch.cat([teacher(x_all[i : i + 512].float().contiguous()).float()
                               for i in range(0, len(x_all), 512)])
        if log:
            agree = float((t_all.argmax(1) == y_all).float().mean())
            log(f"teacher logits on {len(t_all)} crops in {time.perf_counter() - t0:.0f} s "
                f"(teacher agrees with the labels on {100 * agree:.2f}%)")
    counts = np.bincount(train.y, minlength=N_CLASSES).astype(float)
    w = torch.from_numpy(np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)[train.y])
    hist: dict[str, Any] = {"step": [], "loss": [], "val_step": [], "val_acc": [], "best_val_acc": None,
                            "best_step": None, "seconds": 0.0}
    start = 0
    best_state, best_acc = None, -1.0
    ck = Path(checkpoint) if checkpoint else None
    if ck is not None and resume and ck.exists():
        state = torch.load(ck, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        start, hist = int(state["step"]), state["history"]
        if int(state["sched"].get("total_steps", steps)) == steps:
            sched.load_state_dict(state["sched"])
        else:  # a new step count: the one-cycle schedule of ``steps``, advanced to ``start``
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for _ in range(min(start, steps - 1)):
                    sched.step()
        best_state, best_acc = state.get("best_state"), float(state.get("best_acc", -1.0))
        if log:
            log(f"resumed from {ck} at step {start}")
    if val is not None and len(val):
        vsel = np.random.default_rng(seed).permutation(len(val))[:3000]
        xv = torch.from_numpy(np.ascontiguousarray(val.x[vsel]))
        yv = val.y[vsel]
    else:
        xv = yv = None

    def save_ck(step):
        if ck is None:
            return
        from .io import atomic_write

        with atomic_write(ck) as fh:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "gen": gen.get_state(), "step": step, "history": hist, "best_state": best_state,
                        "best_acc": best_acc}, fh)

    t0 = time.perf_counter() - float(hist.get("seconds", 0.0))
    run_loss, n_loss = 0.0, 0
    step = start
    for step in range(start + 1, steps + 1):
        check_cancel(cancel)
        model.train()
        idx = torch.multinomial(w, batch_size, replacement=True, generator=gen)
        xb = x_all[idx].float()
        if augment:
            xb = _augment_batch(xb, gen)
        xb = xb.contiguous(memory_format=torch.channels_last)
        logits = model(xb)
        loss = F.cross_entropy(logits, y_all[idx])
        if t_all is not None:
            temp = distill_temperature
            kd = F.kl_div(F.log_softmax(logits / temp, 1), F.log_softmax(t_all[idx] / temp, 1),
                          reduction="batchmean", log_target=True)
            loss = distill_alpha * temp * temp * kd + (1.0 - distill_alpha) * loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        run_loss += float(loss.detach())
        n_loss += 1
        last = step == steps
        elapsed = time.perf_counter() - t0
        out_of_time = time_limit_s is not None and elapsed > time_limit_s
        if step % eval_every == 0 or last or out_of_time:
            hist["step"].append(step)
            hist["loss"].append(run_loss / max(n_loss, 1))
            msg = f"step {step}/{steps} loss {run_loss / max(n_loss, 1):.4f} lr {sched.get_last_lr()[0]:.2e} {elapsed:.0f} s"
            run_loss, n_loss = 0.0, 0
            if xv is not None:
                acc = float((predict_crops(model, xv, 512).argmax(1) == yv).mean())
                hist["val_step"].append(step)
                hist["val_acc"].append(acc)
                msg += f" val_acc {acc:.4f}"
                if acc >= best_acc:
                    best_acc = acc
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    hist["best_val_acc"], hist["best_step"] = acc, step
            if log:
                log(msg)
        hist["seconds"] = time.perf_counter() - t0
        if ck is not None and (step % checkpoint_every == 0 or last):
            save_ck(step)
        if progress:
            progress(step, steps)
        if out_of_time:
            if log:
                log(f"time limit reached at step {step}")
            break
    hist["steps_done"] = step
    if select_best and best_state is not None:
        model.load_state_dict(best_state)
    model = model.to(memory_format=torch.contiguous_format).eval()
    return model, hist


def make_card(model_channels: int, input_size: int, stem: str, material: str = "MoTe2",
              training: dict | None = None, scores: dict | None = None, arch: str = "resnet18") -> dict[str, Any]:
    """The JSON card stored with classifier weights (``model``: the ``arch``)."""
    extra: dict[str, Any] = {}
    if arch == "small":
        extra["small_layers"] = [list(v) for v in SMALL_LAYERS]
        extra["layers"] = ("small_layers: (out channels, kernel, stride) of each convolution, each with "
                           "batch norm and ReLU; then global average pooling and a linear layer")
    return {
        "model": arch,
        **extra,
        "task": "unit-cell defect classification (CNN-2)",
        "in_channels": int(model_channels),
        "input": "2 channels: left (X column) and right (M column) half of the cell box"
        if model_channels == 2 else "1 channel: the whole cell box",
        "input_size": int(input_size),
        "stem": stem,
        "num_classes": N_CLASSES,
        "class_names": list(get_material(material).class_names),
        "material": get_material(material).name,
        "normalization": "normalize_image: (image - hollow-site background) / 99th percentile, per image",
        "training": training or {},
        "scores": scores or {},
    }


# --------------------------------------------------------------------------- evaluation
def fit_temperature(probabilities: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.2, 5.0)) -> float:
    """Softmax temperature ``T`` that minimises the negative log-likelihood of the true
    ``labels`` under probabilities rescaled as ``p^(1/T)`` (temperature scaling of the
    logits; ``probabilities`` (N, C) are the softmax at ``T = 1``)."""
    from scipy.optimize import minimize_scalar

    p = np.clip(np.asarray(probabilities, float), 1e-12, 1.0)
    y = np.asarray(labels, int)
    if len(y) == 0:
        raise ValueError("no cells to fit the temperature on")
    logp = np.log(p)

    def nll(t):
        z = logp / t
        z -= z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]))

    return float(minimize_scalar(nll, bounds=bounds, method="bounded").x)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = N_CLASSES) -> np.ndarray:
    """``(n, n)`` counts; rows = true class, columns = predicted class."""
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.size} vs {p.size}")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def accuracy_summary(cm: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Overall accuracy, per-class recall ('accuracy per class', as in the paper) and counts."""
    cm = np.asarray(cm)
    n = int(cm.sum())
    per = {name: (float(cm[i, i] / cm[i].sum()) if cm[i].sum() else float("nan"))
           for i, name in enumerate(class_names)}
    return {
        "overall": float(np.trace(cm) / n) if n else float("nan"),
        "per_class": per,
        "min_class": float(np.nanmin(list(per.values()))) if n else float("nan"),
        "n": n,
        "n_per_class": {name: int(cm[i].sum()) for i, name in enumerate(class_names)},
        "confusion": cm.astype(int).tolist(),
    }


def evaluate_dataset(
    classifier: CellClassifier,
    data_dir: str | Path,
    jitter: float = 0.0,
    seed: int = 0,
    max_images: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
) -> dict[str, Any]:
    """Classify every ground-truth cell of a simulated dataset with ``classifier.predict``.

    ``jitter`` moves box edges (fraction of the box size) like detector boxes.
    Returns :func:`accuracy_summary` plus ``seconds``, ``n_images`` and ``per_image``
    (cells, errors, pixel size and noise of each image).
    """
    from .datasets import load_dataset

    items = load_dataset(data_dir)[:max_images]
    rng = np.random.default_rng(seed)
    ts, ps, per_image = [], [], []
    t0 = time.perf_counter()
    for k, item in enumerate(items):
        image, truth = item.load()
        if truth.n_cells:
            boxes = jitter_boxes(truth.cell_box, jitter, rng)
            p = classifier.predict(image, boxes, truth.pixel_size, truth.material, cancel=cancel)
            ts.append(truth.cell_label)
            ps.append(p.argmax(1))
            noise = truth.params.get("noise", {})
            per_image.append({
                "image": item.image_path.name, "cells": truth.n_cells,
                "errors": int((ps[-1] != truth.cell_label).sum()), "pixel_size": truth.pixel_size,
                "poisson_lambda": noise.get("poisson_lambda"), "gaussian_mu": noise.get("gaussian_mu"),
            })
        if progress:
            progress(k + 1, len(items))
    t = np.concatenate(ts) if ts else np.zeros(0, np.int64)
    p = np.concatenate(ps) if ps else np.zeros(0, np.int64)
    out = accuracy_summary(confusion_matrix(t, p), classifier.class_names)
    out.update(seconds=time.perf_counter() - t0, n_images=len(items), jitter=float(jitter), per_image=per_image)
    return out


def save_confusion_png(cm: np.ndarray, class_names: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix with counts, as a PNG (matplotlib, no display)."""
    from matplotlib.figure import Figure

    cm = np.asarray(cm, dtype=float)
    rows = cm.sum(1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(class_names)
    fig = Figure(figsize=(1.0 + 0.9 * n, 0.8 + 0.8 * n), dpi=100)
    ax = fig.add_subplot(111)
    ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(n):
        for j in range(n):
            if cm[i, j] or i == j:
                ax.text(j, i, f"{100 * frac[i, j]:.1f}%\n{int(cm[i, j])}", ha="center", va="center",
                        fontsize=7, color="white" if frac[i, j] > 0.6 else "black")
    ax.set_xticks(range(n), class_names, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def save_classifier(path: str | Path, model, card: dict[str, Any]) -> Path:
    """Write weights (float16) and card with :func:`~.runtime.save_weights`."""
    return save_weights(path, model.state_dict(), card, half=True)
