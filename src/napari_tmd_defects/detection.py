"""CNN-1: the hexagon detector (Faster R-CNN with a MobileNetV2 backbone).

The network always sees the image at one *canonical sampling*: rescaled so that the
lattice constant is :data:`A_PX` px (MoTe2, a = 3.52 Å, at 0.12 Å/px: the paper's
2048² frame at 0.03 Å/px shrunk to its 512² network input). Hexagon boxes are then
about 42 × 51 px and unit cells 27 × 25 px. Before the network each image is
normalised by robust percentiles, so dose, background and 8-bit exports do not matter.

Two configurations share the torchvision parts (``AnchorGenerator``,
``MultiScaleRoIAlign``, ``TwoMLPHead``, ``FastRCNNPredictor``, ``FasterRCNN``) and the
paper's anchors (sizes 8, 16, 32, 64, 128 px; aspect ratios 0.5, 1, 2), up to 800
detections per 512² tile, one input channel:

``slim`` (shipped)
    MobileNetV2 truncated after its 14th block (96 channels) with the stride-2 of
    block 7 removed, so the feature map has stride 8 (hexagons are only ~45 px wide),
    a 1 × 1 convolution to 64 channels, 7 × 7 RoIAlign and a 256-d two-layer box head.
``paper``
    The full MobileNetV2 feature extractor (1280 channels, stride 32) with torchvision's
    default 1024-d two-layer box head (~64 M parameters in the head).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .geometry import is_exact_counts

__all__ = [
    "ALPHAS",
    "A_PX",
    "BETAS",
    "CONFIGS",
    "CanonicalRows",
    "HexagonDetector",
    "build_detector",
    "canonical_scale",
    "count_parameters",
    "evaluate_detector",
    "load_detector",
    "normalize_image",
    "prepare_image",
    "random_training_image",
    "train_detector",
    "write_detection_report",
]

#: Canonical lattice constant seen by the network, px (3.52 Å / 0.12 Å/px).
A_PX = 29.33
#: Paper's anchor sizes (px, at the canonical sampling) and aspect ratios.
ANCHOR_SIZES = (8, 16, 32, 64, 128)
ASPECT_RATIOS = (0.5, 1.0, 2.0)
#: Paper's maximum number of detections per (512²) input.
MAX_DETECTIONS = 800
#: Normalised grey levels: robust 1st percentile -> 0, 99.5th percentile -> 1.
IMAGE_MEAN = 0.35
IMAGE_STD = 0.3

#: Builder settings of the two configurations (see the module docstring).
CONFIGS: dict[str, dict[str, Any]] = {
    "slim": {"blocks": 14, "stride": 8, "width_mult": 1.0, "neck": 64, "head": 256, "roi": 7},
    "paper": {"blocks": 19, "stride": 32, "width_mult": 1.0, "neck": None, "head": 1024, "roi": 7},
}


def _mobilenet_trunk(blocks: int, stride: int, width_mult: float, in_channels: int):
    """The first ``blocks`` MobileNetV2 feature blocks with total stride ``stride``.

    Returns ``(module, out_channels)``. Stride-2 depthwise convolutions beyond the
    requested stride are set to stride 1 (the receptive field still grows).
    """
    import torch.nn as nn
    from torchvision.models import mobilenet_v2

    feats = mobilenet_v2(weights=None, width_mult=width_mult).features[:blocks]
    first = feats[0][0]
    feats[0][0] = nn.Conv2d(
        in_channels, first.out_channels, first.kernel_size, first.stride, first.padding, bias=False
    )
    total = 1
    for m in feats.modules():
        if isinstance(m, nn.Conv2d) and m.stride == (2, 2):
            if total * 2 > stride:
                m.stride = (1, 1)
            else:
                total *= 2
    if total != stride:
        raise ValueError(f"{blocks} MobileNetV2 blocks cannot reach stride {stride} (max {total})")
    out_ch = [m for m in feats.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
    return feats, out_ch


def _no_resize_transform():
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    class _NoResize(GeneralizedRCNNTransform):
        """Normalise and batch (pad to a multiple of 32) without resizing."""

        def resize(self, image, target=None):
            return image, target

    return _NoResize(min_size=1, max_size=100_000, image_mean=[IMAGE_MEAN], image_std=[IMAGE_STD])


def build_detector(config: str | dict = "slim", target: str = "hexagon", **overrides):
    """Build the Faster R-CNN detector (untrained, from scratch).

    Parameters
    ----------
    config : {"slim", "paper"} or dict
        Named configuration (:data:`CONFIGS`) or a full settings dict.
    target : {"hexagon", "cell"}
        Object class the detector is trained on (only recorded; one foreground class).
    **overrides
        Replace single settings of the configuration (``blocks``, ``stride``,
        ``width_mult``, ``neck``, ``head``, ``roi``).

    Returns
    -------
    torchvision.models.detection.FasterRCNN
        Takes lists of ``(1, H, W)`` float tensors in normalised grey levels (see
        :func:`normalize_image`); does not resize them.
    """
    import torch.nn as nn
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    if isinstance(config, str):
        if config not in CONFIGS:
            raise ValueError(f"unknown detector config {config!r}; choose one of {', '.join(CONFIGS)}")
        cfg = dict(CONFIGS[config])
    else:
        cfg = dict(config)
    unknown = set(overrides) - set(CONFIGS["slim"])
    if unknown:
        raise ValueError(f"unknown detector settings: {', '.join(sorted(unknown))}")
    cfg.update(overrides)
    if target not in ("hexagon", "cell"):
        raise ValueError(f"target must be 'hexagon' or 'cell', got {target!r}")

    trunk, ch = _mobilenet_trunk(int(cfg["blocks"]), int(cfg["stride"]), float(cfg["width_mult"]), 1)
    if cfg.get("neck"):
        neck = int(cfg["neck"])
        backbone = nn.Sequential(
            trunk, nn.Conv2d(ch, neck, 1, bias=False), nn.BatchNorm2d(neck), nn.ReLU(inplace=True)
        )
        ch = neck
    else:
        backbone = trunk
    backbone.out_channels = ch

    anchors = AnchorGenerator(sizes=(ANCHOR_SIZES,), aspect_ratios=(ASPECT_RATIOS,))
    roi = int(cfg["roi"])
    pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=roi, sampling_ratio=2)
    rep = int(cfg["head"])
    model = FasterRCNN(
        backbone,
        num_classes=None,
        # never resize: images arrive at the canonical sampling
        min_size=1,
        max_size=100_000,
        image_mean=[IMAGE_MEAN],
        image_std=[IMAGE_STD],
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=2000,
        rpn_post_nms_top_n_train=1000,
        rpn_pre_nms_top_n_test=2000,
        rpn_post_nms_top_n_test=1200,
        box_roi_pool=pool,
        box_head=TwoMLPHead(ch * roi * roi, rep),
        box_predictor=FastRCNNPredictor(rep, 2),
        box_detections_per_img=MAX_DETECTIONS,
        box_score_thresh=0.05,
        box_nms_thresh=0.4,
        box_batch_size_per_image=256,
    )
    # images arrive at the canonical sampling: GeneralizedRCNNTransform must not resize them
    model.transform = _no_resize_transform()
    model.tmd_config = {**cfg, "target": target}
    return model


def count_parameters(model) -> dict[str, int]:
    """Parameter counts: total, backbone, rpn, box head (+ predictor)."""
    def n(m):
        return sum(p.numel() for p in m.parameters())

    return {
        "total": n(model),
        "backbone": n(model.backbone),
        "rpn": n(model.rpn),
        "box_head": n(model.roi_heads.box_head) + n(model.roi_heads.box_predictor),
    }


# --------------------------------------------------------------------------- preprocessing
#: Smallest image side accepted by :meth:`HexagonDetector.detect`, px.
MIN_IMAGE_PX = 64
#: Largest tile side at the canonical sampling, px (the backbone is fastest per pixel up to
#: ~512² tiles on CPUs, and the RPN's proposal budget is set per 512²).
TILE_PX = 512
#: Least overlap of neighbouring tiles, px: a box is kept by the tile whose core (the tile
#: less half the overlap) holds its centre, so a kept hexagon has >= 32 px (> 1 a) of context.
OVERLAP_PX = 64
#: Tiles are padded to a multiple of this (px; the backbone's stride).
PAD_TO = 8
#: Proposals centred up to this far (px) outside a tile's core still go through the box head.
CORE_SLACK_PX = 16.0
#: Largest canonical image accepted (pixels), about 8192².
MAX_CANONICAL_PIXELS = 8192 * 8192


def canonical_scale(pixel_size: float, material: str = "MoTe2", a_px: float = A_PX) -> float:
    """Factor that brings an image at ``pixel_size`` Å/px to the canonical sampling.

    ``a_px`` is the canonical lattice constant in px; the factor is
    ``a_px / (material.a / pixel_size)``.
    """
    from .materials import get_material

    ps = float(pixel_size)
    if not (math.isfinite(ps) and ps > 0):
        raise ValueError(f"pixel_size must be a positive number of Å/px, got {pixel_size!r}")
    return float(a_px) / (get_material(material).a / ps)


#: Canonical images larger than this (pixels) are made in strips of
#: :data:`RESAMPLE_STRIP_ROWS` output rows when shrinking (:func:`_resample`), and the
#: detector reads them band by band without the whole (:class:`CanonicalRows`).
RESAMPLE_STRIP_FROM = 4096 * 4096
#: Output rows per strip of the strip-wise resampling (even: the normalisation's
#: every-other-row sample lines up with the strips).
RESAMPLE_STRIP_ROWS = 256


def _aa_taps(n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Torch's own weights of the antialiased bilinear shrinking ``n`` -> ``m`` px along one
    axis: ``(m, K)`` input indices (ascending) and float32 weights (0 where unused).

    Read off ``F.interpolate`` itself (a probe with one 1 per input index, ``K`` indices
    apart), so they are the weights the whole-image call applies.
    """
    import torch
    import torch.nn.functional as F

    k = 2 * int(math.ceil(n / m)) + 3  # > the widest window (2 ceil(support) + 1)
    probe = np.zeros((n, k), np.float32)
    probe[np.arange(n), np.arange(n) % k] = 1.0
    w = F.interpolate(torch.from_numpy(probe)[None, None], size=(m, k), mode="bilinear", align_corners=False,
                      antialias=True)[0, 0].numpy()
    base = np.floor((np.arange(m) + 0.5) * n / m).astype(np.int64) - k // 2
    idx = base[:, None] + (np.arange(k)[None, :] - base[:, None]) % k  # input index of each probe column
    w = np.where((idx >= 0) & (idx < n), w, np.float32(0.0))
    order = np.argsort(idx, axis=1, kind="stable")
    idx, w = np.take_along_axis(idx, order, 1), np.take_along_axis(w, order, 1)
    used = w != 0
    first = used.argmax(axis=1)
    last = k - 1 - used[:, ::-1].argmax(axis=1)
    width = int(max(1, (last - first).max() + 1))
    cols = first[:, None] + np.arange(width)[None, :]
    inside = cols < k
    cols = np.minimum(cols, k - 1)
    idx = np.clip(np.take_along_axis(idx, cols, 1), 0, n - 1)
    w = np.where(inside, np.take_along_axis(w, cols, 1), np.float32(0.0)).astype(np.float32)
    return idx, w


def _resample_rows(image: np.ndarray, taps: tuple[np.ndarray, np.ndarray], nw: int, r0: int, r1: int,
                   out: np.ndarray | None = None, step: int = 1) -> np.ndarray:
    """Rows ``r0:r1:step`` (float32) of ``image`` shrunk (antialiased bilinear) to ``nw``
    columns and ``len(taps[0])`` rows, as ``F.interpolate`` makes them for the whole image:
    its horizontal pass on the input rows they need, then its vertical weights ``taps``
    (:func:`_aa_taps`) accumulated in its order. Any row range gives the same rows."""
    import torch
    import torch.nn.functional as F

    h, w = image.shape
    idx, wt = taps[0][r0:r1:step], taps[1][r0:r1:step]
    a, b = int(idx.min()), int(idx.max()) + 1
    with warnings.catch_warnings():  # a read-only frame: only read here
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        band = torch.from_numpy(np.ascontiguousarray(image[a:b], dtype=np.float32))
    if out is None:
        out = np.empty((len(idx), nw), np.float32)
    dst = torch.from_numpy(out)
    with torch.inference_mode():
        if nw != w:  # the horizontal pass: rows are independent
            band = F.interpolate(band[None, None], size=(b - a, nw), mode="bilinear", align_corners=False,
                                 antialias=True)[0, 0]
        if len(taps[0]) == h:
            dst.copy_(band[r0 - a : r1 - a : step])
            return out
        k = idx.shape[1]
        rows = band.index_select(0, torch.from_numpy((idx - a).reshape(-1))).view(len(idx), k, nw)
        wts = torch.from_numpy(wt)[:, :, None]
        # the vertical pass as torch accumulates it: the first tap times its weight, then the others added
        torch.mul(rows[:, 0], wts[:, 0], out=dst)
        for j in range(1, k):
            dst.addcmul_(rows[:, j], wts[:, j])
    return out


def _resample_strips(image: np.ndarray, nh: int, nw: int, rows: int = RESAMPLE_STRIP_ROWS) -> np.ndarray:
    """Antialiased bilinear shrinking of ``image`` to ``(nh, nw)``, ``rows`` output rows at a
    time (:func:`_resample_rows`): the whole-image ``F.interpolate`` result without its
    full-size intermediate (the horizontal pass, ~1.2x the output) or a contiguous copy
    of ``image``."""
    taps = _aa_taps(image.shape[0], nh)
    out = np.empty((nh, nw), np.float32)
    step = max(1, int(rows))
    for r0 in range(0, nh, step):
        _resample_rows(image, taps, nw, r0, min(nh, r0 + step), out[r0 : r0 + step])
    return out


def _resample(image: np.ndarray, scale: float, strip_rows: int | None = None) -> tuple[np.ndarray, tuple[float, float]]:
    """Bilinear resampling (antialiased when shrinking) by ``scale``.

    Returns the new image and the exact per-axis factors ``(sx, sy)`` = new/old size;
    a point ``p`` (px, pixel centres at integers) maps to ``(p + 0.5) * s - 0.5``.
    A shrunk image larger than :data:`RESAMPLE_STRIP_FROM` pixels (or any, given
    ``strip_rows``) is made in strips (:func:`_resample_strips`: the same pixels, at most a
    float rounding apart where it shrinks more than 2x), so its memory is the output's alone. The result is a new array unless ``scale`` keeps the
    size (then ``image`` itself when it is a contiguous float32 array).
    """
    import torch
    import torch.nn.functional as F

    h, w = image.shape
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    if (nh, nw) == (h, w):
        return np.ascontiguousarray(image, dtype=np.float32), (1.0, 1.0)
    if nh <= h and nw <= w and (strip_rows is not None or nh * nw > RESAMPLE_STRIP_FROM):
        return _resample_strips(image, nh, nw, strip_rows or RESAMPLE_STRIP_ROWS), (nw / w, nh / h)
    src = np.ascontiguousarray(image, dtype=np.float32)
    with warnings.catch_warnings():  # a caller's read-only frame: only read here, shared without a copy
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        t = torch.from_numpy(src)[None, None]
    out = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False, antialias=scale < 1)
    return out[0, 0].numpy(), (nw / w, nh / h)


def _levels(sample: np.ndarray, own: bool = False) -> tuple[np.float32, np.float32] | None:
    """``(lo, span)`` of :func:`normalize_image` from its sample of the image (the image, or
    every other row and column of a large one); None for a constant image. ``own``: the
    sample is a scratch array, smoothed in place (the same values, no second array)."""
    from scipy import ndimage as ndi

    sm = ndi.gaussian_filter(sample, 1.0, mode="nearest", output=sample if own else None)
    lo, hi = np.percentile(sm, [1.0, 99.5], overwrite_input=True)  # sm is ours: sorted in place, not copied
    span = float(hi - lo)
    if not math.isfinite(span) or span <= 1e-6 * max(1.0, abs(float(lo)), abs(float(hi))):
        return None
    return np.float32(lo), np.float32(span)


def _apply_levels(out: np.ndarray, levels: tuple[np.float32, np.float32]) -> np.ndarray:
    """``clip((out - lo) / span, -1, 3)`` in place."""
    out -= levels[0]
    out /= levels[1]
    return np.clip(out, -1.0, 3.0, out=out)


def normalize_image(image: np.ndarray, inplace: bool = False) -> np.ndarray | None:
    """Robust grey-level normalisation of a canonical image (float32).

    The 1st and 99.5th percentiles of the image smoothed by a Gaussian of 1 px map to
    0 and 1; values are clipped to [-1, 3]. Returns None for a constant image.
    ``inplace``: a writable float32 ``image`` is normalised in place and returned (no
    second full-size array; the same values).
    """
    img = np.asarray(image, dtype=np.float32)
    levels = _levels(img if img.size <= 1 << 20 else img[:: 2, :: 2])
    if levels is None:
        return None
    return _apply_levels(img if inplace and img.flags.writeable else img.copy(), levels)


class CanonicalRows:
    """The normalised canonical image of a large frame (:func:`prepare_image` with
    ``stream=True``), made band by band on demand and never held whole: ``rows(r0, r1)``
    returns rows ``r0:r1`` (float32), equal to those of the whole-image
    :func:`prepare_image`. Its levels come from one pass over the strips that keeps every
    other row and column (what :func:`normalize_image` samples): ~1/4 of the image.
    """

    def __init__(self, image: np.ndarray, scale: float, strip_rows: int | None = None):
        h, w = image.shape
        nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        if nh > h or nw > w:
            raise ValueError("CanonicalRows shrinks only: enlarged images are resampled whole")
        self.source = image
        self.shape = (nh, nw)
        self.factors = (nw / w, nh / h)
        self._taps = _aa_taps(h, nh)
        step = max(2, int(strip_rows or RESAMPLE_STRIP_ROWS) // 2 * 2)
        sample = np.empty(((nh + 1) // 2, (nw + 1) // 2), np.float32) if nh * nw > 1 << 20 else None
        full = None if sample is not None else np.empty((nh, nw), np.float32)
        for r0 in range(0, nh, step):
            if sample is not None:  # its even rows only
                band = _resample_rows(image, self._taps, nw, r0, min(nh, r0 + step), step=2)
                sample[r0 // 2 : r0 // 2 + len(band)] = band[:, ::2]
            else:
                _resample_rows(image, self._taps, nw, r0, min(nh, r0 + step), full[r0 : r0 + step])
        self.levels = _levels(sample if sample is not None else full, own=True)
        self._last: tuple[int, np.ndarray] | None = None  # (first row, rows) of the last band

    def rows(self, r0: int, r1: int) -> np.ndarray:
        """Normalised canonical rows ``r0:r1`` (clipped to the image), float32. Rows the
        last call also returned (overlapping tiles, top to bottom) are copied from it."""
        r0, r1 = max(0, int(r0)), min(self.shape[0], int(r1))
        out = np.empty((max(0, r1 - r0), self.shape[1]), np.float32)
        start = r0
        if self._last is not None and self._last[0] <= r0 < self._last[0] + len(self._last[1]) < r1:
            done = self._last[0] + len(self._last[1]) - r0
            out[:done] = self._last[1][r0 - self._last[0] :]
            start = r0 + done
        if start < r1:
            _apply_levels(_resample_rows(self.source, self._taps, self.shape[1], start, r1, out[start - r0 :]),
                          self.levels)
        self._last = (r0, out)
        return out


def _clean_input(image) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"image must be a 2-D grey-level array, got shape {img.shape}")
    if img.dtype.kind not in "biuf":
        raise ValueError(f"image must hold numbers, got dtype {img.dtype}")
    if img.dtype.kind == "f" and np.isfinite(img.sum(dtype=np.float64)):
        return img.astype(np.float32, copy=False)  # finite floats: read as they are, no copy
    if is_exact_counts(img):
        return img  # 8/16-bit counts: resampled band by band as float32 (the same values), no copy
    img = img.astype(np.float32, copy=True)
    bad = ~np.isfinite(img)
    if bad.any():
        if bad.all():
            raise ValueError("image holds no finite values (all NaN or infinite)")
        img[bad] = np.median(img[~bad])
    return img


def prepare_image(
    image: np.ndarray, pixel_size: float, material: str = "MoTe2", a_px: float = A_PX, stream: bool = False
) -> tuple[np.ndarray | CanonicalRows | None, tuple[float, float]]:
    """Resample an image to the canonical sampling and normalise it.

    Non-finite pixels are replaced by the median of the others. Returns
    ``(canonical image or None if constant, (sx, sy))``; see :func:`_resample` for the
    coordinate mapping. Training and inference both use this function. ``stream``: a
    shrunk canonical image larger than :data:`RESAMPLE_STRIP_FROM` pixels comes as a
    :class:`CanonicalRows` (the same pixels, band by band) instead of an array.
    """
    img = _clean_input(image)
    scale = canonical_scale(pixel_size, material, a_px)
    nh, nw = img.shape[0] * scale, img.shape[1] * scale
    if nh * nw > MAX_CANONICAL_PIXELS:
        raise ValueError(
            f"image of {img.shape[1]}x{img.shape[0]} px at {pixel_size} Å/px would be "
            f"{nw:.0f}x{nh:.0f} px at the detector's sampling (max {MAX_CANONICAL_PIXELS} pixels); "
            "check the pixel size or analyse a crop"
        )
    if stream and scale < 1 and round(nh) * round(nw) > RESAMPLE_STRIP_FROM:
        rows = CanonicalRows(img, scale)
        return (rows if rows.levels is not None else None), rows.factors
    can, s = _resample(img, scale)
    # a new array (resampled, or the cleaned copy): normalised in place; the caller's own is not touched
    own = can is not image and not np.may_share_memory(can, np.asarray(image))
    del img
    return normalize_image(can, inplace=own), s


def _to_canonical(boxes: np.ndarray, s: tuple[float, float]) -> np.ndarray:
    b = np.asarray(boxes, dtype=float).reshape(-1, 4)
    f = np.array([s[0], s[1], s[0], s[1]])
    return (b + 0.5) * f - 0.5


def _from_canonical(boxes: np.ndarray, s: tuple[float, float]) -> np.ndarray:
    b = np.asarray(boxes, dtype=float).reshape(-1, 4)
    f = np.array([s[0], s[1], s[0], s[1]])
    return (b + 0.5) / f - 0.5


# --------------------------------------------------------------------------- training data
#: Canonical px kept around training crops so that objects cut by a crop are complete.
_CROP_MARGIN = 56


def _visible_fraction(boxes: np.ndarray, w: int, h: int) -> np.ndarray:
    b = np.asarray(boxes, dtype=float).reshape(-1, 4)
    area = np.maximum((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 1e-9)
    cw = np.clip(np.minimum(b[:, 2], w - 0.5) - np.maximum(b[:, 0], -0.5), 0, None)
    ch = np.clip(np.minimum(b[:, 3], h - 0.5) - np.maximum(b[:, 1], -0.5), 0, None)
    return cw * ch / area


def random_training_image(
    rng: np.random.Generator,
    size: int = 480,
    target: str = "hexagon",
    material: str = "MoTe2",
    presets: tuple[str, ...] = ("paper", "realistic"),
    pixel_size: tuple[float, float] = (0.03, 0.15),
    scale_jitter: float = 0.1,
    defect_fraction: tuple[float, float] = (0.0, 0.3),
    max_rotation: float = 3.0,
    p_rotated: float = 0.3,
    p_empty: float = 0.03,
) -> tuple[np.ndarray, np.ndarray]:
    """One simulated training image at the canonical sampling, generated on the fly.

    Conditions come from :func:`~.datasets.sample_conditions` (a random preset of
    ``presets``, a log-uniform pixel size in ``pixel_size`` Å/px, a defect fraction, a
    small rotation for a fraction ``p_rotated`` of images). The image is brought to the
    canonical sampling times ``1 ± scale_jitter`` and normalised exactly as at inference
    (:func:`prepare_image`). A fraction ``p_empty`` hold no lattice (noise on a smooth
    background) and no boxes.

    Returns
    -------
    image : (~size, ~size) float32
        Normalised grey levels.
    boxes : (K, 4) float
        Boxes (px) of the ``target`` objects (hexagons or unit cells) lying inside the image.
    """
    from .datasets import sample_conditions
    from .materials import get_material
    from .simulation import Noise, apply_noise, simulate

    if target not in ("hexagon", "cell"):
        raise ValueError(f"target must be 'hexagon' or 'cell', got {target!r}")
    mat = get_material(material)
    ps = float(math.exp(rng.uniform(math.log(pixel_size[0]), math.log(pixel_size[1]))))
    s = canonical_scale(ps, mat.name) * (1.0 + rng.uniform(-scale_jitter, scale_jitter))
    raw = int(math.ceil(size / s))
    if rng.random() < p_empty:
        noise = Noise(
            poisson_lambda=float(rng.uniform(4, 60)),
            gaussian_mu=float(rng.uniform(0, 30)),
            background=float(rng.uniform(0.05, 0.5)),
            contamination=float(rng.uniform(0.0, 0.5)),
            contamination_scale_a=float(rng.uniform(2.0, 8.0)),
        )
        img = apply_noise(np.zeros((raw, raw)), noise, rng, ps)
        boxes = np.zeros((0, 4))
    else:
        preset = presets[int(rng.integers(len(presets)))]
        rot = float(rng.uniform(-max_rotation, max_rotation)) if rng.random() < p_rotated else 0.0
        kw = sample_conditions(preset, rng, (raw, raw), pixel_size=ps, rotation=rot,
                               defect_fraction=tuple(defect_fraction))
        a_raw = mat.a / ps
        origin = ((raw - 1) / 2 + rng.uniform(0, a_raw), (raw - 1) / 2 + rng.uniform(0, a_raw))
        sim = simulate(mat, raw, origin=origin, seed=int(rng.integers(2**31)), **kw)
        img = sim.image
        boxes = sim.truth.hex_box if target == "hexagon" else sim.truth.cell_box
    can, sxy = _resample(_clean_input(img), s)
    norm = normalize_image(can)
    if norm is None:
        norm = np.zeros_like(can)
    return norm, _to_canonical(boxes, sxy)


def _dataset_image(item) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A dataset image at the canonical sampling: (image, hexagon boxes, cell boxes)."""
    image, truth = item.load()
    can, sxy = prepare_image(image, truth.pixel_size, truth.material)
    if can is None:
        can = np.zeros((1, 1), np.float32)
    return can, _to_canonical(truth.hex_box, sxy), _to_canonical(truth.cell_box, sxy)


def _random_crop(
    image: np.ndarray,
    boxes: np.ndarray,
    crop: int,
    rng: np.random.Generator,
    margin: int = _CROP_MARGIN,
    min_visible: float = 0.7,
    hflip: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """A ``crop`` × ``crop`` window at least ``margin`` px inside ``image`` (when it fits).

    Keeps the boxes at least ``min_visible`` inside the window (unclipped). ``hflip``
    mirrors left-right (valid for hexagons: the 2H projection is mirror-symmetric about
    the vertical axis, but not for unit cells).
    """
    h, w = image.shape

    def start(n):
        lo, hi = (margin, n - crop - margin) if n - crop - 2 * margin >= 0 else (0, max(0, n - crop))
        return int(rng.integers(lo, hi + 1))

    y0, x0 = start(h), start(w)
    out = image[y0 : y0 + crop, x0 : x0 + crop]
    b = np.asarray(boxes, dtype=float).reshape(-1, 4) - np.array([x0, y0, x0, y0])
    b = b[_visible_fraction(b, out.shape[1], out.shape[0]) >= min_visible]
    if hflip:
        out = out[:, ::-1]
        wc = out.shape[1]
        b = np.stack([wc - 1 - b[:, 2], b[:, 1], wc - 1 - b[:, 0], b[:, 3]], axis=1)
    return np.ascontiguousarray(out, dtype=np.float32), b.astype(np.float32)


# --------------------------------------------------------------------------- inference
def _predict(model, image: np.ndarray, device) -> tuple[np.ndarray, np.ndarray]:
    """Run the network on one normalised canonical image -> (boxes, scores) in its px
    (torchvision's ``GeneralizedRCNN.forward``; :meth:`HexagonDetector._infer` is the
    faster equivalent the detector uses)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(device)
    with torch.inference_mode():
        out = model([t])[0]
    return out["boxes"].cpu().numpy().astype(float), out["scores"].cpu().numpy().astype(float)


def _trunk(model):
    """Backbone and RPN head as one module (what :func:`~.runtime.optimize_for_cpu`
    compiles): ``x`` (N, 1, H, W) canonical grey levels (:func:`normalize_image`) ->
    ``(features, objectness, box deltas)``; the transform's normalisation included."""
    import torch.nn as nn

    class Trunk(nn.Module):
        def __init__(self, backbone, head, mean: float, std: float):
            super().__init__()
            self.backbone = backbone
            self.conv = head.conv
            self.cls_logits = head.cls_logits
            self.bbox_pred = head.bbox_pred
            self.mean = mean
            self.std = std

        def forward(self, x):
            f = self.backbone((x - self.mean) / self.std)
            t = self.conv(f)
            return f, self.cls_logits(t), self.bbox_pred(t)

    mean, std = model.transform.image_mean[0], model.transform.image_std[0]
    return Trunk(model.backbone, model.rpn.head, float(mean), float(std)).eval()


def _tile_grid(n: int, tile: int, overlap: int, align: int = 8) -> tuple[list[int], int]:
    """Starts and side of the fewest tiles of at most ``tile`` px (``align``-px steps) that
    cover ``n`` px with at least ``overlap`` px between neighbours: one tile up to
    ``tile + overlap`` px, else equal tiles just large enough (less work than full tiles)."""
    if n <= tile + overlap:
        return [0], n
    k = int(math.ceil((n - overlap) / (tile - overlap)))
    side = min(n, int(math.ceil((n + (k - 1) * overlap) / k / align)) * align)
    return [int(round(i * (n - side) / (k - 1))) for i in range(k)], side


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    import torch
    from torchvision.ops import nms

    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    keep = nms(torch.as_tensor(boxes, dtype=torch.float32), torch.as_tensor(scores, dtype=torch.float32), iou)
    return keep.numpy()


class HexagonDetector:
    """A trained CNN-1 with its card; :meth:`detect` finds hexagons (or cells) in images.

    Attributes
    ----------
    card : dict
        How the model was built and trained, and what it scored.
    score_threshold : float
        Detections below this score are dropped (from the card; default 0.5).
    tile, overlap : int
        Largest tile side and least overlap at the canonical sampling, px (tiles are made
        equal and just large enough, :func:`_tile_grid`).
    """

    def __init__(self, model, card: dict[str, Any], device="cpu"):
        self.model = model.eval()
        self.card = card
        self.device = device
        self.a_px = float(card.get("a_px", A_PX))
        self.score_threshold = float(card.get("score_threshold", 0.5))
        self.tile = int(card.get("tile", TILE_PX))
        self.overlap = OVERLAP_PX
        self._net = None
        self._anchors: dict[tuple, Any] = {}

    def _fast_backbone(self):
        """Backbone + RPN head compiled for CPU inference (:func:`~.runtime.optimize_for_cpu`),
        or None where it runs eagerly (other devices, compilation off or failed)."""
        net = self._trunk()
        return None if getattr(net, "eager", False) else net

    def _trunk(self):
        import torch

        from .runtime import optimize_for_cpu

        if self._net is None:
            eager = _trunk(self.model)
            fast = optimize_for_cpu(eager) if torch.device(self.device).type == "cpu" else eager
            if fast is eager:
                eager.eager = True
            self._net = fast
        return self._net

    def _infer(self, tile: np.ndarray, core=None, pre_nms: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (px in ``tile``) and scores >= :attr:`score_threshold` in one normalised
        canonical tile.

        ``GeneralizedRCNN.forward`` at inference, in fewer steps with the same result: the
        input padded to a multiple of :data:`PAD_TO` px, anchors made once per size, only
        the RPN's pre-NMS top-n proposals decoded, the score threshold applied before the
        final NMS. ``core`` (x0, y0, x1, y1) tile px: only proposals centred there (plus
        :data:`CORE_SLACK_PX`) go through the box head. ``pre_nms``: the RPN's pre-NMS top-n
        (default the model's).
        """
        import torch
        import torch.nn.functional as F
        from torchvision.models.detection.image_list import ImageList
        from torchvision.ops import boxes as box_ops
        from torchvision.ops import roi_align

        m = self.model
        rpn, rh = m.rpn, m.roi_heads
        h, w = tile.shape
        x = torch.from_numpy(np.ascontiguousarray(tile, dtype=np.float32))
        ph, pw = -h % PAD_TO, -w % PAD_TO
        if ph or pw:  # the padding is grey level IMAGE_MEAN: 0 after normalisation
            x = F.pad(x[None], (0, pw, 0, ph), value=float(m.transform.image_mean[0]))[0]
        x = x[None, None].to(self.device)
        with torch.inference_mode():
            feats, obj, deltas = self._trunk()(x)
            fh, fw = feats.shape[-2:]
            key = (tuple(x.shape[-2:]), (fh, fw))
            if key not in self._anchors:
                self._anchors[key] = rpn.anchor_generator(ImageList(x, [(h, w)]), [feats])[0]
            anchors = self._anchors[key]
            na = obj.shape[1]
            obj = obj.permute(0, 2, 3, 1).reshape(-1)
            deltas = deltas.view(1, na, 4, fh, fw).permute(0, 3, 4, 1, 2).reshape(-1, 4)
            top, idx = obj.topk(min(int(pre_nms or rpn.pre_nms_top_n()), obj.numel()))
            props = box_ops.clip_boxes_to_image(rpn.box_coder.decode_single(deltas[idx], anchors[idx]), (h, w))
            sc = torch.sigmoid(top)
            keep = box_ops.remove_small_boxes(props, rpn.min_size)
            props, sc = props[keep], sc[keep]
            keep = torch.where(sc >= rpn.score_thresh)[0]
            props, sc = props[keep], sc[keep]
            props = props[box_ops.nms(props, sc, rpn.nms_thresh)[: int(rpn.post_nms_top_n())]]
            if core is not None:
                cx, cy = (props[:, 0] + props[:, 2]) / 2, (props[:, 1] + props[:, 3]) / 2
                e = CORE_SLACK_PX
                props = props[(cx >= core[0] - e) & (cx < core[2] + e) & (cy >= core[1] - e) & (cy < core[3] + e)]
            if not len(props):
                return np.zeros((0, 4)), np.zeros(0)
            pool = rh.box_roi_pool
            scale = 2.0 ** round(math.log2(fh / h))
            pooled = roi_align(feats, [props], pool.output_size, scale, pool.sampling_ratio)
            logits, reg = rh.box_predictor(rh.box_head(pooled))
            boxes = box_ops.clip_boxes_to_image(rh.box_coder.decode(reg, [props])[:, 1], (h, w))
            scores = F.softmax(logits, -1)[:, 1]
            keep = torch.where((scores > rh.score_thresh) & (scores >= self.score_threshold))[0]
            boxes, scores = boxes[keep], scores[keep]
            keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
            boxes, scores = boxes[keep], scores[keep]
            keep = box_ops.nms(boxes, scores, rh.nms_thresh)[: rh.detections_per_img]
            return boxes[keep].cpu().numpy().astype(float), scores[keep].cpu().numpy().astype(float)

    @property
    def target(self) -> str:
        """Object class the network detects: ``"hexagon"`` or ``"cell"``."""
        return str(self.card.get("target", "hexagon"))

    def detect_canonical(
        self, image: np.ndarray | CanonicalRows, progress=None, cancel=None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Detect in a normalised image at the canonical sampling (tiles and merges).

        ``image``: an array, or a :class:`CanonicalRows` read one band of tiles at a time
        (the same boxes). Returns boxes (px in ``image``) and scores, above
        :attr:`score_threshold`.
        """
        from .runtime import check_cancel

        h, w = image.shape
        pad_h, pad_w = max(0, MIN_IMAGE_PX - h), max(0, MIN_IMAGE_PX - w)
        if isinstance(image, CanonicalRows) and (pad_h or pad_w):
            image = image.rows(0, h)
        if pad_h or pad_w:
            image = np.pad(image, ((0, pad_h), (0, pad_w)), constant_values=float(np.median(image)))
        hh, ww = image.shape
        # one pass when the image is not much larger than a tile, else overlapping tiles
        ys, th = _tile_grid(hh, self.tile, self.overlap, PAD_TO)
        xs, tw = _tile_grid(ww, self.tile, self.overlap, PAD_TO)
        grid = [(y0, x0) for y0 in ys for x0 in xs]
        half = self.overlap / 2.0
        # a tile keeps as many RPN proposals per px as a full one (a small frame's single
        # tile too: the model's count there sends ~4x more low-score proposals through the box
        # head for the same hexagons)
        pre_nms = max(1, round(self.model.rpn.pre_nms_top_n() * th * tw / self.tile**2))
        all_b, all_s = [], []
        band_y0, band = None, None
        for done, (y0, x0) in enumerate(grid, 1):
            check_cancel(cancel)
            if y0 != band_y0:  # the tiles' rows: a view of an array, made for a CanonicalRows
                band_y0, band = y0, None
                band = image.rows(y0, y0 + th) if isinstance(image, CanonicalRows) else image[y0 : y0 + th]
            # keep a box in the tile whose core (tile minus half the overlap) holds its centre
            lo_x = half if x0 > 0 else -np.inf
            hi_x = tw - half if x0 + tw < ww else np.inf
            lo_y = half if y0 > 0 else -np.inf
            hi_y = th - half if y0 + th < hh else np.inf
            b, sc = self._infer(band[:, x0 : x0 + tw], (lo_x, lo_y, hi_x, hi_y), pre_nms)
            cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
            core = (cx >= lo_x) & (cx < hi_x) & (cy >= lo_y) & (cy < hi_y)
            all_b.append(b[core] + np.array([x0, y0, x0, y0]))
            all_s.append(sc[core])
            if progress is not None:
                progress(done, len(grid))
        boxes = np.concatenate(all_b) if all_b else np.zeros((0, 4))
        scores = np.concatenate(all_s) if all_s else np.zeros(0)
        if len(grid) > 1 and len(boxes):
            keep = _nms(boxes, scores, 0.5)
            boxes, scores = boxes[keep], scores[keep]
        # drop boxes that lie (almost) entirely in the padding
        if pad_h or pad_w:
            ok = _visible_fraction(boxes, w, h) > 0.3
            boxes, scores = boxes[ok], scores[ok]
        order = np.argsort(-scores, kind="stable")
        return boxes[order], scores[order]

    def detect(
        self,
        image: np.ndarray,
        pixel_size: float,
        material: str = "MoTe2",
        progress=None,
        cancel=None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Find hexagons (or cells, for a direct-detection model) in an image.

        Parameters
        ----------
        image : (rows, cols) array
            Grey levels, any range; non-finite pixels are replaced by the median.
        pixel_size : float
            Å/px of ``image``.
        material : str
            Sets the lattice constant used to rescale to the training sampling.
        progress, cancel : callables, optional
            ``progress(done, total)`` per tile; ``cancel()`` -> True stops with
            :class:`~.runtime.Cancelled`.

        Returns
        -------
        boxes : (K, 4) float
            ``(x_min, y_min, x_max, y_max)`` in px of ``image`` (may extend slightly
            beyond it for objects cut by the border), sorted by decreasing score.
        scores : (K,) float

        Raises
        ------
        ValueError
            If the image is not 2-D, smaller than 64 px, has no finite values, or the
            pixel size is not positive.
        """
        img = np.asarray(image)
        if img.ndim == 2 and min(img.shape) < MIN_IMAGE_PX:
            raise ValueError(
                f"image is {img.shape[1]}x{img.shape[0]} px; the detector needs at least "
                f"{MIN_IMAGE_PX} px per side"
            )
        # a large frame's canonical image is read band by band (CanonicalRows), never held whole
        can, sxy = prepare_image(img, pixel_size, material, self.a_px, stream=True)
        if can is None:  # constant image: nothing to find
            return np.zeros((0, 4)), np.zeros(0)
        boxes, scores = self.detect_canonical(can, progress=progress, cancel=cancel)
        return _from_canonical(boxes, sxy), scores


def load_detector(path=None, device: str = "auto") -> HexagonDetector:
    """Load a trained detector (default: the shipped ``weights/detector.pt``).

    Raises
    ------
    ~.runtime.WeightsError
        If the file is missing, corrupt or does not fit the model (names the file).
    """
    from .runtime import WeightsError, default_weights, load_weights, resolve_device

    p = default_weights("detector") if path is None else path
    sd, card = load_weights(p)
    cfg = card.get("config")
    if not isinstance(cfg, dict):
        raise WeightsError(f"weights file {p} has no detector config in its card")
    try:
        model = build_detector({k: cfg[k] for k in CONFIGS["slim"]}, target=card.get("target", "hexagon"))
        model.load_state_dict(sd)
    except Exception as exc:
        raise WeightsError(f"weights file {p} does not fit the detector it describes ({exc})") from exc
    dev = resolve_device(device)
    return HexagonDetector(model.to(dev), card, dev)


# --------------------------------------------------------------------------- training
def _hardware() -> str:
    import os
    import platform

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs"


def _object_scores(pred: np.ndarray, truth: np.ndarray, shape) -> dict[str, float]:
    """Recall, precision and mean IoU at IoU > 0.5 over objects lying inside the image."""
    from .geometry import match_boxes
    from .geometry import inside_boxes

    t = truth[inside_boxes(truth, shape)]
    p = pred[inside_boxes(pred, shape)]
    m = match_boxes(p, t, 0.5)
    tp = int((m["pred_match"] >= 0).sum())
    return {"tp": tp, "n_pred": len(p), "n_truth": len(t),
            "iou_sum": float(m["iou"][m["pred_match"] >= 0].sum())}


def _summarise(acc: dict[str, float]) -> dict[str, float]:
    tp = acc["tp"]
    return {
        "recall": tp / max(acc["n_truth"], 1),
        "precision": tp / max(acc["n_pred"], 1),
        "mean_iou": acc["iou_sum"] / max(tp, 1),
    }


def _validate(model, val_images, device, score_threshold: float = 0.5) -> dict[str, float]:
    """Object recall/precision/IoU of ``model`` on canonical validation images."""
    was_training = model.training
    detector = HexagonDetector(model, {"score_threshold": score_threshold}, device)
    acc = {"tp": 0, "n_pred": 0, "n_truth": 0, "iou_sum": 0.0}
    try:
        for image, boxes in val_images:
            pred, _ = detector.detect_canonical(image)
            for k, v in _object_scores(pred, boxes, image.shape).items():
                acc[k] += v
    finally:
        model.train(was_training)
    return _summarise(acc)


def train_detector(
    out,
    data=None,
    val=None,
    epochs: int = 10,
    steps_per_epoch: int = 500,
    config: str = "slim",
    target: str = "hexagon",
    seed: int = 0,
    batch: int = 2,
    crop: int = 320,
    lr: float = 1e-3,
    lr_schedule: str = "cosine",
    resume: bool = False,
    checkpoint_every_s: float = 300.0,
    max_val_images: int = 40,
    log_every: int = 50,
    new_every: int = 3,
    device: str = "cpu",
    log=print,
    cancel=None,
) -> dict[str, Any]:
    """Train CNN-1 from scratch and write the weights file ``out`` (+ JSON card).

    Parameters
    ----------
    out : path
        Weights file written with :func:`~.runtime.save_weights` after every epoch
        (the model of the last epoch). A checkpoint ``out`` + ``.ckpt`` (model,
        optimiser, random state, history) is written every ``checkpoint_every_s``
        seconds and after every epoch; ``resume=True`` continues from it.
    data : path, optional
        A dataset written by ``tmd-defects simulate`` to draw training crops from. By
        default images are simulated on the fly (:func:`random_training_image`; mixed
        ``paper``/``realistic`` conditions, 0.03-0.15 Å/px, ±10 % scale jitter).
    val : path or list of paths, optional
        Fixed validation datasets (other seeds); scored after every epoch (up to
        ``max_val_images`` images in all).
    epochs, steps_per_epoch : int
        Length of training; one step is one Adam update on ``batch`` crops.
    config, target : str
        ``slim``/``paper`` (:data:`CONFIGS`); ``hexagon`` (CNN-1) or ``cell`` (the
        direct unit-cell baseline).
    crop : int
        Training crops are ``crop`` × ``crop`` px at the canonical sampling.
    new_every : int
        One new training image is simulated every ``new_every`` steps into a pool of 8;
        crops are drawn from the whole pool (simulating one image at 0.03 Å/px costs
        about as much as a training step).
    lr, lr_schedule : float, str
        Adam learning rate; ``cosine`` decays it to 5 % over the run after a 200-step
        warm-up, ``constant`` keeps it.

    Returns
    -------
    dict
        The card written with the weights.
    """
    import time

    import torch

    from .datasets import load_dataset
    from .io import atomic_write
    from .runtime import check_cancel, resolve_device, save_weights

    out = Path(out)
    ckpt_path = out.with_name(out.name + ".ckpt")
    dev = resolve_device(device)
    if epochs < 1 or steps_per_epoch < 1 or batch < 1:
        raise ValueError("epochs, steps_per_epoch and batch must be >= 1")
    if crop < 128:
        raise ValueError(f"crop must be at least 128 px, got {crop}")
    if lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
    train_items = load_dataset(data) if data is not None else None
    val_dirs = [] if val is None else ([val] if isinstance(val, (str, Path)) else list(val))
    val_images = []
    for vd in val_dirs:
        for item in load_dataset(vd)[: max(1, max_val_images // len(val_dirs))]:
            can, hexes, cells = _dataset_image(item)
            val_images.append((can, hexes if target == "hexagon" else cells))

    torch.manual_seed(seed)
    model = build_detector(config, target=target).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    total_steps = epochs * steps_per_epoch
    warmup = min(200, total_steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (0.1 + 0.9 * step / max(warmup, 1))
        if lr_schedule == "constant":
            return lr
        f = (step - warmup) / max(total_steps - warmup, 1)
        return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(f, 1.0))))

    rng = np.random.default_rng(seed)
    state = {"step": 0, "epoch": 0, "elapsed_s": 0.0, "history": [], "val": []}
    if resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optim"])
        rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        state = ck["state"]
        log(f"resumed from {ckpt_path} at step {state['step']} (epoch {state['epoch']})")
    elif resume:
        log(f"no checkpoint at {ckpt_path}; starting from scratch")

    def save_ckpt():
        with atomic_write(ckpt_path) as fh:
            torch.save({"model": model.state_dict(), "optim": opt.state_dict(),
                        "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                        "state": state}, fh)

    hexagon = target == "hexagon"
    # a small pool of simulated images: one new image every ``new_every`` steps, crops
    # drawn from the whole pool (simulating at 0.03 Å/px costs about as much as a step)
    pool: list[tuple[np.ndarray, np.ndarray]] = []
    pool_size = 8

    def new_image():
        if train_items is not None:
            can, hexes, cells = _dataset_image(train_items[int(rng.integers(len(train_items)))])
            return can, hexes if hexagon else cells
        return random_training_image(rng, size=crop + 2 * _CROP_MARGIN + 48, target=target)

    def card():
        return {
            "name": "detector" if hexagon else "detector-cells",
            "model": "Faster R-CNN, MobileNetV2 backbone (torchvision), trained from scratch",
            "config_name": config if isinstance(config, str) else "custom",
            "config": dict(model.tmd_config),
            "target": target,
            "parameters": count_parameters(model),
            "a_px": A_PX,
            "anchor_sizes": list(ANCHOR_SIZES),
            "aspect_ratios": list(ASPECT_RATIOS),
            "max_detections": MAX_DETECTIONS,
            "input": "1 channel; image resampled to a = a_px px (bilinear, antialiased), "
                     "1st/99.5th percentiles of a 1-px Gaussian-smoothed copy -> 0/1",
            "score_threshold": 0.5,
            "tile": TILE_PX,
            "overlap": OVERLAP_PX,
            "training": {
                "data": Path(data).name if data is not None else
                        f"simulated on the fly (one new image every {new_every} steps, crops from a "
                        "pool of 8): presets paper+realistic, 0.03-0.15 Å/px (log-uniform), "
                        "scale jitter ±10 %, defect fraction 0-0.3, 30 % rotated by up to ±3°, "
                        "3 % lattice-free noise images" + (", left-right flips" if hexagon else ""),
                "val": [Path(v).name for v in val_dirs],
                "epochs": state["epoch"],
                "steps": state["step"],
                "batch": batch,
                "crop_px": crop,
                "optimizer": f"Adam, lr {lr:g}, {lr_schedule} schedule, {warmup}-step warm-up",
                "seed": seed,
                "wall_time_s": round(state["elapsed_s"], 1),
                "hardware": _hardware(),
                "torch_threads": torch.get_num_threads(),
                "device": str(dev),
                "torch": str(torch.__version__),
            },
            "validation": state["val"],
        }

    model.train()
    t_last_ckpt = time.perf_counter()
    t_start = time.perf_counter() - state["elapsed_s"]
    run_loss: dict[str, float] = {}
    while state["epoch"] < epochs:
        while state["step"] < (state["epoch"] + 1) * steps_per_epoch:
            check_cancel(cancel)
            t0 = time.perf_counter()
            if not pool or state["step"] % new_every == 0:
                pool.append(new_image())
                if len(pool) > pool_size:
                    pool.pop(0)
            images, targets = [], []
            for _ in range(batch):
                img, boxes = pool[int(rng.integers(len(pool)))]
                c, b = _random_crop(img, boxes, crop, rng, hflip=hexagon and rng.random() < 0.5)
                b = b[(b[:, 2] > b[:, 0] + 1) & (b[:, 3] > b[:, 1] + 1)]
                images.append(torch.from_numpy(c)[None].to(dev))
                targets.append({"boxes": torch.from_numpy(b).reshape(-1, 4).to(dev),
                                "labels": torch.ones(len(b), dtype=torch.int64, device=dev)})
            t_data = time.perf_counter() - t0
            for g in opt.param_groups:
                g["lr"] = lr_at(state["step"])
            losses = model(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                log(f"step {state['step']}: non-finite loss, batch skipped")
                opt.zero_grad(set_to_none=True)
                state["step"] += 1
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            state["step"] += 1
            for k, v in losses.items():
                run_loss[k] = run_loss.get(k, 0.0) + v.item()
            run_loss["_n"] = run_loss.get("_n", 0) + 1
            run_loss["_data_s"] = run_loss.get("_data_s", 0.0) + t_data
            run_loss["_step_s"] = run_loss.get("_step_s", 0.0) + time.perf_counter() - t0
            state["elapsed_s"] = time.perf_counter() - t_start
            if state["step"] % log_every == 0:
                n = run_loss.pop("_n")
                data_s, step_s = run_loss.pop("_data_s") / n, run_loss.pop("_step_s") / n
                parts = " ".join(f"{k.replace('loss_', '')} {v / n:.4f}" for k, v in sorted(run_loss.items()))
                entry = {"step": state["step"], "loss": sum(run_loss.values()) / n,
                         **{k: v / n for k, v in run_loss.items()}, "s_per_step": step_s}
                state["history"].append(entry)
                log(f"epoch {state['epoch'] + 1}/{epochs} step {state['step']}/{total_steps} "
                    f"loss {entry['loss']:.4f} ({parts}) lr {lr_at(state['step']):.2e} "
                    f"{step_s:.2f} s/step (data {data_s:.2f}) elapsed {state['elapsed_s'] / 60:.1f} min")
                run_loss = {}
            if time.perf_counter() - t_last_ckpt > checkpoint_every_s:
                save_ckpt()
                t_last_ckpt = time.perf_counter()
        state["epoch"] += 1
        if val_images:
            tv = time.perf_counter()
            scores = _validate(model, val_images, dev)
            state["val"].append({"epoch": state["epoch"], "step": state["step"],
                                 **{k: round(v, 5) for k, v in scores.items()}})
            log(f"epoch {state['epoch']} validation ({len(val_images)} images, {time.perf_counter() - tv:.0f} s): "
                + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        state["elapsed_s"] = time.perf_counter() - t_start
        save_ckpt()
        t_last_ckpt = time.perf_counter()
        save_weights(out, model.state_dict(), card())
        log(f"wrote {out} (epoch {state['epoch']}, {state['elapsed_s'] / 60:.1f} min)")
    return card()


# --------------------------------------------------------------------------- evaluation
#: The paper's α/β sweep (2DIP-Net, Fig. 2c).
ALPHAS = (0.55, 0.60, 0.65, 0.70)
BETAS = (0.45, 0.50, 0.55, 0.60)


def _reported(boxes: np.ndarray, shape, a_px: float) -> np.ndarray:
    """Mask of predicted cell boxes counted in the evaluation: inside the image like the
    ground truth (:func:`~.geometry.inside_boxes`), with a tolerance of 0.05 a."""
    from .geometry import inside_boxes

    tol = 0.05 * a_px
    b = np.asarray(boxes, float).reshape(-1, 4) + np.array([tol, tol, -tol, -tol])
    return inside_boxes(b, shape)


def _cell_counts(pred: np.ndarray, truth: np.ndarray, shape=None, a_px: float | None = None) -> dict[str, float]:
    """Matching counts; with ``shape`` and ``a_px`` also over the interior (centres at
    least one lattice constant inside the image), after matching the full sets."""
    from .geometry import match_boxes

    m = match_boxes(pred, truth, 0.5)
    matched = m["pred_match"] >= 0
    out = {
        "tp": int(matched.sum()),
        "n_pred": len(pred),
        "n_truth": len(truth),
        "dup": int(m["duplicate"].sum()),
        "iou_sum": float(m["iou"][matched].sum()),
    }
    if shape is not None:
        pin, tin = _centre_inside(pred, shape, a_px), _centre_inside(truth, shape, a_px)
        out |= {"in_tp_truth": int((m["truth_match"][tin] >= 0).sum()), "in_n_truth": int(tin.sum()),
                "in_tp_pred": int(matched[pin].sum()), "in_n_pred": int(pin.sum())}
    return out


def _add(acc: dict, part: dict) -> None:
    for k, v in part.items():
        acc[k] = acc.get(k, 0) + v


def _rates(acc: dict) -> dict[str, float]:
    tp, n_pred, n_truth = acc.get("tp", 0), acc.get("n_pred", 0), acc.get("n_truth", 0)
    out = {
        "recall": tp / max(n_truth, 1),
        "precision": tp / max(n_pred, 1),
        "mean_iou": acc.get("iou_sum", 0.0) / max(tp, 1),
        "n_truth": int(n_truth),
        "n_pred": int(n_pred),
        "missed": int(n_truth - tp),
        "false": int(n_pred - tp),
    }
    if "dup" in acc:
        out["duplicate_rate"] = acc["dup"] / max(n_pred, 1)
        out["duplicates"] = int(acc["dup"])
    if "in_n_truth" in acc:
        out["interior_recall"] = acc["in_tp_truth"] / max(acc["in_n_truth"], 1)
        out["interior_precision"] = acc["in_tp_pred"] / max(acc["in_n_pred"], 1)
    return out


def _centre_inside(boxes: np.ndarray, shape, a_px: float) -> np.ndarray:
    """Boxes whose centre lies at least one lattice constant inside the image."""
    b = np.asarray(boxes, float).reshape(-1, 4)
    c = (b[:, :2] + b[:, 2:]) / 2
    return (c[:, 0] >= a_px) & (c[:, 1] >= a_px) & (c[:, 0] <= shape[1] - 1 - a_px) & (c[:, 1] <= shape[0] - 1 - a_px)


def _near_border(boxes: np.ndarray, shape, a_px: float) -> np.ndarray:
    """Boxes with an edge less than one lattice constant from the image border."""
    b = np.asarray(boxes, float).reshape(-1, 4)
    return (b[:, 0] < a_px) | (b[:, 1] < a_px) | (b[:, 2] > shape[1] - 1 - a_px) | (b[:, 3] > shape[0] - 1 - a_px)


def evaluate_detector(
    data,
    weights=None,
    direct_weights=None,
    alphas=ALPHAS,
    betas=BETAS,
    max_images: int | None = None,
    device: str = "auto",
    progress=None,
) -> dict[str, Any]:
    """The paper's unit-cell detection study on held-out simulated datasets.

    For every dataset (folders written by ``tmd-defects simulate``) and image:

    * hexagon detection: recall, precision and mean IoU at IoU > 0.5 against the
      ground-truth hexagons (objects inside the image);
    * casting (:func:`~.geometry.cells_from_hexagons`, α = 0.65, β = 0.5, lattice
      refined on the image's X columns): unit-cell recall (= the paper's accuracy:
      cells found at IoU > 0.5 / all cells), precision, duplicate rate, mean IoU,
      recovered cells; also with lattice boxes and without the column refinement;
    * raw casting as in the paper (every hexagon casts two cells, no merging);
    * the α/β sweep: mean IoU of the raw casts with their best ground-truth cell, and
      the recall of the full casting at each α, β;
    * the same sweep for ground-truth hexagons (the geometric reference);
    * direct unit-cell detection with ``direct_weights`` (optional baseline).

    Returns a dict with per-dataset results and timings (s per image).
    """
    import time

    import torch

    from .datasets import load_dataset
    from .geometry import cast_hexagons, cells_from_hexagons
    det = load_detector(weights, device=device)
    direct = load_detector(direct_weights, device=device) if direct_weights is not None else None
    dirs = [data] if isinstance(data, (str, Path)) else list(data)
    results: dict[str, Any] = {
        "weights": "shipped weights/detector.pt" if weights is None else Path(weights).name,
        "card": det.card,
        "direct_weights": None if direct_weights is None else Path(direct_weights).name,
        "direct_card": None if direct is None else direct.card,
        "alphas": list(alphas),
        "betas": list(betas),
        "torch_threads": torch.get_num_threads(),
        "hardware": _hardware(),
        "datasets": [],
    }
    for d in dirs:
        items = load_dataset(d)[:max_images] if max_images else load_dataset(d)
        index = json.loads((Path(d) / "dataset.json").read_text()) if Path(d).is_dir() else {}
        hexa: dict = {}
        hexa_in: dict = {}
        cast: dict = {}
        cast_lat: dict = {}
        cast_noimg: dict = {}
        raw: dict = {}
        dirc: dict = {}
        recovered = {"n": 0, "correct": 0}
        grid_iou = np.zeros((len(alphas), len(betas)))
        grid_n = np.zeros((len(alphas), len(betas)))
        grid_gt_iou = np.zeros((len(alphas), len(betas)))
        grid_gt_n = np.zeros((len(alphas), len(betas)))
        grid_acc = [[{} for _ in betas] for _ in alphas]
        t_det, t_cast, t_direct = [], [], []
        misses = {"border": 0, "interior": 0, "false_border": 0, "false_interior": 0}
        for k, item in enumerate(items):
            image, truth = item.load()
            shape = truth.shape
            a_px = truth.a_px
            t0 = time.perf_counter()
            boxes, scores = det.detect(image, truth.pixel_size, truth.material)
            t1 = time.perf_counter()
            cells = cells_from_hexagons(boxes, scores, shape, a_px, image=image)
            t2 = time.perf_counter()
            t_det.append(t1 - t0)
            t_cast.append(t2 - t1)
            _add(hexa, _object_scores(boxes, truth.hex_box, shape))
            # away from the border (centres at least one lattice constant inside), where
            # hexagons cut by the image edge do not count
            _add(hexa_in, _object_scores(boxes[_centre_inside(boxes, shape, a_px)],
                                         truth.hex_box[_centre_inside(truth.hex_box, shape, a_px)], shape))
            ok = _reported(cells.boxes, shape, a_px)
            part = _cell_counts(cells.boxes[ok], truth.cell_box, shape, a_px)
            _add(cast, part)
            lat_cells = cells_from_hexagons(boxes, scores, shape, a_px, box_source="lattice", image=image)
            _add(cast_lat, _cell_counts(lat_cells.boxes[_reported(lat_cells.boxes, shape, a_px)], truth.cell_box,
                                        shape, a_px))
            nimg = cells_from_hexagons(boxes, scores, shape, a_px)
            _add(cast_noimg, _cell_counts(nimg.boxes[_reported(nimg.boxes, shape, a_px)], truth.cell_box,
                                          shape, a_px))
            from .geometry import match_boxes

            m = match_boxes(cells.boxes[ok], truth.cell_box, 0.5)
            rec = cells.support[ok] == 0
            recovered["n"] += int(rec.sum())
            recovered["correct"] += int((rec & (m["pred_match"] >= 0)).sum())
            misses["border"] += int(_near_border(truth.cell_box[m["truth_match"] < 0], shape, a_px).sum())
            misses["interior"] += int((~_near_border(truth.cell_box[m["truth_match"] < 0], shape, a_px)).sum())
            false = cells.boxes[ok][m["pred_match"] < 0]
            misses["false_border"] += int(_near_border(false, shape, a_px).sum())
            misses["false_interior"] += int((~_near_border(false, shape, a_px)).sum())
            # paper-style raw casting: every detected hexagon inside the image casts two cells
            from .geometry import inside_boxes

            hb = boxes[inside_boxes(boxes, shape)]
            gt_hb = truth.hex_box
            for ia, al in enumerate(alphas):
                for ib, be in enumerate(betas):
                    ul, lr = cast_hexagons(hb, al, be)
                    c = np.concatenate([ul, lr])
                    c = c[_reported(c, shape, a_px)]
                    mm = match_boxes(c, truth.cell_box, 0.5)
                    grid_iou[ia, ib] += mm["iou"].sum()
                    grid_n[ia, ib] += len(c)
                    if al == 0.65 and be == 0.5:
                        _add(raw, _cell_counts(c, truth.cell_box, shape, a_px))
                    gul, glr = cast_hexagons(gt_hb, al, be)
                    gc = np.concatenate([gul, glr])
                    gm = match_boxes(gc, truth.cell_box, 0.5)
                    grid_gt_iou[ia, ib] += gm["iou"].sum()
                    grid_gt_n[ia, ib] += len(gc)
                    cs = cells if (al == 0.65 and be == 0.5) else cells_from_hexagons(
                        boxes, scores, shape, a_px, alpha=al, beta=be, image=image)
                    okc = _reported(cs.boxes, shape, a_px)
                    _add(grid_acc[ia][ib], _cell_counts(cs.boxes[okc], truth.cell_box))
            if direct is not None:
                t3 = time.perf_counter()
                db, _ = direct.detect(image, truth.pixel_size, truth.material)
                t_direct.append(time.perf_counter() - t3)
                okd = _reported(db, shape, a_px)
                dbk = db[okd].copy()
                dbk[:, [0, 2]] = np.clip(dbk[:, [0, 2]], -0.5, shape[1] - 0.5)
                dbk[:, [1, 3]] = np.clip(dbk[:, [1, 3]], -0.5, shape[0] - 0.5)
                _add(dirc, _cell_counts(dbk, truth.cell_box, shape, a_px))
            if progress is not None:
                progress(k + 1, len(items))
        results["datasets"].append({
            "name": Path(d).name,
            "simulate": _simulate_command(index, Path(d).name),
            "n_images": len(items),
            "size": index.get("size"),
            "preset": index.get("preset"),
            "pixel_size_A": index.get("pixel_size_A"),
            "seed": index.get("seed"),
            "rotation": index.get("rotation"),
            "hexagons": _summarise(hexa) | {"n_truth": hexa.get("n_truth", 0), "n_pred": hexa.get("n_pred", 0)},
            "hexagons_interior": _summarise(hexa_in) | {"n_truth": hexa_in.get("n_truth", 0)},
            "casting": _rates(cast) | {"recovered": recovered["n"], "recovered_correct": recovered["correct"],
                                       "missed_border": misses["border"], "missed_interior": misses["interior"],
                                       "false_border": misses["false_border"],
                                       "false_interior": misses["false_interior"]},
            "casting_lattice_boxes": _rates(cast_lat),
            "casting_without_image": _rates(cast_noimg),
            "raw_casting": _rates(raw),
            "direct": _rates(dirc) if direct is not None else None,
            "grid_mean_iou": (grid_iou / np.maximum(grid_n, 1)).round(4).tolist(),
            "grid_gt_mean_iou": (grid_gt_iou / np.maximum(grid_gt_n, 1)).round(4).tolist(),
            "grid_recall": [[round(_rates(g)["recall"], 5) for g in row] for row in grid_acc],
            "seconds_detect": float(np.mean(t_det)) if t_det else 0.0,
            "seconds_cast": float(np.mean(t_cast)) if t_cast else 0.0,
            "seconds_direct": float(np.mean(t_direct)) if t_direct else None,
        })
    return results


def _pct(x: float, digits: int = 2) -> str:
    return f"{100 * x:.{digits}f} %"


def _simulate_command(index: dict[str, Any], name: str) -> str:
    """The ``tmd-defects simulate`` command that regenerates a dataset from its index."""
    if not index:
        return ""

    def vals(v):
        return " ".join(str(x) for x in v) if isinstance(v, (list, tuple)) else str(v)

    size = index.get("size", [512, 512])
    return (f"tmd-defects simulate --out DATA/{name} --n {index.get('n')} --size {vals(size)} "
            f"--seed {index.get('seed')} --material {index.get('material', 'MoTe2')} "
            f"--preset {index.get('preset')} --pixel-size {vals(index.get('pixel_size_A'))} "
            f"--rotation {index.get('rotation')} --defect-fraction {vals(index.get('defect_fraction'))}")


_METHOD_NOTES = """## Method

* **Detector (CNN-1).** torchvision Faster R-CNN with a MobileNetV2 backbone, one input
  channel, the paper's anchors (8, 16, 32, 64, 128 px; ratios 0.5, 1, 2) and up to 800
  detections per 512² tile, trained from scratch (no ImageNet weights) with Adam. Shipped
  `slim` configuration: MobileNetV2 cut after block 14 (96 channels) with the stride-2 of
  block 7 removed (stride 8: hexagons are ~42 × 51 px), a 1 × 1 convolution to 64
  channels, 7 × 7 RoIAlign and a 256-d two-layer box head (1.46 M parameters, 2.9 MB as
  float16) instead of torchvision's 1024-d head on 1280 channels (~64 M parameters in the
  head alone). The `paper` configuration (full MobileNetV2, 1280 channels, 1024-d head)
  is available with `--config paper`; its speed is in `benchmarks/results/detection_speed.md`.
* **Sampling.** Every image is resampled (bilinear, antialiased) so that the lattice
  constant is 29.33 px (MoTe2 at 0.12 Å/px, the paper's 2048² frames at 0.03 Å/px shrunk
  to 512²) and normalised by robust percentiles, then tiled (equal tiles of at most 512²,
  at least 64 px overlap, the RPN's pre-NMS proposals scaled to the tile's area; a box is
  kept by the tile whose core holds its centre, then NMS); boxes are mapped back
  to the input pixels.
* **Casting.** `geometry.cells_from_hexagons`: hexagon centres are indexed on a fitted
  lattice (orientation from nearest-neighbour vectors, breadth-first local indexing,
  affine least squares, outliers > 0.3 a dropped); each hexagon casts its upper-left and
  lower-right cells with α, β (the paper's A-B-C-D rule); the two casts of a cell are
  merged (score-weighted mean), so each cell is reported once; with the image, the X
  columns are refined to their intensity peaks and the lattice re-fitted to them; cells
  whose lattice box lies inside the image but that no hexagon cast (border, defects,
  missed hexagons) are added when at least 3 cast cells lie within 2 a.
* **Evaluation.** Ground-truth cells are those whose box lies inside the image; predicted
  cells are counted when their box lies inside the image within 0.05 a. One-to-one
  greedy matching at IoU > 0.5; accuracy = recall = matched true cells / true cells
  (the paper's measure, 0.990 for casting vs 0.953 for direct detection on 1691 cells);
  precision = matched predictions / predictions; duplicates = predictions whose true
  cell was already matched by another prediction, over all predictions.
"""


def write_detection_report(
    results: dict[str, Any], path, command: str, notes: str | None = None
) -> Path:
    """Write the Markdown report of :func:`evaluate_detector` to ``path``.

    ``notes`` (Markdown) is appended at the end."""
    import platform

    import torch

    from .io import atomic_write

    card = results["card"]
    tr = card.get("training", {})
    al, be = results["alphas"], results["betas"]
    L: list[str] = []
    L += [
        "# CNN-1: hexagon detection and hexagonal-net casting",
        "",
        "Reproduces the unit-cell detection study of 2DIP-Net (Mater. Horiz. 2024, 11, 747; "
        "Fig. 2) on held-out simulated images.",
        "",
        f"Command: `{command}`",
        "",
        f"Hardware: {results.get('hardware', _hardware())}; torch {torch.__version__} with "
        f"{results.get('torch_threads', torch.get_num_threads())} thread(s); Python {platform.python_version()}.",
        "",
        "## Models",
        "",
        "| | hexagon detector (CNN-1) | direct unit-cell detector (baseline) |",
        "|---|---|---|",
    ]
    dc = results.get("direct_card") or {}
    dtr = dc.get("training", {})

    def row(label, f):
        L.append(f"| {label} | {f(card, tr)} | {f(dc, dtr) if dc else '-'} |")

    row("weights", lambda c, t: results["weights"] if c is card else results["direct_weights"])
    row("configuration", lambda c, t: f"{c.get('config_name')} {c.get('config')}")
    row("parameters", lambda c, t: f"{c.get('parameters', {}).get('total', 0) / 1e6:.2f} M")
    row("training data", lambda c, t: t.get("data", "?"))
    row("steps x batch x crop", lambda c, t: f"{t.get('steps')} x {t.get('batch')} x {t.get('crop_px')}² px")
    row("optimiser", lambda c, t: t.get("optimizer", "?"))
    row("wall time", lambda c, t: f"{t.get('wall_time_s', 0) / 3600:.2f} h on {t.get('hardware')}, "
                                   f"{t.get('torch_threads')} thread(s)")
    row("score threshold", lambda c, t: c.get("score_threshold"))
    L += [""]
    for d in results["datasets"]:
        hx, ca, rc, dr = d["hexagons"], d["casting"], d["raw_casting"], d["direct"]
        cl = d.get("casting_lattice_boxes")
        L += [
            f"## {d['name']}: {d['n_images']} images, {d['size'][1] if d['size'] else '?'} px, "
            f"{d['pixel_size_A']} Å/px, preset {d['preset']}, seed {d['seed']}, rotation {d['rotation']}",
            "",
            f"Data: `{d.get('simulate', '')}`",
            "",
            f"Hexagon detection (IoU > 0.5, objects inside the image): recall {_pct(hx['recall'])}, "
            f"precision {_pct(hx['precision'])}, mean IoU {hx['mean_iou']:.3f} "
            f"({hx['n_truth']} true hexagons). Away from the border (centres more than one lattice "
            f"constant inside; the detector also reports hexagons cut by the image edge, which "
            f"count as false above): recall {_pct(d['hexagons_interior']['recall'])}, precision "
            f"{_pct(d['hexagons_interior']['precision'])}.",
            "",
            "Unit cells at IoU > 0.5 (accuracy = the paper's measure: cells found / all cells; interior = "
            "cells and predictions with centres more than one lattice constant inside the image, matched "
            "against all cells):",
            "",
            "| method | accuracy (recall) | precision | duplicates | mean IoU | cells | missed | false "
            "| interior recall | interior precision |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]

        def line(name, r):
            return (f"| {name} | {_pct(r['recall'])} | {_pct(r['precision'])} | "
                    f"{_pct(r.get('duplicate_rate', 0.0))} | {r['mean_iou']:.3f} | {r['n_truth']} | "
                    f"{r['missed']} | {r['false']} | {_pct(r.get('interior_recall', float('nan')))} | "
                    f"{_pct(r.get('interior_precision', float('nan')))} |")

        L.append(line("casting + merge + lattice completion (α 0.65, β 0.5)", ca))
        if cl:
            L.append(line("same, boxes from the fitted lattice", cl))
        if d.get("casting_without_image"):
            L.append(line("same, lattice from the hexagon boxes only (no column refinement)",
                          d["casting_without_image"]))
        L.append(line("raw casting as in the paper (two casts per hexagon, no merge)", rc))
        if dr:
            L.append(line("direct unit-cell detection", dr))
        L += [
            "",
            f"Casting: {ca['recovered']} cells recovered from the lattice ({ca['recovered_correct']} correct); "
            f"missed cells: {ca['missed_border']} within one lattice constant of the border, "
            f"{ca['missed_interior']} inside; false cells: {ca['false_border']} at the border, "
            f"{ca['false_interior']} inside. Time per image: detection {d['seconds_detect']:.2f} s, "
            f"casting {d['seconds_cast'] * 1000:.0f} ms"
            + (f", direct detection {d['seconds_direct']:.2f} s" if d.get("seconds_direct") else "")
            + ".",
            "",
            "α/β sweep. Mean IoU of each raw cast with its best ground-truth cell (the paper's Fig. 2c "
            "measure; rows α, columns β), for detected hexagons and, in brackets, for ground-truth hexagons:",
            "",
            "| α \\ β | " + " | ".join(f"{b:.2f}" for b in be) + " |",
            "|---|" + "---:|" * len(be),
        ]
        for i, a in enumerate(al):
            L.append(f"| {a:.2f} | " + " | ".join(
                f"{d['grid_mean_iou'][i][j]:.3f} ({d['grid_gt_mean_iou'][i][j]:.3f})" for j in range(len(be))) + " |")
        L += [
            "",
            "Unit-cell accuracy (recall at IoU > 0.5) of the full casting at each α, β:",
            "",
            "| α \\ β | " + " | ".join(f"{b:.2f}" for b in be) + " |",
            "|---|" + "---:|" * len(be),
        ]
        for i, a in enumerate(al):
            L.append(f"| {a:.2f} | " + " | ".join(_pct(d["grid_recall"][i][j]) for j in range(len(be))) + " |")
        L.append("")
    hist = card.get("validation") or []
    if hist:
        L += [
            "## Training curve of the hexagon detector (validation hexagons, IoU > 0.5, score > 0.5)",
            "",
            "| epoch | step | recall | precision | mean IoU |",
            "|---:|---:|---:|---:|---:|",
        ]
        L += [f"| {v['epoch']} | {v['step']} | {_pct(v['recall'])} | {_pct(v['precision'])} | "
              f"{v['mean_iou']:.3f} |" for v in hist]
        L.append("")
    L.append(_METHOD_NOTES)
    if notes:
        L += ["", notes.strip(), ""]
    path = Path(path)
    with atomic_write(path, "w") as fh:
        fh.write("\n".join(L) + "\n")
    return path
